//! Starting workers and moving their messages.
//!
//! Workers are started by spawning this very binary (`/proc/self/exe`) through
//! `std::process::Command` (posix_spawn: no code of ours runs in the child before exec,
//! and its cost does not grow with the supervisor's memory), never by a bare `fork` of
//! this multi-threaded process. The child finds the name of an `IpcOneShotServer` in its
//! environment, closes every fd it inherited beyond stdio, and connects back. Its stdout
//! and stderr go through a pipe into the supervisor's log, line by line, with its name.
//!
//! Spawning happens on a few long-lived threads: `PR_SET_PDEATHSIG` fires when the
//! *thread* that forked a child exits, so a short-lived spawning thread would kill its
//! workers.
//!
//! Per worker there is one reader thread: it accepts the bootstrap connection, then turns
//! every message into an event. The main loop sends to the worker directly: ipc `send`
//! blocks only when the socket buffer (~208 KiB) is full, and the core never has more
//! than a few small messages outstanding per worker (at most `MAX_INFLIGHT_BATCHES`
//! batches of at most `SHM_THRESHOLD` bytes inline, one checkpoint request, one ping),
//! so even a stopped worker cannot make it block.

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use crossbeam_channel::{Receiver, Sender};
use ipc_channel::ipc::{IpcOneShotServer, IpcSender};

use resurgam_shared::ipc::{
    ENV_BOOTSTRAP, ENV_PARENT_PID, ExecInit, FromWorker, IPC_VERSION, Init, Privileges, ToWorker,
    decode_replies,
};

use crate::core::{ActorId, Event};
use crate::run::ShellEvent;

/// Environment variables a worker must never see: it must not speak for the service,
/// nor find the control socket.
pub(crate) const WORKER_SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RESURGAM_SOCKET",
];

/// A request to start one worker.
pub struct SpawnJob {
    pub actor: ActorId,
    pub epoch: u64,
    pub name: String,
    pub kind: String,
    pub mmap_path: PathBuf,
    pub disk_path: PathBuf,
    pub checkpoint_every: u64,
    /// Kind `exec`: the program the worker starts.
    pub exec: Option<ExecInit>,
    pub privileges: Privileges,
}

/// Starts the spawner thread. It lives as long as `jobs` has senders.
/// Spawner threads: a spawn mostly waits for the child's exec, so a few of them start
/// many actors faster (1,000 at start-up) on few cores.
pub const SPAWNERS: usize = 4;

/// Starts the spawner threads. They live as long as `jobs` has senders (forever, in
/// practice: a worker's PR_SET_PDEATHSIG is tied to the thread that started it).
pub fn start_spawners(jobs: Receiver<SpawnJob>, events: Sender<ShellEvent>) -> std::io::Result<()> {
    for i in 0..SPAWNERS {
        let (jobs, events) = (jobs.clone(), events.clone());
        std::thread::Builder::new()
            .name(format!("spawner-{i}"))
            .spawn(move || {
                for job in jobs {
                    spawn_one(job, &events);
                }
            })?;
    }
    Ok(())
}

fn spawn_one(job: SpawnJob, events: &Sender<ShellEvent>) {
    let (actor, epoch) = (job.actor, job.epoch);
    let fail = |error: String| {
        let _ = events.send(ShellEvent::Core(Event::SpawnFailed {
            actor,
            epoch,
            error,
        }));
    };
    let (server, server_name) = match IpcOneShotServer::<FromWorker>::new() {
        Ok(s) => s,
        Err(e) => return fail(format!("create bootstrap server: {e}")),
    };
    // The worker's stdout and stderr both go into one pipe that a relay thread turns
    // into log lines carrying the actor's name (the journal then says whose they are).
    let (output, out_w, err_w) = match output_pipe() {
        Ok(p) => p,
        Err(e) => return fail(format!("create the output pipe: {e}")),
    };
    let mut cmd = Command::new("/proc/self/exe");
    cmd.arg0(format!("resurgam-worker[{}]", job.name))
        .env(ENV_BOOTSTRAP, &server_name)
        .env(ENV_PARENT_PID, std::process::id().to_string())
        .stdin(Stdio::null())
        .stdout(Stdio::from(out_w))
        .stderr(Stdio::from(err_w))
        // Own process group: a terminal's Ctrl-C reaches the supervisor only, which
        // then stops the workers in order.
        .process_group(0);
    for var in WORKER_SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    // When exec fails, std waits for the child itself and asserts that the wait worked;
    // the reaper thread may have reaped it first. Keep this thread (its death would
    // SIGKILL every worker through PR_SET_PDEATHSIG) and report the failure.
    let spawned = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| cmd.spawn()));
    let child = match spawned {
        Ok(Ok(c)) => c,
        Ok(Err(e)) => return fail(format!("start worker process: {e}")),
        Err(_) => return fail("start worker process: exec failed".to_string()),
    };
    let pid = child.id();
    // The reaper thread collects the exit status with waitpid(-1); the Child handle is
    // dropped without waiting (dropping neither kills nor waits). Dropping `cmd` closes
    // our copies of the pipe's write end, so the relay sees the end when the worker exits.
    drop(child);
    drop(cmd);
    relay_output(output, job.name.clone(), pid);
    let _ = events.send(ShellEvent::Spawned {
        actor,
        epoch,
        pid,
        server_name,
    });
    let init = Init {
        version: IPC_VERSION,
        actor: job.name.clone(),
        kind: job.kind,
        mmap_path: job.mmap_path.as_os_str().as_bytes().to_vec(),
        disk_path: job.disk_path.as_os_str().as_bytes().to_vec(),
        checkpoint_every: job.checkpoint_every,
        exec: job.exec,
        privileges: job.privileges,
    };
    let events = events.clone();
    let spawned = std::thread::Builder::new()
        .name(format!("rx-{}", job.name))
        .stack_size(256 * 1024)
        .spawn(move || reader(server, actor, epoch, pid, init, events));
    if let Err(e) = spawned {
        tracing::error!(actor = %job.name, pid, error = %e, "cannot start reader thread; killing the worker");
        kill_group(pid);
    }
}

/// Accepts the worker's connection, hands its sender to a writer thread, then forwards
/// every message as an event until the worker's end closes.
fn reader(
    server: IpcOneShotServer<FromWorker>,
    actor: ActorId,
    epoch: u64,
    pid: u32,
    init: Init,
    events: Sender<ShellEvent>,
) {
    let closed = || ShellEvent::Core(Event::ChannelClosed { actor, epoch });
    let (rx, first) = match server.accept() {
        Ok(x) => x,
        Err(e) => {
            tracing::warn!(actor = %init.actor, pid, error = %e, "bootstrap connection failed");
            let _ = events.send(closed());
            return;
        }
    };
    let to_worker = match first {
        FromWorker::Hello {
            version,
            pid: wpid,
            to_worker,
        } if version == IPC_VERSION && wpid == pid => to_worker,
        FromWorker::Abort => {
            let _ = events.send(closed());
            return;
        }
        other => {
            tracing::error!(actor = %init.actor, pid, message = ?other, "worker sent a bad hello; killing it");
            kill_group(pid);
            let _ = events.send(closed());
            return;
        }
    };
    let name = init.actor.clone();
    if let Err(e) = to_worker.send(ToWorker::Init(init)) {
        tracing::warn!(actor = %name, pid, error = %e, "cannot send init to the worker");
    }
    if events
        .send(ShellEvent::Connected {
            actor,
            epoch,
            outbox: to_worker,
        })
        .is_err()
    {
        return;
    }
    loop {
        let msg = match rx.recv() {
            Ok(m) => m,
            Err(_) => break,
        };
        let event = match msg {
            FromWorker::Ready(restored) => Event::Ready {
                actor,
                epoch,
                restored,
            },
            FromWorker::Replies(replies) => Event::Replies {
                actor,
                epoch,
                replies,
            },
            FromWorker::RepliesShm(shm) => match decode_replies(&shm) {
                Ok(replies) => Event::Replies {
                    actor,
                    epoch,
                    replies,
                },
                Err(e) => {
                    tracing::error!(actor = %name, pid, error = %e, "undecodable reply batch; killing the worker");
                    kill_group(pid);
                    continue;
                }
            },
            FromWorker::Checkpointed {
                generation,
                last_seq,
                previous,
                bytes,
                micros,
            } => {
                tracing::debug!(actor = %name, pid, generation, last_seq, bytes, micros, "checkpoint written");
                Event::Checkpointed {
                    actor,
                    epoch,
                    generation,
                    last_seq,
                    previous,
                }
            }
            FromWorker::CheckpointFailed { message } => Event::CheckpointFailed {
                actor,
                epoch,
                message,
            },
            FromWorker::Fatal { message } => Event::Fatal {
                actor,
                epoch,
                message,
            },
            FromWorker::Crashed { reason } => Event::Crashed {
                actor,
                epoch,
                reason,
            },
            FromWorker::Pong => Event::Pong { actor, epoch },
            FromWorker::Hello { .. } | FromWorker::Abort => continue,
        };
        if events.send(ShellEvent::Core(event)).is_err() {
            return;
        }
    }
    let _ = events.send(closed());
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

/// A pipe for a worker's output: the read end, and two write ends (stdout, stderr).
fn output_pipe() -> std::io::Result<(std::fs::File, OwnedFd, OwnedFd)> {
    let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?;
    let w2 = w.try_clone()?;
    Ok((std::fs::File::from(r), w, w2))
}

/// Longest part of one output line that is logged; the rest of the line is dropped
/// (and counted in the log line). A program writing without newlines cannot make the
/// supervisor buffer more than this.
const MAX_OUTPUT_LINE: usize = 16 * 1024;

/// Logs every line a worker prints, with its actor and pid, until the worker is gone.
fn relay_output(output: std::fs::File, actor: String, pid: u32) {
    let spawned = std::thread::Builder::new()
        .name(format!("out-{actor}"))
        .stack_size(64 * 1024)
        .spawn(move || {
            let mut lines = OutputLines::default();
            let mut output = output;
            let mut chunk = vec![0u8; 8192];
            loop {
                match output.read(&mut chunk) {
                    Ok(0) => break,
                    Ok(n) => lines.push(&chunk[..n], |line| log_output(&actor, pid, line)),
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(_) => break,
                }
            }
            lines.finish(|line| log_output(&actor, pid, line));
        });
    if let Err(e) = spawned {
        tracing::warn!(pid, error = %e, "cannot start the output relay of a worker; its output is lost");
    }
}

fn log_output(actor: &str, pid: u32, line: &str) {
    tracing::info!(target: "worker", actor = %actor, pid, "{line}");
}

/// Splits a worker's output into lines of at most [`MAX_OUTPUT_LINE`] bytes.
#[derive(Default)]
struct OutputLines {
    line: Vec<u8>,
    dropped: usize,
}

impl OutputLines {
    /// Takes the next bytes; calls `emit` for every line they complete.
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_OUTPUT_LINE - self.line.len();
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.dropped += part.len() - keep;
            if complete {
                self.emit(&mut emit);
            }
            bytes = rest;
        }
    }

    /// Emits what is left (a last line without a newline).
    fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit(&mut emit);
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        if self.dropped > 0 {
            emit(&format!(
                "{text} … ({} more bytes of this line dropped)",
                self.dropped
            ));
        } else if !text.is_empty() {
            emit(text);
        }
        self.line.clear();
        self.dropped = 0;
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut l = OutputLines::default();
        for c in chunks {
            l.push(c, |s| out.push(s.to_string()));
        }
        l.finish(|s| out.push(s.to_string()));
        out
    }

    #[test]
    fn output_is_split_into_lines_across_chunks() {
        assert_eq!(
            lines(&[b"a\nb", b"c\n\n", b"d"]),
            vec!["a".to_string(), "bc".to_string(), "d".to_string()]
        );
    }

    #[test]
    fn an_endless_line_is_capped_and_what_was_dropped_is_counted() {
        let big = vec![b'x'; 3 * MAX_OUTPUT_LINE];
        let out = lines(&[&big, &big, b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with(&"x".repeat(MAX_OUTPUT_LINE)));
        assert!(
            out[0].ends_with(&format!(
                "({} more bytes of this line dropped)",
                5 * MAX_OUTPUT_LINE
            )),
            "{}",
            &out[0][MAX_OUTPUT_LINE..]
        );
        assert_eq!(out[1], "next");
    }
}
