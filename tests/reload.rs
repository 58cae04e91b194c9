//! Reload (SIGHUP or the `reload` op): added actors start, removed ones stop after a
//! final checkpoint with their pending calls answered, changed policies apply, untouched
//! actors keep their worker and state; an invalid new config changes nothing.

use std::collections::HashMap;
use std::fs;
use std::time::Duration;

use nix::sys::signal::Signal;
use resurgam::shared::protocol::ErrorKind;
use serde_json::{Value, json};

use crate::util::{Supervisor, expect_kind, remote_err};

const WAIT: Duration = Duration::from_secs(20);

/// `keep` and `pol` (counters, no automatic checkpoints), plus `extra` verbatim.
fn config(pol_checkpoint_every: u64, extra: &str) -> String {
    format!(
        r#"
[supervisor]
durability = "log"

[defaults]
checkpoint_every = 0
checkpoint_interval = "0s"

[[actor]]
name = "keep"
kind = "counter"

[[actor]]
name = "pol"
kind = "counter"
checkpoint_every = {pol_checkpoint_every}
{extra}
"#
    )
}

const FRESH: &str = r#"
[[actor]]
name = "fresh"
kind = "kv"
"#;

/// State and workers before the reload; checks them after it.
struct Before {
    keep_pid: i32,
    pol_pid: i32,
}

fn prepare(sup: &Supervisor) -> Before {
    let mut c = sup.client();
    assert_eq!(c.call("keep", "incr", json!(5)).unwrap(), json!(5));
    for want in 1..=3 {
        assert_eq!(c.call("pol", "incr", json!(1)).unwrap(), json!(want));
    }
    let pol = sup.actor("pol");
    assert_eq!(
        pol["checkpoint"]["generation"], 0,
        "pol checkpointed before its policy changed: {pol}"
    );
    Before {
        keep_pid: sup.actor_pid("keep").unwrap(),
        pol_pid: sup.actor_pid("pol").unwrap(),
    }
}

/// After a reload that added `fresh` and set pol's `checkpoint_every` to 2.
fn check_after(sup: &Supervisor, before: &Before) {
    sup.wait_state("fresh", "ALIVE", WAIT);
    let mut c = sup.client();
    // Untouched: same worker, same state.
    assert_eq!(
        sup.actor_pid("keep"),
        Some(before.keep_pid),
        "keep was restarted"
    );
    assert_eq!(c.call("keep", "get", Value::Null).unwrap(), json!(5));
    // Changed policy: the state is kept and the new checkpoint_every applies.
    assert_eq!(
        sup.actor_pid("pol"),
        Some(before.pol_pid),
        "pol was restarted"
    );
    for want in 4..=7 {
        assert_eq!(c.call("pol", "incr", json!(1)).unwrap(), json!(want));
    }
    sup.wait_until(
        "pol to checkpoint by its new checkpoint_every",
        WAIT,
        || {
            sup.actor("pol")["checkpoint"]["generation"]
                .as_u64()
                .unwrap()
                > 0
        },
    );
    assert_eq!(
        sup.actor("keep")["checkpoint"]["generation"],
        0,
        "keep's policy changed too"
    );
    // Added: serves.
    assert_eq!(
        c.call("fresh", "put", json!({"key": "a", "value": 1}))
            .unwrap(),
        Value::Null
    );
    assert_eq!(
        c.call("fresh", "get", json!({"key": "a"})).unwrap(),
        json!(1)
    );
}

/// Puts `a0`..`a{n-1}` (value i) into the kv actor `victim`, each acknowledged.
fn put_keys(c: &mut resurgam::Client, n: i64) {
    for i in 0..n {
        c.call("victim", "put", json!({"key": format!("a{i}"), "value": i}))
            .unwrap();
    }
}

#[test]
fn reload_op_adds_an_actor_changes_a_policy_and_keeps_the_rest() {
    let sup = Supervisor::start(&config(0, ""));
    let before = prepare(&sup);
    sup.write_config(&config(2, FRESH));
    let mut c = sup.client();
    assert_eq!(
        c.reload().unwrap(),
        json!({"added": ["fresh"], "removed": [], "changed": ["pol"], "restarted": [], "needs_restart": []})
    );
    check_after(&sup, &before);

    // A reload with nothing changed changes nothing.
    assert_eq!(
        c.reload().unwrap(),
        json!({"added": [], "removed": [], "changed": [], "restarted": [], "needs_restart": []})
    );
    assert_eq!(sup.actor_pid("keep"), Some(before.keep_pid));
}

#[test]
fn sighup_reloads_the_config_file() {
    let sup = Supervisor::start(&config(0, ""));
    let before = prepare(&sup);
    sup.write_config(&config(2, FRESH));
    sup.signal_supervisor(Signal::SIGHUP);
    sup.wait_until("the SIGHUP reload to add \"fresh\"", WAIT, || {
        sup.has_actor("fresh")
    });
    check_after(&sup, &before);
    let log = sup.log();
    assert!(
        log.lines()
            .any(|l| l.contains("configuration reloaded") && l.contains("fresh")),
        "no log line for the reload:\n{}",
        sup.log_tail(30)
    );
}

/// The kv actor `victim`, in memory mode.
const MEMORY_VICTIM: &str = r#"
[[actor]]
name = "victim"
kind = "kv"
durability = "memory"
"#;

#[test]
fn a_removed_actor_answers_its_pending_calls_and_leaves_a_final_checkpoint() {
    const VICTIM: &str = MEMORY_VICTIM;
    let sup = Supervisor::start(&config(0, VICTIM));
    let mut c = sup.client();
    put_keys(&mut c, 20);
    assert_eq!(sup.actor("victim")["checkpoint"]["generation"], 0);
    assert_eq!(c.call("keep", "incr", json!(9)).unwrap(), json!(9));
    let keep_pid = sup.actor_pid("keep").unwrap();

    // Many calls in flight, then the reload that removes their actor (same connection:
    // the calls are accepted first).
    sup.write_config(&config(0, ""));
    let mut ids = HashMap::new();
    for i in 0..500 {
        let id = c
            .send(json!({"op": "call", "actor": "victim", "method": "put",
                         "args": {"key": format!("p{i}"), "value": i}}))
            .unwrap();
        ids.insert(id, i);
    }
    let reload_id = c.send(json!({"op": "reload"})).unwrap();
    c.flush().unwrap();
    let mut reload_reply = None;
    while !ids.is_empty() || reload_reply.is_none() {
        let r = c.recv().unwrap();
        let id = r.id.as_u64().unwrap();
        if id == reload_id {
            reload_reply = Some(r.into_result().expect("reload failed"));
        } else {
            let i = ids.remove(&id).expect("unexpected reply id");
            assert_eq!(
                r.into_result(),
                Ok(Value::Null),
                "pending put p{i} not answered properly"
            );
        }
    }
    assert_eq!(
        reload_reply.unwrap(),
        json!({"added": [], "removed": ["victim"], "changed": [], "restarted": [], "needs_restart": []})
    );
    expect_kind(
        c.call("victim", "get", json!({"key": "a0"})),
        ErrorKind::UnknownActor,
    );
    sup.wait_until("victim to vanish from status", WAIT, || {
        !sup.has_actor("victim")
    });
    assert_eq!(sup.actor_pid("keep"), Some(keep_pid));
    assert_eq!(c.call("keep", "get", Value::Null).unwrap(), json!(9));

    // Its final checkpoint is on disk: with the mmap file gone and no call log (memory
    // durability), a restart with the actor back restores every call.
    let disk = sup.state_dir.join("victim.checkpoint");
    assert!(disk.is_file(), "no disk copy at {}", disk.display());
    sup.kill_supervisor();
    let mmap = sup.runtime_dir.join("victim.ckpt");
    if mmap.exists() {
        fs::remove_file(&mmap).unwrap();
    }
    sup.write_config(&config(0, VICTIM));
    sup.restart_same_dirs();
    let mut c = sup.client();
    assert_eq!(c.call("victim", "len", Value::Null).unwrap(), json!(520));
    for (k, v) in [("a0", 0), ("a19", 19), ("p0", 0), ("p499", 499)] {
        assert_eq!(
            c.call("victim", "get", json!({"key": k})).unwrap(),
            json!(v),
            "{k}"
        );
    }
    assert_eq!(c.call("keep", "get", Value::Null).unwrap(), json!(9));
}

#[test]
fn an_invalid_config_is_refused_and_the_old_one_stays() {
    let sup = Supervisor::start(&config(0, ""));
    let mut c = sup.client();
    assert_eq!(c.call("keep", "incr", json!(4)).unwrap(), json!(4));
    let pids = (
        sup.actor_pid("keep").unwrap(),
        sup.actor_pid("pol").unwrap(),
    );

    // A syntax error (and an added actor that must not appear).
    sup.write_config(&config(0, &format!("{FRESH}\ncheckpoint_every = = 3\n")));
    let text = fs::read_to_string(&sup.config_path).unwrap();
    let line = text
        .lines()
        .position(|l| l.contains("= = 3"))
        .expect("the bad line")
        + 1;
    let err = remote_err(c.reload());
    assert_eq!(err.kind, ErrorKind::BadRequest, "{err:?}");
    let place = format!("{}:{line}", sup.config_path.display());
    assert!(
        err.message.contains(&place),
        "the error does not point at {place}: {}",
        err.message
    );

    let unchanged = |sup: &Supervisor, c: &mut resurgam::Client, value: i64| {
        assert!(!sup.has_actor("fresh"), "{}", sup.status());
        assert_eq!(sup.actor_pid("keep"), Some(pids.0));
        assert_eq!(sup.actor_pid("pol"), Some(pids.1));
        assert_eq!(c.call("keep", "get", Value::Null).unwrap(), json!(value));
    };
    unchanged(&sup, &mut c, 4);

    // SIGHUP with the same file: refused and logged, nothing changes.
    sup.signal_supervisor(Signal::SIGHUP);
    sup.wait_until("the refused SIGHUP reload to be logged", WAIT, || {
        sup.log().lines().any(|l| l.contains("reload refused"))
    });
    unchanged(&sup, &mut c, 4);

    // A valid file that changes an actor's kind is refused too.
    sup.write_config(&config(0, "").replace(
        "name = \"keep\"\nkind = \"counter\"",
        "name = \"keep\"\nkind = \"kv\"",
    ));
    let msg = expect_kind(c.reload(), ErrorKind::BadRequest);
    assert!(msg.contains("keep") && msg.contains("kind"), "{msg}");
    assert_eq!(c.call("keep", "incr", json!(1)).unwrap(), json!(5));
    unchanged(&sup, &mut c, 5);

    // Fixed: the next reload applies.
    sup.write_config(&config(0, FRESH));
    assert_eq!(c.reload().unwrap()["added"], json!(["fresh"]));
    sup.wait_state("fresh", "ALIVE", WAIT);
    assert_eq!(sup.actor_pid("keep"), Some(pids.0));
}

/// A removed actor whose worker crash-loops on an accepted call ends removed, not DEAD
/// for ever: the call is answered (`ActorDead`), the actor leaves `status`, and a
/// reload adds its name back with its state (the refused call tombstoned, never run).
/// Removed while it waits out a long backoff, it is started at once to answer.
#[test]
fn a_removed_actor_that_crash_loops_ends_removed_and_can_be_added_back() {
    const VICTIM: &str = r#"
[[actor]]
name = "victim"
kind = "counter"
max_restarts = 2
restart_window = "600s"
max_call_retries = 10
backoff_initial = "600s"
backoff_max = "600s"
min_uptime = "600s"
"#;
    let sup = Supervisor::start(&config(0, VICTIM));
    let mut c = sup.client();
    assert_eq!(c.call("victim", "incr", json!(5)).unwrap(), json!(5));
    // `crash` kills its worker: restarted at once, killed again by the replay, then a
    // long backoff with the call still pending.
    let mut pipe = sup.client();
    let crash = pipe
        .send(json!({"op": "call", "actor": "victim", "method": "crash"}))
        .unwrap();
    pipe.flush().unwrap();
    sup.wait_state("victim", "RESTARTING", WAIT);

    sup.write_config(&config(0, ""));
    assert_eq!(c.reload().unwrap()["removed"], json!(["victim"]));
    sup.wait_until("victim to vanish from status", WAIT, || {
        !sup.has_actor("victim")
    });
    let reply = pipe.recv().unwrap();
    assert_eq!(reply.id.as_u64(), Some(crash));
    let err = reply.into_result().expect_err("the crash call succeeded");
    assert_eq!(err.kind, ErrorKind::ActorDead, "{err:?}");
    assert!(
        sup.log()
            .contains("actor removed by reload gave up before its final checkpoint"),
        "{}",
        sup.log_tail(30)
    );

    sup.write_config(&config(0, VICTIM));
    assert_eq!(c.reload().unwrap()["added"], json!(["victim"]));
    sup.wait_state("victim", "ALIVE", WAIT);
    assert_eq!(c.call("victim", "get", Value::Null).unwrap(), json!(5));
}

/// Memory mode: an actor removed while it waits out a backoff (no worker) is started
/// for its final checkpoint, which holds every acknowledged call: added back, it has
/// them all (only the core's memory held them before).
#[test]
fn a_removed_memory_actor_in_backoff_is_started_for_its_final_checkpoint() {
    let victim = format!(
        "{MEMORY_VICTIM}backoff_initial = \"600s\"\nbackoff_max = \"600s\"\nmin_uptime = \"600s\"\n"
    );
    let sup = Supervisor::start(&config(0, &victim));
    let mut c = sup.client();
    put_keys(&mut c, 10);
    // Killed twice: restarted at once, then a long backoff.
    let first = sup.kill_worker("victim");
    sup.wait_new_pid("victim", first, WAIT);
    sup.kill_worker("victim");
    sup.wait_state("victim", "RESTARTING", WAIT);
    assert_eq!(sup.actor("victim")["checkpoint"]["generation"], 0);

    sup.write_config(&config(0, ""));
    assert_eq!(c.reload().unwrap()["removed"], json!(["victim"]));
    sup.wait_until("victim to vanish from status", WAIT, || {
        !sup.has_actor("victim")
    });
    sup.write_config(&config(0, &victim));
    assert_eq!(c.reload().unwrap()["added"], json!(["victim"]));
    assert_eq!(c.call("victim", "len", Value::Null).unwrap(), json!(10));
    assert_eq!(
        c.call("victim", "get", json!({"key": "a9"})).unwrap(),
        json!(9)
    );
}
