//! The worker's report socket: every [`Report`] to the supervisor goes through here.
//!
//! The socket arrives as the worker's stdin (what `posix_spawn` can pass) and is moved
//! at once to a close-on-exec descriptor, with `/dev/null` put on fd 0 in its place: so
//! an exec actor's program never holds it, and the supervisor sees the end of the stream
//! when the worker itself is gone. A report is written as one frame under a lock: the
//! watcher thread of an exec actor may report a crash while the main thread writes
//! replies.

use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::sync::{Arc, Mutex};

use nix::errno::Errno;
use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::stat::{Mode, SFlag, fstat};

use resurgam_shared::ipc::{Report, encode_report};

/// Why the report socket could not be taken over from stdin (fd 0).
#[derive(Debug, thiserror::Error)]
pub enum InheritError {
    /// fstat(2) of fd 0 failed.
    #[error("stdin (the report socket): {0}")]
    Stat(Errno),
    /// fd 0 is not a socket (the worker was not started by a supervisor).
    #[error("stdin is not the supervisor's report socket")]
    NotASocket,
    /// Duplicating fd 0 to a close-on-exec descriptor failed.
    #[error("move the report socket off stdin: {0}")]
    Move(Errno),
    /// Opening `/dev/null` (to put on fd 0) failed.
    #[error("open /dev/null: {0}")]
    OpenNull(Errno),
    /// dup2(2) of `/dev/null` onto fd 0 failed.
    #[error("put /dev/null on stdin: {0}")]
    NullOnStdin(std::io::Error),
}

/// Why a [`Report`] did not reach the supervisor.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    /// The report could not be encoded as a frame.
    #[error("encode report: {0}")]
    Encode(postcard::Error),
    /// Writing the frame to the report socket failed (the supervisor is gone) after
    /// `written` of its `frame_len` bytes.
    #[error("write to the supervisor: {error}")]
    Write {
        error: Errno,
        written: usize,
        frame_len: usize,
    },
}

/// A cloneable handle on the report socket.
#[derive(Clone)]
pub struct Reporter {
    stream: Arc<Mutex<UnixStream>>,
}

impl Reporter {
    /// Takes over the report socket from stdin. Call once, before any thread starts.
    pub fn inherit() -> Result<Reporter, InheritError> {
        let stdin = std::io::stdin();
        let fd0 = stdin.as_fd();
        let st = fstat(fd0).map_err(InheritError::Stat)?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
            return Err(InheritError::NotASocket);
        }
        let moved = fcntl(fd0, FcntlArg::F_DUPFD_CLOEXEC(3)).map_err(InheritError::Move)?;
        let null = open(
            "/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(InheritError::OpenNull)?;
        // SAFETY: dup2 onto fd 0 only replaces this process's stdin, which nothing reads
        // (the worker never reads stdin; its descriptor was moved just above).
        if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
            return Err(InheritError::NullOnStdin(std::io::Error::last_os_error()));
        }
        // SAFETY: `moved` is the descriptor F_DUPFD_CLOEXEC just created; nothing else
        // owns it.
        let moved = unsafe { OwnedFd::from_raw_fd(moved) };
        Ok(Reporter {
            stream: Arc::new(Mutex::new(UnixStream::from(moved))),
        })
    }

    /// A reporter writing to `stream` (unit tests read the other end).
    #[cfg(test)]
    pub(crate) fn over(stream: UnixStream) -> Reporter {
        Reporter {
            stream: Arc::new(Mutex::new(stream)),
        }
    }

    /// Sends one report; blocks while the supervisor's side is full.
    pub fn send(&self, report: &Report) -> Result<(), SendError> {
        let frame = encode_report(report).map_err(SendError::Encode)?;
        // A poisoned lock only means another thread panicked mid-write; the frame
        // boundary is then lost anyway and the supervisor will refuse the stream.
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = &frame[..];
        while !rest.is_empty() {
            // MSG_NOSIGNAL: a supervisor that is gone is an error here, never a SIGPIPE.
            match send(stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(Errno::EINTR) => {}
                Err(error) => {
                    return Err(SendError::Write {
                        error,
                        written: frame.len() - rest.len(),
                        frame_len: frame.len(),
                    });
                }
            }
        }
        Ok(())
    }
}
