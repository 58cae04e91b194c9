//! The worker loop: bootstrap, restore, then apply call batches and checkpoint.

use std::ffi::OsStr;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::Instant;

use ipc_channel::ipc::{self, IpcReceiver, IpcSender};
use serde_json::Value;

use resurgam_shared::checkpoint::{self, MmapCheckpoint};
use resurgam_shared::ipc::{
    Call, ENV_BOOTSTRAP, ENV_PARENT_PID, FromWorker, IPC_VERSION, Init, Outcome, Reply, Restored,
    ToWorker, decode_calls, replies_message,
};
use resurgam_shared::protocol::ErrorKind;

use crate::registry::{DynActor, Registry};

/// Exit status of a worker whose bootstrap failed (no supervisor to talk to).
pub const EXIT_BAD_BOOTSTRAP: i32 = 70;
/// Exit status of a worker that reported a fatal error to its supervisor.
pub const EXIT_FATAL: i32 = 78;

/// Runs the worker side if this process was started as a worker, and never returns
/// then. Returns `false` at once in any other process, so `main` can call it first.
pub fn run_worker(registry: &Registry) -> bool {
    let Some(token) = std::env::var_os(ENV_BOOTSTRAP) else {
        return false;
    };
    // Before anything else: close every fd inherited beyond stdin/stdout/stderr (fds the
    // supervisor received over ipc-channel are not close-on-exec, so another actor's
    // channel could be among them).
    close_inherited_fds();
    let code = match Worker::bootstrap(&token) {
        Ok(mut w) => w.serve(registry),
        Err(message) => {
            eprintln!("resurgam worker: bootstrap failed: {message}");
            EXIT_BAD_BOOTSTRAP
        }
    };
    std::process::exit(code);
}

struct Worker {
    to_sup: IpcSender<FromWorker>,
    inbox: IpcReceiver<ToWorker>,
    name: String,
}

/// The actor with its checkpoint bookkeeping.
struct Live {
    actor: Box<dyn DynActor>,
    mmap: MmapCheckpoint,
    generation: u64,
    last_seq: u64,
    since_checkpoint: u64,
    every: u64,
    /// last_seq of the checkpoint in the slot not written last (reported to the supervisor).
    previous: Option<u64>,
}

impl Worker {
    fn bootstrap(token: &OsStr) -> Result<Worker, String> {
        let parent: Option<i32> = std::env::var(ENV_PARENT_PID)
            .ok()
            .and_then(|p| p.parse().ok());
        // Die with the supervisor. The flag is set after fork, so the parent may already
        // be gone: compare with the pid it told us.
        nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)
            .map_err(|e| format!("prctl(PR_SET_PDEATHSIG): {e}"))?;
        if let Some(p) = parent
            && nix::unistd::getppid().as_raw() != p
        {
            return Err(format!("supervisor (pid {p}) is already gone"));
        }
        let token = token
            .to_str()
            .ok_or("bootstrap token is not UTF-8")?
            .to_string();
        let to_sup = IpcSender::<FromWorker>::connect(token)
            .map_err(|e| format!("connect to the supervisor: {e}"))?;
        let (tx, inbox) =
            ipc::channel::<ToWorker>().map_err(|e| format!("create the inbound channel: {e}"))?;
        to_sup
            .send(FromWorker::Hello {
                version: IPC_VERSION,
                pid: std::process::id(),
                to_worker: tx,
            })
            .map_err(|e| format!("send hello: {e}"))?;
        Ok(Worker {
            to_sup,
            inbox,
            name: String::from("?"),
        })
    }

    fn fatal(&self, message: String) -> i32 {
        eprintln!("resurgam worker {}: {message}", self.name);
        let _ = self.to_sup.send(FromWorker::Fatal { message });
        EXIT_FATAL
    }

    fn serve(&mut self, registry: &Registry) -> i32 {
        let init = match self.inbox.recv() {
            Ok(ToWorker::Init(init)) => init,
            Ok(other) => return self.fatal(format!("expected Init, got {other:?}")),
            Err(e) => {
                eprintln!("resurgam worker: supervisor gone before init: {e}");
                return EXIT_BAD_BOOTSTRAP;
            }
        };
        self.name = init.actor.clone();
        // The process name (comm) is what ps and journald show: make it name the actor.
        let comm: String = format!("w:{}", init.actor).chars().take(15).collect();
        if let Ok(comm) = std::ffi::CString::new(comm) {
            let _ = nix::sys::prctl::set_name(&comm);
        }
        if init.version != IPC_VERSION {
            return self.fatal(format!(
                "ipc version mismatch: supervisor {}, worker {IPC_VERSION}",
                init.version
            ));
        }
        let mut live = match self.restore(registry, &init) {
            Ok(live) => live,
            Err(message) => return self.fatal(message),
        };
        loop {
            let msg = match self.inbox.recv() {
                Ok(m) => m,
                // The supervisor is gone (PDEATHSIG normally kills us first).
                Err(_) => return 0,
            };
            let result = match msg {
                ToWorker::Calls(calls) => self.apply(&mut live, calls),
                ToWorker::CallsShm(shm) => match decode_calls(&shm) {
                    Ok(calls) => self.apply(&mut live, calls),
                    Err(e) => return self.fatal(format!("undecodable call batch: {e}")),
                },
                ToWorker::Checkpoint => self.checkpoint(&mut live),
                ToWorker::Stop => return 0,
                ToWorker::Configure { checkpoint_every } => {
                    live.every = checkpoint_every;
                    Ok(())
                }
                ToWorker::Ping => self
                    .to_sup
                    .send(FromWorker::Pong)
                    .map_err(|e| format!("send pong: {e}")),
                ToWorker::Init(_) => return self.fatal("second Init".to_string()),
            };
            if let Err(e) = result {
                // The supervisor cannot be reached: nothing left to serve.
                eprintln!("resurgam worker {}: {e}", self.name);
                return EXIT_BAD_BOOTSTRAP;
            }
        }
    }

    fn restore(&self, registry: &Registry, init: &Init) -> Result<Live, String> {
        let kind = registry
            .get(&init.kind)
            .ok_or_else(|| format!("unknown actor kind {:?}", init.kind))?;
        let mmap_path = PathBuf::from(OsStr::from_bytes(&init.mmap_path));
        let disk_path = PathBuf::from(OsStr::from_bytes(&init.disk_path));
        let scan = checkpoint::scan(&mmap_path, &disk_path);
        let mut rejected = Vec::new();
        let mut mmap_slots = Vec::new();
        for (source, outcome) in &scan.candidates {
            if let (checkpoint::Source::SlotA | checkpoint::Source::SlotB, Ok(ck)) =
                (source, outcome)
            {
                mmap_slots.push(*ck);
            }
            if let Err(e) = outcome
                && !matches!(
                    e,
                    checkpoint::CheckpointError::Missing | checkpoint::CheckpointError::Empty
                )
            {
                rejected.push(format!("{source}: {e}"));
            }
        }
        let (actor, generation, last_seq, source, size) = match &scan.chosen {
            Some((source, ck)) => {
                let actor = kind.restore(&ck.payload).map_err(|e| {
                    format!(
                        "checkpoint generation {} from {source} verified but cannot be loaded: {e}",
                        ck.generation
                    )
                })?;
                (
                    actor,
                    ck.generation,
                    ck.last_seq,
                    Some(source.to_string()),
                    ck.payload.len() as u64,
                )
            }
            None => (kind.fresh(), 0, 0, None, 0),
        };
        // The mmap slot that is not the newest holds the fallback checkpoint.
        let mut slots = mmap_slots.clone();
        slots.sort_unstable_by(|x, y| y.cmp(x));
        let previous = slots.get(1).map(|s| s.1);
        let (mmap, moved) = MmapCheckpoint::open(&mmap_path, size.saturating_mul(2))
            .map_err(|e| format!("open checkpoint file {}: {e}", mmap_path.display()))?;
        // The word may still name the call an earlier worker died in.
        mmap.set_executing(0);
        self.to_sup
            .send(FromWorker::Ready(Restored {
                generation,
                last_seq,
                source,
                rejected,
                moved_aside: moved.map(|p| p.display().to_string()),
                mmap_slots,
            }))
            .map_err(|e| format!("send ready: {e}"))?;
        Ok(Live {
            actor,
            mmap,
            generation,
            last_seq,
            since_checkpoint: 0,
            every: init.checkpoint_every,
            previous,
        })
    }

    fn apply(&self, live: &mut Live, calls: Vec<Call>) -> Result<(), String> {
        let mut replies = Vec::with_capacity(calls.len());
        for call in calls {
            let outcome = if call.seq <= live.last_seq {
                // Never apply a call twice; the supervisor only replays seq > last_seq.
                Outcome::Err {
                    kind: ErrorKind::CallFailed,
                    message: format!(
                        "call seq {} was already applied (last_seq {})",
                        call.seq, live.last_seq
                    ),
                }
            } else {
                live.mmap.set_executing(call.seq);
                let outcome = apply_one(live.actor.as_mut(), &call);
                live.last_seq = call.seq;
                live.since_checkpoint += 1;
                outcome
            };
            replies.push(Reply {
                seq: call.seq,
                outcome,
            });
        }
        live.mmap.set_executing(0);
        let msg = replies_message(replies).map_err(|e| format!("encode replies: {e}"))?;
        self.to_sup
            .send(msg)
            .map_err(|e| format!("send replies: {e}"))?;
        // Replies go out before the checkpoint that covers them is written, so a call
        // whose effect a checkpoint holds has always had its reply sent.
        if live.every > 0 && live.since_checkpoint >= live.every {
            self.checkpoint(live)?;
        }
        Ok(())
    }

    fn checkpoint(&self, live: &mut Live) -> Result<(), String> {
        let msg = match write_checkpoint(live) {
            Ok(m) => m,
            Err(message) => {
                eprintln!(
                    "resurgam worker {}: checkpoint failed: {message}",
                    self.name
                );
                FromWorker::CheckpointFailed { message }
            }
        };
        self.to_sup
            .send(msg)
            .map_err(|e| format!("send checkpoint report: {e}"))
    }
}

/// Closes every fd above stderr.
fn close_inherited_fds() {
    // SAFETY: close_range only closes this process's descriptors; nothing in this
    // process uses any of them yet (the worker has opened nothing so far).
    let r = unsafe { libc::syscall(libc::SYS_close_range, 3u32, u32::MAX, 0u32) };
    if r == 0 {
        return;
    }
    // Kernels before 5.9: close what /proc lists.
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .filter(|&fd| fd > 2)
                .collect()
        })
        .unwrap_or_default();
    for fd in fds {
        // SAFETY: closing a descriptor number we do not use (the read_dir handle above
        // is already closed; a stale number fails with EBADF).
        unsafe {
            libc::close(fd);
        }
    }
}

fn apply_one(actor: &mut dyn DynActor, call: &Call) -> Outcome {
    let args = if call.args.is_empty() {
        Value::Null
    } else {
        match serde_json::from_slice(&call.args) {
            Ok(v) => v,
            Err(e) => {
                return Outcome::Err {
                    kind: ErrorKind::BadRequest,
                    message: format!("args are not JSON: {e}"),
                };
            }
        }
    };
    match actor.handle(&call.method, args) {
        Ok(v) => match serde_json::to_vec(&v) {
            Ok(bytes) => Outcome::Ok(bytes),
            Err(e) => Outcome::Err {
                kind: ErrorKind::ActorError,
                message: format!("reply cannot be encoded: {e}"),
            },
        },
        Err(e) => Outcome::Err {
            kind: e.kind,
            message: e.message,
        },
    }
}

fn write_checkpoint(live: &mut Live) -> Result<FromWorker, String> {
    let start = Instant::now();
    if live.since_checkpoint == 0 && live.generation > 0 {
        // Nothing changed since the last checkpoint: report it again.
        return Ok(FromWorker::Checkpointed {
            generation: live.generation,
            last_seq: live.last_seq,
            previous: live.previous,
            bytes: 0,
            micros: 0,
        });
    }
    let payload = live.actor.save()?;
    let generation = live.generation + 1;
    let written = live
        .mmap
        .write(generation, live.last_seq, &payload)
        .map_err(|e| format!("write {}: {e}", display(live.mmap.path())))?;
    let other = match written {
        checkpoint::Source::SlotA => 1,
        _ => 0,
    };
    live.previous = live.mmap.slot_contents()[other].map(|(_, seq)| seq);
    live.generation = generation;
    live.since_checkpoint = 0;
    Ok(FromWorker::Checkpointed {
        generation,
        last_seq: live.last_seq,
        previous: live.previous,
        bytes: payload.len() as u64,
        micros: start.elapsed().as_micros() as u64,
    })
}

fn display(p: &Path) -> String {
    p.display().to_string()
}
