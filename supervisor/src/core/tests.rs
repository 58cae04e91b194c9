//! Core tests: scripted scenarios, and a property test that drives the core through a
//! simulated world (workers that apply batches, checkpoint into two slots, get killed
//! mid-batch, corrupt checkpoints, a disk-copy thread) and compares with a model.

use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use serde_json::Value;

use resurgam_shared::calllog::LogRecord;
use resurgam_shared::config::{Config, Durability, Environment, Policy};
use resurgam_shared::ipc::{Call, CallKey, Outcome, Reply, Restored};
use resurgam_shared::protocol::{Op, Request};

use super::*;
use resurgam_shared::protocol::{ErrorBody, ErrorKind};

mod timers;

const CONN: ConnId = 1;

fn policy(max_restarts: i64, max_call_retries: i64, checkpoint_every: u64) -> Policy {
    Policy {
        max_restarts,
        max_call_retries,
        checkpoint_every,
        checkpoint_interval: Duration::from_millis(100),
        restart_window: Duration::from_secs(60),
        backoff_initial: Duration::from_millis(10),
        backoff_max: Duration::from_millis(40),
        min_uptime: Duration::from_secs(1),
        startup_timeout: Duration::from_secs(5),
        ..Policy::default()
    }
}

fn config() -> Config {
    Config::embedded_defaults(&Environment {
        state_directory: Some(PathBuf::from("/nonexistent-state")),
        runtime_directory: None,
    })
}

/// A checkpoint as the simulated files hold it.
#[derive(Debug, Clone, PartialEq)]
struct Ck {
    generation: u64,
    last_seq: u64,
    state: Vec<(u64, i64)>,
    valid: bool,
}

#[derive(Debug)]
enum ToW {
    Calls(Vec<Call>),
    Checkpoint,
    Stop,
    Ping,
}

/// A simulated worker process (one epoch). Its state is the list of applied calls,
/// `(request id, n)`, so the model can check exactly-once and order, not only a sum.
#[derive(Debug)]
struct SimWorker {
    epoch: u64,
    started: bool,
    state: Vec<(u64, i64)>,
    last_seq: u64,
    generation: u64,
    since: u64,
    every: u64,
    previous: Option<u64>,
    inbox: VecDeque<ToW>,
    /// Messages sent but not yet read by the supervisor, then the channel's close.
    outbox: VecDeque<Event>,
    /// The report on the restore candidates older than the restored one, which the
    /// worker verifies once ready: sent while idle, or before it writes a checkpoint.
    verified: Option<Event>,
    dead: bool,
}

impl SimWorker {
    fn send_verified(&mut self) {
        if let Some(ev) = self.verified.take() {
            self.outbox.push_back(ev);
        }
    }
}

fn total(state: &[(u64, i64)]) -> i64 {
    state.iter().map(|x| x.1).sum()
}

/// The actors' names; the world holds the first `n` (see `World::with_actors`).
const NAMES: [&str; 3] = ["c", "d", "e"];

/// `World::id_of` of an actor no supervisor runs (retired before a supervisor restart).
const GONE: ActorId = ActorId::MAX;

/// One actor's worker and files, as the world simulates them.
#[derive(Default)]
struct Parked {
    worker: Option<SimWorker>,
    slots: [Option<Ck>; 2],
    disk: Option<Ck>,
    disk_pending: bool,
    /// The durable call log: records, how many are fsync'd.
    log: Vec<LogRecord>,
    fsynced: usize,
    fsync_pending: bool,
    last_logged: u64,
    /// The manifest records the actor's log (the log thread writes the mark after the
    /// first append; the `fsync` step stands for it).
    marked: bool,
    /// Messages of earlier workers not yet read by the supervisor.
    stale: VecDeque<Event>,
    /// The call a killed worker was running, as its executing word says (none unless a
    /// test sets it).
    executing_when_killed: Option<u64>,
}

/// The simulated world around one core with counter actors. It looks at one actor at a
/// time, `cur`, whose worker and files are `here`; the others' wait in `parked`.
struct World {
    /// The actor looked at: an index into `NAMES`.
    cur: usize,
    /// Per name index: the core's id of its current incarnation.
    id_of: Vec<ActorId>,
    parked: Vec<Parked>,
    /// The actor each call went to (name index; none: `c`).
    target: HashMap<u64, usize>,
    /// Per name index: a checkpoint of it was damaged at some point.
    damaged: Vec<bool>,
    /// Per name index: its current incarnation was started from its files by a reload
    /// that added it back (in memory mode that is a restart: calls before its restore
    /// point exist only in its checkpoints).
    added_back: Vec<bool>,
    /// Per name index, memory mode: calls issued before this id may be missing from its
    /// state, acknowledged or not, because a removal of an earlier incarnation lost them
    /// (the core says so: `lost_at_removal`).
    lossy_before: Vec<u64>,
    core: Core,
    policy: Policy,
    now: Instant,
    /// The actor looked at.
    here: Parked,
    /// Log appends fail.
    disk_full: bool,
    /// Replies per request id.
    replies: HashMap<u64, Vec<Value>>,
    /// Calls issued, in order: (id, method, n).
    issued: Vec<(u64, String, i64)>,
    /// Calls issued before this id may stay unanswered (the supervisor crashed).
    crash_boundary: u64,
    next_id: u64,
    exited: Option<i32>,
    /// Ids of `stop_actor` requests.
    stops: Vec<u64>,
}

impl World {
    fn new(p: Policy) -> World {
        World::with_actors(p, 1)
    }

    /// A world with the first `n` actors of `NAMES`.
    fn with_actors(p: Policy, n: usize) -> World {
        let now = Instant::now();
        let specs = NAMES[..n]
            .iter()
            .map(|name| World::spec(&p, name, 0, Vec::new(), None))
            .collect();
        let core = Core::new(&config(), specs, 4242, now);
        let mut w = World {
            cur: 0,
            id_of: (0..n).collect(),
            parked: (0..n).map(|_| Parked::default()).collect(),
            target: HashMap::new(),
            damaged: vec![false; n],
            added_back: vec![false; n],
            lossy_before: vec![0; n],
            core,
            policy: p,
            now,
            here: Parked::default(),
            disk_full: false,
            replies: HashMap::new(),
            issued: Vec::new(),
            crash_boundary: 0,
            next_id: 1,
            exited: None,
            stops: Vec::new(),
        };
        w.pump();
        w
    }

    fn spec(
        p: &Policy,
        name: &str,
        start_seq: u64,
        recovered: Vec<LogRecord>,
        log_range: Option<(u64, u64)>,
    ) -> ActorSpec {
        ActorSpec {
            name: name.into(),
            kind: "counter".into(),
            policy: p.clone(),
            methods: Some(&["incr", "get", "crash"]),
            start_seq,
            recovered,
            log_range,
            held: None,
        }
    }

    /// The core's id of the actor looked at.
    fn id(&self) -> ActorId {
        self.id_of[self.cur]
    }

    fn name(&self) -> String {
        NAMES[self.cur].to_string()
    }

    /// Looks at actor `to` (a name index): parks the current one's worker and files and
    /// takes out `to`'s.
    fn focus(&mut self, to: usize) {
        if to == self.cur {
            return;
        }
        std::mem::swap(&mut self.here, &mut self.parked[to]);
        self.parked.swap(to, self.cur);
        self.cur = to;
    }

    /// Looks at the actor a core action is for; false if it is for an incarnation
    /// that a reload or a supervisor restart replaced.
    fn focus_id(&mut self, id: ActorId) -> bool {
        match self.id_of.iter().position(|&i| i == id) {
            Some(to) => {
                self.focus(to);
                true
            }
            None => false,
        }
    }

    fn every(&self) -> u64 {
        self.policy.checkpoint_every
    }

    fn handle(&mut self, e: Event) {
        self.core.handle(e, self.now);
        self.pump();
    }

    /// Carries out the core's actions, then looks at the same actor as before.
    fn pump(&mut self) {
        let cur = self.cur;
        Sim::pump(self);
        self.focus(cur);
    }
}

/// A simulated world around a core: it carries out the core's actions.
trait Sim {
    fn core(&mut self) -> &mut Core;
    fn act(&mut self, a: Action);

    /// Executes the core's actions against the simulated world, until there are none.
    fn pump(&mut self) {
        loop {
            self.core().flush();
            let actions = self.core().take_actions();
            if actions.is_empty() {
                return;
            }
            for a in actions {
                self.act(a);
            }
        }
    }
}

impl Sim for World {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    fn act(&mut self, a: Action) {
        let actor = match &a {
            Action::Spawn { actor, .. }
            | Action::SendCalls { actor, .. }
            | Action::RequestCheckpoint { actor, .. }
            | Action::Configure { actor, .. }
            | Action::Ping { actor, .. }
            | Action::StopWorker { actor, .. }
            | Action::Kill { actor, .. }
            | Action::SyncDisk { actor, .. }
            | Action::Append { actor, .. }
            | Action::Cancel { actor, .. }
            | Action::TruncateLog { actor, .. }
            | Action::Release { actor, .. } => Some(*actor),
            _ => None,
        };
        if actor.is_some_and(|id| !self.focus_id(id)) {
            // For an incarnation gone with the supervisor that ran it.
            assert!(
                !matches!(a, Action::Append { .. }),
                "append for a replaced incarnation"
            );
            return;
        }
        match a {
            Action::Reply { conn, line } => {
                assert_eq!(conn, CONN);
                let v: Value = serde_json::from_str(&line).expect("reply is JSON");
                let id = v["id"].as_u64().expect("numeric id");
                self.replies.entry(id).or_default().push(v);
            }
            Action::Spawn { epoch, .. } => {
                if let Some(old) = self.here.worker.as_mut() {
                    assert!(old.dead, "spawn while the previous worker lives");
                    // What it sent is still in its channel and reaches the supervisor.
                    self.here.stale.extend(old.outbox.drain(..));
                }
                self.here.worker = Some(SimWorker {
                    epoch,
                    started: false,
                    state: Vec::new(),
                    last_seq: 0,
                    generation: 0,
                    since: 0,
                    every: self.every(),
                    previous: None,
                    inbox: VecDeque::new(),
                    outbox: VecDeque::new(),
                    verified: None,
                    dead: false,
                });
            }
            Action::SendCalls { epoch, calls, .. } => {
                if let Some(w) = self.live_worker(epoch) {
                    w.inbox.push_back(ToW::Calls(calls));
                }
            }
            Action::RequestCheckpoint { epoch, .. } => {
                if let Some(w) = self.live_worker(epoch) {
                    w.inbox.push_back(ToW::Checkpoint);
                }
            }
            Action::Ping { epoch, .. } => {
                if let Some(w) = self.live_worker(epoch) {
                    w.inbox.push_back(ToW::Ping);
                }
            }
            Action::StopWorker { epoch, .. } => {
                if let Some(w) = self.live_worker(epoch) {
                    w.inbox.push_back(ToW::Stop);
                }
            }
            Action::Kill { epoch, .. } => {
                if self.live_worker(epoch).is_some() {
                    let executing = self.here.executing_when_killed.take();
                    self.die(
                        WorkerExit::Signal {
                            signal: 9,
                            core_dumped: false,
                        },
                        executing,
                    );
                }
            }
            Action::SyncDisk { .. } => self.here.disk_pending = true,
            Action::Release { .. } => {}
            Action::Append { actor, calls } => {
                let from = calls.first().map_or(0, |c| c.seq);
                let upto = calls.last().map_or(0, |c| c.seq);
                assert!(
                    self.here.log.iter().all(|r| r.seq < from),
                    "log appends out of order"
                );
                let ev = if self.disk_full {
                    Event::LogFailed {
                        actor,
                        from,
                        upto,
                        error: "No space left on device (os error 28)".into(),
                    }
                } else {
                    self.here.log.extend(calls.into_iter().map(|c| LogRecord {
                        seq: c.seq,
                        method: c.method,
                        args: c.args,
                        key: c.key.map(Box::new),
                    }));
                    self.here.fsync_pending = true;
                    self.here.last_logged = upto;
                    Event::Logged {
                        actor,
                        upto,
                        durable: self.here.marked && self.policy.durability == Durability::Log,
                    }
                };
                self.core.handle(ev, self.now);
            }
            Action::Cancel { seq, cancelled, .. } => {
                assert!(
                    self.here.log.iter().all(|r| r.seq < seq),
                    "tombstone {seq} written after a later record"
                );
                // Tombstones are small; the model assumes they get written (a failure
                // to write one is logged by the shell, see `Shell::execute`).
                self.here.log.push(LogRecord {
                    seq,
                    method: resurgam_shared::calllog::CANCEL_METHOD.into(),
                    args: resurgam_shared::calllog::encode_cancel_args(&cancelled),
                    key: None,
                });
                self.here.fsync_pending = true;
                self.here.last_logged = self.here.last_logged.max(seq);
            }
            Action::TruncateLog { upto, .. } => {
                let n = self.here.log.iter().take_while(|r| r.seq <= upto).count();
                self.here.log.drain(..n);
                self.here.fsynced = self.here.fsynced.saturating_sub(n);
            }
            Action::Exit { code } => self.exited = Some(code),
            Action::Configure {
                epoch,
                checkpoint_every,
                ..
            } => {
                if let Some(w) = self.live_worker(epoch) {
                    w.every = checkpoint_every;
                }
            }
            Action::Reload { origin } => self.core.answer(
                &origin,
                Err(ErrorBody::new(
                    ErrorKind::BadRequest,
                    "no file in the model",
                )),
            ),
            // The shell's to answer; the model has no metrics text and no stream.
            Action::Metrics { origin } => self.core.answer(&origin, Ok("\"\"".into())),
            Action::Subscribe { origin } => self.core.answer(&origin, Ok("{}".into())),
        }
    }
}

impl World {
    fn live_worker(&mut self, epoch: u64) -> Option<&mut SimWorker> {
        self.here
            .worker
            .as_mut()
            .filter(|w| w.epoch == epoch && !w.dead)
    }

    fn call(&mut self, method: &str, n: i64) -> u64 {
        let id = self.queue_call(method, n);
        self.pump();
        if err_kind(self, id).as_deref() == Some("UnknownActor") {
            // Refused at once (a reload removed the actor): never logged, never run.
            self.issued.pop();
        }
        id
    }

    /// Hands the core a call without carrying out its actions: the next events are
    /// in the same burst (no flush between).
    fn queue_call(&mut self, method: &str, n: i64) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.issued.push((id, method.to_string(), n));
        self.target.insert(id, self.cur);
        let request = Request {
            id: id.to_string(),
            op: Op::Call {
                actor: self.name(),
                method: method.into(),
                args: Some(format!("{{\"id\":{id},\"n\":{n}}}")),
                key: None,
            },
        };
        self.core.handle(
            Event::Request {
                conn: CONN,
                request,
            },
            self.now,
        );
        id
    }

    fn op(&mut self, op: Op) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        self.handle(Event::Request {
            conn: CONN,
            request: Request {
                id: id.to_string(),
                op,
            },
        });
        id
    }

    fn newest_valid(&self) -> Option<(usize, Ck)> {
        (0..2)
            .filter_map(|i| {
                self.here.slots[i]
                    .as_ref()
                    .filter(|c| c.valid)
                    .map(|c| (i, c.clone()))
            })
            .max_by_key(|(i, c)| (c.generation, c.last_seq, std::cmp::Reverse(*i)))
    }

    /// The checkpoint the supervisor's start-up scan finds: the valid one with the
    /// highest generation.
    fn restore_candidate(&self) -> Option<Ck> {
        self.checkpoints()
            .filter(|c| c.valid)
            .max_by_key(|c| (c.generation, c.last_seq))
            .cloned()
    }

    /// The worker connects and restores (as worker::run does): the candidates newest
    /// first until one is valid; the older ones count as usable until the worker reports
    /// on them, later (`SimWorker::verified`).
    fn start_worker(&mut self) {
        let me = self.id();
        let Some(w) = self.here.worker.as_ref().filter(|w| !w.started && !w.dead) else {
            return;
        };
        let epoch = w.epoch;
        // (index: slot A 0, slot B 1, disk copy 2; checkpoint), in restore order.
        let mut candidates: Vec<(usize, Ck)> = self
            .here
            .slots
            .iter()
            .chain(std::iter::once(&self.here.disk))
            .enumerate()
            .filter_map(|(i, c)| c.clone().map(|c| (i, c)))
            .collect();
        candidates.sort_by_key(|(i, c)| {
            std::cmp::Reverse((c.generation, c.last_seq, std::cmp::Reverse(*i)))
        });
        let at = candidates.iter().position(|(_, c)| c.valid);
        let tried = at.map_or(candidates.len(), |p| p + 1);
        let (newer, older) = candidates.split_at(tried);
        let chosen = at.map(|p| candidates[p].1.clone());
        let reasons = |list: &[(usize, Ck)]| -> Vec<String> {
            list.iter()
                .filter(|(_, c)| !c.valid)
                .map(|(i, c)| format!("candidate {i} gen {}: checksum", c.generation))
                .collect()
        };
        let slots_of = |list: &[(usize, Ck)], all: bool| -> Vec<(u64, u64)> {
            list.iter()
                .filter(|(i, c)| *i < 2 && (all || c.valid))
                .map(|(_, c)| (c.generation, c.last_seq))
                .collect()
        };
        let chosen_slot = at.map_or(&[][..], |p| &candidates[p..=p]);
        let rejected = reasons(newer);
        let mmap_slots = [slots_of(chosen_slot, false), slots_of(older, true)].concat();
        let verified = (!older.is_empty()).then(|| Event::Verified {
            actor: me,
            epoch,
            rejected: reasons(older),
            mmap_slots: [slots_of(chosen_slot, false), slots_of(older, false)].concat(),
        });
        let w = self.here.worker.as_mut().unwrap();
        w.started = true;
        w.verified = verified;
        if let Some(c) = &chosen {
            w.state = c.state.clone();
            w.last_seq = c.last_seq;
            w.generation = c.generation;
        }
        let restored = Restored {
            generation: w.generation,
            last_seq: w.last_seq,
            source: chosen.map(|_| "sim".to_string()),
            rejected,
            moved_aside: None,
            mmap_slots,
            program_pid: None,
        };
        self.handle(Event::Spawned {
            actor: me,
            epoch,
            pid: 1000 + epoch as u32,
        });
        self.handle(Event::Ready {
            actor: me,
            epoch,
            restored,
        });
    }

    fn write_checkpoint(&mut self) {
        let me = self.id();
        if let Some(w) = self.here.worker.as_mut() {
            w.send_verified();
        }
        let newest = self.newest_valid();
        let target = match &newest {
            Some((i, _)) => 1 - i,
            None => 0,
        };
        let w = self.here.worker.as_mut().unwrap();
        if !(w.since == 0 && w.generation > 0) {
            w.generation += 1;
            w.since = 0;
            w.previous = newest.map(|(_, c)| c.last_seq);
            self.here.slots[target] = Some(Ck {
                generation: w.generation,
                last_seq: w.last_seq,
                state: w.state.clone(),
                valid: true,
            });
        }
        let ev = Event::Checkpointed {
            actor: me,
            epoch: w.epoch,
            generation: w.generation,
            last_seq: w.last_seq,
            previous: w.previous,
        };
        w.outbox.push_back(ev);
    }

    /// The worker handles its next message; `crash_after` kills it after that many calls
    /// of a batch (before replying).
    fn worker_step(&mut self, crash_after: Option<usize>) {
        let me = self.id();
        let Some(w) = self.here.worker.as_mut().filter(|w| w.started && !w.dead) else {
            return;
        };
        let Some(msg) = w.inbox.pop_front() else {
            // Idle: the verification of the older restore candidates ends.
            w.send_verified();
            return;
        };
        match msg {
            ToW::Calls(calls) => {
                let mut replies = Vec::new();
                for (i, c) in calls.iter().enumerate() {
                    let w = self.here.worker.as_mut().unwrap();
                    if crash_after == Some(i) {
                        self.die(
                            WorkerExit::Signal {
                                signal: 9,
                                core_dumped: false,
                            },
                            None,
                        );
                        return;
                    }
                    assert!(c.seq > w.last_seq, "call {} applied twice", c.seq);
                    if c.method == "crash" {
                        self.die(
                            WorkerExit::Signal {
                                signal: 6,
                                core_dumped: false,
                            },
                            Some(c.seq),
                        );
                        return;
                    }
                    let args: Value = serde_json::from_slice(&c.args).unwrap();
                    if c.method == "incr" {
                        let id = args["id"].as_u64().unwrap();
                        w.state.push((id, args["n"].as_i64().unwrap()));
                    }
                    w.last_seq = c.seq;
                    w.since += 1;
                    replies.push(Reply {
                        seq: c.seq,
                        outcome: Outcome::Ok(total(&w.state).to_string().into_bytes()),
                    });
                }
                let w = self.here.worker.as_mut().unwrap();
                let epoch = w.epoch;
                // A batch of three or more calls is answered in parts, as a real worker
                // answers a large one: every part but the last is `MoreReplies`.
                let mut rest = replies;
                while rest.len() >= 3 {
                    let tail = rest.split_off(rest.len() / 2);
                    w.outbox.push_back(Event::MoreReplies {
                        actor: me,
                        epoch,
                        replies: rest,
                    });
                    rest = tail;
                }
                w.outbox.push_back(Event::Replies {
                    actor: me,
                    epoch,
                    replies: rest,
                });
                if w.every > 0 && w.since >= w.every {
                    self.write_checkpoint();
                }
            }
            ToW::Checkpoint => self.write_checkpoint(),
            ToW::Stop => {
                w.send_verified();
                self.die(WorkerExit::Code(0), None)
            }
            ToW::Ping => {
                let epoch = w.epoch;
                w.outbox.push_back(Event::Pong { actor: me, epoch });
            }
        }
    }

    /// The worker process ends: the reaper reports it at once; the channel's close
    /// comes after every message it sent.
    fn die(&mut self, exit: WorkerExit, executing: Option<u64>) {
        let me = self.id();
        let w = self.here.worker.as_mut().unwrap();
        if w.dead {
            return;
        }
        w.dead = true;
        w.inbox.clear();
        let epoch = w.epoch;
        if !w.started {
            // Died before it connected: nothing was sent.
            w.outbox.clear();
        }
        w.outbox
            .push_back(Event::ChannelClosed { actor: me, epoch });
        self.handle(Event::Exited {
            actor: me,
            epoch,
            exit,
            executing,
        });
    }

    /// `kill -9` of the worker while it runs no call.
    fn kill9(&mut self) {
        self.die(
            WorkerExit::Signal {
                signal: 9,
                core_dumped: false,
            },
            None,
        );
    }

    fn deliver_one(&mut self) {
        if let Some(ev) = self.here.stale.pop_front() {
            self.handle(ev);
            return;
        }
        let Some(w) = self.here.worker.as_mut() else {
            return;
        };
        if let Some(ev) = w.outbox.pop_front() {
            self.handle(ev);
        }
    }

    fn sync_disk(&mut self) {
        let me = self.id();
        if !self.here.disk_pending {
            return;
        }
        self.here.disk_pending = false;
        if let Some((_, c)) = self.newest_valid() {
            // Like the disk thread: never replace the copy with an older checkpoint.
            let c = match &self.here.disk {
                Some(d) if d.valid && (d.generation, d.last_seq) >= (c.generation, c.last_seq) => {
                    d.clone()
                }
                _ => c,
            };
            let (generation, last_seq) = (c.generation, c.last_seq);
            self.here.disk = Some(c);
            self.handle(Event::DiskSynced {
                actor: me,
                generation,
                last_seq,
            });
        } else {
            // Like the disk thread: no valid mmap checkpoint to copy is a failure.
            self.handle(Event::DiskSyncFailed {
                actor: me,
                message: "no valid checkpoint to copy".into(),
            });
        }
    }

    fn fsync(&mut self) {
        let me = self.id();
        if !self.here.fsync_pending {
            return;
        }
        self.here.fsync_pending = false;
        self.here.fsynced = self.here.log.len();
        self.here.marked = true;
        let upto = self.here.last_logged;
        // The log thread fsyncs what was asked whatever became of the asker: a retired
        // incarnation of this actor (same files, its replies held for this fsync) hears
        // of it too.
        let name = self.name();
        let retired: Vec<ActorId> = (0..self.core.actors.len())
            .filter(|&i| {
                i != me && self.core.actors[i].retiring && self.core.actors[i].name == name
            })
            .collect();
        for actor in retired {
            self.handle(Event::Durable { actor, upto });
        }
        self.handle(Event::Durable { actor: me, upto });
    }

    /// `kill -9` of the supervisor (its worker dies by PDEATHSIG, in-flight work is
    /// lost) and a restart from the files. With `power_loss`, only what was fsync'd
    /// survives: the mmap slots (runtime dir) are gone and the log is cut to its
    /// fsync'd prefix.
    fn crash_supervisor(&mut self, power_loss: bool) {
        let cur = self.cur;
        // The actors of the configuration: a retired one is not in it any more.
        let kept: Vec<usize> = (0..self.parked.len())
            .filter(|&i| self.core.actor_id(NAMES[i]).is_some())
            .collect();
        let mut specs = Vec::new();
        for i in 0..self.parked.len() {
            self.focus(i);
            if power_loss {
                self.here.slots = [None, None];
                self.here.log.truncate(self.here.fsynced);
            }
            self.here.fsynced = self.here.log.len();
            self.here.worker = None;
            self.here.stale.clear();
            self.here.disk_pending = false;
            self.here.fsync_pending = false;
            if kept.contains(&i) {
                specs.push(self.spec_from_files());
            }
        }
        self.focus(cur);
        self.crash_boundary = self.next_id;
        self.id_of = vec![GONE; self.parked.len()];
        for (id, &i) in kept.iter().enumerate() {
            self.id_of[i] = id;
        }
        self.core = Core::new(&config(), specs, 4242, self.now);
        self.exited = None;
        self.pump();
    }

    /// The actor looked at as the supervisor's start-up (or a reload adding it) finds it
    /// in its files: the newest valid checkpoint, and the log without the calls its
    /// tombstones cancel.
    fn spec_from_files(&self) -> ActorSpec {
        let start_seq = self.restore_candidate().map_or(0, |c| c.last_seq);
        let range = self
            .here
            .log
            .iter()
            .map(|r| r.seq)
            .min()
            .zip(self.here.log.iter().map(|r| r.seq).max());
        let cancelled = self.cancelled();
        let recovered = self
            .here
            .log
            .iter()
            .filter(|r| {
                !cancelled.contains(&r.seq) && r.method != resurgam_shared::calllog::CANCEL_METHOD
            })
            .cloned()
            .collect();
        World::spec(&self.policy, &self.name(), start_seq, recovered, range)
    }

    /// The seqs the tombstones in the log of the actor looked at cancel.
    fn cancelled(&self) -> Vec<u64> {
        self.here
            .log
            .iter()
            .filter(|r| r.method == resurgam_shared::calllog::CANCEL_METHOD)
            .flat_map(|r| resurgam_shared::calllog::parse_cancel_args(&r.args).unwrap())
            .collect()
    }

    /// No checkpoint of the actor looked at is damaged.
    fn files_intact(&self) -> bool {
        self.checkpoints().all(|c| c.valid)
    }

    /// The checkpoints of the actor looked at: both slots and the disk copy.
    fn checkpoints(&self) -> impl Iterator<Item = &Ck> {
        self.here
            .slots
            .iter()
            .flatten()
            .chain(self.here.disk.iter())
    }

    /// True if `f` holds for every actor.
    fn every_actor(&mut self, f: impl Fn(&World) -> bool) -> bool {
        let cur = self.cur;
        let all = (0..self.parked.len()).all(|i| {
            self.focus(i);
            f(self)
        });
        self.focus(cur);
        all
    }

    /// A reload removes the actor looked at (if the configuration has it).
    fn retire(&mut self) {
        if let Some(id) = self.core.actor_id(&self.name()) {
            self.core.retire_actor(id, self.now);
            self.pump();
        }
    }

    /// A reload adds the actor looked at back (if it is not in the configuration and
    /// its retired incarnation has stopped, as `run.rs` requires): it starts from its
    /// files, as after a supervisor restart.
    fn add_back(&mut self) {
        let name = self.name();
        if self.core.actor_id(&name).is_some() || self.core.is_retiring(&name) {
            return;
        }
        // Starting from the files alone needs checkpoints that were never damaged: one
        // damaged after the log was cut to it is beyond what the log can make up for.
        if self.damaged[self.cur] {
            return;
        }
        // A removal that had no worker to write a final checkpoint loses what only the
        // core's memory held (memory mode): only when the incarnation was DEAD, or
        // stopped by an operator from DEAD, when it was removed or on the way out.
        let old = self.id_of[self.cur];
        if old != GONE && self.core.actors[old].lost_at_removal > 0 {
            let a = &self.core.actors[old];
            assert_eq!(self.policy.durability, Durability::Memory);
            assert!(
                a.dead_reason.is_some() || a.stopped_by_operator,
                "calls lost at the removal of a live actor"
            );
            self.lossy_before[self.cur] = self.next_id;
        }
        // The stopped worker's last words are read before the reload.
        self.here.worker = None;
        self.here.stale.clear();
        let spec = self.spec_from_files();
        self.added_back[self.cur] = true;
        self.id_of[self.cur] = self.core.add_actor(spec, self.now);
        self.pump();
    }

    /// Starts the worker if it is not serving yet (restores, gets the replay), without
    /// letting it run calls.
    fn settle_starting(&mut self) {
        while self.core.phase(self.id()) != Phase::Alive {
            if self.core.phase(self.id()) == Phase::Restarting {
                self.advance(Duration::from_millis(50));
            }
            self.deliver_one();
            self.start_worker();
        }
    }

    fn advance(&mut self, d: Duration) {
        self.now += d;
        self.handle(Event::Tick);
    }

    /// Runs everything pending to completion (no more faults), for every actor: time
    /// passing for one can give another work.
    fn settle(&mut self) {
        let cur = self.cur;
        for _ in 0..1000 {
            let mut busy = false;
            for i in 0..self.parked.len() {
                self.focus(i);
                busy |= self.settle_one();
            }
            if !busy {
                self.focus(cur);
                return;
            }
        }
        panic!("the actors do not settle");
    }

    /// Runs the actor looked at to completion; false if it had nothing to do.
    fn settle_one(&mut self) -> bool {
        if self.id() == GONE {
            return false;
        }
        for round in 0..100_000 {
            let busy = !self.here.stale.is_empty()
                || self.here.worker.as_ref().is_some_and(|w| {
                    !w.outbox.is_empty()
                        || (!w.dead && (!w.started || !w.inbox.is_empty() || w.verified.is_some()))
                });
            if busy {
                self.start_worker();
                self.worker_step(None);
                self.deliver_one();
                self.sync_disk();
                self.fsync();
                continue;
            }
            if self.here.disk_pending || self.here.fsync_pending {
                self.sync_disk();
                self.fsync();
                continue;
            }
            if self.core.phase(self.id()) == Phase::Restarting {
                self.advance(Duration::from_millis(50));
                continue;
            }
            return round > 0;
        }
        panic!("the world does not settle");
    }

    /// Exactly-once against the model: the worker's final list of applied calls holds
    /// every acknowledged `incr` once, in issue order, no call twice, no refused call;
    /// each reply equals the running total at its place in that list. Calls issued
    /// before a supervisor crash may stay unanswered, applied or not.
    fn check_model(&mut self) {
        self.disk_full = false;
        self.settle();
        // Every operator's stop is answered once: STOPPED with the final checkpoint, or
        // the actor went DEAD (or was started again by `restart`) on the way.
        for id in self.stops.clone() {
            let replies = self.replies.get(&id).map_or(&[][..], |r| &r[..]);
            assert!(replies.len() <= 1, "stop {id} answered twice");
            match replies.first() {
                None => assert!(id < self.crash_boundary, "stop {id} never answered"),
                Some(r) if r.get("ok").is_some() => assert_eq!(r["ok"]["state"], "STOPPED"),
                Some(r) => assert!(
                    matches!(
                        r["err"]["kind"].as_str(),
                        Some("ActorDead" | "Busy" | "UnknownActor")
                    ),
                    "stop {id}: {r}"
                ),
            }
        }
        // Actors a reload removed come back (from their files) to show their state.
        for i in 0..self.parked.len() {
            self.focus(i);
            self.add_back();
        }
        self.settle();
        for i in 0..self.parked.len() {
            self.focus(i);
            // A removed actor whose checkpoints were damaged stays out (see `add_back`).
            if self.core.actor_id(&self.name()).is_some() {
                self.check_actor();
            }
        }
    }

    /// `check_model` for the actor looked at.
    fn check_actor(&mut self) {
        if self.core.phase(self.id()) == Phase::Stopped {
            assert!(
                self.here.worker.as_ref().is_none_or(|w| w.dead),
                "a stopped actor's worker runs"
            );
            self.op(Op::StartActor { actor: self.name() });
            self.settle();
        }
        // Each revival makes progress: poison calls recovered from the log gather
        // attempts until they are dropped.
        for _ in 0..50 {
            if self.core.phase(self.id()) != Phase::Dead {
                break;
            }
            self.op(Op::Restart {
                actor: self.name(),
                fresh: false,
            });
            self.settle();
        }
        assert_eq!(
            self.core.phase(self.id()),
            Phase::Alive,
            "dead: {:?}; slots {:?} disk {:?}",
            self.core.actors[self.id()].dead_reason,
            self.here.slots,
            self.here.disk
        );
        let state = self
            .here
            .worker
            .as_ref()
            .expect("a live worker")
            .state
            .clone();
        let mut position = HashMap::new();
        let mut running = 0;
        for (i, (id, n)) in state.iter().enumerate() {
            assert!(
                position.insert(*id, running + n).is_none(),
                "call {id} applied twice: {state:?}"
            );
            running += n;
            if i > 0 {
                assert!(state[i - 1].0 < *id, "applied out of order: {state:?}");
            }
        }
        for (id, method, _) in self.issued.clone() {
            if self.target.get(&id).copied().unwrap_or(0) != self.cur {
                continue;
            }
            let replies = self.replies.get(&id).map_or(&[][..], |r| &r[..]);
            assert!(
                replies.len() <= 1,
                "call {id} answered {} times",
                replies.len()
            );
            let Some(r) = replies.first() else {
                assert!(
                    id < self.crash_boundary,
                    "call {id} ({method}) never answered"
                );
                continue;
            };
            let lossy = id < self.lossy_before[self.cur];
            match (r.get("ok"), method.as_str()) {
                (Some(_), "incr") if lossy && !position.contains_key(&id) => {}
                (Some(ok), "incr") => {
                    let want = position.get(&id).copied();
                    assert!(want.is_some(), "acknowledged call {id} is not in the state");
                    assert_eq!(ok.as_i64(), want, "reply of call {id}");
                }
                (Some(ok), "get") => {
                    assert!(ok.as_i64().is_some(), "get {id}");
                }
                (Some(_), other) => panic!("{other} cannot succeed"),
                (None, _) => {
                    let kind = r["err"]["kind"].as_str().unwrap_or("?");
                    assert!(
                        matches!(kind, "CallFailed" | "ActorDead" | "ActorStopped"),
                        "unexpected error for call {id}: {r}"
                    );
                    let says_applied = r["err"]["message"]
                        .as_str()
                        .is_some_and(|m| m.contains("was applied"));
                    // A call lost with a removal (memory mode) ran all the same.
                    let lost = lossy && says_applied && !position.contains_key(&id);
                    assert!(
                        lost || position.contains_key(&id) == says_applied,
                        "call {id}: the error must say whether it was applied: {r}"
                    );
                }
            }
        }
    }
}

fn ok_value(w: &World, id: u64) -> Option<i64> {
    w.replies.get(&id)?.first()?.get("ok")?.as_i64()
}

fn err_kind(w: &World, id: u64) -> Option<String> {
    Some(
        w.replies.get(&id)?.first()?["err"]["kind"]
            .as_str()?
            .to_string(),
    )
}

#[test]
fn calls_are_batched_and_answered_in_order() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let ids: Vec<u64> = (0..5).map(|_| w.call("incr", 1)).collect();
    // Only MAX_INFLIGHT_BATCHES batches are in flight: the first call went alone, the
    // rest queue up and go out as one batch once the first is answered.
    w.settle();
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(ok_value(&w, *id), Some(i as i64 + 1));
    }
    w.check_model();
}

#[test]
fn kill_mid_batch_replays_without_doubling() {
    let mut w = World::new(policy(-1, 3, 2));
    w.settle();
    for _ in 0..3 {
        w.call("incr", 2);
    }
    w.settle();
    for _ in 0..4 {
        w.call("incr", 3);
    }
    // Two single-call batches are in flight; answering them releases the other two
    // calls as one batch, and the worker dies after applying its first call.
    for _ in 0..2 {
        w.worker_step(None);
        w.deliver_one();
    }
    assert!(
        matches!(w.here.worker.as_ref().unwrap().inbox.front(), Some(ToW::Calls(c)) if c.len() == 2)
    );
    w.worker_step(Some(1));
    w.settle();
    assert!(w.core.actors[0].restarts >= 1);
    w.check_model();
}

#[test]
fn poison_call_fails_after_max_call_retries_and_the_actor_lives_on() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let a = w.call("incr", 5);
    let bad = w.call("crash", 0);
    let b = w.call("incr", 1);
    w.settle();
    assert_eq!(ok_value(&w, a), Some(5));
    assert_eq!(err_kind(&w, bad).as_deref(), Some("CallFailed"));
    assert_eq!(ok_value(&w, b), Some(6));
    assert_eq!(w.core.actors[0].restarts, 3);
    w.check_model();
}

#[test]
fn deaths_recoveries_and_poison_calls_are_counted_and_noticed() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let mut notices = Vec::new();
    w.core.drain_notices(&mut notices);
    assert_eq!(
        notices,
        vec![Notice::State {
            actor: 0,
            from: Phase::Starting,
            to: Phase::Alive
        }]
    );
    w.call("incr", 5);
    w.call("crash", 0);
    w.call("incr", 1);
    w.settle();
    let m = w.core.actor_metrics(0);
    let outcomes: Vec<_> = m.outcomes.iter().collect();
    assert_eq!(outcomes, vec![("ok", 2), ("CallFailed", 1)]);
    assert_eq!(m.latency.count(), 3, "one latency per answered call");
    assert_eq!(m.restarts.iter().collect::<Vec<_>>(), vec![("signal", 3)]);
    assert_eq!(m.recovery.count(), 3);
    assert_eq!(m.poisoned, 1);
    notices.clear();
    w.core.drain_notices(&mut notices);
    let died = notices
        .iter()
        .filter(|n| {
            matches!(
                n,
                Notice::Died {
                    cause: "signal",
                    restart_in: Some(_),
                    ..
                }
            )
        })
        .count();
    let recovered = notices
        .iter()
        .filter(|n| matches!(n, Notice::Recovered { .. }))
        .count();
    assert_eq!((died, recovered), (3, 3), "{notices:#?}");
    assert!(
        notices
            .iter()
            .any(|n| matches!(n, Notice::Poison { method, attempts: 3, .. } if method == "crash")),
        "{notices:#?}"
    );
    assert_eq!(w.core.phase(0), Phase::Alive);
    w.check_model();
}

#[test]
fn an_actor_that_gives_up_is_noticed_dead_with_its_reason() {
    let mut w = World::new(policy(1, 10, 0));
    w.settle();
    w.call("crash", 0);
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Dead);
    let mut notices = Vec::new();
    w.core.drain_notices(&mut notices);
    let dead: Vec<_> = notices
        .iter()
        .filter_map(|n| match n {
            Notice::Dead { reason, .. } => Some(reason.clone()),
            _ => None,
        })
        .collect();
    assert_eq!(dead.len(), 1, "{notices:#?}");
    assert!(dead[0].contains("max_restarts = 1"), "{}", dead[0]);
    assert!(
        notices.iter().any(|n| matches!(
            n,
            Notice::State {
                to: Phase::Dead,
                ..
            }
        )),
        "{notices:#?}"
    );
}

/// A world (max_restarts = 2) whose actor answered `incr n` and now has a call that
/// crashes its worker, and one behind it, accepted: the ids of the three calls.
fn crash_queued(n: i64) -> (World, u64, u64, u64) {
    let mut w = World::new(policy(2, 10, 0));
    w.settle();
    let a = w.call("incr", n);
    w.settle();
    let bad = w.call("crash", 0);
    let queued = w.call("incr", 1);
    (w, a, bad, queued)
}

#[test]
fn crash_loop_makes_the_actor_dead_and_restart_revives_it() {
    let (mut w, a, bad, queued) = crash_queued(7);
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Dead);
    assert_eq!(err_kind(&w, bad).as_deref(), Some("ActorDead"));
    assert_eq!(err_kind(&w, queued).as_deref(), Some("ActorDead"));
    let late = w.call("incr", 1);
    assert_eq!(err_kind(&w, late).as_deref(), Some("ActorDead"));
    assert_eq!(ok_value(&w, a), Some(7));
    w.op(Op::Restart {
        actor: "c".into(),
        fresh: false,
    });
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Alive);
    let g = w.call("get", 0);
    w.settle();
    assert_eq!(ok_value(&w, g), Some(7));
    w.check_model();
}

#[test]
fn corrupt_newest_slot_and_disk_copy_fall_back_to_the_older_slot() {
    let mut w = World::new(policy(-1, 3, 3));
    w.settle();
    for _ in 0..10 {
        w.call("incr", 1);
        w.settle();
    }
    // Two checkpoints exist (every 3 calls) and the disk copy is synced.
    let (newest, _) = w.newest_valid().unwrap();
    w.here.slots[newest].as_mut().unwrap().valid = false;
    w.here.disk.as_mut().unwrap().valid = false;
    w.worker_step(None);
    w.kill9();
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Alive);
    w.check_model();
}

#[test]
fn log_is_truncated_once_checkpoints_cover_it() {
    let mut w = World::new(policy(-1, 3, 10));
    w.settle();
    for _ in 0..100 {
        w.call("incr", 1);
        w.settle();
    }
    // Calls since the older of (previous checkpoint, disk copy) stay; the rest go.
    assert!(w.core.log_len(0) <= 20, "log holds {}", w.core.log_len(0));
    w.check_model();
}

/// Calls `n` increments and waits until all are answered.
fn incr_n(w: &mut World, n: usize) {
    for _ in 0..n {
        w.call("incr", 1);
    }
    w.settle();
}

/// A checkpoint op, answered once the disk copy holds it: its (generation, last_seq).
fn checkpoint_now(w: &mut World) -> (u64, u64) {
    let id = w.op(Op::Checkpoint { actor: "c".into() });
    w.settle();
    let ok = &w.replies[&id][0]["ok"];
    (
        ok["generation"].as_u64().unwrap(),
        ok["last_seq"].as_u64().unwrap(),
    )
}

#[test]
fn an_unverified_older_slot_keeps_its_calls_in_the_log_until_found_damaged() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    incr_n(&mut w, 10);
    let ck1 = checkpoint_now(&mut w);
    incr_n(&mut w, 10);
    let ck2 = checkpoint_now(&mut w);
    assert_eq!((ck1.1, ck2.1), (10, 20));
    incr_n(&mut w, 5);
    // The older slot's payload goes bad; the worker dies and restores newest first.
    let (newest, _) = w.newest_valid().unwrap();
    w.here.slots[1 - newest].as_mut().unwrap().valid = false;
    w.kill9();
    // Up to the new worker's ready report; its verification report is still to come.
    let old_epoch = w.here.worker.as_ref().unwrap().epoch;
    for _ in 0..100 {
        let new = w.here.worker.as_ref().unwrap();
        if new.epoch != old_epoch && new.started && w.core.phase(0) == Phase::Alive {
            break;
        }
        w.deliver_one();
        if w.core.phase(0) == Phase::Restarting {
            w.advance(Duration::from_millis(50));
        }
        w.start_worker();
    }
    assert_eq!(w.core.phase(0), Phase::Alive);
    assert!(w.here.worker.as_ref().unwrap().verified.is_some());
    let a = &w.core.actors[0];
    assert_eq!(a.restored.as_ref().map(|r| (r.0, r.1)), Some(ck2));
    // Not verified yet: counted as a fallback, so truncation keeps every call after it.
    assert_eq!((a.mmap_newest, a.mmap_other), (Some(20), Some(10)));
    // The disk copy holds checkpoint 2: truncation runs, as far as it may.
    let synced = |w: &mut World| {
        w.handle(Event::DiskSynced {
            actor: 0,
            generation: ck2.0,
            last_seq: ck2.1,
        });
    };
    synced(&mut w);
    let a = &w.core.actors[0];
    assert!(
        a.log_floor <= 10,
        "log floor {} past the unverified slot",
        a.log_floor
    );
    assert!(a.log.iter().any(|e| e.seq == 11), "call 11 dropped");
    // The worker, idle, finishes verifying and reports the damage: the slot stops
    // counting, and the log may go up to what the verified checkpoints cover, no further.
    w.worker_step(None);
    w.settle();
    let a = &w.core.actors[0];
    assert_eq!((a.mmap_newest, a.mmap_other), (Some(20), None));
    synced(&mut w);
    let a = &w.core.actors[0];
    assert_eq!(
        a.log_floor, 20,
        "floor is what the verified newest and disk copy cover"
    );
    assert!(a.log.iter().all(|e| e.seq > 20));
    assert!(a.log.iter().any(|e| e.seq == 21), "call 21 dropped");
    w.check_model();
}

#[test]
fn calls_wait_for_a_new_worker_only_past_the_newest_checkpoint() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    assert!(!w.core.calls_waiting(0), "nothing was called");
    w.call("incr", 4);
    w.settle();
    assert!(w.core.calls_waiting(0), "call 1 is in no checkpoint");
    checkpoint_now(&mut w);
    w.sync_disk();
    w.settle();
    assert!(!w.core.calls_waiting(0), "the checkpoint holds call 1");
    w.call("incr", 1);
    w.settle();
    assert!(w.core.calls_waiting(0), "call 2 is in no checkpoint");
    checkpoint_now(&mut w);
    w.sync_disk();
    w.settle();
    // A new worker restores the newest checkpoint and has not verified the older one
    // yet: the log keeps call 2 for it, but no call waits for the next worker.
    w.kill9();
    w.settle();
    assert!(
        w.core.log_len(0) > 0,
        "the log keeps call 2 for the older slot"
    );
    assert!(
        !w.core.calls_waiting(0),
        "both calls are in the newest checkpoint"
    );
}

#[test]
fn checkpoint_request_is_answered_after_the_disk_copy() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    w.call("incr", 4);
    w.settle();
    let id = w.op(Op::Checkpoint { actor: "c".into() });
    w.worker_step(None);
    w.deliver_one();
    assert!(
        !w.replies.contains_key(&id),
        "answered before the disk copy"
    );
    w.sync_disk();
    let r = &w.replies[&id][0];
    assert_eq!(r["ok"]["last_seq"].as_u64(), Some(1));
    assert_eq!(total(&w.here.disk.as_ref().unwrap().state), 4);
}

#[test]
fn unknown_actor_and_method_are_refused_without_logging() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let id = w.op(Op::Call {
        actor: "nope".into(),
        method: "incr".into(),
        args: None,
        key: None,
    });
    assert_eq!(err_kind(&w, id).as_deref(), Some("UnknownActor"));
    let id = w.op(Op::Call {
        actor: "c".into(),
        method: "fly".into(),
        args: None,
        key: None,
    });
    assert_eq!(err_kind(&w, id).as_deref(), Some("UnknownMethod"));
    assert_eq!(w.core.log_len(0), 0);
}

#[test]
fn graceful_stop_checkpoints_and_exits_zero() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let a = w.call("incr", 9);
    w.op(Op::Stop);
    let late = w.call("incr", 1);
    assert_eq!(err_kind(&w, late).as_deref(), Some("Busy"));
    w.issued.pop();
    w.settle();
    assert_eq!(ok_value(&w, a), Some(9));
    assert_eq!(w.exited, Some(0));
    assert_eq!(
        total(&w.here.disk.as_ref().unwrap().state),
        9,
        "final checkpoint synced to disk"
    );
    assert_eq!(w.core.phase(0), Phase::Stopped);
}

#[test]
fn an_operator_stop_checkpoints_stops_the_worker_and_refuses_calls_until_start() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let a = w.call("incr", 5);
    let stop = w.op(Op::StopActor { actor: "c".into() });
    // Refused from the moment the stop is asked for; the accepted call still runs.
    let refused = w.call("incr", 1);
    w.issued.pop();
    assert_eq!(err_kind(&w, refused).as_deref(), Some("ActorStopped"));
    assert!(!w.replies.contains_key(&stop), "answered before it stopped");
    let status = w.op(Op::Status);
    assert_eq!(
        w.replies[&status][0]["ok"]["actors"][0]["state"],
        "STOPPING"
    );
    w.settle();
    assert_eq!(ok_value(&w, a), Some(5));
    let reply = &w.replies[&stop][0]["ok"];
    assert_eq!(reply["state"], "STOPPED", "{reply}");
    assert_eq!(reply["checkpoint"]["last_seq"], 1, "{reply}");
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert!(
        w.here.worker.as_ref().unwrap().dead,
        "the worker was stopped"
    );
    assert_eq!(
        total(&w.here.disk.as_ref().unwrap().state),
        5,
        "final checkpoint"
    );
    // Stopped: no worker, time passes, nothing restarts; calls and checkpoints refused.
    w.advance(Duration::from_secs(600));
    assert_eq!(w.core.phase(0), Phase::Stopped);
    let refused = w.call("get", 0);
    w.issued.pop();
    assert_eq!(err_kind(&w, refused).as_deref(), Some("ActorStopped"));
    let ck = w.op(Op::Checkpoint { actor: "c".into() });
    assert_eq!(err_kind(&w, ck).as_deref(), Some("ActorStopped"));
    let pid = w.op(Op::Pid {
        actor: Some("c".into()),
    });
    assert_eq!(w.replies[&pid][0]["ok"]["pid"], Value::Null);
    // A second stop is answered at once; the summary counts it as stopped.
    let again = w.op(Op::StopActor { actor: "c".into() });
    assert_eq!(w.replies[&again][0]["ok"]["state"], "STOPPED");
    assert!(w.core.all_serving());
    assert_eq!(w.core.summary(), "0 alive, 1 stopped");
    // Started again from its final checkpoint.
    let start = w.op(Op::StartActor { actor: "c".into() });
    assert_eq!(w.replies[&start][0]["ok"]["state"], "STARTING");
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Alive);
    let b = w.call("incr", 1);
    w.settle();
    assert_eq!(ok_value(&w, b), Some(6));
    let running = w.op(Op::StartActor { actor: "c".into() });
    assert_eq!(w.replies[&running][0]["ok"]["state"], "ALIVE");
    w.check_model();
}

/// A world whose actor applied `incrs` (its worker killed after each) and now waits
/// out a 3 s backoff (RESTARTING).
fn restarting_with(incrs: &[i64]) -> World {
    restarting_in(Durability::Log, incrs)
}

/// [`restarting_with`] in the given durability mode.
fn restarting_in(durability: Durability, incrs: &[i64]) -> World {
    let mut p = policy(-1, 3, 0);
    p.backoff_initial = Duration::from_secs(3);
    p.backoff_max = Duration::from_secs(3);
    p.durability = durability;
    let mut w = World::new(p);
    w.settle();
    for (i, &n) in incrs.iter().enumerate() {
        w.call("incr", n);
        w.settle();
        w.kill9();
        if i + 1 < incrs.len() {
            w.settle();
        }
    }
    w.deliver_one();
    assert_eq!(w.core.phase(0), Phase::Restarting);
    w
}

#[test]
fn an_operator_stop_of_a_restarting_actor_starts_it_for_the_final_checkpoint() {
    let mut w = restarting_with(&[7, 3]);
    let stop = w.op(Op::StopActor { actor: "c".into() });
    w.settle();
    assert_eq!(w.replies[&stop][0]["ok"]["state"], "STOPPED");
    assert_eq!(total(&w.here.disk.as_ref().unwrap().state), 10);
    // `restart` of a stopped actor starts it, as `systemctl restart` does.
    w.op(Op::Restart {
        actor: "c".into(),
        fresh: false,
    });
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Alive);
    w.check_model();
}

#[test]
fn a_stop_during_shutdown_is_refused_and_a_pending_one_is_answered() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let stop = w.op(Op::StopActor { actor: "c".into() });
    w.op(Op::Stop);
    assert_eq!(err_kind(&w, stop).as_deref(), Some("Busy"));
    let late = w.op(Op::StopActor { actor: "c".into() });
    assert_eq!(err_kind(&w, late).as_deref(), Some("Busy"));
    let pid = w.op(Op::Pid { actor: None });
    assert_eq!(w.replies[&pid][0]["ok"]["pid"], 4242);
    w.settle();
    assert_eq!(w.exited, Some(0));
}

#[test]
fn a_replay_after_a_crash_reports_its_progress_until_done() {
    let mut p = policy(-1, 3, 0);
    p.checkpoint_interval = Duration::ZERO;
    let mut w = World::new(p);
    w.settle();
    for n in 1..=3 {
        w.call("incr", n);
    }
    w.settle();
    w.kill9();
    w.deliver_one();
    w.start_worker();
    let replay = |w: &mut World| {
        let id = w.op(Op::Status);
        w.replies[&id][0]["ok"]["actors"][0]["replay"].clone()
    };
    assert_eq!(replay(&mut w), serde_json::json!({"done": 0, "total": 3}));
    // A progress line is due every few seconds while it runs: the core asks for a tick.
    let due = w.core.next_deadline().expect("a progress deadline");
    assert!(due <= w.now + actor::REPLAY_PROGRESS_EVERY);
    w.advance(actor::REPLAY_PROGRESS_EVERY);
    assert!(w.core.next_deadline().is_some_and(|d| d > w.now));
    w.settle();
    assert_eq!(replay(&mut w), Value::Null);
    assert!(
        w.core.actors[0].replay.is_none(),
        "no timer outlives the replay"
    );
    w.check_model();
}

#[test]
fn status_reports_every_actor() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let id = w.op(Op::Status);
    let s = &w.replies[&id][0]["ok"];
    assert_eq!(s["actors"][0]["name"], "c");
    assert_eq!(s["actors"][0]["state"], "ALIVE");
    assert_eq!(s["supervisor"]["pid"], 4242);
}

/// One step of the random schedule.
#[derive(Debug, Clone)]
#[allow(clippy::enum_variant_names)]
enum Step {
    Incr(i64),
    Get,
    Crash,
    WorkerStep,
    KillMidBatch(usize),
    KillIdle,
    Deliver,
    StartWorker,
    SyncDisk,
    Fsync,
    Advance(u64),
    CheckpointOp,
    Restart,
    CorruptNewest,
    CorruptOlder,
    CorruptDisk,
    DiskFull(bool),
    CrashSupervisor,
    PowerLoss,
    StopActor,
    StartActor,
    /// Later steps act on this actor (modulo the number of actors).
    Focus(usize),
    /// A reload removes the actor looked at.
    Retire,
    /// A reload adds it back, once its retired incarnation has stopped.
    AddBack,
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        6 => (1i64..5).prop_map(Step::Incr),
        1 => Just(Step::Get),
        1 => Just(Step::Crash),
        8 => Just(Step::WorkerStep),
        2 => (0usize..4).prop_map(Step::KillMidBatch),
        1 => Just(Step::KillIdle),
        8 => Just(Step::Deliver),
        3 => Just(Step::StartWorker),
        3 => Just(Step::SyncDisk),
        3 => Just(Step::Fsync),
        2 => (1u64..300).prop_map(Step::Advance),
        1 => Just(Step::CheckpointOp),
        1 => Just(Step::Restart),
        1 => Just(Step::CorruptNewest),
        1 => Just(Step::CorruptOlder),
        1 => Just(Step::CorruptDisk),
        1 => proptest::bool::ANY.prop_map(Step::DiskFull),
        1 => Just(Step::CrashSupervisor),
        1 => Just(Step::PowerLoss),
        1 => Just(Step::StopActor),
        1 => Just(Step::StartActor),
        4 => (0usize..3).prop_map(Step::Focus),
        1 => Just(Step::Retire),
        1 => Just(Step::AddBack),
    ]
}

fn durability() -> impl Strategy<Value = Durability> {
    prop_oneof![
        Just(Durability::Memory),
        Just(Durability::Log),
        Just(Durability::Fsync)
    ]
}

fn run_schedule(w: &mut World, steps: Vec<Step>) {
    let durability = w.policy.durability;
    for s in steps {
        match s {
            Step::Incr(n) => {
                w.call("incr", n);
            }
            Step::Get => {
                w.call("get", 0);
            }
            Step::Crash => {
                w.call("crash", 0);
            }
            Step::WorkerStep => w.worker_step(None),
            Step::KillMidBatch(k) => w.worker_step(Some(k)),
            Step::KillIdle => {
                if w.here.worker.as_ref().is_some_and(|x| !x.dead) {
                    w.die(
                        WorkerExit::Signal {
                            signal: 9,
                            core_dumped: false,
                        },
                        None,
                    );
                }
            }
            Step::Deliver => w.deliver_one(),
            Step::StartWorker => w.start_worker(),
            Step::SyncDisk => w.sync_disk(),
            Step::Fsync => w.fsync(),
            Step::Advance(ms) => w.advance(Duration::from_millis(ms)),
            Step::CheckpointOp => {
                w.op(Op::Checkpoint { actor: w.name() });
            }
            Step::Restart => {
                w.op(Op::Restart {
                    actor: w.name(),
                    fresh: false,
                });
            }
            // In memory mode only the core's memory has the calls since the last
            // checkpoint: a retired actor's files must stay intact for its return, and
            // an actor added back from its files has, like one after a supervisor
            // restart (never done in memory mode here), nothing but its checkpoints for
            // the calls before its restore point.
            Step::CorruptNewest | Step::CorruptOlder | Step::CorruptDisk
                if durability == Durability::Memory
                    && (w.core.actor_id(&w.name()).is_none() || w.added_back[w.cur]) => {}
            Step::CorruptNewest => {
                // Damage one candidate while all are intact (two with the disk copy
                // below): the log must always cover the survivors.
                let all_valid = w.here.slots.iter().flatten().all(|c| c.valid)
                    && w.here.disk.as_ref().is_none_or(|c| c.valid);
                if all_valid && let Some((i, _)) = w.newest_valid() {
                    w.here.slots[i].as_mut().unwrap().valid = false;
                    w.damaged[w.cur] = true;
                }
            }
            Step::CorruptOlder => {
                // The fallback slot, which a restore verifies only after ready.
                let all_valid = w.here.slots.iter().flatten().all(|c| c.valid)
                    && w.here.disk.as_ref().is_none_or(|c| c.valid);
                if all_valid
                    && let Some((i, _)) = w.newest_valid()
                    && let Some(older) = w.here.slots[1 - i].as_mut()
                {
                    older.valid = false;
                    w.damaged[w.cur] = true;
                }
            }
            Step::CorruptDisk => {
                let slots_valid = w.here.slots.iter().flatten().filter(|c| c.valid).count();
                if slots_valid >= 1
                    && let Some(d) = w.here.disk.as_mut()
                {
                    d.valid = false;
                    w.damaged[w.cur] = true;
                }
            }
            Step::DiskFull(full) => w.disk_full = full,
            // A crash of the supervisor loses acknowledged calls in memory mode by
            // design; the durable modes must not.
            Step::CrashSupervisor if durability != Durability::Memory => {
                if w.every_actor(World::files_intact) {
                    w.crash_supervisor(false);
                }
            }
            // A power loss keeps only fsync'd data: only fsync mode promises that.
            Step::PowerLoss if durability == Durability::Fsync => {
                if w.every_actor(|w| w.here.disk.as_ref().is_none_or(|c| c.valid)) {
                    w.crash_supervisor(true);
                }
            }
            Step::CrashSupervisor | Step::PowerLoss => {}
            Step::StopActor => {
                let id = w.op(Op::StopActor { actor: w.name() });
                w.stops.push(id);
            }
            Step::StartActor => {
                w.op(Op::StartActor { actor: w.name() });
            }
            Step::Focus(i) => w.focus(i % w.parked.len()),
            // Memory mode cannot bring back calls whose checkpoint was damaged: only the
            // core's memory has them, and a removal ends that.
            Step::Retire if durability == Durability::Memory && w.damaged[w.cur] => {}
            Step::Retire => w.retire(),
            Step::AddBack => w.add_back(),
        }
    }
    w.check_model();
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]

    /// Random interleavings, over one to three actors at once, of calls, replies,
    /// checkpoints, disk syncs, kills (mid-batch too), poison calls, restarts,
    /// checkpoint corruption, failing log appends, reloads that remove an actor with
    /// calls queued or in flight and add it back from its files, and supervisor crashes
    /// (the core rebuilt from the log, tombstones included) in every durability mode:
    /// every call is answered at most once (exactly once unless the supervisor
    /// crashed), every acknowledged call is in its actor's state exactly once, in
    /// order, and a refused or cancelled call never is, after any number of restarts.
    #[test]
    fn random_schedules_keep_exactly_once(
        steps in proptest::collection::vec(step(), 1..300),
        every in 0u64..6,
        max_restarts in prop_oneof![Just(-1i64), Just(4i64)],
        retries in 1i64..4,
        durability in durability(),
        actors in 1usize..=3,
    ) {
        let mut p = policy(max_restarts, retries, every);
        p.durability = durability;
        let mut w = World::with_actors(p, actors);
        run_schedule(&mut w, steps);
    }
}

#[test]
fn a_hung_worker_is_pinged_then_killed_and_its_call_replayed() {
    let mut p = policy(-1, 3, 0);
    p.heartbeat_timeout = Duration::from_secs(2);
    let mut w = World::new(p);
    w.settle();
    // Idle: after half the timeout the core pings, and an answer keeps it alive.
    w.advance(Duration::from_millis(1100));
    assert!(matches!(
        w.here.worker.as_ref().unwrap().inbox.front(),
        Some(ToW::Ping)
    ));
    w.settle();
    let epoch = w.here.worker.as_ref().unwrap().epoch;
    // Now the worker stops answering (SIGSTOP, endless loop) with a call in flight.
    let id = w.call("incr", 4);
    w.advance(Duration::from_millis(1900));
    assert_eq!(
        w.here.worker.as_ref().unwrap().epoch,
        epoch,
        "killed too early"
    );
    w.advance(Duration::from_millis(200));
    assert!(w.here.worker.as_ref().unwrap().dead || w.here.worker.as_ref().unwrap().epoch > epoch);
    w.settle();
    assert_eq!(ok_value(&w, id), Some(4));
    assert!(
        w.core.actors[0]
            .last_exit
            .as_deref()
            .is_some_and(|e| e.starts_with("hung")),
        "{:?}",
        w.core.actors[0].last_exit
    );
    w.check_model();
}

/// A kill for a hang and a crash in the same call count apart: the call is dropped only
/// when it hangs (or crashes) its worker `max_call_retries` times, not for one of each.
#[test]
fn a_hung_kill_is_not_a_poison_attempt_unless_the_call_hangs_every_time() {
    let mut p = policy(-1, 2, 0);
    p.heartbeat_timeout = Duration::from_secs(2);
    let mut w = World::new(p);
    w.settle();
    let id = w.call("incr", 5);
    let seq = w.core.actors[0].log.back().map(|e| e.seq).unwrap();
    // The worker hangs in the call: killed as hung while executing it.
    w.here.executing_when_killed = Some(seq);
    w.advance(Duration::from_millis(2100));
    assert!(w.here.worker.as_ref().unwrap().dead, "killed as hung");
    w.deliver_one();
    w.start_worker();
    // The next worker crashes in the same call (a second death while running it).
    w.die(
        WorkerExit::Signal {
            signal: 11,
            core_dumped: false,
        },
        Some(seq),
    );
    w.settle();
    assert_eq!(ok_value(&w, id), Some(5), "{:?}", w.replies.get(&id));
    // A call that hangs its worker every time is dropped after max_call_retries.
    let id = w.call("incr", 1);
    let seq = w.core.actors[0].log.back().map(|e| e.seq).unwrap();
    for _ in 0..2 {
        w.settle_starting();
        w.here.executing_when_killed = Some(seq);
        w.advance(Duration::from_millis(2100));
        w.deliver_one();
    }
    w.settle();
    assert_eq!(err_kind(&w, id).as_deref(), Some("CallFailed"));
    let message = w.replies[&id][0]["err"]["message"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(message.contains("hung its worker 2 times"), "{message}");
    w.check_model();
}

#[test]
fn a_removed_actor_answers_its_calls_checkpoints_and_stops() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let a = w.call("incr", 2);
    w.core.retire_actor(0, w.now);
    w.pump();
    let late = w.call("incr", 1);
    assert_eq!(err_kind(&w, late).as_deref(), Some("UnknownActor"));
    w.settle();
    assert_eq!(ok_value(&w, a), Some(2));
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert_eq!(
        total(&w.here.disk.as_ref().unwrap().state),
        2,
        "final checkpoint on disk"
    );
    let id = w.op(Op::Status);
    assert_eq!(w.replies[&id][0]["ok"]["actors"], serde_json::json!([]));
    assert!(w.core.all_serving());
}

/// A removed actor whose worker crash-loops while it answers its accepted calls ends
/// removed, not DEAD for ever: its calls are answered (`ActorDead`, tombstoned in the
/// log so they never run), it leaves `status`, and a reload can add its name back.
#[test]
fn a_removed_actor_that_gives_up_ends_removed_and_can_be_added_back() {
    let (mut w, a, bad, queued) = crash_queued(5);
    w.retire();
    w.settle();
    assert_eq!(ok_value(&w, a), Some(5));
    assert_eq!(err_kind(&w, bad).as_deref(), Some("ActorDead"));
    assert_eq!(err_kind(&w, queued).as_deref(), Some("ActorDead"));
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert!(!w.core.is_retiring("c"), "still retiring after it gave up");
    let status = w.op(Op::Status);
    assert_eq!(w.replies[&status][0]["ok"]["actors"], serde_json::json!([]));
    assert!(w.core.all_serving());
    assert_eq!(
        w.cancelled(),
        vec![2, 3],
        "the refused calls are tombstoned"
    );
    w.add_back();
    assert_eq!(w.id(), 1, "added back as a new actor");
    assert_eq!(settled_get(&mut w), Some(5));
    w.check_model();
}

/// Memory mode: an actor removed while it waits out a backoff is started at once, so
/// that its final checkpoint holds every acknowledged call (nothing else does).
#[test]
fn removing_a_restarting_actor_in_memory_mode_takes_a_final_checkpoint() {
    let mut w = restarting_in(Durability::Memory, &[7, 3]);
    w.retire();
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert!(!w.core.is_retiring("c"));
    assert_eq!(total(&w.here.disk.as_ref().unwrap().state), 10);
    w.add_back();
    assert_eq!(settled_get(&mut w), Some(10));
    w.check_model();
}

/// A `get` once everything pending has run: the actor's total, if it answered one.
fn settled_get(w: &mut World) -> Option<i64> {
    w.settle();
    let g = w.call("get", 0);
    w.settle();
    ok_value(w, g)
}

/// A settled world in memory mode with `max_restarts`.
fn memory_world(max_restarts: i64) -> World {
    let mut p = policy(max_restarts, 10, 0);
    p.durability = Durability::Memory;
    let mut w = World::new(p);
    w.settle();
    w
}

/// Memory mode: an actor removed while its worker starts is not killed: the worker
/// comes up, gets the replay, and writes the final checkpoint.
#[test]
fn removing_a_starting_actor_in_memory_mode_takes_a_final_checkpoint() {
    let mut w = memory_world(-1);
    w.call("incr", 4);
    w.settle();
    w.kill9();
    w.deliver_one();
    assert_eq!(w.core.phase(0), Phase::Starting, "restarted at once");
    w.retire();
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert_eq!(total(&w.here.disk.as_ref().unwrap().state), 4);
    w.add_back();
    w.check_model();
}

/// Memory mode: a DEAD actor cannot be started for a final checkpoint; removing it
/// loses its acknowledged calls since its last checkpoint, as a supervisor stop would
/// (documented in docs/guarantees.md). It is removed at once all the same.
#[test]
fn removing_a_dead_actor_in_memory_mode_ends_at_its_last_checkpoint() {
    let mut w = memory_world(0);
    w.call("incr", 2);
    checkpoint_now(&mut w);
    w.call("incr", 3);
    w.call("crash", 0);
    w.settle();
    assert_eq!(w.core.phase(0), Phase::Dead);
    w.retire();
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert!(!w.core.is_retiring("c"));
    w.add_back();
    assert_eq!(settled_get(&mut w), Some(2));
    assert_eq!(w.core.actors[0].lost_at_removal, 1);
    w.check_model();
}

#[test]
fn an_added_actor_gets_the_next_id_and_starts() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let spec = ActorSpec {
        name: "d".into(),
        kind: "counter".into(),
        policy: policy(-1, 3, 0),
        methods: Some(&["incr", "get", "crash"]),
        start_seq: 0,
        recovered: Vec::new(),
        log_range: None,
        held: None,
    };
    let id = w.core.add_actor(spec, w.now);
    assert_eq!(id, 1);
    assert_eq!(w.core.actor_id("d"), Some(1));
    let actions = w.core.take_actions();
    assert_eq!(actions, vec![Action::Spawn { actor: 1, epoch: 1 }]);
    assert!(!w.core.all_serving(), "the new actor is not serving yet");
}

#[test]
fn stop_while_restarting_restarts_first_so_the_final_checkpoint_has_every_call() {
    let mut w = restarting_with(&[10, 1]);
    w.op(Op::Stop);
    w.settle();
    assert_eq!(w.exited, Some(0));
    assert_eq!(total(&w.here.disk.as_ref().unwrap().state), 11);
}

/// A settled world with one actor in `durability` mode that restarts without limit.
fn settled_in(durability: Durability, max_call_retries: i64, checkpoint_every: u64) -> World {
    let mut p = policy(-1, max_call_retries, checkpoint_every);
    p.durability = durability;
    let mut w = World::new(p);
    w.settle();
    w
}

/// Log mode, a poison call that may run once: its worker dies executing it and, in the
/// same burst (no flush between), a new call comes before the death is seen. Returns
/// the poison call and the new one; the core's actions are not carried out yet.
fn poison_death_in_a_burst() -> (World, u64, u64) {
    let mut w = settled_in(Durability::Log, 1, 0);
    let bad = w.call("crash", 0);
    w.worker_step(None); // dies executing it; its channel is still open
    let queued = w.queue_call("incr", 7);
    let epoch = w.here.worker.as_ref().unwrap().epoch;
    w.here.worker.as_mut().unwrap().outbox.clear();
    w.core
        .handle(Event::ChannelClosed { actor: 0, epoch }, w.now);
    (w, bad, queued)
}

#[test]
fn a_tombstone_never_precedes_calls_accepted_before_it() {
    // A poison call's death and new calls in the same burst (no flush between): the
    // tombstone's seq is above theirs, so their records must reach the log first.
    let (mut w, bad, id) = poison_death_in_a_burst();
    w.pump();
    w.settle();
    assert_eq!(err_kind(&w, bad).as_deref(), Some("CallFailed"));
    assert_eq!(ok_value(&w, id), Some(7));
    w.crash_supervisor(false);
    w.check_model();
}

#[test]
fn fsync_mode_holds_replies_until_the_log_is_durable() {
    let mut w = settled_in(Durability::Fsync, 3, 0);
    let id = w.call("incr", 3);
    w.worker_step(None);
    w.deliver_one();
    assert!(!w.replies.contains_key(&id), "released before the fsync");
    w.fsync();
    assert_eq!(ok_value(&w, id), Some(3));
}

/// Log mode: until the manifest records the actor's log (the first append of a run
/// asks the log thread for it), calls run but their replies wait, as in fsync mode;
/// then they are released, and later replies go at once.
#[test]
fn log_mode_holds_replies_until_the_manifest_records_the_log() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let first = w.call("incr", 3);
    w.worker_step(None);
    w.deliver_one();
    assert_eq!(
        w.here.worker.as_ref().unwrap().state.len(),
        1,
        "the call ran"
    );
    assert!(!w.replies.contains_key(&first), "released before the mark");
    w.fsync();
    assert_eq!(ok_value(&w, first), Some(3));
    let second = w.call("incr", 1);
    w.worker_step(None);
    w.deliver_one();
    assert_eq!(ok_value(&w, second), Some(4), "held after the mark");
    w.check_model();
}

/// A graceful stop does not exit while a reply waits for its log record to become
/// durable: it would never reach its client.
#[test]
fn a_shutdown_waits_for_replies_held_for_their_log_record() {
    let mut w = settled_in(Durability::Fsync, 3, 0);
    let id = w.call("incr", 2);
    w.op(Op::Stop);
    // Everything but the fsync: the call runs, the final checkpoint, the worker stops.
    for _ in 0..20 {
        w.worker_step(None);
        w.deliver_one();
        w.sync_disk();
    }
    assert_eq!(w.core.phase(0), Phase::Stopped);
    assert!(!w.replies.contains_key(&id));
    assert_eq!(w.exited, None, "exited with a reply held");
    w.fsync();
    assert_eq!(ok_value(&w, id), Some(2));
    assert_eq!(w.exited, Some(0));
}

#[test]
fn a_failed_log_append_refuses_the_call_and_it_never_runs() {
    let mut w = settled_in(Durability::Log, 3, 0);
    w.disk_full = true;
    let refused = w.call("incr", 5);
    assert_eq!(err_kind(&w, refused).as_deref(), Some("CallFailed"));
    w.disk_full = false;
    let ok = w.call("incr", 1);
    w.settle();
    assert_eq!(ok_value(&w, ok), Some(1));
    w.check_model();
}

#[test]
fn supervisor_crash_in_log_mode_replays_the_log() {
    let mut w = settled_in(Durability::Log, 3, 3);
    for _ in 0..7 {
        w.call("incr", 1);
        w.settle();
    }
    w.crash_supervisor(false);
    w.settle();
    assert_eq!(w.core.actors[0].recovered as usize, w.here.log.len());
    let g = w.call("get", 0);
    w.settle();
    assert_eq!(ok_value(&w, g), Some(7));
    w.check_model();
}

#[test]
fn batches_respect_the_size_caps() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let big = "9".repeat(1024);
    // Hold the worker so calls queue up.
    for _ in 0..(MAX_BATCH_BYTES / 1024 + 10) {
        w.handle(Event::Request {
            conn: CONN,
            request: Request {
                id: "0".into(),
                op: Op::Call {
                    actor: "c".into(),
                    method: "get".into(),
                    args: Some(big.clone()),
                    key: None,
                },
            },
        });
    }
    let batches: Vec<usize> = w
        .here
        .worker
        .as_ref()
        .unwrap()
        .inbox
        .iter()
        .map(|m| match m {
            ToW::Calls(c) => c.iter().map(|c| c.args.len()).sum(),
            _ => 0,
        })
        .collect();
    assert_eq!(batches.len(), MAX_INFLIGHT_BATCHES as usize);
    assert!(batches.iter().all(|&b| b <= MAX_BATCH_BYTES));
}

#[test]
fn restart_fresh_revives_a_held_actor_an_operator_stopped() {
    let mut w = World::new(policy(-1, 3, 0));
    w.settle();
    let spec = ActorSpec {
        held: Some("its checkpoint file vanished".into()),
        ..World::spec(&policy(-1, 3, 0), "d", 0, Vec::new(), None)
    };
    let id = w.core.add_actor(spec, w.now);
    assert_eq!(w.core.phase(id), Phase::Dead);
    let ask = |w: &mut World, op: Op| {
        let request = Request { id: "r".into(), op };
        w.core.handle(
            Event::Request {
                conn: CONN,
                request,
            },
            w.now,
        );
    };
    ask(&mut w, Op::StopActor { actor: "d".into() });
    assert_eq!(w.core.phase(id), Phase::Stopped);
    // A plain start or restart is refused (held); `restart --fresh` accepts the loss.
    ask(&mut w, Op::StartActor { actor: "d".into() });
    assert_eq!(w.core.phase(id), Phase::Stopped);
    ask(
        &mut w,
        Op::Restart {
            actor: "d".into(),
            fresh: true,
        },
    );
    assert_eq!(w.core.phase(id), Phase::Starting);
    let actions = w.core.take_actions();
    assert!(
        actions.contains(&Action::Release { actor: id }),
        "{actions:?}"
    );
    assert!(
        actions.contains(&Action::Spawn {
            actor: id,
            epoch: 1
        }),
        "{actions:?}"
    );
}

#[test]
fn an_idempotency_key_goes_with_its_call_to_the_log_the_worker_and_a_replay() {
    let mut w = settled_in(Durability::Log, 3, 0);
    let keyed = |key: Option<&str>| Op::Call {
        actor: "c".into(),
        method: "incr".into(),
        args: Some(r#"{"id":0,"n":0}"#.into()),
        key: key.map(String::from),
    };
    w.op(keyed(Some("retry-1")));
    w.op(keyed(None));
    let sent: Vec<Option<String>> = w
        .here
        .worker
        .as_ref()
        .unwrap()
        .inbox
        .iter()
        .flat_map(|m| match m {
            ToW::Calls(c) => c
                .iter()
                .map(|c| c.key.as_ref().map(|k| k.key.clone()))
                .collect(),
            _ => Vec::new(),
        })
        .collect();
    assert_eq!(sent, [Some("retry-1".to_string()), None]);
    w.settle();
    let logged: Vec<_> = w
        .here
        .log
        .iter()
        .map(|r| r.key.as_deref().cloned())
        .collect();
    let key = CallKey {
        key: "retry-1".into(),
        keep_calls: 10_000,
        keep_bytes: 16 << 20,
    };
    assert_eq!(logged, [Some(key.clone()), None]);
    // A retention changed later does not change what the logged call carries.
    w.policy.idempotency_keys = 1;
    w.crash_supervisor(false);
    let recovered: Vec<_> = w.core.actors[0]
        .log
        .iter()
        .map(|e| e.key.as_deref().cloned())
        .collect();
    assert_eq!(recovered, [Some(key), None]);
    w.settle();
    // …while a call accepted after the change carries the new retention.
    w.op(keyed(Some("retry-2")));
    w.settle();
    let last = w.here.log.last().and_then(|r| r.key.clone());
    assert_eq!(
        last.map(|k| (k.key, k.keep_calls)),
        Some(("retry-2".into(), 1))
    );
}

/// Two appends for one actor in one burst (a tombstone's, then the flush's): the first
/// fails, the second is written. The calls of the second are in the log once, not
/// handed to the log writer again.
#[test]
fn a_failed_append_does_not_append_again_the_calls_queued_after_it() {
    let (mut w, bad, refused) = poison_death_in_a_burst();
    let later = w.queue_call("incr", 1);
    w.core.flush();
    let actions = w.core.take_actions();
    let appends = actions
        .iter()
        .filter(|a| matches!(a, Action::Append { .. }))
        .count();
    assert_eq!(appends, 2, "{actions:?}");
    let mut first = true;
    for a in actions {
        let fail = first && matches!(a, Action::Append { .. });
        first &= !fail;
        w.disk_full = fail;
        w.act(a);
    }
    w.disk_full = false;
    w.pump(); // the sim refuses an append of a seq already in the log
    w.settle();
    assert_eq!(err_kind(&w, bad).as_deref(), Some("CallFailed"));
    assert_eq!(err_kind(&w, refused).as_deref(), Some("CallFailed"));
    assert_eq!(ok_value(&w, later), Some(1));
    w.check_model();
}
