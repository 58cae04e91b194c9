//! The command line as an operator uses it: exit codes, human output and `--json`,
//! `status ACTOR`, `pid`, `stop` that waits, `call` arguments and `--timeout`,
//! `check FILE`, help texts, completions and man pages.

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::util::{Proc, Supervisor, cli, cli_expect};

const WAIT: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
[[actor]]
name = "kv"
kind = "kv"
heartbeat_timeout = "0s"

[[actor]]
name = "c"
kind = "counter"

[[actor]]
name = "fragile"
kind = "counter"
max_restarts = 0
"#;

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).trim_end().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `resurgam ARGS --socket SOCKET`, which must exit `code`; returns its stdout.
#[track_caller]
fn expect(sup: &Supervisor, args: &[&str], code: i32) -> String {
    let out = cli_expect(sup, args, code);
    // Usage errors are clap's (`error: …`); the others are ours.
    if code == 1 || code == 3 {
        assert!(
            stderr(&out).starts_with("resurgam: "),
            "resurgam {args:?}: no message on stderr: {:?}",
            stderr(&out)
        );
    }
    stdout(&out)
}

#[test]
fn client_commands_print_lines_for_people_and_json_with_json() {
    let sup = Supervisor::start(CONFIG);

    // call: negative numbers without `--`, bare words as strings, JSON as JSON.
    assert_eq!(expect(&sup, &["call", "c", "incr", "-5"], 0), "-5");
    assert_eq!(expect(&sup, &["call", "c", "incr", "7"], 0), "2");
    let put = r#"{"key":"city","value":"Oslo"}"#;
    assert_eq!(expect(&sup, &["call", "kv", "put", put], 0), "null");
    // `get` takes {"key": …}, so the bare word reaches it as the string "city".
    let out = expect(&sup, &["call", "kv", "get", "city"], 1);
    assert_eq!(out, "");
    let got = sup
        .client()
        .call("kv", "get", json!({"key": "city"}))
        .unwrap();
    assert_eq!(got, json!("Oslo"));

    // checkpoint
    let line = expect(&sup, &["checkpoint", "c"], 0);
    assert!(
        line.starts_with("checkpointed c: generation ") && line.contains("last_seq 2"),
        "{line}"
    );
    let v: Value = serde_json::from_str(&expect(&sup, &["checkpoint", "c", "--json"], 0))
        .expect("checkpoint --json is JSON");
    assert_eq!(v["last_seq"], 2, "{v}");

    // reload (nothing changed in the file)
    assert_eq!(expect(&sup, &["reload"], 0), "reloaded: nothing changed");
    let v: Value = serde_json::from_str(&expect(&sup, &["reload", "--json"], 0)).unwrap();
    assert_eq!(v["added"], json!([]), "{v}");

    // restart
    let old = sup.actor_pid("c").expect("c ALIVE");
    assert_eq!(expect(&sup, &["restart", "c"], 0), "restarting c");
    let new = sup.wait_new_pid("c", old, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);
    let v: Value = serde_json::from_str(&expect(&sup, &["restart", "c", "--json"], 0)).unwrap();
    assert_eq!(v, json!({"restarting": "c"}));
    let new = sup.wait_new_pid("c", new, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);

    // pid
    assert_eq!(expect(&sup, &["pid", "c"], 0), new.to_string());
    assert_eq!(expect(&sup, &["pid"], 0), sup.pid().to_string());
    let v: Value = serde_json::from_str(&expect(&sup, &["pid", "c", "--json"], 0)).unwrap();
    assert_eq!(v, json!({"pid": new}));
    expect(&sup, &["pid", "c", "--program"], 1);
    expect(&sup, &["pid", "ghost"], 1);

    // A DEAD actor: its reason in the table, in `status ACTOR`; `pid` has none to print.
    expect(&sup, &["call", "fragile", "crash"], 1);
    let dead = sup.wait_state("fragile", "DEAD", WAIT);
    let reason = dead["dead_reason"]
        .as_str()
        .expect("a DEAD actor has a reason");
    let table = expect(&sup, &["status"], 0);
    let lines: Vec<&str> = table.lines().collect();
    assert!(
        lines[0].starts_with(&format!("supervisor pid {} running, up ", sup.pid())),
        "{table}"
    );
    assert!(
        !lines[0].contains(" ms"),
        "uptime in raw milliseconds: {table}"
    );
    let row = lines
        .iter()
        .position(|l| l.starts_with("fragile "))
        .unwrap_or_else(|| panic!("no row for fragile: {table}"));
    assert!(lines[row].contains("DEAD"), "{table}");
    assert_eq!(lines[row + 1], format!("  DEAD: {reason}"), "{table}");
    for name in ["c ", "kv "] {
        assert!(lines.iter().any(|l| l.starts_with(name)), "{table}");
    }
    let details = expect(&sup, &["status", "fragile"], 0);
    assert!(details.starts_with("fragile\n"), "{details}");
    for want in [
        "state".to_string(),
        "DEAD".to_string(),
        reason.to_string(),
        "restarts".to_string(),
        "last exit".to_string(),
        "checkpoint".to_string(),
    ] {
        assert!(details.contains(&want), "no {want:?} in:\n{details}");
    }
    let v: Value =
        serde_json::from_str(&expect(&sup, &["status", "fragile", "--json"], 0)).unwrap();
    assert_eq!(v["name"], "fragile");
    assert_eq!(v["dead_reason"], reason);
    let msg = stderr(&cli(
        &["pid", "fragile", "--socket", sup.socket.to_str().unwrap()],
        &[],
    ));
    assert!(msg.contains("DEAD"), "{msg}");
    expect(&sup, &["status", "ghost"], 1);
}

#[test]
fn exit_codes_tell_unreachable_from_refused_from_usage() {
    let sup = Supervisor::start(CONFIG);
    // 1: the supervisor answered with an error.
    expect(&sup, &["call", "ghost", "get"], 1);
    expect(&sup, &["call", "c", "incr", r#""x""#], 1);
    // 2: usage (clap's), and arguments that are neither JSON nor a bare word.
    expect(&sup, &["call", "c"], 2);
    expect(&sup, &["status", "--no-such-flag"], 2);
    expect(&sup, &["call", "c", "incr", "{oops"], 2);
    expect(&sup, &["call", "c", "incr", "--timeout", "soon"], 2);
    // 3: nobody listening on that socket.
    let missing = sup.dir().join("missing.sock");
    for args in [
        &["status"][..],
        &["call", "c", "get"],
        &["stop"],
        &["reload"],
        &["pid"],
    ] {
        let mut argv = args.to_vec();
        argv.extend(["--socket", missing.to_str().unwrap()]);
        let out = cli(&argv, &[]);
        assert_eq!(out.status.code(), Some(3), "{argv:?}: {}", stderr(&out));
        assert!(
            stderr(&out).contains("cannot reach the supervisor"),
            "{argv:?}: {}",
            stderr(&out)
        );
    }
    // The codes are documented in --help.
    let help = stdout(&cli(&["--help"], &[]));
    assert!(help.contains("Exit codes:"), "{help}");
    assert!(
        help.contains("3  the supervisor cannot be reached"),
        "{help}"
    );
}

#[test]
fn call_timeout_gives_up_on_a_hung_worker() {
    let sup = Supervisor::start(CONFIG);
    let pid = sup.actor_pid("kv").expect("kv ALIVE");
    let worker = Proc::of(pid).expect("worker running");
    assert!(worker.signal(Signal::SIGSTOP));
    sup.wait_until("the worker to be stopped", WAIT, || {
        matches!(crate::util::proc_stat(pid), Some(('T' | 't', _, _)))
    });
    let socket = sup.socket.to_str().unwrap();
    let out = cli(
        &[
            "call",
            "--timeout",
            "300ms",
            "kv",
            "len",
            "--socket",
            socket,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(3), "stderr: {}", stderr(&out));
    assert!(
        stderr(&out).contains("no reply from the supervisor within 300ms"),
        "{}",
        stderr(&out)
    );
    // The call was accepted all the same: it is answered once the worker goes on.
    assert!(worker.signal(Signal::SIGCONT));
    assert_eq!(expect(&sup, &["call", "kv", "len"], 0), "0");
}

#[test]
fn stop_waits_until_the_supervisor_has_exited() {
    let sup = Supervisor::start(CONFIG);
    let pid = sup.pid();
    let line = expect(&sup, &["stop"], 0);
    assert_eq!(line, format!("the supervisor (pid {pid}) has stopped"));
    // Returned only once the process had exited (it is a zombie until reaped).
    assert!(Proc::of(pid).is_none(), "pid {pid} still running");
    assert_eq!(sup.wait_exit(WAIT).code(), Some(0));

    // --no-wait: returns at once; --json keeps the old reply's keys.
    let sup = Supervisor::start(CONFIG);
    let pid = sup.pid();
    let v: Value =
        serde_json::from_str(&expect(&sup, &["stop", "--no-wait", "--json"], 0)).unwrap();
    assert_eq!(v["stopping"], true, "{v}");
    assert_eq!(v["pid"], pid, "{v}");
    assert_eq!(v["stopped"], false, "{v}");
    assert_eq!(sup.wait_exit(WAIT).code(), Some(0));
}

#[test]
fn check_takes_the_file_as_an_argument() {
    let sup = Supervisor::start(CONFIG);
    let path = sup.config_path.to_str().unwrap();
    for argv in [&["check", path][..], &["check", "--config", path]] {
        let out = cli(argv, &[]);
        assert!(out.status.success(), "{argv:?}: {}", stderr(&out));
        assert!(stdout(&out).contains(": OK (3 actors"), "{}", stdout(&out));
    }
    let bad = sup.dir().join("bad.toml");
    std::fs::write(&bad, "[[actor]]\nname = 5\n").unwrap();
    let out = cli(&["check", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("bad.toml:2"), "{}", stderr(&out));
}

#[test]
fn completions_and_man_pages_come_from_the_cli_definition() {
    for shell in ["bash", "zsh", "fish", "elvish", "powershell"] {
        let out = cli(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", stderr(&out));
        let script = stdout(&out);
        for sub in ["status", "checkpoint", "completions"] {
            assert!(script.contains(sub), "{shell} completions lack {sub}");
        }
    }
    let out = cli(&["completions", "tcsh"], &[]);
    assert_eq!(out.status.code(), Some(2));

    let page = stdout(&cli(&["man"], &[]));
    assert!(page.contains(".TH resurgam 1"), "{page}");
    assert!(page.contains("Exit codes"), "{page}");
    let dir = tempfile::tempdir().unwrap();
    let out = cli(&["man", "--dir", dir.path().to_str().unwrap()], &[]);
    assert!(out.status.success(), "{}", stderr(&out));
    for page in ["resurgam.1", "resurgam-status.1", "resurgam-call.1"] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}: {text}");
    }
}
