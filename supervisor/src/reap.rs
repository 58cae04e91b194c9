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
