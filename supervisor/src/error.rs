//! Why the supervisor cannot start or has to stop, typed, each case with the path,
//! actor or resource it concerns (the messages are what an operator reads on stderr).

use std::io;
use std::path::PathBuf;

/// `resurgam run` could not start, or its event loop could not go on.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    #[error("create {what} directory {}: {source}", path.display())]
    CreateDir {
        what: &'static str,
        path: PathBuf,
        source: io::Error,
    },
    #[error(
        "{what} directory {problem}: anyone who can write there can swap, plant or delete \
         the actors' state, so resurgam refuses it; make it owned by this user and writable \
         by no one else (e.g. chmod 700), or set `allow_shared_dirs = true` in [supervisor]"
    )]
    UnsafeDir {
        what: &'static str,
        problem: resurgam_shared::safefs::DirProblem,
    },
    #[error("state directory manifest: {0}")]
    Manifest(String),
    #[error("state directory manifest: {0}")]
    OpenManifest(#[from] crate::manifest::ManifestError),
    #[error("open lock file {}: {source}", path.display())]
    LockFile { path: PathBuf, source: io::Error },
    #[error(
        "{what} is in use by another supervisor{holder} (lock {}: {source})",
        lock.display()
    )]
    Locked {
        /// What is locked, with its path: "state directory /x", "control socket /y".
        what: String,
        /// " (pid N)" when the lock file names its holder, else empty.
        holder: String,
        lock: PathBuf,
        source: nix::errno::Errno,
    },
    #[error("actor {actor:?}: {reason}")]
    Actor { actor: String, reason: String },
    #[error(transparent)]
    Socket(#[from] SocketError),
    /// A resource of the supervisor itself: signal handlers, the event loop, a thread.
    #[error("{what}: {source}")]
    Setup {
        what: &'static str,
        source: io::Error,
    },
    #[error("every helper thread is gone")]
    HelpersGone,
    #[error("cannot serve metrics on {addr} ([supervisor].metrics_listen): {source}")]
    MetricsListen {
        addr: std::net::SocketAddr,
        source: io::Error,
    },
}

impl RunError {
    /// A `Setup` error builder for `map_err`.
    pub fn setup(what: &'static str) -> impl FnOnce(io::Error) -> RunError {
        move |source| RunError::Setup { what, source }
    }
}

/// The control socket could not be made.
#[derive(Debug, thiserror::Error)]
pub enum SocketError {
    #[error("create socket directory {}: {source}", path.display())]
    Dir { path: PathBuf, source: io::Error },
    #[error(
        "{} is {kind} owned by {owner}, not by {me} who runs the supervisor; not touched \
         (remove it as its owner, or choose another socket path)",
        path.display()
    )]
    ForeignOwner {
        path: PathBuf,
        kind: &'static str,
        owner: String,
        me: String,
    },
    #[error("another supervisor is listening on {}; stop it first", path.display())]
    InUse { path: PathBuf },
    #[error(
        "{} exists and is not a socket; not replaced (remove it or choose another socket path)",
        path.display()
    )]
    NotASocket { path: PathBuf },
    #[error("remove stale socket {}: {source}", path.display())]
    Stale { path: PathBuf, source: io::Error },
    #[error("bind {}: {source}", path.display())]
    Bind { path: PathBuf, source: io::Error },
    #[error("chmod {mode:o} {}: {source}", path.display())]
    Chmod {
        path: PathBuf,
        mode: u32,
        source: io::Error,
    },
    #[error("control socket {}: {source}", path.display())]
    Setup { path: PathBuf, source: io::Error },
}
