//! G10, idempotency keys: a keyed call runs once. The same key again (same connection,
//! another connection, after a worker or supervisor kill -9) gets the first reply; a key
//! reused with other arguments, or a malformed key, is `BadRequest`; only the last
//! `idempotency_keys` keys are remembered. Under chaos, clients that drop their connection and retry with the
//! same key through `RetryingClient` see every keyed `incr` applied exactly once.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use resurgam::shared::protocol::ErrorKind;
use resurgam::{Client, RetryPolicy, RetryingClient};
use serde_json::{Value, json};

use crate::util::{Proc, Rng, StopOnDrop, Supervisor, cli_expect, expect_kind};

const WAIT: Duration = Duration::from_secs(20);

fn counter_config(durability: &str, actor_extra: &str) -> String {
    format!(
        r#"
[supervisor]
durability = "{durability}"

[defaults]
checkpoint_every = 20
checkpoint_interval = "50ms"
max_call_retries = -1
backoff_initial = "1ms"
backoff_max = "20ms"

[[actor]]
name = "c"
kind = "counter"
{actor_extra}
"#
    )
}

fn get(c: &mut Client) -> Value {
    c.call("c", "get", Value::Null).expect("get")
}

// ------------------------------------------------------------------------------------
// Deterministic cases.

#[test]
fn the_same_key_twice_on_one_connection_gets_the_first_reply_and_runs_once() {
    let sup = Supervisor::start(&counter_config("log", ""));
    let mut c = sup.client();
    assert_eq!(c.call_keyed("c", "incr", json!(1), "a").unwrap(), json!(1));
    assert_eq!(
        c.call_keyed("c", "incr", json!(1), "a").unwrap(),
        json!(1),
        "the retry must get the first reply"
    );
    assert_eq!(get(&mut c), json!(1), "the retry must not run again");
    // Pipelined: the second waits behind the first and gets its reply.
    let first = c
        .send(json!({"op": "call", "actor": "c", "method": "incr", "args": 1, "key": "b"}))
        .unwrap();
    let second = c
        .send(json!({"op": "call", "actor": "c", "method": "incr", "args": 1, "key": "b"}))
        .unwrap();
    c.flush().unwrap();
    let mut replies = HashMap::new();
    for _ in 0..2 {
        let r = c.recv().unwrap();
        replies.insert(r.id.as_u64().unwrap(), r.into_result().unwrap());
    }
    assert_eq!(replies[&first], json!(2));
    assert_eq!(replies[&second], json!(2));
    // Another key runs.
    assert_eq!(c.call_keyed("c", "incr", json!(1), "c").unwrap(), json!(3));
    assert_eq!(get(&mut c), json!(3));
}

#[test]
fn a_key_survives_a_worker_kill_and_a_supervisor_kill() {
    let sup = Supervisor::start(&counter_config("log", ""));
    let mut c = sup.client();
    assert_eq!(c.call_keyed("c", "incr", json!(5), "k1").unwrap(), json!(5));
    let old = sup.kill_worker("c");
    sup.wait_new_pid("c", old, WAIT);
    let mut c = sup.client();
    assert_eq!(c.call_keyed("c", "incr", json!(5), "k1").unwrap(), json!(5));
    assert_eq!(
        get(&mut c),
        json!(5),
        "the retry after a worker kill ran again"
    );

    assert_eq!(c.call_keyed("c", "incr", json!(2), "k2").unwrap(), json!(7));
    sup.kill_supervisor();
    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
    let mut c = sup.client();
    assert_eq!(c.call_keyed("c", "incr", json!(2), "k2").unwrap(), json!(7));
    assert_eq!(c.call_keyed("c", "incr", json!(5), "k1").unwrap(), json!(5));
    assert_eq!(
        get(&mut c),
        json!(7),
        "a retry after a supervisor kill ran again"
    );
}

#[test]
fn a_key_reused_with_other_arguments_is_refused_and_nothing_runs() {
    let sup = Supervisor::start(&counter_config("log", ""));
    let mut c = sup.client();
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k").unwrap(), json!(1));
    expect_kind(
        c.call_keyed("c", "incr", json!(2), "k"),
        ErrorKind::BadRequest,
    );
    expect_kind(
        c.call_keyed("c", "get", Value::Null, "k"),
        ErrorKind::BadRequest,
    );
    assert_eq!(get(&mut c), json!(1), "a refused reuse must not run");
    // The key still answers its own call.
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k").unwrap(), json!(1));
}

#[test]
fn a_malformed_key_is_refused_naming_the_key_and_nothing_runs() {
    let sup = Supervisor::start(&counter_config("log", ""));
    let mut c = sup.client();
    let too_long = "k".repeat(129);
    let refused = |c: &mut Client, key: Value| {
        expect_kind(
            c.request(json!({"op": "call", "actor": "c", "method": "incr", "args": 1, "key": key})),
            ErrorKind::BadRequest,
        )
    };
    for key in ["", &too_long, "tab\there", "clé"] {
        let message = refused(&mut c, json!(key));
        assert!(message.contains("\"key\""), "key {key:?}: {message}");
    }
    // Not a string: refused as a malformed request (the message names the type only).
    for key in [json!(7), json!(["k"])] {
        refused(&mut c, key);
    }
    assert_eq!(get(&mut c), json!(0), "a refused call must not run");
    // The longest key there may be is taken, and the connection still serves.
    let longest = "~".repeat(128);
    assert_eq!(
        c.call_keyed("c", "incr", json!(1), &longest).unwrap(),
        json!(1)
    );
    assert_eq!(
        c.call_keyed("c", "incr", json!(1), &longest).unwrap(),
        json!(1)
    );
    assert_eq!(get(&mut c), json!(1));
}

#[test]
fn only_the_last_idempotency_keys_keys_are_remembered() {
    let sup = Supervisor::start(&counter_config("log", "idempotency_keys = 2"));
    let mut c = sup.client();
    for (n, key) in ["k1", "k2", "k3"].into_iter().enumerate() {
        assert_eq!(
            c.call_keyed("c", "incr", json!(1), key).unwrap(),
            json!(n + 1)
        );
    }
    // k2 and k3 are the last two keyed calls: remembered.
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k3").unwrap(), json!(3));
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k2").unwrap(), json!(2));
    assert_eq!(get(&mut c), json!(3));
    // k1 was evicted: it runs again, as a new call.
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k1").unwrap(), json!(4));
    assert_eq!(get(&mut c), json!(4));
}

#[test]
fn a_retention_changed_by_reload_applies_to_later_calls_and_replays_as_it_ran() {
    // No checkpoint: a worker kill replays every call since the start.
    let config = |keys: u32| {
        format!(
            "[supervisor]\ndurability = \"log\"\n[defaults]\ncheckpoint_every = 0\n\
             checkpoint_interval = \"1h\"\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n\
             idempotency_keys = {keys}\n"
        )
    };
    let sup = Supervisor::start(&config(10));
    let mut c = sup.client();
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k1").unwrap(), json!(1));
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k2").unwrap(), json!(2));
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k1").unwrap(), json!(1));
    sup.write_config(&config(1));
    c.request(json!({"op": "reload"})).expect("reload");
    // Accepted with a retention of 1: remembering k3 forgets k1 and k2.
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k3").unwrap(), json!(3));
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k2").unwrap(), json!(4));
    assert_eq!(get(&mut c), json!(4));
    // The replay of all six calls must decide each key as the first run did (the repeat
    // of k1 answered, the one of k2 run), whatever the retention is now.
    let old = sup.kill_worker("c");
    sup.wait_new_pid("c", old, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);
    let mut c = sup.client();
    assert_eq!(
        get(&mut c),
        json!(4),
        "the replay decided a key differently"
    );
    assert_eq!(c.call_keyed("c", "incr", json!(1), "k2").unwrap(), json!(4));
}

#[test]
fn a_retry_gets_the_first_reply_after_reload_lowers_max_reply_bytes() {
    let config = |limit: &str| {
        format!(
            "[supervisor]\ndurability = \"log\"\n[[actor]]\nname = \"kv\"\nkind = \"kv\"\n\
             max_reply_bytes = \"{limit}\"\n"
        )
    };
    let sup = Supervisor::start(&config("64KiB"));
    let mut c = sup.client();
    let big = "v".repeat(4000);
    let put = |c: &mut Client, value: &str, key: &str| {
        c.call_keyed("kv", "put", json!({"key": "a", "value": value}), key)
    };
    assert_eq!(put(&mut c, &big, "k1").unwrap(), Value::Null);
    // Its reply is the 4000-byte value it replaced: sent whole under the 64 KiB limit.
    assert_eq!(put(&mut c, "small", "k2").unwrap(), json!(big));
    sup.write_config(&config("1KiB"));
    c.request(json!({"op": "reload"})).expect("reload");
    // The limit applies to the calls that run after it; a retry runs nothing, and gets
    // the reply the client of the first call got.
    assert_eq!(
        put(&mut c, "small", "k2").unwrap(),
        json!(big),
        "a retry was answered differently from the first call"
    );
}

#[test]
fn an_exec_program_never_sees_a_repeated_key() {
    let sup = crate::exec::start(&format!(
        "[supervisor]\ndurability = \"log\"\n[defaults]\ncheckpoint_every = 1\n{}",
        crate::exec::python_actor("ledger", "ledger.py", "")
    ));
    let mut c = sup.client();
    let append =
        |c: &mut Client, item: &str, key: &str| c.call_keyed("ledger", "append", json!(item), key);
    assert_eq!(append(&mut c, "x", "k").unwrap(), json!(1));
    assert_eq!(append(&mut c, "x", "k").unwrap(), json!(1));
    expect_kind(append(&mut c, "y", "k"), ErrorKind::BadRequest);
    // The program's own state holds the item once.
    let ledger = |c: &mut Client| c.call("ledger", "get", Value::Null).unwrap();
    assert_eq!(ledger(&mut c), json!(["x"]));
    // The keys came back with the checkpoint the program's state did.
    let old = sup.kill_worker("ledger");
    sup.wait_new_pid("ledger", old, WAIT);
    sup.wait_state("ledger", "ALIVE", WAIT);
    let mut c = sup.client();
    assert_eq!(append(&mut c, "x", "k").unwrap(), json!(1));
    assert_eq!(append(&mut c, "z", "k2").unwrap(), json!(2));
    assert_eq!(ledger(&mut c), json!(["x", "z"]));
}

#[test]
fn cli_call_with_a_key_runs_once_and_retry_waits_for_a_restarted_supervisor() {
    let sup = Supervisor::start(&counter_config("log", ""));
    for _ in 0..2 {
        let out = cli_expect(&sup, &["call", "c", "incr", "3", "--key", "cli-1"], 0);
        assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    }
    let out = cli_expect(&sup, &["call", "c", "get"], 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    let out = cli_expect(&sup, &["call", "c", "incr", "3", "--key", ""], 1);
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("key"),
        "{out:?}"
    );

    // --retry: the supervisor is down when the call is made, and comes back.
    sup.kill_supervisor();
    sup.wait_state_dir_unlocked();
    let socket = sup.socket.to_str().unwrap().to_string();
    let cmd = crate::util::resurgam_cmd(&[
        "call",
        "c",
        "incr",
        "3",
        "--key",
        "cli-1",
        "--retry",
        "--timeout",
        "60s",
        "--socket",
        &socket,
    ]);
    let waiting = std::thread::spawn(move || crate::util::run_with_timeout(cmd, WAIT * 3));
    sup.restart_same_dirs();
    let out = waiting.join().unwrap();
    assert!(out.status.success(), "{out:?}");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
    let out = cli_expect(&sup, &["call", "c", "get"], 0);
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "3");
}

// ------------------------------------------------------------------------------------
// Chaos: dropped connections, retries, worker and supervisor kills.

const CLIENTS: usize = 3;
/// Keyed calls per client at most: the total stays inside the default retention
/// (`idempotency_keys` = 10000), so every retry finds its key.
const MAX_CALLS_PER_CLIENT: usize = 3000;

/// The clients' shared flags: stop now; keyed calls answered so far.
#[derive(Default)]
struct Load {
    stop: AtomicBool,
    acked: AtomicUsize,
}

/// What one client saw: each key's reply.
struct Seen {
    replies: Vec<(String, i64)>,
    dropped: usize,
    resends: u64,
}

/// Makes keyed `incr 1` calls, one key each. Now and then it first sends the call on a
/// connection of its own and drops it before the reply; then (always) the call goes
/// through the retrying client with the same key, which must return its one reply.
fn keyed_client(sup: &Supervisor, t: usize, seed: u64, load: &Load) -> Seen {
    let Load { stop, acked } = load;
    let mut rng = Rng::new(seed);
    let mut rc = RetryingClient::with_policy(
        &sup.socket,
        RetryPolicy {
            deadline: Duration::from_secs(60),
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(50),
        },
    );
    let mut seen = Seen {
        replies: Vec::new(),
        dropped: 0,
        resends: 0,
    };
    for n in 0..MAX_CALLS_PER_CLIENT {
        if stop.load(Ordering::Relaxed) {
            break;
        }
        let key = format!("t{t}-{n}-{}", resurgam::new_key());
        if rng.range(0, 3) == 0
            && let Ok(mut c) = Client::connect(&sup.socket)
        {
            let sent = c.send(json!({"op": "call", "actor": "c", "method": "incr",
                                     "args": 1, "key": key}));
            if sent.is_ok() && c.flush().is_ok() {
                seen.dropped += 1;
            }
            drop(c); // before the reply
        }
        let reply = rc
            .call("c", "incr", json!(1), Some(&key))
            .unwrap_or_else(|e| panic!("client {t}: key {key}: {e}\n{}", sup.log_tail(60)));
        let v = reply
            .as_i64()
            .unwrap_or_else(|| panic!("client {t}: incr returned {reply}"));
        seen.replies.push((key, v));
        acked.fetch_add(1, Ordering::Relaxed);
    }
    seen.resends = rc.resends();
    seen
}

/// SIGKILLs the counter's worker every 5–80 ms until `stop`; returns the kills.
fn worker_killer(sup: &Supervisor, seed: u64, stop: &AtomicBool) -> usize {
    let mut rng = Rng::new(seed);
    let mut killed: HashSet<Proc> = HashSet::new();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(Duration::from_millis(rng.range(5, 80)));
        // The supervisor may be down (killed by the test thread): skip this round.
        let Ok(st) = sup.try_status() else { continue };
        let Some(pid) = st["actors"][0]["pid"].as_i64() else {
            continue;
        };
        let Some(p) = Proc::of(pid as i32) else {
            continue;
        };
        if killed.insert(p) {
            p.signal(Signal::SIGKILL);
        }
    }
    killed.len()
}

/// Keyed clients under chaos for `load` (and at least `supervisor_kills` supervisor
/// kills, each after some progress): every reply is one of 1..=N, each once, and the
/// counter is N, the number of keys.
fn keyed_calls_under_chaos(durability: &str, supervisor_kills: usize, load: Duration) {
    let seed = Rng::seed();
    eprintln!("idempotency ({durability}) seed = {seed}");
    let mut rng = Rng::new(seed);
    let sup = Supervisor::start(&counter_config(durability, ""));
    let load_state = Load::default();
    let (stop, acked) = (&load_state.stop, &load_state.acked);
    let started = Instant::now();
    let (seens, worker_kills) = std::thread::scope(|s| {
        let _stop = StopOnDrop(stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (sup, load) = (&sup, &load_state);
                s.spawn(move || keyed_client(sup, t, seed.wrapping_add(t as u64 + 1), load))
            })
            .collect();
        let killer = {
            let sup = &sup;
            s.spawn(move || worker_killer(sup, seed.wrapping_add(100), stop))
        };
        let client_ended = || clients.iter().any(|h| h.is_finished());
        for round in 0..supervisor_kills {
            // Some progress on this run, then a random moment.
            let base = acked.load(Ordering::Relaxed);
            let want = rng.range(1, 100) as usize;
            sup.wait_until(
                &format!("round {round}: {want} keyed calls"),
                WAIT * 3,
                || acked.load(Ordering::Relaxed) >= base + want || client_ended(),
            );
            assert!(!client_ended(), "a client thread ended early");
            std::thread::sleep(Duration::from_millis(rng.range(0, 100)));
            sup.kill_supervisor();
            sup.wait_state_dir_unlocked();
            sup.restart_same_dirs();
        }
        // The load goes on (worker kills too) for at least `load` in all.
        while started.elapsed() < load && !client_ended() {
            std::thread::sleep(Duration::from_millis(20));
        }
        stop.store(true, Ordering::Relaxed);
        let worker_kills = killer
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e));
        let seens: Vec<Seen> = clients
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect();
        (seens, worker_kills)
    });

    let dropped: usize = seens.iter().map(|s| s.dropped).sum();
    let resends: u64 = seens.iter().map(|s| s.resends).sum();
    let mut keys = HashSet::new();
    let mut values: Vec<i64> = Vec::new();
    for (key, v) in seens.iter().flat_map(|s| &s.replies) {
        assert!(keys.insert(key.as_str()), "key {key} used twice");
        values.push(*v);
    }
    values.sort_unstable();
    let n = values.len() as i64;
    eprintln!(
        "idempotency ({durability}): {n} keyed calls, {dropped} dropped before the reply, \
         {resends} resends, {worker_kills} worker kills, {supervisor_kills} supervisor kills, {:?}",
        started.elapsed()
    );
    assert!(dropped > 0, "no connection was dropped before its reply");
    assert!(worker_kills > 0, "no worker was killed");
    if supervisor_kills > 0 {
        assert!(resends > 0, "no call was resent");
    }
    sup.wait_state("c", "ALIVE", WAIT);
    let total = get(&mut sup.client());
    let dups: Vec<_> = values
        .windows(2)
        .filter(|w| w[0] == w[1])
        .take(10)
        .collect();
    assert_eq!(
        total,
        json!(n),
        "the counter is not the number of keys: some keyed call ran twice or never \
         (duplicate replies: {dups:?})"
    );
    assert_eq!(
        values,
        (1..=n).collect::<Vec<_>>(),
        "the replies are not exactly 1..={n} (duplicates: {dups:?})"
    );
}

#[test]
fn keyed_retries_apply_once_under_worker_and_supervisor_kills_log_mode() {
    keyed_calls_under_chaos("log", 6, Duration::from_secs(4));
}

#[test]
fn keyed_retries_apply_once_under_worker_and_supervisor_kills_fsync_mode() {
    keyed_calls_under_chaos("fsync", 4, Duration::from_secs(4));
}

#[test]
fn keyed_retries_apply_once_under_worker_kills_memory_mode() {
    keyed_calls_under_chaos("memory", 0, Duration::from_secs(4));
}
