//! How a worker process ended, kept as data (a signal is never confused with an exit code).

use std::fmt;

use nix::sys::signal::Signal;
use nix::sys::wait::WaitStatus;

/// A worker's end, from `waitpid`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerExit {
    /// Exited with this status code.
    Code(i32),
    /// Killed by this signal number.
    Signal { signal: i32, core_dumped: bool },
}

impl WorkerExit {
    /// Converts a wait status; `None` for statuses that are not an end (stopped, continued).
    pub fn from_wait(status: WaitStatus) -> Option<(i32, WorkerExit)> {
        match status {
            WaitStatus::Exited(pid, code) => Some((pid.as_raw(), WorkerExit::Code(code))),
            WaitStatus::Signaled(pid, sig, core) => Some((
                pid.as_raw(),
                WorkerExit::Signal {
                    signal: sig as i32,
                    core_dumped: core,
                },
            )),
            _ => None,
        }
    }

    /// True for a clean exit (status 0).
    pub fn is_clean(self) -> bool {
        self == WorkerExit::Code(0)
    }
}

impl fmt::Display for WorkerExit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            WorkerExit::Code(c) => write!(f, "exited with code {c}"),
            WorkerExit::Signal {
                signal,
                core_dumped,
            } => {
                match Signal::try_from(signal) {
                    Ok(s) => write!(f, "killed by {}", s.as_str())?,
                    Err(_) => write!(f, "killed by signal {signal}")?,
                }
                if core_dumped {
                    f.write_str(" (core dumped)")?;
                }
                Ok(())
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_signals_and_codes() {
        assert_eq!(WorkerExit::Code(3).to_string(), "exited with code 3");
        assert_eq!(
            WorkerExit::Signal {
                signal: 9,
                core_dumped: false
            }
            .to_string(),
            "killed by SIGKILL"
        );
        assert_eq!(
            WorkerExit::Signal {
                signal: 6,
                core_dumped: true
            }
            .to_string(),
            "killed by SIGABRT (core dumped)"
        );
        assert!(WorkerExit::Code(0).is_clean());
        assert!(!WorkerExit::Code(137).is_clean());
    }
}
