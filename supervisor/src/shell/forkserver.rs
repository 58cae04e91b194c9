//! The fork server: a single-threaded process that forks workers, so that starting one
//! costs the `fork` of a small process instead of an `exec` of this binary (the kernel's
//! exec, dynamic loading and the runtime's start: about a millisecond), and so that
//! workers share the pages of their code and libraries with it (a worker's PSS).
//!
//! * **Started before any thread**: [`ForkServer::start`] is the first thing `resurgam
//!   run` does, before the config is read, so a worker's memory holds nothing of the
//!   supervisor's (no other actor's environment, no client's data). It is a plain
//!   `fork`: a process with one thread may run any code after `fork`. The supervisor
//!   itself never forks again without an `exec` (see [`crate::spawn`]).
//! * **Workers stay the supervisor's children** ([`Birth`]). The server forked at start
//!   creates each worker with one `clone3(CLONE_PARENT)`: its parent is the server's,
//!   the supervisor's main thread. A server exec'd later (a restart, an upgrade) was
//!   started by a helper thread, and a worker whose parent that thread were would get
//!   its `PR_SET_PDEATHSIG` when the thread ends; it forks an intermediate process that
//!   forks the worker and exits at once, and the supervisor, a child subreaper
//!   (`PR_SET_CHILD_SUBREAPER`), inherits the orphaned worker. The worker waits to be
//!   the supervisor's child before it sets `PR_SET_PDEATHSIG` (a re-parenting fires
//!   that signal). So the supervisor reaps workers (SIGCHLD, pidfd) and a worker dies
//!   with it, exactly as when it is spawned. The intermediate costs a second fork and
//!   an exit per worker: about 0.25 ms of CPU on a 2-vCPU guest, a quarter of the
//!   server's time when 1,000 actors start.
//! * **Its crash kills no worker** (none is its child) and costs only speed: a spawn
//!   that finds it gone starts the worker by `posix_spawn` instead and a new server is
//!   started by exec of the running binary (`/proc/self/exe`), at most once a second.
//! * **An upgraded binary is picked up on reload**: when the file the supervisor was
//!   started from has changed on disk, a new server is exec'd from it (the old one is
//!   killed, ready standby workers forked from it are replaced). A server that answers
//!   with another protocol version is refused and the old one kept.
//! * **One address-space layout per server**: every worker forked from a server has the
//!   server's layout (ASLR is chosen at exec, not at fork): the same addresses of code,
//!   heap, stack and libraries, and the same stack-protector canary. A worker that
//!   learns its own layout knows its siblings'. Workers started after an upgrade or a
//!   server restart get a fresh one; `fork_server = false` in the config (exec of every
//!   worker) is the choice for actors that must not share it.
//!
//! The protocol is one `SOCK_SEQPACKET` socket pair: the server says [`Reply::Hello`],
//! then answers each [`Request::Fork`] (which carries the worker's three descriptors:
//! its report socket and the write ends of its output pipe) with [`Reply::Forked`] or
//! [`Reply::Failed`], one at a time. Messages are postcard.

use std::io::{IoSlice, IoSliceMut};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nix::errno::Errno;
use nix::sys::socket::{
    AddressFamily, ControlMessage, ControlMessageOwned, MsgFlags, SockFlag, SockType, recvmsg,
    sendmsg, socketpair,
};
use nix::unistd::{ForkResult, Pid};
use serde::{Deserialize, Serialize};

use resurgam_shared::ipc::{ENV_BOOTSTRAP, ENV_PARENT_PID, IPC_VERSION, WORKER_SCRUBBED_ENV};
use resurgam_worker::Registry;

/// Set (to the supervisor's pid) in the environment of a fork server started by exec;
/// its socket is then its stdin.
pub const ENV_FORK_SERVER: &str = "RESURGAM_FORK_SERVER";

/// Version of the request/reply vocabulary below.
const PROTOCOL_VERSION: u32 = 1;

/// The largest request: an actor name and a bootstrap token are short.
const MAX_MESSAGE: usize = 16 * 1024;

/// How long the supervisor waits for a server's answer before it gives up on it.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(5);

/// How long a new worker waits to be re-parented to the supervisor.
const REPARENT_TIMEOUT: Duration = Duration::from_secs(2);

/// After servers failed `n` times in a row, how long spawns go by `posix_spawn` before a
/// new one is tried: at once after a first failure, then 1 s, 2 s, 4 s … up to 30 s.
fn restart_delay(failures: u32) -> Duration {
    match failures {
        0 | 1 => Duration::ZERO,
        n => Duration::from_secs(1u64 << (n - 2).min(5)).min(Duration::from_secs(30)),
    }
}

/// Exit status of a forked worker that could not become one (its parent never became
/// the supervisor, its descriptors could not be set).
const EXIT_NOT_A_WORKER: i32 = 70;

#[derive(Debug, Serialize, Deserialize)]
enum Request {
    /// Fork a worker named `name` (for its process name and messages) that bootstraps
    /// with `token`. Carries three descriptors: stdin (the report socket), stdout, stderr.
    Fork { name: String, token: String },
}

#[derive(Debug, Serialize, Deserialize)]
enum Reply {
    Hello { version: u32, ipc_version: u32 },
    Forked { pid: u32 },
    Failed { error: String },
}

/// Why the fork server could not start a worker (the caller then spawns it itself).
#[derive(Debug, thiserror::Error)]
pub enum ForkError {
    #[error("no fork server is running")]
    Unavailable,
    #[error("the fork server (pid {pid}) failed: {error}")]
    Broken {
        pid: u32,
        #[source]
        error: LinkError,
    },
    #[error("the fork server (pid {pid}) could not fork: {message}")]
    Refused { pid: u32, message: String },
    #[error("cannot start a fork server from {path}: {error}")]
    Start {
        path: PathBuf,
        #[source]
        error: StartError,
    },
}

/// Why a new fork server could not be started (the context of [`ForkError::Start`]).
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("socketpair: {0}")]
    Socketpair(Errno),
    #[error("fork: {0}")]
    Fork(Errno),
    #[error(transparent)]
    Spawn(#[from] crate::spawn::SpawnError),
    #[error(transparent)]
    Hello(#[from] LinkError),
}

/// What went wrong talking to a fork server, on the supervisor's side (the server's pid
/// is in the [`ForkError`] that carries it). The texts are those the log always showed.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error(
        "it speaks fork-server protocol {version} and worker protocol {ipc_version}; \
         this supervisor speaks {PROTOCOL_VERSION} and {IPC_VERSION} (restart the service to upgrade)"
    )]
    Version { version: u32, ipc_version: u32 },
    /// A first answer that is not a hello (its debug form).
    #[error("expected hello, got {answer}")]
    NotHello { answer: String },
    /// An answer to a fork request that is neither `Forked` nor `Failed`.
    #[error("unexpected answer")]
    Unexpected,
    #[error("encode request: {0}")]
    Encode(postcard::Error),
    #[error("send request: {0}")]
    Send(Errno),
    #[error("no answer in {ANSWER_TIMEOUT:?}")]
    Timeout,
    #[error("poll: {0}")]
    Poll(Errno),
    #[error("receive: {0}")]
    Receive(Errno),
    #[error("it closed its socket")]
    Closed,
    #[error("undecodable answer: {0}")]
    Undecodable(postcard::Error),
}

/// Why the server could not prepare itself, read a request or fork a worker (the
/// server's side: the text goes to its stderr, or back in [`Reply::Failed`]).
#[derive(Debug, thiserror::Error)]
enum ServeError {
    #[error("prctl(PR_SET_PDEATHSIG): {0}")]
    Pdeathsig(Errno),
    #[error("the supervisor (pid {supervisor}) is gone")]
    SupervisorGone { supervisor: u32 },
    #[error("receive a request: {0}")]
    ReceiveRequest(Errno),
    #[error("a request carries {count} descriptors, not 3")]
    Descriptors { count: usize },
    #[error("pipe: {0}")]
    Pipe(Errno),
    #[error("read the worker's pid: {0}")]
    ReadPid(Errno),
    #[error("fork: {0}")]
    Fork(Errno),
    #[error("bad pid {0}")]
    BadPid(i64),
}

/// The supervisor's side: the connection to the current server, restarted as needed.
pub struct ForkServer {
    state: Mutex<State>,
    /// Pids of the servers started and not reaped yet. Apart from `state`, which a fork
    /// holds until its answer comes: the loop's reaping never waits for a fork.
    servers: Mutex<Vec<u32>>,
    /// The binary the supervisor was started from, as a path on disk (for upgrades).
    exe: Option<PathBuf>,
}

#[derive(Default)]
struct State {
    conn: Option<Conn>,
    /// When a new server may be tried after a failure.
    retry_at: Option<Instant>,
    /// Identity of the file at `exe` when the running server was started from it.
    exe_id: Option<FileId>,
    /// Servers lost (or not started) in a row since the last fork that worked.
    failures: u32,
    /// Set when no fork server may be used at all (no subreaper).
    disabled: bool,
    /// Why the first server could not be started, for [`ForkServer::log_start`].
    start_error: Option<String>,
}

struct Conn {
    sock: OwnedFd,
    pid: u32,
    pidfd: Option<OwnedFd>,
}

impl Drop for Conn {
    fn drop(&mut self) {
        // Closing the socket makes a healthy server exit; the kill also ends a stuck
        // one. Through its pidfd: its pid may already be reaped and reused.
        if let Some(fd) = &self.pidfd {
            crate::reap::pidfd_kill(fd.as_fd());
        }
    }
}

/// What identifies a file's content well enough to see it was replaced.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct FileId {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: i64,
    mtime_nsec: i64,
}

impl FileId {
    fn of(path: &Path) -> Option<FileId> {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(path).ok()?;
        Some(FileId {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: m.mtime(),
            mtime_nsec: m.mtime_nsec(),
        })
    }
}

impl ForkServer {
    /// Starts the fork server. Call it while this process has a single thread: the
    /// server is then a `fork` of it. Otherwise (a program embedding the library may
    /// have threads) it is started by exec of this binary. Never fails: without a
    /// server, workers are spawned one by one. Call it as early as possible: whatever
    /// this process allocated before is in every worker's heap, and a worker's own
    /// allocations land between it, each on a page the worker must then copy (30 KiB
    /// of a worker's 100 KiB when it was forked after the command line and the logger
    /// were set up). Nothing is logged here (the logger may not be set up yet): see
    /// [`ForkServer::log_start`].
    pub fn start(registry: &Registry) -> ForkServer {
        let exe = std::env::current_exe().ok();
        let exe_id = exe.as_deref().and_then(FileId::of);
        let server = ForkServer {
            state: Mutex::new(State {
                exe_id,
                ..State::default()
            }),
            exe,
            servers: Mutex::new(Vec::new()),
        };
        if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
            // Without it a worker forked by the server would be re-parented to init.
            let mut st = server.lock();
            st.disabled = true;
            st.start_error = Some(format!("cannot become a child subreaper: {e}"));
            drop(st);
            return server;
        }
        let started = if thread_count() == Some(1) {
            fork_server(registry)
        } else {
            exec_server(Path::new("/proc/self/exe"))
        };
        match started {
            Ok(conn) => server.adopt(&mut server.lock(), conn),
            Err(e) => {
                let mut st = server.lock();
                st.start_error = Some(e.to_string());
                st.failures = 1;
                st.retry_at = Some(Instant::now() + restart_delay(2));
            }
        }
        server
    }

    /// Logs how the start went (once the logger is set up).
    pub fn log_start(&self) {
        let st = self.lock();
        match (&st.conn, &st.start_error) {
            (Some(conn), _) => tracing::debug!(pid = conn.pid, "fork server running"),
            (None, Some(e)) => {
                tracing::warn!(error = %e, "no fork server; workers are started by posix_spawn")
            }
            (None, None) => {}
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        // A panic while holding the lock leaves nothing half-done that matters: the
        // state is a connection and a few pids.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn servers(&self) -> std::sync::MutexGuard<'_, Vec<u32>> {
        self.servers.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Makes `conn` the running server.
    fn adopt(&self, st: &mut State, conn: Conn) {
        self.servers().push(conn.pid);
        st.conn = Some(conn);
        st.retry_at = None;
    }

    /// The state, with a connection to a server the loop has reaped dropped.
    fn current(&self) -> std::sync::MutexGuard<'_, State> {
        let mut st = self.lock();
        if let Some(pid) = st.conn.as_ref().map(|c| c.pid)
            && !self.servers().contains(&pid)
        {
            drop_conn(&mut st, "it exited".into());
        }
        st
    }

    /// Starts a new server from the running binary, if a retry is due.
    fn restart(&self, st: &mut State) {
        if st.retry_at.is_some_and(|t| Instant::now() < t) {
            return;
        }
        match exec_server(Path::new("/proc/self/exe")) {
            Ok(conn) => {
                tracing::info!(pid = conn.pid, "fork server started again");
                self.adopt(st, conn);
            }
            Err(e) => {
                st.failures += 1;
                let delay = restart_delay(st.failures);
                tracing::warn!(error = %e, retry_in = ?delay, "cannot start a new fork server; workers are started by posix_spawn meanwhile");
                st.retry_at = Some(Instant::now() + delay);
            }
        }
    }

    /// Forks a worker through the server: returns its pid. The descriptors are the
    /// worker's stdin (report socket), stdout and stderr; the caller keeps (and closes)
    /// its copies. On an error the caller starts the worker another way.
    pub fn fork(
        &self,
        name: &str,
        token: &str,
        fds: [BorrowedFd<'_>; 3],
    ) -> Result<u32, ForkError> {
        let mut st = self.current();
        if st.disabled {
            return Err(ForkError::Unavailable);
        }
        if st.conn.is_none() {
            self.restart(&mut st);
        }
        let Some(conn) = st.conn.as_ref() else {
            return Err(ForkError::Unavailable);
        };
        let request = Request::Fork {
            name: name.to_string(),
            token: token.to_string(),
        };
        let pid = conn.pid;
        match exchange(&conn.sock, &request, &fds) {
            Ok(Reply::Forked { pid }) => {
                st.failures = 0;
                Ok(pid)
            }
            Ok(Reply::Failed { error }) => Err(ForkError::Refused {
                pid,
                message: error,
            }),
            Ok(other) => {
                drop_conn(&mut st, format!("unexpected answer {other:?}"));
                Err(ForkError::Broken {
                    pid,
                    error: LinkError::Unexpected,
                })
            }
            Err(error) => {
                drop_conn(&mut st, error.to_string());
                Err(ForkError::Broken { pid, error })
            }
        }
    }

    /// On reload: when the binary the supervisor was started from has changed on disk,
    /// replaces the server by one exec'd from it. Returns the new server's pid then
    /// (ready standby workers, forked from the old one, should be replaced).
    pub fn pick_up_upgrade(&self) -> Result<Option<u32>, ForkError> {
        let Some(exe) = self.exe.as_deref() else {
            return Ok(None);
        };
        let mut st = self.current();
        if st.disabled {
            return Ok(None);
        }
        let now_id = FileId::of(exe);
        if now_id.is_none() || now_id == st.exe_id {
            return Ok(None);
        }
        let conn = exec_server(exe)?;
        let pid = conn.pid;
        self.adopt(&mut st, conn);
        st.exe_id = now_id;
        Ok(Some(pid))
    }

    /// Starts a new server now if there is none and a try is due (after the running one
    /// was lost: so the next worker need not wait for it).
    pub fn ensure_running(&self) {
        let mut st = self.current();
        if !st.disabled && st.conn.is_none() {
            self.restart(&mut st);
        }
    }

    /// Whether `pid` is a fork server not reaped yet.
    pub fn is_server(&self, pid: u32) -> bool {
        self.servers().contains(&pid)
    }

    /// A child was reaped: whether it was one of the fork servers (not a worker). Never
    /// waits for a fork in progress.
    pub fn reaped(&self, pid: u32) -> bool {
        let mut servers = self.servers();
        let Some(i) = servers.iter().position(|&p| p == pid) else {
            return false;
        };
        servers.swap_remove(i);
        true
    }
}

/// Forgets a failed server (killing it) and schedules a new one.
fn drop_conn(st: &mut State, why: String) {
    if let Some(conn) = st.conn.take() {
        tracing::error!(pid = conn.pid, reason = %why, "fork server lost; workers are started by posix_spawn until a new one runs");
        st.failures += 1;
        st.retry_at = Some(Instant::now() + restart_delay(st.failures));
    }
}

/// Threads of this process, from /proc.
fn thread_count() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
}

fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), Errno> {
    socketpair(
        AddressFamily::Unix,
        SockType::SeqPacket,
        None,
        SockFlag::SOCK_CLOEXEC,
    )
}

/// Forks the server from this single-threaded process.
fn fork_server(registry: &Registry) -> Result<Conn, ForkError> {
    let failed = |error: StartError| ForkError::Start {
        path: PathBuf::from("(fork)"),
        error,
    };
    let (ours, theirs) = seqpacket_pair().map_err(|e| failed(StartError::Socketpair(e)))?;
    let supervisor = std::process::id();
    // SAFETY: the caller checked this process has a single thread, so the child may run
    // any code; it never returns into the supervisor's code (`serve` exits).
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(ours);
            serve(theirs, supervisor, registry, Birth::of_first_server())
        }
        Ok(ForkResult::Parent { child }) => {
            drop(theirs);
            let pid = child.as_raw() as u32;
            hello(ours, pid).map_err(|e| failed(e.into()))
        }
        Err(e) => Err(failed(StartError::Fork(e))),
    }
}

/// Starts a server by exec of `path` (from any thread: nothing but exec runs in the child).
fn exec_server(path: &Path) -> Result<Conn, ForkError> {
    let failed = |error: StartError| ForkError::Start {
        path: path.to_path_buf(),
        error,
    };
    let (ours, theirs) = seqpacket_pair().map_err(|e| failed(StartError::Socketpair(e)))?;
    let mut cmd = Command::new(path);
    cmd.arg0("resurgam-fork-server")
        .env(ENV_FORK_SERVER, std::process::id().to_string())
        .stdin(Stdio::from(theirs))
        .stdout(Stdio::null())
        .stderr(Stdio::inherit())
        .process_group(0);
    for var in WORKER_SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let pid = crate::spawn::spawn_detached(&mut cmd).map_err(|e| failed(e.into()))?;
    drop(cmd);
    hello(ours, pid).map_err(|e| failed(e.into()))
}

/// Waits for a new server's hello and checks its versions.
fn hello(sock: OwnedFd, pid: u32) -> Result<Conn, LinkError> {
    let pidfd = crate::reap::pidfd_open(pid);
    let conn = Conn { sock, pid, pidfd };
    match receive(&conn.sock)? {
        Reply::Hello {
            version,
            ipc_version,
        } if version == PROTOCOL_VERSION && ipc_version == IPC_VERSION => Ok(conn),
        Reply::Hello {
            version,
            ipc_version,
        } => Err(LinkError::Version {
            version,
            ipc_version,
        }),
        other => Err(LinkError::NotHello {
            answer: format!("{other:?}"),
        }),
    }
}

/// Sends a request with its descriptors and waits for the answer.
fn exchange(
    sock: &OwnedFd,
    request: &Request,
    fds: &[BorrowedFd<'_>; 3],
) -> Result<Reply, LinkError> {
    let bytes = postcard::to_allocvec(request).map_err(LinkError::Encode)?;
    let raw: [RawFd; 3] = [fds[0].as_raw_fd(), fds[1].as_raw_fd(), fds[2].as_raw_fd()];
    let cmsg = [ControlMessage::ScmRights(&raw)];
    loop {
        match sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(&bytes)],
            &cmsg,
            MsgFlags::MSG_NOSIGNAL,
            None,
        ) {
            Ok(_) => break,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(LinkError::Send(e)),
        }
    }
    receive(sock)
}

/// Receives one reply, waiting at most [`ANSWER_TIMEOUT`].
fn receive(sock: &OwnedFd) -> Result<Reply, LinkError> {
    use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
    let deadline = Instant::now() + ANSWER_TIMEOUT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(LinkError::Timeout);
        }
        let ms = u16::try_from(left.as_millis().max(1)).unwrap_or(u16::MAX);
        let mut fds = [PollFd::new(sock.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::from(ms)) {
            Ok(0) | Err(Errno::EINTR) => continue,
            Ok(_) => break,
            Err(e) => return Err(LinkError::Poll(e)),
        }
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    let n = loop {
        match nix::sys::socket::recv(sock.as_raw_fd(), &mut buf, MsgFlags::MSG_DONTWAIT) {
            Ok(n) => break n,
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(LinkError::Receive(e)),
        }
    };
    if n == 0 {
        return Err(LinkError::Closed);
    }
    postcard::from_bytes(&buf[..n]).map_err(LinkError::Undecodable)
}

// ---------------------------------------------------------------------------------------
// The server's side.

/// Runs the fork server if this process was exec'd as one (and never returns then).
/// Returns `false` at once in any other process.
pub fn run_if_asked(registry: &Registry) -> bool {
    let Some(value) = std::env::var_os(ENV_FORK_SERVER) else {
        return false;
    };
    let supervisor: Option<u32> = value.to_str().and_then(|v| v.parse().ok());
    let Some(supervisor) = supervisor else {
        eprintln!("resurgam fork server: {ENV_FORK_SERVER} is not a pid");
        std::process::exit(EXIT_NOT_A_WORKER);
    };
    // The socket is our stdin: move it off fd 0 and put /dev/null there.
    let sock = match nix::fcntl::fcntl(std::io::stdin(), nix::fcntl::FcntlArg::F_DUPFD_CLOEXEC(3)) {
        // SAFETY: F_DUPFD_CLOEXEC just returned this new descriptor; nothing else owns it.
        Ok(fd) => unsafe { OwnedFd::from_raw_fd(fd) },
        Err(e) => {
            eprintln!("resurgam fork server: no socket on stdin: {e}");
            std::process::exit(EXIT_NOT_A_WORKER);
        }
    };
    if let Ok(null) = std::fs::File::open("/dev/null") {
        let _ = nix::unistd::dup2_stdin(null);
    }
    let is_seqpacket = nix::sys::socket::getsockopt(&sock, nix::sys::socket::sockopt::SockType)
        .is_ok_and(|t| t == SockType::SeqPacket);
    if !is_seqpacket {
        eprintln!("resurgam fork server: stdin is not the supervisor's socket");
        std::process::exit(EXIT_NOT_A_WORKER);
    }
    serve(sock, supervisor, registry, Birth::Orphan)
}

/// How a server makes its workers the supervisor's children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Birth {
    /// One `clone3(CLONE_PARENT)`: the worker's parent is the server's, the supervisor's
    /// main thread (the server was forked from it before any other thread existed).
    Sibling(ThreadRecord),
    /// A double fork: the server's parent is a helper thread (it was exec'd by one), so
    /// the worker is orphaned and re-parented to the supervisor, a child subreaper.
    Orphan,
}

/// Where the C library keeps the calling thread's id and its robust-futex list, as the
/// kernel knows them: what `fork` points a child's kernel state at, and a raw clone
/// must too. Otherwise the child's thread would carry the server's id, and calls that
/// name a thread by it (`pthread_setaffinity_np(pthread_self())`, in an actor's code)
/// would act on the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ThreadRecord {
    tid_address: u64,
    robust_list: (u64, usize),
}

impl Birth {
    /// The first server's way: `Sibling` when the kernel says where the thread id is
    /// kept (`PR_GET_TID_ADDRESS` needs a kernel built with checkpoint/restore), else
    /// `Orphan`.
    fn of_first_server() -> Birth {
        /// `PR_GET_TID_ADDRESS` of prctl(2) (not in the libc crate for Linux).
        const PR_GET_TID_ADDRESS: libc::c_int = 40;
        let mut tid_address: u64 = 0;
        // SAFETY: the kernel writes one pointer-sized value into `tid_address`.
        let got = unsafe {
            libc::prctl(
                PR_GET_TID_ADDRESS,
                std::ptr::addr_of_mut!(tid_address),
                0,
                0,
                0,
            )
        };
        if got != 0 || tid_address == 0 {
            return Birth::Orphan;
        }
        Birth::Sibling(ThreadRecord {
            tid_address,
            robust_list: robust_list().unwrap_or((0, 0)),
        })
    }
}

/// The calling thread's robust-futex list as the kernel knows it: (head, length).
fn robust_list() -> Option<(u64, usize)> {
    let (mut head, mut len): (u64, usize) = (0, 0);
    // SAFETY: the kernel writes the head pointer and its length into the two values.
    let got = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            0,
            std::ptr::addr_of_mut!(head),
            std::ptr::addr_of_mut!(len),
        )
    };
    (got == 0).then_some((head, len))
}

/// `struct clone_args` of clone3(2), its first version (64 bytes).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
}

/// The server's loop: answers fork requests until the supervisor closes the socket.
fn serve(sock: OwnedFd, supervisor: u32, registry: &Registry, mut birth: Birth) -> ! {
    if let Err(e) = prepare(&sock, supervisor) {
        eprintln!("resurgam fork server: {e}");
        std::process::exit(EXIT_NOT_A_WORKER);
    }
    let hello = Reply::Hello {
        version: PROTOCOL_VERSION,
        ipc_version: IPC_VERSION,
    };
    if send_reply(&sock, &hello).is_err() {
        std::process::exit(0);
    }
    let mut buf = vec![0u8; MAX_MESSAGE];
    loop {
        let (request, fds) = match next_request(&sock, &mut buf) {
            Ok(Some(r)) => r,
            // The supervisor closed its end (it stopped, or replaced this server).
            Ok(None) => std::process::exit(0),
            Err(e) => {
                eprintln!("resurgam fork server: {e}");
                std::process::exit(1);
            }
        };
        let reply = match (request, fds) {
            (Ok(Request::Fork { name, token }), Ok(fds)) => {
                let newborn = Newborn {
                    fds,
                    name: &name,
                    token: &token,
                    supervisor,
                    registry,
                };
                let forked = match birth {
                    Birth::Sibling(thread) => clone_worker(newborn, thread, &mut birth),
                    Birth::Orphan => fork_worker(newborn),
                };
                match forked {
                    Ok(pid) => Reply::Forked { pid },
                    Err(e) => Reply::Failed {
                        error: e.to_string(),
                    },
                }
            }
            (Err(e), _) => Reply::Failed {
                error: format!("undecodable request: {e}"),
            },
            (_, Err(e)) => Reply::Failed {
                error: e.to_string(),
            },
        };
        if send_reply(&sock, &reply).is_err() {
            std::process::exit(0);
        }
    }
}

/// Makes this process a fork server: its own process group (a terminal's Ctrl-C is the
/// supervisor's to handle), death with the supervisor, a name, no inherited descriptors
/// but the socket and stdio, and an environment workers may see.
fn prepare(sock: &OwnedFd, supervisor: u32) -> Result<(), ServeError> {
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    if let Ok(name) = std::ffi::CString::new("resurgam-forks") {
        let _ = nix::sys::prctl::set_name(&name);
    }
    set_command_line("resurgam-fork-server");
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
        .map_err(ServeError::Pdeathsig)?;
    if nix::unistd::getppid().as_raw() as u32 != supervisor {
        return Err(ServeError::SupervisorGone { supervisor });
    }
    close_fds_except(sock.as_raw_fd());
    // What every worker would otherwise find out for itself, once per process: the CPU's
    // features (CRC32C picks its instructions by them; each CPUID traps to the
    // hypervisor on a VM). Forked workers inherit the answer.
    #[cfg(target_arch = "x86_64")]
    let _ = std::arch::is_x86_feature_detected!("sse4.2");
    let own = [ENV_FORK_SERVER, ENV_BOOTSTRAP, ENV_PARENT_PID];
    for var in WORKER_SCRUBBED_ENV.iter().chain(own.iter()) {
        // SAFETY: this process has a single thread (a fork of one, or a fresh exec that
        // started none), so nothing reads the environment concurrently.
        unsafe { std::env::remove_var(var) };
    }
    Ok(())
}

/// Closes every descriptor above stderr except `keep`.
fn close_fds_except(keep: RawFd) {
    let close_range = |from: RawFd, to: RawFd| {
        if from <= to {
            // SAFETY: close_range only closes this process's descriptors in the range;
            // none of them is in use by the server (it owns only `keep` and stdio).
            unsafe { libc::syscall(libc::SYS_close_range, from as u32, to as u32, 0u32) };
        }
    };
    close_range(3, keep - 1);
    close_range(keep + 1, RawFd::MAX);
}

/// Reads one request. `Ok(None)`: the supervisor closed the socket.
#[allow(clippy::type_complexity)]
fn next_request(
    sock: &OwnedFd,
    buf: &mut [u8],
) -> Result<
    Option<(
        Result<Request, postcard::Error>,
        Result<[OwnedFd; 3], ServeError>,
    )>,
    ServeError,
> {
    let mut cmsg = nix::cmsg_space!([RawFd; 3]);
    let (n, received) = loop {
        let mut iov = [IoSliceMut::new(buf)];
        match recvmsg::<()>(
            sock.as_raw_fd(),
            &mut iov,
            Some(&mut cmsg),
            MsgFlags::MSG_CMSG_CLOEXEC,
        ) {
            Ok(msg) => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                if let Ok(cmsgs) = msg.cmsgs() {
                    for c in cmsgs {
                        if let ControlMessageOwned::ScmRights(raw) = c {
                            // SAFETY: the kernel just installed these descriptors in this
                            // process for this message; nothing else owns them.
                            fds.extend(
                                raw.into_iter()
                                    .map(|fd| unsafe { OwnedFd::from_raw_fd(fd) }),
                            );
                        }
                    }
                }
                break (msg.bytes, fds);
            }
            Err(Errno::EINTR) => continue,
            Err(e) => return Err(ServeError::ReceiveRequest(e)),
        }
    };
    if n == 0 && received.is_empty() {
        return Ok(None);
    }
    let request = postcard::from_bytes(&buf[..n]);
    let fds =
        <[OwnedFd; 3]>::try_from(received).map_err(|v| ServeError::Descriptors { count: v.len() });
    Ok(Some((request, fds)))
}

fn send_reply(sock: &OwnedFd, reply: &Reply) -> Result<(), ()> {
    let bytes = postcard::to_allocvec(reply).map_err(|_| ())?;
    loop {
        match nix::sys::socket::send(sock.as_raw_fd(), &bytes, MsgFlags::MSG_NOSIGNAL) {
            Ok(_) => return Ok(()),
            Err(Errno::EINTR) => continue,
            Err(_) => return Err(()),
        }
    }
}

/// What a worker is forked with.
struct Newborn<'a> {
    /// Its stdin (the report socket), stdout and stderr.
    fds: [OwnedFd; 3],
    name: &'a str,
    /// The name of the supervisor's bootstrap server.
    token: &'a str,
    supervisor: u32,
    registry: &'a Registry,
}

/// Creates a worker as the server's sibling, a child of the supervisor's main thread, and
/// returns its pid (see [`Birth::Sibling`]). Falls back to a double fork where clone3
/// fails.
fn clone_worker(
    newborn: Newborn<'_>,
    thread: ThreadRecord,
    birth: &mut Birth,
) -> Result<u32, ServeError> {
    match clone_sibling(thread) {
        Ok(None) => become_worker(newborn),
        Ok(Some(pid)) => Ok(pid),
        Err(e) => {
            // No clone3 (before Linux 5.3), or a filter that refuses it: the old way, from
            // now on (a lack of memory or processes may pass: clone3 is tried again).
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOSYS | libc::EPERM | libc::EINVAL)
            ) {
                *birth = Birth::Orphan;
            }
            fork_worker(newborn)
        }
    }
}

/// `clone3(CLONE_PARENT)` as `fork` does a clone: `Ok(None)` in the new process, its pid
/// in the caller. Call only in a process with a single thread (or run only
/// async-signal-safe code in the child), with `thread` read in this very thread.
fn clone_sibling(thread: ThreadRecord) -> std::io::Result<Option<u32>> {
    // As glibc's fork: the kernel writes the child's thread id where the C library
    // keeps it, and clears it when the child exits.
    let flags = libc::CLONE_PARENT | libc::CLONE_CHILD_SETTID | libc::CLONE_CHILD_CLEARTID;
    let mut args = CloneArgs {
        flags: flags as u64,
        child_tid: thread.tid_address,
        // With CLONE_PARENT the child's exit signal is the caller's own (SIGCHLD, that
        // of a forked process); clone3 refuses one given here.
        exit_signal: 0,
        ..CloneArgs::default()
    };
    // SAFETY: clone3 as `fork` does it (no new stack: the child goes on with a copy of
    // this one), plus CLONE_PARENT; the kernel reads `args` only. The server has a single
    // thread, so the child may run any code: glibc's fork handlers, which this skips,
    // only make other threads' locks usable in the child, and there are none.
    let pid = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            std::ptr::addr_of_mut!(args),
            std::mem::size_of::<CloneArgs>(),
        )
    };
    match pid {
        0 => {
            let (head, len) = thread.robust_list;
            if head != 0 {
                // SAFETY: registers the list head the C library keeps for this thread
                // (the same address in this copy of the caller), as its fork does; the
                // kernel gives a new process none.
                unsafe { libc::syscall(libc::SYS_set_robust_list, head, len) };
            }
            Ok(None)
        }
        pid if pid > 0 => u32::try_from(pid)
            .map(Some)
            .map_err(|_| std::io::Error::other(format!("bad pid {pid}"))),
        _ => Err(std::io::Error::last_os_error()),
    }
}

/// Forks a worker by a double fork and returns its pid. The intermediate process exits
/// at once, so the worker is re-parented to the supervisor (a child subreaper).
fn fork_worker(newborn: Newborn<'_>) -> Result<u32, ServeError> {
    let (pid_r, pid_w) =
        nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(ServeError::Pipe)?;
    // SAFETY: the fork server has a single thread, so the child may run any code.
    match unsafe { nix::unistd::fork() } {
        Ok(ForkResult::Child) => {
            drop(pid_r);
            // SAFETY: still a single thread (a fork of the single-threaded server).
            let said: i64 = match unsafe { nix::unistd::fork() } {
                Ok(ForkResult::Child) => {
                    drop(pid_w);
                    become_worker(newborn)
                }
                Ok(ForkResult::Parent { child }) => i64::from(child.as_raw()),
                Err(e) => -(e as i64),
            };
            let _ = nix::unistd::write(&pid_w, &said.to_le_bytes());
            // SAFETY: _exit ends this intermediate process at once; it runs none of the
            // server's exit handlers or destructors (they are not its to run).
            unsafe { libc::_exit(0) }
        }
        Ok(ForkResult::Parent { child }) => {
            drop(pid_w);
            drop(newborn);
            let mut said = [0u8; 8];
            let read = read_full(&pid_r, &mut said);
            wait_for(child);
            read.map_err(ServeError::ReadPid)?;
            let said = i64::from_le_bytes(said);
            if said <= 0 {
                return Err(ServeError::Fork(Errno::from_raw((-said) as i32)));
            }
            u32::try_from(said).map_err(|_| ServeError::BadPid(said))
        }
        Err(e) => Err(ServeError::Fork(e)),
    }
}

fn read_full(fd: &OwnedFd, buf: &mut [u8]) -> Result<(), Errno> {
    let mut got = 0;
    while got < buf.len() {
        match nix::unistd::read(fd, &mut buf[got..]) {
            Ok(0) => return Err(Errno::EPIPE),
            Ok(n) => got += n,
            Err(Errno::EINTR) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reaps the intermediate process.
fn wait_for(child: Pid) {
    loop {
        match nix::sys::wait::waitpid(child, None) {
            Err(Errno::EINTR) => continue,
            _ => return,
        }
    }
}

/// Overwrites this process's argument block, what /proc/PID/cmdline and `ps` show, with
/// `title` (cut to the block's length, the rest NUL): the classic setproctitle. A
/// fork of the server would otherwise carry the supervisor's command line.
fn set_command_line(title: &str) {
    let Some((start, end)) = argument_block() else {
        return;
    };
    let Some(len) = end.checked_sub(start).filter(|&l| l > 0) else {
        return;
    };
    let mut block = vec![0u8; len];
    let n = title.len().min(len - 1);
    block[..n].copy_from_slice(&title.as_bytes()[..n]);
    // SAFETY: [start, end) is this process's argument block as the kernel reports it: the
    // argv strings on the initial stack, mapped writable for the process's lifetime. No
    // Rust object lives there (std keeps only pointers to it, read by `std::env::args`,
    // which a worker does not call), and this process has a single thread.
    unsafe {
        std::ptr::copy_nonoverlapping(block.as_ptr(), start as *mut u8, len);
    }
}

/// `(arg_start, arg_end)` of this process, from /proc/self/stat (fields 48 and 49).
fn argument_block() -> Option<(usize, usize)> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name (which may hold spaces): field 3 is the first.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace().skip(48 - 3);
    let start = fields.next()?.parse().ok()?;
    let end = fields.next()?.parse().ok()?;
    Some((start, end))
}

/// In the forked worker: takes its descriptors, waits to be the supervisor's child, then
/// runs the worker (never returns).
fn become_worker(newborn: Newborn<'_>) -> ! {
    let Newborn {
        fds,
        name,
        token,
        supervisor,
        registry,
    } = newborn;
    let fail = |what: String| -> ! {
        eprintln!("resurgam worker {name}: {what}");
        // SAFETY: ends this forked process at once (nothing of the server's to run).
        unsafe { libc::_exit(EXIT_NOT_A_WORKER) }
    };
    // Its own process group, like a spawned worker: the group is what is killed when it
    // dies (an exec actor's program and whatever it started are in it).
    let _ = nix::unistd::setpgid(Pid::from_raw(0), Pid::from_raw(0));
    // Named like a spawned worker (the worker renames itself after its actor's Init),
    // and not with the supervisor's command line: `pgrep -f 'resurgam run'` must not
    // find workers.
    let comm: String = format!("w:{name}").chars().take(15).collect();
    if let Ok(comm) = std::ffi::CString::new(comm) {
        let _ = nix::sys::prctl::set_name(&comm);
    }
    set_command_line(&format!("resurgam-worker[{name}]"));
    let [report, out, err] = fds;
    if let Err(e) = nix::unistd::dup2_stdin(&report)
        .and_then(|()| nix::unistd::dup2_stdout(&out))
        .and_then(|()| nix::unistd::dup2_stderr(&err))
    {
        fail(format!("cannot set its stdio: {e}"));
    }
    drop((report, out, err));
    let deadline = Instant::now() + REPARENT_TIMEOUT;
    while nix::unistd::getppid().as_raw() as u32 != supervisor {
        if Instant::now() >= deadline {
            fail(format!(
                "not re-parented to the supervisor (pid {supervisor}) in {REPARENT_TIMEOUT:?}"
            ));
        }
        std::thread::yield_now();
    }
    resurgam_worker::holder::start();
    resurgam_worker::run_forked_worker(registry, token, supervisor)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The clock id of a thread's CPU time, as the kernel encodes it from the thread id
    /// (`MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED)`).
    fn thread_clock(tid: libc::pid_t) -> libc::clockid_t {
        (!tid << 3) | 6
    }

    /// What the C library believes about the calling thread, compared with the kernel:
    /// 0 when its thread id and robust list are this thread's, else which is wrong.
    fn check_own_thread(robust_head: u64) -> u8 {
        let mut clock: libc::clockid_t = 0;
        // SAFETY: reads the calling thread's record and writes `clock` only.
        let got = unsafe { libc::pthread_getcpuclockid(libc::pthread_self(), &mut clock) };
        // SAFETY: no arguments.
        let tid = unsafe { libc::syscall(libc::SYS_gettid) } as libc::pid_t;
        if got != 0 || clock != thread_clock(tid) {
            return 1;
        }
        match robust_list() {
            Some((head, _)) if head == robust_head => 0,
            _ => 2,
        }
    }

    #[test]
    fn a_cloned_worker_has_its_own_thread_id_and_robust_list() {
        // A forked process plays the server; the clone of it is this test's child.
        let (r, w) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).unwrap();
        // SAFETY: the child runs system calls and reads of its own thread record only,
        // async-signal-safe, then _exit: this test process has other threads.
        let server = match unsafe { nix::unistd::fork() }.unwrap() {
            ForkResult::Child => {
                let outcome: u8 = match Birth::of_first_server() {
                    Birth::Orphan => 10,
                    Birth::Sibling(thread) => match clone_sibling(thread) {
                        Ok(None) => check_own_thread(thread.robust_list.0),
                        Ok(Some(_)) => 255,
                        Err(_) => 11,
                    },
                };
                if outcome != 255 {
                    let _ = nix::unistd::write(&w, &[outcome]);
                }
                // SAFETY: ends this process at once, running nothing of the test's.
                unsafe { libc::_exit(0) }
            }
            ForkResult::Parent { child } => child,
        };
        drop(w);
        let mut outcome = [0u8; 1];
        let n = nix::unistd::read(&r, &mut outcome).unwrap();
        // Both the server and its sibling are children of this process.
        assert_eq!(
            nix::sys::wait::waitpid(server, None).unwrap(),
            nix::sys::wait::WaitStatus::Exited(server, 0)
        );
        assert_eq!(n, 1);
        assert_eq!(
            outcome[0], 0,
            "1: a stale thread id; 2: no robust list; 10: no PR_GET_TID_ADDRESS; 11: clone3 failed"
        );
        let sibling = nix::sys::wait::waitpid(None::<Pid>, None).unwrap();
        assert!(
            matches!(sibling, nix::sys::wait::WaitStatus::Exited(p, 0) if p != server),
            "{sibling:?}"
        );
    }

    fn send_raw(sock: &OwnedFd, bytes: &[u8], fds: &[RawFd]) {
        let cmsg = [ControlMessage::ScmRights(fds)];
        let cmsgs: &[ControlMessage] = if fds.is_empty() { &[] } else { &cmsg };
        sendmsg::<()>(
            sock.as_raw_fd(),
            &[IoSlice::new(bytes)],
            cmsgs,
            MsgFlags::empty(),
            None,
        )
        .unwrap();
    }

    #[test]
    fn a_request_with_the_wrong_descriptors_or_bytes_is_refused_not_obeyed() {
        let (a, b) = seqpacket_pair().unwrap();
        let mut buf = vec![0u8; MAX_MESSAGE];
        let good = postcard::to_allocvec(&Request::Fork {
            name: "x".into(),
            token: "t".into(),
        })
        .unwrap();
        // One descriptor instead of three.
        send_raw(&a, &good, &[a.as_raw_fd()]);
        let (request, fds) = next_request(&b, &mut buf).unwrap().unwrap();
        assert!(request.is_ok());
        assert_eq!(
            fds.unwrap_err().to_string(),
            "a request carries 1 descriptors, not 3"
        );
        // Garbage with three descriptors: the descriptors are taken (and closed), the
        // request is undecodable.
        let fd = a.as_raw_fd();
        send_raw(&a, &[0xff, 0xff, 0xff], &[fd, fd, fd]);
        let (request, fds) = next_request(&b, &mut buf).unwrap().unwrap();
        assert!(request.is_err());
        assert_eq!(fds.unwrap().len(), 3);
        // The supervisor's end closed: the server's loop ends.
        drop(a);
        assert!(next_request(&b, &mut buf).unwrap().is_none());
    }

    #[test]
    fn a_bad_or_missing_answer_is_an_error_naming_it() {
        let (a, b) = seqpacket_pair().unwrap();
        send_raw(&b, &[0xff, 0xff], &[]);
        let e = receive(&a).unwrap_err();
        assert!(matches!(e, LinkError::Undecodable(_)), "{e:?}");
        assert!(e.to_string().starts_with("undecodable answer"), "{e}");
        drop(b);
        let e = receive(&a).unwrap_err();
        assert!(matches!(e, LinkError::Closed), "{e:?}");
        assert_eq!(e.to_string(), "it closed its socket");
    }

    #[test]
    fn a_server_of_another_version_is_refused() {
        let (a, b) = seqpacket_pair().unwrap();
        let hello = Reply::Hello {
            version: PROTOCOL_VERSION + 1,
            ipc_version: IPC_VERSION,
        };
        send_reply(&b, &hello).unwrap();
        let Err(e) = hello_of(a) else {
            panic!("a server of another version was taken");
        };
        assert!(
            matches!(e, LinkError::Version { version, .. } if version == PROTOCOL_VERSION + 1),
            "{e:?}"
        );
        assert!(
            e.to_string().contains("restart the service to upgrade"),
            "{e}"
        );
    }

    /// `hello` for a server that is not a process of ours.
    fn hello_of(sock: OwnedFd) -> Result<Conn, LinkError> {
        hello(sock, u32::MAX)
    }

    #[test]
    fn restarts_back_off_after_the_first() {
        let delays: Vec<u64> = (1..=9).map(|n| restart_delay(n).as_secs()).collect();
        assert_eq!(delays, [0, 1, 2, 4, 8, 16, 30, 30, 30]);
    }
}
