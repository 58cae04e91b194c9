//! Timers never outlive their phase: a property test over several actors with reloads
//! (added, retired, relaunched actors), operator restarts, deaths at any point, hung
//! workers and restart backoffs longer than `startup_timeout`.
//!
//! The event loop sleeps until [`Core::next_deadline`] and then hands the core a
//! [`Event::Tick`]; a deadline still due after that tick would wake it again at once,
//! forever (a spinning loop). So after every step the test ticks like the loop does and
//! asserts that no deadline at or before `now` survives.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use proptest::prelude::*;

use resurgam_shared::config::{Durability, Policy};
use resurgam_shared::ipc::{Outcome, Reply, Restored};
use resurgam_shared::protocol::{ErrorBody, ErrorKind, Op, Request};

use super::super::*;
use super::{Sim, config};
use crate::exit::WorkerExit;

const MAX_ACTORS: usize = 4;

fn timer_policy(max_restarts: i64) -> Policy {
    Policy {
        max_restarts,
        max_call_retries: 2,
        checkpoint_every: 0,
        checkpoint_interval: Duration::from_millis(500),
        restart_window: Duration::from_secs(60),
        // Backoffs longer than the start-up timeout.
        backoff_initial: Duration::from_secs(2),
        backoff_max: Duration::from_secs(8),
        min_uptime: Duration::from_secs(1),
        startup_timeout: Duration::from_secs(1),
        heartbeat_timeout: Duration::from_secs(3),
        durability: Durability::Memory,
        ..Policy::default()
    }
}

fn spec(name: String, policy: Policy) -> ActorSpec {
    ActorSpec {
        name,
        kind: "counter".into(),
        policy,
        methods: None,
        start_seq: 0,
        recovered: Vec::new(),
        log_range: None,
        held: None,
    }
}

/// What a simulated worker owes the supervisor, in order.
#[derive(Debug)]
enum Owed {
    Replies(Vec<u64>),
    Checkpoint,
    Pong,
    Exit,
}

/// One actor's current worker as the world sees it.
#[derive(Debug, Default)]
struct Worker {
    epoch: u64,
    /// Spawn asked for, `Spawned` not delivered yet.
    spawning: bool,
    /// Spawned, not ready yet.
    starting: bool,
    alive: bool,
    exited: bool,
    closed: bool,
    /// Killed before `Spawned` was delivered: it dies as soon as it is.
    kill_pending: bool,
    owed: VecDeque<Owed>,
    last_seq: u64,
    generation: u64,
}

struct Timers {
    core: Core,
    now: Instant,
    workers: Vec<Worker>,
    policy: Policy,
    next_id: u64,
}

impl Timers {
    fn new(actors: usize, policy: Policy) -> Timers {
        let now = Instant::now();
        let specs = (0..actors)
            .map(|i| spec(format!("a{i}"), policy.clone()))
            .collect();
        let core = Core::new(&config(), specs, 7, now);
        let mut t = Timers {
            core,
            now,
            workers: (0..actors).map(|_| Worker::default()).collect(),
            policy,
            next_id: 1,
        };
        t.pump();
        t
    }

    fn live(&mut self, actor: ActorId, epoch: u64) -> Option<&mut Worker> {
        self.workers
            .get_mut(actor)
            .filter(|w| w.epoch == epoch && !w.exited)
    }
}

impl Sim for Timers {
    fn core(&mut self) -> &mut Core {
        &mut self.core
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Spawn { actor, epoch } => {
                self.workers[actor] = Worker {
                    epoch,
                    spawning: true,
                    ..Worker::default()
                };
            }
            Action::SendCalls {
                actor,
                epoch,
                calls,
            } => {
                if let Some(w) = self.live(actor, epoch) {
                    w.owed
                        .push_back(Owed::Replies(calls.iter().map(|c| c.seq).collect()));
                }
            }
            Action::RequestCheckpoint { actor, epoch } => {
                if let Some(w) = self.live(actor, epoch) {
                    w.owed.push_back(Owed::Checkpoint);
                }
            }
            Action::Ping { actor, epoch } => {
                if let Some(w) = self.live(actor, epoch) {
                    w.owed.push_back(Owed::Pong);
                }
            }
            Action::StopWorker { actor, epoch } => {
                if let Some(w) = self.live(actor, epoch) {
                    w.owed.push_back(Owed::Exit);
                }
            }
            Action::Kill { actor, epoch } => {
                if let Some(w) = self.live(actor, epoch).filter(|w| w.spawning) {
                    w.kill_pending = true;
                } else if let Some(w) = self.live(actor, epoch) {
                    // Killed: it exits at once, its channel closes in a later step.
                    w.exited = true;
                    w.alive = false;
                    self.core.handle(killed(actor, epoch), self.now);
                }
            }
            Action::Reload { origin } => self.core.answer(
                &origin,
                Err(ErrorBody::new(
                    ErrorKind::BadRequest,
                    "no file in the model",
                )),
            ),
            Action::Reply { .. }
            | Action::SyncDisk { .. }
            | Action::Append { .. }
            | Action::Cancel { .. }
            | Action::TruncateLog { .. }
            | Action::Configure { .. }
            | Action::Metrics { .. }
            | Action::Subscribe { .. }
            | Action::Release { .. }
            | Action::Exit { .. } => {}
        }
    }
}

impl Timers {
    fn handle(&mut self, e: Event) {
        self.core.handle(e, self.now);
        self.pump();
    }

    fn request(&mut self, op: Op) {
        let id = self.next_id;
        self.next_id += 1;
        self.handle(Event::Request {
            conn: 1,
            request: Request {
                id: id.to_string(),
                op,
            },
        });
    }

    /// The worker a step's `i` picks (modulo the actors) and its actor, when `when`
    /// holds for it (the step is a no-op otherwise).
    fn pick(&mut self, i: usize, when: impl Fn(&Worker) -> bool) -> Option<(ActorId, &mut Worker)> {
        let actor = i % self.workers.len();
        let w = &mut self.workers[actor];
        when(w).then_some((actor, w))
    }

    fn step(&mut self, s: TimerStep) {
        let n = self.workers.len();
        match s {
            TimerStep::Call(i) => self.request(Op::Call {
                actor: format!("a{}", i % n),
                method: "incr".into(),
                args: Some("1".into()),
                key: None,
            }),
            TimerStep::Spawned(i) => {
                if let Some((actor, w)) = self.pick(i, |w| w.spawning && !w.exited) {
                    w.spawning = false;
                    w.starting = true;
                    let (epoch, pid) = (w.epoch, 100 + w.epoch as u32);
                    let killed_at_once = w.kill_pending;
                    if killed_at_once {
                        w.exited = true;
                        w.starting = false;
                    }
                    self.handle(Event::Spawned { actor, epoch, pid });
                    if killed_at_once {
                        self.handle(killed(actor, epoch));
                    }
                }
            }
            TimerStep::SpawnFailed(i) => {
                if let Some((actor, w)) = self.pick(i, |w| w.spawning && !w.exited) {
                    w.exited = true;
                    w.closed = true;
                    let epoch = w.epoch;
                    self.handle(Event::SpawnFailed {
                        actor,
                        epoch,
                        error: "simulated".into(),
                    });
                }
            }
            TimerStep::Ready(i) => {
                if let Some((actor, w)) = self.pick(i, |w| w.starting && !w.exited) {
                    w.starting = false;
                    w.alive = true;
                    let epoch = w.epoch;
                    self.handle(Event::Ready {
                        actor,
                        epoch,
                        restored: Restored::fresh(),
                    });
                }
            }
            TimerStep::Work(i) => {
                let Some((actor, w)) = self.pick(i, |w| w.alive && !w.exited) else {
                    return;
                };
                let epoch = w.epoch;
                let Some(owed) = w.owed.pop_front() else {
                    return;
                };
                let ev = match owed {
                    Owed::Replies(seqs) => {
                        w.last_seq = seqs.last().copied().unwrap_or(w.last_seq);
                        Event::Replies {
                            actor,
                            epoch,
                            replies: seqs
                                .into_iter()
                                .map(|seq| Reply {
                                    seq,
                                    outcome: Outcome::Ok(b"1".to_vec()),
                                })
                                .collect(),
                        }
                    }
                    Owed::Checkpoint => {
                        w.generation += 1;
                        Event::Checkpointed {
                            actor,
                            epoch,
                            generation: w.generation,
                            last_seq: w.last_seq,
                            previous: None,
                        }
                    }
                    Owed::Pong => Event::Pong { actor, epoch },
                    Owed::Exit => {
                        w.exited = true;
                        w.alive = false;
                        Event::Exited {
                            actor,
                            epoch,
                            exit: WorkerExit::Code(0),
                            executing: None,
                        }
                    }
                };
                self.handle(ev);
            }
            TimerStep::Exit(i) => {
                if let Some((actor, w)) = self.pick(i, |w| !w.spawning && !w.exited && w.epoch > 0)
                {
                    w.exited = true;
                    w.alive = false;
                    w.starting = false;
                    let epoch = w.epoch;
                    self.handle(Event::Exited {
                        actor,
                        epoch,
                        exit: WorkerExit::Code(1),
                        executing: None,
                    });
                }
            }
            TimerStep::Close(i) => {
                if let Some((actor, w)) = self.pick(i, |w| !w.spawning && !w.closed && w.epoch > 0)
                {
                    w.closed = true;
                    let epoch = w.epoch;
                    self.handle(Event::ChannelClosed { actor, epoch });
                }
            }
            TimerStep::Advance(ms) => {
                self.now += Duration::from_millis(ms);
            }
            TimerStep::Retire(i) => {
                self.core.retire_actor(i % n, self.now);
                self.pump();
            }
            TimerStep::Add => {
                if n < MAX_ACTORS {
                    self.workers.push(Worker::default());
                    let id = self
                        .core
                        .add_actor(spec(format!("a{n}"), self.policy.clone()), self.now);
                    assert_eq!(id, n);
                    self.pump();
                }
            }
            TimerStep::Relaunch(i) => {
                self.core.relaunch(i % n, self.now);
                self.pump();
            }
            TimerStep::NewPolicy(i, heartbeat_ms) => {
                let mut p = self.policy.clone();
                p.heartbeat_timeout = Duration::from_millis(heartbeat_ms);
                self.core.update_policy(i % n, p);
                self.pump();
            }
            TimerStep::Restart(i) => self.request(Op::Restart {
                actor: format!("a{}", i % n),
                fresh: false,
            }),
            TimerStep::Checkpoint(i) => self.request(Op::Checkpoint {
                actor: format!("a{}", i % n),
            }),
            TimerStep::Stop => self.request(Op::Stop),
        }
    }

    /// What the event loop does at the top of a turn: tick when a deadline is due. Then
    /// no deadline at or before now may be left.
    fn tick_like_the_loop(&mut self, history: &[TimerStep]) {
        if self.core.next_deadline().is_some_and(|d| d <= self.now) {
            self.handle(Event::Tick);
        }
        if let Some(d) = self.core.next_deadline() {
            assert!(
                d > self.now,
                "a deadline {:?} in the past survived a tick; phases {:?}; steps {history:?}",
                self.now - d,
                (0..self.workers.len())
                    .map(|i| self.core.phase(i))
                    .collect::<Vec<_>>()
            );
        }
    }
}

fn killed(actor: ActorId, epoch: u64) -> Event {
    Event::Exited {
        actor,
        epoch,
        exit: WorkerExit::Signal {
            signal: 9,
            core_dumped: false,
        },
        executing: None,
    }
}

#[derive(Debug, Clone)]
enum TimerStep {
    Call(usize),
    Spawned(usize),
    SpawnFailed(usize),
    Ready(usize),
    Work(usize),
    Exit(usize),
    Close(usize),
    Advance(u64),
    Retire(usize),
    Add,
    Relaunch(usize),
    NewPolicy(usize, u64),
    Restart(usize),
    Checkpoint(usize),
    Stop,
}

fn timer_step() -> impl Strategy<Value = TimerStep> {
    let actor = 0usize..MAX_ACTORS;
    prop_oneof![
        4 => actor.clone().prop_map(TimerStep::Call),
        4 => actor.clone().prop_map(TimerStep::Spawned),
        1 => actor.clone().prop_map(TimerStep::SpawnFailed),
        4 => actor.clone().prop_map(TimerStep::Ready),
        8 => actor.clone().prop_map(TimerStep::Work),
        2 => actor.clone().prop_map(TimerStep::Exit),
        2 => actor.clone().prop_map(TimerStep::Close),
        // From a moment to well past every timeout and backoff.
        6 => prop_oneof![1u64..50, 50u64..4_000, 4_000u64..20_000].prop_map(TimerStep::Advance),
        1 => actor.clone().prop_map(TimerStep::Retire),
        1 => Just(TimerStep::Add),
        1 => actor.clone().prop_map(TimerStep::Relaunch),
        1 => (actor.clone(), prop_oneof![Just(0u64), 100u64..5_000])
            .prop_map(|(a, ms)| TimerStep::NewPolicy(a, ms)),
        1 => actor.clone().prop_map(TimerStep::Restart),
        1 => actor.prop_map(TimerStep::Checkpoint),
        // Rare: a stop ends the schedule's interesting part.
        1 => prop::bool::weighted(0.2).prop_map(|stop| if stop {
            TimerStep::Stop
        } else {
            TimerStep::Advance(1)
        }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    /// Random schedules over 1 to 4 actors: after every step and the tick the loop
    /// would make, every deadline the core asks for is in the future.
    #[test]
    fn no_deadline_in_the_past_survives_a_step(
        actors in 1usize..4,
        max_restarts in prop_oneof![Just(-1i64), Just(3i64)],
        steps in proptest::collection::vec(timer_step(), 1..250),
    ) {
        let mut t = Timers::new(actors, timer_policy(max_restarts));
        t.tick_like_the_loop(&[]);
        for (i, s) in steps.iter().enumerate() {
            t.step(s.clone());
            t.tick_like_the_loop(&steps[..=i]);
        }
    }
}

/// The two cases the issue found, scripted: an actor retired while starting, and a
/// restart backoff longer than `startup_timeout`.
#[test]
fn a_retired_starting_actor_and_a_long_backoff_leave_no_due_timer() {
    let mut t = Timers::new(2, timer_policy(-1));
    t.step(TimerStep::Spawned(0));
    t.step(TimerStep::Retire(0));
    t.tick_like_the_loop(&[]);
    t.step(TimerStep::Advance(70_000));
    t.tick_like_the_loop(&[]);
    assert_eq!(t.core.phase(0), Phase::Stopped);

    // Actor 1 dies twice quickly while starting: the second restart waits out a
    // backoff of 2 s, longer than its 1 s start-up timeout.
    for _ in 0..2 {
        t.step(TimerStep::Spawned(1));
        t.step(TimerStep::Exit(1));
        t.step(TimerStep::Close(1));
        t.tick_like_the_loop(&[]);
    }
    assert_eq!(t.core.phase(1), Phase::Restarting);
    t.step(TimerStep::Advance(1_500));
    t.tick_like_the_loop(&[]);
    assert_eq!(t.core.phase(1), Phase::Restarting, "still in its backoff");
}
