//! resurgam: a single-node multi-process actor supervisor.
//!
//! The supervisor starts one worker OS process per configured actor, sends it calls in
//! batches over ipc-channel, and when a worker dies (even by `kill -9`) restarts it from
//! its last checkpoint and replays the calls after it: no call lost, none applied twice.
//!
//! Use it from your own binary to supervise your own actors:
//!
//! ```no_run
//! use resurgam::{Actor, ActorError, Registry};
//! use serde_json::Value;
//!
//! struct Echo;
//! impl Actor for Echo {
//!     fn methods() -> &'static [&'static str] { &["echo"] }
//!     fn new() -> Self { Echo }
//!     fn handle(&mut self, _m: &str, args: Value) -> Result<Value, ActorError> { Ok(args) }
//!     fn save(&self) -> Result<Vec<u8>, String> { Ok(Vec::new()) }
//!     fn load(_: &[u8]) -> Result<Self, String> { Ok(Echo) }
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     resurgam::main_with(Registry::with_builtins().register::<Echo>("echo"))
//! }
//! ```
//!
//! Code map: [`core`] is the pure state machine; `run` is the event loop around it, with
//! `shell` (control connections, workers' report sockets, worker output, the event
//! vocabulary) and the helper threads (signals and reaping, spawners, disk copy, log
//! fsync); [`client`] is the Rust client the CLI uses.

mod calllog;
pub mod cli;
pub mod client;
mod control;
pub mod core;
mod disk;
pub mod error;
pub mod exit;
pub mod journal;
mod launch;
mod logging;
mod manifest;
mod metrics;
pub mod notify;
mod paths;
mod reap;
mod render;
mod run;
mod shell;
mod spawn;

pub use client::{Client, ClientError, RetryPolicy, RetryingClient, new_key};
pub use resurgam_shared as shared;
pub use resurgam_shared::config::Config;
pub use resurgam_worker::{Actor, ActorError, HugePageAlloc, Registry};

/// The entry point for a binary: runs the worker loop when this process was started as
/// a worker, else the command line (`run`, `call`, `status`, …). Call it first in `main`.
pub fn main_with(registry: Registry) -> std::process::ExitCode {
    if shell::forkserver::run_if_asked(&registry) || resurgam_worker::run_worker(&registry) {
        // run_worker never returns true: in worker mode it exits the process.
        return std::process::ExitCode::SUCCESS;
    }
    // `resurgam run …`: the fork server first, before anything is parsed or allocated
    // (see `ForkServer::start`); `run` after global options starts it later.
    let forks = std::env::args_os()
        .nth(1)
        .is_some_and(|a| a == "run")
        .then(|| shell::forkserver::ForkServer::start(&registry));
    cli::main(registry, forks)
}
