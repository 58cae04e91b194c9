//! Exec actors in isolation. No process an exec actor starts outlives it (G9): not its
//! program, not the program's children, not a double-forked grandchild, whether the
//! program, the worker or the supervisor is killed, or the supervisor stops. The program
//! gets a scrubbed environment, only its protocol descriptor, /dev/null as stdin and the
//! configured working directory. `user`, `group` and resource limits apply to the
//! actor's code (G7): the program of an exec actor, the worker of a built-in kind.
//!
//! Fixtures: `tests/python_actors/forker.py` and `probe.py` (Python SDK actors).

use std::collections::BTreeSet;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use nix::sys::signal::Signal;
use nix::unistd::Pid;
use serde_json::{Value, json};

use crate::util::{Proc, Supervisor, cli, forked_worker, proc_stat, root_or_skip};

/// The repository's root.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Bound of every wait for processes to die or actors to recover.
const WAIT: Duration = Duration::from_secs(10);
/// `nobody` on Debian and most other systems.
const NOBODY: u32 = 65534;

// ------------------------------------------------------------------------------------
// Helpers.

fn repo() -> PathBuf {
    Path::new(REPO)
        .canonicalize()
        .expect("the repository root exists")
}

fn fixture(name: &str) -> PathBuf {
    repo().join("tests/python_actors").join(name)
}

/// Panics with a clear message when `python3` cannot run (CI has it).
fn require_python() {
    static FOUND: OnceLock<Result<(), String>> = OnceLock::new();
    let found = FOUND.get_or_init(|| match Command::new("python3").arg("--version").output() {
        Ok(out) if out.status.success() => Ok(()),
        Ok(out) => Err(format!("`python3 --version` failed: {}", out.status)),
        Err(e) => Err(format!("cannot run python3: {e}")),
    });
    if let Err(e) = found {
        panic!("the exec actor tests run Python fixtures and need python3 on PATH: {e}");
    }
}

/// A TOML basic string.
fn toml_str(s: &str) -> String {
    format!("\"{}\"", s.replace('\\', "\\\\").replace('"', "\\\""))
}

fn path_str(p: &Path) -> String {
    toml_str(p.to_str().expect("UTF-8 path"))
}

/// An `[[actor]]` of kind exec running `script` with python3, the SDK found in
/// `pythonpath`; `env_extra` is added to its `env` table (`, KEY = "v"` items) and
/// `extra` to the table.
fn exec_actor(
    name: &str,
    script: &Path,
    pythonpath: &Path,
    env_extra: &str,
    extra: &str,
) -> String {
    format!(
        "\n[[actor]]\nname = \"{name}\"\nkind = \"exec\"\ncommand = [\"python3\", {}]\n\
         env = {{ PYTHONPATH = {}, PYTHONDONTWRITEBYTECODE = \"1\"{env_extra} }}\n{extra}\n",
        path_str(script),
        path_str(pythonpath)
    )
}

/// An exec actor running a fixture with the repository's SDK.
fn fixture_actor(name: &str, script: &str, extra: &str) -> String {
    exec_actor(name, &fixture(script), &repo().join("python"), "", extra)
}

/// Processes a test learned about: SIGKILLed when the test ends, pass or fail, so that a
/// product bug never leaves hour-long sleepers behind.
#[derive(Default)]
struct Sweep(Vec<Proc>);

impl Sweep {
    fn add(&mut self, p: Proc) -> Proc {
        self.0.push(p);
        p
    }
}

impl Drop for Sweep {
    fn drop(&mut self) {
        for p in &self.0 {
            p.signal(Signal::SIGKILL);
        }
    }
}

fn pid_field(v: &Value, key: &str) -> i32 {
    v[key]
        .as_i64()
        .unwrap_or_else(|| panic!("no {key:?} in {v}")) as i32
}

/// The live process `pid`, or a panic naming `what`.
fn live(pid: i32, what: &str) -> Proc {
    Proc::of(pid).unwrap_or_else(|| panic!("{what} (pid {pid}) is not running"))
}

fn pgid(p: Proc) -> i32 {
    nix::unistd::getpgid(Some(Pid::from_raw(p.pid)))
        .unwrap_or_else(|e| panic!("getpgid({}): {e}", p.pid))
        .as_raw()
}

fn ppid(p: Proc) -> i32 {
    proc_stat(p.pid)
        .unwrap_or_else(|| panic!("process {} is gone", p.pid))
        .1
}

/// Waits (bounded) until none of `procs` runs; the panic names the survivors.
fn wait_gone(sup: &Supervisor, procs: &[(&str, Proc)], after: &str) {
    let deadline = std::time::Instant::now() + WAIT;
    loop {
        let alive: Vec<_> = procs.iter().filter(|(_, p)| p.is_running()).collect();
        if alive.is_empty() {
            return;
        }
        if std::time::Instant::now() >= deadline {
            panic!(
                "after {after}, still running {WAIT:?} later: {alive:?}\n{}",
                sup.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// A line of `/proc/<pid>/limits`: (soft, hard).
fn limit(pid: i32, name: &str) -> (String, String) {
    let text = fs::read_to_string(format!("/proc/{pid}/limits"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/limits: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(name) && l[name.len()..].starts_with("  "))
        .unwrap_or_else(|| panic!("no {name:?} in /proc/{pid}/limits:\n{text}"));
    let mut fields = line[name.len()..].split_whitespace();
    let soft = fields.next().expect("soft limit").to_string();
    let hard = fields.next().expect("hard limit").to_string();
    (soft, hard)
}

#[track_caller]
fn assert_limit(pid: i32, whose: &str, name: &str, value: &str) {
    let (soft, hard) = limit(pid, name);
    assert_eq!(
        (soft.as_str(), hard.as_str()),
        (value, value),
        "{name} (soft, hard) of {whose} (pid {pid})"
    );
}

/// A `Uid:`/`Gid:`/`Groups:` line of `/proc/<pid>/status`, as numbers.
fn status_ids(pid: i32, key: &str) -> Vec<u32> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/status: {e}"));
    let line = text
        .lines()
        .find(|l| l.starts_with(&format!("{key}:")))
        .unwrap_or_else(|| panic!("no {key} line in /proc/{pid}/status"));
    line[key.len() + 1..]
        .split_whitespace()
        .map(|n| n.parse().expect("a number"))
        .collect()
}

// ------------------------------------------------------------------------------------
// G9: no process of an exec actor outlives it.

/// The forker actor after it started two process trees: a child with a grandchild, and a
/// double-forked grandchild whose parent has exited.
struct Family {
    worker: Proc,
    program: Proc,
    /// (what, process) of everything the program started.
    descendants: Vec<(&'static str, Proc)>,
}

impl Family {
    /// Every process of the actor, the worker included.
    fn all(&self) -> Vec<(&'static str, Proc)> {
        let mut v = vec![("worker", self.worker), ("program", self.program)];
        v.extend(self.descendants.iter().copied());
        v
    }
}

fn forker_config() -> String {
    // No automatic checkpoints: the test takes one after spawning, so a recovery
    // replays no `spawn` (which would start new processes).
    fixture_actor(
        "forker",
        "forker.py",
        "checkpoint_every = 0\ncheckpoint_interval = \"0s\"",
    )
}

/// Starts the two process trees and checks where they live; takes a checkpoint.
fn family(sup: &Supervisor, sweep: &mut Sweep) -> Family {
    let mut c = sup.client();
    assert_eq!(c.call("forker", "add", json!(5)).unwrap(), json!(5));
    let a = sup.actor("forker");
    let worker = sweep.add(live(pid_field(&a, "pid"), "the worker"));
    let program = sweep.add(live(pid_field(&a, "program_pid"), "the program"));
    assert_eq!(
        ppid(program),
        worker.pid,
        "the program is the worker's child"
    );
    assert_eq!(pgid(worker), worker.pid, "the worker leads its own group");
    assert_eq!(
        pgid(program),
        worker.pid,
        "the program is in the worker's group"
    );

    let tree = c.call("forker", "spawn", json!({"double": false})).unwrap();
    assert_eq!(pid_field(&tree, "program"), program.pid, "{tree}");
    let child = sweep.add(live(pid_field(&tree, "child"), "the child"));
    let grandchild = sweep.add(live(pid_field(&tree, "grandchild"), "the grandchild"));
    assert_eq!(ppid(child), program.pid);
    assert_eq!(ppid(grandchild), child.pid);

    let double = c.call("forker", "spawn", json!({"double": true})).unwrap();
    let orphan = sweep.add(live(
        pid_field(&double, "grandchild"),
        "the double-forked grandchild",
    ));
    let exited = pid_field(&double, "child");
    assert!(
        ppid(orphan) != exited && ppid(orphan) != program.pid,
        "the double-forked grandchild {orphan:?} was not reparented (ppid {})",
        ppid(orphan)
    );
    for (what, p) in [
        ("child", child),
        ("grandchild", grandchild),
        ("orphan", orphan),
    ] {
        assert_eq!(pgid(p), worker.pid, "the {what} is in the worker's group");
    }
    let ck = c.checkpoint("forker").unwrap();
    assert!(ck["generation"].as_u64() >= Some(1), "checkpoint: {ck}");
    Family {
        worker,
        program,
        descendants: vec![
            ("child", child),
            ("grandchild", grandchild),
            ("double-forked grandchild", orphan),
        ],
    }
}

/// After a crash: ALIVE again with a new worker and program, the state kept.
fn assert_recovered(sup: &Supervisor, f: &Family, sweep: &mut Sweep) {
    let pid = sup.wait_new_pid("forker", f.worker.pid, WAIT);
    sweep.add(live(pid, "the new worker"));
    let a = sup.actor("forker");
    assert_ne!(pid_field(&a, "program_pid"), f.program.pid, "{a}");
    let mut c = sup.client();
    assert_eq!(c.call("forker", "get", Value::Null).unwrap(), json!(5));
    assert_eq!(c.call("forker", "add", json!(1)).unwrap(), json!(6));
}

#[test]
fn kill_9_of_the_program_kills_its_descendants_and_the_actor_recovers() {
    require_python();
    let mut sweep = Sweep::default();
    let sup = Supervisor::start(&forker_config());
    let f = family(&sup, &mut sweep);
    assert!(f.program.signal(Signal::SIGKILL));
    wait_gone(&sup, &f.all(), "kill -9 of the program");
    assert_recovered(&sup, &f, &mut sweep);
    // The reason is the program's death, as the worker saw it.
    let last_exit = sup.actor("forker")["last_exit"].to_string();
    let reason = format!("the program (pid {}) was killed by SIGKILL", f.program.pid);
    assert!(last_exit.contains(&reason), "last_exit: {last_exit}");
}

#[test]
fn kill_9_of_the_worker_kills_the_program_and_its_descendants() {
    require_python();
    let mut sweep = Sweep::default();
    let sup = Supervisor::start(&forker_config());
    let f = family(&sup, &mut sweep);
    // Also a child that left the session, and its grandchild (docs/exec-protocol.md,
    // "Processes": re-parented to the supervisor once the group is dead, and killed).
    let mut all = f.all();
    all.extend(escapees(&sup, &mut sweep, f.worker, "setsid"));
    assert!(f.worker.signal(Signal::SIGKILL));
    wait_gone(&sup, &all, "kill -9 of the worker");
    assert!(
        sup.log().contains("left its worker's session"),
        "{}",
        sup.log_tail(20)
    );
    assert_recovered(&sup, &f, &mut sweep);
}

#[test]
fn a_graceful_stop_leaves_no_process_of_the_actor() {
    require_python();
    let mut sweep = Sweep::default();
    let sup = Supervisor::start(&forker_config());
    let f = family(&sup, &mut sweep);
    // Also those that left the group or the session (docs/exec-protocol.md,
    // "Processes").
    let mut all = f.all();
    all.extend(escapees(&sup, &mut sweep, f.worker, "setsid"));
    all.extend(escapees(&sup, &mut sweep, f.worker, "setpgid"));
    assert_eq!(sup.client().stop().unwrap(), json!({"stopping": true}));
    let status = sup.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "exit after `stop`");
    wait_gone(&sup, &all, "a graceful stop");
}

#[test]
fn kill_9_of_the_supervisor_leaves_no_process_of_the_actor() {
    require_python();
    let mut sweep = Sweep::default();
    let sup = Supervisor::start(&forker_config());
    let f = family(&sup, &mut sweep);
    let status = sup.kill_supervisor();
    assert_eq!(status.signal(), Some(9));
    wait_gone(&sup, &f.all(), "kill -9 of the supervisor");
}

/// A child of the program that left the actor's group (`how`: `setsid` or `setpgid`)
/// and its grandchild, born in the child's new group; (what, process) of both.
fn escapees(
    sup: &Supervisor,
    sweep: &mut Sweep,
    worker: Proc,
    how: &str,
) -> Vec<(&'static str, Proc)> {
    let tree = sup
        .client()
        .call("forker", "spawn", json!({ how: true }))
        .unwrap();
    let child = sweep.add(live(pid_field(&tree, "child"), "the escaped child"));
    let grandchild = sweep.add(live(pid_field(&tree, "grandchild"), "its grandchild"));
    assert_eq!(
        pgid(child),
        child.pid,
        "{how}: the child leads a group of its own"
    );
    assert_eq!(
        pgid(grandchild),
        child.pid,
        "{how}: the grandchild is in it"
    );
    let sid = |p: Proc| {
        nix::unistd::getsid(Some(Pid::from_raw(p.pid)))
            .unwrap()
            .as_raw()
    };
    if how == "setsid" {
        assert_eq!(
            sid(child),
            child.pid,
            "the child leads a session of its own"
        );
    } else {
        assert_eq!(
            sid(child),
            sid(worker),
            "the child stays in the worker's session"
        );
    }
    vec![("escaped child", child), ("escaped grandchild", grandchild)]
}

// ------------------------------------------------------------------------------------
// What the program is given: environment, descriptors, stdin, working directory.

/// Variables the program must not see: the service's private ones (set in the
/// supervisor's environment below) and the worker's bootstrap ones (the supervisor sets
/// them for the worker, which must not pass them on).
const PRIVATE_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RESURGAM_SOCKET",
    "RESURGAM_WORKER_BOOTSTRAP",
    "RESURGAM_PARENT_PID",
];

/// The names in a process's initial environment (`/proc/<pid>/environ`).
fn initial_env(pid: i32) -> BTreeSet<String> {
    let bytes = fs::read(format!("/proc/{pid}/environ"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/environ: {e}"));
    bytes
        .split(|&b| b == 0)
        .filter_map(|kv| {
            let kv = String::from_utf8_lossy(kv);
            kv.split_once('=').map(|(k, _)| k.to_string())
        })
        .collect()
}

#[test]
fn the_program_gets_a_scrubbed_environment_fd_3_only_and_the_configured_cwd() {
    require_python();
    // A real notification socket, so the supervisor's own use of it is undisturbed;
    // WATCHDOG_PID names another process, so no watchdog is armed.
    let notify_dir = tempfile::tempdir().unwrap();
    let notify = notify_dir.path().join("notify.sock");
    let _notify = std::os::unix::net::UnixDatagram::bind(&notify).unwrap();
    let body = exec_actor(
        "probe",
        &fixture("probe.py"),
        &repo().join("python"),
        ", PROBE_A = \"alpha\", RSG_OVERRIDDEN = \"by the config\"",
        "",
    );
    let sup = Supervisor::start_env(
        &body,
        &[
            ("NOTIFY_SOCKET", Some(notify.to_str().unwrap())),
            ("WATCHDOG_USEC", Some("60000000")),
            ("WATCHDOG_PID", Some("1")),
            ("LISTEN_FDS", Some("1")),
            ("LISTEN_PID", Some("1")),
            ("LISTEN_FDNAMES", Some("control")),
            ("RESURGAM_SOCKET", Some("/nonexistent/resurgam.sock")),
            // Read by workers only (the supervisor sets its own for each worker).
            ("RESURGAM_PARENT_PID", Some("1")),
            ("RSG_INHERITED", Some("from the supervisor")),
            ("RSG_OVERRIDDEN", Some("by the supervisor")),
        ],
    );
    let mut c = sup.client();
    // The private variables were there to leak: in the supervisor's environment, and
    // the worker's bootstrap ones in the worker's.
    let supervisor_env = initial_env(sup.pid());
    let worker_env = initial_env(sup.actor_pid("probe").unwrap());
    for key in PRIVATE_ENV
        .iter()
        .filter(|k| !k.starts_with("RESURGAM_WORKER"))
    {
        assert!(
            supervisor_env.contains(*key),
            "{key} is not in the supervisor's environment: {supervisor_env:?}"
        );
    }
    // A spawned worker finds its bootstrap in its environment; a forked one gets it in
    // memory.
    let worker = sup.actor_pid("probe").unwrap();
    let forked = forked_worker(worker);
    if forked {
        assert!(
            !worker_env.contains("RESURGAM_WORKER_BOOTSTRAP"),
            "forked worker {worker}: {worker_env:?}"
        );
    } else {
        for key in ["RESURGAM_WORKER_BOOTSTRAP", "RESURGAM_PARENT_PID"] {
            assert!(
                worker_env.contains(key),
                "{key} is not in the environment of worker {worker}: {worker_env:?}"
            );
        }
    }

    // Environment: the config's entries, the two protocol variables, the rest of the
    // supervisor's environment, none of the private ones.
    let env = c.call("probe", "env", Value::Null).unwrap();
    let var = |k: &str| env[k].as_str().map(str::to_string);
    assert_eq!(var("PROBE_A").as_deref(), Some("alpha"), "{env}");
    assert_eq!(
        var("RSG_OVERRIDDEN").as_deref(),
        Some("by the config"),
        "{env}"
    );
    assert_eq!(
        var("RSG_INHERITED").as_deref(),
        Some("from the supervisor"),
        "{env}"
    );
    assert_eq!(var("RESURGAM_FD").as_deref(), Some("3"), "{env}");
    assert_eq!(var("RESURGAM_ACTOR").as_deref(), Some("probe"), "{env}");
    for key in PRIVATE_ENV {
        assert!(
            env.get(key).is_none(),
            "{key} leaked into the program's environment: {env}"
        );
    }

    // Descriptors: 0, 1, 2 and the protocol socket 3, nothing else (the listing's own
    // descriptor is closed by the time its link is read).
    let fds = c.call("probe", "fds", Value::Null).unwrap();
    let links = fds["links"].as_object().expect("links");
    let open: BTreeSet<i64> = links
        .iter()
        .filter(|(_, target)| !target.is_null())
        .map(|(fd, _)| fd.parse().unwrap())
        .collect();
    let closed = links.values().filter(|t| t.is_null()).count();
    assert_eq!(
        open,
        BTreeSet::from([0, 1, 2, 3]),
        "open descriptors: {fds}"
    );
    assert!(
        closed <= 1,
        "only the listing's own descriptor may be closed: {fds}"
    );
    assert_eq!(links["0"], "/dev/null", "stdin: {fds}");
    assert!(
        links["3"].as_str().unwrap().starts_with("socket:"),
        "fd 3: {fds}"
    );

    // The working directory defaults to the config file's directory.
    let dir = sup.dir().canonicalize().unwrap();
    assert_eq!(
        c.call("probe", "cwd", Value::Null).unwrap(),
        json!(dir.to_str().unwrap())
    );

    // `cwd = "sub"` is relative to it (an actor added by a reload, once `sub` exists),
    // and so are relative paths the program opens.
    fs::create_dir(dir.join("sub")).unwrap();
    fs::write(dir.join("sub/marker.txt"), "in sub").unwrap();
    sup.write_config(&format!(
        "{body}{}",
        fixture_actor("probe_sub", "probe.py", "cwd = \"sub\"")
    ));
    c.reload().unwrap();
    sup.wait_until("probe_sub to be ALIVE", WAIT, || {
        sup.status()["actors"]
            .as_array()
            .unwrap()
            .iter()
            .any(|a| a["name"] == "probe_sub" && a["state"] == "ALIVE")
    });
    assert_eq!(
        c.call("probe_sub", "cwd", Value::Null).unwrap(),
        json!(dir.join("sub").to_str().unwrap())
    );
    assert_eq!(
        c.call("probe_sub", "read", json!("marker.txt")).unwrap(),
        json!({"text": "in sub"})
    );
}

// ------------------------------------------------------------------------------------
// G7: user, group and resource limits.

#[test]
fn limits_apply_to_an_exec_program_and_to_a_builtin_worker() {
    require_python();
    // Defaults for every actor, overridden per actor; the counter takes a larger
    // open-file limit than the default (its worker needs a few descriptors).
    let body = format!(
        "[defaults]\nlimit_core = 0\nlimit_open_files = 64\n{}\n\
         [[actor]]\nname = \"capped\"\nkind = \"counter\"\nlimit_memory = \"1GiB\"\n\
         limit_open_files = 128\nlimit_processes = 512\nlimit_cpu = \"90s\"\n",
        fixture_actor(
            "limited",
            "probe.py",
            "limit_memory = \"1GiB\"\nlimit_processes = 512\nlimit_cpu = \"10m\"",
        )
    );
    let sup = Supervisor::start(&body);
    let mut c = sup.client();
    assert_eq!(c.call("limited", "add", json!(2)).unwrap(), json!(2));
    assert_eq!(c.call("capped", "incr", json!(2)).unwrap(), json!(2));

    let program = pid_field(&sup.actor("limited"), "program_pid");
    let who = "the exec program";
    assert_limit(program, who, "Max address space", "1073741824");
    assert_limit(program, who, "Max open files", "64");
    assert_limit(program, who, "Max core file size", "0");
    assert_limit(program, who, "Max processes", "512");
    assert_limit(program, who, "Max cpu time", "600");

    let worker = pid_field(&sup.actor("capped"), "pid");
    let who = "the counter's worker";
    assert_limit(worker, who, "Max address space", "1073741824");
    assert_limit(worker, who, "Max open files", "128");
    assert_limit(worker, who, "Max core file size", "0");
    assert_limit(worker, who, "Max processes", "512");
    assert_limit(worker, who, "Max cpu time", "90");
}

/// A directory uid `NOBODY` can enter, with the probe and a copy of the SDK in it, a
/// root-only `secret.txt` and a world-readable `public.txt`.
fn world_readable_app() -> tempfile::TempDir {
    let app = tempfile::Builder::new()
        .prefix("rsg-exec-app-")
        .tempdir()
        .unwrap();
    let mode = |p: &Path, m: u32| fs::set_permissions(p, fs::Permissions::from_mode(m)).unwrap();
    mode(app.path(), 0o755);
    fs::copy(fixture("probe.py"), app.path().join("probe.py")).unwrap();
    mode(&app.path().join("probe.py"), 0o644);
    let sdk = app.path().join("lib/resurgam");
    fs::create_dir_all(&sdk).unwrap();
    mode(&app.path().join("lib"), 0o755);
    mode(&sdk, 0o755);
    for entry in fs::read_dir(repo().join("python/resurgam")).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file() {
            let to = sdk.join(path.file_name().unwrap());
            fs::copy(&path, &to).unwrap();
            mode(&to, 0o644);
        }
    }
    fs::write(app.path().join("secret.txt"), "root only").unwrap();
    mode(&app.path().join("secret.txt"), 0o600);
    fs::write(app.path().join("public.txt"), "for everyone").unwrap();
    mode(&app.path().join("public.txt"), 0o644);
    app
}

#[test]
fn an_exec_actor_as_nobody_cannot_read_root_files_and_still_recovers() {
    if !root_or_skip("test running an actor as another user") {
        return;
    }
    require_python();
    let user = nix::unistd::User::from_uid(NOBODY.into())
        .unwrap()
        .unwrap_or_else(|| panic!("no user with uid {NOBODY} in the user database"));
    let group = nix::unistd::Group::from_gid(NOBODY.into())
        .unwrap()
        .unwrap_or_else(|| panic!("no group with gid {NOBODY} in the group database"));
    let app = world_readable_app();
    let script = app.path().join("probe.py");
    let lib = app.path().join("lib");
    let cwd = format!("cwd = {}", path_str(app.path()));
    let body = format!(
        "{}{}",
        exec_actor(
            "named",
            &script,
            &lib,
            "",
            &format!(
                "{cwd}\nuser = {}\ngroup = {}",
                toml_str(&user.name),
                toml_str(&group.name)
            ),
        ),
        exec_actor(
            "numeric",
            &script,
            &lib,
            "",
            &format!("{cwd}\nuser = \"{NOBODY}\"\ngroup = \"{NOBODY}\""),
        ),
    );
    let mut sweep = Sweep::default();
    let sup = Supervisor::start(&body);
    let mut c = sup.client();
    let secret = app.path().join("secret.txt");
    let public = app.path().join("public.txt");
    for actor in ["named", "numeric"] {
        let id = c.call(actor, "ident", Value::Null).unwrap();
        let n = json!(NOBODY);
        for key in ["uid", "euid", "gid", "egid"] {
            assert_eq!(id[key], n, "{actor}: {key} of the program: {id}");
        }
        assert_eq!(
            id["groups"],
            json!([NOBODY]),
            "{actor}: supplementary groups"
        );
        let a = sup.actor(actor);
        let (worker, program) = (pid_field(&a, "pid"), pid_field(&a, "program_pid"));
        assert_eq!(id["pid"], json!(program));
        assert_eq!(status_ids(program, "Uid"), [NOBODY; 4], "{actor}: program");
        // The worker keeps its identity: it owns the checkpoint file.
        assert_eq!(status_ids(worker, "Uid"), [0; 4], "{actor}: worker");
        sweep.add(live(worker, "worker"));
        sweep.add(live(program, "program"));

        let denied = c
            .call(actor, "read", json!(secret.to_str().unwrap()))
            .unwrap();
        let error = denied["error"].as_str().unwrap_or_default();
        assert!(
            error.starts_with("PermissionError"),
            "{actor} read the root-only file: {denied}"
        );
        assert_eq!(
            c.call(actor, "read", json!(public.to_str().unwrap()))
                .unwrap(),
            json!({"text": "for everyone"})
        );
    }

    // Checkpoints (written by the worker) and recovery work as before: kill -9 of the
    // program of one, of the worker of the other; calls after the checkpoint replay.
    assert_eq!(c.call("named", "add", json!(5)).unwrap(), json!(5));
    assert_eq!(c.call("numeric", "add", json!(3)).unwrap(), json!(3));
    for actor in ["named", "numeric"] {
        let ck = c.checkpoint(actor).unwrap();
        assert!(ck["generation"].as_u64() >= Some(1), "{actor}: {ck}");
    }
    assert_eq!(c.call("named", "add", json!(2)).unwrap(), json!(7));
    assert_eq!(c.call("numeric", "add", json!(1)).unwrap(), json!(4));
    let named = sup.actor("named");
    let named_worker = live(pid_field(&named, "pid"), "worker");
    let numeric_program = live(pid_field(&sup.actor("numeric"), "program_pid"), "program");
    assert!(live(pid_field(&named, "program_pid"), "program").signal(Signal::SIGKILL));
    let old_numeric = sup.kill_worker("numeric");
    // The program, running as another user, still dies with its worker.
    wait_gone(
        &sup,
        &[
            ("worker of named", named_worker),
            ("program of numeric", numeric_program),
        ],
        "kill -9 of a program and of a worker",
    );
    let new_named = sup.wait_new_pid("named", named_worker.pid, WAIT);
    sup.wait_new_pid("numeric", old_numeric, WAIT);
    assert_eq!(c.call("named", "get", Value::Null).unwrap(), json!(7));
    assert_eq!(c.call("numeric", "get", Value::Null).unwrap(), json!(4));
    let id = c.call("named", "ident", Value::Null).unwrap();
    assert_eq!(id["uid"], json!(NOBODY), "after recovery: {id}");
    assert_eq!(
        ppid(live(pid_field(&id, "pid"), "new program")),
        new_named,
        "{id}"
    );
}

#[test]
fn a_builtin_worker_runs_as_the_configured_uid() {
    if !root_or_skip("test running a worker as another user") {
        return;
    }
    // A built-in worker run as another user needs a durable call log (it cannot grow
    // its checkpoint file once it dropped its identity).
    let sup = Supervisor::start(&format!(
        "[[actor]]\nname = \"c\"\nkind = \"counter\"\nuser = \"{NOBODY}\"\ndurability = \"log\"\n"
    ));
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(3)).unwrap(), json!(3));
    let worker = sup.actor_pid("c").unwrap();
    assert_eq!(status_ids(worker, "Uid"), [NOBODY; 4], "the worker's uids");
    // No `group`: the user's primary group (65534 for nobody, or the number itself).
    assert_eq!(status_ids(worker, "Gid"), [NOBODY; 4], "the worker's gids");
    assert_eq!(
        status_ids(worker, "Groups"),
        [NOBODY],
        "supplementary groups"
    );

    // It still checkpoints, recovers, and its state survives a graceful restart.
    c.checkpoint("c").unwrap();
    assert_eq!(c.call("c", "incr", json!(2)).unwrap(), json!(5));
    let old = sup.kill_worker("c");
    let new = sup.wait_new_pid("c", old, WAIT);
    assert_eq!(status_ids(new, "Uid"), [NOBODY; 4], "the new worker's uids");
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(5));
    assert_eq!(sup.client().stop().unwrap(), json!({"stopping": true}));
    assert_eq!(sup.wait_exit(WAIT).code(), Some(0));
    sup.restart_same_dirs();
    assert_eq!(
        sup.client().call("c", "get", Value::Null).unwrap(),
        json!(5)
    );
}

#[test]
fn check_names_an_unknown_user_and_group_with_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("resurgam.toml");
    let text = format!(
        "[supervisor]\nstate_dir = {}\n\n[[actor]]\nname = \"a\"\nkind = \"counter\"\n\
         user = \"no-such-user-xyz\"\n\n[[actor]]\nname = \"b\"\nkind = \"counter\"\n\
         group = \"no-such-group-xyz\"\n\n[[actor]]\nname = \"m\"\nkind = \"kv\"\n\
         user = \"65534\"\ndurability = \"memory\"\n",
        path_str(&dir.path().join("state"))
    );
    fs::write(&path, &text).unwrap();
    let line_of = |needle: &str| {
        1 + text
            .lines()
            .position(|l| l.contains(needle))
            .expect("needle in config")
    };
    let out = cli(&["check", "--config", path.to_str().unwrap()], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "check: {stderr}");
    for needle in ["no-such-user-xyz", "no-such-group-xyz"] {
        let place = format!("{}:{}:", path.display(), line_of(needle));
        assert!(
            stderr
                .lines()
                .any(|l| l.starts_with(&place) && l.contains(needle)),
            "no line starting with {place:?} naming {needle:?}:\n{stderr}"
        );
    }
    // A built-in kind run as another user with its calls only in memory: refused, at
    // the `user` line (it could not grow its checkpoint file).
    let place = format!("{}:{}:", path.display(), line_of("user = \"65534\""));
    assert!(
        stderr
            .lines()
            .any(|l| l.starts_with(&place) && l.contains("\"memory\"")),
        "no line starting with {place:?} refusing durability memory:\n{stderr}"
    );
}
