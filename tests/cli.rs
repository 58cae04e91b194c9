//! The command line as an operator uses it: exit codes, human output and `--json`,
//! `status ACTOR`, `pid`, `stop` that waits, `call` arguments and `--timeout`,
//! `check FILE`, help texts, completions and man pages.

use std::process::Output;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::{Value, json};

use crate::util::{KillOnDrop, Proc, Supervisor, cli, cli_expect};

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

#[test]
fn stop_actor_stops_only_that_actor_until_start_and_a_reload_keeps_it_stopped() {
    let sup = Supervisor::start(CONFIG);
    let sup_pid = sup.pid();
    assert_eq!(expect(&sup, &["call", "c", "incr", "5"], 0), "5");
    let worker = sup.worker_pid("c").expect("c has a worker");

    // Returns once the worker has stopped after its final checkpoint.
    let line = expect(&sup, &["stop", "c"], 0);
    assert!(
        line.starts_with("stopped c (final checkpoint: generation ") && line.contains("last_seq 1"),
        "{line}"
    );
    assert!(Proc::of(worker).is_none(), "worker {worker} still runs");
    assert_eq!(sup.actor("c")["state"], "STOPPED");
    assert_eq!(sup.actor("c")["pid"], Value::Null);
    // Calls (and checkpoints) get ActorStopped, exit 1; `pid` has none; the rest runs on.
    let socket = sup.socket.to_str().unwrap();
    for args in [&["call", "c", "get"][..], &["checkpoint", "c"]] {
        let out = cli(&[args, &["--socket", socket]].concat(), &[]);
        assert_eq!(out.status.code(), Some(1), "{args:?}");
        assert!(
            stderr(&out).contains("ActorStopped") && stderr(&out).contains("resurgam start c"),
            "{args:?}: {}",
            stderr(&out)
        );
    }
    let msg = stderr(&cli(&["pid", "c", "--socket", socket], &[]));
    assert!(msg.contains("state STOPPED"), "{msg}");
    let reply = sup.client().pid(Some("c")).unwrap();
    assert_eq!(reply["state"], "STOPPED", "{reply}");
    assert_eq!(reply["pid"], Value::Null, "{reply}");
    assert_eq!(expect(&sup, &["call", "kv", "len"], 0), "0");
    assert_eq!(sup.pid(), sup_pid);

    // A reload keeps it stopped; a second stop is answered at once.
    assert_eq!(expect(&sup, &["reload"], 0), "reloaded: nothing changed");
    assert_eq!(sup.actor("c")["state"], "STOPPED");
    let v: Value = serde_json::from_str(&expect(&sup, &["stop", "c", "--json"], 0)).unwrap();
    assert_eq!(v["state"], "STOPPED", "{v}");
    assert_eq!(v["checkpoint"]["last_seq"], 1, "{v}");
    // `stop --no-wait` is for the supervisor only.
    expect(&sup, &["stop", "c", "--no-wait"], 2);

    // Started again from its final checkpoint; waits until ALIVE.
    let line = expect(&sup, &["start", "c"], 0);
    let pid = sup.worker_pid("c").expect("c ALIVE");
    assert_eq!(line, format!("started c (ALIVE, pid {pid})"));
    assert_eq!(expect(&sup, &["call", "c", "get"], 0), "5");
    let line = expect(&sup, &["start", "c"], 0);
    assert_eq!(line, format!("c was already running (ALIVE, pid {pid})"));
    let v: Value = serde_json::from_str(&expect(&sup, &["start", "c", "--json"], 0)).unwrap();
    assert_eq!(v["pid"], pid, "{v}");
    expect(&sup, &["start", "ghost"], 1);
    expect(&sup, &["stop", "ghost"], 1);

    // Not kept across a supervisor restart: the config says which actors run (as a
    // unit stopped with `systemctl stop` starts again at boot).
    expect(&sup, &["stop", "c"], 0);
    sup.restart_same_dirs();
    assert_eq!(sup.actor("c")["state"], "ALIVE");
    assert_eq!(expect(&sup, &["call", "c", "get"], 0), "5");
}

/// A `resurgam run --config FILE` started in `cwd` (no paths in the file: its state
/// goes where `run` puts it by default); killed when dropped, and its workers with it
/// (PR_SET_PDEATHSIG).
struct RunIn {
    _child: KillOnDrop,
    log: std::path::PathBuf,
}

impl RunIn {
    fn start(cwd: &std::path::Path, config: &std::path::Path) -> RunIn {
        let log = cwd.join("run.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = crate::util::resurgam_cmd(&["run", "--config", config.to_str().unwrap()]);
        let child = cmd
            .current_dir(cwd)
            .stdin(std::process::Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .expect("spawn resurgam run");
        RunIn {
            _child: KillOnDrop(child),
            log,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

/// `resurgam ARGS` run in `cwd` with a clean environment.
fn cli_in(cwd: &std::path::Path, args: &[&str]) -> Output {
    let mut cmd = crate::util::resurgam_cmd(args);
    cmd.current_dir(cwd);
    crate::util::run_with_timeout(cmd, WAIT)
}

#[test]
fn the_cli_finds_the_socket_of_a_config_from_another_directory() {
    let root = tempfile::tempdir().unwrap();
    let (conf_dir, elsewhere) = (root.path().join("conf"), root.path().join("elsewhere"));
    std::fs::create_dir(&conf_dir).unwrap();
    std::fs::create_dir(&elsewhere).unwrap();
    let config = conf_dir.join("demo.toml");
    std::fs::write(
        &config,
        "[supervisor]\ndurability = \"memory\"\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
    )
    .unwrap();
    let config_arg = config.to_str().unwrap();

    // `check` names the socket `run` started here would use, absolute, and the service's.
    let out = cli_in(&conf_dir, &["check", config_arg]);
    let socket = conf_dir.join("resurgam-state/run/control.sock");
    assert!(
        stdout(&out).contains(&format!("socket {})", socket.display())),
        "{}",
        stdout(&out)
    );
    assert!(
        stdout(&out).contains("/run/resurgam/control.sock"),
        "{}",
        stdout(&out)
    );

    // `run` started in the file's directory keeps its state there by default.
    let run = RunIn::start(&conf_dir, &config);
    let deadline = std::time::Instant::now() + WAIT;
    while !cli_in(&conf_dir, &["call", "c", "incr", "2"])
        .status
        .success()
    {
        assert!(
            std::time::Instant::now() < deadline,
            "not serving: {}",
            run.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // From another directory, --config finds it beside the file; without it, nothing
    // is found, and the error says where it looked.
    let out = cli_in(&elsewhere, &["call", "c", "get", "--config", config_arg]);
    assert_eq!(stdout(&out), "2", "{}", stderr(&out));
    let out = cli_in(&elsewhere, &["status"]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).contains("resurgam-state/run/control.sock")
            && stderr(&out).contains("also tried /run/resurgam/control.sock"),
        "{}",
        stderr(&out)
    );
    // A path the file sets is relative to the file, wherever the client runs.
    let moved = conf_dir.join("moved.toml");
    std::fs::write(
        &moved,
        "[supervisor]\nstate_dir = \"resurgam-state\"\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
    )
    .unwrap();
    let out = cli_in(
        &elsewhere,
        &["call", "c", "get", "--config", moved.to_str().unwrap()],
    );
    assert_eq!(stdout(&out), "2", "{}", stderr(&out));
}

#[test]
fn a_long_replay_shows_its_progress_in_status_and_the_log() {
    // `hang` with a marker hangs only when the marker file is missing: present for the
    // first run, removed before the replay, which then stops at that call.
    let marker_dir = tempfile::tempdir().unwrap();
    let marker = marker_dir.path().join("marker");
    std::fs::write(&marker, b"").unwrap();
    let sup = crate::exec::start(&crate::exec::python_actor(
        "m",
        "misbehave.py",
        "heartbeat_timeout = \"0s\"\ncheckpoint_every = 0\ncheckpoint_interval = \"0s\"",
    ));
    let mut c = sup.client();
    for _ in 0..10 {
        c.call("m", "add", json!(1)).unwrap();
    }
    assert_eq!(
        c.call("m", "hang", json!({"marker": marker})).unwrap(),
        json!(10)
    );
    for _ in 0..5 {
        c.call("m", "add", json!(1)).unwrap();
    }
    std::fs::remove_file(&marker).unwrap();
    sup.kill_worker("m");

    // No checkpoint: all 16 calls are replayed, and the replay stops at `hang`.
    sup.wait_until("the replay to start", WAIT, || {
        sup.actor("m")["replay"]["total"] == 16
    });
    let replay = sup.actor("m")["replay"].clone();
    let done = replay["done"].as_u64().expect("done");
    assert!(done < 16, "{replay}");
    let table = expect(&sup, &["status"], 0);
    assert!(
        table.contains(&format!("\n  replaying {done}/16")),
        "{table}"
    );
    let details = expect(&sup, &["status", "m"], 0);
    assert!(
        details.contains(&format!("replaying {done}/16")),
        "{details}"
    );
    // A line in the log every few seconds while it runs.
    sup.wait_until("a replay progress line", WAIT, || {
        sup.log()
            .lines()
            .any(|l| l.contains("replaying calls") && l.contains("total=16"))
    });

    // The marker exists now: the next worker's replay gets through.
    sup.kill_worker("m");
    sup.wait_until("the replay to finish", WAIT, || {
        let m = sup.actor("m");
        m["state"] == "ALIVE" && m["replay"].is_null() && m["replayed"] == 16
    });
    assert_eq!(c.call("m", "get", Value::Null).unwrap(), json!(15));
}

#[test]
fn status_actor_shows_methods_exits_rate_and_file_sizes() {
    let sup = Supervisor::start(
        "[supervisor]\ndurability = \"log\"\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
    );
    let mut c = sup.client();
    for _ in 0..200 {
        c.call("c", "incr", json!(1)).unwrap();
    }
    expect(&sup, &["checkpoint", "c"], 0);
    let old = sup.kill_worker("c");
    sup.wait_new_pid("c", old, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);

    let v: Value = serde_json::from_str(&expect(&sup, &["status", "c", "--json"], 0)).unwrap();
    assert_eq!(v["methods"], json!(["incr", "get", "crash"]), "{v}");
    let exit = v["last_exits"][0]["exit"].as_str().unwrap_or_default();
    assert!(exit.contains("SIGKILL"), "{v}");
    assert!(v["last_exits"][0]["ago_ms"].is_u64(), "{v}");
    assert!(v["files"]["log_bytes"].as_u64() > Some(0), "{v}");
    assert!(v["files"]["disk_copy_bytes"].as_u64() > Some(0), "{v}");
    assert!(v["calls_per_s"].as_f64() > Some(0.0), "{v}");

    let details = expect(&sup, &["status", "c"], 0);
    let line = |label: &str| {
        details
            .lines()
            .find(|l| l.starts_with(&format!("  {label}  ")))
            .unwrap_or_else(|| panic!("no {label:?} line in:\n{details}"))
            .to_string()
    };
    assert!(line("methods").ends_with(" incr, get, crash"), "{details}");
    assert!(
        line("last exits").contains("killed by SIGKILL ("),
        "{details}"
    );
    assert!(line("last exits").ends_with(" ago)"), "{details}");
    assert!(line("files").contains(" on disk (mmap file "), "{details}");
    assert!(line("files").contains(", call log "), "{details}");
    line("calls per s");
    let table = expect(&sup, &["status"], 0);
    assert!(table.contains("  CALLS/S  "), "{table}");
}
