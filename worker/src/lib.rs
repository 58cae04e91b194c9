//! The worker side of resurgam: the [`Actor`] trait, the [`Registry`] of actor kinds,
//! the built-in actors (`counter`, `kv`) and the worker loop ([`run_worker`]).
//!
//! Architecture invariant: this crate never touches the control socket and never speaks
//! to systemd. A worker talks only to its supervisor (calls come in over the ipc channel
//! set up at bootstrap, replies and reports go out over its report socket), to its own
//! checkpoint files, and — for an actor of kind `exec` only — to
//! the one program it starts as its child ([`exec`], over the documented exec worker
//! protocol). It starts no other process.
//!
//! A worker runs actor code in its own OS process. A panic or abort in actor code ends
//! the process; the supervisor then restores the last checkpoint and replays the calls
//! after it, so actor code never needs to handle its own crashes.

mod actor;
mod alloc;
pub mod builtin;
pub mod exec;
pub mod holder;
mod keys;
mod registry;
mod report;
mod run;
mod sys;

pub use actor::{Actor, ActorError};
pub use alloc::HugePageAlloc;
pub use registry::{Kind, Registry};
pub use run::{EXIT_BAD_BOOTSTRAP, EXIT_FATAL, run_forked_worker, run_worker};
