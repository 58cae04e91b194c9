//! Restart intensity and DEAD actors, poison calls, operator restarts (G4).

use std::time::{Duration, Instant};

use resurgam::shared::protocol::ErrorKind;
use serde_json::{Value, json};

use crate::util::{Supervisor, expect_kind};

const WAIT: Duration = Duration::from_secs(20);

#[test]
fn crash_loop_makes_the_actor_dead_and_restart_revives_it() {
    let sup = Supervisor::start(
        r#"
[[actor]]
name = "c"
kind = "counter"
max_restarts = 2
restart_window = "60s"
max_call_retries = 10
backoff_initial = "5ms"
backoff_max = "20ms"

[[actor]]
name = "other"
kind = "counter"
"#,
    );
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(5)).unwrap(), json!(5));
    assert_eq!(c.call("other", "incr", json!(1)).unwrap(), json!(1));

    // `crash` kills the worker every time it runs; calls queued behind it wait for it.
    // With max_restarts = 2 the third death makes the actor DEAD: the crash call and
    // every call pending behind it fail with ActorDead, none hangs.
    let mut pipe = sup.client();
    let crash_id = pipe
        .send(json!({"op": "call", "actor": "c", "method": "crash"}))
        .unwrap();
    let pending: Vec<u64> = (0..5)
        .map(|_| {
            pipe.send(json!({"op": "call", "actor": "c", "method": "incr", "args": 1}))
                .unwrap()
        })
        .collect();
    pipe.flush().unwrap();
    let started = Instant::now();
    let mut answered = Vec::new();
    for _ in 0..=pending.len() {
        let reply = pipe
            .recv()
            .unwrap_or_else(|e| panic!("no reply (hang?): {e}\n{}", sup.log_tail(40)));
        let id = reply.id.as_u64().expect("numeric id");
        assert!(!answered.contains(&id), "two replies for id {id}");
        answered.push(id);
        let err = reply
            .into_result()
            .expect_err("a call to a crash-looping actor succeeded");
        assert_eq!(err.kind, ErrorKind::ActorDead, "id {id}: {err:?}");
    }
    answered.sort();
    let mut want = pending.clone();
    want.push(crash_id);
    want.sort();
    assert_eq!(answered, want);
    assert!(started.elapsed() < WAIT);

    let a = sup.actor("c");
    assert_eq!(a["state"], "DEAD", "{a}");
    assert!(a["pid"].is_null(), "a DEAD actor has no worker: {a}");
    assert!(a["restarts"].as_u64().unwrap() >= 2, "{a}");
    let reason = a["dead_reason"].as_str().expect("dead_reason is set");
    assert!(!reason.is_empty());
    assert!(
        a["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("SIGABRT")),
        "last_exit: {a}"
    );

    // New calls fail at once; so does a checkpoint request. Other actors are unaffected.
    let t = Instant::now();
    let msg = expect_kind(c.call("c", "get", Value::Null), ErrorKind::ActorDead);
    assert!(msg.contains("DEAD"), "message: {msg}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ActorDead was not immediate"
    );
    expect_kind(c.checkpoint("c"), ErrorKind::ActorDead);
    assert_eq!(c.call("other", "incr", json!(1)).unwrap(), json!(2));
    assert!(
        sup.log().contains("DEAD"),
        "the log does not report the DEAD actor"
    );

    // `restart` revives it with the state from before (the crash call was dropped).
    assert_eq!(c.restart("c").unwrap()["restarting"], "c");
    let a = sup.wait_state("c", "ALIVE", WAIT);
    assert!(a["dead_reason"].is_null(), "{a}");
    assert!(a["pid"].as_i64().is_some(), "{a}");
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(5));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(6));
}

#[test]
fn poison_call_fails_after_its_retries_and_the_actor_lives_on() {
    let sup = Supervisor::start(
        r#"
[defaults]
backoff_initial = "5ms"
backoff_max = "20ms"

[[actor]]
name = "c"
kind = "counter"
"#,
    );
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(7)).unwrap(), json!(7));
    let pid_before = sup.actor_pid("c").unwrap();

    // A poison call alone.
    let msg = expect_kind(c.call("c", "crash", Value::Null), ErrorKind::CallFailed);
    assert!(msg.contains("crash"), "message: {msg}");
    let a = sup.wait_state("c", "ALIVE", WAIT);
    assert_eq!(
        a["restarts"], 3,
        "default max_call_retries = 3 attempts: {a}"
    );
    assert_ne!(a["pid"], json!(pid_before));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(8));

    // A poison call with calls before and after it on the same connection: only the
    // poison call fails; the others are applied exactly once, in order.
    let results = c
        .call_pipelined(&[
            ("c", "incr", json!(1)),
            ("c", "crash", Value::Null),
            ("c", "incr", json!(1)),
            ("c", "get", Value::Null),
        ])
        .unwrap();
    assert_eq!(results[0], Ok(json!(9)));
    assert_eq!(results[1].as_ref().unwrap_err().kind, ErrorKind::CallFailed);
    assert_eq!(results[2], Ok(json!(10)));
    assert_eq!(results[3], Ok(json!(10)));
    sup.wait_state("c", "ALIVE", WAIT);
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(10));
    assert!(
        sup.log().contains("poison call dropped"),
        "{}",
        sup.log_tail(30)
    );
}

#[test]
fn restart_of_an_alive_actor_changes_its_pid_and_keeps_its_state() {
    let sup = Supervisor::start(
        r#"
[[actor]]
name = "c"
kind = "counter"

[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 3
"#,
    );
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(41)).unwrap(), json!(41));
    for i in 0..10 {
        c.call("kv", "put", json!({"key": format!("k{i}"), "value": i}))
            .unwrap();
    }
    for round in 0..3 {
        let c_pid = sup.actor_pid("c").unwrap();
        let kv_pid = sup.actor_pid("kv").unwrap();
        assert_eq!(c.restart("c").unwrap(), json!({"restarting": "c"}));
        assert_eq!(c.restart("kv").unwrap(), json!({"restarting": "kv"}));
        let new_c = sup.wait_new_pid("c", c_pid, WAIT);
        let new_kv = sup.wait_new_pid("kv", kv_pid, WAIT);
        assert!(
            crate::util::Proc::of(c_pid).is_none(),
            "old worker {c_pid} still runs"
        );
        assert_ne!(new_c, c_pid);
        assert_ne!(new_kv, kv_pid);
        assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(42 + round));
        assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(10));
        for i in 0..10 {
            assert_eq!(
                c.call("kv", "get", json!({"key": format!("k{i}")}))
                    .unwrap(),
                json!(i)
            );
        }
    }
}
