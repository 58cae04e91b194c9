//! systemd (G5, G9): the shipped unit `systemd/resurgam.service`, sandbox
//! included, run by a real systemd booted as PID 1 of private namespaces (`systemd/ns.rs`,
//! `systemd/boot_ns.sh`). A test drop-in only points ExecStart at the binary under test,
//! shortens the watchdog and the timeouts, and sends the logs to a file.
//!
//! One namespace, one test function, in steps (each bounded, each polling):
//! (a) `systemctl start` returns (Type=notify: on READY=1) with every actor ALIVE;
//! (b) `kill -9` of a worker is resurgam's business: the unit stays active, NRestarts 0;
//! (e) `systemctl reload` (SIGHUP) applies a changed config: an added actor appears;
//! (c) SIGSTOP of the supervisor: systemd's watchdog kills and restarts it, state survives;
//! (d) `systemctl stop`: Result=success, exit 0, no process of the unit left; a new start
//!     restores the state;
//! (f) with the output on the journal: native entries, `journalctl -p warning` picks out
//!     a worker's death, `RESURGAM_ACTOR=counter` selects that actor's lines.
//!
//! Needs root, unshare/nsenter and systemd; otherwise it prints "SKIPPED: <reason>".
//! `.ci/run` installs systemd when it is missing.

mod ns;

use std::collections::HashMap;
use std::fs;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use ns::{Namespace, PAYLOAD_DIR};

/// The unit as shipped.
const UNIT: &str = include_str!("../systemd/resurgam.service");
const UNIT_NAME: &str = "resurgam.service";
/// The example config as shipped.
const EXAMPLE_CONFIG: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../systemd/resurgam.toml");
/// The binary under test.
const BIN: &str = env!("CARGO_BIN_EXE_resurgam");
/// The control socket under the unit's RuntimeDirectory=resurgam.
const SOCKET: &str = "/run/resurgam/control.sock";
/// The unit's watchdog in the test drop-in.
const WATCHDOG: &str = "3s";

/// The test's changes to the shipped unit. DefaultDependencies=no keeps the host's
/// sysinit.target (and its units) out of the namespace.
const DROP_IN: &str = "\
[Unit]
DefaultDependencies=no

[Service]
ExecStart=
ExecStart=/run/resurgam-test/resurgam run --config /run/resurgam-test/resurgam.toml
WatchdogSec=3s
RestartSec=200ms
TimeoutStartSec=20s
TimeoutStopSec=20s
StandardOutput=append:/run/resurgam-test/resurgam.log
StandardError=append:/run/resurgam-test/resurgam.log
Environment=NO_COLOR=1
LimitCORE=0
# Records how each run ended (`+`: outside the sandbox, which makes /run read-only).
ExecStopPost=+/bin/sh -c 'echo \"$$SERVICE_RESULT $$EXIT_CODE $$EXIT_STATUS\" >> /run/resurgam-test/results'
";

const CONFIG: &str = r#"
[supervisor]
durability = "log"
shutdown_timeout = "10s"

[defaults]
checkpoint_every = 1

[[actor]]
name = "counter"
kind = "counter"

[[actor]]
name = "store"
kind = "kv"
"#;

/// CONFIG plus one actor, for the reload step.
const CONFIG_RELOADED: &str = r#"
[supervisor]
durability = "log"
shutdown_timeout = "10s"

[defaults]
checkpoint_every = 1

[[actor]]
name = "counter"
kind = "counter"

[[actor]]
name = "store"
kind = "kv"

[[actor]]
name = "extra"
kind = "counter"
"#;

/// Bound of one systemctl or CLI command.
const CMD_TIMEOUT: Duration = Duration::from_secs(60);
/// Bound of one wait for a state.
const WAIT: Duration = Duration::from_secs(30);

/// The namespace plus the staging directory it was booted from.
struct Harness {
    // Field order: the namespace is torn down before the staging dir is removed.
    ns: Namespace,
    _staging: tempfile::TempDir,
}

impl Harness {
    fn boot() -> Harness {
        let staging = tempfile::Builder::new()
            .prefix("resurgam-systemd-")
            .tempdir()
            .expect("tempdir");
        let payload = staging.path().join("payload");
        let units = staging.path().join("units");
        fs::create_dir_all(&payload).expect("mkdir payload");
        fs::create_dir_all(units.join("resurgam.service.d")).expect("mkdir units");
        fs::copy(BIN, payload.join("resurgam")).expect("copy binary");
        fs::write(payload.join("resurgam.toml"), CONFIG).expect("write config");
        fs::write(units.join(UNIT_NAME), UNIT).expect("write unit");
        fs::write(units.join("resurgam.service.d/test.conf"), DROP_IN).expect("write drop-in");
        let ns = Namespace::boot(staging.path()).unwrap_or_else(|e| panic!("{e}"));
        Harness {
            ns,
            _staging: staging,
        }
    }

    /// Panics with `msg` and everything that helps: systemctl status, resurgam's log,
    /// systemd's console.
    fn fail(&self, msg: &str) -> ! {
        let status = self
            .ns
            .try_exec(
                &[
                    "systemctl",
                    "status",
                    UNIT_NAME,
                    "--no-pager",
                    "-l",
                    "-n",
                    "0",
                ],
                Duration::from_secs(10),
            )
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_else(|e| e);
        let log = fs::read_to_string(self.ns.host_path(&format!("{PAYLOAD_DIR}/resurgam.log")))
            .unwrap_or_else(|e| format!("(no log: {e})"));
        panic!(
            "{msg}\n--- systemctl status\n{status}\n--- resurgam log (tail)\n{}\n--- systemd console (tail)\n{}",
            ns::tail(&log, 40),
            self.ns.console_tail()
        );
    }

    fn exec(&self, args: &[&str]) -> Output {
        self.ns
            .try_exec(args, CMD_TIMEOUT)
            .unwrap_or_else(|e| self.fail(&e))
    }

    /// `systemctl ARGS`, which must succeed.
    fn systemctl(&self, args: &[&str]) {
        let mut full = vec!["systemctl", "--no-pager"];
        full.extend_from_slice(args);
        let out = self.exec(&full);
        if !out.status.success() {
            self.fail(&format!(
                "systemctl {args:?} failed ({}): {}{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }

    /// Properties of the unit (`systemctl show -p …`).
    fn show(&self, props: &[&str]) -> HashMap<String, String> {
        let mut args = vec!["systemctl", "show", UNIT_NAME, "--no-pager"];
        for p in props {
            args.push("-p");
            args.push(p);
        }
        let out = self.exec(&args);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| l.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn prop(&self, name: &str) -> String {
        self.show(&[name]).remove(name).unwrap_or_default()
    }

    /// The resurgam CLI inside the namespace, on the service's control socket.
    fn cli(&self, args: &[&str]) -> Output {
        let bin = format!("{PAYLOAD_DIR}/resurgam");
        let mut full = vec!["env", "NO_COLOR=1", bin.as_str()];
        full.extend_from_slice(args);
        full.extend_from_slice(&["--socket", SOCKET]);
        self.exec(&full)
    }

    fn call(&self, actor: &str, method: &str, args: Option<Value>) -> Value {
        let json_args = args.map(|a| a.to_string());
        let mut argv = vec!["call", actor, method];
        if let Some(a) = &json_args {
            argv.push(a);
        }
        let out = self.cli(&argv);
        if !out.status.success() {
            self.fail(&format!(
                "resurgam call {actor} {method} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            self.fail(&format!(
                "call {actor} {method}: not JSON ({e}): {:?}",
                String::from_utf8_lossy(&out.stdout)
            ))
        })
    }

    /// `resurgam call …` must answer `want`.
    fn expect_call(&self, actor: &str, method: &str, args: Option<Value>, want: Value) {
        let got = self.call(actor, method, args.clone());
        if got != want {
            self.fail(&format!(
                "call {actor} {method} {args:?} answered {got}, expected {want}"
            ));
        }
    }

    /// `resurgam status --json`, or None while the supervisor does not answer.
    fn try_status(&self) -> Option<Value> {
        let out = self.cli(&["status", "--json"]);
        if !out.status.success() {
            return None;
        }
        serde_json::from_slice(&out.stdout).ok()
    }

    fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|| self.fail("resurgam status --json failed"))
    }

    /// Polls `cond` until it holds, at most `timeout`.
    fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        while !cond() {
            if Instant::now() >= deadline {
                self.fail(&format!("timed out after {timeout:?} waiting for {what}"));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Namespace pids of every process in the unit's control group.
    fn unit_pids(&self) -> Vec<i32> {
        let out = self.exec(&[
            "sh",
            "-c",
            "grep -ls '/system.slice/resurgam.service$' /proc/[0-9]*/cgroup || true",
        ]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.strip_prefix("/proc/")?
                    .strip_suffix("/cgroup")?
                    .parse()
                    .ok()
            })
            .collect()
    }

    /// How each run of the unit ended so far: "$SERVICE_RESULT $EXIT_CODE $EXIT_STATUS"
    /// lines written by the drop-in's ExecStopPost=.
    fn results(&self) -> Vec<String> {
        fs::read_to_string(self.ns.host_path(&format!("{PAYLOAD_DIR}/results")))
            .unwrap_or_default()
            .lines()
            .map(str::to_string)
            .collect()
    }

    /// `kill -9` of the counter actor's worker; returns once resurgam has restarted it and
    /// every actor in `actors` is ALIVE. Returns the killed pid.
    fn kill_counter_worker(&self, actors: &[&str]) -> i64 {
        let old = pid_of(&self.status(), "counter");
        let out = self.exec(&["kill", "-KILL", &old.to_string()]);
        if !out.status.success() {
            self.fail(&format!("kill -9 {old}: {out:?}"));
        }
        self.wait_until("the counter worker to be restarted", WAIT, || {
            self.try_status().is_some_and(|st| {
                all_alive(&st, actors)
                    && pid_of(&st, "counter") != old
                    && actor(&st, "counter").is_some_and(|a| a["restarts"].as_i64() >= Some(1))
            })
        });
        old
    }

    /// The unit's journal entries (`journalctl -u resurgam -o json ARGS`), one object each.
    fn journal(&self, args: &[&str]) -> Vec<Value> {
        let mut full = vec!["journalctl", "--no-pager", "-o", "json", "-u", UNIT_NAME];
        full.extend_from_slice(args);
        let out = self.exec(&full);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| serde_json::from_str(l).ok())
            .collect()
    }

    /// Writes `text` into the namespace at `path`, atomically.
    fn write_file(&self, path: &str, text: &str) {
        let host = self.ns.host_path(path);
        let tmp = host.with_extension("tmp");
        fs::write(&tmp, text)
            .and_then(|()| fs::rename(&tmp, &host))
            .unwrap_or_else(|e| self.fail(&format!("write {}: {e}", host.display())));
    }
}

/// The actor called `name` in a status reply.
fn actor<'a>(status: &'a Value, name: &str) -> Option<&'a Value> {
    status["actors"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == name)
}

fn all_alive(status: &Value, names: &[&str]) -> bool {
    status["actors"].as_array().map(Vec::len) == Some(names.len())
        && names
            .iter()
            .all(|n| actor(status, n).is_some_and(|a| a["state"] == "ALIVE"))
}

fn pid_of(status: &Value, name: &str) -> i64 {
    actor(status, name)
        .and_then(|a| a["pid"].as_i64())
        .unwrap_or(-1)
}

#[test]
fn resurgam_service_under_systemd() {
    if let Some(why) = ns::skip_reason() {
        crate::util::skip(&why);
        return;
    }
    let t0 = Instant::now();
    let h = Harness::boot();
    let booted = t0.elapsed();

    // (a) Type=notify: `systemctl start` returns once READY=1 arrived, and resurgam
    // sends it only when every actor serves: the first status after it is all ALIVE.
    let t = Instant::now();
    h.systemctl(&["start", UNIT_NAME]);
    let started = t.elapsed();
    let st = h.status();
    if !all_alive(&st, &["counter", "store"]) {
        h.fail(&format!(
            "service active before every actor was ALIVE: {st}"
        ));
    }
    let p = h.show(&[
        "Type",
        "ActiveState",
        "SubState",
        "NRestarts",
        "MainPID",
        "WatchdogUSec",
        "StatusText",
    ]);
    let expect = |k: &str, v: &str| {
        if p.get(k).map(String::as_str) != Some(v) {
            h.fail(&format!(
                "after start: {k} = {:?}, expected {v:?} ({p:?})",
                p.get(k)
            ));
        }
    };
    expect("Type", "notify");
    expect("ActiveState", "active");
    expect("SubState", "running");
    expect("NRestarts", "0");
    expect("WatchdogUSec", WATCHDOG);
    expect("MainPID", &st["supervisor"]["pid"].to_string());
    if p.get("StatusText").is_none_or(String::is_empty) {
        h.fail("no STATUS= line from resurgam (StatusText is empty)");
    }
    let main_pid = p["MainPID"].clone();

    // (b) kill -9 of a worker: resurgam restarts it from its checkpoint; systemd sees
    // nothing (the unit stays active, NRestarts 0, same main process).
    h.expect_call("counter", "incr", Some(json!(5)), json!(5));
    h.expect_call("counter", "incr", Some(json!(2)), json!(7));
    h.expect_call(
        "store",
        "put",
        Some(json!({"key": "city", "value": "Oslo"})),
        Value::Null,
    );
    h.kill_counter_worker(&["counter", "store"]);
    h.expect_call("counter", "get", None, json!(7));
    h.expect_call("store", "get", Some(json!({"key": "city"})), json!("Oslo"));
    let p = h.show(&["ActiveState", "NRestarts", "MainPID"]);
    if p["ActiveState"] != "active" || p["NRestarts"] != "0" || p["MainPID"] != main_pid {
        h.fail(&format!("a worker crash reached systemd: {p:?}"));
    }

    // (e) `systemctl reload` = SIGHUP: the changed config is applied by the same process.
    h.write_file(&format!("{PAYLOAD_DIR}/resurgam.toml"), CONFIG_RELOADED);
    h.systemctl(&["reload", UNIT_NAME]);
    h.wait_until("the added actor after reload", WAIT, || {
        h.try_status()
            .is_some_and(|st| all_alive(&st, &["counter", "store", "extra"]))
    });
    h.wait_until("the unit to be active after reload", WAIT, || {
        h.prop("ActiveState") == "active"
    });
    let p = h.show(&["NRestarts", "MainPID"]);
    if p["NRestarts"] != "0" || p["MainPID"] != main_pid {
        h.fail(&format!("reload restarted the service: {p:?}"));
    }
    h.expect_call("extra", "incr", None, json!(1));
    h.expect_call("counter", "get", None, json!(7));

    // (c) SIGSTOP of the supervisor: no more WATCHDOG=1, so systemd kills it (SIGABRT)
    // and restarts it (Restart=on-failure); the new one restores every actor.
    h.expect_call("counter", "incr", Some(json!(1)), json!(8));
    let out = h.cli(&["checkpoint", "counter"]);
    if !out.status.success() {
        h.fail(&format!("resurgam checkpoint counter: {out:?}"));
    }
    h.expect_call("counter", "incr", Some(json!(10)), json!(18));
    let before = h.unit_pids();
    let t = Instant::now();
    let out = h.exec(&["kill", "-STOP", &main_pid]);
    if !out.status.success() {
        h.fail(&format!("kill -STOP {main_pid}: {out:?}"));
    }
    h.wait_until("the watchdog to restart the service", WAIT, || {
        let p = h.show(&["ActiveState", "NRestarts", "MainPID"]);
        p["NRestarts"] == "1"
            && p["ActiveState"] == "active"
            && p["MainPID"] != main_pid
            && p["MainPID"] != "0"
    });
    let watchdog_restart = t.elapsed();
    let st = h.status();
    if !all_alive(&st, &["counter", "store", "extra"]) {
        h.fail(&format!(
            "not every actor ALIVE after the watchdog restart: {st}"
        ));
    }
    h.expect_call("counter", "get", None, json!(18));
    h.expect_call("store", "get", Some(json!({"key": "city"})), json!("Oslo"));
    h.expect_call("extra", "get", None, json!(1));
    let leftovers: Vec<i32> = h
        .unit_pids()
        .into_iter()
        .filter(|p| before.contains(p))
        .collect();
    if !leftovers.is_empty() {
        h.fail(&format!(
            "processes of the stopped supervisor survived its watchdog kill: {leftovers:?}"
        ));
    }
    // The restart was the watchdog's doing (SIGABRT), not a crash.
    if h.results() != ["watchdog killed ABRT"] {
        h.fail(&format!(
            "expected one run ended by the watchdog, got {:?}",
            h.results()
        ));
    }

    // (d) `systemctl stop`: SIGTERM, graceful shutdown, exit 0, nothing left behind;
    // RuntimeDirectoryPreserve=yes keeps the memory-mapped checkpoints.
    let before = h.unit_pids();
    // Supervisor, 3 workers, and the standby workers (started ahead of need).
    if before.len() < 4 {
        h.fail(&format!(
            "expected supervisor + 3 workers (+ standby workers) in the unit, found {before:?}"
        ));
    }
    let t = Instant::now();
    h.systemctl(&["stop", UNIT_NAME]);
    let stopped = t.elapsed();
    let p = h.show(&["ActiveState", "Result", "ExecMainCode", "ExecMainStatus"]);
    if p["ActiveState"] != "inactive" || p["Result"] != "success" || p["ExecMainStatus"] != "0" {
        h.fail(&format!("unclean stop: {p:?}"));
    }
    if h.results().last().map(String::as_str) != Some("success exited 0") {
        h.fail(&format!(
            "the stop did not end in success/exit 0: {:?}",
            h.results()
        ));
    }
    let left = h.unit_pids();
    if !left.is_empty() {
        h.fail(&format!("processes left after stop: {left:?}"));
    }
    if !h.ns.host_path("/run/resurgam/counter.ckpt").exists() {
        h.fail("RuntimeDirectoryPreserve=yes: /run/resurgam/counter.ckpt is gone after stop");
    }

    // A new start restores the state (same StateDirectory / RuntimeDirectory).
    h.systemctl(&["start", UNIT_NAME]);
    h.expect_call("counter", "get", None, json!(18));
    h.expect_call("extra", "get", None, json!(1));
    h.systemctl(&["stop", UNIT_NAME]);
    if h.prop("Result") != "success" || h.results().len() != 3 {
        h.fail(&format!("second stop was not clean: {:?}", h.results()));
    }

    // (f) With its output on the journal (as shipped: the test drop-in had sent it to a
    // file), resurgam writes native journal entries: a worker's death is a warning that
    // `journalctl -p warning` picks out, and RESURGAM_ACTOR=… selects one actor.
    h.systemctl(&[
        "start",
        "systemd-journald.socket",
        "systemd-journald.service",
    ]);
    h.write_file(
        "/run/systemd/system/resurgam.service.d/zz-journal.conf",
        "[Service]\nStandardOutput=journal\nStandardError=journal\n",
    );
    h.systemctl(&["daemon-reload"]);
    h.systemctl(&["start", UNIT_NAME]);
    let old = h.kill_counter_worker(&["counter", "store", "extra"]);
    let mut warnings = Vec::new();
    h.wait_until(
        "the worker's death in `journalctl -p warning`",
        WAIT,
        || {
            warnings = h.journal(&["-p", "warning"]);
            warnings.iter().any(|e| {
                e["MESSAGE"]
                    .as_str()
                    .is_some_and(|m| m.starts_with("worker died"))
            })
        },
    );
    for e in &warnings {
        let prio: u8 = e["PRIORITY"]
            .as_str()
            .and_then(|p| p.parse().ok())
            .unwrap_or(9);
        if prio > 4
            || e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("worker ready"))
        {
            h.fail(&format!("`journalctl -p warning` shows {e}"));
        }
    }
    let died = warnings
        .iter()
        .find(|e| {
            e["MESSAGE"]
                .as_str()
                .is_some_and(|m| m.starts_with("worker died"))
        })
        .cloned()
        .unwrap_or_default();
    if died["RESURGAM_ACTOR"] != "counter"
        || died["RESURGAM_PID"].as_str() != Some(&*old.to_string())
    {
        h.fail(&format!(
            "the death's entry lacks its actor and pid: {died}"
        ));
    }
    let counter = h.journal(&["RESURGAM_ACTOR=counter"]);
    let says = |es: &[Value], what: &str| {
        es.iter()
            .any(|e| e["MESSAGE"].as_str().is_some_and(|m| m.starts_with(what)))
    };
    if !says(&counter, "worker died") || !says(&counter, "worker ready") {
        h.fail(&format!(
            "RESURGAM_ACTOR=counter misses its lines: {counter:?}"
        ));
    }
    if counter.iter().any(|e| e["RESURGAM_ACTOR"] != "counter") {
        h.fail(&format!(
            "RESURGAM_ACTOR=counter shows other lines: {counter:?}"
        ));
    }
    if !says(&h.journal(&["RESURGAM_ACTOR=store"]), "worker ready") {
        h.fail("no \"worker ready\" entry for the store actor");
    }
    h.systemctl(&["stop", UNIT_NAME]);

    println!(
        "systemd test timings: boot {booted:?}, start (to READY) {started:?}, \
         SIGSTOP → watchdog restart {watchdog_restart:?}, stop {stopped:?}, total {:?}",
        t0.elapsed()
    );
}

/// `systemd-analyze verify` on the shipped unit (ExecStart pointed at the built binary,
/// as verify checks that it is executable): exit 0 AND nothing on stderr, because
/// typos and unknown settings are only warnings.
#[test]
fn unit_file_verifies_cleanly() {
    let Some(analyze) = ns::which("systemd-analyze") else {
        crate::util::skip("no systemd-analyze (systemd is not installed)");
        return;
    };
    let dir = tempfile::tempdir().expect("tempdir");
    let shipped = "ExecStart=/usr/local/bin/resurgam ";
    assert!(UNIT.contains(shipped), "the unit's ExecStart changed");
    let unit = UNIT.replace(shipped, &format!("ExecStart={BIN} "));
    let path = dir.path().join(UNIT_NAME);
    fs::write(&path, unit).expect("write unit");
    let mut cmd = Command::new(analyze);
    cmd.arg("verify").arg(&path);
    let out = ns::run_bounded(cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && stderr.trim().is_empty(),
        "systemd-analyze verify: {}\nstdout: {}\nstderr: {stderr}",
        out.status,
        String::from_utf8_lossy(&out.stdout)
    );
}

/// The example config shipped next to the unit is valid (`resurgam check`).
#[test]
fn shipped_example_config_is_valid() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = Command::new(BIN);
    cmd.args(["check", "--config", EXAMPLE_CONFIG])
        .current_dir(dir.path());
    let out = ns::run_bounded(cmd, CMD_TIMEOUT).unwrap_or_else(|e| panic!("{e}"));
    assert!(
        out.status.success(),
        "resurgam check {EXAMPLE_CONFIG}: {}\n{}{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(Path::new(EXAMPLE_CONFIG).exists());
}
