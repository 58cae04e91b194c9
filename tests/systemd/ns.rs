//! A real systemd (system mode, v252 on Debian 12) as PID 1 of private namespaces, for
//! the systemd tests. Booted by `boot_ns.sh` (read its header: it gives the namespace
//! its own tmpfs over /run, /tmp and /var/{tmp,lib,log,cache}, masks the tmpfiles and
//! sysinit units, so the host's /tmp is never emptied, and gives it cgroups of its own).
//!
//! [`Namespace::boot`] runs `boot_ns.sh`, which execs `unshare --kill-child=SIGKILL …`
//! under the same pid (PR_SET_PDEATHSIG is a second line of defence should this process
//! die), and waits, bounded, for `systemctl is-system-running`. Dropping it SIGKILLs
//! that unshare, which takes namespace PID 1 and everything in the namespace down, reaps
//! it, waits until PID 1 is gone and removes the namespace's cgroups.

use std::fs;
use std::io::{self, Read};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// The boot script, next to this file.
pub const BOOT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/systemd/boot_ns.sh");
/// Where boot_ns.sh installs `payload/` inside the namespace.
pub const PAYLOAD_DIR: &str = "/run/resurgam-test";
/// systemd's own binary on Debian.
pub const SYSTEMD: &str = "/lib/systemd/systemd";
/// How long the namespace may take to boot.
const BOOT_TIMEOUT: Duration = Duration::from_secs(30);

/// Environment variables that must not leak from the test's own environment into the
/// commands run in the namespace.
const SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RESURGAM_SOCKET",
    "RESURGAM_LOG",
    "STATE_DIRECTORY",
    "RUNTIME_DIRECTORY",
    "SYSTEMD_PAGER",
];

/// Why the systemd tests cannot run on this machine, if they cannot: not root, or no
/// unshare/nsenter, or no systemd. (Anything else that fails is a test failure.)
pub fn skip_reason() -> Option<String> {
    if !nix::unistd::geteuid().is_root() {
        return Some("not root (booting systemd in a namespace needs root)".into());
    }
    for tool in ["unshare", "nsenter", "systemctl"] {
        if which(tool).is_none() {
            return Some(format!("no `{tool}` on PATH"));
        }
    }
    if !Path::new(SYSTEMD).exists() {
        return Some(format!("systemd is not installed ({SYSTEMD} missing)"));
    }
    None
}

/// The first executable called `name` on $PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Runs `cmd` (stdin null, output captured) and kills it if it outlives `timeout`.
/// Err only when it could not be started or had to be killed.
pub fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<Output, String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let shown = format!("{cmd:?}");
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {shown}: {e}"))?;
    let readers = [
        child.stdout.take().map(|r| read_all_thread(Box::new(r))),
        child.stderr.take().map(|r| read_all_thread(Box::new(r))),
    ];
    let deadline = Instant::now() + timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Ok(s),
            Ok(None) if Instant::now() >= deadline => break Err("timeout"),
            Ok(None) => std::thread::sleep(Duration::from_millis(10)),
            Err(_) => break Err("wait failed"),
        }
    };
    if status.is_err() {
        let _ = child.kill();
        let _ = child.wait();
    }
    let [out, err] = readers.map(|r| r.and_then(|h| h.join().ok()).unwrap_or_default());
    match status {
        Ok(status) => Ok(Output {
            status,
            stdout: out,
            stderr: err,
        }),
        Err(why) => Err(format!(
            "{shown}: {why} after {timeout:?}; stdout {:?}, stderr {:?}",
            String::from_utf8_lossy(&out),
            String::from_utf8_lossy(&err)
        )),
    }
}

fn read_all_thread(mut r: Box<dyn Read + Send>) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = r.read_to_end(&mut v);
        v
    })
}

/// `(state, starttime)` of a host pid, from /proc.
fn proc_identity(pid: i32) -> Option<(char, u64)> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some((
        fields.first()?.chars().next()?,
        fields.get(19)?.parse().ok()?,
    ))
}

/// True if host pid `pid` is PID 1 of a child pid namespace ("NSpid:\tHOSTPID\t1").
fn is_namespace_init(pid: i32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/status")).is_ok_and(|s| {
        s.lines()
            .find_map(|l| l.strip_prefix("NSpid:"))
            .is_some_and(|ids| {
                let ids: Vec<&str> = ids.split_whitespace().collect();
                ids.len() >= 2 && ids.last() == Some(&"1")
            })
    })
}

/// Removes the cgroup directory `dir` and every cgroup below it, deepest first (a
/// cgroup can only be removed once it has no children and no processes).
fn remove_cgroup_tree(dir: &Path) -> io::Result<()> {
    for entry in fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            remove_cgroup_tree(&entry.path())?;
        }
    }
    match fs::remove_dir(dir) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// A booted systemd in its own namespaces.
pub struct Namespace {
    unshare: Child,
    /// Host pid and start time of namespace PID 1 (systemd).
    pid1: i32,
    pid1_start: u64,
    console: PathBuf,
    /// The cgroups boot_ns.sh made for the namespace, one path a line: removed on drop.
    cgroups: PathBuf,
}

impl Namespace {
    /// Boots systemd from `staging` (see boot_ns.sh for its layout); the console log goes
    /// to `staging/console.log`.
    pub fn boot(staging: &Path) -> Result<Namespace, String> {
        let console = staging.join("console.log");
        let log = fs::File::create(&console).map_err(|e| format!("create console log: {e}"))?;
        let log2 = log
            .try_clone()
            .map_err(|e| format!("dup console log: {e}"))?;
        // boot_ns.sh moves itself into cgroups of its own, then execs unshare (same pid).
        let mut cmd = Command::new("bash");
        cmd.arg(BOOT_SCRIPT)
            .arg(staging)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        // SAFETY: the closure runs in the child between fork and exec and makes a single
        // prctl(2) call, which is async-signal-safe; it allocates nothing.
        unsafe {
            cmd.pre_exec(|| {
                // If this test process dies without running Drop, unshare dies too,
                // and --kill-child takes the namespace down with it.
                nix::sys::prctl::set_pdeathsig(Signal::SIGKILL).map_err(io::Error::from)
            });
        }
        let unshare = cmd
            .spawn()
            .map_err(|e| format!("spawn {BOOT_SCRIPT}: {e}"))?;
        let mut ns = Namespace {
            pid1: 0,
            pid1_start: 0,
            unshare,
            console,
            cgroups: staging.join("cgroups"),
        };
        ns.wait_for_boot()?;
        Ok(ns)
    }

    fn wait_for_boot(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + BOOT_TIMEOUT;
        let upid = self.unshare.id();
        // unshare forks namespace PID 1 (boot_ns.sh again, which execs systemd). Before
        // the exec of unshare, the script's own helpers (awk, mktemp) are its children:
        // only a process that is PID 1 of a child pid namespace counts.
        loop {
            if let Ok(Some(status)) = self.unshare.try_wait() {
                return Err(format!(
                    "unshare exited early ({status}); console:\n{}",
                    self.console_tail()
                ));
            }
            let children = fs::read_to_string(format!("/proc/{upid}/task/{upid}/children"))
                .unwrap_or_default();
            if let Some(pid) = children
                .split_whitespace()
                .filter_map(|p| p.parse::<i32>().ok())
                .find(|&p| is_namespace_init(p))
                && let Some((_, start)) = proc_identity(pid)
            {
                self.pid1 = pid;
                self.pid1_start = start;
                break;
            }
            if Instant::now() >= deadline {
                return Err("unshare did not start namespace PID 1".into());
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let mut last = String::new();
        loop {
            if let Ok(out) =
                self.try_exec(&["systemctl", "is-system-running"], Duration::from_secs(10))
            {
                last = String::from_utf8_lossy(&out.stdout).trim().to_string();
                if last == "running" || last == "degraded" {
                    return Ok(());
                }
            }
            if Instant::now() >= deadline {
                return Err(format!(
                    "systemd in the namespace is not running after {BOOT_TIMEOUT:?} (last state {last:?}); console:\n{}",
                    self.console_tail()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Runs `args` inside every namespace of the booted systemd (nsenter -a).
    pub fn try_exec(&self, args: &[&str], timeout: Duration) -> Result<Output, String> {
        let mut cmd = Command::new("nsenter");
        cmd.arg("-t")
            .arg(self.pid1.to_string())
            .arg("-a")
            .args(args);
        run_bounded(cmd, timeout)
    }

    /// A host path that reaches `path` in the namespace's file system view.
    pub fn host_path(&self, path: &str) -> PathBuf {
        PathBuf::from(format!("/proc/{}/root{path}", self.pid1))
    }

    /// The last lines of boot_ns.sh's output and of systemd's console.
    pub fn console_tail(&self) -> String {
        let read = |p: &Path| fs::read_to_string(p).unwrap_or_default();
        let systemd = self.console.with_file_name("systemd.log");
        format!(
            "{}\n{}",
            tail(&read(&self.console), 20),
            tail(&read(&systemd), 20)
        )
    }
}

/// The last `n` lines of `text`.
pub fn tail(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

impl Drop for Namespace {
    fn drop(&mut self) {
        // --kill-child: unshare's death SIGKILLs namespace PID 1, and the death of a pid
        // namespace's PID 1 SIGKILLs every process in it.
        let _ = self.unshare.kill();
        let _ = self.unshare.wait();
        let alive = |pid: i32, start: u64| {
            pid > 0
                && matches!(proc_identity(pid), Some((state, s)) if s == start && state != 'Z' && state != 'X')
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while alive(self.pid1, self.pid1_start) && Instant::now() < deadline {
            let _ = kill(Pid::from_raw(self.pid1), Signal::SIGKILL);
            std::thread::sleep(Duration::from_millis(10));
        }
        // The cgroups: only paths boot_ns.sh made (resurgam-test-* under /sys/fs/cgroup).
        let list = fs::read_to_string(&self.cgroups).unwrap_or_default();
        for dir in list.lines().map(Path::new) {
            let ours = dir.starts_with("/sys/fs/cgroup")
                && dir
                    .file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with("resurgam-test-"));
            if !ours {
                continue;
            }
            // The last processes may take a moment to leave them.
            while remove_cgroup_tree(dir).is_err() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
    }
}
