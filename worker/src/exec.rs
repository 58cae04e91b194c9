//! The `exec` kind: the actor is a program of its own, spoken to over the exec worker
//! protocol (`docs/exec-protocol.md`).
//!
//! The worker process stays what it is for every kind (checkpoint file, channel to the
//! supervisor, sequence numbers, poison-call word); for an exec actor it starts the
//! program as its child with one end of a Unix stream socket as fd 3, and turns call
//! batches, checkpoints and restores into protocol frames:
//!
//! * a batch of calls is written as a pipeline of `C` frames while the answers are read
//!   (poll on both directions, so neither side can block the other on a full buffer);
//!   the poison-call word names the oldest unanswered call, so a death blames exactly
//!   the call the program was running;
//! * a checkpoint is `S` → `T` (raw bytes), a restore is `L` → `K`.
//!
//! Everything the program sends is untrusted: frame types, lengths and bodies are checked
//! against what may come next, and anything else ends the worker as crashed with the
//! reason ([`Failure::Crashed`]), never as a reply. A watcher thread waits for the
//! program: when it ends while the worker still needs it, the worker reports why and
//! exits at once, so a dead program is recovered without waiting for the next call.

use std::io::{self, Read, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::mpsc;
use std::time::Duration;

use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::wait::{WaitStatus, waitpid};
use nix::unistd::Pid;
use serde::Deserialize;

use resurgam_shared::ipc::{
    Call, ENV_BOOTSTRAP, ENV_PARENT_PID, EXIT_PROGRAM_FAILED, ExecInit, Outcome, Privileges, Report,
};

use crate::report::Reporter;
use resurgam_shared::protocol::ErrorKind;

use crate::sys;

/// The protocol version this worker speaks.
pub const PROTOCOL_VERSION: u64 = 1;
/// The program's end of the protocol socket.
pub const PROGRAM_FD: i32 = 3;
/// Environment variable naming [`PROGRAM_FD`], and the one with the actor's name (the
/// config refuses both in an actor's `env`).
pub use resurgam_shared::ipc::{ENV_ACTOR, ENV_PROGRAM_FD as ENV_FD};
/// Largest body of `H`, `E` and `R` frames, and of a `C` frame we send.
pub const MAX_MESSAGE: usize = 64 << 20;
/// Longest error message of an `E` frame that is passed on (the rest is cut).
pub const MAX_ERROR_MESSAGE: usize = 4096;
/// Largest `T` body (a state).
pub const MAX_STATE: usize = 2 << 30;
/// How long a stopping worker waits for its program to exit after closing the channel.
const STOP_GRACE: Duration = Duration::from_secs(3);
/// How long the worker waits for the watcher's account of a program that closed the
/// channel (it usually exits right after).
const EXIT_REPORT_WAIT: Duration = Duration::from_millis(500);
/// Read buffer size (many replies per read under load).
const READ_CHUNK: usize = 256 * 1024;

/// Why an exchange with the program did not give an answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// The program ended or broke the protocol: the worker exits as crashed.
    Crashed(String),
    /// The program answered `E`.
    Refused { kind: ErrorKind, message: String },
}

/// Who deals with the program's end, as the worker's main thread and the watcher thread
/// agree on it (one atomic, so exactly one of them reports a death).
#[repr(u8)]
#[derive(Clone, Copy, PartialEq, Eq)]
enum Use {
    /// Between requests: if the program dies, the watcher reports it and ends the worker.
    Idle = 0,
    /// A request is out: the main thread reads the program's last answers and reports.
    Busy = 1,
    /// The worker is ending the program on purpose: nobody reports.
    Stopping = 2,
    /// The watcher is ending the worker.
    Exiting = 3,
    /// The program died while a request was out: the main thread reports it (the
    /// watcher has shut the read side of the socket, so the main thread sees the end
    /// even if a descendant of the program still holds the other end).
    Died = 4,
}

/// Why a program could not be started.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartError {
    /// Starting again cannot help (no such program, another protocol version): the actor
    /// is DEAD until an operator acts.
    Fatal(String),
    /// The program died or misbehaved before it was ready: a crash like any other.
    Crashed(String),
}

/// The program of an exec actor, started and past its hello.
pub struct Program {
    pid: i32,
    sock: UnixStream,
    /// Read buffer: `rbuf[rpos..rend]` is read and not yet consumed. Its length is its
    /// usable size (never zeroed again after it grows).
    rbuf: Vec<u8>,
    rpos: usize,
    rend: usize,
    /// The current request (for messages) and the frame types it may be answered with.
    accept: Accept,
    /// Who handles the program's end, shared with the watcher thread ([`Use`]).
    state: Arc<AtomicU8>,
    /// The watcher's account of the program's end.
    ended: mpsc::Receiver<String>,
    /// The program as a pidfd (None on kernels without pidfd_open).
    pidfd: Option<OwnedFd>,
}

#[derive(Deserialize)]
struct Hello {
    protocol: u64,
    #[serde(default)]
    program: Option<String>,
}

#[derive(Deserialize)]
struct ErrorFrame {
    kind: String,
    message: String,
}

impl Program {
    /// Starts the program, waits for its hello, and arms the watcher that reports its end
    /// to the supervisor (through `to_sup`) if it dies while it is needed.
    pub fn start(
        actor: &str,
        exec: &ExecInit,
        privileges: &Privileges,
        to_sup: &Reporter,
    ) -> Result<Program, StartError> {
        let (ours, theirs) =
            UnixStream::pair().map_err(|e| StartError::Crashed(format!("socketpair: {e}")))?;
        let theirs = OwnedFd::from(theirs);
        let Some((program, args)) = exec.argv.split_first() else {
            return Err(StartError::Fatal("empty command".to_string()));
        };
        let cwd = std::path::PathBuf::from(
            <std::ffi::OsStr as std::os::unix::ffi::OsStrExt>::from_bytes(&exec.cwd),
        );
        let mut cmd = Command::new(program);
        cmd.args(args)
            .current_dir(&cwd)
            .env_remove(ENV_BOOTSTRAP)
            .env_remove(ENV_PARENT_PID)
            .envs(exec.env.iter().map(|(k, v)| (k, v)))
            .env(ENV_FD, PROGRAM_FD.to_string())
            .env(ENV_ACTOR, actor)
            .stdin(Stdio::null());
        let child_fd = theirs.as_raw_fd();
        let prepared = sys::Prepared::new(privileges);
        let parent = std::process::id() as i32;
        // SAFETY: the closure runs in the forked child before exec and only makes raw
        // system calls (dup2, fcntl, setrlimit, setgroups, setgid, setuid, prctl,
        // getppid) on values prepared before the fork: no allocation, no lock.
        unsafe {
            cmd.pre_exec(move || sys::in_child(child_fd, PROGRAM_FD, &prepared, parent));
        }
        let child = cmd.spawn().map_err(|e| {
            let message = format!(
                "cannot start {program:?} (cwd {}): {e}",
                cwd.to_string_lossy()
            );
            // A missing or unusable program, a bad cwd, an identity or limit the system
            // refuses: starting again cannot help. Anything else (no memory, no
            // processes or fds left for the moment) is retried like a crash.
            match e.raw_os_error() {
                Some(
                    libc::ENOENT
                    | libc::EACCES
                    | libc::ENOEXEC
                    | libc::ENOTDIR
                    | libc::EPERM
                    | libc::EINVAL
                    | libc::ELOOP
                    | libc::ENAMETOOLONG
                    | libc::ESRCH,
                ) => StartError::Fatal(message),
                _ => StartError::Crashed(message),
            }
        })?;
        let pid = child.id() as i32;
        // The watcher reaps the program; the handle is dropped without waiting. A pidfd
        // taken before anything can reap it lets the worker kill this very process later,
        // never a recycled pid.
        let pidfd = pidfd_open(pid);
        drop(child);
        drop(theirs);
        let wake = ours
            .try_clone()
            .map_err(|e| StartError::Crashed(format!("duplicate the protocol socket: {e}")))?;
        let state = Arc::new(AtomicU8::new(Use::Idle as u8));
        let (tx, ended) = mpsc::channel();
        watch(
            pid,
            state.clone(),
            tx,
            wake,
            to_sup.clone(),
            actor.to_string(),
        )
        .map_err(|e| StartError::Crashed(e.to_string()))?;
        let mut p = Program {
            pid,
            sock: ours,
            rbuf: vec![0; READ_CHUNK],
            rpos: 0,
            rend: 0,
            accept: ACCEPT_HELLO,
            state,
            ended,
            pidfd,
        };
        p.sock.set_nonblocking(true).map_err(|e| {
            StartError::Crashed(format!("set the protocol socket non-blocking: {e}"))
        })?;
        p.hello(actor)?;
        Ok(p)
    }

    /// The program's pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn hello(&mut self, actor: &str) -> Result<(), StartError> {
        let body = serde_json::json!({"protocol": PROTOCOL_VERSION, "actor": actor}).to_string();
        let mut out = Vec::new();
        frame(&mut out, b'H', body.as_bytes());
        let mut hello = None;
        self.accept = ACCEPT_HELLO;
        self.exchange(&out, 1, |_, kind, body| {
            hello = Some(hello_answer(kind, body)?);
            Ok(())
        })
        .map_err(|f| match f {
            Failure::Crashed(m) | Failure::Refused { message: m, .. } => StartError::Crashed(m),
        })?;
        let Some(h) = hello else {
            return Err(StartError::Crashed("no hello from the program".to_string()));
        };
        if h.protocol != PROTOCOL_VERSION {
            return Err(StartError::Fatal(format!(
                "the program speaks protocol version {}, this worker speaks {PROTOCOL_VERSION}",
                h.protocol
            )));
        }
        if let Some(name) = h.program {
            eprintln!(
                "resurgam worker {actor}: program pid {} ready ({})",
                self.pid,
                name.chars().take(200).collect::<String>()
            );
        }
        Ok(())
    }

    /// Gives the program a state it returned earlier (`L` → `K`).
    pub fn load(&mut self, state: &[u8]) -> Result<(), Failure> {
        if state.len() > MAX_STATE {
            return Err(Failure::Refused {
                kind: ErrorKind::ActorError,
                message: format!(
                    "state of {} bytes is over the protocol's limit",
                    state.len()
                ),
            });
        }
        self.ensure_idle()?;
        let mut out = Vec::with_capacity(state.len() + 5);
        frame(&mut out, b'L', state);
        self.accept = ACCEPT_LOAD;
        self.exchange(&out, 1, |_, kind, body| load_answer(kind, body))
    }

    /// Asks for the whole state (`S` → `T`).
    pub fn save(&mut self) -> Result<Vec<u8>, Failure> {
        self.ensure_idle()?;
        let mut out = Vec::new();
        frame(&mut out, b'S', b"");
        let mut state = None;
        self.accept = ACCEPT_SAVE;
        self.exchange(&out, 1, |_, kind, body| {
            state = Some(save_answer(kind, body)?);
            Ok(())
        })?;
        state.ok_or_else(|| Failure::Crashed("no state from the program".to_string()))
    }

    /// Runs a batch of calls, pipelined, handing each call's outcome to `answered` (with
    /// its seq) as it arrives. `executing(seq)` is told the oldest unanswered call at
    /// each step (0 once all are answered). Only a crash (or an error from `answered`) is
    /// an error: a refused call is an [`Outcome::Err`].
    pub fn calls(
        &mut self,
        calls: &[Call],
        executing: &dyn Fn(u64),
        answered: &mut dyn FnMut(u64, Outcome) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        self.ensure_idle()?;
        let size: usize = calls
            .iter()
            .map(|c| c.method.len() + c.args.len() + 40)
            .sum();
        let mut out = Vec::with_capacity(size);
        for c in calls {
            encode_call(&mut out, c)?;
        }
        if let Some(first) = calls.first() {
            executing(first.seq);
        }
        self.accept = ACCEPT_CALL;
        self.exchange(&out, calls.len(), |index, kind, body| {
            let seq = calls.get(index).map_or(0, |c| c.seq);
            answered(seq, call_answer(kind, body)?)?;
            executing(calls.get(index + 1).map_or(0, |c| c.seq));
            Ok(())
        })
    }

    /// Ends the program on purpose: closes the channel (the program should exit 0) and
    /// waits up to a grace for it. A program still running then is left to the
    /// supervisor, which kills the worker's process group once the worker has exited.
    pub fn stop(self) {
        self.state.store(Use::Stopping as u8, Ordering::SeqCst);
        // The channel's end tells the program to exit; the watcher reports when it has.
        let _ = self.sock.shutdown(std::net::Shutdown::Both);
        let _ = self.ended.recv_timeout(STOP_GRACE);
    }

    /// Fails when the program sent something no request asked for (an answer sent
    /// twice, say): it would otherwise be taken for the answer to the next request.
    fn ensure_idle(&mut self) -> Result<(), Failure> {
        if self.rpos < self.rend || self.fill()? {
            return Err(unasked(self.rend - self.rpos));
        }
        Ok(())
    }

    /// Writes `out` while reading `expect` frames, handing each to `on_frame` with its
    /// index. Both directions are driven by poll, so a program that answers while it
    /// still has requests to read never blocks on a full buffer.
    ///
    /// While it runs, the worker is [`Use::Busy`]: if the program dies meanwhile, its
    /// last answers are still read (in order, up to the end of the channel) before the
    /// end is reported, so the poison-call word names the call that was running.
    fn exchange(
        &mut self,
        out: &[u8],
        expect: usize,
        on_frame: impl FnMut(usize, u8, &[u8]) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        if self
            .state
            .compare_exchange(
                Use::Idle as u8,
                Use::Busy as u8,
                Ordering::SeqCst,
                Ordering::SeqCst,
            )
            .is_err()
        {
            // The watcher is ending this worker: the program is gone.
            return Err(self.closed());
        }
        let result = self.exchange_busy(out, expect, on_frame);
        let idle = self.state.compare_exchange(
            Use::Busy as u8,
            Use::Idle as u8,
            Ordering::SeqCst,
            Ordering::SeqCst,
        );
        match (result, idle) {
            (Err(failure), _) => Err(failure),
            (Ok(()), Ok(_)) => Ok(()),
            // Every answer came, but the program is gone (the watcher saw it die while
            // this request was out): a crash like any other, nobody else reports it.
            (Ok(()), Err(_)) => Err(self.closed()),
        }
    }

    fn exchange_busy(
        &mut self,
        out: &[u8],
        expect: usize,
        mut on_frame: impl FnMut(usize, u8, &[u8]) -> Result<(), Failure>,
    ) -> Result<(), Failure> {
        let mut written = 0;
        let mut received = 0;
        while received < expect || written < out.len() {
            // Whole frames already buffered.
            while received < expect {
                let Some((kind, start, end)) = self.next_frame()? else {
                    break;
                };
                self.rpos = end;
                on_frame(received, kind, &self.rbuf[start..end])?;
                received += 1;
            }
            if received >= expect && written >= out.len() {
                break;
            }
            if written < out.len() {
                match (&self.sock).write(&out[written..]) {
                    Ok(n) if n > 0 => written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    // The program stopped reading (it died, most likely): send nothing
                    // more, but read the answers it sent before, up to the end of the
                    // channel, so the call blamed is the one it died in and not one it
                    // had answered.
                    _ => written = out.len(),
                }
            }
            if received < expect {
                match self.fill() {
                    Ok(true) => continue,
                    Ok(false) => {}
                    Err(f) => return Err(f),
                }
            }
            let mut flags = PollFlags::empty();
            if received < expect {
                flags |= PollFlags::POLLIN;
            }
            if written < out.len() {
                flags |= PollFlags::POLLOUT;
            }
            let mut fds = [PollFd::new(self.sock.as_fd(), flags)];
            match poll(&mut fds, PollTimeout::NONE) {
                Ok(_) | Err(nix::errno::Errno::EINTR) => {}
                Err(e) => {
                    return Err(Failure::Crashed(format!(
                        "poll on the protocol socket: {e}"
                    )));
                }
            }
        }
        Ok(())
    }
}

impl Program {
    /// The next whole frame in the buffer: `(type, body start, body end)`, without
    /// consuming it. Checks the type and the length before any body byte is awaited.
    fn next_frame(&mut self) -> Result<Option<(u8, usize, usize)>, Failure> {
        let Some((kind, len)) = frame_at(&self.rbuf[self.rpos..self.rend], self.accept)? else {
            return Ok(None);
        };
        let start = self.rpos + FRAME_HEADER;
        Ok(Some((kind, start, start + len)))
    }

    /// Reads what the socket has. `Ok(false)` when it has nothing now.
    ///
    /// The buffer grows by doubling only when it is full, so a frame's declared length
    /// costs memory only as its bytes arrive (a header announcing 2 GiB commits
    /// nothing), and it shrinks back once a large frame is consumed.
    fn fill(&mut self) -> Result<bool, Failure> {
        if self.rpos == self.rend {
            self.rpos = 0;
            self.rend = 0;
            if self.rbuf.len() > 4 * READ_CHUNK {
                self.rbuf = vec![0; READ_CHUNK];
            }
        }
        if self.rend == self.rbuf.len() {
            // Full: move the unread part to the front; still full: double.
            if self.rpos > 0 {
                self.rbuf.copy_within(self.rpos..self.rend, 0);
                self.rend -= self.rpos;
                self.rpos = 0;
            }
            if self.rend == self.rbuf.len() {
                let want = (self.rbuf.len() * 2).max(READ_CHUNK);
                self.rbuf.resize(want, 0);
            }
        }
        match (&self.sock).read(&mut self.rbuf[self.rend..]) {
            Ok(0) => Err(self.closed()),
            Ok(n) => {
                self.rend += n;
                Ok(true)
            }
            Err(e) => match e.kind() {
                io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(false),
                _ => Err(self.closed()),
            },
        }
    }

    /// The channel ended: the program's own end says why, if it ended.
    fn closed(&self) -> Failure {
        match self.ended.recv_timeout(EXIT_REPORT_WAIT) {
            Ok(reason) => Failure::Crashed(reason),
            Err(_) => Failure::Crashed(format!(
                "the program (pid {}) closed the protocol channel",
                self.pid
            )),
        }
    }
}

impl Drop for Program {
    fn drop(&mut self) {
        if self.state.swap(Use::Stopping as u8, Ordering::SeqCst) != Use::Stopping as u8 {
            // Dropped after a failure: the program must not outlive this worker's need
            // of it (the supervisor kills the whole group after the worker exits, too).
            // Marked as stopping first: the watcher must not report (and exit on) this
            // kill in place of the failure the worker reports itself.
            // Without a pidfd the pid may already be reaped (and, in theory, recycled):
            // the kill is then left to the supervisor's group kill.
            if let Some(fd) = &self.pidfd {
                pidfd_kill(fd);
            }
        }
    }
}

/// A pidfd for `pid` (Linux 5.3+), or None.
fn pidfd_open(pid: i32) -> Option<OwnedFd> {
    // SAFETY: pidfd_open takes a pid and flags and returns a new descriptor or -1; the
    // descriptor is owned by nobody else, so wrapping it in OwnedFd is sound.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` is a fresh descriptor returned to us above.
    Some(unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// SIGKILLs the process behind a pidfd (a no-op once it has been reaped).
fn pidfd_kill(fd: &OwnedFd) {
    // SAFETY: pidfd_send_signal takes a descriptor we own, a signal number, a null
    // siginfo and no flags.
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            fd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        );
    }
}

/// Bytes before a frame's body: its type and its length.
const FRAME_HEADER: usize = 5;

/// A request (named for messages) and the frame types that may answer it.
type Accept = (&'static str, &'static [u8]);
const ACCEPT_HELLO: Accept = ("the hello (H)", b"H");
const ACCEPT_LOAD: Accept = ("load_state (L)", b"KE");
const ACCEPT_SAVE: Accept = ("get_state (S)", b"TE");
const ACCEPT_CALL: Accept = ("a call (C)", b"RE");

/// The frame at the start of `buf`: `(type, body length)` once the whole frame is there,
/// `None` while it is not. The type and the length are checked (against `accept` and the
/// type's limit) as soon as the header is there, before any body byte is awaited.
fn frame_at(buf: &[u8], accept: Accept) -> Result<Option<(u8, usize)>, Failure> {
    let Some(h) = buf.first_chunk::<FRAME_HEADER>() else {
        return Ok(None);
    };
    let kind = h[0];
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    let limit = match kind {
        b'T' => MAX_STATE,
        b'K' => 0,
        b'H' | b'R' | b'E' => MAX_MESSAGE,
        other => {
            return Err(Failure::Crashed(format!(
                "the program sent a frame of unknown type {} (header bytes {:02x?})",
                describe(other),
                h
            )));
        }
    };
    let (request, allowed) = accept;
    if !allowed.contains(&kind) {
        let allowed: Vec<String> = allowed.iter().map(|&k| describe(k)).collect();
        return Err(unexpected(kind, request, &allowed.join(" or ")));
    }
    if len > limit {
        return Err(Failure::Crashed(format!(
            "the program sent a {} frame of {len} bytes (limit {limit})",
            describe(kind)
        )));
    }
    if buf.len() - FRAME_HEADER < len {
        return Ok(None);
    }
    Ok(Some((kind, len)))
}

/// The answer to the hello (`H`).
fn hello_answer(kind: u8, body: &[u8]) -> Result<Hello, Failure> {
    if kind != b'H' {
        return Err(Failure::Crashed(format!(
            "the program's first frame is {} instead of its hello (H)",
            describe(kind)
        )));
    }
    serde_json::from_slice(body).map_err(|e| {
        Failure::Crashed(format!(
            "the program's hello is not {{\"protocol\": 1}}: {e}"
        ))
    })
}

/// The answer to load_state (`L`): `K`, or a refusal.
fn load_answer(kind: u8, body: &[u8]) -> Result<(), Failure> {
    match kind {
        b'K' => Ok(()),
        b'E' => Err(refusal(body)?),
        other => Err(unexpected(other, "load_state (L)", "K or E")),
    }
}

/// The answer to get_state (`S`): the state (`T`), or a refusal.
fn save_answer(kind: u8, body: &[u8]) -> Result<Vec<u8>, Failure> {
    match kind {
        b'T' => Ok(body.to_vec()),
        b'E' => Err(refusal(body)?),
        other => Err(unexpected(other, "get_state (S)", "T or E")),
    }
}

/// The answer to a call (`C`): a reply (`R`, checked to be JSON) or a refusal (`E`),
/// both outcomes of the call; anything else is a crash.
fn call_answer(kind: u8, body: &[u8]) -> Result<Outcome, Failure> {
    match kind {
        b'R' => match serde_json::from_slice::<serde::de::IgnoredAny>(body) {
            Ok(_) => Ok(Outcome::Ok(body.to_vec())),
            Err(e) => Err(Failure::Crashed(format!(
                "the program's reply (R) is not JSON: {e}"
            ))),
        },
        b'E' => match refusal(body)? {
            Failure::Refused { kind, message } => Ok(Outcome::Err { kind, message }),
            crashed => Err(crashed),
        },
        other => Err(unexpected(other, "a call (C)", "R or E")),
    }
}

/// Bytes that came while no request was out.
fn unasked(len: usize) -> Failure {
    Failure::Crashed(format!(
        "the program sent {len} bytes that answer no request"
    ))
}

/// A request of the protocol, for [`read_answers`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// `H`, answered by the program's hello.
    Hello,
    /// `L`, answered by `K` or `E`.
    Load,
    /// `S`, answered by `T` or `E`.
    Save,
    /// This many pipelined `C`, each answered by `R` or `E`.
    Calls(usize),
}

/// What a worker makes of `bytes` received from its program in answer to `request`, with
/// no program and no socket: the frames are split, checked and decoded by the code
/// [`Program`] uses (its socket reads only decide where the bytes are cut). Returns how
/// many answers were whole (fewer than expected when `bytes` ends mid-frame), or the
/// failure the worker would end with, bytes after the last answer included. The entry
/// point of the exec fuzz target (`fuzz/`).
pub fn read_answers(request: Request, bytes: &[u8]) -> Result<usize, Failure> {
    let (accept, expect) = match request {
        Request::Hello => (ACCEPT_HELLO, 1),
        Request::Load => (ACCEPT_LOAD, 1),
        Request::Save => (ACCEPT_SAVE, 1),
        Request::Calls(n) => (ACCEPT_CALL, n),
    };
    let mut at = 0;
    let mut received = 0;
    while received < expect {
        let Some((kind, len)) = frame_at(&bytes[at..], accept)? else {
            return Ok(received);
        };
        let body = &bytes[at + FRAME_HEADER..at + FRAME_HEADER + len];
        at += FRAME_HEADER + len;
        match request {
            Request::Hello => {
                hello_answer(kind, body)?;
            }
            Request::Load => load_answer(kind, body)?,
            Request::Save => {
                save_answer(kind, body)?;
            }
            Request::Calls(_) => {
                call_answer(kind, body)?;
            }
        }
        received += 1;
    }
    if at < bytes.len() {
        return Err(unasked(bytes.len() - at));
    }
    Ok(received)
}

/// Appends one frame.
fn frame(out: &mut Vec<u8>, kind: u8, body: &[u8]) {
    out.push(kind);
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends the `C` frame of a call: `{"method": …, "args": …}`.
fn encode_call(out: &mut Vec<u8>, c: &Call) -> Result<(), Failure> {
    let start = out.len();
    out.extend_from_slice(&[b'C', 0, 0, 0, 0]);
    out.extend_from_slice(b"{\"method\":");
    serde_json::to_writer(&mut *out, &c.method)
        .map_err(|e| Failure::Crashed(format!("encode call seq {}: {e}", c.seq)))?;
    out.extend_from_slice(b",\"args\":");
    if c.args.is_empty() {
        out.extend_from_slice(b"null");
    } else {
        out.extend_from_slice(&c.args);
    }
    out.push(b'}');
    let len = out.len() - start - 5;
    if len > MAX_MESSAGE {
        return Err(Failure::Crashed(format!(
            "call seq {} is {len} bytes, over the protocol's limit of {MAX_MESSAGE}",
            c.seq
        )));
    }
    out[start + 1..start + 5].copy_from_slice(&(len as u32).to_be_bytes());
    Ok(())
}

/// Decodes an `E` body: `Refused` when it is well formed, else a crash.
fn refusal(body: &[u8]) -> Result<Failure, Failure> {
    let e: ErrorFrame = serde_json::from_slice(body).map_err(|err| {
        Failure::Crashed(format!(
            "the program's error (E) is not {{\"kind\", \"message\"}}: {err}"
        ))
    })?;
    let kind = match e.kind.as_str() {
        "BadRequest" => ErrorKind::BadRequest,
        "UnknownMethod" => ErrorKind::UnknownMethod,
        _ => ErrorKind::ActorError,
    };
    Ok(Failure::Refused {
        kind,
        message: cap_message(e.message),
    })
}

/// An error message cut to [`MAX_ERROR_MESSAGE`] bytes (saying how much was cut): it goes
/// into replies, status and logs, whatever the actor's code made of it.
pub(crate) fn cap_message(mut message: String) -> String {
    if message.len() > MAX_ERROR_MESSAGE {
        let mut end = MAX_ERROR_MESSAGE;
        while !message.is_char_boundary(end) {
            end -= 1;
        }
        let cut = message.len() - end;
        message.truncate(end);
        message.push_str(&format!(" … ({cut} more bytes)"));
    }
    message
}

fn unexpected(kind: u8, request: &str, allowed: &str) -> Failure {
    Failure::Crashed(format!(
        "the program answered {request} with a {} frame (expected {allowed})",
        describe(kind)
    ))
}

/// A frame type for messages: the letter when printable, else its byte value.
fn describe(kind: u8) -> String {
    if kind.is_ascii_graphic() {
        format!("'{}'", kind as char)
    } else {
        format!("0x{kind:02x}")
    }
}

/// Starts the thread that reaps the program. If it ends while the worker still needs it,
/// the thread reports why to the supervisor and ends the worker at once.
fn watch(
    pid: i32,
    state: Arc<AtomicU8>,
    tx: mpsc::Sender<String>,
    wake: UnixStream,
    to_sup: Reporter,
    actor: String,
) -> Result<(), WatchError> {
    std::thread::Builder::new()
        .name("program-watch".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let reason = loop {
                match waitpid(Pid::from_raw(pid), None) {
                    Ok(WaitStatus::Exited(_, code)) => {
                        break format!("the program (pid {pid}) exited with code {code}");
                    }
                    Ok(WaitStatus::Signaled(_, sig, core)) => {
                        break format!(
                            "the program (pid {pid}) was killed by {}{}",
                            sig.as_str(),
                            if core { " (core dumped)" } else { "" }
                        );
                    }
                    Ok(_) | Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => break format!("the program (pid {pid}) is gone ({e})"),
                }
            };
            let _ = tx.send(reason.clone());
            // Only an idle worker is ended from here. A busy one reads what the program
            // sent before it died (answers that tell which call was running) and reports
            // the end itself; a stopping one ended the program on purpose.
            let cas = |from: Use, to: Use| {
                state
                    .compare_exchange(from as u8, to as u8, Ordering::SeqCst, Ordering::SeqCst)
                    .is_ok()
            };
            if cas(Use::Busy, Use::Died) {
                // Whatever the program sent is queued already; after this, reads drain
                // it and then see the end, and a waiting poll wakes up.
                let _ = wake.shutdown(std::net::Shutdown::Read);
                return;
            }
            if !cas(Use::Idle, Use::Exiting) {
                return;
            }
            eprintln!("resurgam worker {actor}: {reason}");
            let _ = to_sup.send(&Report::Crashed { reason });
            // SAFETY: _exit ends the process without running destructors or atexit
            // handlers that the main thread might be using; the checkpoint file is
            // crash-safe by design (a torn slot is detected and skipped).
            unsafe { libc::_exit(EXIT_PROGRAM_FAILED) }
        })
        .map(|_| ())
        .map_err(|error| WatchError { pid, error })
}

/// The thread that reaps the program (pid `pid`) could not be started.
#[derive(Debug, thiserror::Error)]
#[error("start the program's watcher thread: {error}")]
struct WatchError {
    pid: i32,
    error: std::io::Error,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn framed(frames: &[(u8, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (kind, body) in frames {
            frame(&mut out, *kind, body);
        }
        out
    }

    #[test]
    fn answers_are_read_as_the_worker_reads_them() {
        let hello = framed(&[(b'H', br#"{"protocol":1,"program":"p"}"#)]);
        assert_eq!(read_answers(Request::Hello, &hello), Ok(1));
        assert_eq!(read_answers(Request::Load, &framed(&[(b'K', b"")])), Ok(1));
        assert_eq!(
            read_answers(Request::Save, &framed(&[(b'T', b"\xff")])),
            Ok(1)
        );
        let calls = framed(&[
            (b'R', b"1"),
            (b'E', br#"{"kind":"BadRequest","message":"no"}"#),
        ]);
        assert_eq!(read_answers(Request::Calls(2), &calls), Ok(2));
        // Cut anywhere, the whole answers before the cut count.
        assert_eq!(
            read_answers(Request::Calls(2), &calls[..calls.len() - 1]),
            Ok(1)
        );
        assert_eq!(read_answers(Request::Calls(2), &calls[..4]), Ok(0));
        let refused = framed(&[(b'E', br#"{"kind":"X","message":"m"}"#)]);
        assert_eq!(
            read_answers(Request::Save, &refused),
            Err(Failure::Refused {
                kind: ErrorKind::ActorError,
                message: "m".into()
            })
        );
    }

    #[test]
    fn a_bad_answer_is_a_crash_before_its_body_arrives() {
        let crashed = |request, bytes: &[u8], needle: &str| match read_answers(request, bytes) {
            Err(Failure::Crashed(m)) => assert!(m.contains(needle), "{m}"),
            other => panic!("expected a crash with {needle:?}, got {other:?}"),
        };
        crashed(Request::Hello, b"Z\0\0\0\0", "unknown type");
        crashed(Request::Hello, b"R\0\0\0\x01", "expected 'H'");
        crashed(Request::Load, b"K\0\0\0\x01", "limit 0");
        // A 4 GiB length is refused from the header alone, nothing allocated.
        crashed(Request::Calls(1), b"R\xff\xff\xff\xff", "limit");
        crashed(Request::Hello, &framed(&[(b'H', b"{}")]), "hello");
        crashed(Request::Calls(1), &framed(&[(b'R', b"{")]), "not JSON");
        crashed(
            Request::Calls(1),
            &framed(&[(b'R', b"1"), (b'R', b"2")]),
            "answer no request",
        );
    }
}
