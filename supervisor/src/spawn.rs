//! Starting workers and moving their messages.
//!
//! A worker is forked by the fork server ([`crate::shell::forkserver`]): a
//! single-threaded process forked before the supervisor's first thread, so its child may
//! run the worker's code at once, with no exec. When there is no fork server (it died
//! and its successor is not up yet, or it cannot be used), this very binary
//! (`/proc/self/exe`) is spawned through `std::process::Command` (posix_spawn: no code of
//! ours runs in the child before exec), never by a bare `fork` of this multi-threaded
//! process. Either way the worker gets the name of an `IpcOneShotServer`, closes every
//! fd it inherited beyond stdio, and connects back. Its stdout and stderr go through a
//! pipe into the supervisor's log, line by line, with its name.
//!
//! Spawning happens on a few long-lived threads: `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked a child exits, so a short-lived spawning thread would kill its
//! workers (and a fork server it started).
//!
//! The worker's stdin is one end of a socket pair, its report socket (the worker moves it
//! off fd 0 at once). A short-lived thread accepts the worker's bootstrap connection (its
//! hello carries the worker's inbound ipc channel) and hands the channel and our end of
//! the report socket to the event loop, which sends `Init` and reads reports from then
//! on. The main loop
//! sends to the worker directly: ipc `send` blocks only when the socket buffer
//! (~208 KiB) is full, and the core never has more than a few small messages
//! outstanding per worker (at most `MAX_INFLIGHT_BATCHES` batches of at most
//! `SHM_THRESHOLD` bytes inline, one checkpoint request, one ping), so even a stopped
//! worker cannot make it block.

use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crossbeam_channel::Receiver;
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use resurgam_shared::ipc::{
    ENV_BOOTSTRAP, ENV_PARENT_PID, ExecInit, FromWorker, IPC_VERSION, Init, Privileges,
    WORKER_SCRUBBED_ENV,
};

use crate::core::{ActorId, Event};
use crate::shell::forkserver::{ForkError, ForkServer};
use crate::shell::output::{OutputRelay, Pipe};
use crate::shell::{LoopTx, ShellEvent};

/// A request to start one worker.
pub enum SpawnJob {
    /// A worker for this actor's `epoch`, to be sent `init` once it said hello.
    Actor {
        actor: ActorId,
        epoch: u64,
        init: Box<Init>,
    },
    /// A standby worker: bootstrapped, then kept waiting until an actor takes it.
    /// `epoch`: the pool's, when it asked (see [`crate::shell::standby::StandbyPool::renew`]).
    Standby { epoch: u64 },
    /// Start a new fork server if there is none (the running one was lost).
    ForkServer,
    /// Start a new fork server from the binary on disk if it changed (reload).
    Upgrade,
}

/// Name a standby worker goes by (its process title, its output) until an actor takes it.
pub const STANDBY_NAME: &str = "standby";

/// Starts the spawner thread. It lives as long as `jobs` has senders.
/// Spawner threads: a spawn mostly waits for the child's exec, so a few of them start
/// many actors faster (1,000 at start-up) on few cores.
pub const SPAWNERS: usize = 4;

/// Starts the spawner threads. They live as long as `jobs` has senders (forever, in
/// practice: a worker's PR_SET_PDEATHSIG is tied to the thread that started it).
pub fn start_spawners(
    jobs: Receiver<SpawnJob>,
    events: LoopTx,
    output: OutputRelay,
    forks: Arc<ForkServer>,
) -> std::io::Result<()> {
    for i in 0..SPAWNERS {
        let (jobs, events, output) = (jobs.clone(), events.clone(), output.clone());
        let forks = forks.clone();
        std::thread::Builder::new()
            .name(format!("spawner-{i}"))
            .spawn(move || {
                for job in jobs {
                    let (target, standby_epoch) = match job {
                        SpawnJob::Actor { actor, epoch, init } => (Some((actor, epoch, init)), 0),
                        SpawnJob::Standby { epoch } => (None, epoch),
                        SpawnJob::ForkServer => {
                            forks.ensure_running();
                            continue;
                        }
                        SpawnJob::Upgrade => {
                            upgrade(&forks, &events);
                            continue;
                        }
                    };
                    spawn_one(target, standby_epoch, &events, &output, &forks);
                }
            })?;
    }
    Ok(())
}

/// Replaces the fork server if the binary on disk changed; the loop then replaces the
/// standby workers forked from the old one.
fn upgrade(forks: &ForkServer, events: &LoopTx) {
    match forks.pick_up_upgrade() {
        Ok(Some(pid)) => {
            let _ = events.send(ShellEvent::ForkServerUpgraded { pid });
        }
        Ok(None) => {}
        Err(e) => {
            tracing::warn!(error = %e, "the binary changed on disk but cannot be used; workers keep starting from the running one")
        }
    }
}

/// What a worker is started for: an actor's epoch (with its `Init`), or the standby pool.
type Target = Option<(ActorId, u64, Box<Init>)>;

fn spawn_one(
    target: Target,
    standby_epoch: u64,
    events: &LoopTx,
    output: &OutputRelay,
    forks: &ForkServer,
) {
    let name = match &target {
        Some((_, _, init)) => init.actor.clone(),
        None => STANDBY_NAME.to_string(),
    };
    let fail = |error: String| {
        let ev = match &target {
            Some((actor, epoch, _)) => ShellEvent::Core(Event::SpawnFailed {
                actor: *actor,
                epoch: *epoch,
                error,
            }),
            None => {
                tracing::warn!(%error, "cannot start a standby worker");
                ShellEvent::StandbyFailed { pid: None }
            }
        };
        let _ = events.send(ev);
    };
    let (server, server_name) = match IpcOneShotServer::<FromWorker>::new() {
        Ok(s) => s,
        Err(e) => return fail(format!("create bootstrap server: {e}")),
    };
    // The worker's stdout and stderr both go into one pipe that a relay thread turns
    // into log lines carrying the actor's name (the journal then says whose they are).
    let (out_r, out_w, err_w) = match output_pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("create the output pipe: {e}")),
    };
    // The worker's end of its report socket is its stdin (what posix_spawn can pass; the
    // worker moves it away from fd 0 at once). Both ends are close-on-exec here, so no
    // other child started meanwhile inherits them.
    let (reports, worker_end) = match UnixStream::pair() {
        Ok(p) => p,
        Err(e) => return fail(format!("create the report socket: {e}")),
    };
    let pid = match start_worker(forks, &name, &server_name, worker_end, out_w, err_w) {
        Ok(pid) => pid,
        Err(e) => return fail(e.to_string()),
    };
    output.add(Pipe {
        file: out_r,
        actor: name.clone(),
        pid,
    });
    let ev = match &target {
        Some((actor, epoch, _)) => ShellEvent::Spawned {
            actor: *actor,
            epoch: *epoch,
            pid,
            server_name,
        },
        None => ShellEvent::StandbySpawned {
            pid,
            server_name,
            epoch: standby_epoch,
        },
    };
    let _ = events.send(ev);
    // The accept waits for the worker's exec and start-up: on a thread of its own, so a
    // worker that never connects holds up no other spawn. (Only the spawning thread's
    // death matters to PR_SET_PDEATHSIG; this one may end whenever it likes.)
    let events2 = events.clone();
    let started = std::thread::Builder::new()
        .name(format!("boot-{name}"))
        .stack_size(256 * 1024)
        .spawn(move || bootstrap(server, pid, target, reports, &events2));
    if let Err(e) = started {
        tracing::error!(actor = %name, pid, error = %e, "cannot start the bootstrap thread; killing the worker");
        kill_group(pid);
    }
}

/// Why a process could not be spawned.
#[derive(Debug, thiserror::Error)]
pub enum SpawnError {
    /// `posix_spawn` (or the fork and exec std does instead) failed.
    #[error(transparent)]
    Spawn(std::io::Error),
    /// The exec failed and std's own wait for the child did not work out (the loop had
    /// reaped it).
    #[error("exec failed")]
    Exec,
}

/// Why the worker process for `name` (an actor, or the standby pool) could not be started.
#[derive(Debug, thiserror::Error)]
#[error("start worker process: {error}")]
struct StartWorkerError {
    name: String,
    #[source]
    error: SpawnError,
}

/// Starts the worker process: forked by the fork server, or (when there is none, or it
/// failed) spawned from this binary. Returns its pid. Our copies of its descriptors are
/// closed when this returns, so the output relay sees the pipe's end when it exits.
fn start_worker(
    forks: &ForkServer,
    name: &str,
    server_name: &str,
    report: UnixStream,
    out_w: OwnedFd,
    err_w: OwnedFd,
) -> Result<u32, StartWorkerError> {
    match forks.fork(
        name,
        server_name,
        [report.as_fd(), out_w.as_fd(), err_w.as_fd()],
    ) {
        Ok(pid) => return Ok(pid),
        Err(ForkError::Unavailable) => {}
        Err(e) => {
            tracing::warn!(actor = %name, error = %e, "starting the worker by posix_spawn instead")
        }
    }
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(format!("resurgam-worker[{name}]"))
        .env(ENV_BOOTSTRAP, server_name)
        .env(ENV_PARENT_PID, std::process::id().to_string())
        .stdin(Stdio::from(OwnedFd::from(report)))
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        // Own process group: a terminal's Ctrl-C reaches the supervisor only, which
        // then stops the workers in order.
        .process_group(0);
    for var in WORKER_SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    spawn_detached(&mut cmd).map_err(|error| StartWorkerError {
        name: name.to_string(),
        error,
    })
}

/// Spawns `cmd` and returns the child's pid without keeping a handle: the event loop
/// reaps it (`waitpid(-1)`), and dropping `cmd` afterwards closes our copies of
/// the descriptors it passed.
pub(crate) fn spawn_detached(cmd: &mut Command) -> Result<u32, SpawnError> {
    // When exec fails, std waits for the child itself and asserts that the wait worked;
    // the event loop may have reaped it first. Keep this thread (a spawner's death
    // would SIGKILL its workers through PR_SET_PDEATHSIG) and report the failure.
    let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()));
    match spawned {
        // Dropping a Child neither kills nor waits for it.
        Ok(Ok(child)) => Ok(child.id()),
        Ok(Err(e)) => Err(SpawnError::Spawn(e)),
        Err(_) => Err(SpawnError::Exec),
    }
}

/// The `Init` of a worker for this actor.
#[allow(clippy::too_many_arguments)]
pub fn init_for(
    name: &str,
    kind: &str,
    mmap_path: &std::path::Path,
    disk_path: &std::path::Path,
    policy: &resurgam_shared::config::Policy,
    spin_micros: u64,
    exec: Option<ExecInit>,
    privileges: Privileges,
) -> Init {
    Init {
        version: IPC_VERSION,
        actor: name.to_string(),
        kind: kind.to_string(),
        mmap_path: mmap_path.as_os_str().as_bytes().to_vec(),
        disk_path: disk_path.as_os_str().as_bytes().to_vec(),
        checkpoint_every: policy.checkpoint_every,
        spin_micros,
        calls_waiting: false,
        max_reply_bytes: policy.max_reply_bytes,
        exec,
        privileges,
        state_dir_id: [0; 16],
    }
}

/// Accepts the worker's bootstrap connection, checks its hello and hands the worker's
/// channel, its report socket and its `Init` to the loop (which sends the `Init`: so no
/// report can come before the loop reads the socket).
fn bootstrap(
    server: IpcOneShotServer<FromWorker>,
    pid: u32,
    target: Target,
    reports: UnixStream,
    events: &LoopTx,
) {
    let failed = || {
        let ev = match &target {
            Some((actor, epoch, _)) => ShellEvent::BootstrapFailed {
                actor: *actor,
                epoch: *epoch,
            },
            None => ShellEvent::StandbyFailed { pid: Some(pid) },
        };
        let _ = events.send(ev);
    };
    let who = target
        .as_ref()
        .map_or(STANDBY_NAME, |(_, _, i)| i.actor.as_str());
    let (_rx, first) = match server.accept() {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(actor = %who, pid, error = %e, "bootstrap connection failed");
            return failed();
        }
    };
    let to_worker = match first {
        FromWorker::Hello {
            version,
            pid: wpid,
            to_worker,
        } if version == IPC_VERSION && wpid == pid => to_worker,
        FromWorker::Abort => return failed(),
        other => {
            tracing::error!(actor = %who, pid, message = ?other, "worker sent a bad hello; killing it");
            kill_group(pid);
            return failed();
        }
    };
    let ev = match target {
        Some((actor, epoch, init)) => ShellEvent::Connected {
            actor,
            epoch,
            outbox: to_worker,
            reports,
            init,
        },
        None => ShellEvent::StandbyReady {
            pid,
            outbox: to_worker,
            reports,
        },
    };
    let _ = events.send(ev);
}

/// Kills a worker that is not reaped yet and everything in its process group (the worker
/// leads a group of its own: an exec actor's program and whatever it started are in it).
pub(crate) fn kill_group(pid: u32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if let Ok(pid) = i32::try_from(pid)
        && pid > 1
    {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// Kills what a reaped worker left in its process group (an exec actor's program, the
/// program's children). The group id stays reserved while any member lives, so this
/// cannot reach another process.
pub(crate) fn kill_leftovers(pid: i32) {
    use nix::sys::signal::{Signal, kill};
    use nix::unistd::Pid;
    if pid > 1 {
        let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
    }
}

/// Puts the workers' bootstrap rendezvous on a tmpfs when one is at hand. Each bootstrap
/// is an `IpcOneShotServer`: a socket in a fresh private directory from the tempfile
/// crate's temporary directory, created and removed per worker; on a disk file system
/// (`/tmp` often is one) that is two journal transactions per worker start. Candidates,
/// in order: the runtime directory (tmpfs under systemd), `$XDG_RUNTIME_DIR`,
/// `/dev/shm`; the first that is a tmpfs directory we may write wins, else nothing
/// changes. Call once, at start-up.
pub fn bootstrap_on_tmpfs(runtime_dir: &Path) {
    let candidates = [
        Some(runtime_dir.to_path_buf()),
        std::env::var_os("XDG_RUNTIME_DIR").map(PathBuf::from),
        Some(PathBuf::from("/dev/shm")),
    ];
    let usable = |dir: &Path| {
        dir.is_absolute()
            && nix::sys::statfs::statfs(dir)
                .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::TMPFS_MAGIC)
            && nix::unistd::access(
                dir,
                nix::unistd::AccessFlags::W_OK | nix::unistd::AccessFlags::X_OK,
            )
            .is_ok()
    };
    if let Some(dir) = candidates.into_iter().flatten().find(|d| usable(d))
        && tempfile::env::override_temp_dir(&dir).is_ok()
    {
        tracing::debug!(dir = %dir.display(), "worker bootstrap sockets on tmpfs");
    }
}

/// A pipe for a worker's output: the read end, and two write ends (stdout, stderr).
fn output_pipe() -> std::io::Result<(std::fs::File, OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let w2 = w.try_clone()?;
    Ok((std::fs::File::from(r), w, w2))
}

/// Unblocks a reader still waiting in `accept` for a worker that died before it
/// connected (the one-shot server has no accept timeout).
pub fn abandon(server_name: String) {
    let _ = std::thread::Builder::new()
        .name("abandon".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            if let Ok(tx) = IpcSender::<FromWorker>::connect(server_name) {
                let _ = tx.send(FromWorker::Abort);
            }
        });
}
