//! `kind = "exec"` (docs/exec-protocol.md): actors that are programs of their own, here
//! Python ones (the SDK in `python/resurgam`, fixtures in `tests/python_actors/`) and
//! the raw-protocol example of the docs. Calls and errors, recovery from `kill -9` of
//! the program and of the worker, every misbehaviour the protocol page lists, fatal
//! start problems (DEAD), large states, crash loops, supervisor kills with the durable
//! log, and reloads that change a program's launch settings.
//!
//! These tests need `python3` (3.9 or newer) on PATH: without it they fail, they do not
//! skip.

use std::collections::HashSet;
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use nix::sys::signal::Signal;
use resurgam::shared::protocol::ErrorKind;
use resurgam::{Client, ClientError};
use serde_json::{Value, json};

use crate::util::{Proc, Rng, StopOnDrop, Supervisor, expect_kind, is_connection_loss, proc_stat};

pub(crate) const WAIT: Duration = Duration::from_secs(20);

/// The repository's root (the test crate is the `supervisor/` package).
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");

/// Fast restarts, so that tests with several recoveries stay short.
pub(crate) const FAST_RESTARTS: &str = r#"
[defaults]
backoff_initial = "5ms"
backoff_max = "20ms"
"#;

// ------------------------------------------------------------------------------------
// Helpers shared with `exec_chaos`.

/// Checks once that `python3` runs and the SDK is in place; panics (fails the test)
/// with the reason otherwise.
pub(crate) fn require_python() {
    static CHECKED: OnceLock<Result<(), String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| {
        let sdk = python_dir().join("resurgam").join("actor.py");
        if !sdk.is_file() {
            return Err(format!("the Python SDK is missing: {}", sdk.display()));
        }
        let out = Command::new("python3")
            .args([
                "-c",
                "import sys; assert sys.version_info >= (3, 9), sys.version",
            ])
            .output()
            .map_err(|e| format!("python3 cannot be run: {e}"))?;
        if !out.status.success() {
            return Err(format!(
                "python3 is not usable ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        Ok(())
    });
    if let Err(e) = checked {
        panic!("the exec tests need python3 >= 3.9 and the SDK: {e}");
    }
}

fn repo() -> PathBuf {
    fs::canonicalize(REPO).unwrap_or_else(|e| panic!("repository root {REPO}: {e}"))
}

/// Where the `resurgam` Python package lives (the PYTHONPATH of the fixtures).
pub(crate) fn python_dir() -> PathBuf {
    repo().join("python")
}

/// The absolute path of a fixture in `tests/python_actors/`.
pub(crate) fn fixture(script: &str) -> PathBuf {
    let p = repo().join("tests").join("python_actors").join(script);
    assert!(p.is_file(), "fixture missing: {}", p.display());
    p
}

/// A TOML basic string (JSON string escapes are valid TOML ones).
pub(crate) fn toml_str(s: &str) -> String {
    serde_json::to_string(s).expect("a string serializes")
}

/// An `[[actor]]` running the SDK fixture `script` with `args`, the SDK on its
/// PYTHONPATH plus `env`, and `extra` keys for the same table.
pub(crate) fn python_actor_with(
    name: &str,
    script: &str,
    args: &[&str],
    env: &[(&str, &str)],
    extra: &str,
) -> String {
    let mut command = vec![
        toml_str("python3"),
        toml_str(fixture(script).to_str().expect("utf-8 path")),
    ];
    command.extend(args.iter().map(|a| toml_str(a)));
    let mut vars = vec![format!(
        "PYTHONPATH = {}",
        toml_str(python_dir().to_str().expect("utf-8 path"))
    )];
    vars.extend(env.iter().map(|(k, v)| format!("{k} = {}", toml_str(v))));
    format!(
        "\n[[actor]]\nname = \"{name}\"\nkind = \"exec\"\ncommand = [{}]\nenv = {{ {} }}\n{extra}\n",
        command.join(", "),
        vars.join(", ")
    )
}

/// [`python_actor_with`] without arguments or extra environment.
pub(crate) fn python_actor(name: &str, script: &str, extra: &str) -> String {
    python_actor_with(name, script, &[], &[], extra)
}

/// Starts a supervisor (python3 is checked first).
pub(crate) fn start(body: &str) -> Supervisor {
    require_python();
    Supervisor::start(body)
}

/// The ALIVE actor's worker and its program (checked to be the worker's child).
pub(crate) fn processes(sup: &Supervisor, name: &str) -> (Proc, Proc) {
    let a = sup.wait_state(name, "ALIVE", WAIT);
    let worker = a["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {a}")) as i32;
    let program = a["program_pid"]
        .as_i64()
        .unwrap_or_else(|| panic!("no program_pid: {a}")) as i32;
    let w = Proc::of(worker).unwrap_or_else(|| panic!("worker {worker} is not running: {a}"));
    let p = Proc::of(program).unwrap_or_else(|| panic!("program {program} is not running: {a}"));
    let (_, ppid, _) = proc_stat(program).expect("program's /proc entry");
    assert_eq!(ppid, worker, "the program is not the worker's child: {a}");
    (w, p)
}

/// SIGKILLs the ALIVE actor's program; returns its worker and the killed program.
pub(crate) fn kill_program(sup: &Supervisor, name: &str) -> (Proc, Proc) {
    let (w, p) = processes(sup, name);
    assert!(p.signal(Signal::SIGKILL), "cannot SIGKILL program {p:?}");
    (w, p)
}

/// Waits until the actor runs a new worker (other than `old`) and `program` is gone;
/// returns the new worker and program.
pub(crate) fn wait_recovered(
    sup: &Supervisor,
    name: &str,
    old: Proc,
    program: Proc,
) -> (Proc, Proc) {
    sup.wait_new_pid(name, old.pid, WAIT);
    sup.wait_until("the old program to be gone", WAIT, || !program.is_running());
    sup.wait_until("the old worker to be gone", WAIT, || !old.is_running());
    let (w, p) = processes(sup, name);
    assert_ne!(p, program, "the program was not replaced");
    (w, p)
}

/// The actor's `last_exit` (panics if it has none).
fn last_exit(sup: &Supervisor, name: &str) -> String {
    let a = sup.actor(name);
    a["last_exit"]
        .as_str()
        .unwrap_or_else(|| panic!("no last_exit: {a}"))
        .to_string()
}

/// The supervisor process is still running and answering.
fn assert_supervisor_up(sup: &Supervisor) {
    assert!(
        sup.try_wait_exit().is_none(),
        "the supervisor exited\n{}",
        sup.log_tail(60)
    );
    sup.status();
}

// ------------------------------------------------------------------------------------
// 1. A Python actor through the SDK.

#[test]
fn a_python_bank_answers_refuses_and_keeps_its_balances_through_program_and_worker_kills() {
    let sup = start(&format!(
        "{FAST_RESTARTS}{}",
        python_actor("bank", "bank.py", "")
    ));
    let mut c = sup.client();
    let acct = |account: &str, amount: i64| json!({"account": account, "amount": amount});
    assert_eq!(
        c.call("bank", "deposit", acct("alice", 100)).unwrap(),
        json!(100)
    );
    assert_eq!(c.call("bank", "deposit", acct("bob", 5)).unwrap(), json!(5));
    assert_eq!(
        c.call("bank", "withdraw", acct("alice", 30)).unwrap(),
        json!(70)
    );

    // A method that raises: ActorError "<ExceptionType>: <text>", nothing changed.
    let msg = expect_kind(
        c.call("bank", "withdraw", acct("bob", 1000)),
        ErrorKind::ActorError,
    );
    assert_eq!(msg, "InsufficientFunds: bob has 5, cannot withdraw 1000");
    // Arguments that do not fit raise in the method: an ActorError naming the exception.
    let msg = expect_kind(
        c.call("bank", "deposit", Value::Null),
        ErrorKind::ActorError,
    );
    assert!(msg.starts_with("TypeError: "), "message: {msg}");
    // No such method: UnknownMethod listing the ones that exist (not get_state/load_state).
    let msg = expect_kind(
        c.call("bank", "steal", json!("alice")),
        ErrorKind::UnknownMethod,
    );
    assert!(
        msg.contains("\"steal\"") && msg.contains("balance, deposit, withdraw"),
        "message: {msg}"
    );
    assert!(!msg.contains("get_state"), "message: {msg}");
    assert_eq!(c.call("bank", "balance", json!("bob")).unwrap(), json!(5));
    assert_eq!(sup.actor("bank")["restarts"], 0, "errors are not crashes");

    // kill -9 of the program: the worker reports why and is replaced; the calls since
    // the start (no checkpoint yet) are replayed.
    let (worker, program) = kill_program(&sup, "bank");
    let (worker2, _) = wait_recovered(&sup, "bank", worker, program);
    let a = sup.actor("bank");
    assert_eq!(a["restarts"], 1, "{a}");
    let exit = last_exit(&sup, "bank");
    assert!(
        exit.contains(&format!(
            "the program (pid {}) was killed by SIGKILL",
            program.pid
        )),
        "last_exit: {exit}"
    );
    assert_eq!(
        c.call("bank", "balance", json!("alice")).unwrap(),
        json!(70)
    );
    assert_eq!(c.call("bank", "balance", json!("bob")).unwrap(), json!(5));

    // A checkpoint (get_state), a call after it, then kill -9 of the worker: the new
    // program gets the checkpoint (load_state) and the call is replayed.
    let ck = c.checkpoint("bank").unwrap();
    assert!(ck["generation"].as_u64().unwrap() >= 1, "{ck}");
    assert_eq!(
        c.call("bank", "deposit", acct("alice", 1)).unwrap(),
        json!(71)
    );
    let (_, program2) = processes(&sup, "bank");
    sup.kill_worker("bank");
    // The program does not outlive its worker.
    wait_recovered(&sup, "bank", worker2, program2);
    let a = sup.actor("bank");
    assert_eq!(a["restarts"], 2, "both kills are counted: {a}");
    let exit = last_exit(&sup, "bank");
    assert!(
        exit.contains("SIGKILL") && !exit.contains("program"),
        "last_exit of a killed worker: {exit}"
    );
    assert_eq!(
        c.call("bank", "balance", json!("alice")).unwrap(),
        json!(71)
    );
    assert_eq!(c.call("bank", "balance", json!("bob")).unwrap(), json!(5));
    assert_eq!(
        c.call("bank", "withdraw", acct("alice", 71)).unwrap(),
        json!(0)
    );
    assert_eq!(sup.actor("bank")["nondeterministic_replies"], 0);
}

// ------------------------------------------------------------------------------------
// 2. The protocol without the SDK, straight from the docs.

/// The ```python block under "An actor in 40 lines, without the SDK" in
/// docs/exec-protocol.md.
fn doc_example() -> String {
    let path = repo().join("docs").join("exec-protocol.md");
    let doc = fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let heading = "## An actor in 40 lines, without the SDK";
    let section = &doc[doc
        .find(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in {}", path.display()))..];
    let start = section.find("```python\n").expect("a ```python block") + "```python\n".len();
    let end = section[start..].find("```").expect("the end of the block") + start;
    section[start..end].to_string()
}

#[test]
fn the_raw_protocol_example_from_the_docs_runs_without_the_sdk_and_survives_kill_9() {
    require_python();
    let code = doc_example();
    assert!(
        !code.contains("import resurgam") && !code.contains("from resurgam"),
        "the example is meant to work without the SDK:\n{code}"
    );
    // The program must exist before the supervisor starts: its own directory, given as
    // the actor's cwd, and a relative script name resolved against it.
    let dir = tempfile::Builder::new()
        .prefix("rsg-raw-")
        .tempdir()
        .expect("tempdir");
    fs::write(dir.path().join("adder.py"), &code).expect("write the example");
    let sup = start(&format!(
        "{FAST_RESTARTS}\n[[actor]]\nname = \"adder\"\nkind = \"exec\"\ncommand = [\"python3\", \"adder.py\"]\ncwd = {}\n",
        toml_str(dir.path().to_str().expect("utf-8 path"))
    ));
    let mut c = sup.client();
    assert_eq!(c.call("adder", "add", json!(5)).unwrap(), json!(5));
    assert_eq!(c.call("adder", "add", json!(7)).unwrap(), json!(12));
    assert_eq!(c.call("adder", "get", Value::Null).unwrap(), json!(12));
    let msg = expect_kind(c.call("adder", "mul", json!(2)), ErrorKind::UnknownMethod);
    assert_eq!(msg, "methods: add, get");

    // Checkpoint (S → T), one more call, kill -9: L with "12", then the call replayed.
    c.checkpoint("adder").unwrap();
    assert_eq!(c.call("adder", "add", json!(1)).unwrap(), json!(13));
    let (worker, program) = kill_program(&sup, "adder");
    wait_recovered(&sup, "adder", worker, program);
    assert_eq!(c.call("adder", "get", Value::Null).unwrap(), json!(13));
    assert_eq!(c.call("adder", "add", json!(-3)).unwrap(), json!(10));
    let a = sup.actor("adder");
    assert_eq!(a["restarts"], 1, "{a}");
    assert_eq!(a["nondeterministic_replies"], 0, "{a}");
}

// ------------------------------------------------------------------------------------
// 3. Misbehaviour.

fn misbehave_config(extra: &str) -> String {
    format!(
        "{FAST_RESTARTS}{}",
        python_actor("m", "misbehave.py", extra)
    )
}

#[test]
fn every_protocol_breach_crashes_only_the_worker_which_recovers_and_answers_the_call() {
    let sup = start(&misbehave_config(""));
    let mut c = sup.client();
    // (method, args, what last_exit must say)
    let cases: &[(&str, Value, &str)] = &[
        (
            "garbage",
            json!({"frame": "unknown_type"}),
            "frame of unknown type 'Z'",
        ),
        (
            "garbage",
            json!({"frame": "state_for_a_call"}),
            "answered a call (C) with a 'T' frame",
        ),
        (
            "garbage",
            json!({"frame": "reply_not_json"}),
            "reply (R) is not JSON",
        ),
        (
            "garbage",
            json!({"frame": "malformed_error"}),
            "error (E) is not {\"kind\", \"message\"}",
        ),
        (
            "garbage",
            json!({"frame": "second_hello"}),
            "answered a call (C) with a 'H' frame",
        ),
        (
            "garbage",
            json!({"frame": "oversized_reply"}),
            "'R' frame of 4294967295 bytes (limit",
        ),
        ("close_channel", json!({}), "closed the protocol channel"),
        ("exit", json!({}), "exited with code 3"),
    ];
    let mut total = 0;
    for (i, (method, args, reason)) in cases.iter().enumerate() {
        total += 1;
        assert_eq!(c.call("m", "add", json!(1)).unwrap(), json!(total));
        let (worker, program) = processes(&sup, "m");
        // Misbehaves on the first attempt only (the marker file says it happened):
        // the replay after the restart answers.
        let mut args = args.clone();
        args["marker"] = json!(format!("breach-{i}"));
        let reply = c
            .call("m", method, args.clone())
            .unwrap_or_else(|e| panic!("{method} {args}: {e}\n{}", sup.log_tail(40)));
        assert_eq!(reply, json!(total), "{method} {args}");
        assert!(
            sup.dir().join(format!("breach-{i}")).exists(),
            "{method} {args} did not misbehave"
        );
        wait_recovered(&sup, "m", worker, program);
        let a = sup.actor("m");
        assert_eq!(a["restarts"], i + 1, "{method} {args}: {a}");
        let exit = a["last_exit"].as_str().unwrap_or_default();
        assert!(
            exit.contains(reason) && exit.contains("worker exited with code"),
            "{method} {args}: last_exit should say {reason:?}: {a}"
        );
        assert_eq!(c.call("m", "get", Value::Null).unwrap(), json!(total));
        assert_supervisor_up(&sup);
    }
    // Every breach is logged with its reason.
    let log = sup.log();
    for (_, _, reason) in cases {
        assert!(
            log.lines().any(|l| l.contains(reason)),
            "no log line says {reason:?}\n{}",
            sup.log_tail(40)
        );
    }
    assert_eq!(sup.actor("m")["nondeterministic_replies"], 0);
}

#[test]
fn printing_to_stdout_and_raising_break_nothing_and_the_output_is_logged_with_the_actor() {
    let sup = start(&misbehave_config(""));
    let mut c = sup.client();
    let (worker, program) = processes(&sup, "m");
    assert_eq!(c.call("m", "add", json!(2)).unwrap(), json!(2));
    // A line that looks like a frame and one that looks like a reply: stdout is never
    // read as protocol.
    let text = format!(
        "R\u{1}{{\"ok\": 999}} printed by the actor {}",
        std::process::id()
    );
    assert_eq!(c.call("m", "chatty", json!(text)).unwrap(), json!(2));
    assert_eq!(c.call("m", "add", json!(3)).unwrap(), json!(5));
    let msg = expect_kind(c.call("m", "fail", json!("boom")), ErrorKind::ActorError);
    assert_eq!(msg, "RuntimeError: boom");
    assert_eq!(c.call("m", "get", Value::Null).unwrap(), json!(5));
    let marker = format!("printed by the actor {}", std::process::id());
    sup.wait_until("the printed line in the supervisor log", WAIT, || {
        sup.log()
            .lines()
            .any(|l| l.contains(&marker) && l.contains("actor=m"))
    });
    // Nothing was restarted.
    let a = sup.actor("m");
    assert_eq!(a["restarts"], 0, "{a}");
    assert_eq!(processes(&sup, "m"), (worker, program));
}

#[test]
fn megabytes_of_output_without_a_newline_make_one_capped_log_line() {
    // Output lines are capped (16 KiB); the rest is dropped and counted, never held.
    const CAP: usize = 16 * 1024;
    let sup = start(&misbehave_config(""));
    let mut c = sup.client();
    let (worker, program) = processes(&sup, "m");
    let begin = format!("BEGIN-{}-", std::process::id());
    let bytes = 8 << 20;
    let args = json!({"text": begin, "bytes": bytes});
    assert_eq!(c.call("m", "blurt", args).unwrap(), json!(0));
    assert_eq!(c.call("m", "add", json!(1)).unwrap(), json!(1));
    // The newline that ends the line.
    assert_eq!(c.call("m", "chatty", json!("END")).unwrap(), json!(1));
    let dropped = begin.len() + bytes + "END".len() - CAP;
    let note = format!("({dropped} more bytes of this line dropped)");
    sup.wait_until("the capped line in the supervisor log", WAIT, || {
        sup.log()
            .lines()
            .any(|l| l.contains(&begin) && l.contains(&note) && l.contains("actor=m"))
    });
    let longest = sup.log().lines().map(str::len).max().unwrap_or(0);
    assert!(longest < CAP + 1024, "a log line of {longest} bytes");
    // Nothing was restarted.
    assert_eq!(sup.actor("m")["restarts"], 0);
    assert_eq!(processes(&sup, "m"), (worker, program));
}

#[test]
fn a_hung_program_is_killed_after_heartbeat_timeout_and_its_call_answered_after_recovery() {
    let sup = start(&misbehave_config("heartbeat_timeout = \"1s\""));
    let mut c = sup.client();
    assert_eq!(c.call("m", "add", json!(4)).unwrap(), json!(4));
    let (worker, program) = processes(&sup, "m");
    // Sleeps forever on the first attempt; the replay answers.
    assert_eq!(
        c.call("m", "hang", json!({"marker": "hang-once"})).unwrap(),
        json!(4)
    );
    wait_recovered(&sup, "m", worker, program);
    let a = sup.actor("m");
    assert_eq!(a["restarts"], 1, "{a}");
    let exit = a["last_exit"].as_str().unwrap_or_default();
    assert!(exit.starts_with("hung"), "last_exit: {a}");
    assert_eq!(c.call("m", "add", json!(1)).unwrap(), json!(5));
    assert_supervisor_up(&sup);
}

#[test]
fn a_call_that_kills_its_program_every_time_fails_after_max_call_retries_and_the_actor_lives_on() {
    let sup = start(&misbehave_config("max_call_retries = 3"));
    let mut c = sup.client();
    assert_eq!(c.call("m", "add", json!(10)).unwrap(), json!(10));
    // Calls before and after it on the same connection are applied once, in order.
    let results = c
        .call_pipelined(&[
            ("m", "add", json!(1)),
            ("m", "exit", Value::Null),
            ("m", "add", json!(1)),
            ("m", "get", Value::Null),
        ])
        .unwrap();
    assert_eq!(results[0], Ok(json!(11)));
    let err = results[1].as_ref().unwrap_err();
    assert_eq!(err.kind, ErrorKind::CallFailed, "{err:?}");
    assert!(
        err.message.contains("\"exit\"")
            && err.message.contains("3 times")
            && err.message.contains("exited with code 3"),
        "message: {err:?}"
    );
    assert_eq!(results[2], Ok(json!(12)));
    assert_eq!(results[3], Ok(json!(12)));
    let a = sup.wait_state("m", "ALIVE", WAIT);
    assert_eq!(a["restarts"], 3, "one restart per attempt: {a}");
    assert!(
        a["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("exited with code 3")),
        "{a}"
    );
    assert_eq!(c.call("m", "get", Value::Null).unwrap(), json!(12));
    // A recovery after the poison call does not bring it back.
    let (worker, program) = kill_program(&sup, "m");
    wait_recovered(&sup, "m", worker, program);
    assert_eq!(c.call("m", "add", json!(1)).unwrap(), json!(13));
    assert_eq!(sup.actor("m")["nondeterministic_replies"], 0);
}

#[test]
fn only_the_call_that_kills_the_program_is_blamed_not_the_calls_pipelined_before_it() {
    // One attempt each: a wrongly blamed call would fail at once.
    let sup = start(&misbehave_config("max_call_retries = 1"));
    let mut c = sup.client();
    let results = c
        .call_pipelined(&[
            ("m", "add", json!(1)),
            ("m", "add", json!(1)),
            ("m", "exit", Value::Null),
            ("m", "add", json!(1)),
        ])
        .unwrap();
    assert_eq!(results[0], Ok(json!(1)), "{results:?}");
    assert_eq!(results[1], Ok(json!(2)), "{results:?}");
    assert_eq!(
        results[2].as_ref().map_err(|e| e.kind),
        Err(ErrorKind::CallFailed),
        "{results:?}"
    );
    assert_eq!(results[3], Ok(json!(3)), "{results:?}");
    sup.wait_state("m", "ALIVE", WAIT);
    assert_eq!(c.call("m", "get", Value::Null).unwrap(), json!(3));
    assert_eq!(sup.actor("m")["restarts"], 1);
}

#[test]
fn an_exec_actor_with_an_environment_larger_than_one_ipc_message_starts_and_serves() {
    // 64 KiB of environment: the worker's Init travels through shared memory, in order
    // with what follows it (a reload, calls).
    let big = "v".repeat(64 * 1024);
    let body = python_actor_with("bank", "bank.py", &[], &[("BIG_VALUE", &big)], "");
    let sup = start(&body);
    let mut c = sup.client();
    let acct = |account: &str, amount: i64| json!({"account": account, "amount": amount});
    assert_eq!(
        c.call("bank", "deposit", acct("alice", 7)).unwrap(),
        json!(7)
    );
    c.reload().expect("reload");
    let (worker, program) = kill_program(&sup, "bank");
    wait_recovered(&sup, "bank", worker, program);
    assert_eq!(
        c.call("bank", "deposit", acct("alice", 1)).unwrap(),
        json!(8)
    );
}

#[test]
fn a_program_dying_under_a_batch_larger_than_its_socket_is_blamed_for_its_own_call() {
    // The calls after `exit` (1.2 MB) cannot all be written before the program dies: the
    // worker's write fails, and the answers the program sent before must still be read.
    let sup = start(&misbehave_config("max_call_retries = 1"));
    let mut c = sup.client();
    let big = json!("x".repeat(4096));
    let mut calls = vec![
        ("m", "add", json!(1)),
        ("m", "add", json!(1)),
        ("m", "exit", Value::Null),
    ];
    calls.extend((0..300).map(|_| ("m", "fail", big.clone())));
    calls.push(("m", "add", json!(1)));
    let results = c.call_pipelined(&calls).unwrap();
    assert_eq!(results[0], Ok(json!(1)));
    assert_eq!(results[1], Ok(json!(2)));
    assert_eq!(
        results[2].as_ref().map_err(|e| e.kind),
        Err(ErrorKind::CallFailed)
    );
    for r in &results[3..303] {
        assert_eq!(r.as_ref().map_err(|e| e.kind), Err(ErrorKind::ActorError));
    }
    assert_eq!(results[303], Ok(json!(3)));
    assert_eq!(c.call("m", "get", Value::Null).unwrap(), json!(3));
}

// ------------------------------------------------------------------------------------
// 4. Problems a restart cannot fix: DEAD, with the reason.

/// Adds `actor` (TOML) to a running supervisor's config with a reload.
fn add_by_reload(sup: &Supervisor, body: &str, actor: &str, name: &str) {
    sup.write_config(&format!("{body}{actor}"));
    let reply = sup.client().reload().unwrap();
    assert_eq!(reply["added"], json!([name]), "{reply}");
}

#[test]
fn a_program_that_speaks_protocol_2_makes_its_actor_dead_with_both_versions_named() {
    let body = format!("{FAST_RESTARTS}{}", python_actor("bank", "bank.py", ""));
    let sup = start(&body);
    // Added by a reload: a supervisor start waits for every actor to be ALIVE.
    let future = format!(
        "\n[[actor]]\nname = \"future\"\nkind = \"exec\"\ncommand = [\"python3\", {}]\n",
        toml_str(fixture("protocol2.py").to_str().unwrap())
    );
    add_by_reload(&sup, &body, &future, "future");
    let a = sup.wait_state("future", "DEAD", WAIT);
    let reason = a["dead_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("protocol version 2") && reason.contains("speaks 1"),
        "dead_reason should name both versions: {a}"
    );
    assert_eq!(a["restarts"], 0, "restarting cannot help: {a}");
    let t = Instant::now();
    let mut c = sup.client();
    expect_kind(
        c.call("future", "anything", Value::Null),
        ErrorKind::ActorDead,
    );
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ActorDead was not immediate"
    );
    assert_eq!(
        c.call("bank", "deposit", json!({"account": "a", "amount": 1}))
            .unwrap(),
        json!(1)
    );
    assert_supervisor_up(&sup);
}

#[test]
fn a_frame_that_answers_no_request_is_a_crash_never_the_next_reply() {
    let body = format!(
        "{FAST_RESTARTS}\n[[actor]]\nname = \"twice\"\nkind = \"exec\"\ncommand = [\"python3\", {}]\nmax_restarts = 1\n",
        toml_str(fixture("answers_twice.py").to_str().unwrap())
    );
    let sup = start(&body);
    let mut c = sup.client();
    // The stray second hello is found before the call goes out: the call is not
    // answered with it; each new program does the same, so the actor ends DEAD.
    expect_kind(c.call("twice", "get", Value::Null), ErrorKind::ActorDead);
    let a = sup.wait_state("twice", "DEAD", WAIT);
    assert!(
        a["dead_reason"]
            .as_str()
            .unwrap_or_default()
            .contains("answer no request"),
        "dead_reason should name the stray frame: {a}"
    );
    assert_supervisor_up(&sup);
}

fn fragile_config() -> String {
    format!(
        "{FAST_RESTARTS}{}",
        python_actor(
            "fragile",
            "fragile.py",
            "checkpoint_every = 0\ncheckpoint_interval = \"0s\""
        )
    )
}

#[test]
fn a_load_state_that_raises_makes_the_actor_dead_until_fixed_and_restarted() {
    let sup = start(&fragile_config());
    let mut c = sup.client();
    assert_eq!(c.call("fragile", "set", json!(41)).unwrap(), json!(41));
    c.checkpoint("fragile").unwrap();
    // From now on the program cannot load its checkpoint.
    let flag = sup.dir().join("fragile.refuse-load");
    fs::write(&flag, "").unwrap();
    let (worker, program) = kill_program(&sup, "fragile");
    let a = sup.wait_state("fragile", "DEAD", WAIT);
    let reason = a["dead_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("RuntimeError: refusing to load"),
        "dead_reason should carry load_state's error: {a}"
    );
    sup.wait_until("the old worker and program to be gone", WAIT, || {
        !worker.is_running() && !program.is_running()
    });
    expect_kind(c.call("fragile", "get", Value::Null), ErrorKind::ActorDead);
    // The operator fixes the program and restarts the actor: the state is intact.
    fs::remove_file(&flag).unwrap();
    c.restart("fragile").unwrap();
    sup.wait_state("fragile", "ALIVE", WAIT);
    assert_eq!(c.call("fragile", "get", Value::Null).unwrap(), json!(41));
    assert_eq!(c.call("fragile", "set", json!(42)).unwrap(), json!(42));
}

#[test]
fn a_get_state_that_raises_fails_the_checkpoint_request_and_the_actor_keeps_serving() {
    let sup = start(&fragile_config());
    let mut c = sup.client();
    assert_eq!(c.call("fragile", "set", json!(1)).unwrap(), json!(1));
    let before = processes(&sup, "fragile");
    let flag = sup.dir().join("fragile.refuse-save");
    fs::write(&flag, "").unwrap();
    let msg = expect_kind(c.checkpoint("fragile"), ErrorKind::CallFailed);
    assert!(
        msg.contains("get_state") && msg.contains("RuntimeError: refusing to save"),
        "message: {msg}"
    );
    // Still the same worker and program, serving.
    let a = sup.actor("fragile");
    assert_eq!(a["state"], "ALIVE", "{a}");
    assert_eq!(a["restarts"], 0, "{a}");
    assert_eq!(a["checkpoint"]["generation"], 0, "{a}");
    assert_eq!(processes(&sup, "fragile"), before);
    assert_eq!(c.call("fragile", "set", json!(2)).unwrap(), json!(2));
    assert_eq!(c.call("fragile", "get", Value::Null).unwrap(), json!(2));
    // Fixed: the next request checkpoints, and a kill recovers from it.
    fs::remove_file(&flag).unwrap();
    let ck = c.checkpoint("fragile").unwrap();
    assert_eq!(ck["generation"], 1, "{ck}");
    let (worker, program) = kill_program(&sup, "fragile");
    wait_recovered(&sup, "fragile", worker, program);
    assert_eq!(c.call("fragile", "get", Value::Null).unwrap(), json!(2));
}

// ------------------------------------------------------------------------------------
// 5. A large state.

#[test]
fn a_64_mib_bytes_state_survives_a_worker_kill_bit_for_bit() {
    let sup = start(&format!(
        "{FAST_RESTARTS}{}",
        python_actor(
            "blob",
            "blob.py",
            "checkpoint_every = 0\ncheckpoint_interval = \"0s\""
        )
    ));
    let mut c = sup.client();
    let digest = c
        .call("blob", "fill", json!({"mib": 64, "seed": 7}))
        .unwrap();
    assert_eq!(digest["len"], 64 << 20, "{digest}");
    let ck = c.checkpoint("blob").unwrap();
    assert_eq!(ck["generation"], 1, "{ck}");
    let (worker, program) = processes(&sup, "blob");
    sup.kill_worker("blob");
    wait_recovered(&sup, "blob", worker, program);
    let a = sup.actor("blob");
    assert_eq!(a["restarts"], 1, "{a}");
    // Nothing to replay: the state is the checkpoint's, loaded through L.
    assert_eq!(c.call("blob", "digest", Value::Null).unwrap(), digest);
}

// ------------------------------------------------------------------------------------
// 6. A crash loop.

#[test]
fn a_program_that_always_exits_at_start_ends_dead_and_its_calls_fail_at_once() {
    let body = format!("{FAST_RESTARTS}{}", python_actor("bank", "bank.py", ""));
    let sup = start(&body);
    let doomed = python_actor(
        "doomed",
        "exit_at_start.py",
        "max_restarts = 2\nrestart_window = \"60s\"",
    );
    add_by_reload(&sup, &body, &doomed, "doomed");
    let a = sup.wait_state("doomed", "DEAD", WAIT);
    assert_eq!(a["restarts"], 2, "{a}");
    let reason = a["dead_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("max_restarts = 2") && reason.contains("exited with code 4"),
        "dead_reason: {a}"
    );
    assert!(
        a["last_exit"]
            .as_str()
            .is_some_and(|e| e.contains("exited with code 4")),
        "{a}"
    );
    let mut c = sup.client();
    let t = Instant::now();
    let msg = expect_kind(c.call("doomed", "get", Value::Null), ErrorKind::ActorDead);
    assert!(msg.contains("DEAD"), "message: {msg}");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "ActorDead was not immediate"
    );
    // The program's stderr is in the log; the other actor is untouched.
    assert!(
        sup.log()
            .lines()
            .any(|l| l.contains("giving up at once") && l.contains("actor=doomed")),
        "the program's stderr is not in the log\n{}",
        sup.log_tail(30)
    );
    assert_eq!(
        c.call("bank", "deposit", json!({"account": "a", "amount": 2}))
            .unwrap(),
        json!(2)
    );
    assert_eq!(sup.actor("bank")["restarts"], 0);
}

// ------------------------------------------------------------------------------------
// 7. The durable log with an exec actor: kill -9 of the supervisor.

/// What the load client saw across every supervisor run.
#[derive(Default)]
struct Appends {
    /// Acknowledged appends, in acknowledgement order: (item, reply = its position).
    acked: Vec<(String, i64)>,
    /// Items sent but never answered (the supervisor died): applied once or not at all.
    unanswered: Vec<String>,
}

/// Pipelines batches of unique appends to `actor`, reconnecting after each supervisor
/// kill, until `stop`.
fn append_client(sup: &Supervisor, actor: &str, stop: &AtomicBool, acked: &AtomicUsize) -> Appends {
    let mut rng = Rng::new(Rng::seed());
    let mut seen = Appends::default();
    let mut n = 0u64;
    'connect: while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = Client::connect(&sup.socket) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        c.set_timeout(Some(WAIT)).expect("set timeout");
        while !stop.load(Ordering::Relaxed) {
            let mut pending: Vec<(u64, String)> = Vec::new();
            let mut lost = false;
            for _ in 0..rng.range(1, 16) {
                n += 1;
                let item = format!("a{n}");
                match c
                    .send(json!({"op": "call", "actor": actor, "method": "append", "args": item}))
                {
                    Ok(id) => pending.push((id, item)),
                    Err(e) => {
                        assert!(is_connection_loss(&e), "send: {e}");
                        pending.push((u64::MAX, item));
                        lost = true;
                        break;
                    }
                }
            }
            if lost || c.flush().is_err() {
                seen.unanswered.extend(pending.into_iter().map(|(_, i)| i));
                continue 'connect;
            }
            while !pending.is_empty() {
                let reply = match c.recv() {
                    Ok(r) => r,
                    Err(e) if is_connection_loss(&e) => {
                        seen.unanswered.extend(pending.into_iter().map(|(_, i)| i));
                        continue 'connect;
                    }
                    // A reply line cut short by the supervisor's death: the calls count
                    // as unanswered only if the connection then ends (a garbled reply
                    // on a live connection is a failure).
                    Err(ClientError::Protocol(p)) => match c.recv() {
                        Err(e) if is_connection_loss(&e) => {
                            seen.unanswered.extend(pending.into_iter().map(|(_, i)| i));
                            continue 'connect;
                        }
                        other => panic!("malformed reply {p} followed by {other:?}"),
                    },
                    Err(e) => panic!(
                        "no reply ({} pending): {e}\n{}",
                        pending.len(),
                        sup.log_tail(60)
                    ),
                };
                let id = reply.id.as_u64().expect("numeric id");
                let at = pending
                    .iter()
                    .position(|(i, _)| *i == id)
                    .unwrap_or_else(|| panic!("unexpected or duplicate reply {id}"));
                let (_, item) = pending.remove(at);
                let pos = reply.into_result().unwrap_or_else(|e| {
                    panic!("append {item} failed: {e:?}\n{}", sup.log_tail(60))
                });
                seen.acked
                    .push((item, pos.as_i64().expect("append returns the length")));
                acked.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    seen
}

/// Checks a ledger's items against what its clients saw (`acked`: one list per client,
/// in acknowledgement order): every acknowledged item is there exactly once, at the
/// position its reply named, and each client's were acknowledged in order; every other
/// item was sent but not answered (`unanswered`), and appears at most once.
pub(crate) fn check_ledger(items: &[Value], acked: &[&[(String, i64)]], unanswered: &[String]) {
    let mut seen = HashSet::new();
    for (i, item) in items.iter().enumerate() {
        let s = item
            .as_str()
            .unwrap_or_else(|| panic!("item {i} is not a string: {item}"));
        assert!(
            seen.insert(s),
            "item {s:?} appears twice (again at index {i})"
        );
    }
    for client in acked {
        let mut last = 0;
        for (item, pos) in client.iter() {
            assert!(
                *pos > last,
                "acknowledged out of order: {item:?} at {pos} after {last}"
            );
            last = *pos;
            assert_eq!(
                items.get((*pos - 1) as usize).and_then(Value::as_str),
                Some(item.as_str()),
                "acknowledged {item:?} as position {pos}"
            );
        }
    }
    let acked: HashSet<&str> = acked
        .iter()
        .flat_map(|c| c.iter().map(|(i, _)| i.as_str()))
        .collect();
    let unanswered: HashSet<&str> = unanswered.iter().map(String::as_str).collect();
    for item in &seen {
        assert!(
            acked.contains(item) || unanswered.contains(item),
            "item {item:?} was never sent"
        );
    }
}

#[test]
fn with_the_durable_log_supervisor_kills_lose_and_double_no_acknowledged_append() {
    let sup = start(&format!(
        "[supervisor]\ndurability = \"log\"\n{FAST_RESTARTS}checkpoint_every = 50\ncheckpoint_interval = \"100ms\"\nmax_call_retries = -1\n{}",
        python_actor("ledger", "ledger.py", "")
    ));
    let mut rng = Rng::new(Rng::seed());
    let stop = AtomicBool::new(false);
    let acked = AtomicUsize::new(0);
    let kills = 4;
    let mut recovered = 0;
    let seen = std::thread::scope(|s| {
        // Stops the client however this closure ends: on a panic, `scope` would wait
        // for it forever.
        let _stop_client = StopOnDrop(&stop);
        let client = {
            let (sup, stop, acked) = (&sup, &stop, &acked);
            s.spawn(move || append_client(sup, "ledger", stop, acked))
        };
        for round in 0..kills {
            let want = acked.load(Ordering::Relaxed) + rng.range(20, 200) as usize;
            sup.wait_until(&format!("round {round}: load"), WAIT, || {
                acked.load(Ordering::Relaxed) >= want || client.is_finished()
            });
            if client.is_finished() {
                break;
            }
            std::thread::sleep(Duration::from_millis(rng.range(0, 30)));
            sup.kill_supervisor();
            if round % 2 == 1 {
                // Again in the middle of its recovery: while the program starts, loads
                // its checkpoint, or replays the log.
                sup.wait_state_dir_unlocked();
                sup.restart_same_dirs_no_wait();
                std::thread::sleep(Duration::from_millis(rng.range(50, 400)));
                sup.kill_supervisor();
            }
            sup.wait_state_dir_unlocked();
            sup.restart_same_dirs();
            recovered += sup.actor("ledger")["recovered_from_log"]
                .as_u64()
                .unwrap_or(0);
        }
        stop.store(true, Ordering::Relaxed);
        client
            .join()
            .unwrap_or_else(|e| std::panic::resume_unwind(e))
    });
    // What the last run acknowledged must survive a kill too.
    sup.kill_supervisor();
    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
    assert_eq!(sup.run_count(), kills + kills / 2 + 2);
    eprintln!(
        "durable exec: {} acknowledged, {} unanswered appends",
        seen.acked.len(),
        seen.unanswered.len()
    );
    assert!(recovered > 0, "no restart recovered a call from the log");
    assert!(
        seen.acked.len() >= 100,
        "too little load: {}",
        seen.acked.len()
    );
    let items = sup.client().call("ledger", "get", Value::Null).unwrap();
    let items = items.as_array().expect("get returns a list");
    check_ledger(items, &[&seen.acked], &seen.unanswered);
    let a = sup.actor("ledger");
    assert_eq!(a["nondeterministic_replies"], 0, "{a}");
}

// ------------------------------------------------------------------------------------
// 8. Reload with new launch settings.

fn reload_config(args: &[&str], tag: &str) -> String {
    format!(
        "{FAST_RESTARTS}{}{}",
        python_actor_with("ledger", "ledger.py", args, &[("LEDGER_TAG", tag)], ""),
        python_actor_with("other", "ledger.py", &[], &[("LEDGER_TAG", "other")], "")
    )
}

#[test]
fn a_reload_that_changes_command_or_env_restarts_only_that_actor_with_its_state() {
    let sup = start(&reload_config(&[], "v1"));
    let mut c = sup.client();
    assert_eq!(
        c.call("ledger", "version", Value::Null).unwrap(),
        json!({"argv": [], "tag": "v1"})
    );
    for (i, item) in ["x", "y", "z"].iter().enumerate() {
        assert_eq!(
            c.call("ledger", "append", json!(item)).unwrap(),
            json!(i + 1)
        );
    }
    assert_eq!(c.call("other", "append", json!("o")).unwrap(), json!(1));
    let other = processes(&sup, "other");

    // New command (an argument) and env.
    let (worker, program) = processes(&sup, "ledger");
    sup.write_config(&reload_config(&["--v2"], "v2"));
    let reply = c.reload().unwrap();
    assert_eq!(reply["restarted"], json!(["ledger"]), "{reply}");
    wait_recovered(&sup, "ledger", worker, program);
    assert_eq!(
        c.call("ledger", "version", Value::Null).unwrap(),
        json!({"argv": ["--v2"], "tag": "v2"})
    );
    assert_eq!(
        c.call("ledger", "get", Value::Null).unwrap(),
        json!(["x", "y", "z"])
    );

    // Only the env this time.
    assert_eq!(c.call("ledger", "append", json!("w")).unwrap(), json!(4));
    let (worker, program) = processes(&sup, "ledger");
    sup.write_config(&reload_config(&["--v2"], "v3"));
    let reply = c.reload().unwrap();
    assert_eq!(reply["restarted"], json!(["ledger"]), "{reply}");
    wait_recovered(&sup, "ledger", worker, program);
    assert_eq!(
        c.call("ledger", "version", Value::Null).unwrap(),
        json!({"argv": ["--v2"], "tag": "v3"})
    );
    assert_eq!(
        c.call("ledger", "get", Value::Null).unwrap(),
        json!(["x", "y", "z", "w"])
    );

    // The same config again restarts nothing.
    let reply = c.reload().unwrap();
    assert_eq!(reply["restarted"], json!([]), "{reply}");

    // The other actor kept its worker, its program and its state; an operator
    // restart is not a crash.
    assert_eq!(processes(&sup, "other"), other);
    assert_eq!(c.call("other", "get", Value::Null).unwrap(), json!(["o"]));
    assert_eq!(sup.actor("other")["restarts"], 0);
    assert_eq!(
        sup.actor("ledger")["restarts"],
        0,
        "a reload is not a crash"
    );
}

// ------------------------------------------------------------------------------------
// The shipped examples (examples/python): their configs check, their actors run and
// keep their state through kill -9.

#[test]
fn the_python_examples_check_and_keep_their_state_through_kill_9() {
    require_python();
    for config in ["immortal", "worker"] {
        let path = repo().join(format!("examples/python/{config}.toml"));
        let out = crate::util::cli(&["check", "--config", path.to_str().expect("utf-8")], &[]);
        assert!(
            out.status.success(),
            "check {}: {}",
            path.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let example = |name: &str, script: &str| {
        let script = repo().join("examples/python").join(script);
        format!(
            "\n[[actor]]\nname = \"{name}\"\nkind = \"exec\"\ncommand = [\"python3\", {}]\nenv = {{ PYTHONPATH = {} }}\n",
            toml_str(script.to_str().expect("utf-8 path")),
            toml_str(python_dir().to_str().expect("utf-8 path"))
        )
    };
    let sup = start(&format!(
        "{FAST_RESTARTS}{}{}",
        example("words", "immortal.py"),
        example("bank", "worker.py")
    ));
    let mut c = sup.client();
    assert_eq!(
        c.call("words", "process", json!("the cat and the hat"))
            .unwrap(),
        json!(1)
    );
    assert_eq!(
        c.call("words", "process", json!("the end")).unwrap(),
        json!(2)
    );
    let deposit = |c: &mut Client, amount: i64| {
        c.call(
            "bank",
            "perform_task",
            json!({"account": "alice", "amount": amount}),
        )
    };
    assert_eq!(deposit(&mut c, 5).unwrap(), json!(5));
    let refused = deposit(&mut c, -9).unwrap_err();
    assert!(
        format!("{refused:?}").contains("ValueError: alice has 5 EUR"),
        "{refused:?}"
    );
    // The immortal actor has no checkpoint code of its own: the SDK's default state.
    c.checkpoint("words").unwrap();
    for name in ["words", "bank"] {
        let (w, p) = kill_program(&sup, name);
        wait_recovered(&sup, name, w, p);
    }
    let mut c = sup.client();
    assert_eq!(
        c.call("words", "top", json!(1)).unwrap(),
        json!([["the", 3]])
    );
    assert_eq!(c.call("bank", "balance", json!("alice")).unwrap(), json!(5));
}
