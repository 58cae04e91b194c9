//! G1 under load: several clients pipeline calls to two counters and a kv store while
//! another thread SIGKILLs random workers at random moments. Every call gets exactly one
//! reply, all succeed, and the final states equal applying every call exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::util::{Proc, Rng, StopOnDrop, Supervisor, assert_no_stray_reply, pipeline};

const CONFIG: &str = r#"
[defaults]
backoff_initial = "1ms"
backoff_max = "20ms"
checkpoint_every = 50
checkpoint_interval = "50ms"
max_call_retries = -1

[[actor]]
name = "c1"
kind = "counter"

[[actor]]
name = "c2"
kind = "counter"

[[actor]]
name = "kv"
kind = "kv"
"#;

const ACTORS: [&str; 3] = ["c1", "c2", "kv"];
const CLIENTS: usize = 4;
/// How long the clients keep calling.
const LOAD_TIME: Duration = Duration::from_secs(6);
const MIN_KILLS: usize = 20;

/// What one client thread saw.
#[derive(Default)]
struct Seen {
    /// Replies to `incr 1`, per counter.
    incr: HashMap<&'static str, Vec<i64>>,
    /// Acknowledged puts.
    puts: Vec<(String, String)>,
    calls: usize,
}

enum Sent {
    Incr(&'static str),
    Put(String, String),
}

fn client_thread(sup: &Supervisor, t: usize, seed: u64, stop: &AtomicBool) -> Seen {
    let mut rng = Rng::new(seed);
    let mut c = sup.client();
    let mut seen = Seen::default();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // One pipelined batch of 1..=64 calls, every reply matched by id.
        let batch = rng.range(1, 64);
        let mut requests: Vec<(Value, Sent)> = Vec::new();
        for _ in 0..batch {
            n += 1;
            let (req, sent) = match rng.range(0, 2) {
                i @ 0..=1 => {
                    let actor = ACTORS[i as usize];
                    (
                        json!({"op": "call", "actor": actor, "method": "incr", "args": 1}),
                        Sent::Incr(actor),
                    )
                }
                _ => {
                    let key = format!("t{t}-{n}");
                    let value = format!("v{t}-{n}-{}", rng.next_u64());
                    (
                        json!({"op": "call", "actor": "kv", "method": "put",
                               "args": {"key": key, "value": value}}),
                        Sent::Put(key, value),
                    )
                }
            };
            requests.push((req, sent));
        }
        let who = format!("client {t}");
        for (sent, result) in pipeline(sup, &mut c, &who, requests) {
            seen.calls += 1;
            match sent {
                Sent::Incr(actor) => seen
                    .incr
                    .entry(actor)
                    .or_default()
                    .push(result.as_i64().expect("incr returns an integer")),
                Sent::Put(key, value) => {
                    assert_eq!(result, Value::Null, "put of a fresh key {key}");
                    seen.puts.push((key, value));
                }
            }
        }
    }
    // No stray reply may follow: every call was answered exactly once.
    assert_no_stray_reply(&mut c, &format!("client {t}"));
    seen
}

/// Kills a random worker every 5–60 ms until `stop` and at least `MIN_KILLS`
/// kills; returns the kills per actor.
fn killer_thread(sup: &Supervisor, seed: u64, stop: &AtomicBool) -> HashMap<&'static str, u64> {
    let mut rng = Rng::new(seed);
    let mut kills: HashMap<&'static str, u64> = HashMap::new();
    let mut killed: HashSet<Proc> = HashSet::new();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let total: u64 = kills.values().sum();
        if (stop.load(Ordering::Relaxed) && total >= MIN_KILLS as u64) || Instant::now() > deadline
        {
            return kills;
        }
        std::thread::sleep(Duration::from_millis(rng.range(5, 60)));
        let actor = ACTORS[rng.range(0, 2) as usize];
        // ALIVE (possibly replaying) or STARTING (restoring): any worker is fair game.
        let Some(pid) = sup.worker_pid(actor) else {
            continue;
        };
        let Some(p) = Proc::of(pid) else { continue };
        if !killed.insert(p) {
            continue; // already killed, not reaped yet
        }
        if p.signal(Signal::SIGKILL) {
            *kills.entry(actor).or_default() += 1;
        }
    }
}

#[test]
fn random_worker_kills_under_pipelined_load_lose_and_double_nothing() {
    let seed = Rng::seed();
    eprintln!("chaos seed = {seed}");
    let sup = Supervisor::start(CONFIG);
    let stop = AtomicBool::new(false);
    let started = Instant::now();

    let (seens, kills) = std::thread::scope(|s| {
        // Stops the clients and the killer however this closure ends: on a panic,
        // `scope` would wait for them forever.
        let _stop = StopOnDrop(&stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (sup, stop) = (&sup, &stop);
                s.spawn(move || client_thread(sup, t, seed.wrapping_add(t as u64 + 1), stop))
            })
            .collect();
        let killer = {
            let (sup, stop) = (&sup, &stop);
            s.spawn(move || killer_thread(sup, seed, stop))
        };
        // Let the load run; the stop flag also ends the killer once it has enough kills.
        let stop_at = started + LOAD_TIME;
        while Instant::now() < stop_at && !clients.iter().any(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let kills = killer.join();
        let seens: Vec<_> = clients.into_iter().map(|h| h.join()).collect();
        (seens, kills)
    });
    let seens: Vec<Seen> = seens
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| std::panic::resume_unwind(e)))
        .collect();
    let kills = kills.unwrap_or_else(|e| std::panic::resume_unwind(e));
    let total_kills: u64 = kills.values().sum();
    let total_calls: usize = seens.iter().map(|s| s.calls).sum();
    eprintln!(
        "chaos: {total_calls} calls, kills {kills:?}, {:?}",
        started.elapsed()
    );
    assert!(
        total_kills >= MIN_KILLS as u64,
        "only {total_kills} kills happened"
    );
    assert!(total_calls > 1000, "too little load: {total_calls} calls");

    // Every actor comes back.
    for a in ACTORS {
        sup.wait_state(a, "ALIVE", Duration::from_secs(20));
    }
    let mut c = sup.client();

    // Counters: the `incr 1` replies are exactly 1..=N, and the value is N.
    for counter in ["c1", "c2"] {
        let mut values: Vec<i64> = seens
            .iter()
            .flat_map(|s| s.incr.get(counter).cloned().unwrap_or_default())
            .collect();
        values.sort_unstable();
        let n = values.len() as i64;
        let want: Vec<i64> = (1..=n).collect();
        if values != want {
            let dups: Vec<_> = values
                .windows(2)
                .filter(|w| w[0] == w[1])
                .take(10)
                .collect();
            panic!(
                "{counter}: incr replies are not 1..={n} (duplicates: {dups:?}, max {:?})",
                values.last()
            );
        }
        assert_eq!(
            c.call(counter, "get", Value::Null).unwrap(),
            json!(n),
            "{counter}: final value"
        );
    }

    // kv: every acknowledged put is readable with its value; len = number of keys.
    let puts: Vec<&(String, String)> = seens.iter().flat_map(|s| &s.puts).collect();
    let keys: HashSet<&str> = puts.iter().map(|(k, _)| k.as_str()).collect();
    assert_eq!(keys.len(), puts.len(), "keys are unique per call");
    for chunk in puts.chunks(200) {
        let calls: Vec<(&str, &str, Value)> = chunk
            .iter()
            .map(|(k, _)| ("kv", "get", json!({"key": k})))
            .collect();
        let results = c.call_pipelined(&calls).unwrap();
        for ((k, v), r) in chunk.iter().zip(results) {
            assert_eq!(r.unwrap(), json!(v), "kv value of {k}");
        }
    }
    assert_eq!(
        c.call("kv", "len", Value::Null).unwrap(),
        json!(keys.len()),
        "kv len"
    );

    // The supervisor saw every kill, checkpointed during the chaos, and replayed
    // deterministically.
    let st = sup.status();
    for a in st["actors"].as_array().unwrap() {
        let name = a["name"].as_str().unwrap();
        let k = kills.get(name).copied().unwrap_or(0);
        let restarts = a["restarts"].as_u64().unwrap();
        assert!(
            restarts >= k,
            "{name}: {restarts} restarts for {k} kills: {a}"
        );
        assert!(
            a["checkpoint"]["generation"].as_u64().unwrap() > 0,
            "{name}: never checkpointed: {a}"
        );
        assert_eq!(a["nondeterministic_replies"], 0, "{a}");
        assert_eq!(a["queue"], 0, "{a}");
    }
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "chaos test too slow"
    );
}
