//! Messages between the supervisor and a worker, over ipc-channel.
//!
//! Bootstrap: the supervisor creates an `IpcOneShotServer<FromWorker>` and starts its own
//! binary with the server's name in [`ENV_BOOTSTRAP`]. The worker connects, creates its
//! inbound channel and sends [`FromWorker::Hello`] carrying the sender of it. The supervisor
//! answers [`ToWorker::Init`]; the worker restores its checkpoint and sends
//! [`FromWorker::Ready`]. From then on calls travel in batches ([`ToWorker::Calls`]) and
//! replies come back in batches ([`FromWorker::Replies`]).
//!
//! Size rule: ipc-channel fragments a message larger than one socket buffer (~207 KiB) and
//! a sender can then hang forever if the receiver dies mid-message. Every batch whose
//! encoding exceeds [`SHM_THRESHOLD`] therefore travels as one shared-memory region (an fd),
//! so no ipc message ever needs fragmenting.

use ipc_channel::ipc::{IpcSender, IpcSharedMemory};
use serde::{Deserialize, Serialize};

use crate::protocol::ErrorKind;

/// Environment variable with the bootstrap server's name (worker mode when set).
pub const ENV_BOOTSTRAP: &str = "RESURGAM_WORKER_BOOTSTRAP";
/// Environment variable with the supervisor's pid (the worker exits if its parent changed).
pub const ENV_PARENT_PID: &str = "RESURGAM_PARENT_PID";
/// Batches whose encoding is larger than this go through shared memory.
pub const SHM_THRESHOLD: usize = 32 * 1024;
/// Bumped whenever a message below changes shape; checked in `Hello`/`Init`.
pub const IPC_VERSION: u32 = 2;
/// Exit status of a worker whose exec program crashed, misbehaved or ended (the reason
/// was sent as [`FromWorker::Crashed`] first).
pub const EXIT_PROGRAM_FAILED: i32 = 75;

/// One call as the worker sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Call {
    pub seq: u64,
    pub method: String,
    /// Raw JSON text of the arguments (`null` when none were given).
    #[serde(with = "serde_bytes")]
    pub args: Vec<u8>,
}

/// A call's result as the worker sends it back.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Outcome {
    /// Raw JSON text of the result.
    Ok(#[serde(with = "serde_bytes")] Vec<u8>),
    /// The actor refused the call (bad arguments, unknown method, its own error).
    Err { kind: ErrorKind, message: String },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reply {
    pub seq: u64,
    pub outcome: Outcome,
}

/// What the supervisor tells a new worker about itself.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Init {
    pub version: u32,
    pub actor: String,
    pub kind: String,
    /// Path of the memory-mapped checkpoint file (bytes of the OS path).
    #[serde(with = "serde_bytes")]
    pub mmap_path: Vec<u8>,
    /// Path of the synced disk copy (bytes of the OS path).
    #[serde(with = "serde_bytes")]
    pub disk_path: Vec<u8>,
    /// Checkpoint after this many applied calls (0 = never by count).
    pub checkpoint_every: u64,
    /// For kind `exec`: the program to run and talk to.
    pub exec: Option<ExecInit>,
    /// Identity and limits for the actor's code.
    pub privileges: Privileges,
}

/// The program of an `exec` actor, as the worker starts it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExecInit {
    /// argv (bytes of each argument; no NUL inside, checked by the config).
    pub argv: Vec<String>,
    /// Variables added to the worker's own (already scrubbed) environment.
    pub env: Vec<(String, String)>,
    /// Working directory (bytes of the OS path).
    #[serde(with = "serde_bytes")]
    pub cwd: Vec<u8>,
}

/// A resource limit, applied as soft = hard.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Rlimit {
    /// RLIMIT_AS, bytes.
    AddressSpace(u64),
    /// RLIMIT_NOFILE.
    OpenFiles(u64),
    /// RLIMIT_CORE, bytes.
    Core(u64),
    /// RLIMIT_NPROC.
    Processes(u64),
    /// RLIMIT_CPU, seconds.
    CpuSeconds(u64),
}

/// Who the actor's code runs as, with which limits. Empty = as the supervisor.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Privileges {
    /// `(uid, gid)` to switch to (the supervisor resolved names and checked it is root).
    pub identity: Option<(u32, u32)>,
    pub limits: Vec<Rlimit>,
}

/// Supervisor → worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    Init(Init),
    Calls(Vec<Call>),
    /// A postcard-encoded `Vec<Call>` too large for one ipc message.
    CallsShm(IpcSharedMemory),
    /// Write a checkpoint now (answered with `Checkpointed` or `CheckpointFailed`).
    Checkpoint,
    /// Exit with status 0 (the supervisor asked for a final checkpoint before).
    Stop,
    /// Answer `Pong` at once (hang detection while idle).
    Ping,
    /// New settings after a reload.
    Configure {
        checkpoint_every: u64,
    },
}

/// How restore went, for the supervisor's log and status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Restored {
    /// 0 when the actor started from scratch.
    pub generation: u64,
    /// Every call up to this sequence number is reflected in the restored state.
    pub last_seq: u64,
    /// Where it came from ("mmap slot A", "disk copy"), or `None` for a fresh start.
    pub source: Option<String>,
    /// Candidates that were rejected, each with its reason.
    pub rejected: Vec<String>,
    /// A damaged checkpoint file that was moved aside (path), if any.
    pub moved_aside: Option<String>,
    /// `(generation, last_seq)` of every valid record in the mmap file's slots.
    pub mmap_slots: Vec<(u64, u64)>,
    /// For kind `exec`: the pid of the program (the worker's child).
    pub program_pid: Option<u32>,
}

/// Worker → supervisor.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    Hello {
        version: u32,
        pid: u32,
        to_worker: IpcSender<ToWorker>,
    },
    /// Sent by the supervisor itself to its own bootstrap server, to abandon a spawn
    /// whose worker died before it connected.
    Abort,
    Ready(Restored),
    Replies(Vec<Reply>),
    /// A postcard-encoded `Vec<Reply>` too large for one ipc message.
    RepliesShm(IpcSharedMemory),
    Checkpointed {
        generation: u64,
        last_seq: u64,
        /// last_seq of the checkpoint left in the other slot (`None` if it holds none).
        previous: Option<u64>,
        bytes: u64,
        micros: u64,
    },
    CheckpointFailed {
        message: String,
    },
    /// The answer to `Ping`.
    Pong,
    /// The worker cannot go on (unknown kind, unreadable checkpoint, …) and exits.
    Fatal {
        message: String,
    },
    /// The worker's exec program crashed or broke the protocol; the worker exits with
    /// [`EXIT_PROGRAM_FAILED`] and is recovered like any crashed worker.
    Crashed {
        reason: String,
    },
}

/// Approximate encoded size of a batch of calls.
pub fn calls_size(calls: &[Call]) -> usize {
    calls
        .iter()
        .map(|c| 16 + c.method.len() + c.args.len())
        .sum()
}

/// Approximate encoded size of a batch of replies.
pub fn replies_size(replies: &[Reply]) -> usize {
    replies
        .iter()
        .map(|r| {
            16 + match &r.outcome {
                Outcome::Ok(v) => v.len(),
                Outcome::Err { message, .. } => message.len(),
            }
        })
        .sum()
}

/// Wraps a batch of calls, through shared memory when it is large.
pub fn calls_message(calls: Vec<Call>) -> Result<ToWorker, postcard::Error> {
    if calls_size(&calls) > SHM_THRESHOLD {
        let bytes = postcard::to_allocvec(&calls)?;
        Ok(ToWorker::CallsShm(IpcSharedMemory::from_bytes(&bytes)))
    } else {
        Ok(ToWorker::Calls(calls))
    }
}

/// Wraps a batch of replies, through shared memory when it is large.
pub fn replies_message(replies: Vec<Reply>) -> Result<FromWorker, postcard::Error> {
    if replies_size(&replies) > SHM_THRESHOLD {
        let bytes = postcard::to_allocvec(&replies)?;
        Ok(FromWorker::RepliesShm(IpcSharedMemory::from_bytes(&bytes)))
    } else {
        Ok(FromWorker::Replies(replies))
    }
}

/// Decodes a shared-memory batch of calls.
pub fn decode_calls(shm: &IpcSharedMemory) -> Result<Vec<Call>, postcard::Error> {
    postcard::from_bytes(shm)
}

/// Decodes a shared-memory batch of replies.
pub fn decode_replies(shm: &IpcSharedMemory) -> Result<Vec<Reply>, postcard::Error> {
    postcard::from_bytes(shm)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64, args_len: usize) -> Call {
        Call {
            seq,
            method: "put".into(),
            args: vec![b'7'; args_len],
        }
    }

    #[test]
    fn small_batches_stay_inline_large_ones_use_shm() {
        let small = vec![call(1, 10), call(2, 10)];
        assert!(matches!(calls_message(small).unwrap(), ToWorker::Calls(v) if v.len() == 2));
        let large = vec![call(1, SHM_THRESHOLD), call(2, 5)];
        match calls_message(large.clone()).unwrap() {
            ToWorker::CallsShm(shm) => assert_eq!(decode_calls(&shm).unwrap(), large),
            other => panic!("expected shm, got {other:?}"),
        }
    }

    #[test]
    fn large_replies_round_trip_through_shm() {
        let replies = vec![
            Reply {
                seq: 3,
                outcome: Outcome::Ok(vec![b'1'; SHM_THRESHOLD + 1]),
            },
            Reply {
                seq: 4,
                outcome: Outcome::Err {
                    kind: ErrorKind::ActorError,
                    message: "no".into(),
                },
            },
        ];
        match replies_message(replies.clone()).unwrap() {
            FromWorker::RepliesShm(shm) => assert_eq!(decode_replies(&shm).unwrap(), replies),
            other => panic!("expected shm, got {other:?}"),
        }
    }
}
