//! The worker loop: bootstrap, restore, then apply call batches and checkpoint.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::io::Write as _;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipc_channel::ipc::{self, IpcReceiver, IpcSender};
use serde_json::Value;

use resurgam_shared::checkpoint::{self, MmapCheckpoint, OwnerTag};
use resurgam_shared::export::{self, EXPORT_METHOD, IMPORT_METHOD};
use resurgam_shared::ipc::{
    Call, ENV_BOOTSTRAP, ENV_PARENT_PID, EXIT_PROGRAM_FAILED, FromWorker, IPC_VERSION, Init,
    MAX_REPLY_BYTES, Outcome, PROGRESS_INTERVAL, Reply, Report, Restored, ToWorker, decode_calls,
    decode_init,
};
use resurgam_shared::protocol::ErrorKind;

use crate::exec::{self, Program};
use crate::keys::KeyTable;
use crate::registry::{DynActor, Kind, Registry};
use crate::report::{self, Reporter};
use crate::sys::Prepared;

/// How long a restored worker must have had nothing to do before it verifies the older
/// checkpoint candidates (on a machine of few cores it would otherwise take the CPU the
/// supervisor needs to send the replay).
const VERIFY_WHEN_IDLE_FOR: Duration = Duration::from_millis(2);

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
    let parent = std::env::var(ENV_PARENT_PID)
        .ok()
        .and_then(|p| p.parse().ok());
    worker_main(registry, &token, parent)
}

/// Runs the worker side in a process a fork server has just forked, whose stdin is the
/// report socket and whose parent is already the supervisor (pid `parent`). Never
/// returns.
pub fn run_forked_worker(registry: &Registry, token: &str, parent: u32) -> ! {
    worker_main(registry, OsStr::new(token), Some(parent))
}

fn worker_main(registry: &Registry, token: &OsStr, parent: Option<u32>) -> ! {
    // Before anything else: close every fd inherited beyond stdin (the report socket),
    // stdout and stderr (fds the supervisor received over ipc-channel are not
    // close-on-exec, so another actor's channel could be among them; a forked worker
    // holds the fork server's socket).
    close_inherited_fds();
    if let Some(p) = parent {
        SUPERVISOR_PID.store(p, std::sync::atomic::Ordering::Relaxed);
    }
    let code = match Worker::bootstrap(token) {
        Ok(mut w) => w.serve(registry),
        Err(message) => {
            eprintln!("resurgam worker: bootstrap failed: {message}");
            EXIT_BAD_BOOTSTRAP
        }
    };
    // However the worker ends on its own, its holder is ended and reaped first, not left
    // to die of its parent's death: an orphan, it would be the supervisor's child for a
    // moment, which a sweep would find and report as left behind.
    crate::holder::release();
    std::process::exit(code);
}

struct Worker {
    to_sup: Reporter,
    inbox: IpcReceiver<ToWorker>,
    name: String,
}

/// What runs the actor's calls.
enum Engine {
    /// A kind compiled into this binary (the kind loads an imported state).
    Native(Box<dyn DynActor>, Kind),
    /// An exec actor's program.
    Exec(Program),
}

/// Why a worker could not reach the point of waiting for its Init.
#[derive(Debug, thiserror::Error)]
enum BootstrapError {
    #[error(transparent)]
    ParentDeath(#[from] ParentDeathError),
    #[error("bootstrap token is not UTF-8")]
    TokenNotUtf8,
    #[error(transparent)]
    Report(#[from] report::InheritError),
    /// The supervisor's one-shot bootstrap server named by `token` could not be reached.
    #[error("connect to the supervisor: {error}")]
    Connect {
        token: String,
        error: std::io::Error,
    },
    #[error("create the inbound channel: {0}")]
    Channel(std::io::Error),
    #[error("send hello: {0}")]
    Hello(ipc_channel::IpcError),
}

/// Why the parent-death signal could not be armed.
#[derive(Debug, thiserror::Error)]
enum ParentDeathError {
    #[error("prctl(PR_SET_PDEATHSIG): {0}")]
    Prctl(nix::errno::Errno),
    /// The supervisor that started this worker (its pid as it told us) is no longer
    /// this process's parent.
    #[error("supervisor (pid {pid}) is already gone")]
    SupervisorGone { pid: u32 },
}

/// Why the worker cannot go on serving.
enum Stop {
    /// Something other than the program failed (the supervisor is unreachable, a restore
    /// is impossible, a checkpoint could not be written): said in the message.
    Failed(String),
    /// The exec program crashed or broke the protocol: report it, exit as crashed.
    Crashed(String),
    /// The supervisor's end of a socket closed (it died, or gave up on this worker):
    /// end with the whole process group (see [`die_with_group`]).
    Gone(String),
}

/// The actor with its checkpoint bookkeeping.
struct Live {
    engine: Engine,
    /// The actor's name and kind, as an export file states them.
    actor: String,
    kind: String,
    mmap: MmapCheckpoint,
    generation: u64,
    last_seq: u64,
    since_checkpoint: u64,
    every: u64,
    /// last_seq of the checkpoint in the slot not written last (reported to the supervisor).
    previous: Option<u64>,
    /// See [`Init::spin_micros`].
    spin_micros: u64,
    /// See [`Init::calls_waiting`].
    calls_waiting: bool,
    /// See [`Init::max_reply_bytes`].
    max_reply_bytes: usize,
    /// The keyed calls remembered (G10), saved with every checkpoint.
    keys: KeyTable,
}

impl Worker {
    fn bootstrap(token: &OsStr) -> Result<Worker, BootstrapError> {
        // Die with the supervisor, and take every process of this worker's process group
        // (an exec actor's program and whatever it started) along: the parent-death
        // signal's handler kills the whole group.
        install_group_killer();
        arm_parent_death()?;
        let token = token
            .to_str()
            .ok_or(BootstrapError::TokenNotUtf8)?
            .to_string();
        let reporter = Reporter::inherit()?;
        let bootstrap = IpcSender::<FromWorker>::connect(token.clone())
            .map_err(|error| BootstrapError::Connect { token, error })?;
        let (tx, inbox) = ipc::channel::<ToWorker>().map_err(BootstrapError::Channel)?;
        bootstrap
            .send(FromWorker::Hello {
                version: IPC_VERSION,
                pid: std::process::id(),
                to_worker: tx,
            })
            .map_err(BootstrapError::Hello)?;
        Ok(Worker {
            to_sup: reporter,
            inbox,
            name: String::from("?"),
        })
    }

    fn fatal(&self, message: String) -> i32 {
        eprintln!("resurgam worker {}: {message}", self.name);
        let _ = self.to_sup.send(&Report::Fatal { message });
        EXIT_FATAL
    }

    fn serve(&mut self, registry: &Registry) -> i32 {
        // One-time set-up that a restore would otherwise pay, done while waiting.
        checkpoint::warm_up();
        let init = match self.inbox.recv() {
            Ok(ToWorker::Init(init)) => *init,
            Ok(ToWorker::InitShm(shm)) => match decode_init(&shm) {
                Ok(init) => init,
                Err(e) => return self.fatal(format!("undecodable Init: {e}")),
            },
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
            Err(Stop::Crashed(reason)) => return self.crashed(reason),
            Err(Stop::Failed(message)) => return self.fatal(message),
            Err(Stop::Gone(message)) => self.gone(&message),
        };
        let result = self.serve_calls(&mut live);
        match result {
            Ok(()) => {
                if let Engine::Exec(program) = live.engine {
                    program.stop();
                }
                0
            }
            Err(Stop::Crashed(reason)) => {
                drop(live);
                self.crashed(reason)
            }
            Err(Stop::Failed(e)) => {
                eprintln!("resurgam worker {}: {e}", self.name);
                EXIT_BAD_BOOTSTRAP
            }
            Err(Stop::Gone(e)) => self.gone(&e),
        }
    }

    /// The supervisor cannot be reached: nothing left to serve, and nothing may be left
    /// behind (see [`die_with_group`]).
    fn gone(&self, why: &str) -> ! {
        // Not eprintln!: stderr is a pipe to the supervisor, which may be closed (a
        // failed write would panic and end this worker without its group).
        let _ = writeln!(
            std::io::stderr(),
            "resurgam worker {}: supervisor gone: {why}",
            self.name
        );
        die_with_group()
    }

    /// Serves the supervisor's messages until it says stop (`Ok`) or something ends it.
    fn serve_calls(&self, live: &mut Live) -> Result<(), Stop> {
        // Calls that waited for this worker come right after its `Ready`.
        let mut back_to_back = live.calls_waiting;
        loop {
            let spin = Duration::from_micros(live.spin_micros);
            let idle_since = Instant::now();
            let msg = if back_to_back {
                self.next_message_spinning(spin, live)?
            } else {
                self.next_message(live)?
            };
            // The supervisor's end of our channel closed.
            let Some(msg) = msg else {
                return Err(Stop::Gone("its channel closed".to_string()));
            };
            // A client calling back to back is answered fastest by a worker that is
            // awake when the next call comes (a wake-up from sleep costs 10–50 µs on a
            // VM); one whose calls come further apart never spins.
            back_to_back = !spin.is_zero() && idle_since.elapsed() <= spin;
            match msg {
                ToWorker::Calls(calls) => self.apply(live, calls)?,
                ToWorker::CallsShm(shm) => match decode_calls(&shm) {
                    Ok(calls) => self.apply(live, calls)?,
                    Err(e) => return Err(Stop::Failed(format!("undecodable call batch: {e}"))),
                },
                ToWorker::Checkpoint => self.checkpoint(live)?,
                ToWorker::Stop => return self.finish_verification(live),
                ToWorker::Configure {
                    checkpoint_every,
                    max_reply_bytes,
                } => {
                    live.every = checkpoint_every;
                    live.max_reply_bytes = reply_limit(max_reply_bytes);
                }
                ToWorker::Spin { micros } => live.spin_micros = micros,
                ToWorker::Ping => self
                    .to_sup
                    .send(&Report::Pong)
                    .map_err(|e| Stop::Gone(format!("send pong: {e}")))?,
                ToWorker::Init(_) | ToWorker::InitShm(_) => {
                    return Err(Stop::Failed("second Init".to_string()));
                }
            }
        }
    }

    /// The next message, waited for awake for up to `spin` (yielding the CPU to any
    /// other runnable process between tries), then as [`next_message`](Self::next_message).
    /// `None` once the supervisor is gone.
    fn next_message_spinning(
        &self,
        spin: Duration,
        live: &mut Live,
    ) -> Result<Option<ToWorker>, Stop> {
        let start = Instant::now();
        while start.elapsed() < spin {
            match self.inbox.try_recv() {
                Ok(m) => return Ok(Some(m)),
                Err(ipc_channel::TryRecvError::Empty) => std::thread::yield_now(),
                Err(_) => return Ok(None),
            }
        }
        self.next_message(live)
    }

    /// The next message, waited for asleep; meanwhile, once idle, the verification of the
    /// older checkpoint candidates if some wait for it. `None` once the supervisor is gone.
    fn next_message(&self, live: &mut Live) -> Result<Option<ToWorker>, Stop> {
        if live.mmap.verification_pending() {
            self.verify_while_idle(live)
        } else {
            Ok(self.inbox.recv().ok())
        }
    }

    /// Reports a crashed exec program and exits as crashed.
    fn crashed(&self, reason: String) -> i32 {
        eprintln!("resurgam worker {}: {reason}", self.name);
        let _ = self.to_sup.send(&Report::Crashed { reason });
        EXIT_PROGRAM_FAILED
    }

    fn restore(&self, registry: &Registry, init: &Init) -> Result<Live, Stop> {
        let fatal = Stop::Failed;
        if init.exec.is_some() || init.privileges.identity.is_some() {
            crate::holder::release();
        }
        let kind = match &init.exec {
            Some(_) => None,
            None => Some(
                registry
                    .get(&init.kind)
                    .ok_or_else(|| fatal(format!("unknown actor kind {:?}", init.kind)))?,
            ),
        };
        let mmap_path = PathBuf::from(OsStr::from_bytes(&init.mmap_path));
        let disk_path = PathBuf::from(OsStr::from_bytes(&init.disk_path));
        // Newest candidate first; the older ones are verified once ready (see
        // `verify_while_idle`). Opened before any privilege is dropped (the file is the
        // supervisor's).
        let owner =
            (init.state_dir_id != [0; 16]).then(|| OwnerTag::new(&init.actor, init.state_dir_id));
        let restore = MmapCheckpoint::restore_owned(&mmap_path, &disk_path, owner.as_ref())
            .map_err(|e| fatal(format!("open checkpoint file {}: {e}", mmap_path.display())))?;
        // The word may still name the call an earlier worker died in.
        restore.writer.set_executing(0);
        let cannot_load = |e: String| match restore.chosen {
            Some((source, generation, _)) => format!(
                "checkpoint generation {generation} from {source} verified but cannot be loaded: {e}"
            ),
            None => format!("the fresh state cannot be loaded: {e}"),
        };
        // The state is loaded straight from where it was verified (for the mmap file, its
        // mapping): no copy of it is made here.
        let sections = restore
            .sections()
            .map_err(|e| fatal(cannot_load(e.to_string())))?;
        let last_seq = restore.chosen.map_or(0, |(_, _, last_seq)| last_seq);
        let keys = KeyTable::decode(sections.keys, last_seq)
            .map_err(|e| fatal(cannot_load(e.to_string())))?;
        let (engine, program_pid) = match (kind, &init.exec) {
            (Some(kind), _) => {
                let actor = match restore.chosen {
                    Some(_) => kind
                        .restore(sections.state)
                        .map_err(|e| fatal(cannot_load(e)))?,
                    None => kind.fresh(),
                };
                // The actor's code runs in this process: limits and identity apply here.
                Prepared::new(&init.privileges).apply().map_err(|e| {
                    fatal(format!(
                        "cannot apply user, group or limits {:?}: {e}",
                        init.privileges
                    ))
                })?;
                if init.privileges.identity.is_some() {
                    // A change of identity clears the parent-death signal: set it again.
                    rearm_parent_death()?;
                }
                (Engine::Native(actor, kind), None)
            }
            (None, Some(spec)) => {
                let mut program = Program::start(&init.actor, spec, &init.privileges, &self.to_sup)
                    .map_err(|e| match e {
                        exec::StartError::Fatal(m) => Stop::Failed(m),
                        exec::StartError::Crashed(m) => Stop::Crashed(m),
                    })?;
                if restore.chosen.is_some() {
                    match program.load(sections.state) {
                        Ok(()) => {}
                        Err(exec::Failure::Crashed(m)) => return Err(Stop::Crashed(m)),
                        Err(exec::Failure::Refused { message, .. }) => {
                            return Err(fatal(cannot_load(message)));
                        }
                    }
                }
                let pid = program.pid();
                (Engine::Exec(program), Some(pid))
            }
            (None, None) => return Err(fatal(format!("unknown actor kind {:?}", init.kind))),
        };
        let (generation, last_seq, source) = match restore.chosen {
            Some((source, generation, last_seq)) => {
                (generation, last_seq, Some(source.to_string()))
            }
            None => (0, 0, None),
        };
        let mmap = restore.writer;
        self.to_sup
            .send(&Report::Ready(Restored {
                generation,
                last_seq,
                source,
                rejected: restore.rejected.iter().map(ToString::to_string).collect(),
                moved_aside: restore.moved_aside.map(|p| p.display().to_string()),
                mmap_slots: mmap_slots(&mmap),
                program_pid,
            }))
            .map_err(|e| fatal(format!("send ready: {e}")))?;
        Ok(Live {
            engine,
            actor: init.actor.clone(),
            kind: init.kind.clone(),
            previous: mmap.older().map(|(_, seq)| seq),
            mmap,
            generation,
            last_seq,
            since_checkpoint: 0,
            every: init.checkpoint_every,
            spin_micros: init.spin_micros,
            calls_waiting: init.calls_waiting,
            max_reply_bytes: reply_limit(init.max_reply_bytes),
            keys,
        })
    }

    /// Waits for the next message while verifying the checkpoint candidates older than
    /// the restored one, a step at a time, once nothing came for [`VERIFY_WHEN_IDLE_FOR`]
    /// (the replay and the calls after a restore come first; a checkpoint or a stop
    /// finishes the verification anyway). Reports the outcome once done. `None` once the
    /// supervisor is gone.
    fn verify_while_idle(&self, live: &mut Live) -> Result<Option<ToWorker>, Stop> {
        match self.inbox.try_recv_timeout(VERIFY_WHEN_IDLE_FOR) {
            Ok(m) => return Ok(Some(m)),
            Err(ipc_channel::TryRecvError::Empty) => {}
            Err(_) => return Ok(None),
        }
        loop {
            match self.inbox.try_recv() {
                Ok(m) => return Ok(Some(m)),
                Err(ipc_channel::TryRecvError::Empty) => {}
                Err(_) => return Ok(None),
            }
            if !live.mmap.verify_step() {
                self.report_verified(live)?;
                return Ok(self.inbox.recv().ok());
            }
        }
    }

    /// Finishes the verification of the older checkpoint candidates (before a slot is
    /// overwritten, or before exiting) and reports what it found, if not done yet.
    fn finish_verification(&self, live: &mut Live) -> Result<(), Stop> {
        live.mmap.verify_all();
        self.report_verified(live)
    }

    /// Sends the outcome of the older candidates' verification, once.
    fn report_verified(&self, live: &mut Live) -> Result<(), Stop> {
        let Some(verified) = live.mmap.take_verified() else {
            return Ok(());
        };
        live.previous = live.mmap.older().map(|(_, seq)| seq);
        self.to_sup
            .send(&Report::Verified {
                rejected: verified.rejected.iter().map(ToString::to_string).collect(),
                mmap_slots: mmap_slots(&live.mmap),
            })
            .map_err(|e| Stop::Gone(format!("send verification report: {e}")))
    }

    fn apply(&self, live: &mut Live, calls: Vec<Call>) -> Result<(), Stop> {
        // Never apply a call twice; the supervisor only replays seq > last_seq.
        let (stale, fresh): (Vec<Call>, Vec<Call>) =
            calls.into_iter().partition(|c| c.seq <= live.last_seq);
        let mut out = ReplyStream::new(&self.to_sup, live.max_reply_bytes, PROGRESS_INTERVAL);
        for call in stale {
            out.push(Reply {
                outcome: Outcome::Err {
                    kind: ErrorKind::CallFailed,
                    message: format!(
                        "call seq {} was already applied (last_seq {})",
                        call.seq, live.last_seq
                    ),
                },
                seq: call.seq,
            })?;
        }
        // Exports, imports and calls answered from the idempotency keys take their place
        // in the call order: the calls before one run first, then it, then the calls
        // after it (so a retry of a call in the same batch is answered once that call
        // has run). Each reply goes out as its call completes (in parts, see
        // `ReplyStream`), so the supervisor sees progress however long the batch.
        let mut imported = false;
        let mut rest = &fresh[..];
        while !rest.is_empty() {
            let (run, after) = rest.split_at(plain_run(&live.keys, rest));
            if !run.is_empty() {
                apply_plain(live, run, &mut out)?;
            }
            rest = after;
            let Some((call, after)) = rest.split_first() else {
                break;
            };
            rest = after;
            if call.method != EXPORT_METHOD && call.method != IMPORT_METHOD {
                match live.keys.answer(call) {
                    // As remembered: bounded by the limit the first call ran under, not
                    // by one a reload set since (the retry must get the first reply).
                    Some(outcome) => out.push_bounded(
                        Reply {
                            seq: call.seq,
                            outcome,
                        },
                        MAX_REPLY_BYTES,
                    )?,
                    // Forgotten within this batch (the limits): it runs.
                    None => apply_plain(live, std::slice::from_ref(call), &mut out)?,
                }
                continue;
            }
            live.mmap.set_executing(call.seq);
            imported |= call.method == IMPORT_METHOD;
            let outcome = state_op(live, call)?;
            // An export is the actor's whole state: the actor's reply limit (sized for
            // its methods' results) does not apply, the frame limit does.
            out.push_bounded(
                Reply {
                    seq: call.seq,
                    outcome,
                },
                MAX_REPLY_BYTES,
            )?;
        }
        live.mmap.set_executing(0);
        if let Some(last) = fresh.last() {
            live.last_seq = last.seq;
            live.since_checkpoint += fresh.len() as u64;
        }
        out.finish()?;
        // Replies go out before the checkpoint that covers them is written, so a call
        // whose effect a checkpoint holds has always had its reply sent.
        // An imported state is checkpointed at once, so the log entry carrying it (and
        // its replay after a crash) does not outlive the import.
        if imported || (live.every > 0 && live.since_checkpoint >= live.every) {
            self.checkpoint(live)?;
        }
        Ok(())
    }

    fn checkpoint(&self, live: &mut Live) -> Result<(), Stop> {
        // What the older candidates hold is reported before one of them is overwritten.
        self.finish_verification(live)?;
        let msg = match write_checkpoint(live) {
            Ok(m) => m,
            Err(Stop::Failed(message)) => {
                eprintln!(
                    "resurgam worker {}: checkpoint failed: {message}",
                    self.name
                );
                Report::CheckpointFailed { message }
            }
            Err(crashed) => return Err(crashed),
        };
        self.to_sup
            .send(&msg)
            .map_err(|e| Stop::Gone(format!("send checkpoint report: {e}")))
    }
}

/// Sets the parent-death signal again (after a change of identity cleared it) and
/// checks the supervisor did not die in between.
fn rearm_parent_death() -> Result<(), Stop> {
    arm_parent_death().map_err(|e| Stop::Failed(e.to_string()))
}

/// Sets the parent-death signal. It is set after the supervisor's fork (or after a
/// change of identity cleared it), so the supervisor may already be gone: compare with
/// the pid it told us.
fn arm_parent_death() -> Result<(), ParentDeathError> {
    nix::sys::prctl::set_pdeathsig(PARENT_DEATH_SIGNAL).map_err(ParentDeathError::Prctl)?;
    match SUPERVISOR_PID.load(std::sync::atomic::Ordering::Relaxed) {
        0 => Ok(()),
        pid if nix::unistd::getppid().as_raw() as u32 != pid => {
            Err(ParentDeathError::SupervisorGone { pid })
        }
        _ => Ok(()),
    }
}

/// The supervisor's pid, as it told us (0: unknown), for [`arm_parent_death`].
static SUPERVISOR_PID: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// The signal the kernel sends a worker when the supervisor dies (`PR_SET_PDEATHSIG`).
/// Its handler kills the worker's whole process group.
const PARENT_DEATH_SIGNAL: nix::sys::signal::Signal = nix::sys::signal::Signal::SIGUSR2;

extern "C" fn kill_group(_: libc::c_int) {
    // SAFETY: kill is async-signal-safe; pid 0 is this process's group (the worker is
    // its leader: the supervisor starts it in a group of its own).
    unsafe {
        libc::kill(0, libc::SIGKILL);
    }
}

/// Ends this worker with every process of its group, as [`PARENT_DEATH_SIGNAL`] does:
/// for a worker that finds the supervisor gone (a socket's end closed) before that
/// signal came. A dying supervisor's descriptors are closed before the kernel
/// re-parents its children and sends them their parent-death signal, so under load
/// the closed socket is often seen first; a worker that merely exited then would leave
/// its group (an exec actor's program, whatever actor code started) alive.
fn die_with_group() -> ! {
    kill_group(PARENT_DEATH_SIGNAL as libc::c_int);
    // The SIGKILL to our own group ends this process before kill(2) returns; should it
    // not, exit all the same.
    std::process::exit(EXIT_BAD_BOOTSTRAP)
}

/// Makes [`PARENT_DEATH_SIGNAL`] kill this worker's process group.
fn install_group_killer() {
    let handler: extern "C" fn(libc::c_int) = kill_group;
    // SAFETY: the handler only calls kill(2), which is async-signal-safe; installing it
    // happens before this process starts any thread or child.
    unsafe {
        libc::signal(
            PARENT_DEATH_SIGNAL as libc::c_int,
            handler as libc::sighandler_t,
        );
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

/// How many of `calls` (from the first) run as one plain run: up to the first export
/// or import, or the first call whose key is remembered or repeats a key of the run
/// (answered from the keys once the calls before it have run).
fn plain_run(keys: &KeyTable, calls: &[Call]) -> usize {
    // A set: a batch may hold thousands of keyed calls.
    let mut run_keys: HashSet<&str> = HashSet::new();
    calls
        .iter()
        .position(|c| {
            if c.method == EXPORT_METHOD || c.method == IMPORT_METHOD {
                return true;
            }
            c.key
                .as_ref()
                .is_some_and(|k| keys.knows(c) || !run_keys.insert(&k.key))
        })
        .unwrap_or(calls.len())
}

/// Applies a run of ordinary calls, each reply pushed to `out` as its call completes
/// (and remembered with its key, if it has one).
fn apply_plain(live: &mut Live, calls: &[Call], out: &mut ReplyStream<'_>) -> Result<(), Stop> {
    let keys = &mut live.keys;
    let max_reply_bytes = live.max_reply_bytes;
    let keyed = calls.iter().any(|c| c.key.is_some());
    let mut answer = |seq: u64, outcome: Outcome| {
        if !keyed {
            return out.push(Reply { seq, outcome });
        }
        // The reply as the client gets it is the one remembered.
        let outcome = bounded(outcome, max_reply_bytes);
        if let Ok(i) = calls.binary_search_by_key(&seq, |c| c.seq) {
            keys.remember(&calls[i], &outcome);
        }
        out.push(Reply { seq, outcome })
    };
    match &mut live.engine {
        Engine::Native(actor, _) => {
            for call in calls {
                live.mmap.set_executing(call.seq);
                answer(call.seq, apply_one(actor.as_mut(), call))?;
            }
            Ok(())
        }
        Engine::Exec(program) => {
            let mmap = &live.mmap;
            let mut unsent = None;
            let ran = program.calls(
                calls,
                &|seq| mmap.set_executing(seq),
                &mut |seq, outcome| {
                    answer(seq, outcome).map_err(|stop| {
                        unsent = Some(stop);
                        exec::Failure::Crashed("the supervisor cannot be reached".to_string())
                    })
                },
            );
            if let Some(stop) = unsent {
                return Err(stop);
            }
            ran.map_err(|f| match f {
                exec::Failure::Crashed(m) | exec::Failure::Refused { message: m, .. } => {
                    Stop::Crashed(m)
                }
            })
        }
    }
}

/// Applies an export (the state as an export file; the state is left as it is) or an
/// import (the call's args become the state). A state the actor refuses is an error
/// reply (a native kind keeps its state then; a program decides for itself).
fn state_op(live: &mut Live, call: &Call) -> Result<Outcome, Stop> {
    let refused = |message: String| Outcome::Err {
        kind: ErrorKind::ActorError,
        message,
    };
    if call.method == IMPORT_METHOD {
        let loaded = match &mut live.engine {
            Engine::Native(actor, kind) => kind.restore(&call.args).map(|a| *actor = a),
            Engine::Exec(program) => match program.load(&call.args) {
                Ok(()) => Ok(()),
                Err(exec::Failure::Crashed(m)) => return Err(Stop::Crashed(m)),
                Err(exec::Failure::Refused { message, .. }) => Err(message),
            },
        };
        return Ok(match loaded {
            Ok(()) => Outcome::Ok(
                serde_json::json!({
                    "imported": live.actor,
                    "seq": call.seq,
                    "bytes": call.args.len(),
                })
                .to_string()
                .into_bytes(),
            ),
            Err(e) => refused(format!("import: the actor cannot load this state: {e}")),
        });
    }
    let saved = match &mut live.engine {
        Engine::Native(actor, _) => actor.save(),
        Engine::Exec(program) => match program.save() {
            Ok(state) => Ok(state),
            Err(exec::Failure::Crashed(m)) => return Err(Stop::Crashed(m)),
            Err(exec::Failure::Refused { message, .. }) => Err(message),
        },
    };
    let state = match saved {
        Ok(state) => state,
        Err(e) => return Ok(refused(format!("export: the actor's save failed: {e}"))),
    };
    let header = export::Header {
        actor: live.actor.clone(),
        kind: live.kind.clone(),
        generation: live.generation,
        // Every call accepted before this export is reflected, none after it.
        last_seq: call.seq.saturating_sub(1),
        bytes: state.len() as u64,
    };
    let file = export::encode(&header, &state);
    drop(state);
    let mut reply = serde_json::to_value(&header).unwrap_or_default();
    reply["file"] = Value::String(export::base64_encode(&file));
    Ok(Outcome::Ok(reply.to_string().into_bytes()))
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

fn write_checkpoint(live: &mut Live) -> Result<Report, Stop> {
    let start = Instant::now();
    if live.since_checkpoint == 0 && live.generation > 0 {
        // Nothing changed since the last checkpoint: report it again.
        return Ok(Report::Checkpointed {
            generation: live.generation,
            last_seq: live.last_seq,
            previous: live.previous,
            bytes: 0,
            micros: 0,
        });
    }
    let payload = match &mut live.engine {
        Engine::Native(actor, _) => actor.save().map_err(Stop::Failed)?,
        Engine::Exec(program) => program.save().map_err(|f| match f {
            exec::Failure::Crashed(m) => Stop::Crashed(m),
            exec::Failure::Refused { message, .. } => {
                Stop::Failed(format!("the program's get_state failed: {message}"))
            }
        })?,
    };
    let keys = live.keys.section();
    let generation = live.generation + 1;
    live.mmap
        .write_sectioned(generation, live.last_seq, keys, &payload)
        .map_err(|e| Stop::Failed(format!("write {}: {e}", display(live.mmap.path()))))?;
    live.previous = live.mmap.older().map(|(_, seq)| seq);
    live.generation = generation;
    live.since_checkpoint = 0;
    Ok(Report::Checkpointed {
        generation,
        last_seq: live.last_seq,
        previous: live.previous,
        bytes: (payload.len() + keys.len()) as u64,
        micros: start.elapsed().as_micros() as u64,
    })
}

/// The actor's reply limit as the worker applies it: never above what a worker can send.
fn reply_limit(max_reply_bytes: u64) -> usize {
    usize::try_from(max_reply_bytes).map_or(MAX_REPLY_BYTES, |n| n.min(MAX_REPLY_BYTES))
}

/// The outcome itself, or an error saying it was larger than the actor's `max_reply_bytes`
/// (the call ran: it is not retried, and the actor lives on); an error message of any
/// actor kind is cut to a readable size.
fn bounded(outcome: Outcome, max_reply_bytes: usize) -> Outcome {
    match outcome {
        Outcome::Err { kind, message } => Outcome::Err {
            kind,
            message: exec::cap_message(message),
        },
        Outcome::Ok(v) if v.len() > max_reply_bytes => Outcome::Err {
            kind: ErrorKind::ActorError,
            message: format!(
                "the call ran, but its result ({} bytes) is larger than the actor's \
                 max_reply_bytes ({max_reply_bytes} bytes); it was not sent",
                v.len()
            ),
        },
        other => other,
    }
}

/// Largest batch of replies sent in one report frame (a single larger reply goes alone),
/// so the supervisor never has to hold a frame much larger than one reply.
const FRAME_REPLY_BYTES: usize = 16 << 20;

/// The replies of one batch of calls, sent as the calls complete: a part
/// ([`Report::MoreReplies`]) whenever it reaches [`FRAME_REPLY_BYTES`] or
/// [`PROGRESS_INTERVAL`] has passed since the last one, and the rest as
/// [`Report::Replies`] at the end. Hang detection in the supervisor measures this
/// progress, so only a single call that runs for the whole `heartbeat_timeout` looks
/// hung, never a long batch of quick ones.
struct ReplyStream<'a> {
    to_sup: &'a Reporter,
    max_reply_bytes: usize,
    /// [`PROGRESS_INTERVAL`] (tests choose their own).
    interval: Duration,
    part: Vec<Reply>,
    size: usize,
    last_sent: Instant,
}

impl<'a> ReplyStream<'a> {
    fn new(to_sup: &'a Reporter, max_reply_bytes: usize, interval: Duration) -> ReplyStream<'a> {
        ReplyStream {
            to_sup,
            max_reply_bytes,
            interval,
            part: Vec::new(),
            size: 0,
            last_sent: Instant::now(),
        }
    }

    fn push(&mut self, reply: Reply) -> Result<(), Stop> {
        self.push_bounded(reply, self.max_reply_bytes)
    }

    /// Like [`push`](Self::push), with a reply limit of the caller's.
    fn push_bounded(&mut self, reply: Reply, max_reply_bytes: usize) -> Result<(), Stop> {
        let reply = Reply {
            seq: reply.seq,
            outcome: bounded(reply.outcome, max_reply_bytes),
        };
        let n = resurgam_shared::ipc::replies_size(std::slice::from_ref(&reply));
        if self.size + n > FRAME_REPLY_BYTES && !self.part.is_empty() {
            self.send_part()?;
        }
        self.size += n;
        self.part.push(reply);
        if self.last_sent.elapsed() >= self.interval {
            self.send_part()?;
        }
        Ok(())
    }

    fn send_part(&mut self) -> Result<(), Stop> {
        let part = std::mem::take(&mut self.part);
        self.size = 0;
        self.last_sent = Instant::now();
        self.to_sup
            .send(&Report::MoreReplies(part))
            .map_err(|e| Stop::Gone(format!("send replies: {e}")))
    }

    /// Sends the last part (possibly empty): the batch is answered.
    fn finish(self) -> Result<(), Stop> {
        self.to_sup
            .send(&Report::Replies(self.part))
            .map_err(|e| Stop::Gone(format!("send replies: {e}")))
    }
}

/// `(generation, last_seq)` of every slot record the writer counts as usable.
fn mmap_slots(mmap: &MmapCheckpoint) -> Vec<(u64, u64)> {
    mmap.slot_contents().into_iter().flatten().collect()
}

fn display(p: &Path) -> String {
    p.display().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(seq: u64, len: usize) -> Reply {
        Reply {
            seq,
            outcome: Outcome::Ok(vec![b'1'; len]),
        }
    }

    /// Streams `replies` through a `ReplyStream` and returns the reports the supervisor
    /// reads. With `progress_due`, every call takes the whole progress interval.
    fn streamed(replies: Vec<Reply>, progress_due: bool) -> Vec<Report> {
        let (ours, theirs) = std::os::unix::net::UnixStream::pair().unwrap();
        let reader = std::thread::spawn(move || {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut &theirs, &mut bytes).unwrap();
            let mut d = resurgam_shared::ipc::ReportDecoder::default();
            d.push(&bytes);
            std::iter::from_fn(|| d.next_report().unwrap()).collect::<Vec<_>>()
        });
        let reporter = Reporter::over(ours);
        let interval = if progress_due {
            Duration::ZERO
        } else {
            Duration::MAX
        };
        let mut out = ReplyStream::new(&reporter, MAX_REPLY_BYTES, interval);
        for r in replies {
            assert!(out.push(r).is_ok());
        }
        assert!(out.finish().is_ok());
        drop(reporter);
        reader.join().unwrap()
    }

    fn parts(reports: &[Report]) -> Vec<Vec<Reply>> {
        let (last, more) = reports.split_last().expect("a report");
        assert!(
            matches!(last, Report::Replies(_)),
            "the last part ends the batch"
        );
        reports
            .iter()
            .map(|r| match r {
                Report::MoreReplies(p) if !std::ptr::eq(r, last) => p.clone(),
                Report::Replies(p) if std::ptr::eq(r, last) => p.clone(),
                other => panic!("unexpected {other:?} (of {} before the last)", more.len()),
            })
            .collect()
    }

    #[test]
    fn large_reply_batches_go_in_frames_in_order() {
        let third = FRAME_REPLY_BYTES / 3;
        let batch: Vec<Reply> = (1..=7).map(|s| reply(s, third)).collect();
        let frames = parts(&streamed(batch.clone(), false));
        assert!(frames.len() >= 3, "{} frames", frames.len());
        for f in &frames {
            assert!(!f.is_empty());
            assert!(resurgam_shared::ipc::replies_size(f) <= FRAME_REPLY_BYTES);
        }
        assert_eq!(frames.concat(), batch, "every reply once, in order");
        // A single reply larger than a frame goes alone; an empty batch is one frame.
        let huge = vec![reply(1, 10), reply(2, FRAME_REPLY_BYTES * 2), reply(3, 10)];
        assert_eq!(parts(&streamed(huge, false)).len(), 3);
        assert_eq!(
            parts(&streamed(Vec::new(), false)),
            vec![Vec::<Reply>::new()]
        );
    }

    #[test]
    fn a_long_batch_reports_progress_as_its_calls_complete() {
        let batch: Vec<Reply> = (1..=4).map(|s| reply(s, 10)).collect();
        // Quick calls: one report at the end.
        assert_eq!(parts(&streamed(batch.clone(), false)).len(), 1);
        // Calls that each take the progress interval: each is reported when it completes.
        let frames = parts(&streamed(batch.clone(), true));
        assert_eq!(frames.concat(), batch);
        assert!(
            frames[..4].iter().all(|f| f.len() == 1),
            "one part per completed call: {frames:?}"
        );
    }

    #[test]
    fn an_error_message_of_any_kind_is_cut_to_a_readable_size() {
        let long = "é".repeat(exec::MAX_ERROR_MESSAGE);
        let Outcome::Err { kind, message } = bounded(
            Outcome::Err {
                kind: ErrorKind::ActorError,
                message: long.clone(),
            },
            MAX_REPLY_BYTES,
        ) else {
            panic!("still an error");
        };
        assert_eq!(kind, ErrorKind::ActorError);
        assert!(
            message.len() < exec::MAX_ERROR_MESSAGE + 64,
            "{}",
            message.len()
        );
        assert!(long.starts_with(message.split(" … (").next().unwrap_or("")));
        assert!(message.ends_with("more bytes)"), "{message}");
    }

    #[test]
    fn a_plain_run_ends_at_a_repeated_or_remembered_key_and_at_a_state_op() {
        let call = |seq: u64, method: &str, key: Option<&str>| Call {
            seq,
            method: method.into(),
            args: Vec::new(),
            key: key.map(|k| resurgam_shared::ipc::CallKey {
                key: k.into(),
                keep_calls: 100,
                keep_bytes: 1 << 20,
            }),
        };
        let mut keys = KeyTable::default();
        let batch = [
            call(1, "incr", Some("a")),
            call(2, "incr", None),
            call(3, "incr", Some("b")),
            call(4, "incr", Some("a")),
        ];
        assert_eq!(plain_run(&keys, &batch), 3, "a key repeated in the run");
        assert_eq!(plain_run(&keys, &batch[..3]), 3, "nothing ends it");
        keys.remember(&batch[2], &Outcome::Ok(b"1".to_vec()));
        assert_eq!(plain_run(&keys, &batch), 2, "a remembered key");
        let state_op = [call(5, "incr", None), call(6, EXPORT_METHOD, None)];
        assert_eq!(plain_run(&keys, &state_op), 1);
        assert_eq!(plain_run(&keys, &[]), 0);
    }

    #[test]
    fn a_result_larger_than_max_reply_bytes_becomes_an_error_reply() {
        let ok = Outcome::Ok(vec![b'1'; 10]);
        assert_eq!(bounded(ok.clone(), 10), ok);
        match bounded(Outcome::Ok(vec![b'1'; 11]), 10) {
            Outcome::Err { kind, message } => {
                assert_eq!(kind, ErrorKind::ActorError);
                assert!(message.contains("the call ran"), "{message}");
                assert!(message.contains("max_reply_bytes (10 bytes)"), "{message}");
            }
            other => panic!(
                "expected an error, got {} bytes",
                match other {
                    Outcome::Ok(v) => v.len(),
                    Outcome::Err { .. } => 0,
                }
            ),
        }
    }
}
