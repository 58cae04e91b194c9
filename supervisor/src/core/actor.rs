//! Per-actor state of the core: lifecycle, call log, checkpoint bookkeeping.

use std::collections::VecDeque;
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::Instant;

use resurgam_shared::calllog::LogRecord;
use resurgam_shared::config::{Durability, Policy};
use resurgam_shared::export::EXPORT_METHOD;
use resurgam_shared::ipc::{Call, CallKey, Outcome, Reply};
use resurgam_shared::protocol::{ErrorBody, ErrorKind};

use super::restart::RestartTracker;
use super::{
    Action, ActorId, ActorSpec, MAX_BATCH_BYTES, MAX_BATCH_CALLS, MAX_INFLIGHT_BATCHES, Origin,
};
use crate::exit::WorkerExit;

/// How often a long replay reports its progress in the log.
pub(super) const REPLAY_PROGRESS_EVERY: std::time::Duration = std::time::Duration::from_secs(5);

/// A replay in progress: the logged calls after the restored checkpoint that the
/// current worker is applying again (`status` shows `replaying done/total`).
#[derive(Debug, Clone)]
pub(super) struct Replay {
    /// The restored checkpoint's last_seq: replayed calls come after it…
    pub after: u64,
    /// …up to this seq.
    pub upto: u64,
    pub total: u64,
    pub done: u64,
    pub started: Instant,
    /// When the next progress line is due.
    pub next_report: Instant,
}

/// How many of an actor's latest worker exits `status` lists.
pub(super) const EXITS_KEPT: usize = 5;
/// `calls_per_s` in `status` is measured over at least this long (at most twice it).
pub(super) const RATE_WINDOW: std::time::Duration = std::time::Duration::from_secs(5);

/// Sizes of an actor's files, as the shell last measured them (for `status`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FileSizes {
    /// The memory-mapped checkpoint file (both slots).
    pub mmap_bytes: Option<u64>,
    /// The synced disk copy: the newest checkpoint's size on disk.
    pub disk_copy_bytes: Option<u64>,
    /// The call log's segments.
    pub log_bytes: u64,
}

/// How long a spawn request may wait for its turn before `startup_timeout` counts.
const SPAWN_QUEUE_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// Where an actor is in its life (the `state` field of `status`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Starting,
    Alive,
    Restarting,
    Dead,
    /// Stopped by a graceful shutdown, by a reload that removed the actor, or by an
    /// operator (`stop_actor`, until `start_actor`).
    Stopped,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Starting => "STARTING",
            Phase::Alive => "ALIVE",
            Phase::Restarting => "RESTARTING",
            Phase::Dead => "DEAD",
            Phase::Stopped => "STOPPED",
        }
    }
}

/// One logged call.
#[derive(Debug)]
pub(super) struct Entry {
    pub seq: u64,
    pub method: String,
    pub args: Vec<u8>,
    /// The client's idempotency key, if the call carried one, with the retention it was
    /// accepted with.
    /// Boxed: most calls have none, and the core holds every call not yet checkpointed.
    pub key: Option<Box<CallKey>>,
    /// Who waits for the reply; `None` once answered.
    pub origin: Option<Origin>,
    /// Hash of the first reply, once answered (replays are compared with it; 0 means
    /// the first reply is unknown, e.g. for calls recovered from the durable log).
    pub answered: Option<u64>,
    /// Deaths of a worker while it executed this call (kills for a hang excluded)…
    pub attempts: u32,
    /// …and kills of a worker found hung while it executed this call.
    pub hangs: u32,
    /// Recovered from the durable log at start: its client may have had its reply, so
    /// it is never failed (only dropped as a poison call, which cannot have succeeded).
    pub recovered: bool,
}

impl Entry {
    /// The call as the worker and the log writer get it.
    pub fn call(&self) -> Call {
        Call {
            seq: self.seq,
            method: self.method.clone(),
            args: self.args.clone(),
            key: self.key.as_deref().cloned(),
        }
    }
}

/// What hang detection wants now.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Heartbeat {
    Fine,
    /// Idle for half the timeout: ask for a sign of life.
    Ping,
    /// Waited a whole timeout for a worker that owes an answer.
    Hung,
}

/// A first answer to deliver: who asked, and the result.
pub(super) type Answer = (Origin, Result<String, ErrorBody>);

pub(super) struct ActorState {
    pub name: String,
    pub kind: String,
    pub policy: Policy,
    /// The methods the worker answers; `None` when its program decides (kind `exec`).
    pub methods: Option<&'static [&'static str]>,
    pub phase: Phase,
    pub dirty: bool,

    // The current worker (epoch).
    pub epoch: u64,
    pub pid: Option<u32>,
    pub exited: bool,
    pub closed: bool,
    pub exit_status: Option<WorkerExit>,
    pub last_exit: Option<String>,
    pub executing_at_death: Option<u64>,
    pub fatal: Option<String>,
    /// Why the worker's exec program failed, as the worker reported it before exiting.
    pub crash_reason: Option<String>,
    /// The current worker's exec program (kind `exec`).
    pub program_pid: Option<u32>,
    /// A reload changed how the worker is launched: restart it after the next checkpoint.
    pub relaunch_pending: bool,
    pub start_deadline: Option<Instant>,
    pub drain_deadline: Option<Instant>,
    pub restart_at: Option<Instant>,
    pub alive_since: Option<Instant>,
    pub operator_restart: bool,
    /// Removed from the config by a reload: winds down like at shutdown.
    pub retiring: bool,
    /// Stopped by an operator (`stop_actor`): winds down like at shutdown, then stays
    /// STOPPED (calls refused with `ActorStopped`) until `start_actor`.
    pub stopped_by_operator: bool,
    /// Memory mode: acknowledged calls lost when the actor was removed without a final
    /// checkpoint (it was DEAD, or its worker gave up on the way).
    pub lost_at_removal: u64,
    /// Who waits for the operator's stop to finish (answered once STOPPED, or DEAD).
    pub stop_waiters: Vec<Origin>,
    pub final_checkpoint_requested: bool,
    pub stop_sent: bool,
    pub dead_reason: Option<String>,
    /// Why its state cannot be trusted (damaged or vanished files), until an operator
    /// accepts the loss: see [`super::ActorSpec::held`].
    pub hold: Option<String>,
    /// Every call up to here is in the current worker's state (its restored checkpoint).
    pub applied_floor: u64,
    /// When to give up waiting for late replies of calls the restored state covers.
    pub lost_reply_deadline: Option<Instant>,
    /// When the previous worker's death was handled, and its pid (for the log line of
    /// the next "worker ready").
    pub died_at: Option<Instant>,
    pub previous_pid: Option<u32>,
    /// Last time any message came from the current worker.
    pub last_heard: Instant,
    pub ping_outstanding: bool,
    /// The current worker was killed because it hung.
    pub hung: bool,
    /// The current worker's replay, while it runs.
    pub replay: Option<Replay>,
    /// The latest worker exits, newest last: when, and how.
    pub exits: VecDeque<(Instant, String)>,
    /// `served` at two moments at least [`RATE_WINDOW`] apart (older first), for
    /// `calls_per_s`.
    pub rate_marks: [(Instant, u64); 2],
    pub files: Option<FileSizes>,

    // The call log.
    pub next_seq: u64,
    pub log: VecDeque<Entry>,
    /// Every call with a larger seq is in the log (unless it was failed and never ran).
    pub log_floor: u64,
    pub unanswered: usize,
    /// Durable modes: entries up to here were handed to the log writer…
    pub appended_upto: u64,
    /// …up to here are written (only these may be dispatched)…
    pub logged_upto: u64,
    /// …and up to here are durable (fsync mode: fsync'd; log mode: written, with the
    /// manifest's mark of the log on disk): only these replies may be released.
    pub durable_upto: u64,
    /// Replies waiting for their log record to be durable (see `durable_upto`).
    pub held: VecDeque<(u64, Origin, Result<String, ErrorBody>)>,
    /// Calls recovered from the durable log at start.
    pub recovered: u64,
    /// Seq of the newest tombstone: seqs are never handed back below it.
    pub last_tombstone: u64,
    /// The log floor last sent to the shell for segment truncation.
    pub truncated_upto: u64,
    pub sent_upto: u64,
    pub replied_upto: u64,
    pub inflight_batches: u32,

    // Checkpoints.
    /// Newest checkpoint the worker reported: (generation, last_seq).
    pub checkpoint: (u64, u64),
    /// last_seq of the newest and of the other valid mmap slot, as last reported.
    pub mmap_newest: Option<u64>,
    pub mmap_other: Option<u64>,
    /// Checkpoint the synced disk copy holds, as the disk thread last reported.
    pub disk: (u64, u64),
    pub disk_sync_error: Option<String>,
    pub checkpoint_outstanding: bool,
    pub last_checkpoint_request: Instant,
    pub checkpoint_waiters: Vec<Origin>,
    pub sync_waiters: Vec<(Origin, u64)>,
    pub restored: Option<(u64, u64, Option<String>)>,

    // Counters.
    pub restarts: u64,
    pub replayed: u64,
    pub served: u64,
    pub nondeterministic: u64,
    pub tracker: RestartTracker,
    pub metrics: super::ActorMetrics,
}

fn outcome_hash(o: &Outcome) -> u64 {
    let mut h = DefaultHasher::new();
    o.hash(&mut h);
    // 0 is reserved for "first reply unknown".
    h.finish().max(1)
}

impl ActorState {
    /// How the current worker ended, for `last_exit`: the exit status, with why it hung or
    /// what its exec program did when that is known.
    pub fn describe_exit(&self, exit: WorkerExit) -> String {
        match (&self.crash_reason, self.hung) {
            (_, true) => format!("hung, then {exit} by the supervisor"),
            (Some(reason), false) => format!("{reason} (worker {exit})"),
            (None, false) => exit.to_string(),
        }
    }

    pub fn new(spec: ActorSpec, now: Instant) -> ActorState {
        ActorState {
            name: spec.name,
            kind: spec.kind,
            policy: spec.policy,
            methods: spec.methods,
            phase: Phase::Starting,
            dirty: false,
            epoch: 0,
            pid: None,
            exited: false,
            closed: false,
            exit_status: None,
            last_exit: None,
            executing_at_death: None,
            fatal: None,
            crash_reason: None,
            program_pid: None,
            relaunch_pending: false,
            start_deadline: None,
            drain_deadline: None,
            restart_at: None,
            alive_since: None,
            operator_restart: false,
            retiring: false,
            stopped_by_operator: false,
            lost_at_removal: 0,
            stop_waiters: Vec::new(),
            final_checkpoint_requested: false,
            stop_sent: false,
            dead_reason: None,
            hold: spec.held,
            died_at: None,
            previous_pid: None,
            last_heard: now,
            ping_outstanding: false,
            hung: false,
            replay: None,
            exits: VecDeque::new(),
            rate_marks: [(now, 0); 2],
            files: None,
            applied_floor: 0,
            lost_reply_deadline: None,
            next_seq: spec.start_seq + 1,
            log: VecDeque::new(),
            log_floor: spec.start_seq,
            unanswered: 0,
            appended_upto: spec.start_seq,
            logged_upto: spec.start_seq,
            durable_upto: spec.start_seq,
            held: VecDeque::new(),
            recovered: 0,
            truncated_upto: 0,
            last_tombstone: 0,
            sent_upto: spec.start_seq,
            replied_upto: spec.start_seq,
            inflight_batches: 0,
            checkpoint: (0, spec.start_seq),
            mmap_newest: None,
            mmap_other: None,
            disk: (0, spec.start_seq),
            disk_sync_error: None,
            checkpoint_outstanding: false,
            last_checkpoint_request: now,
            checkpoint_waiters: Vec::new(),
            sync_waiters: Vec::new(),
            restored: None,
            restarts: 0,
            replayed: 0,
            served: 0,
            nondeterministic: 0,
            tracker: RestartTracker::default(),
            metrics: super::ActorMetrics::default(),
        }
    }

    /// Loads calls recovered from the durable log: they are replayed for their effect
    /// (their clients are gone) after the checkpoint the worker restores.
    pub fn load_recovered(&mut self, records: Vec<LogRecord>, range: Option<(u64, u64)>) {
        let range = range.or(match (records.first(), records.last()) {
            (Some(f), Some(l)) => Some((f.seq, l.seq)),
            _ => None,
        });
        let Some((first_seq, last_seq)) = range else {
            return;
        };
        // Every call after this is in the log or was cancelled; a checkpoint older than
        // it leaves a gap that restore refuses to paper over.
        self.log_floor = first_seq.saturating_sub(1);
        self.next_seq = self.next_seq.max(last_seq + 1);
        for r in records {
            self.next_seq = self.next_seq.max(r.seq + 1);
            self.log.push_back(Entry {
                seq: r.seq,
                method: r.method,
                args: r.args,
                key: r.key,
                // Unanswered: its client is gone, but it still counts attempts, so a
                // recovered poison call is dropped like any other.
                origin: None,
                answered: None,
                attempts: 0,
                hangs: 0,
                recovered: true,
            });
            self.recovered += 1;
        }
        let last = self.next_seq.saturating_sub(1);
        self.appended_upto = last;
        self.logged_upto = last;
        self.durable_upto = last;
    }

    /// Logged calls newer than the newest checkpoint: what a new worker is sent as soon
    /// as it is ready (the log is in seq order).
    pub fn has_calls_after_checkpoint(&self) -> bool {
        self.log.back().is_some_and(|e| e.seq > self.checkpoint.1)
    }

    /// Memory mode: the logged calls after the newest checkpoint, whose effect nothing
    /// but the core's memory (and a worker's state) holds. Zero in the durable modes.
    pub fn memory_only_calls(&self) -> usize {
        if self.durable() {
            return 0;
        }
        self.log
            .iter()
            .filter(|e| e.seq > self.checkpoint.1)
            .count()
    }

    /// True when calls go to the durable log before they run.
    pub fn durable(&self) -> bool {
        self.policy.durability != Durability::Memory
    }

    /// Calls up to this seq may go to the worker (written to the log first when durable).
    fn dispatchable_upto(&self) -> u64 {
        if self.durable() {
            self.logged_upto
        } else {
            u64::MAX
        }
    }

    /// Gives up on the late replies of calls the current worker's restored state already
    /// holds: marks them answered (they stay in the log) and returns who still waits.
    pub fn take_lost_replies(&mut self) -> Vec<Origin> {
        let floor = self.applied_floor;
        let mut lost = Vec::new();
        for e in self.log.iter_mut().take_while(|e| e.seq <= floor) {
            if e.answered.is_none() {
                e.answered = Some(0);
                if !e.recovered {
                    self.unanswered = self.unanswered.saturating_sub(1);
                }
                lost.extend(e.origin.take());
            }
        }
        lost
    }

    /// Durable modes: the calls not yet handed to the log writer.
    pub fn take_unappended(&mut self) -> Option<Vec<Call>> {
        if !self.durable() {
            return None;
        }
        let start = self.log.partition_point(|e| e.seq <= self.appended_upto);
        if start == self.log.len() {
            return None;
        }
        let calls: Vec<Call> = self.log.range(start..).map(Entry::call).collect();
        if let Some(last) = calls.last() {
            self.appended_upto = last.seq;
        }
        Some(calls)
    }

    /// Moves the actor to `phase`: the one place phases change. Every timer belongs to a
    /// phase (`start_deadline` to STARTING, `restart_at` to RESTARTING, the drain of a
    /// dying worker and the late replies to a live one) and is cleared here when its
    /// phase is left, so no deadline outlives its phase: one would be due forever and
    /// keep the event loop awake. (Hang detection and time-based checkpoints are
    /// derived from the phase in [`ActorState::next_deadline`].) Returns the phase left.
    pub fn set_phase(&mut self, phase: Phase) -> Phase {
        if phase != Phase::Starting {
            self.start_deadline = None;
        }
        if phase != Phase::Restarting {
            self.restart_at = None;
        }
        if matches!(phase, Phase::Dead | Phase::Stopped) {
            self.drain_deadline = None;
            self.lost_reply_deadline = None;
        }
        std::mem::replace(&mut self.phase, phase)
    }

    /// Resets the per-worker fields for a new worker process (the caller has moved the
    /// actor to STARTING, through `observe::set_phase`, so that the change is told).
    pub fn begin_epoch(&mut self, now: Instant) {
        debug_assert_eq!(self.phase, Phase::Starting);
        self.epoch += 1;
        self.pid = None;
        self.exited = false;
        self.closed = false;
        self.exit_status = None;
        self.executing_at_death = None;
        self.fatal = None;
        self.crash_reason = None;
        self.program_pid = None;
        // A new worker starts with the current launch settings.
        self.relaunch_pending = false;
        // Counted from the process start (`Spawned`); until then spawns may queue behind
        // others (1,000 actors start one after another), so allow a wide margin.
        self.start_deadline = Some(now + self.policy.startup_timeout + SPAWN_QUEUE_GRACE);
        self.drain_deadline = None;
        self.alive_since = None;
        self.inflight_batches = 0;
        self.checkpoint_outstanding = false;
        self.final_checkpoint_requested = false;
        self.stop_sent = false;
        self.last_heard = now;
        self.ping_outstanding = false;
        self.hung = false;
        self.replay = None;
    }

    /// Starts counting the replay of the logged calls after `after` (the restored
    /// checkpoint's last_seq): those answered before, and those recovered from the log.
    pub fn begin_replay(&mut self, after: u64, now: Instant) {
        let mut replayed = self
            .log
            .iter()
            .filter(|e| e.seq > after && (e.answered.is_some() || e.recovered));
        let total = replayed.clone().count() as u64;
        self.replay = replayed.next_back().map(|last| Replay {
            after,
            upto: last.seq,
            total,
            done: 0,
            started: now,
            next_report: now + REPLAY_PROGRESS_EVERY,
        });
    }

    /// Counts the current worker's replies to replayed calls; logs the end of a replay
    /// that took long enough to report progress.
    pub fn note_replayed(&mut self, replies: &[Reply], now: Instant) {
        let Some(r) = self.replay.as_mut() else {
            return;
        };
        r.done += replies
            .iter()
            .filter(|x| x.seq > r.after && x.seq <= r.upto)
            .count() as u64;
        if r.done >= r.total {
            let took = now.saturating_duration_since(r.started);
            if took >= REPLAY_PROGRESS_EVERY {
                tracing::info!(actor = %self.name, replayed = r.total, took_ms = took.as_millis() as u64, "replay finished");
            }
            self.replay = None;
        }
    }

    /// Remembers a worker's exit for `status` (the latest [`EXITS_KEPT`]).
    pub fn note_exit(&mut self, now: Instant, how: String) {
        if self.exits.len() == EXITS_KEPT {
            self.exits.pop_front();
        }
        self.exits.push_back((now, how));
    }

    /// Moves the `calls_per_s` window on once its newer mark is old enough.
    pub fn note_served(&mut self, now: Instant) {
        let [_, newer] = self.rate_marks;
        if now.saturating_duration_since(newer.0) >= RATE_WINDOW {
            self.rate_marks = [newer, (now, self.served)];
        }
    }

    /// Calls answered per second over the last 5 to 10 s of activity (longer when idle).
    pub fn calls_per_s(&self, now: Instant) -> f64 {
        let (since, served) = self.rate_marks[0];
        let secs = now.saturating_duration_since(since).as_secs_f64();
        if secs <= 0.0 {
            return 0.0;
        }
        let rate = self.served.saturating_sub(served) as f64 / secs;
        (rate * 10.0).round() / 10.0
    }

    /// The replay's progress (`done`, `total`) while the worker serves.
    pub fn replay_progress(&self) -> Option<(u64, u64)> {
        self.replay
            .as_ref()
            .filter(|_| self.phase == Phase::Alive)
            .map(|r| (r.done, r.total))
    }

    /// Logs the replay's progress when a line is due.
    pub fn report_replay(&mut self, now: Instant) {
        if self.phase != Phase::Alive {
            self.replay = None;
            return;
        }
        if let Some(r) = self.replay.as_mut()
            && r.next_report <= now
        {
            r.next_report = now + REPLAY_PROGRESS_EVERY;
            tracing::info!(actor = %self.name, done = r.done, total = r.total, "replaying calls: {}/{}", r.done, r.total);
        }
    }

    /// True for an actor removed by a reload that has stopped: gone from `status` and
    /// the metrics.
    pub fn gone(&self) -> bool {
        self.retiring && self.phase == Phase::Stopped
    }

    /// True when this actor alone winds down (final checkpoint, then its worker stops):
    /// removed by a reload, or stopped by an operator.
    pub fn winding_down(&self) -> bool {
        self.retiring || self.stopped_by_operator
    }

    /// The refusal of a call (or checkpoint) to an actor an operator stopped.
    pub fn stopped_error(&self) -> ErrorBody {
        let how = if self.phase == Phase::Stopped {
            "is stopped"
        } else {
            "is being stopped"
        };
        ErrorBody::new(
            ErrorKind::ActorStopped,
            format!(
                "actor {:?} {how} by an operator; `resurgam start {}` starts it again",
                self.name, self.name
            ),
        )
    }

    /// The worker's pid while it runs (STARTING or ALIVE).
    pub fn worker_pid(&self) -> Option<u32> {
        self.pid
            .filter(|_| matches!(self.phase, Phase::Alive | Phase::Starting))
    }

    /// The exec program's pid while the worker serves.
    pub fn live_program_pid(&self) -> Option<u32> {
        self.program_pid.filter(|_| self.phase == Phase::Alive)
    }

    /// The `state` of `status`: the phase, or `STOPPING` while an operator's stop runs.
    pub fn state_name(&self) -> &'static str {
        if self.stopped_by_operator && self.phase != Phase::Stopped {
            "STOPPING"
        } else {
            self.phase.as_str()
        }
    }

    pub fn dead_error(&self) -> ErrorBody {
        ErrorBody::new(
            ErrorKind::ActorDead,
            format!(
                "actor {:?} is DEAD: {}",
                self.name,
                self.dead_reason.as_deref().unwrap_or("unknown reason")
            ),
        )
    }

    pub fn entry_mut(&mut self, seq: u64) -> Option<&mut Entry> {
        let i = self.log.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.log.get_mut(i)
    }

    pub fn remove_entry(&mut self, seq: u64) -> Option<Entry> {
        let i = self.log.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.log.remove(i)
    }

    /// Sends logged calls the worker has not seen yet, in batches.
    pub fn dispatch(&mut self, id: ActorId, out: &mut Vec<Action>, now: Instant) {
        if self.phase != Phase::Alive {
            return;
        }
        let limit = self.dispatchable_upto();
        while self.inflight_batches < MAX_INFLIGHT_BATCHES {
            let start = self.log.partition_point(|e| e.seq <= self.sent_upto);
            if start == self.log.len() || self.log[start].seq > limit {
                break;
            }
            let mut calls = Vec::new();
            let mut bytes = 0;
            for e in self.log.range(start..) {
                if e.seq > limit
                    || calls.len() == MAX_BATCH_CALLS
                    || (bytes > 0 && bytes + e.args.len() > MAX_BATCH_BYTES)
                {
                    break;
                }
                bytes += e.args.len();
                calls.push(e.call());
            }
            if let Some(last) = calls.last() {
                self.sent_upto = last.seq;
            }
            if !self.awaiting() {
                // The worker owes nothing yet: its full timeout starts now.
                self.last_heard = self.last_heard.max(now);
            }
            self.inflight_batches += 1;
            out.push(Action::SendCalls {
                actor: id,
                epoch: self.epoch,
                calls,
            });
        }
    }

    /// Records one reply; returns who to answer and with what, for a first answer whose
    /// release is allowed now (held until its log record is durable: in fsync mode its
    /// fsync, in log mode the manifest's mark of a log new in this run).
    pub fn on_reply(&mut self, r: Reply) -> Option<Answer> {
        let seq = r.seq;
        let answer = self.first_answer(r)?;
        if self.durable() && seq > self.durable_upto {
            self.held.push_back((seq, answer.0, answer.1));
            return None;
        }
        Some(answer)
    }

    fn first_answer(&mut self, r: Reply) -> Option<Answer> {
        self.replied_upto = self.replied_upto.max(r.seq);
        let hash = outcome_hash(&r.outcome);
        let name = self.name.clone();
        let e = self.entry_mut(r.seq)?;
        match e.answered {
            Some(first) => {
                // An export's reply names the newest checkpoint, which a replay can change.
                if first != hash && first != 0 && e.method != EXPORT_METHOD {
                    tracing::warn!(actor = %name, seq = r.seq, method = %e.method, "non-deterministic actor: replayed call gave a different reply");
                    self.nondeterministic += 1;
                }
                None
            }
            None => {
                e.answered = Some(hash);
                let origin = e.origin.take();
                if !e.recovered {
                    self.unanswered = self.unanswered.saturating_sub(1);
                    self.served += 1;
                }
                let result = match r.outcome {
                    Outcome::Ok(bytes) => String::from_utf8(bytes).map_err(|_| {
                        ErrorBody::new(ErrorKind::ActorError, "the actor's reply is not UTF-8 JSON")
                    }),
                    Outcome::Err { kind, message } => Err(ErrorBody::new(kind, message)),
                };
                origin.map(|o| (o, result))
            }
        }
    }

    /// Takes what the mmap slots hold (as the worker reports it: every record not known
    /// to be damaged, verified or not) as the newest and the other checkpoint.
    pub fn set_mmap_slots(&mut self, slots: &[(u64, u64)]) {
        let mut slots = slots.to_vec();
        slots.sort_unstable_by(|x, y| y.cmp(x));
        self.mmap_newest = slots.first().map(|s| s.1);
        self.mmap_other = slots.get(1).map(|s| s.1);
    }

    /// Drops answered calls that every checkpoint still on file covers (both mmap slots
    /// and the disk copy), so that any of them can serve a restore.
    pub fn truncate_log(&mut self) {
        let floor = [self.mmap_newest, self.mmap_other, Some(self.disk.1)]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(0);
        while let Some(e) = self.log.front() {
            if e.seq <= floor && e.answered.is_some() {
                self.log.pop_front();
            } else {
                break;
            }
        }
        let covered = self.log.front().map_or(floor, |e| floor.min(e.seq - 1));
        self.log_floor = self.log_floor.max(covered);
    }

    /// True when the worker owes the supervisor an answer.
    fn awaiting(&self) -> bool {
        self.inflight_batches > 0 || self.checkpoint_outstanding || self.ping_outstanding
    }

    /// True while the current worker serves: ALIVE, and neither dying nor being killed
    /// as hung. Hang detection and time-based checkpoints run only then.
    fn serving(&self) -> bool {
        self.phase == Phase::Alive && !self.hung && !self.exited && !self.closed
    }

    /// Hang detection (`heartbeat_timeout`; zero turns it off).
    pub fn heartbeat(&self, now: Instant) -> Heartbeat {
        let timeout = self.policy.heartbeat_timeout;
        if timeout.is_zero() || !self.serving() {
            return Heartbeat::Fine;
        }
        let quiet = now.saturating_duration_since(self.last_heard);
        if self.awaiting() {
            if quiet >= timeout {
                Heartbeat::Hung
            } else {
                Heartbeat::Fine
            }
        } else if quiet >= timeout / 2 {
            Heartbeat::Ping
        } else {
            Heartbeat::Fine
        }
    }

    /// A ping goes out now: the worker gets half the timeout from now to answer it,
    /// even when the ping is late (the loop was busy), so it is never found hung by a
    /// deadline that had passed before it was asked.
    pub fn ping_sent(&mut self, now: Instant) {
        self.ping_outstanding = true;
        let half = (self.policy.heartbeat_timeout / 2).max(std::time::Duration::from_nanos(1));
        if let Some(t) = now.checked_sub(self.policy.heartbeat_timeout - half) {
            self.last_heard = self.last_heard.max(t);
        }
    }

    fn heartbeat_deadline(&self) -> Option<Instant> {
        let timeout = self.policy.heartbeat_timeout;
        if timeout.is_zero() || !self.serving() {
            return None;
        }
        Some(if self.awaiting() {
            self.last_heard + timeout
        } else {
            self.last_heard + timeout / 2
        })
    }

    /// When the next time-based checkpoint is due, if one is.
    pub fn checkpoint_due(&self) -> Option<Instant> {
        let interval = self.policy.checkpoint_interval;
        if !self.serving()
            || interval.is_zero()
            || self.checkpoint_outstanding
            || self.replied_upto <= self.checkpoint.1
        {
            return None;
        }
        Some(self.last_checkpoint_request + interval)
    }

    pub fn next_deadline(&self) -> Option<Instant> {
        [
            self.restart_at,
            self.start_deadline,
            self.drain_deadline,
            self.checkpoint_due(),
            self.heartbeat_deadline(),
            self.lost_reply_deadline,
            self.replay
                .as_ref()
                .filter(|_| self.phase == Phase::Alive)
                .map(|r| r.next_report),
        ]
        .into_iter()
        .flatten()
        .min()
    }
}
