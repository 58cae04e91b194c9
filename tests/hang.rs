//! G5: a hung worker (stopped with SIGSTOP: no reply, no heartbeat) is killed and
//! recovered like a crashed one when `heartbeat_timeout` is set, and left alone when it
//! is "0s".

use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::util::{Proc, Supervisor};

const WAIT: Duration = Duration::from_secs(20);

fn config(heartbeat_timeout: &str) -> String {
    format!(
        r#"
[[actor]]
name = "c"
kind = "counter"
heartbeat_timeout = "{heartbeat_timeout}"

[[actor]]
name = "other"
kind = "counter"
heartbeat_timeout = "{heartbeat_timeout}"
"#
    )
}

/// SIGSTOPs the actor's (ALIVE) worker; returns it.
fn stop_worker(sup: &Supervisor, name: &str) -> Proc {
    let pid = sup.actor_pid(name).expect("ALIVE");
    let p = Proc::of(pid).expect("worker running");
    assert!(p.signal(Signal::SIGSTOP));
    sup.wait_until("the worker to be stopped", WAIT, || {
        matches!(crate::util::proc_stat(pid), Some(('T' | 't', _, _)))
    });
    p
}

/// The worker was replaced because it hung: new pid, `last_exit` says so, the log too.
fn assert_replaced_as_hung(sup: &Supervisor, old: Proc) -> i32 {
    let new_pid = sup.wait_new_pid("c", old.pid, WAIT);
    sup.wait_until("the hung worker to be gone", WAIT, || !old.is_running());
    let a = sup.actor("c");
    let last_exit = a["last_exit"].as_str().unwrap_or_default();
    assert!(last_exit.starts_with("hung"), "last_exit: {a}");
    assert!(a["restarts"].as_u64().unwrap() >= 1, "{a}");
    let log = sup.log();
    assert!(
        log.lines()
            .any(|l| l.contains("worker hung") && l.contains(&format!("pid={}", old.pid))),
        "no \"worker hung\" line for pid {}:\n{}",
        old.pid,
        sup.log_tail(30)
    );
    new_pid
}

#[test]
fn a_stopped_idle_worker_is_killed_and_replaced_with_its_state() {
    let sup = Supervisor::start(&config("1s"));
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(5)).unwrap(), json!(5));
    let other = sup.actor_pid("other").unwrap();
    let started = Instant::now();
    let old = stop_worker(&sup, "c");
    let new_pid = assert_replaced_as_hung(&sup, old);
    eprintln!("hung idle worker replaced after {:?}", started.elapsed());
    assert_ne!(new_pid, old.pid);
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(5));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(6));
    // The other actor was not touched.
    assert_eq!(sup.actor_pid("other"), Some(other));
    assert_eq!(sup.actor("other")["restarts"], 0);
}

#[test]
fn calls_in_flight_to_a_stopped_worker_are_answered_after_recovery() {
    let sup = Supervisor::start(&config("1s"));
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(10)).unwrap(), json!(10));
    // The supervisor last heard from the worker just before this.
    let last_heard = Instant::now();
    let old = stop_worker(&sup, "c");
    // These reach the stopped worker (or its queue) and stay unanswered until it is
    // replaced; each must be answered exactly once with its place in the order.
    let calls: Vec<(&str, &str, Value)> = (0..20).map(|_| ("c", "incr", json!(1))).collect();
    let results = c.call_pipelined(&calls).unwrap();
    let values: Vec<Value> = results.into_iter().map(Result::unwrap).collect();
    let want: Vec<Value> = (11..=30).map(|v| json!(v)).collect();
    assert_eq!(values, want);
    // Answered only once the silence exceeded heartbeat_timeout (1 s).
    assert!(
        last_heard.elapsed() >= Duration::from_millis(900),
        "answered {:?} after the worker last spoke: was it really stopped?",
        last_heard.elapsed()
    );
    assert_replaced_as_hung(&sup, old);
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(30));
    assert_eq!(sup.actor("c")["nondeterministic_replies"], 0);
}

#[test]
fn without_heartbeat_timeout_a_stopped_worker_is_left_alone() {
    // The test of the tests above: with hang detection off, nothing replaces it.
    let sup = Supervisor::start(&config("0s"));
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(3)).unwrap(), json!(3));
    let old = stop_worker(&sup, "c");
    // A call in flight to it stays unanswered while it is stopped.
    let id = c
        .send(json!({"op": "call", "actor": "c", "method": "incr", "args": 1}))
        .unwrap();
    c.flush().unwrap();
    let until = Instant::now() + Duration::from_secs(3);
    while Instant::now() < until {
        let a = sup.actor("c");
        assert_eq!(a["state"], "ALIVE", "{a}");
        assert_eq!(a["pid"], old.pid, "the stopped worker was replaced: {a}");
        assert!(old.is_running());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(!sup.log().contains("worker hung"), "{}", sup.log_tail(20));
    // Resumed, it answers the call in flight; nothing was restarted.
    assert!(old.signal(Signal::SIGCONT));
    let reply = c.recv().unwrap();
    assert_eq!(reply.id, json!(id));
    assert_eq!(reply.into_result().unwrap(), json!(4));
    let a = sup.actor("c");
    assert_eq!(a["pid"], old.pid, "{a}");
    assert_eq!(a["restarts"], 0, "{a}");
}
