//! G1 for exec actors: three clients pipeline unique appends to two Python ledgers (and
//! increments to a built-in counter, for contrast) while a killer thread SIGKILLs, at
//! random moments, either a ledger's program or its worker: some kills land right after
//! a checkpoint request (inside get_state), some right after a restart (inside the
//! program's start, load_state or the replay). Every call gets exactly one reply, all
//! succeed, and each ledger holds every acknowledged append exactly once, at the
//! position its reply named, in each client's acknowledgement order.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use resurgam::shared::protocol::ErrorKind;
use resurgam::{Client, ClientError};
use serde_json::{Value, json};

use crate::exec::{WAIT, check_ledger, python_actor, start};
use crate::util::{
    HOLDER_COMM, Proc, Rng, StopOnDrop, Supervisor, assert_no_stray_reply, children_of, comm,
    pipeline,
};

const LEDGERS: [&str; 2] = ["l1", "l2"];
const CLIENTS: usize = 3;
/// How long the clients call while the killer works (longer if it needs more kills).
const LOAD_TIME: Duration = Duration::from_secs(6);
/// Kills of each kind (program, worker) at least.
const MIN_KILLS: usize = 5;
/// Kills right after a checkpoint request, and right after a restart, at least.
const MIN_SPECIAL: usize = 2;

fn config() -> String {
    format!(
        r#"
[defaults]
backoff_initial = "1ms"
backoff_max = "20ms"
checkpoint_every = 20
checkpoint_interval = "200ms"
max_call_retries = -1
{}{}
[[actor]]
name = "c"
kind = "counter"
"#,
        python_actor("l1", "ledger.py", ""),
        python_actor("l2", "ledger.py", "")
    )
}

/// What one client saw.
#[derive(Default)]
struct Seen {
    /// Per ledger: (item, reply = its position), in acknowledgement order.
    appends: HashMap<&'static str, Vec<(String, i64)>>,
    /// Replies to `incr 1` on the counter.
    incr: Vec<i64>,
    calls: usize,
}

enum Sent {
    Append(&'static str, String),
    Incr,
}

fn client_thread(sup: &Supervisor, t: usize, seed: u64, stop: &AtomicBool) -> Seen {
    let mut rng = Rng::new(seed);
    let mut c = sup.client();
    let mut seen = Seen::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let mut requests: Vec<(Value, Sent)> = Vec::new();
        for _ in 0..rng.range(1, 32) {
            n += 1;
            let (req, sent) = match rng.range(0, 4) {
                0 => (
                    json!({"op": "call", "actor": "c", "method": "incr", "args": 1}),
                    Sent::Incr,
                ),
                i => {
                    let actor = LEDGERS[(i % 2) as usize];
                    let item = format!("t{t}-{n}");
                    (
                        json!({"op": "call", "actor": actor, "method": "append", "args": item}),
                        Sent::Append(actor, item),
                    )
                }
            };
            requests.push((req, sent));
        }
        let who = format!("client {t}");
        for (sent, result) in pipeline(sup, &mut c, &who, requests) {
            seen.calls += 1;
            let value = result.as_i64().expect("an integer reply");
            match sent {
                Sent::Append(actor, item) => {
                    seen.appends.entry(actor).or_default().push((item, value))
                }
                Sent::Incr => seen.incr.push(value),
            }
        }
    }
    // No stray reply may follow: every call was answered exactly once.
    assert_no_stray_reply(&mut c, &format!("client {t}"));
    seen
}

/// What the killer did.
#[derive(Default, Debug)]
struct Kills {
    program: usize,
    worker: usize,
    after_checkpoint: usize,
    after_restart: usize,
    /// Checkpoint requests answered as taken, and refused because the worker died
    /// before the checkpoint was written (the kill hit get_state or the write).
    checkpoints_taken: usize,
    checkpoints_cut: usize,
    /// Per ledger: every kill (each one of a different worker, so each is a death).
    per_actor: HashMap<&'static str, u64>,
}

/// The actor's current worker (STARTING or ALIVE) and, if it has started it yet, its
/// program: the worker's child that is not its address-space holder (a forked worker
/// has one until its `Init`; killing it would kill no program).
fn current(sup: &Supervisor, actor: &str) -> Option<(Proc, Option<Proc>)> {
    let w = Proc::of(sup.worker_pid(actor)?)?;
    Some((w, program_of(&w)))
}

fn program_of(w: &Proc) -> Option<Proc> {
    children_of(w.pid)
        .into_iter()
        .find(|p| comm(p.pid) != HOLDER_COMM)
}

struct Killer<'a> {
    sup: &'a Supervisor,
    rng: Rng,
    kills: Kills,
    /// Workers already killed (or whose program was): never count one death twice.
    killed: HashSet<Proc>,
    /// Checkpoint requests sent just before a kill, answered later.
    checkpoints: Vec<JoinHandle<Result<Value, ClientError>>>,
}

impl Killer<'_> {
    /// SIGKILLs the program (if `program` and it has one) or else the worker of this
    /// worker generation; false if it was killed already or is gone.
    fn kill(&mut self, actor: &'static str, w: Proc, p: Option<Proc>, program: bool) -> bool {
        if self.killed.contains(&w) {
            return false;
        }
        let sent = match p.filter(|_| program) {
            Some(p) if p.signal(Signal::SIGKILL) => {
                self.kills.program += 1;
                true
            }
            _ if w.signal(Signal::SIGKILL) => {
                self.kills.worker += 1;
                true
            }
            _ => false,
        };
        if sent {
            self.killed.insert(w);
            *self.kills.per_actor.entry(actor).or_default() += 1;
        }
        sent
    }

    fn done(&self) -> bool {
        let k = &self.kills;
        k.program >= MIN_KILLS
            && k.worker >= MIN_KILLS
            && k.after_checkpoint >= MIN_SPECIAL
            && k.after_restart >= MIN_SPECIAL
    }

    fn round(&mut self) {
        let actor = LEDGERS[self.rng.range(0, 1) as usize];
        let program = self.rng.range(0, 1) == 0;
        let Some((w, p)) = current(self.sup, actor) else {
            return;
        };
        match self.rng.range(0, 2) {
            0 => {
                self.kill(actor, w, p, program);
            }
            1 => {
                // Right after a checkpoint request: often inside get_state.
                let socket = self.sup.socket.clone();
                self.checkpoints.push(std::thread::spawn(move || {
                    let mut c = Client::connect(&socket)?;
                    c.set_timeout(Some(WAIT))?;
                    c.checkpoint(actor)
                }));
                std::thread::sleep(Duration::from_millis(self.rng.range(0, 4)));
                if self.kill(actor, w, p, program) {
                    self.kills.after_checkpoint += 1;
                }
            }
            _ => {
                // Kill, then kill the next worker (or its program) at a random moment of
                // its start: the program's start-up, load_state, or the replay.
                if !self.kill(actor, w, p, program) {
                    return;
                }
                let mut next = None;
                self.sup
                    .wait_until(&format!("a new worker for {actor}"), WAIT, || {
                        next = current(self.sup, actor).filter(|(nw, _)| *nw != w);
                        next.is_some()
                    });
                std::thread::sleep(Duration::from_millis(self.rng.range(0, 150)));
                let (nw, _) = next.expect("checked by wait_until");
                let np = program_of(&nw);
                let program = self.rng.range(0, 1) == 0;
                if self.kill(actor, nw, np, program) {
                    self.kills.after_restart += 1;
                }
            }
        }
    }
}

fn killer_thread(sup: &Supervisor, seed: u64, stop: &AtomicBool) -> Kills {
    let mut k = Killer {
        sup,
        rng: Rng::new(seed),
        kills: Kills::default(),
        killed: HashSet::new(),
        checkpoints: Vec::new(),
    };
    let deadline = Instant::now() + Duration::from_secs(30);
    while !(stop.load(Ordering::Relaxed) && k.done()) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(k.rng.range(20, 150)));
        k.round();
    }
    // Every checkpoint request got its one reply: taken, or refused because the worker
    // died before it was written.
    for h in k.checkpoints.drain(..) {
        match h.join().expect("checkpoint thread") {
            Ok(_) => k.kills.checkpoints_taken += 1,
            Err(ClientError::Remote(e)) if e.kind == ErrorKind::Busy => {
                k.kills.checkpoints_cut += 1;
            }
            other => panic!("checkpoint request: {other:?}\n{}", sup.log_tail(40)),
        }
    }
    k.kills
}

#[test]
fn random_kills_of_programs_and_workers_under_pipelined_load_lose_and_double_nothing() {
    let seed = Rng::seed();
    eprintln!("exec chaos seed = {seed}");
    let sup = start(&config());
    let started = Instant::now();
    let stop_killer = AtomicBool::new(false);
    let stop_clients = AtomicBool::new(false);

    let (seens, kills) = std::thread::scope(|s| {
        // Stops the clients and the killer however this closure ends: on a panic,
        // `scope` would wait for them forever.
        let _stop_clients = StopOnDrop(&stop_clients);
        let _stop_killer = StopOnDrop(&stop_killer);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (sup, stop) = (&sup, &stop_clients);
                s.spawn(move || client_thread(sup, t, seed.wrapping_add(t as u64 + 1), stop))
            })
            .collect();
        let killer = {
            let (sup, stop) = (&sup, &stop_killer);
            s.spawn(move || killer_thread(sup, seed, stop))
        };
        let stop_at = started + LOAD_TIME;
        while Instant::now() < stop_at && !clients.iter().any(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        // The killer goes on until it has its share of every kind; the load goes on
        // while it does.
        stop_killer.store(true, Ordering::Relaxed);
        let kills = killer.join();
        stop_clients.store(true, Ordering::Relaxed);
        let seens: Vec<_> = clients.into_iter().map(|h| h.join()).collect();
        (seens, kills)
    });
    let seens: Vec<Seen> = seens
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect();
    let kills = kills.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let calls: usize = seens.iter().map(|s| s.calls).sum();
    eprintln!(
        "exec chaos: {calls} calls, {kills:?}, {:?}",
        started.elapsed()
    );
    assert!(
        kills.program >= MIN_KILLS
            && kills.worker >= MIN_KILLS
            && kills.after_checkpoint >= MIN_SPECIAL
            && kills.after_restart >= MIN_SPECIAL,
        "not enough kills of every kind: {kills:?}"
    );
    assert!(calls > 300, "too little load: {calls} calls");

    for a in LEDGERS {
        sup.wait_state(a, "ALIVE", WAIT);
    }
    let mut c = sup.client();

    // Ledgers: every acknowledged append exactly once, where its reply said, in order
    // per client; nothing else (every call was acknowledged).
    for ledger in LEDGERS {
        let acked: Vec<&[(String, i64)]> = seens
            .iter()
            .map(|s| s.appends.get(ledger).map_or(&[][..], Vec::as_slice))
            .collect();
        let total: usize = acked.iter().map(|a| a.len()).sum();
        let items = c.call(ledger, "get", Value::Null).unwrap();
        let items = items.as_array().expect("get returns a list");
        check_ledger(items, &acked, &[]);
        assert_eq!(
            items.len(),
            total,
            "{ledger}: items beyond the acknowledged ones"
        );
    }

    // The counter (never killed): replies exactly 1..=N.
    let mut values: Vec<i64> = seens.iter().flat_map(|s| s.incr.iter().copied()).collect();
    values.sort_unstable();
    let want: Vec<i64> = (1..=values.len() as i64).collect();
    assert_eq!(values, want, "counter replies");
    assert_eq!(
        c.call("c", "get", Value::Null).unwrap(),
        json!(values.len())
    );

    // Each kill was a death the supervisor saw; the replays were deterministic.
    for ledger in LEDGERS {
        let a = sup.actor(ledger);
        let k = kills.per_actor.get(ledger).copied().unwrap_or(0);
        let restarts = a["restarts"].as_u64().unwrap();
        assert!(
            restarts >= k,
            "{ledger}: {restarts} restarts for {k} kills: {a}"
        );
        assert!(
            a["checkpoint"]["generation"].as_u64().unwrap() > 0,
            "{ledger}: never checkpointed: {a}"
        );
        assert_eq!(a["nondeterministic_replies"], 0, "{a}");
        assert_eq!(a["queue"], 0, "{a}");
    }
    assert_eq!(sup.actor("c")["restarts"], 0);
}
