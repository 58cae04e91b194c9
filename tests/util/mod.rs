//! The test harness: a real `resurgam` supervisor in a private temporary directory.
//!
//! [`Supervisor::start`] writes a config (absolute state/runtime/socket paths inside a
//! fresh tempdir, `durability = "memory"`), spawns the binary with its stderr captured to
//! a log file in that tempdir, and waits (bounded, by polling `status`) until every actor
//! is ALIVE. Dropping it SIGKILLs the supervisor and every worker it has ever been seen
//! with, then reaps the supervisor — also when the test panicked.
//!
//! Every wait is bounded; failures panic with the tail of the supervisor's log.

#![allow(dead_code)]

use std::collections::{BTreeSet, HashSet};
use std::fs;
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use resurgam::Client;
use resurgam::shared::protocol::{ErrorBody, ErrorKind};
use serde_json::Value;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_resurgam");
/// How long a supervisor may take to bring every actor up.
pub const START_TIMEOUT: Duration = Duration::from_secs(20);
/// Default read timeout of the clients handed out by [`Supervisor::client`].
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(20);
/// Environment variables that must not leak from the test's environment into the binary
/// (or into the Python tests): they would point it at another socket, service or actor.
pub const SCRUBBED_ENV: &[&str] = &[
    "RESURGAM_SOCKET",
    "RESURGAM_LOG",
    "RESURGAM_FD",
    "RESURGAM_ACTOR",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
];

// ------------------------------------------------------------------------------------
// Processes.

/// A process identified by pid *and* start time, so a recycled pid is never mistaken
/// for it (and never killed in its place).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Proc {
    pub pid: i32,
    pub start_time: u64,
}

/// `(state, ppid, starttime)` from `/proc/<pid>/stat`, or None if there is no such process.
pub fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may contain spaces and parentheses: split after the last ')'.
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let state = fields.first()?.chars().next()?;
    let ppid = fields.get(1)?.parse().ok()?;
    let start = fields.get(19)?.parse().ok()?;
    Some((state, ppid, start))
}

impl Proc {
    /// The live process with this pid right now, if any.
    pub fn of(pid: i32) -> Option<Proc> {
        let (state, _, start_time) = proc_stat(pid)?;
        (state != 'Z' && state != 'X').then_some(Proc { pid, start_time })
    }

    /// True while this very process exists and is not a zombie.
    pub fn is_running(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, _, start)) if start == self.start_time && state != 'Z' && state != 'X')
    }

    /// What `/proc` says about this process, for a failure message: state, parent,
    /// process group, command line and signal masks (blocked, ignored, caught, pending
    /// to the thread and to the process), or that it is gone.
    pub fn describe(&self) -> String {
        let pid = self.pid;
        let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return format!("pid {pid}: gone");
        };
        // "PID (COMM) STATE PPID PGRP …"; COMM may hold spaces and parentheses.
        let comm_end = stat.rfind(')').unwrap_or(0);
        let fields: Vec<&str> = stat[comm_end + 1..].split_whitespace().collect();
        let field = |i: usize| fields.get(i).copied().unwrap_or("?");
        let status = fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let masks: Vec<String> = ["SigPnd", "ShdPnd", "SigBlk", "SigIgn", "SigCgt"]
            .iter()
            .filter_map(|key| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(key)?.strip_prefix(':'))
                    .map(|v| format!("{key}={}", v.trim()))
            })
            .collect();
        format!(
            "pid {pid} ({}): state {} ppid {} pgid {} cmdline {:?} {}",
            comm(pid),
            field(0),
            field(1),
            field(2),
            cmdline(pid),
            masks.join(" ")
        )
    }

    /// Sends `sig` if this very process still runs. Returns whether it was sent.
    pub fn signal(&self, sig: Signal) -> bool {
        self.is_running() && kill(Pid::from_raw(self.pid), sig).is_ok()
    }
}

/// The supervisor's helper threads: signals, four spawners, disk copy, log fsync, worker
/// output, plus the loop itself, with a little room.
pub const MAX_THREADS: usize = 12;

/// How many threads process `pid` runs.
pub fn threads(pid: i32) -> usize {
    let status = fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

/// How many descriptors process `pid` holds.
pub fn fd_count(pid: i32) -> usize {
    fs::read_dir(format!("/proc/{pid}/fd"))
        .map(|d| d.count())
        .expect("read the fd directory")
}

/// Every live process whose parent is `ppid` (a scan of /proc).
pub fn children_of(ppid: i32) -> Vec<Proc> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, parent, start_time) = proc_stat(pid)?;
            (parent == ppid && state != 'Z' && state != 'X').then_some(Proc { pid, start_time })
        })
        .collect()
}

/// The process name (comm) of `pid` ("" if there is no such process).
pub fn comm(pid: i32) -> String {
    fs::read_to_string(format!("/proc/{pid}/comm"))
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The process name of a fork server.
pub const FORK_SERVER_COMM: &str = "resurgam-forks";

/// The name (comm) of a forked worker's address-space holder, its child until `Init`.
pub const HOLDER_COMM: &str = "w-holder";

/// The command line of `pid` as /proc shows it, NULs (argument ends and padding) as
/// spaces, trimmed.
pub fn cmdline(pid: i32) -> String {
    let bytes = fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    String::from_utf8_lossy(&bytes)
        .replace('\0', " ")
        .trim()
        .to_string()
}

/// Whether worker `pid` was forked by the fork server rather than spawned: a spawned
/// worker finds its bootstrap in its (initial) environment, a forked one in memory.
pub fn forked_worker(pid: i32) -> bool {
    let environ = fs::read(format!("/proc/{pid}/environ")).unwrap_or_default();
    !environ
        .split(|&b| b == 0)
        .any(|kv| kv.starts_with(b"RESURGAM_WORKER_BOOTSTRAP="))
}

/// Runs a command with a deadline; kills it and panics if it does not finish in time.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let t_out = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = out.read_to_end(&mut v);
        v
    });
    let t_err = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = err.read_to_end(&mut v);
        v
    });
    let status = wait_with_timeout(&mut child, &format!("{cmd:?}"), timeout);
    Output {
        status,
        stdout: t_out.join().unwrap_or_default(),
        stderr: t_err.join().unwrap_or_default(),
    }
}

/// Waits for `child` with a deadline; kills and reaps it and panics naming `what` if it
/// does not finish in time.
pub fn wait_with_timeout(child: &mut Child, what: &str, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(s) = child.try_wait().expect("try_wait") {
            return s;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("{what} did not finish within {timeout:?}");
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A `resurgam` command with a clean environment (no socket or systemd variables from
/// the test's own environment).
pub fn resurgam_cmd(args: &[&str]) -> Command {
    let mut cmd = Command::new(BIN);
    cmd.args(args).env("NO_COLOR", "1");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    cmd
}

/// Runs the CLI (`resurgam ARGS...`) with extra environment variables; bounded.
pub fn cli(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = resurgam_cmd(args);
    for (k, v) in env {
        cmd.env(k, v);
    }
    run_with_timeout(cmd, Duration::from_secs(30))
}

/// `resurgam ARGS --socket <sup's socket>`, which must exit `code`; its output.
#[track_caller]
pub fn cli_expect(sup: &Supervisor, args: &[&str], code: i32) -> Output {
    let socket = sup.socket.to_str().expect("utf-8 socket path");
    let mut argv = args.to_vec();
    argv.extend(["--socket", socket]);
    let out = cli(&argv, &[]);
    assert_eq!(
        out.status.code(),
        Some(code),
        "resurgam {argv:?}: stdout {:?}, stderr {:?}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Removes ANSI escape sequences (colour codes) from log text.
pub fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
            continue;
        }
        out.push(c);
    }
    out
}

/// The error body of a remote error, or a panic describing what came instead.
pub fn remote_err<T: std::fmt::Debug>(r: Result<T, resurgam::ClientError>) -> ErrorBody {
    match r {
        Err(resurgam::ClientError::Remote(body)) => body,
        other => panic!("expected an error reply, got {other:?}"),
    }
}

/// Asserts that `r` is an error reply of `kind`; returns its message.
#[track_caller]
pub fn expect_kind<T: std::fmt::Debug>(
    r: Result<T, resurgam::ClientError>,
    kind: ErrorKind,
) -> String {
    let body = remote_err(r);
    assert_eq!(body.kind, kind, "wrong error kind: {body:?}");
    body.message
}

// ------------------------------------------------------------------------------------
// A small deterministic PRNG (splitmix64): tests print their seed.

pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// A seed from the clock and the thread (different on every run).
    pub fn seed() -> u64 {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        let mut h = std::hash::DefaultHasher::new();
        std::hash::Hash::hash(&std::thread::current().id(), &mut h);
        nanos ^ std::hash::Hasher::finish(&h) ^ u64::from(std::process::id())
    }

    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    pub fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next_u64() % (hi - lo + 1)
    }
}

// ------------------------------------------------------------------------------------
// The supervisor.

/// One supervisor process (and, across [`Supervisor::restart_same_dirs`], its successors)
/// running in a private tempdir.
pub struct Supervisor {
    dir: tempfile::TempDir,
    pub config_path: PathBuf,
    pub socket: PathBuf,
    pub state_dir: PathBuf,
    pub runtime_dir: PathBuf,
    child: Mutex<Option<Child>>,
    /// The current supervisor process.
    sup: Mutex<Option<Proc>>,
    /// Every worker process ever reported by `status` or found as a child.
    seen: Mutex<HashSet<Proc>>,
    /// How many supervisor processes were started (one log file each).
    runs: Mutex<u32>,
    /// Environment changes for the supervisor process.
    env: Vec<(String, Option<String>)>,
}

/// Builds the full config file text: `body` plus a `[supervisor]` section (merged into
/// the body's own, if it has one) with the given absolute paths, and `durability =
/// "memory"` unless the body sets a durability itself.
fn compose_config(body: &str, state: &Path, runtime: &Path, socket: &Path) -> String {
    let mut keys = format!(
        "state_dir = \"{}\"\nruntime_dir = \"{}\"\nsocket = \"{}\"\n",
        state.display(),
        runtime.display(),
        socket.display()
    );
    if !body
        .lines()
        .any(|l| l.trim_start().starts_with("durability"))
    {
        keys.push_str("durability = \"memory\"\n");
    }
    let mut out = String::new();
    let mut merged = false;
    for line in body.lines() {
        out.push_str(line);
        out.push('\n');
        if !merged && line.trim() == "[supervisor]" {
            out.push_str(&keys);
            merged = true;
        }
    }
    if merged {
        out
    } else {
        format!("[supervisor]\n{keys}\n{body}\n")
    }
}

impl Supervisor {
    /// Starts a supervisor with this config (any `[supervisor]` section in `body` gets the
    /// directories and socket added) and waits until every actor is ALIVE.
    pub fn start(body: &str) -> Supervisor {
        Supervisor::start_env(body, &[])
    }

    /// [`Supervisor::start`] with changes to the supervisor's environment: `(name,
    /// Some(value))` sets a variable, `(name, None)` removes it (e.g. `NO_COLOR`, which
    /// the harness sets by default).
    pub fn start_env(body: &str, env: &[(&str, Option<&str>)]) -> Supervisor {
        let sup = Supervisor::prepare(body, env);
        sup.spawn();
        sup.wait_ready();
        sup
    }

    /// A tempdir with the config written into it, and no process yet.
    fn prepare(body: &str, env: &[(&str, Option<&str>)]) -> Supervisor {
        let dir = tempfile::Builder::new()
            .prefix("rsg-it-")
            .tempdir()
            .expect("create tempdir");
        let root = dir.path().to_path_buf();
        let state_dir = root.join("state");
        let runtime_dir = root.join("run");
        let socket = root.join("ctl.sock");
        assert!(
            socket.as_os_str().len() < 100,
            "socket path too long for AF_UNIX: {}",
            socket.display()
        );
        let config_path = root.join("resurgam.toml");
        fs::write(
            &config_path,
            compose_config(body, &state_dir, &runtime_dir, &socket),
        )
        .expect("write config");
        Supervisor {
            dir,
            config_path,
            socket,
            state_dir,
            runtime_dir,
            child: Mutex::new(None),
            sup: Mutex::new(None),
            seen: Mutex::new(HashSet::new()),
            runs: Mutex::new(0),
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.map(str::to_string)))
                .collect(),
        }
    }

    /// The tempdir everything lives in.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    fn log_path(&self, run: u32) -> PathBuf {
        self.dir.path().join(format!("supervisor-{run}.log"))
    }

    /// Spawns a new supervisor process on this config (the previous one must be gone).
    /// Call from the test's own thread: the supervisor gets PR_SET_PDEATHSIG, which
    /// fires when the spawning thread ends.
    fn spawn(&self) {
        let run = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            *runs += 1;
            *runs
        };
        let log = fs::File::create(self.log_path(run)).expect("create log file");
        let log2 = log.try_clone().expect("clone log file");
        let config = self.config_path.to_str().expect("utf-8 path").to_string();
        let mut cmd = resurgam_cmd(&["run", "--config", &config]);
        cmd.env("RESURGAM_LOG", "info");
        for (k, v) in &self.env {
            match v {
                Some(v) => cmd.env(k, v),
                None => cmd.env_remove(k),
            };
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log);
        // SAFETY: the closure runs in the forked child before exec and only calls prctl,
        // which is async-signal-safe; it allocates nothing and takes no lock.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn the supervisor");
        let pid = child.id() as i32;
        *self.sup.lock().unwrap_or_else(PoisonError::into_inner) =
            Proc::of(pid).or(Some(Proc { pid, start_time: 0 }));
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    }

    /// The supervisor's pid (current process).
    pub fn pid(&self) -> i32 {
        self.sup
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .expect("a supervisor was started")
            .pid
    }

    /// The supervisor's fork servers now (its children named like one).
    pub fn fork_servers(&self) -> Vec<Proc> {
        children_of(self.pid())
            .into_iter()
            .filter(|p| comm(p.pid) == FORK_SERVER_COMM)
            .collect()
    }

    /// Waits until the socket answers and every actor is ALIVE.
    pub fn wait_ready(&self) {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = self.try_wait_exit() {
                panic!(
                    "the supervisor exited during startup ({status})\n{}",
                    self.log_tail(80)
                );
            }
            if let Ok(st) = self.try_status()
                && let Some(actors) = st["actors"].as_array()
                && actors.iter().all(|a| a["state"] == "ALIVE")
            {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "actors not all ALIVE within {START_TIMEOUT:?}; last status: {:?}\n{}",
                    self.try_status().ok(),
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A new client connection with a read timeout of [`CLIENT_TIMEOUT`].
    pub fn client(&self) -> Client {
        let mut c = Client::connect(&self.socket)
            .unwrap_or_else(|e| panic!("connect: {e}\n{}", self.log_tail(40)));
        c.set_timeout(Some(CLIENT_TIMEOUT)).expect("set timeout");
        c
    }

    /// `status` over a fresh connection; records every worker pid it reports.
    pub fn try_status(&self) -> Result<Value, resurgam::ClientError> {
        let mut c = Client::connect(&self.socket)?;
        c.set_timeout(Some(Duration::from_secs(5)))?;
        let st = c.status()?;
        self.record_pids(&st);
        Ok(st)
    }

    /// The `status` reply (panics if the supervisor does not answer).
    pub fn status(&self) -> Value {
        self.try_status()
            .unwrap_or_else(|e| panic!("status failed: {e}\n{}", self.log_tail(60)))
    }

    fn record_pids(&self, st: &Value) {
        let mut seen = self.seen.lock().unwrap_or_else(PoisonError::into_inner);
        for a in st["actors"].as_array().into_iter().flatten() {
            if let Some(pid) = a["pid"].as_i64()
                && let Some(p) = Proc::of(pid as i32)
            {
                seen.insert(p);
            }
        }
    }

    /// One actor's status object.
    pub fn actor(&self, name: &str) -> Value {
        let st = self.status();
        st["actors"]
            .as_array()
            .and_then(|v| v.iter().find(|a| a["name"] == name).cloned())
            .unwrap_or_else(|| panic!("no actor {name:?} in status {st}"))
    }

    /// The pid of the actor's worker if it is ALIVE.
    pub fn actor_pid(&self, name: &str) -> Option<i32> {
        let a = self.actor(name);
        (a["state"] == "ALIVE")
            .then(|| a["pid"].as_i64().map(|p| p as i32))
            .flatten()
    }

    /// The pid of the actor's worker if it has one (ALIVE or STARTING).
    pub fn worker_pid(&self, name: &str) -> Option<i32> {
        self.actor(name)["pid"].as_i64().map(|p| p as i32)
    }

    /// Waits until the actor is in `state`; returns its status object.
    pub fn wait_state(&self, name: &str, state: &str, timeout: Duration) -> Value {
        let mut last = Value::Null;
        self.wait_until(&format!("actor {name:?} to be {state}"), timeout, || {
            last = self.actor(name);
            last["state"] == state
        });
        last
    }

    /// Waits until the actor is ALIVE with a worker other than `old_pid`; returns the new pid.
    pub fn wait_new_pid(&self, name: &str, old_pid: i32, timeout: Duration) -> i32 {
        let mut pid = None;
        self.wait_until(
            &format!("actor {name:?} ALIVE with a pid other than {old_pid}"),
            timeout,
            || {
                pid = self.actor_pid(name).filter(|&p| p != old_pid);
                pid.is_some()
            },
        );
        pid.expect("checked by wait_until")
    }

    /// SIGKILLs the actor's current worker (it must be ALIVE); returns the killed pid.
    pub fn kill_worker(&self, name: &str) -> i32 {
        let pid = self
            .actor_pid(name)
            .unwrap_or_else(|| panic!("actor {name:?} is not ALIVE\n{}", self.log_tail(40)));
        let p = Proc::of(pid).unwrap_or_else(|| panic!("worker {pid} of {name:?} is gone"));
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(p);
        assert!(p.signal(Signal::SIGKILL), "cannot SIGKILL worker {pid}");
        pid
    }

    /// Every worker process seen so far (status reports and /proc scans).
    pub fn seen_workers(&self) -> Vec<Proc> {
        if let Some(sup) = *self.sup.lock().unwrap_or_else(PoisonError::into_inner)
            && sup.is_running()
        {
            let kids = children_of(sup.pid);
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .extend(kids);
        }
        let v: BTreeSet<Proc> = self
            .seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .copied()
            .collect();
        v.into_iter().collect()
    }

    /// Polls `cond` every 10 ms until it holds; panics after `timeout` with the log tail.
    #[track_caller]
    pub fn wait_until(&self, what: &str, timeout: Duration, mut cond: impl FnMut() -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if cond() {
                return;
            }
            if Instant::now() >= deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n--- supervisor log tail ---\n{}",
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// Waits until none of `procs` runs (gone, or a zombie waiting for its parent);
    /// a timeout names each one still running as [`Proc::describe`] sees it.
    #[track_caller]
    pub fn wait_all_gone(&self, what: &str, timeout: Duration, procs: &[Proc]) {
        let deadline = Instant::now() + timeout;
        loop {
            let running: Vec<&Proc> = procs.iter().filter(|p| p.is_running()).collect();
            if running.is_empty() {
                return;
            }
            if Instant::now() >= deadline {
                let survivors: Vec<String> = running.iter().map(|p| p.describe()).collect();
                panic!(
                    "timed out after {timeout:?} waiting for {what}; still running:\n{}\n--- supervisor log tail ---\n{}",
                    survivors.join("\n"),
                    self.log_tail(80)
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// The whole supervisor log (all runs, in order), without colour codes.
    pub fn log(&self) -> String {
        strip_ansi(&self.raw_log())
    }

    /// The whole supervisor log (all runs, in order), as written.
    pub fn raw_log(&self) -> String {
        let runs = *self.runs.lock().unwrap_or_else(PoisonError::into_inner);
        let mut out = String::new();
        for run in 1..=runs {
            if runs > 1 {
                out.push_str(&format!("===== supervisor run {run} =====\n"));
            }
            let bytes = fs::read(self.log_path(run)).unwrap_or_default();
            out.push_str(&String::from_utf8_lossy(&bytes));
        }
        out
    }

    /// The last `n` lines of [`Supervisor::log`].
    pub fn log_tail(&self, n: usize) -> String {
        let log = self.log();
        let lines: Vec<&str> = log.lines().collect();
        lines[lines.len().saturating_sub(n)..].join("\n")
    }

    /// The exit status if the current supervisor process has exited (reaps it).
    pub fn try_wait_exit(&self) -> Option<ExitStatus> {
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Waits (bounded) for the current supervisor process to exit; returns its status.
    pub fn wait_exit(&self, timeout: Duration) -> ExitStatus {
        let mut status = None;
        self.wait_until("the supervisor to exit", timeout, || {
            status = self.try_wait_exit();
            status.is_some()
        });
        status.expect("checked by wait_until")
    }

    /// SIGKILLs the supervisor process only (not its workers) and reaps it.
    pub fn kill_supervisor(&self) -> ExitStatus {
        // Learn the workers first: once the supervisor is gone they are no one's children.
        let _ = self.seen_workers();
        let mut child = self.child.lock().unwrap_or_else(PoisonError::into_inner);
        let c = child.as_mut().expect("a supervisor was started");
        let _ = c.kill();
        c.wait().expect("reap the supervisor")
    }

    /// Sends a signal to the supervisor process.
    pub fn signal_supervisor(&self, sig: Signal) {
        if let Some(p) = *self.sup.lock().unwrap_or_else(PoisonError::into_inner) {
            let _ = kill(Pid::from_raw(p.pid), sig);
        }
    }

    /// Starts a new supervisor on the same config and directories (the previous process
    /// must have exited or is killed here) and waits until every actor is ALIVE.
    pub fn restart_same_dirs(&self) {
        if self.try_wait_exit().is_none() {
            self.kill_supervisor();
        }
        self.spawn();
        self.wait_ready();
    }

    /// Kills the supervisor and every worker ever seen; reaps the supervisor.
    fn kill_everything(&self) {
        let sup = *self.sup.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(sup) = sup
            && sup.is_running()
        {
            // Freeze it so it cannot start another worker while we look for its children.
            let _ = kill(Pid::from_raw(sup.pid), Signal::SIGSTOP);
            let deadline = Instant::now() + Duration::from_secs(1);
            while Instant::now() < deadline
                && !matches!(
                    proc_stat(sup.pid),
                    Some(('T' | 't' | 'Z' | 'X', _, _)) | None
                )
            {
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        let workers = self.seen_workers();
        if let Some(c) = self
            .child
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .as_mut()
        {
            let _ = c.kill();
            let _ = c.wait();
        }
        for w in workers {
            w.signal(Signal::SIGKILL);
        }
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.kill_everything();
        if std::thread::panicking() {
            eprintln!(
                "--- supervisor log ({}) ---\n{}",
                self.dir.path().display(),
                self.log_tail(120)
            );
        }
    }
}

// ------------------------------------------------------------------------------------
// Helpers for durability, reload and hang tests.

impl Supervisor {
    /// Rewrites the config file with a new `body` (same directories and socket, composed
    /// as [`Supervisor::start`] does). Takes effect on a reload or the next start.
    pub fn write_config(&self, body: &str) {
        fs::write(
            &self.config_path,
            compose_config(body, &self.state_dir, &self.runtime_dir, &self.socket),
        )
        .expect("rewrite config");
    }

    /// Whether `status` lists an actor with this name.
    pub fn has_actor(&self, name: &str) -> bool {
        self.status()["actors"]
            .as_array()
            .is_some_and(|v| v.iter().any(|a| a["name"] == name))
    }

    /// How many supervisor processes were started so far (runs are numbered from 1).
    pub fn run_count(&self) -> u32 {
        *self.runs.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The log of one supervisor run (1-based), without colour codes.
    pub fn run_log(&self, run: u32) -> String {
        strip_ansi(&String::from_utf8_lossy(
            &fs::read(self.log_path(run)).unwrap_or_default(),
        ))
    }

    /// Like [`Supervisor::start`], but the supervisor is started by the command `make`
    /// returns for the config path (e.g. the binary wrapped in `unshare`, which must
    /// end up exec'ing `resurgam run --config CONFIG` so that the spawned pid is the
    /// supervisor). The harness's environment scrubbing, log capture and
    /// PR_SET_PDEATHSIG apply. Note: [`Supervisor::restart_same_dirs`] restarts with the
    /// plain binary, not with `make`.
    pub fn start_wrapped(body: &str, make: impl FnOnce(&Supervisor) -> Command) -> Supervisor {
        let sup = Supervisor::prepare(body, &[]);
        let cmd = make(&sup);
        sup.spawn_command(cmd);
        sup.wait_ready();
        sup
    }

    /// Spawns `cmd` as the supervisor process (see [`Supervisor::start_wrapped`]).
    fn spawn_command(&self, mut cmd: Command) {
        let run = {
            let mut runs = self.runs.lock().unwrap_or_else(PoisonError::into_inner);
            *runs += 1;
            *runs
        };
        let log = fs::File::create(self.log_path(run)).expect("create log file");
        let log2 = log.try_clone().expect("clone log file");
        cmd.env("RESURGAM_LOG", "info").env("NO_COLOR", "1");
        for var in SCRUBBED_ENV.iter().filter(|v| **v != "RESURGAM_LOG") {
            cmd.env_remove(var);
        }
        cmd.current_dir(self.dir.path())
            .stdin(Stdio::null())
            .stdout(log2)
            .stderr(log);
        // SAFETY: as in `spawn`: only prctl runs between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("spawn the supervisor");
        let pid = child.id() as i32;
        *self.sup.lock().unwrap_or_else(PoisonError::into_inner) =
            Proc::of(pid).or(Some(Proc { pid, start_time: 0 }));
        *self.child.lock().unwrap_or_else(PoisonError::into_inner) = Some(child);
    }
}

impl Supervisor {
    /// Starts a new supervisor on the same config and directories like
    /// [`Supervisor::restart_same_dirs`], but returns at once (while it restores and
    /// replays), e.g. to kill it again in the middle of its recovery.
    pub fn restart_same_dirs_no_wait(&self) {
        if self.try_wait_exit().is_none() {
            self.kill_supervisor();
        }
        self.spawn();
    }
}

impl Supervisor {
    /// Waits until no process holds the state directory's lock any more. After a
    /// SIGKILL of the supervisor, a worker it was forking at that moment holds a copy of
    /// the lock until its exec, and a new supervisor started in that window refuses to
    /// run ("in use by another supervisor").
    pub fn wait_state_dir_unlocked(&self) {
        use nix::fcntl::{Flock, FlockArg};
        let path = self.state_dir.join(".resurgam.lock");
        self.wait_until(
            "the state directory's lock to be free",
            START_TIMEOUT,
            || match fs::OpenOptions::new().read(true).open(&path) {
                Ok(f) => Flock::lock(f, FlockArg::LockExclusiveNonblock).is_ok(),
                Err(_) => true,
            },
        );
    }
}

// ------------------------------------------------------------------------------------
// Pipelined calls.

/// Sends `requests` pipelined on `c`, then takes the replies in whatever order they
/// come, each matched to its request by id. Panics (with the supervisor's log tail) on a
/// missing, unexpected, duplicate or failed reply. Returns each request's tag with its
/// `ok` value, in reply order.
pub fn pipeline<T>(
    sup: &Supervisor,
    c: &mut Client,
    who: &str,
    requests: Vec<(Value, T)>,
) -> Vec<(T, Value)> {
    let mut pending = std::collections::HashMap::new();
    for (req, tag) in requests {
        let id = c.send(req).expect("send");
        assert!(pending.insert(id, tag).is_none(), "{who}: id {id} reused");
    }
    c.flush().expect("flush");
    let mut answered = Vec::with_capacity(pending.len());
    while !pending.is_empty() {
        let reply = c.recv().unwrap_or_else(|e| {
            panic!(
                "{who}: no reply ({} pending): {e}\n{}",
                pending.len(),
                sup.log_tail(60)
            )
        });
        let id = reply.id.as_u64().expect("numeric id");
        let tag = pending
            .remove(&id)
            .unwrap_or_else(|| panic!("{who}: unexpected or duplicate reply id {id}"));
        let result = reply
            .into_result()
            .unwrap_or_else(|e| panic!("{who}: call {id} failed: {e:?}\n{}", sup.log_tail(60)));
        answered.push((tag, result));
    }
    answered
}

/// Asserts that no reply follows on `c`: every call it made was answered exactly once.
pub fn assert_no_stray_reply(c: &mut Client, who: &str) {
    c.set_timeout(Some(Duration::from_millis(200))).unwrap();
    match c.recv() {
        Err(resurgam::ClientError::Io(e))
            if matches!(
                e.kind(),
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
            ) => {}
        other => panic!("{who}: unexpected extra reply: {other:?}"),
    }
}

// ------------------------------------------------------------------------------------
// Skips.

/// Marks the calling test as skipped because `reason` keeps it from running on this
/// machine; the caller then returns. The line `SKIPPED: <test>: <reason>` goes straight
/// to the process's stderr (libtest captures only the print macros), so it shows in every
/// run's output and `.ci/run` counts it in the totals. Under CI (`$CI` set and not
/// "false") a skip is a failure: CI runs as root with every tool installed.
pub fn skip(reason: &str) {
    use std::io::Write;
    let test = std::thread::current().name().unwrap_or("?").to_string();
    if std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "false") {
        panic!("{test} cannot run here ({reason}); in CI a skip is a failure");
    }
    let _ = writeln!(std::io::stderr(), "SKIPPED: {test}: {reason}");
}

/// False (after [`skip`] says why) when this process is not root: tests that act as
/// another user or give files away need it. As root (CI) every such test runs.
pub fn root_or_skip(what: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    skip(&format!("not root, cannot {what}"));
    false
}

/// Kills and reaps a child on drop (also while unwinding); otherwise the child itself.
pub struct KillOnDrop(pub Child);

impl std::ops::Deref for KillOnDrop {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sets the flag when dropped (also while unwinding): a `thread::scope` whose body
/// panics would otherwise wait forever for the threads that loop until the flag is set.
pub struct StopOnDrop<'a>(pub &'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

/// True for the errors a client sees when the supervisor dies under it (a closed or
/// reset connection; not a timeout).
pub fn is_connection_loss(e: &resurgam::ClientError) -> bool {
    match e {
        resurgam::ClientError::Closed => true,
        resurgam::ClientError::Io(e) => !matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        _ => false,
    }
}

// ------------------------------------------------------------------------------------
// Starts that are meant to fail, or to leave an actor DEAD.

impl Supervisor {
    /// Starts a new supervisor on the same config and directories (the previous one is
    /// killed if running) that must refuse to start: waits (bounded) for it to exit,
    /// asserts a failure status, and returns its log.
    pub fn restart_expecting_refusal(&self) -> String {
        self.restart_same_dirs_no_wait();
        let status = self.wait_exit(START_TIMEOUT);
        let log = self.run_log(self.run_count());
        assert!(!status.success(), "the supervisor started:\n{log}");
        log
    }

    /// Starts a new supervisor on the same config and directories and waits until it
    /// serves `status`, whatever state its actors are in.
    pub fn restart_until_serving(&self) {
        self.restart_same_dirs_no_wait();
        self.wait_until("the supervisor to serve status", START_TIMEOUT, || {
            assert!(
                self.try_wait_exit().is_none(),
                "the supervisor exited:\n{}",
                self.log_tail(60)
            );
            self.try_status().is_ok()
        });
    }
}
