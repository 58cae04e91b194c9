//! What crosses a process boundary or hits the disk, and nothing else.
//!
//! Architecture invariant: this crate binds no socket, spawns no process and installs
//! no signal handler. It holds types and pure encode/decode functions: the config
//! schema ([`config`]), the control protocol ([`protocol`]), the supervisor↔worker IPC
//! messages ([`ipc`]) and the checkpoint format ([`checkpoint`]).

pub mod calllog;
pub mod checkpoint;
pub mod config;
pub mod duration;
pub mod export;
pub mod hugepages;
pub mod ipc;
pub mod protocol;
pub mod safefs;
