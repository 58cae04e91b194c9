//! Issue 10's bounds, from outside: clients that do not read their replies hold bounded
//! memory and stall only themselves, an oversized reply is an error reply; the main
//! loop sleeps while an actor waits out a long restart backoff (no timer outlives its
//! phase); hang detection measures progress, so a long batch of quick calls is never
//! taken for a hang while one stuck call still is.

use std::io::Write;
use std::os::unix::net::UnixStream;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::exec::{python_actor, start};
use crate::util::Supervisor;

const WAIT: Duration = Duration::from_secs(30);

/// CPU time (user + system, all threads) a process has used, in clock ticks.
fn cpu_ticks(pid: i32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/stat: {e}"));
    // Fields after the command name (which may hold spaces), from field 3 on.
    let rest = &stat[stat.rfind(')').expect("comm ends with ')'") + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line.
    let field = |n: usize| -> u64 { fields[n - 3].parse().expect("a number") };
    field(14) + field(15)
}

fn clock_ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions; it only reads a system constant.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    u64::try_from(t).ok().filter(|&t| t > 0).unwrap_or(100)
}

/// An actor whose program exits before it is ready dies while STARTING; its second quick
/// death puts it into a restart backoff (60 s) far longer than its `startup_timeout`
/// (200 ms). The supervisor must then sleep: before the fix the start deadline of the
/// dead worker stayed set, was due forever, and the loop spun at 100 % CPU.
#[test]
fn an_idle_supervisor_with_an_actor_in_a_long_backoff_uses_no_cpu() {
    let counter = "[[actor]]\nname = \"c\"\nkind = \"counter\"\n";
    let sup = Supervisor::start(counter);
    sup.write_config(&format!(
        "{counter}\n[[actor]]\nname = \"flaky\"\nkind = \"exec\"\n\
         command = [\"sh\", \"-c\", \"exit 3\"]\nstartup_timeout = \"200ms\"\n\
         backoff_initial = \"60s\"\nbackoff_max = \"60s\"\nmin_uptime = \"1h\"\n"
    ));
    let mut c = sup.client();
    c.reload().expect("reload");
    sup.wait_until("flaky to wait out a backoff", WAIT, || {
        let a = sup.actor("flaky");
        a["state"] == "RESTARTING" && a["restarts"].as_u64().unwrap_or(0) >= 1
    });
    // Let the dead worker's start-up timeout pass, then measure an idle interval.
    std::thread::sleep(Duration::from_millis(500));
    let pid = sup.pid();
    let interval = Duration::from_secs(2);
    let before = cpu_ticks(pid);
    let started = Instant::now();
    std::thread::sleep(interval);
    let used = cpu_ticks(pid) - before;
    let elapsed_ticks = started.elapsed().as_secs_f64() * clock_ticks_per_second() as f64;
    eprintln!("supervisor used {used} ticks of CPU in {elapsed_ticks:.0} ticks idle");
    assert!(
        (used as f64) < elapsed_ticks * 0.05,
        "the idle supervisor used {used} of {elapsed_ticks:.0} clock ticks (over 5 %)\n{}",
        sup.log_tail(30)
    );
    assert_eq!(
        sup.actor("flaky")["state"],
        "RESTARTING",
        "still in its backoff"
    );
    // And it still serves.
    assert_eq!(c.call("c", "incr", json!(2)).unwrap(), json!(2));
}

/// A batch of calls that takes several heartbeat timeouts in all (400 calls of 7 ms, with
/// a 1 s timeout) runs to the end: the worker reports the calls it completed as it goes,
/// and the supervisor measures that progress. Before, silence was measured per batch and
/// such a worker was killed as hung, again and again, and the calls failed as poison.
#[test]
fn a_worker_busy_with_a_long_batch_of_quick_calls_is_not_killed_as_hung() {
    let sup = start(&python_actor(
        "slow",
        "slow.py",
        "heartbeat_timeout = \"1s\"",
    ));
    let mut c = sup.client();
    let n = 400;
    let calls: Vec<(&str, &str, Value)> =
        (0..n).map(|_| ("slow", "work", json!({"ms": 7}))).collect();
    let started = Instant::now();
    let results = c.call_pipelined(&calls).expect("every call answered");
    eprintln!("{n} calls of 7 ms took {:?}", started.elapsed());
    let counts: Vec<Value> = results
        .into_iter()
        .map(|r| r.unwrap_or_else(|e| panic!("a call failed: {e:?}\n{}", sup.log_tail(30))))
        .collect();
    let expected: Vec<Value> = (1..=n).map(|i| json!(i)).collect();
    assert_eq!(counts, expected, "each call ran once, in order");
    let a = sup.actor("slow");
    assert_eq!(a["restarts"], 0, "{a}\n{}", sup.log_tail(30));
    assert!(!sup.log().contains("worker hung"), "{}", sup.log_tail(30));
}

/// A call that is stuck (it sleeps forever) is still found hung; as it hangs its worker
/// every time it runs, it is dropped after `max_call_retries` such kills, with an error
/// that says so, and the actor lives on.
#[test]
fn a_call_that_hangs_every_time_is_killed_then_dropped_and_the_actor_lives_on() {
    let sup = start(&python_actor(
        "m",
        "misbehave.py",
        "heartbeat_timeout = \"1s\"\nmax_call_retries = 2\nbackoff_initial = \"5ms\"\nbackoff_max = \"20ms\"",
    ));
    let mut c = sup.client();
    assert_eq!(c.call("m", "add", json!(3)).unwrap(), json!(3));
    let err = crate::util::remote_err(c.call("m", "hang", Value::Null));
    assert_eq!(err.kind.as_str(), "CallFailed", "{err:?}");
    assert!(err.message.contains("hung its worker 2 times"), "{err:?}");
    assert_eq!(c.call("m", "add", json!(1)).unwrap(), json!(4));
    let a = sup.actor("m");
    assert_eq!(a["restarts"], 2, "{a}");
}

/// Resident memory of a process, in bytes.
fn rss(pid: i32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .expect("a VmRSS line")
        * 1024
}

const MIB: u64 = 1 << 20;

/// 30 clients each pipeline 3,000 `get`s of a 1 MB value and read nothing (3,000 × 30 ×
/// 1 MB of replies owed). The supervisor stops reading each once its replies owed reach
/// the bounds (the defaults: 8 MiB per connection, 64 MiB in all; a connection with
/// nothing outstanding may always send one request, at up to max_reply_bytes = 1 MiB),
/// so its memory stays near that bound; another client's calls are answered meanwhile,
/// and the memory is returned once the clients close.
#[test]
fn clients_that_do_not_read_hold_bounded_memory_and_stall_only_themselves() {
    let sup = Supervisor::start(
        "[[actor]]\nname = \"kv\"\nkind = \"kv\"\n\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
    );
    let pid = sup.pid();
    let mut c = sup.client();
    let value = "v".repeat(1_000_000);
    c.call("kv", "put", json!({"key": "big", "value": value}))
        .expect("put 1 MB");
    assert_eq!(
        c.call("kv", "get", json!({"key": "big"})).unwrap(),
        json!(value)
    );
    let baseline = rss(pid);
    let line = b"{\"id\":1,\"op\":\"call\",\"actor\":\"kv\",\"method\":\"get\",\"args\":{\"key\":\"big\"}}\n";
    let mut flood = Vec::new();
    for _ in 0..30 {
        let mut s = UnixStream::connect(&sup.socket).expect("connect");
        s.set_nonblocking(true).expect("non-blocking");
        // As much of 3,000 requests as the socket takes (the supervisor stops reading).
        let requests = line.repeat(3000);
        let mut at = 0;
        while at < requests.len() {
            match s.write(&requests[at..]) {
                Ok(n) => at += n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(e) => panic!("flood write: {e}"),
            }
        }
        flood.push(s);
    }
    // Meanwhile another client is served, call after call, and the supervisor's memory
    // is sampled until the kv actor has stopped serving (every client is stalled).
    let mut peak = rss(pid);
    let mut last_served = u64::MAX;
    let mut quiet = 0;
    let deadline = Instant::now() + WAIT;
    let mut calls = 0;
    let mut slowest = Duration::ZERO;
    while quiet < 5 {
        assert!(
            Instant::now() < deadline,
            "kv never settled\n{}",
            sup.log_tail(20)
        );
        let t = Instant::now();
        calls += 1;
        assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(calls));
        slowest = slowest.max(t.elapsed());
        peak = peak.max(rss(pid));
        let served = sup.actor("kv")["served"].as_u64().unwrap_or(0);
        quiet = if served == last_served { quiet + 1 } else { 0 };
        last_served = served;
        std::thread::sleep(Duration::from_millis(100));
    }
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "30 non-reading clients: RSS {} MiB at start, peak {} MiB (+{} MiB); kv served \
         {last_served}; slowest call to another actor {slowest:?}",
        baseline / MIB,
        peak / MIB,
        grown / MIB
    );
    // The documented bound: 64 MiB owed in all, plus one request of up to 1 MiB per
    // connection; twice that leaves room for the allocator and copies in flight.
    let bound = 2 * (64 + 30) * MIB;
    assert!(
        grown < bound,
        "the supervisor grew by {} MiB (bound {} MiB)",
        grown / MIB,
        bound / MIB
    );
    assert!(
        last_served < 30 * 3000 / 4,
        "the non-reading clients were served {last_served} replies"
    );
    drop(flood);
    // The clients are gone: the supervisor notices, and its memory goes back down.
    sup.wait_until("the memory to be returned", WAIT, || {
        let _ = sup.status();
        rss(pid) < baseline + 32 * MIB
    });
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(calls + 1));
}

/// A reply larger than the actor's max_reply_bytes is an error reply, for a built-in
/// kind and an exec one; the call ran and the actor lives on (no restart).
#[test]
fn a_reply_over_max_reply_bytes_is_an_error_and_the_actor_lives_on() {
    let sup = start(&format!(
        "[[actor]]\nname = \"kv\"\nkind = \"kv\"\nmax_reply_bytes = \"64KiB\"\n{}",
        python_actor("slow", "slow.py", "max_reply_bytes = \"64KiB\"")
    ));
    let mut c = sup.client();
    let big = "v".repeat(100_000);
    c.call("kv", "put", json!({"key": "big", "value": big}))
        .expect("a put with a small reply");
    for (actor, method, args) in [
        ("kv", "get", json!({"key": "big"})),
        ("slow", "big", json!({"bytes": 100_000})),
    ] {
        let err = crate::util::remote_err(c.call(actor, method, args));
        assert_eq!(err.kind.as_str(), "ActorError", "{actor}: {err:?}");
        assert!(
            err.message.contains("max_reply_bytes (65536 bytes)"),
            "{actor}: {err:?}"
        );
    }
    // Below the limit all is well, and neither worker was restarted.
    assert_eq!(
        c.call("slow", "big", json!({"bytes": 10})).unwrap(),
        json!("x".repeat(10))
    );
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(1));
    for actor in ["kv", "slow"] {
        assert_eq!(sup.actor(actor)["restarts"], 0, "{actor}");
    }
}
