//! Messages between the supervisor and a worker.
//!
//! Bootstrap, over ipc-channel: the supervisor creates an `IpcOneShotServer<FromWorker>`
//! and starts its own binary with the server's name in [`ENV_BOOTSTRAP`]. The worker
//! connects, creates its inbound channel and sends [`FromWorker::Hello`] carrying the
//! sender of it. The supervisor answers [`ToWorker::Init`]. Supervisor → worker traffic
//! stays on that ipc channel: calls in batches ([`ToWorker::Calls`]), large batches as
//! shared memory ([`ToWorker::CallsShm`]).
//!
//! Worker → supervisor traffic ([`Report`]: ready, replies, checkpoints) goes over a
//! stream socket the worker inherits as its stdin (and moves off fd 0 at once), in frames (a u32 little-endian
//! length, then the postcard encoding). Unlike an ipc-channel receiver, a socket is a
//! file descriptor the supervisor's event loop can poll: replies reach the loop with no
//! thread in between, and a report of any size streams through it.
//!
//! Size rule: ipc-channel fragments a message larger than one socket buffer (~207 KiB) and
//! a sender can then hang forever if the receiver dies mid-message. Every call batch (and
//! every `Init`) whose
//! encoding exceeds [`SHM_THRESHOLD`] therefore travels as one shared-memory region (an fd),
//! so no ipc message ever needs fragmenting.

use ipc_channel::ipc::{IpcSender, IpcSharedMemory};
use serde::{Deserialize, Serialize};

use crate::protocol::ErrorKind;

/// Environment variable with the bootstrap server's name (worker mode when set).
pub const ENV_BOOTSTRAP: &str = "RESURGAM_WORKER_BOOTSTRAP";
/// Environment variable naming an exec actor's protocol fd, set by its worker.
pub const ENV_PROGRAM_FD: &str = "RESURGAM_FD";
/// Environment variable with an exec actor's name, set by its worker.
pub const ENV_ACTOR: &str = "RESURGAM_ACTOR";
/// Environment variable with the supervisor's pid (the worker exits if its parent changed).
pub const ENV_PARENT_PID: &str = "RESURGAM_PARENT_PID";
/// Environment variables a worker must never see: it must not speak for the service,
/// nor find the control socket. (The benchmark harness keeps them from its supervisors
/// too.)
pub const WORKER_SCRUBBED_ENV: &[&str] = &[
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "RESURGAM_SOCKET",
];
/// Batches whose encoding is larger than this go through shared memory.
pub const SHM_THRESHOLD: usize = 32 * 1024;
/// Bumped whenever a message below changes shape; checked in `Hello`/`Init`.
pub const IPC_VERSION: u32 = 8;
/// Largest reply a worker sends (as an exec program's `R` body); a larger result is
/// answered with an error instead (the call did run), so it can never make its worker
/// fail again on every replay. Each actor's own limit ([`Init::max_reply_bytes`], config
/// `max_reply_bytes`) is at most this.
pub const MAX_REPLY_BYTES: usize = 64 << 20;
/// What a report frame holds beyond its replies' bytes: the enum tags, lengths and
/// sequence numbers, an error reply's (capped) message.
pub const REPORT_ENVELOPE_BYTES: usize = 1 << 20;
/// Largest report frame a supervisor accepts by default; a worker sending a larger one
/// (or claiming to, in a frame's length) is killed before a byte of it is buffered
/// beyond what arrived. A worker cuts its replies into frames of at most 16 MiB, or
/// one larger reply alone, and no other report comes near this.
pub const MAX_REPORT_BYTES: usize = MAX_REPLY_BYTES + REPORT_ENVELOPE_BYTES;
/// While a batch of calls runs, the worker sends the replies of the calls it completed at
/// least this often ([`Report::MoreReplies`]): hang detection measures progress, so a
/// worker busy with a long batch of legitimate calls is never taken for a hung one. (The
/// smallest `heartbeat_timeout` allowed is well above it.)
pub const PROGRESS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(50);
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
    /// The client's idempotency key (G10): the worker answers a call whose key it
    /// remembers with the first reply instead of running it.
    pub key: Option<CallKey>,
}

/// A call's idempotency key, with the actor's retention as it was when the call was
/// accepted. The retention travels with each call (and is logged with it) so that a
/// replay forgets exactly the keys the first run forgot, whatever the config says by
/// then: a change of `idempotency_keys` applies to the calls accepted after it.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CallKey {
    pub key: String,
    /// Remember the last this many keyed calls (`idempotency_keys`; 0: do not remember
    /// this one)…
    pub keep_calls: u32,
    /// …holding at most this many bytes (`idempotency_bytes`).
    pub keep_bytes: u32,
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
    /// When calls come back to back (the last one came within this many µs of the
    /// worker's previous answer), wait for the next one on the CPU this long before
    /// sleeping (0 = never).
    pub spin_micros: u64,
    /// Calls wait for this worker (a replay, or calls that came while the actor had no
    /// worker): after `Ready`, wait for them on the CPU for up to `spin_micros` before
    /// sleeping, since they come at once.
    pub calls_waiting: bool,
    /// A call's result larger than this many bytes is answered with an error instead
    /// (the call ran; the actor lives on).
    pub max_reply_bytes: u64,
    /// For kind `exec`: the program to run and talk to.
    pub exec: Option<ExecInit>,
    /// Identity and limits for the actor's code.
    pub privileges: Privileges,
    /// The id of the state directory (all zeros: none): the worker refuses checkpoints
    /// of another actor or state directory and names its own in what it writes.
    pub state_dir_id: [u8; 16],
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
    /// (Boxed: the other messages are small; the encoding is the same as `Init`'s.)
    Init(Box<Init>),
    /// A postcard-encoded `Init` too large for one ipc message (a long argv or
    /// environment).
    InitShm(IpcSharedMemory),
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
        max_reply_bytes: u64,
    },
    /// A new [`Init::spin_micros`] after a reload.
    Spin {
        micros: u64,
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
    /// Candidates that were rejected before this one was chosen (every newer one), each
    /// with its file and reason. Older candidates are verified after `Ready`: see
    /// [`Report::Verified`].
    pub rejected: Vec<String>,
    /// A damaged checkpoint file that was moved aside (path), if any.
    pub moved_aside: Option<String>,
    /// `(generation, last_seq)` of every record in the mmap file's slots not known to be
    /// damaged: the restored one, and an older one whose header is intact but whose
    /// payload is only verified after `Ready` (until then it counts as a fallback, so the
    /// supervisor keeps the calls it would need).
    pub mmap_slots: Vec<(u64, u64)>,
    /// For kind `exec`: the pid of the program (the worker's child).
    pub program_pid: Option<u32>,
}

impl Restored {
    /// A fresh start: no checkpoint was restored.
    pub fn fresh() -> Restored {
        Restored {
            generation: 0,
            last_seq: 0,
            source: None,
            rejected: Vec::new(),
            moved_aside: None,
            mmap_slots: Vec::new(),
            program_pid: None,
        }
    }
}

/// Worker → supervisor, over the bootstrap ipc channel.
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
}

/// Worker → supervisor, over the report socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Report {
    Ready(Restored),
    /// The replies to a batch of calls (its last part, when it is sent in parts).
    Replies(Vec<Reply>),
    /// Some replies to a batch of calls, with more to come: a batch is answered in parts
    /// as its calls complete, so no frame is much larger than one reply and a long batch
    /// shows progress at least every [`PROGRESS_INTERVAL`].
    MoreReplies(Vec<Reply>),
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
    /// The checkpoint candidates older than the restored one are verified (sent once,
    /// after `Ready`, and before any `Checkpointed` that overwrote one of them).
    Verified {
        /// Those found damaged, each with its file and reason.
        rejected: Vec<String>,
        /// `(generation, last_seq)` of every mmap slot record still usable: as in
        /// [`Restored::mmap_slots`], less the damaged ones.
        mmap_slots: Vec<(u64, u64)>,
    },
}

/// Encodes one report as a frame: u32 little-endian length, then postcard.
pub fn encode_report(report: &Report) -> Result<Vec<u8>, postcard::Error> {
    let mut frame = postcard::to_extend(report, vec![0u8; 4])?;
    let len = u32::try_from(frame.len() - 4).map_err(|_| postcard::Error::SerializeBufferFull)?;
    frame[..4].copy_from_slice(&len.to_le_bytes());
    Ok(frame)
}

/// Why a report stream cannot be read on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReportError {
    #[error("report frame of {len} bytes is larger than the limit ({limit})")]
    TooLarge { len: usize, limit: usize },
    #[error("undecodable report frame of {len} bytes: {error}")]
    Undecodable { len: usize, error: String },
}

/// Splits a worker's report stream into reports. Bytes go in as they arrive; the buffer
/// grows with the bytes received, never with a length the worker claims, and never
/// beyond one frame of at most `limit` bytes (plus what one read adds).
#[derive(Debug)]
pub struct ReportDecoder {
    buf: Vec<u8>,
    /// Where the undecoded part of `buf` starts.
    pos: usize,
    /// Largest frame accepted.
    limit: usize,
}

impl Default for ReportDecoder {
    fn default() -> Self {
        ReportDecoder::with_limit(MAX_REPORT_BYTES)
    }
}

impl ReportDecoder {
    /// A decoder that refuses frames larger than `limit` bytes.
    pub fn with_limit(limit: usize) -> Self {
        ReportDecoder {
            buf: Vec::new(),
            pos: 0,
            limit,
        }
    }

    /// Adds bytes read from the stream.
    pub fn push(&mut self, bytes: &[u8]) {
        if self.pos > 0 && self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        }
        self.buf.extend_from_slice(bytes);
    }

    /// The next complete report, if one is buffered.
    pub fn next_report(&mut self) -> Result<Option<Report>, ReportError> {
        let rest = &self.buf[self.pos..];
        let Some(head) = rest.get(..4) else {
            return Ok(None);
        };
        let mut len = [0u8; 4];
        len.copy_from_slice(head);
        let len = u32::from_le_bytes(len) as usize;
        if len > self.limit {
            return Err(ReportError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        let Some(body) = rest.get(4..4 + len) else {
            return Ok(None);
        };
        let report = postcard::from_bytes(body).map_err(|e| ReportError::Undecodable {
            len,
            error: e.to_string(),
        })?;
        self.pos += 4 + len;
        if self.pos == self.buf.len() {
            self.buf.clear();
            self.pos = 0;
        } else if self.pos > (1 << 20) && self.pos * 2 > self.buf.len() {
            // Keep the buffer from growing without bound when frames straddle reads.
            self.buf.drain(..self.pos);
            self.pos = 0;
        }
        Ok(Some(report))
    }

    /// Bytes received that do not form a complete report yet.
    pub fn pending(&self) -> usize {
        self.buf.len() - self.pos
    }
}

/// Approximate encoded size of a batch of calls.
pub fn calls_size(calls: &[Call]) -> usize {
    calls
        .iter()
        .map(|c| 16 + c.method.len() + c.args.len() + c.key.as_ref().map_or(0, |k| 8 + k.key.len()))
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

/// Wraps a worker's `Init`, through shared memory when it is large: like a large batch,
/// it must never need a fragmented ipc send.
pub fn init_message(init: Init) -> Result<ToWorker, postcard::Error> {
    let bytes = postcard::to_allocvec(&init)?;
    if bytes.len() > SHM_THRESHOLD {
        Ok(ToWorker::InitShm(IpcSharedMemory::from_bytes(&bytes)))
    } else {
        Ok(ToWorker::Init(Box::new(init)))
    }
}

/// Decodes a shared-memory `Init`.
pub fn decode_init(shm: &IpcSharedMemory) -> Result<Init, postcard::Error> {
    decode_init_bytes(shm)
}

/// Decodes a shared-memory batch of calls.
pub fn decode_calls(shm: &IpcSharedMemory) -> Result<Vec<Call>, postcard::Error> {
    decode_calls_bytes(shm)
}

/// [`decode_init`] on the region's bytes (the entry point of the IPC fuzz target, `fuzz/`,
/// which need not create a shared-memory region per input).
pub fn decode_init_bytes(bytes: &[u8]) -> Result<Init, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// [`decode_calls`] on the region's bytes (see [`decode_init_bytes`]).
pub fn decode_calls_bytes(bytes: &[u8]) -> Result<Vec<Call>, postcard::Error> {
    postcard::from_bytes(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64, args_len: usize) -> Call {
        Call {
            seq,
            method: "put".into(),
            args: vec![b'7'; args_len],
            key: None,
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
    fn a_large_init_goes_through_shared_memory() {
        let init = |env_len: usize| Init {
            version: IPC_VERSION,
            actor: "a".into(),
            kind: "exec".into(),
            mmap_path: b"/x".to_vec(),
            disk_path: b"/y".to_vec(),
            checkpoint_every: 1,
            spin_micros: 0,
            calls_waiting: false,
            max_reply_bytes: 1 << 20,
            exec: Some(ExecInit {
                argv: vec!["p".into()],
                env: vec![("K".into(), "v".repeat(env_len))],
                cwd: b"/".to_vec(),
            }),
            privileges: Privileges::default(),
            state_dir_id: [7; 16],
        };
        assert!(matches!(init_message(init(10)).unwrap(), ToWorker::Init(i) if *i == init(10)));
        match init_message(init(SHM_THRESHOLD)).unwrap() {
            ToWorker::InitShm(shm) => assert_eq!(decode_init(&shm).unwrap(), init(SHM_THRESHOLD)),
            other => panic!("expected shm, got {other:?}"),
        }
    }

    #[test]
    fn reports_round_trip_through_frames_split_anywhere() {
        let reports = vec![
            Report::Pong,
            Report::Replies(vec![Reply {
                seq: 3,
                outcome: Outcome::Ok(vec![b'1'; SHM_THRESHOLD + 1]),
            }]),
            Report::Crashed {
                reason: "gone".into(),
            },
        ];
        let stream: Vec<u8> = reports
            .iter()
            .flat_map(|r| encode_report(r).unwrap())
            .collect();
        for chunk in [1, 3, 7, 4096, stream.len()] {
            let mut d = ReportDecoder::default();
            let mut got = Vec::new();
            for piece in stream.chunks(chunk) {
                d.push(piece);
                while let Some(r) = d.next_report().unwrap() {
                    got.push(r);
                }
            }
            assert_eq!(got, reports, "chunk {chunk}");
            assert_eq!(d.pending(), 0);
        }
    }

    #[test]
    fn an_oversized_or_garbage_frame_is_an_error_not_an_allocation() {
        let mut d = ReportDecoder::default();
        d.push(&u32::MAX.to_le_bytes());
        assert_eq!(
            d.next_report(),
            Err(ReportError::TooLarge {
                len: u32::MAX as usize,
                limit: MAX_REPORT_BYTES
            })
        );
        // The limit is the decoder's: one byte over is refused from the header alone.
        let mut d = ReportDecoder::with_limit(100);
        d.push(&101u32.to_le_bytes());
        assert_eq!(
            d.next_report(),
            Err(ReportError::TooLarge {
                len: 101,
                limit: 100
            })
        );
        let mut d = ReportDecoder::default();
        d.push(&[3, 0, 0, 0, 0xff, 0xff, 0xff]);
        assert!(matches!(
            d.next_report(),
            Err(ReportError::Undecodable { len: 3, .. })
        ));
        let mut d = ReportDecoder::default();
        d.push(&[200, 0, 0, 0, 1]);
        assert_eq!(d.next_report(), Ok(None), "an incomplete frame waits");
    }
}
