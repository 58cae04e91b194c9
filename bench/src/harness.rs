//! The benchmark's own supervisor: a temporary directory with a generated config, the
//! `resurgam run` child (the binary measured) with its JSON log lines captured to a file,
//! readiness by polling `status`, and a `Drop` that kills and reaps the supervisor and
//! makes sure its workers are gone too.

use std::collections::HashSet;
use std::fmt::Write as _;
use std::fs::{self, File};
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use resurgam::shared::ipc::WORKER_SCRUBBED_ENV;
use serde_json::Value;

use resurgam::Client;

use super::stats::proc_stat;
use super::{BenchError, Context, Result};

/// Environment variables that must not reach the benchmark's supervisor: what its
/// workers must not see either, and the directories systemd would give it.
const SCRUBBED_ENV: &[&str] = &["STATE_DIRECTORY", "RUNTIME_DIRECTORY"];

/// Read timeout of the clients handed out by [`Sup::client`].
pub(crate) const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

/// One `[[actor]]` table.
pub(crate) struct ActorConf {
    pub name: String,
    pub kind: &'static str,
    /// Extra keys with their values as TOML text (e.g. `("checkpoint_every", "0")`).
    pub keys: Vec<(&'static str, String)>,
}

impl ActorConf {
    pub(crate) fn new(name: impl Into<String>, kind: &'static str) -> ActorConf {
        ActorConf {
            name: name.into(),
            kind,
            keys: Vec::new(),
        }
    }

    /// Sets `key` to a TOML value given as text.
    pub(crate) fn set(mut self, key: &'static str, toml_value: impl Into<String>) -> ActorConf {
        self.keys.push((key, toml_value.into()));
        self
    }

    /// Sets `key` to a TOML string.
    pub(crate) fn set_str(self, key: &'static str, value: &str) -> ActorConf {
        self.set(key, toml_string(value))
    }
}

/// The generated config.
pub(crate) struct SupConf {
    pub durability: &'static str,
    pub max_request_bytes: Option<u64>,
    /// `[supervisor] busy_poll` (a duration text); `None` keeps the product's default.
    pub busy_poll: Option<String>,
    /// Put the runtime dir (checkpoint mappings, socket) on a tmpfs, as the packaged unit
    /// does (`RuntimeDirectory=` is under `/run`); otherwise beside the state dir.
    pub runtime_on_tmpfs: bool,
    pub actors: Vec<ActorConf>,
}

/// Where a tmpfs-backed runtime dir is made (`/dev/shm`, on every Linux with glibc).
const TMPFS_DIR: &str = "/dev/shm";

/// A TOML basic string.
pub(crate) fn toml_string(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

impl SupConf {
    fn render(&self, dir: &Path, runtime: &Path) -> String {
        let p = |rel: &str| toml_string(&dir.join(rel).display().to_string());
        let r = |rel: &str| toml_string(&runtime.join(rel).display().to_string());
        let mut t = String::new();
        let _ = writeln!(t, "[supervisor]");
        let _ = writeln!(t, "state_dir = {}", p("state"));
        let _ = writeln!(t, "runtime_dir = {}", r("run"));
        let _ = writeln!(t, "socket = {}", r("run/control.sock"));
        let _ = writeln!(t, "durability = {}", toml_string(self.durability));
        if let Some(n) = self.max_request_bytes {
            let _ = writeln!(t, "max_request_bytes = {n}");
        }
        if let Some(d) = &self.busy_poll {
            let _ = writeln!(t, "busy_poll = {}", toml_string(d));
        }
        for a in &self.actors {
            let _ = writeln!(t, "\n[[actor]]");
            let _ = writeln!(t, "name = {}", toml_string(&a.name));
            let _ = writeln!(t, "kind = {}", toml_string(a.kind));
            for (k, v) in &a.keys {
                let _ = writeln!(t, "{k} = {v}");
            }
        }
        t
    }
}

/// A running supervisor of the benchmark's own, in a temporary directory.
pub(crate) struct Sup {
    child: Child,
    pid: i32,
    /// Kept for its `Drop` (removes the directory after the processes are gone).
    dir: Option<tempfile::TempDir>,
    /// The runtime dir, when it is on a tmpfs (removed like `dir`).
    runtime: Option<tempfile::TempDir>,
    socket: PathBuf,
    log_path: PathBuf,
    /// The binary and config it runs with (a restart runs them again).
    exe: PathBuf,
    config: PathBuf,
    /// Restarts so far (each writes its log to a file of its own).
    restarts: usize,
    actors: usize,
    /// When the `run` process was started.
    pub spawned_wall: SystemTime,
    pub spawned_at: Instant,
}

impl Sup {
    /// Starts `exe run --config <tmp>/bench.toml` and returns at once (not yet serving).
    pub(crate) fn spawn(exe: &Path, conf: &SupConf) -> Result<Sup> {
        let dir = tempfile::Builder::new()
            .prefix("resurgam-bench-")
            .tempdir()
            .ctx(|| "create a temporary directory".to_string())?;
        let runtime = if conf.runtime_on_tmpfs {
            Some(
                tempfile::Builder::new()
                    .prefix("resurgam-bench-run-")
                    .tempdir_in(TMPFS_DIR)
                    .ctx(|| format!("create a temporary directory in {TMPFS_DIR}"))?,
            )
        } else {
            None
        };
        let runtime_base = runtime.as_ref().map_or(dir.path(), |r| r.path());
        let socket = runtime_base.join("run/control.sock");
        let config = dir.path().join("bench.toml");
        fs::write(&config, conf.render(dir.path(), runtime_base))
            .ctx(|| format!("write {}", config.display()))?;
        let log_path = dir.path().join("supervisor.log");
        let (child, spawned_wall, spawned_at) = spawn_run(exe, &config, &log_path)?;
        let pid = i32::try_from(child.id()).map_err(|_| BenchError::new("pid out of range"))?;
        Ok(Sup {
            child,
            pid,
            socket,
            log_path,
            exe: exe.to_path_buf(),
            config,
            restarts: 0,
            dir: Some(dir),
            runtime,
            actors: conf.actors.len(),
            spawned_wall,
            spawned_at,
        })
    }

    /// Starts a supervisor and waits until every actor is ALIVE.
    pub(crate) fn start(exe: &Path, conf: &SupConf, timeout: Duration) -> Result<Sup> {
        let sup = Sup::spawn(exe, conf)?;
        sup.wait_all_alive(timeout)?;
        Ok(sup)
    }

    pub(crate) fn pid(&self) -> i32 {
        self.pid
    }

    /// The supervisor's state directory.
    pub(crate) fn state_dir(&self) -> PathBuf {
        self.dir
            .as_ref()
            .map_or_else(PathBuf::new, |d| d.path().join("state"))
    }

    /// `kill -9` of the supervisor, as a crash would: waits until it and its workers are
    /// gone (they die with it: `PR_SET_PDEATHSIG`; stragglers are killed), its files left
    /// as they are. [`Sup::restart`] starts it again on the same directories.
    pub(crate) fn kill9(&mut self) -> Result<()> {
        let workers = children_of(self.pid);
        kill(Pid::from_raw(self.pid), Signal::SIGKILL)
            .ctx(|| format!("kill -9 the supervisor ({})", self.pid))?;
        self.child
            .wait()
            .ctx(|| "wait for the killed supervisor".to_string())?;
        let left = kill_leftovers(workers, Duration::from_secs(10));
        if left > 0 {
            return Err(BenchError::new(format!(
                "{left} worker(s) of the killed supervisor still run after 10 s"
            )));
        }
        Ok(())
    }

    /// Starts the supervisor again with the same binary, config and directories, its log
    /// in a file of its own (`supervisor.<n>.log`); returns at once (not yet serving).
    pub(crate) fn restart(&mut self) -> Result<()> {
        if matches!(self.child.try_wait(), Ok(None)) {
            return Err(BenchError::new("restart: the supervisor still runs"));
        }
        self.restarts += 1;
        let log_path = self
            .log_path
            .with_file_name(format!("supervisor.{}.log", self.restarts));
        let (child, wall, at) = spawn_run(&self.exe, &self.config, &log_path)?;
        self.pid = i32::try_from(child.id()).map_err(|_| BenchError::new("pid out of range"))?;
        self.child = child;
        self.log_path = log_path;
        self.spawned_wall = wall;
        self.spawned_at = at;
        Ok(())
    }

    pub(crate) fn socket(&self) -> &Path {
        &self.socket
    }

    pub(crate) fn log_path(&self) -> &Path {
        &self.log_path
    }

    /// The supervisor's log so far (its last `max` bytes), for error messages.
    pub(crate) fn log_tail(&self, max: u64) -> String {
        let mut text = String::new();
        if let Ok(mut f) = File::open(&self.log_path) {
            let len = f.metadata().map_or(0, |m| m.len());
            let _ = f.seek(SeekFrom::Start(len.saturating_sub(max)));
            let _ = f.read_to_string(&mut text);
        }
        text
    }

    /// Fails if the supervisor process has exited.
    pub(crate) fn check_running(&mut self) -> Result<()> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(BenchError::new(format!(
                "the supervisor exited ({status}); its log ends with:\n{}",
                self.log_tail(4000)
            ))),
            Err(e) => Err(BenchError::new(format!("waitpid on the supervisor: {e}"))),
        }
    }

    /// A new client connection with a generous read timeout.
    pub(crate) fn client(&self) -> Result<Client> {
        connect(&self.socket)
    }

    /// The `status` reply.
    pub(crate) fn status(&self) -> Result<Value> {
        self.client()
            .and_then(|mut c| c.status().ctx(|| "status".to_string()))
            .map_err(|e| BenchError::new(format!("{e} ({})", self.describe())))
    }

    /// Whether the supervisor still runs, and the end of its log (for error messages).
    pub(crate) fn describe(&self) -> String {
        let state = match proc_stat(self.pid) {
            None => "gone",
            Some(('Z' | 'X', _, _)) => "exited",
            Some(_) => "running",
        };
        format!(
            "the supervisor is {state}; its log ends with:\n{}",
            self.log_tail(1500)
        )
    }

    /// Polls `status` until every configured actor is ALIVE, or fails after `timeout`
    /// (with the counts per state and the log's tail).
    pub(crate) fn wait_all_alive(&self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        let mut last = String::from("the control socket never answered");
        loop {
            if let Ok(status) = Client::connect(&self.socket).and_then(|mut c| c.status()) {
                let counts = state_counts(&status);
                let alive = counts.iter().find(|(s, _)| s == "ALIVE").map_or(0, |c| c.1);
                if alive == self.actors {
                    return Ok(status);
                }
                last = format!("actor states: {counts:?}");
            }
            if Instant::now() >= deadline {
                return Err(BenchError::new(format!(
                    "not every actor was ALIVE within {timeout:?} ({last}); log tail:\n{}",
                    self.log_tail(3000)
                )));
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The pid of `actor`'s worker while it is ALIVE, checked to be a child of this
    /// supervisor (so a recycled pid is never killed).
    pub(crate) fn worker_pid(&self, actor: &str) -> Result<i32> {
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut c = self.client()?;
        loop {
            let status = c
                .status()
                .map_err(|e| BenchError::new(format!("status: {e} ({})", self.describe())))?;
            if let Some(pid) = alive_pid(&status, actor)
                && matches!(proc_stat(pid), Some((_, ppid, _)) if ppid == self.pid)
            {
                return Ok(pid);
            }
            if Instant::now() >= deadline {
                return Err(BenchError::new(format!(
                    "actor {actor} has no ALIVE worker after 30 s"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    /// The pids of every live child (the workers) of the supervisor.
    pub(crate) fn worker_pids(&self) -> Vec<i32> {
        children_of(self.pid)
            .into_iter()
            .map(|(pid, _)| pid)
            .collect()
    }
}

impl Drop for Sup {
    fn drop(&mut self) {
        // Every worker is a child of the supervisor: note them (with their start times, so
        // recycled pids are never hit), kill the supervisor, then make sure they are gone
        // (they also have PR_SET_PDEATHSIG(SIGKILL)).
        let workers = children_of(self.pid);
        if let Ok(Some(status)) = self.child.try_wait() {
            // It died before the benchmark was done with it: keep its log.
            let kept = std::env::temp_dir().join(format!("resurgam-bench-{}.log", self.pid));
            match fs::copy(&self.log_path, &kept) {
                Ok(_) => eprintln!(
                    "bench: the supervisor exited early ({status}); its log is in {}",
                    kept.display()
                ),
                Err(e) => eprintln!(
                    "bench: the supervisor exited early ({status}); keeping its log failed: {e}"
                ),
            }
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        kill_leftovers(workers, Duration::from_secs(5));
        if let Some(dir) = self.dir.take() {
            let _ = dir.close();
        }
        if let Some(dir) = self.runtime.take() {
            let _ = dir.close();
        }
    }
}

/// Starts `exe run --config CONFIG` with its JSON log lines going to `log_path`.
fn spawn_run(exe: &Path, config: &Path, log_path: &Path) -> Result<(Child, SystemTime, Instant)> {
    let log = File::create(log_path).ctx(|| format!("create {}", log_path.display()))?;
    let mut cmd = Command::new(exe);
    cmd.arg("run")
        .arg("--config")
        .arg(config)
        .args(["--log-format", "json"])
        .env("RESURGAM_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log));
    for var in SCRUBBED_ENV.iter().chain(WORKER_SCRUBBED_ENV) {
        cmd.env_remove(var);
    }
    let wall = SystemTime::now();
    let at = Instant::now();
    let child = cmd
        .spawn()
        .ctx(|| format!("start {} run --config {}", exe.display(), config.display()))?;
    Ok((child, wall, at))
}

/// Waits up to `wait` for the processes `workers` (pid, start time) to be gone, killing
/// each still running (a recycled pid is never hit); returns how many are left.
fn kill_leftovers(workers: Vec<(i32, u64)>, wait: Duration) -> usize {
    let deadline = Instant::now() + wait;
    let mut left: HashSet<(i32, u64)> = workers.into_iter().collect();
    while !left.is_empty() && Instant::now() < deadline {
        left.retain(|&(pid, start)| {
            let running = matches!(proc_stat(pid), Some((state, _, s)) if s == start && state != 'Z' && state != 'X');
            if running {
                let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
            }
            running
        });
        if !left.is_empty() {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    left.len()
}

/// Connects a client with [`CLIENT_TIMEOUT`].
pub(crate) fn connect(socket: &Path) -> Result<Client> {
    let mut c = Client::connect(socket).ctx(|| format!("connect to {}", socket.display()))?;
    c.set_timeout(Some(CLIENT_TIMEOUT))
        .ctx(|| "set the client's read timeout".to_string())?;
    Ok(c)
}

/// `(state, count)` of the actors in a `status` reply, sorted by state.
pub(crate) fn state_counts(status: &Value) -> Vec<(String, usize)> {
    let mut counts: Vec<(String, usize)> = Vec::new();
    for a in status["actors"].as_array().map_or(&[][..], Vec::as_slice) {
        let s = a["state"].as_str().unwrap_or("?").to_string();
        match counts.iter_mut().find(|(k, _)| *k == s) {
            Some((_, n)) => *n += 1,
            None => counts.push((s, 1)),
        }
    }
    counts.sort();
    counts
}

/// The pid of `actor` in a `status` reply if it is ALIVE.
pub(crate) fn alive_pid(status: &Value, actor: &str) -> Option<i32> {
    status["actors"]
        .as_array()?
        .iter()
        .find(|a| a["name"] == actor && a["state"] == "ALIVE")
        .and_then(|a| a["pid"].as_i64())
        .and_then(|p| i32::try_from(p).ok())
}

/// Every live process whose parent is `ppid`, with its start time.
fn children_of(ppid: i32) -> Vec<(i32, u64)> {
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter_map(|pid| {
            let (state, parent, start) = proc_stat(pid)?;
            (parent == ppid && state != 'Z' && state != 'X').then_some((pid, start))
        })
        .collect()
}

/// Reads a growing log file line by line, from where the previous read stopped.
pub(crate) struct LogTail {
    path: PathBuf,
    offset: u64,
    partial: String,
}

impl LogTail {
    /// Starts at the current end of the file.
    pub(crate) fn at_end(path: &Path) -> LogTail {
        let offset = fs::metadata(path).map_or(0, |m| m.len());
        LogTail {
            path: path.to_path_buf(),
            offset,
            partial: String::new(),
        }
    }

    /// Starts at the beginning of the file.
    pub(crate) fn from_start(path: &Path) -> LogTail {
        LogTail {
            path: path.to_path_buf(),
            offset: 0,
            partial: String::new(),
        }
    }

    /// The complete lines appended since the last call, parsed as JSON (others skipped).
    pub(crate) fn next_lines(&mut self) -> Vec<Value> {
        let mut out = Vec::new();
        let Ok(mut f) = File::open(&self.path) else {
            return out;
        };
        if f.seek(SeekFrom::Start(self.offset)).is_err() {
            return out;
        }
        let mut buf = Vec::new();
        let Ok(n) = f.read_to_end(&mut buf) else {
            return out;
        };
        self.offset += n as u64;
        self.partial.push_str(&String::from_utf8_lossy(&buf));
        while let Some(i) = self.partial.find('\n') {
            let line: String = self.partial.drain(..=i).collect();
            if let Ok(v) = serde_json::from_str::<Value>(line.trim_end()) {
                out.push(v);
            }
        }
        out
    }
}

/// A log line's message, actor and timestamp (µs since the epoch).
pub(crate) fn log_fields(line: &Value) -> (&str, &str, Option<i64>) {
    let f = &line["fields"];
    (
        f["message"].as_str().unwrap_or(""),
        f["actor"].as_str().unwrap_or(""),
        line["timestamp"]
            .as_str()
            .and_then(super::stats::parse_rfc3339_utc_micros),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_renders_with_escaped_strings() {
        let conf = SupConf {
            durability: "memory",
            max_request_bytes: Some(1 << 20),
            busy_poll: Some("0s".to_string()),
            runtime_on_tmpfs: false,
            actors: vec![
                ActorConf::new("c\"0", "counter")
                    .set("checkpoint_every", "0")
                    .set_str("checkpoint_interval", "0s"),
            ],
        };
        let t = conf.render(Path::new("/tmp/x\\y"), Path::new("/tmp/x\\y"));
        assert!(t.contains("state_dir = \"/tmp/x\\\\y/state\""), "{t}");
        assert!(t.contains("name = \"c\\\"0\""), "{t}");
        assert!(t.contains("checkpoint_interval = \"0s\""), "{t}");
        assert!(t.contains("max_request_bytes = 1048576"), "{t}");
        assert!(t.contains("busy_poll = \"0s\""), "{t}");
    }

    #[test]
    fn status_helpers() {
        let v = serde_json::json!({"actors": [
            {"name": "a", "state": "ALIVE", "pid": 7},
            {"name": "b", "state": "STARTING", "pid": 8},
            {"name": "c", "state": "ALIVE", "pid": 9}
        ]});
        assert_eq!(alive_pid(&v, "a"), Some(7));
        assert_eq!(alive_pid(&v, "b"), None);
        assert_eq!(
            state_counts(&v),
            vec![("ALIVE".to_string(), 2), ("STARTING".to_string(), 1)]
        );
    }
}
