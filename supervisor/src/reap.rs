//! Signals and reaping: one thread turns SIGCHLD, SIGTERM, SIGINT and SIGHUP into events.
//!
//! Signals are registered before any other thread starts (signal-hook's advice) and
//! collate: one SIGCHLD can stand for many dead children, so every SIGCHLD reaps with
//! `waitpid(-1, WNOHANG)` until nothing is left.

use nix::errno::Errno;
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use signal_hook::consts::{SIGCHLD, SIGHUP, SIGINT, SIGTERM};
use signal_hook::iterator::Signals;

use crate::core::Event;
use crate::exit::WorkerExit;
use crate::shell::{LoopTx, ShellEvent};

/// Registers the signals. Call before starting any thread.
pub fn register() -> std::io::Result<Signals> {
    Signals::new([SIGCHLD, SIGTERM, SIGINT, SIGHUP])
}

/// Runs the signal thread until the event channel closes.
pub fn start(mut signals: Signals, events: LoopTx) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            // Children that died before the handler existed.
            if !reap_all(&events) {
                return;
            }
            for sig in signals.forever() {
                let ok = match sig {
                    SIGCHLD => reap_all(&events),
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

/// Reaps every dead child. Returns false when the event channel is closed.
fn reap_all(events: &LoopTx) -> bool {
    loop {
        match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
            Ok(WaitStatus::StillAlive) | Err(Errno::ECHILD) => return true,
            Ok(status) => {
                if let Some((pid, exit)) = WorkerExit::from_wait(status)
                    && events.send(ShellEvent::Reaped { pid, exit }).is_err()
                {
                    return false;
                }
            }
            Err(Errno::EINTR) => continue,
            Err(e) => {
                tracing::error!(error = %e, "waitpid failed");
                return true;
            }
        }
    }
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
