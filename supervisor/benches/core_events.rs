//! The core's event handling: a call accepted, batched to the worker, answered and replied
//! to the client, with the worker's periodic checkpoints and disk copies fed back, as the
//! shell would (no processes, no I/O). Measured per call, for single calls and batches.

mod common;

use std::hint::black_box;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use resurgam::core::{Action, ActorSpec, Core, Event};
use resurgam::shared::config::{Config, Durability, Environment, Policy};
use resurgam::shared::ipc::{Outcome, Reply, Restored};
use resurgam::shared::protocol::{Op, Request};

/// Checkpoint after this many calls, as the worker would (the default `checkpoint_every`).
const EVERY: u64 = 1000;

/// One core with one counter actor and a simulated worker that answers at once.
struct Sim {
    core: Core,
    now: Instant,
    pending: Vec<Event>,
    applied: u64,
    since_checkpoint: u64,
    generation: u64,
    /// last_seq of the checkpoint in each mmap slot.
    slots: [Option<u64>; 2],
    replies: u64,
    next_id: u64,
}

impl Sim {
    fn new(durability: Durability) -> Sim {
        let config = Config::embedded_defaults(&Environment {
            state_directory: Some(PathBuf::from("/nonexistent-bench-state")),
            runtime_directory: None,
        });
        let policy = Policy {
            checkpoint_every: EVERY,
            checkpoint_interval: Duration::ZERO,
            heartbeat_timeout: Duration::ZERO,
            durability,
            ..Policy::default()
        };
        let spec = ActorSpec {
            name: "c".into(),
            kind: "counter".into(),
            policy,
            methods: Some(&["incr", "get", "crash"]),
            start_seq: 0,
            recovered: Vec::new(),
            log_range: None,
            held: None,
        };
        let now = Instant::now();
        let mut sim = Sim {
            core: Core::new(&config, vec![spec], 4242, now),
            now,
            pending: Vec::new(),
            applied: 0,
            since_checkpoint: 0,
            generation: 0,
            slots: [None, None],
            replies: 0,
            next_id: 1,
        };
        sim.pump();
        sim
    }

    /// Runs actions and feeds back the events they cause until the core is quiet.
    fn pump(&mut self) {
        loop {
            self.core.flush();
            let actions = self.core.take_actions();
            if actions.is_empty() && self.pending.is_empty() {
                return;
            }
            for a in actions {
                self.act(a);
            }
            for ev in std::mem::take(&mut self.pending) {
                self.core.handle(ev, self.now);
            }
        }
    }

    fn checkpoint(&mut self, actor: usize, epoch: u64) {
        self.generation += 1;
        // The worker alternates between the two slots.
        let target = (self.generation % 2) as usize;
        let previous = self.slots[1 - target];
        self.slots[target] = Some(self.applied);
        self.since_checkpoint = 0;
        self.pending.push(Event::Checkpointed {
            actor,
            epoch,
            generation: self.generation,
            last_seq: self.applied,
            previous,
        });
    }

    fn act(&mut self, a: Action) {
        match a {
            Action::Reply { line, .. } => {
                black_box(line);
                self.replies += 1;
            }
            Action::Spawn { actor, epoch } => {
                self.pending.push(Event::Spawned {
                    actor,
                    epoch,
                    pid: 1000,
                });
                self.pending.push(Event::Ready {
                    actor,
                    epoch,
                    restored: Restored::fresh(),
                });
            }
            Action::SendCalls {
                actor,
                epoch,
                calls,
            } => {
                let replies = calls
                    .iter()
                    .map(|c| Reply {
                        seq: c.seq,
                        outcome: Outcome::Ok(b"1".to_vec()),
                    })
                    .collect::<Vec<_>>();
                self.applied = calls.last().map_or(self.applied, |c| c.seq);
                self.since_checkpoint += calls.len() as u64;
                self.pending.push(Event::Replies {
                    actor,
                    epoch,
                    replies,
                });
                if self.since_checkpoint >= EVERY {
                    self.checkpoint(actor, epoch);
                }
            }
            Action::RequestCheckpoint { actor, epoch } => self.checkpoint(actor, epoch),
            Action::SyncDisk { actor } => self.pending.push(Event::DiskSynced {
                actor,
                generation: self.generation,
                last_seq: self.applied,
            }),
            Action::Append { actor, calls } => {
                if let Some(last) = calls.last() {
                    // Log mode with the log in the manifest already (the steady state).
                    self.pending.push(Event::Logged {
                        actor,
                        upto: last.seq,
                        durable: true,
                    });
                }
            }
            _ => {}
        }
    }

    /// `n` call requests, then everything they cause, up to the replies to the client.
    fn calls(&mut self, n: u64) {
        for _ in 0..n {
            let id = self.next_id;
            self.next_id += 1;
            self.core.handle(
                Event::Request {
                    conn: 1,
                    request: Request {
                        id: id.to_string(),
                        op: Op::Call {
                            actor: "c".into(),
                            method: "incr".into(),
                            args: Some("1".into()),
                            key: None,
                        },
                    },
                },
                self.now,
            );
        }
        self.pump();
    }
}

fn bench_core(c: &mut Criterion) {
    let mut g = c.benchmark_group("core");
    for (mode, durability) in [("memory", Durability::Memory), ("log", Durability::Log)] {
        for batch in [1u64, 64] {
            g.throughput(Throughput::Elements(batch));
            g.bench_with_input(
                BenchmarkId::new(format!("call_round_trip_{mode}"), batch),
                &batch,
                |b, &batch| {
                    let mut sim = Sim::new(durability);
                    b.iter(|| sim.calls(batch));
                    assert!(sim.replies > 0, "the core answered nothing");
                },
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = bench_core
}
criterion_main!(benches);
