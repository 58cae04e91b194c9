//! The core: a pure state machine that owns every actor's call log and lifecycle.
//!
//! It takes [`Event`]s (a request arrived, a worker replied, a worker died, a timer is
//! due, …) together with the current time and returns [`Action`]s (send a batch, reply
//! to a client, spawn, kill, sync a checkpoint to disk). It performs no I/O and reads no
//! clock, so it is tested exhaustively without processes (see the property tests).
//!
//! Invariants it keeps:
//! * every accepted call gets exactly one reply (an `ok`, an actor error, `CallFailed`
//!   for a poison call, `ActorDead`, or `Busy` at shutdown);
//! * calls to one actor are applied in `seq` order, each once per worker lifetime; a
//!   new worker gets every logged call after its restored checkpoint;
//! * the log keeps every call that some still-usable checkpoint does not cover (the
//!   previous mmap slot and the disk copy included), so one damaged checkpoint never
//!   loses a call. A candidate the worker has not verified yet (it verifies the older
//!   ones only after it is ready) counts as usable until it reports it damaged.

mod actor;
mod observe;
pub mod restart;
mod status;

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use resurgam_shared::config::{Config, Policy};
use resurgam_shared::export;
use resurgam_shared::ipc::{Call, CallKey, Reply, Restored};
use resurgam_shared::protocol::{ErrorBody, ErrorKind, Op, Request, encode_err, encode_ok};

use crate::exit::WorkerExit;
use actor::{ActorState, Entry, Heartbeat};
pub use actor::{FileSizes, Phase};
pub use observe::{ActorMetrics, Notice};

/// Index of an actor in the core's table (stable for the life of the process).
pub type ActorId = usize;
/// A client connection, numbered by the shell.
pub type ConnId = u64;

/// Most calls in one batch sent to a worker.
pub const MAX_BATCH_CALLS: usize = 4096;
/// Most bytes of arguments in one batch (larger batches travel via shared memory).
pub const MAX_BATCH_BYTES: usize = 4 << 20;
/// Batches sent to a worker and not yet answered.
pub const MAX_INFLIGHT_BATCHES: u32 = 2;
/// Unanswered calls an actor may hold before new ones are refused with `Busy`.
pub const MAX_QUEUE: usize = 1 << 20;
/// How long to wait for the ipc channel of a dead worker to drain before handling the
/// death anyway (normally it closes within microseconds of the exit).
pub const DRAIN_GRACE: Duration = Duration::from_secs(1);

/// Where a call came from: the connection and the request's raw JSON `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Origin {
    pub conn: ConnId,
    pub id: String,
    /// For a call: its actor and when it arrived (its answer is counted in the metrics).
    pub call: Option<(ActorId, Instant)>,
}

/// Something that happened, as the shell reports it.
#[derive(Debug)]
pub enum Event {
    /// A parsed client request.
    Request {
        conn: ConnId,
        request: Request,
    },
    /// The shell started the worker process for `epoch`.
    Spawned {
        actor: ActorId,
        epoch: u64,
        pid: u32,
    },
    /// The worker process could not be started at all.
    SpawnFailed {
        actor: ActorId,
        epoch: u64,
        error: String,
    },
    Ready {
        actor: ActorId,
        epoch: u64,
        restored: Restored,
    },
    /// The replies to a batch of calls (the last part of them, when it came in parts).
    Replies {
        actor: ActorId,
        epoch: u64,
        replies: Vec<Reply>,
    },
    /// Some of the replies to a batch of calls, with more to come.
    MoreReplies {
        actor: ActorId,
        epoch: u64,
        replies: Vec<Reply>,
    },
    Checkpointed {
        actor: ActorId,
        epoch: u64,
        generation: u64,
        last_seq: u64,
        /// last_seq of the checkpoint left in the other mmap slot, if it holds one.
        previous: Option<u64>,
    },
    CheckpointFailed {
        actor: ActorId,
        epoch: u64,
        message: String,
    },
    /// The checkpoint candidates older than the restored one were verified after the
    /// worker was ready (see [`resurgam_shared::ipc::Report::Verified`]).
    Verified {
        actor: ActorId,
        epoch: u64,
        rejected: Vec<String>,
        mmap_slots: Vec<(u64, u64)>,
    },
    /// The worker reported it cannot go on (it exits next).
    Fatal {
        actor: ActorId,
        epoch: u64,
        message: String,
    },
    /// The worker's exec program crashed or broke the protocol (the worker exits next).
    Crashed {
        actor: ActorId,
        epoch: u64,
        reason: String,
    },
    /// The worker answered a ping.
    Pong {
        actor: ActorId,
        epoch: u64,
    },
    /// The worker's channel is closed and drained: no more messages from it.
    ChannelClosed {
        actor: ActorId,
        epoch: u64,
    },
    /// The worker process was reaped. `executing` is the call it was running, if any.
    Exited {
        actor: ActorId,
        epoch: u64,
        exit: WorkerExit,
        executing: Option<u64>,
    },
    /// The disk copy now holds this checkpoint (fsync'd).
    DiskSynced {
        actor: ActorId,
        generation: u64,
        last_seq: u64,
    },
    DiskSyncFailed {
        actor: ActorId,
        message: String,
    },
    /// The log writer wrote the actor's calls up to `upto` (durable modes). `durable`:
    /// as durable as `log` mode promises already; else (fsync mode, or the manifest's
    /// mark of the actor's log not yet on disk) a `Durable` follows, and replies wait.
    Logged {
        actor: ActorId,
        upto: u64,
        durable: bool,
    },
    /// The log writer could not write calls `from..=upto`: they are refused.
    LogFailed {
        actor: ActorId,
        from: u64,
        upto: u64,
        error: String,
    },
    /// Fsync mode: the log is fsync'd up to `upto`.
    Durable {
        actor: ActorId,
        upto: u64,
    },
    /// The tombstone `seq` could not be written: release the error replies that waited
    /// for it (and nothing else).
    TombstoneFailed {
        actor: ActorId,
        seq: u64,
    },
    /// Fsync mode: the fsync covering calls up to `upto` failed.
    DurableFailed {
        actor: ActorId,
        upto: u64,
        error: String,
    },
    /// SIGTERM / SIGINT: shut down gracefully.
    Shutdown {
        reason: String,
    },
    /// A timer may be due (the shell calls this at [`Core::next_deadline`]).
    Tick,
}

impl Event {
    /// The worker (actor, epoch) a message from a worker came from.
    fn worker_of(&self) -> Option<(ActorId, u64)> {
        match *self {
            Event::Ready { actor, epoch, .. }
            | Event::Replies { actor, epoch, .. }
            | Event::MoreReplies { actor, epoch, .. }
            | Event::Checkpointed { actor, epoch, .. }
            | Event::CheckpointFailed { actor, epoch, .. }
            | Event::Verified { actor, epoch, .. }
            | Event::Crashed { actor, epoch, .. }
            | Event::Pong { actor, epoch } => Some((actor, epoch)),
            _ => None,
        }
    }
}

/// What the shell must do.
#[derive(Debug, PartialEq)]
pub enum Action {
    /// Send this line (with its newline) to the connection.
    Reply {
        conn: ConnId,
        line: String,
    },
    /// Start a worker process for the actor's `epoch`.
    Spawn {
        actor: ActorId,
        epoch: u64,
    },
    SendCalls {
        actor: ActorId,
        epoch: u64,
        calls: Vec<Call>,
    },
    RequestCheckpoint {
        actor: ActorId,
        epoch: u64,
    },
    /// Tell a running worker its new `checkpoint_every` and `max_reply_bytes` (reload).
    Configure {
        actor: ActorId,
        epoch: u64,
        checkpoint_every: u64,
        max_reply_bytes: u64,
    },
    /// Re-read the config file and apply it (`reload` op; the shell answers `origin`).
    Reload {
        origin: Origin,
    },
    /// Ask the worker to answer at once (hang detection).
    Ping {
        actor: ActorId,
        epoch: u64,
    },
    /// Ask the worker to exit (after its final checkpoint).
    StopWorker {
        actor: ActorId,
        epoch: u64,
    },
    /// SIGKILL the worker of this epoch (if it is still running).
    Kill {
        actor: ActorId,
        epoch: u64,
    },
    /// Copy the newest valid mmap checkpoint of the actor to its disk copy.
    SyncDisk {
        actor: ActorId,
    },
    /// Durable modes: append these calls to the actor's log file, then report
    /// `Logged` or `LogFailed` before anything else happens.
    Append {
        actor: ActorId,
        calls: Vec<Call>,
    },
    /// Durable modes: these logged calls were refused after all (poison call, actor
    /// DEAD, shutdown): write tombstones so a restart never replays them.
    /// The tombstone is a record of its own with sequence number `seq`.
    Cancel {
        actor: ActorId,
        seq: u64,
        cancelled: Vec<u64>,
    },
    /// Every call up to `upto` is covered by every checkpoint on file: log segments
    /// holding only such calls may be deleted.
    TruncateLog {
        actor: ActorId,
        upto: u64,
    },
    /// The operator revived an actor held DEAD for damaged or vanished state files
    /// (`restart --fresh`): forget the hold on disk.
    Release {
        actor: ActorId,
    },
    /// Every actor is stopped: exit the process with this code.
    Exit {
        code: i32,
    },
    /// Answer `origin` with the metrics (the shell holds half of them).
    Metrics {
        origin: Origin,
    },
    /// Make `origin`'s connection an event subscriber (the shell keeps the stream).
    Subscribe {
        origin: Origin,
    },
}

/// Static facts the shell gives the core at start.
pub struct ActorSpec {
    pub name: String,
    pub kind: String,
    pub policy: Policy,
    /// The methods the worker answers; `None` when its program decides (kind `exec`).
    pub methods: Option<&'static [&'static str]>,
    /// The newest `last_seq` among the actor's valid checkpoints found at start.
    pub start_seq: u64,
    /// Calls found in the durable log at start, in seq order.
    pub recovered: Vec<resurgam_shared::calllog::LogRecord>,
    /// The smallest and largest seq in the durable log at start (cancelled records
    /// included).
    pub log_range: Option<(u64, u64)>,
    /// Its state files are damaged or gone and acknowledged calls may be lost: the
    /// actor starts DEAD with this reason and only `restart --fresh` revives it.
    pub held: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Running,
    Stopping { deadline: Instant },
    Exited,
}

/// The supervisor's state machine.
pub struct Core {
    actors: Vec<ActorState>,
    by_name: HashMap<String, ActorId>,
    mode: Mode,
    shutdown_timeout: Duration,
    pid: u32,
    started: Instant,
    out: Vec<Action>,
    /// The time of the latest event (for work done in `flush`).
    now: Instant,
    /// Actors with queued calls or other work for [`Core::flush`].
    dirty: Vec<ActorId>,
    /// What happened since the shell last asked ([`Core::drain_notices`]).
    notices: Vec<Notice>,
}

impl Core {
    /// Builds the core and starts every actor's first worker.
    pub fn new(config: &Config, specs: Vec<ActorSpec>, pid: u32, now: Instant) -> Core {
        let mut core = Core {
            by_name: specs
                .iter()
                .enumerate()
                .map(|(i, s)| (s.name.clone(), i))
                .collect(),
            actors: specs
                .into_iter()
                .map(|mut s| {
                    let recovered = std::mem::take(&mut s.recovered);
                    let range = s.log_range;
                    let mut a = ActorState::new(s, now);
                    a.load_recovered(recovered, range);
                    a
                })
                .collect(),
            mode: Mode::Running,
            shutdown_timeout: config.supervisor.shutdown_timeout,
            pid,
            started: now,
            out: Vec::new(),
            now,
            dirty: Vec::new(),
            notices: Vec::new(),
        };
        for id in 0..core.actors.len() {
            core.start(id, now);
        }
        core
    }

    /// Handles one event. Actions accumulate until [`Core::take_actions`].
    pub fn handle(&mut self, event: Event, now: Instant) {
        self.now = self.now.max(now);
        if let Some((actor, epoch)) = event.worker_of()
            && let Some(a) = self.current(actor, epoch)
        {
            a.last_heard = now;
        }
        match event {
            Event::Request { conn, request } => self.on_request(conn, request, now),
            Event::Spawned { actor, epoch, pid } => self.on_spawned(actor, epoch, pid, now),
            Event::SpawnFailed {
                actor,
                epoch,
                error,
            } => self.on_spawn_failed(actor, epoch, &error, now),
            Event::Ready {
                actor,
                epoch,
                restored,
            } => self.on_ready(actor, epoch, restored, now),
            Event::Replies {
                actor,
                epoch,
                replies,
            } => self.on_replies(actor, epoch, replies, true),
            Event::MoreReplies {
                actor,
                epoch,
                replies,
            } => self.on_replies(actor, epoch, replies, false),
            Event::Checkpointed {
                actor,
                epoch,
                generation,
                last_seq,
                previous,
            } => self.on_checkpointed(actor, epoch, (generation, last_seq), previous, now),
            Event::CheckpointFailed {
                actor,
                epoch,
                message,
            } => self.on_checkpoint_failed(actor, epoch, &message),
            Event::Verified {
                actor,
                epoch,
                rejected,
                mmap_slots,
            } => self.on_verified(actor, epoch, &rejected, &mmap_slots),
            Event::Fatal {
                actor,
                epoch,
                message,
            } => {
                if let Some(a) = self.current(actor, epoch) {
                    tracing::error!(actor = %a.name, %message, "worker reported a fatal error");
                    a.fatal = Some(message);
                }
            }
            Event::Crashed {
                actor,
                epoch,
                reason,
            } => self.on_crashed(actor, epoch, reason),
            Event::Pong { actor, epoch } => {
                if let Some(a) = self.current(actor, epoch) {
                    a.ping_outstanding = false;
                }
            }
            Event::ChannelClosed { actor, epoch } => self.on_channel_closed(actor, epoch, now),
            Event::Exited {
                actor,
                epoch,
                exit,
                executing,
            } => self.on_exited(actor, epoch, exit, executing, now),
            Event::DiskSynced {
                actor,
                generation,
                last_seq,
            } => self.on_disk_synced(actor, generation, last_seq),
            Event::DiskSyncFailed { actor, message } => self.on_disk_sync_failed(actor, &message),
            Event::Logged {
                actor,
                upto,
                durable,
            } => self.on_logged(actor, upto, durable),
            Event::LogFailed {
                actor,
                from,
                upto,
                error,
            } => self.on_log_failed(actor, from, upto, &error),
            Event::Durable { actor, upto } => self.on_durable(actor, upto, None),
            Event::TombstoneFailed { actor, seq } => self.on_tombstone_failed(actor, seq),
            Event::DurableFailed { actor, upto, error } => {
                self.on_durable(actor, upto, Some(error))
            }
            Event::Shutdown { reason } => self.begin_shutdown(&reason, now),
            Event::Tick => self.on_tick(now),
        }
    }

    fn on_spawned(&mut self, actor: ActorId, epoch: u64, pid: u32, now: Instant) {
        if let Some(a) = self.current(actor, epoch) {
            a.pid = Some(pid);
            if a.phase == Phase::Starting {
                a.start_deadline = Some(now + a.policy.startup_timeout);
            }
        }
    }

    fn on_spawn_failed(&mut self, actor: ActorId, epoch: u64, error: &str, now: Instant) {
        if let Some(a) = self.current(actor, epoch) {
            tracing::error!(actor = %a.name, %error, "cannot start worker");
            a.last_exit = Some(format!("spawn failed: {error}"));
            a.exited = true;
            a.closed = true;
            self.on_death(actor, now);
        }
    }

    fn on_checkpoint_failed(&mut self, actor: ActorId, epoch: u64, message: &str) {
        let Some(a) = self.current(actor, epoch) else {
            return;
        };
        tracing::error!(actor = %a.name, %message, "checkpoint failed");
        a.checkpoint_outstanding = false;
        let waiters = std::mem::take(&mut a.checkpoint_waiters);
        let err = ErrorBody::new(
            ErrorKind::CallFailed,
            format!("checkpoint of {:?} failed: {message}", a.name),
        );
        for w in waiters {
            self.reply_err(&w, &err);
        }
        if matches!(self.mode, Mode::Stopping { .. }) || self.actors[actor].winding_down() {
            self.stop_worker_if_done(actor);
        }
        self.relaunch_if_pending(actor);
    }

    fn on_crashed(&mut self, actor: ActorId, epoch: u64, reason: String) {
        if let Some(a) = self.current(actor, epoch) {
            tracing::warn!(actor = %a.name, pid = a.pid.unwrap_or(0), %reason, "program failed");
            a.crash_reason = Some(reason);
            // The reason may come after the exit status (two threads report them).
            if let Some(exit) = a.exit_status {
                a.last_exit = Some(a.describe_exit(exit));
            }
        }
    }

    /// The worker's channel is closed: its death is handled once it has exited too.
    fn on_channel_closed(&mut self, actor: ActorId, epoch: u64, now: Instant) {
        if let Some(a) = self.current(actor, epoch) {
            a.closed = true;
            if a.exited {
                self.on_death(actor, now);
            } else {
                // The worker is about to exit; if it does not, it is broken.
                a.drain_deadline = Some(now + DRAIN_GRACE);
            }
        }
    }

    /// The worker was reaped: its death is handled once its channel is closed too.
    fn on_exited(
        &mut self,
        actor: ActorId,
        epoch: u64,
        exit: WorkerExit,
        executing: Option<u64>,
        now: Instant,
    ) {
        if let Some(a) = self.current(actor, epoch) {
            a.exited = true;
            a.last_exit = Some(a.describe_exit(exit));
            a.exit_status = Some(exit);
            // Only a worker that was serving ran calls; the word may be left over from an
            // earlier worker when this one died during its start.
            let (alive, floor) = (a.phase == Phase::Alive, a.applied_floor);
            a.executing_at_death = executing.filter(|&s| alive && s != 0 && s > floor);
            if a.closed {
                self.on_death(actor, now);
            } else {
                a.drain_deadline = Some(now + DRAIN_GRACE);
            }
        }
    }

    fn on_disk_sync_failed(&mut self, actor: ActorId, message: &str) {
        let Some(a) = self.actors.get_mut(actor) else {
            return;
        };
        tracing::error!(actor = %a.name, %message, "disk copy of checkpoint failed; the call log is kept");
        a.disk_sync_error = Some(message.to_string());
        let waiters = std::mem::take(&mut a.sync_waiters);
        let err = ErrorBody::new(
            ErrorKind::CallFailed,
            format!("disk copy of {:?} failed: {message}", a.name),
        );
        for (w, _) in waiters {
            self.reply_err(&w, &err);
        }
        if matches!(self.mode, Mode::Stopping { .. }) || self.actors[actor].winding_down() {
            // Stop anyway: the mmap checkpoint and (in memory mode) nothing else remains;
            // the error is logged above.
            self.stop_worker_if_done(actor);
        }
    }

    fn on_logged(&mut self, actor: ActorId, upto: u64, durable: bool) {
        if let Some(a) = self.actors.get_mut(actor) {
            a.logged_upto = a.logged_upto.max(upto);
            if durable {
                a.durable_upto = a.logged_upto;
            }
            self.mark_dirty(actor);
        }
    }

    /// A tombstone could not be written: the calls it held back are answered now.
    fn on_tombstone_failed(&mut self, actor: ActorId, seq: u64) {
        if let Some(a) = self.actors.get_mut(actor) {
            let (mine, rest): (VecDeque<_>, VecDeque<_>) =
                a.held.drain(..).partition(|h| h.0 == seq);
            a.held = rest;
            for (_, origin, result) in mine {
                self.answer(&origin, result);
            }
            self.maybe_exit();
        }
    }

    /// Sends queued calls in batches. Call after a burst of events: the longer the
    /// burst, the bigger the batches.
    pub fn flush(&mut self) {
        let dirty = std::mem::take(&mut self.dirty);
        for id in dirty {
            let a = &mut self.actors[id];
            a.dirty = false;
            if let Some(calls) = a.take_unappended() {
                self.out.push(Action::Append { actor: id, calls });
            }
            let a = &mut self.actors[id];
            a.dispatch(id, &mut self.out, self.now);
            if matches!(self.mode, Mode::Stopping { .. }) || a.winding_down() {
                self.maybe_final_checkpoint(id);
            }
        }
    }

    /// The actions produced since the last call.
    pub fn take_actions(&mut self) -> Vec<Action> {
        std::mem::take(&mut self.out)
    }

    /// Appends the actions produced since the last call to `into`.
    pub fn drain_actions(&mut self, into: &mut Vec<Action>) {
        into.append(&mut self.out);
    }

    /// When the core next needs a [`Event::Tick`].
    pub fn next_deadline(&self) -> Option<Instant> {
        let mut d = self.actors.iter().filter_map(|a| a.next_deadline()).min();
        if let Mode::Stopping { deadline } = self.mode {
            d = Some(d.map_or(deadline, |x| x.min(deadline)));
        }
        d
    }

    /// True when every actor serves (ALIVE) or is DEAD by policy: time for READY=1.
    pub fn all_serving(&self) -> bool {
        self.actors.iter().filter(|a| !a.retiring).all(|a| {
            matches!(a.phase, Phase::Alive | Phase::Dead)
                || (a.stopped_by_operator && a.phase == Phase::Stopped)
        })
    }

    /// True once a graceful shutdown has begun.
    pub fn is_stopping(&self) -> bool {
        !matches!(self.mode, Mode::Running)
    }

    /// Calls answered so far, all actors together.
    pub fn served(&self) -> u64 {
        self.actors.iter().map(|a| a.served).sum()
    }

    /// A one-line summary of the actors' states for systemd's STATUS=.
    pub fn summary(&self) -> String {
        let mut counts = [0usize; 5];
        for a in self.actors.iter().filter(|a| !a.retiring) {
            counts[a.phase as usize] += 1;
        }
        let [starting, alive, restarting, dead, stopped] = counts;
        let mut parts = vec![format!("{alive} alive")];
        for (n, what) in [
            (starting, "starting"),
            (restarting, "restarting"),
            (dead, "DEAD"),
            (stopped, "stopped"),
        ] {
            if n > 0 {
                parts.push(format!("{n} {what}"));
            }
        }
        let mode = if self.is_stopping() { "stopping: " } else { "" };
        format!("{mode}{}", parts.join(", "))
    }

    /// Adds an actor (reload) and starts its worker. Returns its id, which is the next
    /// index: the shell keeps its per-actor tables in the same order.
    pub fn add_actor(&mut self, spec: ActorSpec, now: Instant) -> ActorId {
        let id = self.actors.len();
        let mut spec = spec;
        let records = std::mem::take(&mut spec.recovered);
        let range = spec.log_range;
        let mut a = ActorState::new(spec, now);
        a.load_recovered(records, range);
        self.by_name.insert(a.name.clone(), id);
        tracing::info!(actor = %a.name, kind = %a.kind, "actor added by reload");
        self.actors.push(a);
        self.start(id, now);
        id
    }

    /// Removes an actor (reload): new calls get `UnknownActor`; calls already accepted
    /// are answered, then a final checkpoint is taken and the worker stopped.
    ///
    /// An actor with no worker serving is started for that when it owes answers, or
    /// when (memory mode) calls since its last checkpoint live only in the core's
    /// memory; else (and always when DEAD, which nothing but an operator starts) it is
    /// removed at once. It ends removed whatever happens on the way (a worker that
    /// gives up included, see [`Core::finish_removal`]).
    pub fn retire_actor(&mut self, id: ActorId, now: Instant) {
        self.now = self.now.max(now);
        let Some(a) = self.actors.get_mut(id) else {
            return;
        };
        if a.retiring {
            return;
        }
        tracing::info!(actor = %a.name, "actor removed by reload: final checkpoint, then stop");
        a.retiring = true;
        a.relaunch_pending = false;
        self.by_name.remove(&a.name);
        let needs_worker = a.unanswered > 0 || (!a.durable() && a.has_calls_after_checkpoint());
        match a.phase {
            Phase::Alive => self.mark_dirty(id),
            Phase::Starting if needs_worker => self.mark_dirty(id),
            Phase::Restarting if needs_worker => self.spawn(id, now),
            Phase::Starting => {
                self.out.push(Action::Kill {
                    actor: id,
                    epoch: a.epoch,
                });
                self.finish_removal(id);
            }
            Phase::Restarting | Phase::Dead | Phase::Stopped => self.finish_removal(id),
        }
    }

    /// The end of a removed actor's wind-down, however it ended (final checkpoint
    /// taken, no worker to take one, or its worker gave up): STOPPED, gone from `status`
    /// and the metrics, its name free for a reload to add again. Calls that only the
    /// core's memory held (memory mode, no final checkpoint) are lost: said loudly.
    fn finish_removal(&mut self, id: ActorId) {
        let a = &mut self.actors[id];
        let lost = a.memory_only_calls();
        if lost > 0 {
            tracing::error!(actor = %a.name, calls = lost, checkpoint_last_seq = a.checkpoint.1, "removed actor stopped without a final checkpoint: its acknowledged calls since its last checkpoint lived only in memory (durability = \"memory\") and are lost");
            a.lost_at_removal = lost as u64;
        }
        observe::set_phase(&mut self.notices, id, a, Phase::Stopped);
        // An operator's `stop_actor` waiting for it is answered: it is stopped.
        self.answer_stop_waiters(id);
    }

    /// True while an actor removed by a reload has not stopped yet.
    pub fn is_retiring(&self, name: &str) -> bool {
        self.actors
            .iter()
            .any(|a| a.retiring && a.name == name && a.phase != Phase::Stopped)
    }

    /// Applies a changed policy (reload). `checkpoint_every` and `max_reply_bytes` reach
    /// a running worker through `Configure`.
    pub fn update_policy(&mut self, id: ActorId, policy: Policy) {
        let Some(a) = self.actors.get_mut(id) else {
            return;
        };
        let worker_changed = a.policy.checkpoint_every != policy.checkpoint_every
            || a.policy.max_reply_bytes != policy.max_reply_bytes;
        a.policy = policy;
        if worker_changed && matches!(a.phase, Phase::Alive | Phase::Starting) {
            self.out.push(Action::Configure {
                actor: id,
                epoch: a.epoch,
                checkpoint_every: a.policy.checkpoint_every,
                max_reply_bytes: a.policy.max_reply_bytes,
            });
        }
    }

    /// True once the core has asked the shell to exit.
    pub fn has_exited(&self) -> bool {
        self.mode == Mode::Exited
    }

    /// Looks up an actor by name.
    pub fn actor_id(&self, name: &str) -> Option<ActorId> {
        self.by_name.get(name).copied()
    }

    /// The actor's name.
    pub fn actor_name(&self, id: ActorId) -> &str {
        &self.actors[id].name
    }

    /// The actor's phase.
    pub fn phase(&self, id: ActorId) -> Phase {
        self.actors[id].phase
    }

    /// The sizes of the actor's files, measured by the shell (shown by `status`).
    pub fn note_files(&mut self, id: ActorId, sizes: FileSizes) {
        if let Some(a) = self.actors.get_mut(id) {
            a.files = Some(sizes);
        }
    }

    /// Number of logged calls kept for replay (for tests and status).
    pub fn log_len(&self, id: ActorId) -> usize {
        self.actors[id].log.len()
    }

    /// Whether the actor's next worker gets calls as soon as it is ready: logged calls
    /// newer than its newest checkpoint (a replay, or calls that came while it had no
    /// worker). Calls kept only for an older checkpoint do not count.
    pub fn calls_waiting(&self, id: ActorId) -> bool {
        self.actors[id].has_calls_after_checkpoint()
    }

    // ---- internals ----

    fn current(&mut self, actor: ActorId, epoch: u64) -> Option<&mut ActorState> {
        self.actors
            .get_mut(actor)
            .filter(|a| a.epoch == epoch && a.phase != Phase::Stopped)
    }

    fn mark_dirty(&mut self, id: ActorId) {
        let a = &mut self.actors[id];
        if !a.dirty {
            a.dirty = true;
            self.dirty.push(id);
        }
    }

    /// Answers a request the shell handled (e.g. `reload`).
    pub fn answer(&mut self, to: &Origin, result: Result<String, ErrorBody>) {
        match result {
            Ok(ok) => self.reply_ok(to, &ok),
            Err(e) => self.reply_err(to, &e),
        }
    }

    fn reply_ok(&mut self, to: &Origin, ok: &str) {
        self.count_answer(to.call, "ok");
        self.out.push(Action::Reply {
            conn: to.conn,
            line: encode_ok(&to.id, ok),
        });
    }

    fn reply_err(&mut self, to: &Origin, err: &ErrorBody) {
        self.count_answer(to.call, err.kind.as_str());
        self.out.push(Action::Reply {
            conn: to.conn,
            line: encode_err(&to.id, err),
        });
    }

    fn on_request(&mut self, conn: ConnId, request: Request, now: Instant) {
        let origin = Origin {
            conn,
            id: request.id,
            call: None,
        };
        match request.op {
            Op::Call {
                actor,
                method,
                args,
                key,
            } => self.on_call(origin, &actor, method, args, key),
            Op::Status => {
                let s = status::render(self, now);
                self.reply_ok(&origin, &s);
            }
            Op::Checkpoint { actor } => self.on_checkpoint_request(origin, &actor),
            Op::Restart { actor, fresh } => self.on_restart_request(origin, &actor, fresh, now),
            Op::Reload => {
                if self.is_stopping() {
                    let err = ErrorBody::new(ErrorKind::Busy, "the supervisor is shutting down");
                    self.reply_err(&origin, &err);
                } else {
                    self.out.push(Action::Reload { origin });
                }
            }
            Op::Stop => {
                self.reply_ok(&origin, "{\"stopping\":true}");
                self.begin_shutdown("stop requested over the control socket", now);
            }
            Op::Metrics => self.out.push(Action::Metrics { origin }),
            Op::Subscribe => self.out.push(Action::Subscribe { origin }),
            Op::Export { actor } => {
                if let Some(id) = self.lookup(&origin, &actor) {
                    self.enqueue(
                        origin,
                        id,
                        export::EXPORT_METHOD.to_string(),
                        Vec::new(),
                        None,
                    );
                }
            }
            Op::Import { actor, file } => self.on_import(origin, &actor, file),
            Op::StopActor { actor } => self.on_stop_actor(origin, &actor, now),
            Op::StartActor { actor } => self.on_start_actor(origin, &actor, now),
            Op::Pid { actor } => self.on_pid(origin, actor.as_deref()),
        }
    }

    /// `pid`: the supervisor's pid, or an actor's worker's and program's (null when it
    /// has no process now).
    fn on_pid(&mut self, origin: Origin, actor: Option<&str>) {
        let Some(name) = actor else {
            let ok = format!("{{\"pid\":{}}}", self.pid);
            self.reply_ok(&origin, &ok);
            return;
        };
        let Some(id) = self.lookup(&origin, name) else {
            return;
        };
        let a = &self.actors[id];
        let ok = serde_json::json!({
            "actor": a.name,
            "state": a.state_name(),
            "pid": a.worker_pid(),
            "program_pid": a.live_program_pid(),
        })
        .to_string();
        self.reply_ok(&origin, &ok);
    }

    /// `stop_actor`: the actor's accepted calls are answered, a final checkpoint is
    /// taken, its worker stops; the reply comes once it is STOPPED. New calls get
    /// `ActorStopped` from now until `start_actor`.
    fn on_stop_actor(&mut self, origin: Origin, actor: &str, now: Instant) {
        let Some(id) = self.lookup_running(&origin, actor) else {
            return;
        };
        let a = &mut self.actors[id];
        a.stop_waiters.push(origin);
        if a.stopped_by_operator {
            // Already stopped (answered at once) or stopping (answered with the others).
            if a.phase == Phase::Stopped {
                self.answer_stop_waiters(id);
            }
            return;
        }
        tracing::info!(actor = %a.name, phase = a.phase.as_str(), "stop requested by operator: final checkpoint, then stop");
        a.stopped_by_operator = true;
        a.relaunch_pending = false;
        match a.phase {
            // No worker: nothing to checkpoint (the log keeps every call).
            Phase::Dead | Phase::Stopped => {
                observe::set_phase(&mut self.notices, id, a, Phase::Stopped);
                a.dead_reason = None;
                self.answer_stop_waiters(id);
            }
            // Waiting out a backoff: start it now, so that its final checkpoint holds
            // every call the log has.
            Phase::Restarting => self.spawn(id, now),
            Phase::Alive | Phase::Starting => self.mark_dirty(id),
        }
    }

    /// `start_actor`: starts an actor an operator stopped (or revives a DEAD one); a
    /// running actor is left as it is.
    fn on_start_actor(&mut self, origin: Origin, actor: &str, now: Instant) {
        let Some(id) = self.lookup_running(&origin, actor) else {
            return;
        };
        let a = &mut self.actors[id];
        if a.stopped_by_operator && a.phase != Phase::Stopped {
            let err = ErrorBody::new(
                ErrorKind::Busy,
                format!(
                    "actor {:?} is still stopping; start it once it is STOPPED",
                    a.name
                ),
            );
            self.reply_err(&origin, &err);
            return;
        }
        if let Some(err) = held_error(a) {
            self.reply_err(&origin, &err);
            return;
        }
        if matches!(a.phase, Phase::Stopped | Phase::Dead) {
            tracing::info!(actor = %a.name, phase = a.phase.as_str(), "start requested by operator");
            a.stopped_by_operator = false;
            a.tracker.reset();
            a.dead_reason = None;
            self.spawn(id, now);
        }
        let a = &self.actors[id];
        let ok = serde_json::json!({"actor": a.name, "state": a.state_name()}).to_string();
        self.reply_ok(&origin, &ok);
    }

    /// Answers whoever waits for an operator's stop of the actor: done once it is
    /// STOPPED (with its final checkpoint); an actor that went DEAD on the way is not.
    fn answer_stop_waiters(&mut self, id: ActorId) {
        let a = &mut self.actors[id];
        if a.stop_waiters.is_empty() {
            return;
        }
        let waiters = std::mem::take(&mut a.stop_waiters);
        let result = if a.phase == Phase::Dead {
            Err(a.dead_error())
        } else {
            Ok(serde_json::json!({
                "actor": a.name,
                "state": a.state_name(),
                "checkpoint": {"generation": a.checkpoint.0, "last_seq": a.checkpoint.1},
            })
            .to_string())
        };
        for w in waiters {
            self.answer(&w, result.clone());
        }
    }

    /// An import is a logged entry carrying the state: applied in call order, replayed
    /// after a crash like any call, dropped from the log once a checkpoint covers it.
    fn on_import(&mut self, origin: Origin, actor: &str, file: export::StateFile) {
        let Some(id) = self.lookup(&origin, actor) else {
            return;
        };
        let a = &self.actors[id];
        if file.header.kind != a.kind {
            let err = ErrorBody::new(
                ErrorKind::BadRequest,
                format!(
                    "import: the file holds the state of a {:?} actor ({:?}), but actor {:?} is of kind {:?}",
                    file.header.kind, file.header.actor, a.name, a.kind
                ),
            );
            self.reply_err(&origin, &err);
            return;
        }
        self.enqueue(
            origin,
            id,
            export::IMPORT_METHOD.to_string(),
            file.state,
            None,
        );
    }

    fn lookup(&mut self, origin: &Origin, actor: &str) -> Option<ActorId> {
        match self.by_name.get(actor) {
            Some(&id) => Some(id),
            None => {
                let err =
                    ErrorBody::new(ErrorKind::UnknownActor, format!("no actor named {actor:?}"));
                self.reply_err(origin, &err);
                None
            }
        }
    }

    /// Like [`Core::lookup`], for an op that changes an actor's lifecycle: refused with
    /// `Busy` while the supervisor shuts down.
    fn lookup_running(&mut self, origin: &Origin, actor: &str) -> Option<ActorId> {
        let id = self.lookup(origin, actor)?;
        if self.is_stopping() {
            let err = ErrorBody::new(ErrorKind::Busy, "the supervisor is shutting down");
            self.reply_err(origin, &err);
            return None;
        }
        Some(id)
    }

    fn on_call(
        &mut self,
        mut origin: Origin,
        actor: &str,
        method: String,
        args: Option<String>,
        key: Option<String>,
    ) {
        let Some(id) = self.lookup(&origin, actor) else {
            return;
        };
        let a = &self.actors[id];
        if let Some(methods) = a.methods
            && !methods.contains(&method.as_str())
        {
            let err = ErrorBody::new(
                ErrorKind::UnknownMethod,
                format!(
                    "actor {:?} (kind {}) has no method {method:?}; it has: {}",
                    a.name,
                    a.kind,
                    methods.join(", ")
                ),
            );
            origin.call = Some((id, self.now));
            self.reply_err(&origin, &err);
            return;
        }
        self.enqueue(
            origin,
            id,
            method,
            args.map(String::into_bytes).unwrap_or_default(),
            key,
        );
    }

    /// Accepts an entry into the actor's call order (a call, an export or an import),
    /// or refuses it when the actor cannot take it now. A call's idempotency `key` goes
    /// with it to the log and the worker, which answers a key it remembers with the
    /// first reply (G10).
    fn enqueue(
        &mut self,
        mut origin: Origin,
        id: ActorId,
        method: String,
        args: Vec<u8>,
        key: Option<String>,
    ) {
        origin.call = Some((id, self.now));
        let stopping = !matches!(self.mode, Mode::Running);
        let a = &mut self.actors[id];
        let refusal = if stopping {
            Some(ErrorBody::new(
                ErrorKind::Busy,
                "the supervisor is shutting down; no new calls are accepted",
            ))
        } else if a.stopped_by_operator {
            Some(a.stopped_error())
        } else if a.phase == Phase::Dead {
            Some(a.dead_error())
        } else if a.unanswered >= MAX_QUEUE {
            Some(ErrorBody::new(
                ErrorKind::Busy,
                format!(
                    "actor {:?} has {} calls queued (limit {MAX_QUEUE})",
                    a.name, a.unanswered
                ),
            ))
        } else {
            None
        };
        if let Some(err) = refusal {
            self.reply_err(&origin, &err);
            return;
        }
        // The retention in force now goes with the call (see `CallKey`).
        let key = key.map(|key| {
            Box::new(CallKey {
                key,
                keep_calls: u32::try_from(a.policy.idempotency_keys).unwrap_or(u32::MAX),
                keep_bytes: u32::try_from(a.policy.idempotency_bytes).unwrap_or(u32::MAX),
            })
        });
        let seq = a.next_seq;
        a.next_seq += 1;
        a.unanswered += 1;
        a.log.push_back(Entry {
            seq,
            method,
            args,
            key,
            origin: Some(origin),
            answered: None,
            attempts: 0,
            hangs: 0,
            recovered: false,
        });
        self.mark_dirty(id);
    }

    fn on_checkpoint_request(&mut self, origin: Origin, actor: &str) {
        let Some(id) = self.lookup(&origin, actor) else {
            return;
        };
        let a = &mut self.actors[id];
        if a.stopped_by_operator {
            let err = a.stopped_error();
            self.reply_err(&origin, &err);
            return;
        }
        match a.phase {
            Phase::Alive => {
                a.checkpoint_waiters.push(origin);
                if !a.checkpoint_outstanding {
                    a.checkpoint_outstanding = true;
                    self.out.push(Action::RequestCheckpoint {
                        actor: id,
                        epoch: a.epoch,
                    });
                }
            }
            Phase::Dead => {
                let err = a.dead_error();
                self.reply_err(&origin, &err);
            }
            other => {
                let err = ErrorBody::new(
                    ErrorKind::Busy,
                    format!(
                        "actor {:?} is {}; try again when it is ALIVE",
                        a.name,
                        other.as_str()
                    ),
                );
                self.reply_err(&origin, &err);
            }
        }
    }

    /// Starts an actor's first worker, or holds it DEAD when its state cannot be trusted.
    fn start(&mut self, id: ActorId, now: Instant) {
        match self.actors[id].hold.clone() {
            Some(reason) => self.make_dead(
                id,
                format!(
                    "{reason}; held until an operator accepts the loss: `resurgam restart {} \
                     --fresh`",
                    self.actors[id].name
                ),
            ),
            None => self.spawn(id, now),
        }
    }

    fn on_restart_request(&mut self, origin: Origin, actor: &str, fresh: bool, now: Instant) {
        let Some(id) = self.lookup_running(&origin, actor) else {
            return;
        };
        let a = &mut self.actors[id];
        if let Some(err) = held_error(a).filter(|_| !fresh) {
            self.reply_err(&origin, &err);
            return;
        }
        if let Some(reason) = a.hold.take() {
            tracing::warn!(actor = %a.name, %reason, "restart --fresh: the operator accepted the loss; the actor starts from what is left of its state");
            self.out.push(Action::Release { actor: id });
        }
        if a.stopped_by_operator {
            // Like `systemctl restart`: a stopped actor is started (after `--fresh` has
            // released a hold, which `start` alone refuses to do).
            self.on_start_actor(origin, actor, now);
            return;
        }
        tracing::info!(actor = %a.name, phase = a.phase.as_str(), fresh, "restart requested by operator");
        let ok = format!("{{\"restarting\":{}}}", json_string(&a.name));
        match a.phase {
            Phase::Dead | Phase::Restarting => {
                a.metrics.restarts.add("operator", 1);
                a.tracker.reset();
                a.dead_reason = None;
                self.spawn(id, now);
            }
            Phase::Starting | Phase::Alive => {
                a.operator_restart = true;
                self.out.push(Action::Kill {
                    actor: id,
                    epoch: a.epoch,
                });
            }
            Phase::Stopped => {}
        }
        self.reply_ok(&origin, &ok);
    }

    fn spawn(&mut self, id: ActorId, now: Instant) {
        let a = &mut self.actors[id];
        observe::set_phase(&mut self.notices, id, a, Phase::Starting);
        a.begin_epoch(now);
        self.out.push(Action::Spawn {
            actor: id,
            epoch: a.epoch,
        });
    }

    fn on_ready(&mut self, id: ActorId, epoch: u64, restored: Restored, now: Instant) {
        let Some(a) = self.current(id, epoch) else {
            return;
        };
        if a.phase != Phase::Starting {
            return;
        }
        let k = restored.last_seq;
        for r in &restored.rejected {
            tracing::warn!(actor = %a.name, rejected = %r, "checkpoint candidate rejected");
        }
        if let Some(p) = &restored.moved_aside {
            tracing::warn!(actor = %a.name, path = %p, "damaged checkpoint file moved aside");
        }
        if k < a.log_floor {
            // Calls in (k, log_floor] are gone: continuing would silently lose state.
            let reason = format!(
                "restored checkpoint (generation {}, last_seq {k}, from {}) is older than the \
                 call log, which starts after seq {}: calls in between are lost; refusing to \
                 serve a state that silently dropped acknowledged calls",
                restored.generation,
                restored.source.as_deref().unwrap_or("nothing: fresh start"),
                a.log_floor
            );
            tracing::error!(actor = %a.name, %reason, "unrecoverable checkpoint gap");
            self.out.push(Action::Kill { actor: id, epoch });
            self.make_dead(id, reason);
            return;
        }
        let a = &mut self.actors[id];
        a.restored = Some((restored.generation, k, restored.source.clone()));
        a.program_pid = restored.program_pid;
        // What the mmap slots hold from now on: the restored checkpoint is the newest; an
        // older slot not verified yet counts until found damaged (`on_verified`).
        a.checkpoint = (restored.generation, k);
        a.set_mmap_slots(&restored.mmap_slots);
        a.next_seq = a.next_seq.max(k + 1);
        a.sent_upto = k;
        a.inflight_batches = 0;
        observe::set_phase(&mut self.notices, id, a, Phase::Alive);
        a.alive_since = Some(now);
        a.last_checkpoint_request = now;
        let replay = a.log.iter().filter(|e| e.seq > k).count();
        a.replayed = replay as u64;
        a.begin_replay(k, now);
        // Unanswered calls the restored checkpoint already covers: their effect is in
        // the state. Recovered ones have no client; for the others the old worker sent
        // the reply before it wrote that checkpoint, so it is still on its way from the
        // old channel (accepted below whatever its epoch); if it does not come within
        // the grace, the client is told the call was applied and its reply lost.
        a.applied_floor = k;
        let mut covered = 0;
        for e in a.log.iter_mut() {
            if e.seq > k {
                break;
            }
            if e.answered.is_none() && e.recovered {
                e.answered = Some(0);
            } else if e.answered.is_none() {
                covered += 1;
            }
        }
        if covered > 0 {
            a.lost_reply_deadline = Some(now + DRAIN_GRACE);
        }
        let recovery = a.died_at.take().map(|t| now.saturating_duration_since(t));
        let recovery_ms = recovery.map(|d| d.as_secs_f64() * 1e3);
        a.metrics.replayed += replay as u64;
        if let Some(took) = recovery {
            a.metrics.recovery.observe(took);
            observe::push(
                &mut self.notices,
                Notice::Recovered {
                    actor: id,
                    pid: a.pid,
                    took,
                    replayed: replay as u64,
                    generation: restored.generation,
                    last_seq: k,
                },
            );
        }
        tracing::info!(
            actor = %a.name,
            pid = a.pid.unwrap_or(0),
            previous_pid = a.previous_pid.unwrap_or(0),
            recovery_ms,
            generation = restored.generation,
            last_seq = k,
            source = restored.source.as_deref().unwrap_or("none (fresh state)"),
            replay,
            restarts = a.restarts,
            "worker ready"
        );
        self.mark_dirty(id);
    }

    fn on_replies(&mut self, id: ActorId, epoch: u64, replies: Vec<Reply>, batch_done: bool) {
        let Some(a) = self.actors.get_mut(id) else {
            return;
        };
        let current = a.epoch == epoch;
        if current && batch_done {
            a.inflight_batches = a.inflight_batches.saturating_sub(1);
        }
        if current {
            a.note_replayed(&replies, self.now);
        }
        a.note_served(self.now);
        let mut answers = Vec::new();
        for r in replies {
            // A late reply from an earlier worker still answers a call nobody answered
            // yet: that worker applied it to a correct state, in order.
            if !current && a.entry_mut(r.seq).is_none_or(|e| e.answered.is_some()) {
                continue;
            }
            if let Some(ans) = a.on_reply(r) {
                answers.push(ans);
            }
        }
        for (origin, result) in answers {
            match result {
                Ok(ok) => self.reply_ok(&origin, &ok),
                Err(err) => self.reply_err(&origin, &err),
            }
        }
        self.mark_dirty(id);
    }

    /// The older checkpoint candidates of the current worker's restore are verified: say
    /// which are damaged, and stop counting a damaged mmap slot as a fallback.
    fn on_verified(
        &mut self,
        id: ActorId,
        epoch: u64,
        rejected: &[String],
        mmap_slots: &[(u64, u64)],
    ) {
        let Some(a) = self.current(id, epoch) else {
            return;
        };
        for r in rejected {
            tracing::warn!(actor = %a.name, rejected = %r, "checkpoint candidate rejected after the worker was ready");
        }
        // The worker sends this before any checkpoint that overwrites a slot, so the slots
        // are still those of its ready report; anything else is ignored (keeping more log).
        let restored = a.restored.as_ref().map(|(g, k, _)| (*g, *k));
        if restored == Some(a.checkpoint) {
            a.set_mmap_slots(mmap_slots);
        }
    }

    fn on_checkpointed(
        &mut self,
        id: ActorId,
        epoch: u64,
        (generation, last_seq): (u64, u64),
        previous: Option<u64>,
        now: Instant,
    ) {
        let Some(a) = self.current(id, epoch) else {
            return;
        };
        if (generation, last_seq) != a.checkpoint {
            // A new checkpoint (a re-report of the same one tells nothing new).
            a.checkpoint = (generation, last_seq);
            a.mmap_newest = Some(last_seq);
            a.mmap_other = previous;
        }
        a.checkpoint_outstanding = false;
        a.last_checkpoint_request = now;
        let waiters = std::mem::take(&mut a.checkpoint_waiters);
        a.sync_waiters
            .extend(waiters.into_iter().map(|w| (w, generation)));
        self.out.push(Action::SyncDisk { actor: id });
        self.relaunch_if_pending(id);
    }

    /// A reload changed how this actor's worker is launched (its program, user, limits):
    /// take a checkpoint, then replace the worker. Calls keep being accepted; those the
    /// old worker has not answered are replayed on the new one.
    ///
    /// Returns whether a worker is being replaced (not for a DEAD, stopped or
    /// restarting actor: its next start uses the new settings anyway).
    pub fn relaunch(&mut self, id: ActorId, now: Instant) -> bool {
        let Some(a) = self.actors.get_mut(id) else {
            return false;
        };
        tracing::info!(actor = %a.name, phase = a.phase.as_str(), "launch settings changed: checkpoint, then restart");
        match a.phase {
            Phase::Alive => {
                a.relaunch_pending = true;
                if !a.checkpoint_outstanding {
                    a.checkpoint_outstanding = true;
                    a.last_checkpoint_request = now;
                    self.out.push(Action::RequestCheckpoint {
                        actor: id,
                        epoch: a.epoch,
                    });
                }
            }
            Phase::Starting => {
                a.operator_restart = true;
                self.out.push(Action::Kill {
                    actor: id,
                    epoch: a.epoch,
                });
            }
            // The next worker is started with the new settings anyway.
            Phase::Restarting | Phase::Dead | Phase::Stopped => return false,
        }
        true
    }

    /// Restarts the worker if a reload asked for it and its checkpoint is answered.
    fn relaunch_if_pending(&mut self, id: ActorId) {
        let winding_down = matches!(self.mode, Mode::Stopping { .. });
        let a = &mut self.actors[id];
        if winding_down || a.winding_down() {
            // It stops anyway; the next start (if any) uses the new settings.
            a.relaunch_pending = false;
            return;
        }
        if a.relaunch_pending && !a.checkpoint_outstanding && a.phase == Phase::Alive {
            a.relaunch_pending = false;
            a.operator_restart = true;
            self.out.push(Action::Kill {
                actor: id,
                epoch: a.epoch,
            });
        }
    }

    /// The calls `from..=upto` could not be logged: never acknowledge them.
    fn on_log_failed(&mut self, id: ActorId, from: u64, upto: u64, error: &str) {
        let Some(a) = self.actors.get_mut(id) else {
            return;
        };
        tracing::error!(actor = %a.name, from, upto, %error, "call log append failed; refusing those calls");
        let mut failed = Vec::new();
        let (logged, sent) = (a.logged_upto, a.sent_upto);
        a.log.retain_mut(|e| {
            let refused = e.seq >= from && e.seq <= upto && e.seq > logged && e.seq > sent;
            if refused && let Some(o) = e.origin.take() {
                failed.push(o);
            }
            !refused
        });
        a.unanswered = a.unanswered.saturating_sub(failed.len());
        // Hand the log writer again what follows, unless an append after this one is
        // already queued (a tombstone's, then a flush's, in one burst): it reports for
        // itself, and its calls must not be written twice.
        if a.appended_upto <= upto {
            a.appended_upto = a.logged_upto;
        }
        // The refused calls were the newest: give their seqs back, so the log has no
        // hole that a later restore would take for lost calls.
        if a.log.back().is_none_or(|e| e.seq < from) && a.last_tombstone < from {
            a.next_seq = a.next_seq.min(from.max(a.logged_upto + 1));
        }
        let err = ErrorBody::new(
            ErrorKind::CallFailed,
            format!(
                "the call to {:?} was not accepted: its call log could not be written ({error})",
                a.name
            ),
        );
        for o in failed {
            self.reply_err(&o, &err);
        }
    }

    /// Fsync mode: releases the replies whose log records are now durable (or fails
    /// them when the fsync failed: the call ran, but its record may be lost).
    fn on_durable(&mut self, id: ActorId, upto: u64, error: Option<String>) {
        let Some(a) = self.actors.get_mut(id) else {
            return;
        };
        a.durable_upto = a.durable_upto.max(upto);
        let mut release = Vec::new();
        let mut keep = VecDeque::new();
        for h in a.held.drain(..) {
            if h.0 <= upto {
                release.push(h);
            } else {
                keep.push_back(h);
            }
        }
        a.held = keep;
        let name = a.name.clone();
        for (_, origin, result) in release {
            match (&error, result) {
                (None, Ok(ok)) => self.reply_ok(&origin, &ok),
                (None, Err(e)) => self.reply_err(&origin, &e),
                (Some(err), _) => {
                    let e = ErrorBody::new(
                        ErrorKind::CallFailed,
                        format!(
                            "the call to {name:?} ran, but fsync of its log record failed ({err}); it may not survive a power loss"
                        ),
                    );
                    self.reply_err(&origin, &e);
                }
            }
        }
        self.maybe_exit();
    }

    fn on_disk_synced(&mut self, id: ActorId, generation: u64, last_seq: u64) {
        let Some(a) = self.actors.get_mut(id) else {
            return;
        };
        // The disk thread reports every copy it makes, in order: this is what it holds.
        a.disk = (generation, last_seq);
        a.disk_sync_error = None;
        a.truncate_log();
        if a.log_floor > a.truncated_upto {
            a.truncated_upto = a.log_floor;
            self.out.push(Action::TruncateLog {
                actor: id,
                upto: a.log_floor,
            });
        }
        let a = &mut self.actors[id];
        let (done, wait): (Vec<_>, Vec<_>) = std::mem::take(&mut a.sync_waiters)
            .into_iter()
            .partition(|(_, g)| *g <= generation);
        a.sync_waiters = wait;
        let ok = format!("{{\"generation\":{generation},\"last_seq\":{last_seq}}}");
        for (w, _) in done {
            self.reply_ok(&w, &ok);
        }
        if matches!(self.mode, Mode::Stopping { .. }) || self.actors[id].winding_down() {
            self.stop_worker_if_done(id);
        }
    }

    /// Both the exit and the channel's end are known (or the grace ran out): decide.
    fn on_death(&mut self, id: ActorId, now: Instant) {
        let stopping = matches!(self.mode, Mode::Stopping { .. });
        let a = &mut self.actors[id];
        if matches!(a.phase, Phase::Dead | Phase::Stopped | Phase::Restarting) {
            return;
        }
        a.drain_deadline = None;
        let waiters = std::mem::take(&mut a.checkpoint_waiters);
        a.checkpoint_outstanding = false;
        let name = a.name.clone();
        for w in waiters {
            let err = ErrorBody::new(
                ErrorKind::Busy,
                format!("the worker of {name:?} died before the checkpoint was written; try again"),
            );
            self.reply_err(&w, &err);
        }
        let a = &mut self.actors[id];
        a.died_at = Some(now);
        a.previous_pid = a.pid;
        let reason = a.last_exit.clone().unwrap_or_else(|| "ended".to_string());
        a.note_exit(now, reason.clone());
        let winding_down = stopping || a.winding_down();
        if winding_down && (a.stop_sent || a.exit_status.is_some_and(|e| e.is_clean())) {
            tracing::info!(actor = %a.name, pid = a.pid.unwrap_or(0), %reason, "worker stopped");
            observe::set_phase(&mut self.notices, id, a, Phase::Stopped);
            if a.stopped_by_operator && !stopping {
                let err = a.stopped_error();
                self.fail_unanswered_with(id, &err);
            } else {
                self.fail_unanswered(
                    id,
                    ErrorKind::Busy,
                    "the supervisor stopped before the call ran",
                );
            }
            self.answer_stop_waiters(id);
            if self.actors[id].retiring {
                self.finish_removal(id);
            }
            self.maybe_exit();
            return;
        }
        let (cause, pid) = (observe::death_cause(a), a.pid);
        let died = |cause, restart_in| Notice::Died {
            actor: id,
            pid,
            reason: reason.clone(),
            cause,
            restart_in,
        };
        if let Some(msg) = a.fatal.take() {
            self.notify(died("fatal", None));
            let reason = format!("worker reported a fatal error: {msg}");
            self.make_dead(id, reason);
            return;
        }
        if std::mem::take(&mut a.operator_restart) {
            tracing::info!(actor = %a.name, pid = a.pid.unwrap_or(0), %reason, "worker killed for an operator restart");
            a.metrics.restarts.add("operator", 1);
            self.notify(died("operator", Some(Duration::ZERO)));
            self.spawn(id, now);
            return;
        }
        // Poison-call accounting: only the call the worker was executing is blamed. A
        // kill for a hang counts apart from crashes: the call is dropped only when it
        // hangs its worker every time (a worker stopped or starved from outside hangs
        // in whatever call it was running, and that call is not to blame).
        let mut poisoned = None;
        let limit = a.policy.max_call_retries;
        let hung = a.hung;
        if let Some(seq) = a.executing_at_death.take()
            && let Some(e) = a.entry_mut(seq)
            && e.answered.is_none()
        {
            let count = if hung {
                e.hangs += 1;
                e.hangs
            } else {
                e.attempts += 1;
                e.attempts
            };
            if limit >= 0 && i64::from(count) >= limit {
                poisoned = Some((seq, count));
            }
        }
        if let Some((seq, attempts)) = poisoned {
            let a = &mut self.actors[id];
            let e = a.remove_entry(seq);
            if e.as_ref().is_some_and(|e| !e.recovered) {
                a.unanswered = a.unanswered.saturating_sub(1);
            }
            let tombstone = if seq <= a.appended_upto {
                self.cancel(id, vec![seq])
            } else {
                None
            };
            let a = &mut self.actors[id];
            tracing::error!(actor = %a.name, seq, attempts, method = e.as_ref().map_or("?", |e| e.method.as_str()), "poison call dropped");
            a.metrics.poisoned += 1;
            let method = e.as_ref().map_or_else(String::new, |e| e.method.clone());
            observe::push(
                &mut self.notices,
                Notice::Poison {
                    actor: id,
                    seq,
                    method,
                    attempts,
                },
            );
            if let Some(Entry {
                origin: Some(o),
                method,
                ..
            }) = e
            {
                let err = ErrorBody::new(
                    ErrorKind::CallFailed,
                    format!(
                        "call {method:?} to {:?} {} its worker {attempts} times ({reason}); it was dropped",
                        a.name,
                        if hung { "hung" } else { "killed" }
                    ),
                );
                self.reply_after(id, tombstone, o, err);
            }
        }
        let a = &mut self.actors[id];
        match a.tracker.on_death(&a.policy, now, a.alive_since) {
            Ok(delay) => {
                tracing::warn!(
                    actor = %a.name,
                    pid = a.pid.unwrap_or(0),
                    exit = %reason,
                    restarts = a.restarts,
                    delay_ms = delay.as_millis() as u64,
                    "worker died; restarting"
                );
                a.restarts += 1;
                a.metrics.restarts.add(cause, 1);
                observe::push(&mut self.notices, died(cause, Some(delay)));
                // While stopping, restart at once: the final checkpoint must hold
                // every call the log has (in memory mode nothing else does).
                if delay.is_zero() || stopping {
                    self.spawn(id, now);
                } else {
                    observe::set_phase(&mut self.notices, id, a, Phase::Restarting);
                    a.restart_at = Some(now + delay);
                    a.alive_since = None;
                }
            }
            Err(give_up) => {
                observe::push(&mut self.notices, died(cause, None));
                let reason = format!(
                    "worker died {} times within {} (max_restarts = {}); last: {reason}",
                    give_up.restarts + 1,
                    resurgam_shared::duration::format_duration(give_up.window),
                    a.policy.max_restarts
                );
                self.make_dead(id, reason);
            }
        }
    }

    fn make_dead(&mut self, id: ActorId, reason: String) {
        let a = &mut self.actors[id];
        if a.retiring {
            tracing::error!(actor = %a.name, %reason, "actor removed by reload gave up before its final checkpoint; its pending calls fail and it is removed");
        } else {
            tracing::error!(actor = %a.name, %reason, "actor is DEAD; `resurgam restart` revives it");
        }
        observe::set_phase(&mut self.notices, id, a, Phase::Dead);
        observe::push(
            &mut self.notices,
            Notice::Dead {
                actor: id,
                reason: reason.clone(),
            },
        );
        a.dead_reason = Some(reason);
        // An operator's stop ends here: no worker runs, and `start` or `restart` revives it.
        a.stopped_by_operator = false;
        a.alive_since = None;
        let err = a.dead_error();
        let waiters: Vec<Origin> = std::mem::take(&mut a.checkpoint_waiters)
            .into_iter()
            .chain(
                std::mem::take(&mut a.sync_waiters)
                    .into_iter()
                    .map(|(w, _)| w),
            )
            .collect();
        for w in waiters {
            self.reply_err(&w, &err);
        }
        self.fail_unanswered_with(id, &err);
        self.answer_stop_waiters(id);
        if self.actors[id].retiring {
            self.finish_removal(id);
        }
        self.maybe_exit();
    }

    fn fail_unanswered(&mut self, id: ActorId, kind: ErrorKind, message: &str) {
        let err = ErrorBody::new(kind, message);
        self.fail_unanswered_with(id, &err);
    }

    /// Answers every unanswered call with `err` and removes it from the log (answered
    /// calls stay: they are needed to rebuild the state).
    fn fail_unanswered_with(&mut self, id: ActorId, err: &ErrorBody) {
        let a = &mut self.actors[id];
        let mut failed = Vec::new();
        let mut cancelled = Vec::new();
        let logged = a.appended_upto;
        // Calls the current worker's state already holds ran: they are answered as such
        // and kept, never failed or cancelled.
        let lost = a.take_lost_replies();
        a.log.retain_mut(|e| {
            if e.answered.is_none() && !e.recovered {
                if let Some(o) = e.origin.take() {
                    failed.push(o);
                }
                if e.seq <= logged {
                    cancelled.push(e.seq);
                }
                false
            } else {
                true
            }
        });
        a.unanswered = 0;
        let lost_err = lost_reply_error(&a.name);
        for o in lost {
            self.reply_err(&o, &lost_err);
        }
        let tombstone = self.cancel(id, cancelled);
        for o in failed {
            self.reply_after(id, tombstone, o, err.clone());
        }
    }

    /// Durable modes: cancels logged calls with a tombstone record (its own seq, which
    /// is returned), so a restart of the supervisor never runs a call whose client was
    /// told it failed.
    fn cancel(&mut self, id: ActorId, cancelled: Vec<u64>) -> Option<u64> {
        let a = &mut self.actors[id];
        if !a.durable() || cancelled.is_empty() {
            return None;
        }
        // Records reach the log in seq order: calls accepted before this tombstone
        // but not yet handed to the log writer go first.
        if let Some(calls) = a.take_unappended() {
            self.out.push(Action::Append { actor: id, calls });
        }
        let a = &mut self.actors[id];
        let seq = a.next_seq;
        a.next_seq += 1;
        a.last_tombstone = seq;
        self.out.push(Action::Cancel {
            actor: id,
            seq,
            cancelled,
        });
        Some(seq)
    }

    /// Sends an error reply; in fsync mode only once the tombstone `after` is durable
    /// (else a power loss could bring back a call its client was told failed).
    fn reply_after(&mut self, id: ActorId, after: Option<u64>, to: Origin, err: ErrorBody) {
        let a = &mut self.actors[id];
        match after {
            Some(seq)
                if a.policy.durability == resurgam_shared::config::Durability::Fsync
                    && seq > a.durable_upto =>
            {
                a.held.push_back((seq, to, Err(err)));
            }
            _ => self.reply_err(&to, &err),
        }
    }

    /// Handles every timer that is due. Each is checked in turn against the state the
    /// previous ones left (no early exit), so none that is due survives the tick.
    fn on_tick(&mut self, now: Instant) {
        for id in 0..self.actors.len() {
            let a = &mut self.actors[id];
            a.report_replay(now);
            if a.restart_at.is_some_and(|t| t <= now) && a.phase == Phase::Restarting {
                self.spawn(id, now);
            }
            let a = &mut self.actors[id];
            if a.start_deadline.is_some_and(|t| t <= now) && a.phase == Phase::Starting {
                a.start_deadline = None;
                tracing::error!(actor = %a.name, pid = a.pid.unwrap_or(0), "worker not ready within startup_timeout; killing it");
                a.last_exit = Some("not ready within startup_timeout".into());
                self.out.push(Action::Kill {
                    actor: id,
                    epoch: a.epoch,
                });
            }
            let a = &mut self.actors[id];
            if a.drain_deadline.is_some_and(|t| t <= now) {
                a.drain_deadline = None;
                if a.exited {
                    tracing::warn!(actor = %a.name, "worker's channel did not close after its exit; handling the death anyway");
                    a.closed = true;
                    self.on_death(id, now);
                } else {
                    tracing::warn!(actor = %a.name, pid = a.pid.unwrap_or(0), "worker closed its channel but did not exit; killing it");
                    self.out.push(Action::Kill {
                        actor: id,
                        epoch: a.epoch,
                    });
                }
            }
            let a = &mut self.actors[id];
            if a.lost_reply_deadline.is_some_and(|t| t <= now) {
                a.lost_reply_deadline = None;
                let lost = a.take_lost_replies();
                let err = lost_reply_error(&a.name);
                for o in lost {
                    tracing::error!(actor = %self.actors[id].name, "reply lost for an applied call");
                    self.reply_err(&o, &err);
                }
            }
            let a = &mut self.actors[id];
            match a.heartbeat(now) {
                Heartbeat::Hung => {
                    let timeout =
                        resurgam_shared::duration::format_duration(a.policy.heartbeat_timeout);
                    tracing::error!(actor = %a.name, pid = a.pid.unwrap_or(0), %timeout, "worker hung: no reply and no heartbeat within heartbeat_timeout; killing it");
                    a.hung = true;
                    self.out.push(Action::Kill {
                        actor: id,
                        epoch: a.epoch,
                    });
                }
                Heartbeat::Ping => {
                    a.ping_sent(now);
                    self.out.push(Action::Ping {
                        actor: id,
                        epoch: a.epoch,
                    });
                }
                Heartbeat::Fine => {}
            }
            let a = &mut self.actors[id];
            if let Some(due) = a.checkpoint_due()
                && due <= now
            {
                a.checkpoint_outstanding = true;
                a.last_checkpoint_request = now;
                self.out.push(Action::RequestCheckpoint {
                    actor: id,
                    epoch: a.epoch,
                });
            }
        }
        if let Mode::Stopping { deadline } = self.mode
            && deadline <= now
        {
            tracing::error!("shutdown_timeout reached; killing the remaining workers");
            for id in 0..self.actors.len() {
                let a = &mut self.actors[id];
                if !matches!(a.phase, Phase::Stopped | Phase::Dead) {
                    self.out.push(Action::Kill {
                        actor: id,
                        epoch: a.epoch,
                    });
                    observe::set_phase(&mut self.notices, id, a, Phase::Stopped);
                    // The worker may have applied (and even checkpointed) these calls
                    // just now: say so, and write no tombstone, so a durable log replays
                    // them rather than dropping calls that ran.
                    let err = ErrorBody::new(
                        ErrorKind::Timeout,
                        format!(
                            "the supervisor's shutdown_timeout ran out; the call to {:?} may or may not have been applied",
                            a.name
                        ),
                    );
                    let mut waiting = Vec::new();
                    for e in a.log.iter_mut() {
                        if e.answered.is_none() {
                            waiting.extend(e.origin.take());
                        }
                    }
                    for o in waiting {
                        self.reply_err(&o, &err);
                    }
                }
            }
            self.mode = Mode::Exited;
            self.out.push(Action::Exit { code: 1 });
        }
    }

    fn begin_shutdown(&mut self, reason: &str, now: Instant) {
        if !matches!(self.mode, Mode::Running) {
            return;
        }
        tracing::info!(%reason, "shutting down: answering in-flight calls, then final checkpoints");
        self.mode = Mode::Stopping {
            deadline: now + self.shutdown_timeout,
        };
        for id in 0..self.actors.len() {
            let a = &mut self.actors[id];
            let err = ErrorBody::new(
                ErrorKind::Busy,
                format!(
                    "the supervisor is shutting down; actor {:?} stops with it",
                    a.name
                ),
            );
            for w in std::mem::take(&mut a.stop_waiters) {
                self.reply_err(&w, &err);
            }
            let a = &mut self.actors[id];
            match a.phase {
                // Waiting out a backoff: start it now, so its final checkpoint holds
                // every call the log has.
                Phase::Restarting => self.spawn(id, now),
                Phase::Alive | Phase::Starting => self.mark_dirty(id),
                Phase::Dead => {
                    let pending = a.memory_only_calls();
                    if pending > 0 {
                        tracing::warn!(actor = %a.name, calls = pending, "actor is DEAD: its calls since the last checkpoint live only in memory (durability = \"memory\") and are lost at exit");
                    }
                }
                Phase::Stopped => {}
            }
        }
        self.flush();
        self.maybe_exit();
    }

    /// In shutdown: once an alive actor has no unanswered call, ask for its final
    /// checkpoint.
    fn maybe_final_checkpoint(&mut self, id: ActorId) {
        let a = &mut self.actors[id];
        if a.phase == Phase::Alive
            && a.unanswered == 0
            && !a.final_checkpoint_requested
            && a.inflight_batches == 0
        {
            a.final_checkpoint_requested = true;
            a.checkpoint_outstanding = true;
            self.out.push(Action::RequestCheckpoint {
                actor: id,
                epoch: a.epoch,
            });
        }
    }

    fn stop_worker_if_done(&mut self, id: ActorId) {
        let a = &mut self.actors[id];
        if a.phase == Phase::Alive
            && a.final_checkpoint_requested
            && !a.checkpoint_outstanding
            && !a.stop_sent
        {
            a.stop_sent = true;
            self.out.push(Action::StopWorker {
                actor: id,
                epoch: a.epoch,
            });
        }
    }

    /// Exits once every actor is stopped and no reply waits for its log record to
    /// become durable (it would never reach its client).
    fn maybe_exit(&mut self) {
        if matches!(self.mode, Mode::Stopping { .. })
            && self
                .actors
                .iter()
                .all(|a| matches!(a.phase, Phase::Stopped | Phase::Dead) && a.held.is_empty())
        {
            tracing::info!("every actor is stopped; exiting");
            self.mode = Mode::Exited;
            self.out.push(Action::Exit { code: 0 });
        }
    }
}

/// The answer to a call whose effect is in the state but whose reply is gone.
fn lost_reply_error(actor: &str) -> ErrorBody {
    ErrorBody::new(
        ErrorKind::CallFailed,
        format!(
            "the call to {actor:?} was applied, but its reply was lost with the worker that ran \
             it (a call with an idempotency key gets its first reply when sent again with the \
             same key)"
        ),
    )
}

/// The refusal of a plain start or restart of an actor held DEAD for damaged or vanished
/// state files: only `restart --fresh` accepts the loss.
fn held_error(a: &ActorState) -> Option<ErrorBody> {
    let reason = a.hold.as_deref()?;
    Some(ErrorBody::new(
        ErrorKind::BadRequest,
        format!(
            "actor {:?} is held DEAD: {reason}; a plain start would run it on as if nothing \
             happened. `resurgam restart {} --fresh` starts it from what is left, accepting \
             the loss",
            a.name, a.name
        ),
    ))
}

/// JSON string literal of `s`.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"?\"".to_string())
}

#[cfg(test)]
mod tests;
