//! Signals and reaping. One thread turns SIGTERM, SIGINT and SIGHUP into events; SIGCHLD
//! wakes the event loop itself, which reaps.
//!
//! Signals are registered before any other thread starts (signal-hook's advice) and
//! collate: one SIGCHLD can stand for many dead children, so every SIGCHLD reaps with
//! `waitpid(-1, WNOHANG)` until nothing is left. Reaping on the loop, not on a thread
//! of its own: a worker's death wakes the loop through its pidfd, and the SIGCHLD that
//! comes with it would otherwise wake a second thread that races the loop to reap the
//! worker, and when it wins the death crosses a thread on its way to the loop (a
//! context switch on the loop's CPU, tens of µs of the restart on a VM).

use std::io::Read;
use std::os::unix::net::UnixStream;

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::core::Event;
use crate::exit::WorkerExit;
use crate::shell::{LoopTx, ShellEvent};

/// SIGCHLD for the event loop: a socket the signal handler writes a byte to.
pub struct ChildSignals {
    rx: UnixStream,
}

impl ChildSignals {
    /// The socket to poll (readable after a SIGCHLD); non-blocking.
    pub fn socket(&self) -> std::io::Result<mio::net::UnixStream> {
        self.rx.try_clone().map(mio::net::UnixStream::from_std)
    }

    /// Takes the pending wake-ups, then reaps every dead child, handing each to `reaped`.
    pub fn reap(&mut self, mut reaped: impl FnMut(i32, WorkerExit)) {
        let mut buf = [0u8; 256];
        while matches!(self.rx.read(&mut buf), Ok(n) if n > 0) {}
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return,
                Ok(status) => {
                    if let Some((pid, exit)) = WorkerExit::from_wait(status) {
                        reaped(pid, exit);
                    }
                }
                Err(Errno::EINTR) => continue,
                Err(e) => {
                    tracing::error!(error = %e, "waitpid failed");
                    return;
                }
            }
        }
    }
}

/// Registers the signals. Call before starting any thread. The loop polls
/// [`ChildSignals::socket`] and reaps; [`start`] runs a thread for the others.
pub fn register() -> std::io::Result<(Signals, ChildSignals)> {
    let (rx, tx) = UnixStream::pair()?;
    rx.set_nonblocking(true)?;
    tx.set_nonblocking(true)?;
    signal_hook::low_level::pipe::register(SIGCHLD, tx)?;
    Ok((
        Signals::new([SIGTERM, SIGINT, SIGHUP])?,
        ChildSignals { rx },
    ))
}

/// Runs the signal thread until the event channel closes.
pub fn start(mut signals: Signals, events: LoopTx) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            for sig in signals.forever() {
                let ok = match sig {
                    SIGTERM | SIGINT => {
                        let name = if sig == SIGTERM { "SIGTERM" } else { "SIGINT" };
                        events
                            .send(ShellEvent::Core(Event::Shutdown {
                                reason: format!("{name} received"),
                            }))
                            .is_ok()
                    }
                    SIGHUP => events.send(ShellEvent::Hangup).is_ok(),
                    _ => true,
                };
                if !ok {
                    return;
                }
            }
        })
}

/// A pidfd for `pid` (`None`: no such process any more, or a kernel before 5.3).
pub fn pidfd_open(pid: u32) -> Option<std::os::fd::OwnedFd> {
    let raw = i32::try_from(pid).ok()?;
    // SAFETY: pidfd_open only creates a new descriptor (or fails); it reads no memory of
    // ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, raw, 0) };
    let fd = i32::try_from(fd).ok().filter(|&fd| fd >= 0)?;
    // SAFETY: `fd` is the descriptor pidfd_open just returned; nothing else owns it.
    Some(unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) })
}

/// SIGKILLs the process behind a pidfd (nothing, if it is already reaped: a pidfd
/// never names a reused pid).
pub fn pidfd_kill(pidfd: std::os::fd::BorrowedFd<'_>) {
    use std::os::fd::AsRawFd;
    // SAFETY: pidfd_send_signal reads no memory of ours (no siginfo is passed).
    unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
            std::ptr::null::<libc::siginfo_t>(),
            0u32,
        );
    }
}
