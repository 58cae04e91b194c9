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

use nix::fcntl::{FcntlArg, OFlag, fcntl, open};
use nix::sys::socket::{MsgFlags, send};
use nix::sys::stat::{Mode, SFlag, fstat};

use resurgam_shared::ipc::{Report, encode_report};

/// A cloneable handle on the report socket.
#[derive(Clone)]
pub struct Reporter {
    stream: Arc<Mutex<UnixStream>>,
}

impl Reporter {
    /// Takes over the report socket from stdin. Call once, before any thread starts.
    pub fn inherit() -> Result<Reporter, String> {
        let stdin = std::io::stdin();
        let fd0 = stdin.as_fd();
        let st = fstat(fd0).map_err(|e| format!("stdin (the report socket): {e}"))?;
        if SFlag::from_bits_truncate(st.st_mode) & SFlag::S_IFMT != SFlag::S_IFSOCK {
            return Err("stdin is not the supervisor's report socket".to_string());
        }
        let moved = fcntl(fd0, FcntlArg::F_DUPFD_CLOEXEC(3))
            .map_err(|e| format!("move the report socket off stdin: {e}"))?;
        let null = open(
            "/dev/null",
            OFlag::O_RDONLY | OFlag::O_CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| format!("open /dev/null: {e}"))?;
        // SAFETY: dup2 onto fd 0 only replaces this process's stdin, which nothing reads
        // (the worker never reads stdin; its descriptor was moved just above).
        if unsafe { libc::dup2(null.as_raw_fd(), 0) } < 0 {
            return Err(format!(
                "put /dev/null on stdin: {}",
                std::io::Error::last_os_error()
            ));
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
    pub fn send(&self, report: &Report) -> Result<(), String> {
        let frame = encode_report(report).map_err(|e| format!("encode report: {e}"))?;
        // A poisoned lock only means another thread panicked mid-write; the frame
        // boundary is then lost anyway and the supervisor will refuse the stream.
        let stream = self.stream.lock().unwrap_or_else(|p| p.into_inner());
        let mut rest = &frame[..];
        while !rest.is_empty() {
            // MSG_NOSIGNAL: a supervisor that is gone is an error here, never a SIGPIPE.
            match send(stream.as_raw_fd(), rest, MsgFlags::MSG_NOSIGNAL) {
                Ok(n) => rest = &rest[n..],
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(format!("write to the supervisor: {e}")),
            }
        }
        Ok(())
    }
}
