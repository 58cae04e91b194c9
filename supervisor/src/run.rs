//! `resurgam run`: the event loop around the core.
//!
//! One thread owns the core and polls (epoll, through mio) the control socket, every
//! control connection, every worker's report socket and a waker; the few helper threads
//! (signals and reaping, spawners, disk copy, log fsync, worker output) hand it events
//! through the waker's channel. A call crosses three processes (client, supervisor,
//! worker) and no thread hand-off inside the supervisor.
//!
//! Order matters: signals are registered before any thread exists; the state directory
//! is locked before anything is touched; the control socket is bound last, once every
//! worker has been asked to start.

use std::collections::{HashMap, VecDeque};
use std::path::Path;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use ipc_channel::ipc::IpcSender;
use mio::{Events, Interest, Poll, Waker};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};

use resurgam_shared::config::{ActorConfig, Config, Environment, LOCK_FILE};
use resurgam_shared::ipc::{Init, Report, ToWorker, calls_message, init_message};
use resurgam_shared::protocol::{ErrorBody, ErrorKind, Op};
use resurgam_shared::{checkpoint, safefs};

use resurgam_shared::config::Durability;

use crate::calllog::{self, ActorLog, LogJob, Marked, RealSink};
use crate::control::{self, Access, SocketFile};
use crate::core::{Action, ActorId, ActorSpec, ConnId, Core, Event, FileSizes};
use crate::disk::{self, Files};
use crate::error::{RunError, SocketError};
use crate::exit::WorkerExit;
use crate::launch::{self, EXEC_KIND, Launched};
use crate::manifest::Manifest;
use crate::notify::Notifier;
use crate::shell::conns::Conns;
use crate::shell::events::{self as event_stream, EventLog};
use crate::shell::forkserver::ForkServer;
use crate::shell::http::MetricsHttp;
use crate::shell::observe::{self, ShellStats};
use crate::shell::output::OutputRelay;
use crate::shell::reports::{self, ReadEnd, ReportStream};
use crate::shell::standby::{self, Standby, StandbyPool};
use crate::shell::sweep;
use crate::shell::{LoopTx, ShellEvent, token};
use crate::spawn::{self, SpawnJob};
use crate::{paths, reap};
use resurgam_worker::Registry;

/// How long an exit reaped before its worker's spawn was reported is remembered.
const EARLY_EXIT_MEMORY: std::time::Duration = std::time::Duration::from_secs(5);

/// The shell's view of one actor's current worker.
#[derive(Default)]
struct WorkerSlot {
    epoch: u64,
    pid: Option<u32>,
    server_name: Option<String>,
    outbox: Option<IpcSender<ToWorker>>,
    /// Our end of the worker's report socket, once it said hello.
    reports: Option<ReportStream>,
    /// The core was told this worker's channel is closed.
    closed: bool,
    reaped: bool,
    /// A pidfd of the worker, polled by the loop: its exit is seen without a signal
    /// thread in between.
    pidfd: Option<std::os::fd::OwnedFd>,
    /// Calls were sent and no replies came back since then.
    sent_at: Option<Instant>,
    /// Moving average of how long the worker takes to answer a batch of calls.
    answer_time: Duration,
    /// Batches sent since the loop last waited awake for this worker's answer.
    batches_since_spin: u32,
    /// In `Shell::worker_reads`.
    read_queued: bool,
    /// The core asked for a kill before the pid was known.
    kill_pending: bool,
}

/// Kills every worker still running when the loop ends, however it ends (G9; workers
/// also have PR_SET_PDEATHSIG for when the supervisor itself is killed).
struct KillOnDrop(Vec<WorkerSlot>);

impl KillOnDrop {
    fn kill_all(&mut self) {
        for w in &mut self.0 {
            if let (Some(pid), false) = (w.pid, w.reaped) {
                spawn::kill_group(pid);
                // Not to be killed again: once reaped, its pid may be another's.
                w.reaped = true;
            }
        }
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        self.kill_all();
    }
}

/// Runs the supervisor until it stops and returns the process exit code. `forks` is the
/// fork server, started before any thread (see [`ForkServer::start`]). Set-up goes in
/// this order: signals (before any thread), the directories and their locks, every
/// actor's files and log, the loop and its helper threads, the control socket last.
pub fn run(config: Config, registry: &Registry, forks: ForkServer) -> Result<i32, RunError> {
    let forks = Arc::new(forks);
    let (signals, children) =
        reap::register().map_err(RunError::setup("register signal handlers"))?;
    raise_fd_limit();
    let _locks = claim_dirs(&config.supervisor)?;
    let manifest = Arc::new(Mutex::new(Manifest::open(&config.supervisor.state_dir)?));
    spawn::bootstrap_on_tmpfs(&config.supervisor.runtime_dir);
    report_orphan_logs(&config);
    let actors = prepare_actors(&config, registry, &manifest)?;
    let helpers = Helpers::start(signals, &children, &forks, &manifest)?;
    let (conns, _socket_file) = serve_control(&config, &helpers.poll_registry)?;
    let http = metrics_http(&config, &helpers.poll_registry)?;
    log_start(&config, &manifest);

    let mut core = Core::new(&config, actors.specs, std::process::id(), Instant::now());
    let (mut poll, events) = (helpers.poll, helpers.events);
    let mut shell = Shell::new(ShellParts {
        config,
        registry: registry.clone(),
        files: actors.files,
        launches: actors.launches,
        logs: actors.logs,
        conns,
        http,
        children,
        output: helpers.output,
        poll_registry: helpers.poll_registry,
        spawn_tx: helpers.spawn_tx,
        disk_tx: helpers.disk_tx,
        fsync_tx: helpers.fsync_tx,
        forks,
        manifest,
        stats: helpers.stats,
    });
    let mut actions = Vec::new();
    // Children that died before the SIGCHLD handler existed (the fork server).
    shell.reap_children(&mut core);
    shell.run_actions(&mut core, &mut actions);
    // After the actors' own spawns: standby workers for the restarts to come.
    shell.standby.fill(&shell.spawn_tx);

    let mut ready = Events::with_capacity(1024);
    while shell.exit_code.is_none() {
        shell.turn(&mut core, &mut poll, &mut ready, &events, &mut actions)?;
    }
    let code = shell.exit_code.unwrap_or(1);
    shell.flush_before_exit(&mut poll, &mut ready);
    // Every worker is gone; so must be whatever the actors left behind (G9).
    shell.workers.kill_all();
    let forks = shell.forks.clone();
    sweep::kill_all_children(|p| forks.is_server(p), Duration::from_secs(2));
    Ok(code)
}

/// The locks `run` holds while it runs: the state directory's, the runtime directory's
/// (two supervisors on one runtime_dir would share the actors' memory-mapped
/// checkpoints) and the control socket's (on one socket, its clients).
struct DirLocks {
    _state: Flock<std::fs::File>,
    _runtime: Option<Flock<std::fs::File>>,
    _socket: Flock<std::fs::File>,
}

/// Creates the state and runtime directories (private), refuses unsafe ones unless
/// `allow_shared_dirs`, and takes the locks.
fn claim_dirs(sup: &resurgam_shared::config::SupervisorConfig) -> Result<DirLocks, RunError> {
    for (what, dir) in [("state", &sup.state_dir), ("runtime", &sup.runtime_dir)] {
        safefs::create_dir_all_private(dir).map_err(|source| RunError::CreateDir {
            what,
            path: dir.clone(),
            source,
        })?;
        match safefs::check_private_dir(dir) {
            Ok(()) => {}
            Err(problem) if sup.allow_shared_dirs => {
                tracing::warn!(%problem, "{what} directory accepted (allow_shared_dirs = true)");
            }
            Err(problem) => return Err(RunError::UnsafeDir { what, problem }),
        }
    }
    let lock_in =
        |what: &str, dir: &Path| lock(format!("{what} {}", dir.display()), &dir.join(LOCK_FILE));
    let state = lock_in("state directory", &sup.state_dir)?;
    let runtime = if sup.runtime_dir == sup.state_dir {
        None
    } else {
        Some(lock_in("runtime directory", &sup.runtime_dir)?)
    };
    let socket = lock(
        format!("control socket {}", sup.socket.display()),
        &control::lock_path(&sup.socket).map_err(RunError::Socket)?,
    )?;
    Ok(DirLocks {
        _state: state,
        _runtime: runtime,
        _socket: socket,
    })
}

/// Every configured actor's spec for the core, files, recovered call log and launch.
struct PreparedActors {
    specs: Vec<ActorSpec>,
    files: Vec<Files>,
    logs: Vec<ActorLog>,
    launches: Vec<Launched>,
}

fn prepare_actors(
    config: &Config,
    registry: &Registry,
    manifest: &Arc<Mutex<Manifest>>,
) -> Result<PreparedActors, RunError> {
    let mut prepared = PreparedActors {
        specs: Vec::new(),
        files: Vec::new(),
        logs: Vec::new(),
        launches: Vec::new(),
    };
    for a in &config.actors {
        let (spec, f, log, launched) = prepare_actor(config, a, registry, manifest)?;
        prepared.specs.push(spec);
        prepared.files.push(f);
        prepared.logs.push(log);
        prepared.launches.push(launched);
    }
    Ok(prepared)
}

/// The event loop's poll and what its helper threads (signals, output relay, spawners,
/// disk copies, log fsyncs) are reached through; the threads wake the loop through the
/// waker behind `events`.
struct Helpers {
    poll: Poll,
    poll_registry: mio::Registry,
    events: crossbeam_channel::Receiver<ShellEvent>,
    spawn_tx: Sender<SpawnJob>,
    disk_tx: Sender<(ActorId, Files)>,
    fsync_tx: Sender<LogJob>,
    output: OutputRelay,
    stats: ShellStats,
}

impl Helpers {
    fn start(
        signals: signal_hook::iterator::Signals,
        children: &reap::ChildSignals,
        forks: &Arc<ForkServer>,
        manifest: &Arc<Mutex<Manifest>>,
    ) -> Result<Helpers, RunError> {
        let poll = Poll::new().map_err(RunError::setup("create the event loop"))?;
        let poll_registry = poll
            .registry()
            .try_clone()
            .map_err(RunError::setup("create the event loop"))?;
        let waker = Waker::new(poll.registry(), token::WAKER)
            .map_err(RunError::setup("create the event loop's waker"))?;
        children
            .socket()
            .and_then(|mut s| {
                poll.registry()
                    .register(&mut s, token::CHILD, Interest::READABLE)
            })
            .map_err(RunError::setup("watch SIGCHLD in the event loop"))?;
        let (events_tx, events) = crossbeam_channel::unbounded::<ShellEvent>();
        let tx = LoopTx::new(events_tx, Arc::new(waker));
        let (spawn_tx, spawn_rx) = crossbeam_channel::unbounded::<SpawnJob>();
        let (disk_tx, disk_rx) = crossbeam_channel::unbounded::<(ActorId, Files)>();
        reap::start(signals, tx.clone()).map_err(RunError::setup("start signal thread"))?;
        let output = OutputRelay::start().map_err(RunError::setup("start the output thread"))?;
        spawn::start_spawners(spawn_rx, tx.clone(), output.clone(), forks.clone())
            .map_err(RunError::setup("start spawner thread"))?;
        disk::start(disk_rx, tx.clone(), manifest.clone())
            .map_err(RunError::setup("start disk thread"))?;
        let stats = ShellStats::new();
        let (fsync_tx, fsync_rx) = crossbeam_channel::unbounded::<LogJob>();
        calllog::start_fsync_thread(fsync_rx, tx, stats.fsync.clone(), manifest.clone())
            .map_err(RunError::setup("start fsync thread"))?;
        Ok(Helpers {
            poll,
            poll_registry,
            events,
            spawn_tx,
            disk_tx,
            fsync_tx,
            output,
            stats,
        })
    }
}

/// Binds the control socket (last: a client that connects finds every actor set up) and
/// the connections' state on the loop. The socket file is removed when the guard drops.
fn serve_control(
    config: &Config,
    poll_registry: &mio::Registry,
) -> Result<(Conns, SocketFile), RunError> {
    let sup = &config.supervisor;
    let listener = control::bind(&sup.socket, sup.socket_mode)?;
    let socket_file = SocketFile(sup.socket.clone());
    listener
        .set_nonblocking(true)
        .map_err(|source| SocketError::Setup {
            path: sup.socket.clone(),
            source,
        })?;
    let conns = Conns::new(
        mio::net::UnixListener::from_std(listener),
        poll_registry
            .try_clone()
            .map_err(RunError::setup("create the event loop"))?,
        Access {
            own_uid: nix::unistd::getuid().as_raw(),
            allowed_uids: sup.allowed_uids.clone(),
            max_request_bytes: sup.max_request_bytes,
            max_queued_reply_bytes: usize::try_from(sup.max_queued_reply_bytes)
                .unwrap_or(usize::MAX),
            max_total_reply_bytes: usize::try_from(sup.max_total_reply_bytes).unwrap_or(usize::MAX),
            // Reloads may add actors: keep room for twice today's.
            max_connections: control::max_connections(2 * config.actors.len() + 16),
        },
    )
    .map_err(RunError::setup("serve the control socket"))?;
    Ok((conns, socket_file))
}

/// The metrics endpoint, when `metrics_listen` is set.
fn metrics_http(
    config: &Config,
    poll_registry: &mio::Registry,
) -> Result<Option<MetricsHttp>, RunError> {
    let Some(addr) = config.supervisor.metrics_listen else {
        return Ok(None);
    };
    let registry = poll_registry
        .try_clone()
        .map_err(RunError::setup("create the event loop"))?;
    let http = MetricsHttp::bind(addr, registry)
        .map_err(|source| RunError::MetricsListen { addr, source })?;
    let at = http.local_addr().unwrap_or(addr);
    tracing::info!(addr = %at, "metrics endpoint listening: GET http://{at}/metrics");
    Ok(Some(http))
}

fn log_start(config: &Config, manifest: &Arc<Mutex<Manifest>>) {
    let sup = &config.supervisor;
    let id = manifest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .id()
        .to_string();
    tracing::info!(
        socket = %std::path::absolute(&sup.socket).unwrap_or_else(|_| sup.socket.clone()).display(),
        state_dir = %sup.state_dir.display(),
        state_dir_id = %id,
        actors = config.actors.len(),
        pid = std::process::id(),
        "resurgam supervisor starting"
    );
}

/// What [`Shell::new`] is built from.
struct ShellParts {
    config: Config,
    registry: Registry,
    files: Vec<Files>,
    launches: Vec<Launched>,
    logs: Vec<ActorLog>,
    conns: Conns,
    http: Option<MetricsHttp>,
    children: reap::ChildSignals,
    output: OutputRelay,
    poll_registry: mio::Registry,
    spawn_tx: Sender<SpawnJob>,
    disk_tx: Sender<(ActorId, Files)>,
    fsync_tx: Sender<LogJob>,
    forks: Arc<ForkServer>,
    manifest: Arc<Mutex<Manifest>>,
    stats: ShellStats,
}

impl Shell {
    fn new(p: ShellParts) -> Shell {
        let notifier = Notifier::from_env();
        let next_watchdog = notifier.watchdog_interval().map(|d| Instant::now() + d);
        let standby = StandbyPool::new(p.config.supervisor.standby_workers);
        Shell {
            workers: KillOnDrop(
                (0..p.config.actors.len())
                    .map(|_| WorkerSlot::default())
                    .collect(),
            ),
            actor_configs: p.config.actors.clone(),
            config: p.config,
            registry: p.registry,
            notifier,
            ready_sent: false,
            stopping_sent: false,
            status_states: String::new(),
            status_due: Instant::now(),
            next_watchdog,
            files: p.files,
            launches: p.launches,
            pids: HashMap::new(),
            early_exits: HashMap::new(),
            conns: p.conns,
            standby,
            refill_after_ready: false,
            refill_at: None,
            sweep_at: None,
            children: p.children,
            output: p.output,
            poll_registry: p.poll_registry,
            worker_reads: VecDeque::new(),
            spin: Duration::ZERO,
            read_scratch: vec![0; 64 * 1024],
            report_scratch: Vec::new(),
            spawn_tx: p.spawn_tx,
            forks: p.forks,
            disk_tx: p.disk_tx,
            manifest: p.manifest,
            logs: p.logs,
            fsync_tx: p.fsync_tx,
            exit_code: None,
            stats: p.stats,
            events: EventLog::default(),
            http: p.http,
            notices: Vec::new(),
        }
    }
}

/// How long after a taken standby's replacement worker is ready the pool refills: a
/// process start right away would compete with the calls that waited for the restart.
const STANDBY_REFILL_DELAY: Duration = Duration::from_millis(50);

/// How long after a child's death the loop looks for processes re-parented to it that
/// left their worker's session (`sweep::kill_escaped`). Not at once: the look reads a
/// dozen `/proc` files (about 250 µs on a VM), which would delay the dead worker's
/// replacement; deaths within this delay share one look.
const SWEEP_DELAY: Duration = Duration::from_millis(20);

/// A worker that seemed too slow to wait for awake gets another chance this often.
const SPIN_PROBE_EVERY: u32 = 64;

/// How long a worker whose calls come back to back waits for the next one on the CPU:
/// twice the loop's own spin (the next call has a client's round trip to make first).
fn worker_spin(busy_poll: Duration) -> u64 {
    u64::try_from(busy_poll.as_micros().saturating_mul(2)).unwrap_or(u64::MAX)
}

/// Waits for readiness: first awake for up to `spin`, yielding the CPU between polls (a
/// worker that was just sent calls usually answers within tens of µs, and a wake-up from
/// sleep costs 10–50 µs on a VM), then asleep for up to `timeout` (`None`: until something happens).
fn wait(
    poll: &mut Poll,
    ready: &mut Events,
    timeout: Option<Duration>,
    spin: Duration,
) -> std::io::Result<()> {
    let mut timeout = timeout;
    if !spin.is_zero() && timeout != Some(Duration::ZERO) {
        let start = Instant::now();
        loop {
            match poll.poll(ready, Some(Duration::ZERO)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
            if !ready.is_empty() {
                return Ok(());
            }
            if start.elapsed() >= spin {
                break;
            }
            // Not a pure spin: the process we wait for (a worker, the program behind
            // it) may be runnable on this very CPU.
            std::thread::yield_now();
        }
        timeout = timeout.map(|t| t.saturating_sub(start.elapsed()));
    }
    match poll.poll(ready, timeout) {
        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {
            ready.clear();
            Ok(())
        }
        other => other,
    }
}

struct Shell {
    /// Metrics kept by the shell (the core keeps its own).
    stats: ShellStats,
    /// The event stream's numbering and history.
    events: EventLog,
    /// The metrics endpoint, when `metrics_listen` is set.
    http: Option<MetricsHttp>,
    /// Notices taken from the core, to publish (kept: not allocated every turn).
    notices: Vec<crate::core::Notice>,
    config: Config,
    /// Per actor id (stable across reloads; removed actors keep their entry).
    actor_configs: Vec<ActorConfig>,
    registry: Registry,
    notifier: Notifier,
    ready_sent: bool,
    stopping_sent: bool,
    /// The actor states last put in STATUS=, and when to refresh the line anyway.
    status_states: String,
    status_due: Instant,
    /// When the next WATCHDOG=1 is due (sent from this loop, so a stuck core stops it).
    next_watchdog: Option<Instant>,
    files: Vec<Files>,
    /// Per actor id: how its worker is started (program, identity, limits).
    launches: Vec<Launched>,
    workers: KillOnDrop,
    /// The fork server the spawners start workers through.
    forks: Arc<ForkServer>,
    /// pid → (actor, epoch) of every worker not yet reaped.
    pids: HashMap<u32, (ActorId, u64)>,
    /// Exits reaped before their Spawned event arrived.
    early_exits: HashMap<u32, (WorkerExit, Instant)>,
    conns: Conns,
    /// Workers started ahead of need.
    standby: StandbyPool,
    /// A standby was taken: refill the pool when the next worker is ready…
    refill_after_ready: bool,
    /// …a moment after that.
    refill_at: Option<Instant>,
    /// A child ended: look for escaped processes then (`SWEEP_DELAY`).
    sweep_at: Option<Instant>,
    /// SIGCHLD: the loop reaps every child.
    children: reap::ChildSignals,
    output: OutputRelay,
    /// The loop's registry (worker report sockets come and go).
    poll_registry: mio::Registry,
    /// Workers whose report socket may have more to read, in turn order.
    worker_reads: VecDeque<ActorId>,
    /// How long to spin for a worker's answer before the loop sleeps next.
    spin: Duration,
    /// Scratch space for reading report sockets, kept from turn to turn.
    read_scratch: Vec<u8>,
    report_scratch: Vec<Report>,
    spawn_tx: Sender<SpawnJob>,
    disk_tx: Sender<(ActorId, Files)>,
    /// The state directory's record of its actors (shared with the disk thread).
    manifest: Arc<Mutex<Manifest>>,
    logs: Vec<ActorLog>,
    fsync_tx: Sender<LogJob>,
    exit_code: Option<i32>,
}

impl Shell {
    /// One turn of the event loop: wait (awake for a moment after sending calls, then
    /// asleep until the next event or timer), take what is ready, let the core act.
    fn turn(
        &mut self,
        core: &mut Core,
        poll: &mut Poll,
        ready: &mut Events,
        events: &crossbeam_channel::Receiver<ShellEvent>,
        actions: &mut Vec<Action>,
    ) -> Result<(), RunError> {
        let now = Instant::now();
        // One scan of the actors' timers per turn of the loop (not per event).
        let core_deadline = core.next_deadline();
        if self.refill_at.is_some_and(|t| t <= now) {
            self.refill_at = None;
            self.standby.fill(&self.spawn_tx);
        }
        if self.sweep_at.is_some_and(|t| t <= now) {
            self.sweep_at = None;
            sweep::kill_escaped(|p| self.pids.contains_key(&p));
        }
        let deadline = [
            core_deadline,
            self.next_watchdog,
            self.conns.sweep(now),
            self.refill_at,
            self.sweep_at,
            self.http.as_mut().and_then(|h| h.sweep(now)),
        ]
        .into_iter()
        .flatten()
        .min();
        let more_to_do =
            self.conns.has_input() || !self.worker_reads.is_empty() || !events.is_empty();
        let timeout = if more_to_do {
            Some(Duration::ZERO)
        } else {
            deadline.map(|d| d.saturating_duration_since(now))
        };
        let spin = std::mem::take(&mut self.spin);
        wait(poll, ready, timeout, spin).map_err(RunError::setup("the event loop cannot poll"))?;
        let now = Instant::now();
        for ev in ready.iter() {
            match token::of(ev.token()) {
                token::Of::Listener => self.conns.accept(now),
                token::Of::Waker => {}
                token::Of::Child => self.reap_children(core),
                token::Of::Conn(conn) => self.conns.ready(
                    conn,
                    ev.is_readable() || ev.is_read_closed() || ev.is_error(),
                    ev.is_writable() || ev.is_write_closed() || ev.is_error(),
                ),
                token::Of::Worker(actor) => self.queue_read(actor),
                token::Of::Death(actor) => self.on_pidfd(actor, core),
                token::Of::HttpListener => {
                    if let Some(h) = self.http.as_mut() {
                        h.accept(now);
                    }
                }
                token::Of::Http(id) => {
                    if let Some(h) = self.http.as_mut() {
                        h.ready(id);
                    }
                }
            }
        }
        // What the helper threads sent (bounded per turn, so sockets get their turn).
        for _ in 0..8192 {
            match events.try_recv() {
                Ok(ev) => self.on_event(ev, core),
                Err(crossbeam_channel::TryRecvError::Empty) => break,
                Err(crossbeam_channel::TryRecvError::Disconnected) => {
                    return Err(RunError::HelpersGone);
                }
            }
        }
        self.read_workers(core);
        let (logs, files) = (&self.logs, &self.files);
        self.conns.read(now, |conn, request| {
            if request.op == Op::Status {
                measure_files(core, logs, files);
            }
            core.handle(Event::Request { conn, request }, now);
        });
        if self.conns.accept_due(now) {
            self.conns.accept(now);
        }
        let now = Instant::now();
        // Timers set by this turn's events are seen at the top of the next turn.
        if core_deadline.is_some_and(|d| d <= now) {
            core.handle(Event::Tick, now);
        }
        self.run_actions(core, actions);
        if self.http.as_ref().is_some_and(MetricsHttp::waiting) {
            let body = self.render_metrics(core);
            if let Some(h) = self.http.as_mut() {
                h.answer(&body);
            }
        }
        if core.is_stopping() {
            self.standby.close();
        }
        self.tell_systemd(core, now);
        Ok(())
    }

    /// Lets the clients take the last replies (e.g. to `stop`) before the process ends; a
    /// client that does not read gets at most a second.
    fn flush_before_exit(&mut self, poll: &mut Poll, ready: &mut Events) {
        let give_up = Instant::now() + Duration::from_secs(1);
        while Instant::now() < give_up && self.conns.writing() {
            self.conns.flush_all(Instant::now());
            let _ = wait(poll, ready, Some(Duration::from_millis(5)), Duration::ZERO);
        }
    }

    fn on_event(&mut self, ev: ShellEvent, core: &mut Core) {
        let now = Instant::now();
        match ev {
            ShellEvent::Core(e) => core.handle(e, now),
            ShellEvent::LogMarked { actor } => {
                match self.logs.get_mut(actor).map(ActorLog::note_marked) {
                    Some(Marked::Durable(upto)) => core.handle(Event::Durable { actor, upto }, now),
                    Some(Marked::AskAgain) => {
                        let name = self.files[actor].name.clone();
                        let _ = self.fsync_tx.send(LogJob::Mark { actor, name });
                    }
                    Some(Marked::Recorded) | None => {}
                }
            }
            ShellEvent::Spawned {
                actor,
                epoch,
                pid,
                server_name,
            } => {
                let w = &mut self.workers.0[actor];
                if w.epoch != epoch {
                    // A worker for an epoch the core already gave up on: not wanted.
                    spawn::kill_group(pid);
                    spawn::abandon(server_name);
                    return;
                }
                w.pid = Some(pid);
                w.server_name = Some(server_name);
                if std::mem::take(&mut w.kill_pending) {
                    spawn::kill_group(pid);
                }
                self.watch_death(actor, pid);
                self.pids.insert(pid, (actor, epoch));
                core.handle(Event::Spawned { actor, epoch, pid }, now);
                // Exits of processes that were never workers (a failed exec) must not
                // be taken for a later worker that reuses the pid.
                self.early_exits
                    .retain(|_, (_, t)| now.saturating_duration_since(*t) < EARLY_EXIT_MEMORY);
                if let Some((exit, _)) = self.early_exits.remove(&pid) {
                    self.on_reaped(pid as i32, exit, core);
                }
            }
            ShellEvent::Connected {
                actor,
                epoch,
                outbox,
                reports,
                init,
            } => self.on_connected(actor, epoch, outbox, reports, *init),
            ShellEvent::BootstrapFailed { actor, epoch } => self.channel_closed(actor, epoch, core),
            ShellEvent::StandbySpawned {
                pid,
                server_name,
                epoch,
            } => {
                self.early_exits
                    .retain(|_, (_, t)| now.saturating_duration_since(*t) < EARLY_EXIT_MEMORY);
                if self.early_exits.remove(&pid).is_some() {
                    // Died before it was known: a failed start (its bootstrap thread,
                    // released, reports a pid the pool no longer knows: ignored).
                    spawn::abandon(server_name);
                    self.standby.failed(None);
                } else {
                    self.standby.spawned(pid, server_name, epoch);
                }
                self.standby.fill(&self.spawn_tx);
            }
            ShellEvent::StandbyReady {
                pid,
                outbox,
                reports,
            } => {
                let standby = Standby {
                    pid,
                    outbox,
                    reports,
                };
                match self.standby.ready(standby) {
                    standby::Hello::Kept => {
                        tracing::debug!(
                            pid,
                            ready = self.standby.ready_count(),
                            "standby worker ready"
                        );
                    }
                    standby::Hello::Unwanted(s) => spawn::kill_group(s.pid),
                    standby::Hello::Unknown => {}
                }
            }
            ShellEvent::StandbyFailed { pid } => {
                if self.standby.failed(pid)
                    && let Some(pid) = pid
                {
                    spawn::kill_group(pid);
                }
                self.standby.fill(&self.spawn_tx);
            }
            ShellEvent::ForkServerUpgraded { pid } => {
                self.standby.renew(&self.spawn_tx);
                tracing::info!(
                    fork_server = pid,
                    "the binary changed on disk: new workers start from it"
                );
            }
            ShellEvent::Hangup => {
                tracing::info!("SIGHUP received: reloading the configuration");
                let result = self.reload(core, now);
                if let Err(e) = result {
                    tracing::error!(error = %e.message, "reload refused; the old configuration stays");
                }
            }
        }
    }

    fn on_reaped(&mut self, pid: i32, exit: WorkerExit, core: &mut Core) {
        spawn::kill_leftovers(pid);
        // What the dead process started and that left its group is re-parented to us
        // now (its own children, or a worker's whole remaining tree): killed in a moment,
        // off the path of the replacement.
        self.sweep_at
            .get_or_insert_with(|| Instant::now() + SWEEP_DELAY);
        let Some((actor, epoch)) = u32::try_from(pid).ok().and_then(|p| self.pids.remove(&p))
        else {
            if let Ok(p) = u32::try_from(pid) {
                match self.standby.reaped(p) {
                    standby::Reaped::Ours(server_name) => {
                        if let Some(name) = server_name {
                            spawn::abandon(name);
                        }
                        self.standby.fill(&self.spawn_tx);
                    }
                    standby::Reaped::NotOurs if self.forks.reaped(p) => {
                        let _ = self.spawn_tx.send(SpawnJob::ForkServer);
                    }
                    standby::Reaped::NotOurs => {
                        self.early_exits.insert(p, (exit, Instant::now()));
                    }
                }
            }
            return;
        };
        if self.workers.0[actor].pid == u32::try_from(pid).ok() {
            self.forget_pidfd(actor);
        }
        let w = &mut self.workers.0[actor];
        if w.epoch == epoch {
            w.reaped = true;
            w.outbox = None;
            if let Some(name) = w.server_name.take() {
                // Died before it connected: release the spawner waiting in accept.
                spawn::abandon(name);
            }
            // The worker is gone: everything it sent is in the socket now. Read it all,
            // then its death is known without waiting for anything else.
            self.read_reports(actor, usize::MAX, core);
            self.channel_closed(actor, epoch, core);
        }
        let executing = checkpoint::read_executing(&self.files[actor].mmap);
        core.handle(
            Event::Exited {
                actor,
                epoch,
                exit,
                executing,
            },
            Instant::now(),
        );
    }

    /// Queues one reply line for this turn of the loop.
    fn reply(&mut self, conn: ConnId, line: &str) {
        self.conns.reply(conn, line);
    }

    /// A worker said hello: its channel is usable and its reports are read from now on.
    fn on_connected(
        &mut self,
        actor: ActorId,
        epoch: u64,
        outbox: IpcSender<ToWorker>,
        reports: std::os::unix::net::UnixStream,
        init: Init,
    ) {
        let w = &mut self.workers.0[actor];
        if w.epoch != epoch || w.reaped || w.closed {
            return;
        }
        // Sent only now that the loop holds the report socket: the worker says nothing
        // before it has its Init.
        send_init(&self.files[actor].name, w.pid, &outbox, init);
        w.server_name = None;
        let registered = reports.set_nonblocking(true).and_then(|()| {
            let mut stream = mio::net::UnixStream::from_std(reports);
            self.poll_registry
                .register(&mut stream, token::worker(actor), Interest::READABLE)
                .map(|()| stream)
        });
        match registered {
            Ok(stream) => {
                w.outbox = Some(outbox);
                w.reports = Some(ReportStream::new(stream));
                // Reports may have arrived before the registration.
                self.queue_read(actor);
            }
            Err(e) => {
                tracing::error!(actor = %self.files[actor].name, error = %e, "cannot watch a worker's report socket; killing it");
                if let Some(pid) = w.pid {
                    spawn::kill_group(pid);
                }
            }
        }
    }

    /// Polls a pidfd of the actor's worker, so its exit wakes the loop directly. Without
    /// one (kernels before 5.3), the loop's SIGCHLD reaping still reports it.
    fn watch_death(&mut self, actor: ActorId, pid: u32) {
        let Some(fd) = crate::reap::pidfd_open(pid) else {
            return;
        };
        let registered = self.poll_registry.register(
            &mut mio::unix::SourceFd(&std::os::fd::AsRawFd::as_raw_fd(&fd)),
            token::death(actor),
            Interest::READABLE,
        );
        if registered.is_ok() {
            self.forget_pidfd(actor);
            self.workers.0[actor].pidfd = Some(fd);
        }
    }

    /// Stops polling the actor's worker's pidfd.
    fn forget_pidfd(&mut self, actor: ActorId) {
        if let Some(fd) = self.workers.0[actor].pidfd.take() {
            let _ = self.poll_registry.deregister(&mut mio::unix::SourceFd(
                &std::os::fd::AsRawFd::as_raw_fd(&fd),
            ));
        }
    }

    /// The actor's worker's pidfd is readable: the process has exited. Reaps exactly it
    /// (waitid on the pidfd) and handles its death now.
    fn on_pidfd(&mut self, actor: ActorId, core: &mut Core) {
        let Some(fd) = self.workers.0[actor].pidfd.as_ref() else {
            return;
        };
        use std::os::fd::AsFd;
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG;
        match waitid(Id::PIDFd(fd.as_fd()), flags) {
            Ok(WaitStatus::StillAlive) => {}
            Ok(status) => {
                self.forget_pidfd(actor);
                if let Some((pid, exit)) = WorkerExit::from_wait(status) {
                    self.on_reaped(pid, exit, core);
                }
            }
            // Reaped already (after a SIGCHLD, earlier in this turn), or gone.
            Err(_) => self.forget_pidfd(actor),
        }
    }

    /// Reaps every dead child (after a SIGCHLD, and once at start).
    fn reap_children(&mut self, core: &mut Core) {
        let mut dead = Vec::new();
        self.children.reap(|pid, exit| dead.push((pid, exit)));
        for (pid, exit) in dead {
            self.on_reaped(pid, exit, core);
        }
    }

    /// The `Init` of a worker for this actor, as configured now.
    fn init_for(&self, actor: ActorId) -> Init {
        let a = &self.actor_configs[actor];
        let f = &self.files[actor];
        let launched = &self.launches[actor];
        let mut init = spawn::init_for(
            &a.name,
            &a.kind,
            &f.mmap,
            &f.disk,
            &a.policy,
            worker_spin(self.config.supervisor.busy_poll),
            launched.exec.clone(),
            launched.privileges.clone(),
        );
        init.state_dir_id = f.owner.dir;
        init
    }

    /// Gives a standby worker to this actor's `epoch`: to the core it is spawned at once,
    /// and it gets its `Init` now.
    fn bind(&mut self, actor: ActorId, epoch: u64, standby: Standby, init: Init, core: &mut Core) {
        let pid = standby.pid;
        self.workers.0[actor].pid = Some(pid);
        self.pids.insert(pid, (actor, epoch));
        self.watch_death(actor, pid);
        self.output.rename(pid, &self.files[actor].name);
        tracing::debug!(actor = %self.files[actor].name, pid, "standby worker taken");
        core.handle(Event::Spawned { actor, epoch, pid }, Instant::now());
        self.on_connected(actor, epoch, standby.outbox, standby.reports, init);
    }

    /// Tells the core a worker's channel is closed (once per worker) and stops reading it.
    fn channel_closed(&mut self, actor: ActorId, epoch: u64, core: &mut Core) {
        let w = &mut self.workers.0[actor];
        if w.epoch != epoch || w.closed {
            return;
        }
        w.closed = true;
        if let Some(mut r) = w.reports.take() {
            let _ = self.poll_registry.deregister(&mut r.stream);
        }
        core.handle(Event::ChannelClosed { actor, epoch }, Instant::now());
    }

    /// Puts a worker in the read queue (once).
    fn queue_read(&mut self, actor: ActorId) {
        if let Some(w) = self.workers.0.get_mut(actor)
            && !w.read_queued
        {
            w.read_queued = true;
            self.worker_reads.push_back(actor);
        }
    }

    /// Reads every worker with reports waiting, each up to its budget.
    fn read_workers(&mut self, core: &mut Core) {
        for _ in 0..self.worker_reads.len() {
            let Some(actor) = self.worker_reads.pop_front() else {
                break;
            };
            self.workers.0[actor].read_queued = false;
            if self.read_reports(actor, reports::READ_BUDGET, core) {
                self.queue_read(actor);
            }
        }
    }

    /// Reads one worker's reports and hands them to the core. True when more waits.
    fn read_reports(&mut self, actor: ActorId, budget: usize, core: &mut Core) -> bool {
        let w = &mut self.workers.0[actor];
        let epoch = w.epoch;
        let Some(stream) = w.reports.as_mut() else {
            return false;
        };
        let mut got = std::mem::take(&mut self.report_scratch);
        let end = stream.read(budget, &mut self.read_scratch, &mut got);
        let now = Instant::now();
        if self.refill_after_ready && got.iter().any(|r| matches!(r, Report::Ready(_))) {
            // Not at once: the calls waiting for this worker come first.
            self.refill_after_ready = false;
            self.refill_at.get_or_insert(now + STANDBY_REFILL_DELAY);
        }
        let w = &mut self.workers.0[actor];
        let mut checkpoints = Vec::new();
        for report in got.drain(..) {
            match &report {
                Report::Checkpointed {
                    generation,
                    last_seq,
                    bytes,
                    micros,
                    ..
                } => {
                    self.stats.checkpointed(actor, *bytes, *micros);
                    checkpoints.push((*generation, *last_seq, *bytes, *micros));
                }
                Report::CheckpointFailed { .. } => self.stats.checkpoint_failed(actor),
                _ => {}
            }
            if let Report::Replies(_) = report
                && let Some(sent) = w.sent_at.take()
            {
                // How long this worker takes to answer decides whether waiting for it
                // on the CPU pays.
                let sample = now.saturating_duration_since(sent);
                w.answer_time = (w.answer_time * 3 + sample) / 4;
            }
            let event = report_event(&self.files[actor].name, w.pid, actor, epoch, report);
            core.handle(event, now);
        }
        self.report_scratch = got;
        if !checkpoints.is_empty() {
            self.publish_notices(core);
            for (generation, last_seq, bytes, micros) in checkpoints {
                self.publish(event_fields(serde_json::json!({
                    "event": "checkpoint",
                    "actor": core.actor_name(actor),
                    "generation": generation,
                    "last_seq": last_seq,
                    "bytes": bytes,
                    "duration_ms": micros as f64 / 1e3,
                })));
            }
        }
        let w = &mut self.workers.0[actor];
        match end {
            ReadEnd::Drained => false,
            ReadEnd::More => true,
            ReadEnd::Closed => {
                let cut = w.reports.as_ref().map_or(0, ReportStream::unfinished);
                if cut > 0 {
                    tracing::info!(actor = %self.files[actor].name, pid = ?w.pid, bytes = cut, "worker ended in the middle of a report; its calls are replayed");
                }
                self.channel_closed(actor, epoch, core);
                false
            }
            ReadEnd::Broken(e) => {
                tracing::error!(actor = %self.files[actor].name, pid = ?w.pid, error = %e, "worker broke its report stream; killing it");
                self.kill(actor, epoch);
                self.channel_closed(actor, epoch, core);
                false
            }
        }
    }

    /// The config of an actor by id (reload keeps removed actors' entries at the end of
    /// `retired`, so ids stay stable).
    fn config_actor(&self, actor: ActorId) -> &ActorConfig {
        &self.actor_configs[actor]
    }

    /// Sends systemd what changed: READY=1 once every actor serves, STATUS= lines,
    /// STOPPING=1, and WATCHDOG=1 from this loop (a stuck core stops the pings).
    fn tell_systemd(&mut self, core: &Core, now: Instant) {
        if !self.notifier.enabled() {
            return;
        }
        if core.is_stopping() && !self.stopping_sent {
            self.stopping_sent = true;
            self.notifier.stopping();
        }
        if !self.ready_sent && !core.is_stopping() && core.all_serving() {
            self.ready_sent = true;
            self.notifier.ready();
        }
        // STATUS= when the actors' states change, else at most every few seconds (the
        // served count alone must not send a datagram to PID 1 per loop turn).
        let states = core.summary();
        if states != self.status_states || now >= self.status_due {
            self.notifier
                .status(&format!("{states}; {} calls served", core.served()));
            self.status_states = states;
            self.status_due = now + std::time::Duration::from_secs(5);
        }
        if let (Some(due), Some(every)) = (self.next_watchdog, self.notifier.watchdog_interval())
            && due <= now
        {
            self.notifier.watchdog();
            self.next_watchdog = Some(now + every);
        }
    }

    /// Re-reads the config file and applies it: added actors start, removed ones stop
    /// after a final checkpoint, changed policies apply; untouched actors keep their
    /// worker. An invalid file changes nothing.
    fn reload(&mut self, core: &mut Core, now: Instant) -> Result<String, ErrorBody> {
        let bad = |m: String| ErrorBody::new(ErrorKind::BadRequest, m);
        self.notifier.reloading();
        let result = self.reload_inner(core, now, &bad);
        self.publish_notices(core);
        let event = match &result {
            Ok(changes) => serde_json::json!({
                "event": "reload",
                "ok": true,
                "changes": serde_json::from_str::<serde_json::Value>(changes).unwrap_or_default(),
            }),
            Err(e) => serde_json::json!({"event": "reload", "ok": false, "error": e.message}),
        };
        self.publish(event_fields(event));
        // READY=1 again: systemd leaves the reloading state whether or not it worked.
        self.notifier.ready();
        result
    }

    fn reload_inner(
        &mut self,
        core: &mut Core,
        now: Instant,
        bad: &dyn Fn(String) -> ErrorBody,
    ) -> Result<String, ErrorBody> {
        if self.config.path.as_os_str() == resurgam_shared::config::EMBEDDED_PATH {
            return Err(bad(
                "no config file to reload (started without --config)".into()
            ));
        }
        let new = Config::load(&self.config.path, &Environment::from_process()).map_err(|e| {
            bad(format!(
                "the new configuration is invalid; nothing changed:\n{e}"
            ))
        })?;
        let problems = check(&new, &self.registry);
        if !problems.is_empty() {
            return Err(bad(format!(
                "the new configuration is invalid; nothing changed:\n{}",
                problems.join("\n")
            )));
        }
        crate::logging::config_warnings(&new);
        let mut ignored = Vec::new();
        let (old_s, new_s) = (&self.config.supervisor, &new.supervisor);
        for (key, changed) in [
            ("state_dir", old_s.state_dir != new_s.state_dir),
            ("runtime_dir", old_s.runtime_dir != new_s.runtime_dir),
            ("socket", old_s.socket != new_s.socket),
            ("socket_mode", old_s.socket_mode != new_s.socket_mode),
            (
                "max_request_bytes",
                old_s.max_request_bytes != new_s.max_request_bytes,
            ),
            ("allowed_uids", old_s.allowed_uids != new_s.allowed_uids),
            (
                "metrics_listen",
                old_s.metrics_listen != new_s.metrics_listen,
            ),
            (
                "shutdown_timeout",
                old_s.shutdown_timeout != new_s.shutdown_timeout,
            ),
        ] {
            if changed {
                ignored.push(format!("[supervisor].{key}"));
            }
        }
        if ignored
            .iter()
            .any(|k| k.ends_with("state_dir") || k.ends_with("runtime_dir"))
        {
            return Err(bad(format!(
                "changing {} needs a restart of the supervisor; nothing changed",
                ignored.join(", ")
            )));
        }
        // Validate every change before applying any.
        for a in &new.actors {
            if let Some(old) = self.config.actor(&a.name)
                && old.kind != a.kind
            {
                return Err(bad(format!(
                    "actor {:?}: changing its kind ({} → {}) is not supported; remove it, reload, then add it again",
                    a.name, old.kind, a.kind
                )));
            }
            if self.config.actor(&a.name).is_none() && core.is_retiring(&a.name) {
                return Err(bad(format!(
                    "actor {:?} is still stopping after its removal; reload again in a moment",
                    a.name
                )));
            }
        }
        // Launch settings (program, identity, limits) of the actors that stay, resolved
        // before anything is applied.
        let mut relaunch = Vec::new();
        for a in &new.actors {
            if let Some(id) = core.actor_id(&a.name) {
                let launched = launch::resolve(&new, a).map_err(|e| bad(e.join("\n")))?;
                if launched != self.launches[id] {
                    relaunch.push((id, launched));
                }
            }
        }
        let mut added = Vec::new();
        let mut prepared = Vec::new();
        for a in new
            .actors
            .iter()
            .filter(|a| self.config.actor(&a.name).is_none())
        {
            prepared.push((
                a.clone(),
                prepare_actor(&new, a, &self.registry, &self.manifest)
                    .map_err(|e| bad(e.to_string()))?,
            ));
        }
        let mut removed = Vec::new();
        for old in &self.config.actors {
            if new.actor(&old.name).is_none()
                && let Some(id) = core.actor_id(&old.name)
            {
                core.retire_actor(id, now);
                removed.push(old.name.clone());
            }
        }
        let mut changed = Vec::new();
        for a in &new.actors {
            if let Some(old) = self.config.actor(&a.name)
                && old.policy != a.policy
                && let Some(id) = core.actor_id(&a.name)
            {
                core.update_policy(id, a.policy.clone());
                self.actor_configs[id] = a.clone();
                changed.push(a.name.clone());
            }
        }
        let mut restarted = Vec::new();
        for (id, launched) in relaunch {
            self.launches[id] = launched;
            if let Some(a) = new.actor(&self.files[id].name) {
                self.actor_configs[id] = a.clone();
                if core.relaunch(id, now) {
                    restarted.push(a.name.clone());
                }
            }
        }
        for (a, (spec, files, log, launched)) in prepared {
            let expected = self.files.len();
            self.files.push(files);
            self.launches.push(launched);
            self.logs.push(log);
            self.workers.0.push(WorkerSlot::default());
            self.actor_configs.push(a.clone());
            let id = core.add_actor(spec, now);
            debug_assert_eq!(id, expected);
            added.push(a.name.clone());
        }
        self.standby
            .resize(new.supervisor.standby_workers, &self.spawn_tx);
        // A new binary on disk: workers started from then on run it (on a spawner: the
        // exec of a new fork server is not the loop's to wait for).
        let _ = self.spawn_tx.send(SpawnJob::Upgrade);
        if new.supervisor.busy_poll != self.config.supervisor.busy_poll {
            let micros = worker_spin(new.supervisor.busy_poll);
            for w in &self.workers.0 {
                if let Some(outbox) = &w.outbox {
                    let _ = outbox.send(ToWorker::Spin { micros });
                }
            }
        }
        tracing::info!(
            ?added,
            ?removed,
            ?changed,
            ?restarted,
            ?ignored,
            "configuration reloaded"
        );
        self.config = new;
        Ok(serde_json::json!({
            "added": added,
            "removed": removed,
            "changed": changed,
            "restarted": restarted,
            "needs_restart": ignored,
        })
        .to_string())
    }

    fn outbox(&self, actor: ActorId, epoch: u64) -> Option<&IpcSender<ToWorker>> {
        let w = &self.workers.0[actor];
        (w.epoch == epoch).then_some(w.outbox.as_ref()).flatten()
    }

    /// Flushes the core and performs its actions until it has nothing more to say
    /// (log appends answer at once and may release dispatches).
    fn run_actions(&mut self, core: &mut Core, actions: &mut Vec<Action>) {
        loop {
            core.flush();
            core.drain_actions(actions);
            if actions.is_empty() {
                break;
            }
            self.execute(actions, core);
        }
        self.publish_notices(core);
        self.conns.flush(Instant::now());
    }

    /// Publishes what the core noticed since the last time, then `extra` (the shell's
    /// own events), on the event stream.
    fn publish_notices(&mut self, core: &mut Core) {
        core.drain_notices(&mut self.notices);
        let mut notices = std::mem::take(&mut self.notices);
        for n in notices.drain(..) {
            self.publish(event_stream::notice_fields(core, &n));
        }
        self.notices = notices;
    }

    /// Numbers, keeps and sends one event to every subscriber.
    fn publish(&mut self, fields: serde_json::Map<String, serde_json::Value>) {
        let seq = self.events.next_seq();
        let line = self.events.record(fields);
        self.conns.publish(seq, line, Instant::now());
    }

    /// Every metric, the core's and the shell's, in the Prometheus text format.
    fn render_metrics(&self, core: &Core) -> String {
        let gauges = observe::Gauges {
            connections: self.conns.open(),
            connections_accepted: self.conns.accepted,
            subscribers: self.conns.subscribed(),
            subscribers_dropped: self.conns.dropped_subscribers,
            events: self.events.next_seq() - 1,
        };
        observe::render(core, &self.stats, &gauges, |id| {
            self.logs.get(id).map_or(0, ActorLog::bytes)
        })
    }

    fn execute(&mut self, actions: &mut Vec<Action>, core: &mut Core) {
        for action in actions.drain(..) {
            match action {
                Action::Append { actor, calls } => self.append(actor, &calls, core),
                Action::TruncateLog { actor, upto } => self.logs[actor].truncate(upto),
                Action::Cancel {
                    actor,
                    seq,
                    cancelled,
                } => self.cancel(actor, seq, &cancelled, core),
                Action::Reply { conn, line } => self.reply(conn, &line),
                Action::Spawn { actor, epoch } => self.spawn(actor, epoch, core),
                Action::SendCalls {
                    actor,
                    epoch,
                    calls,
                } => self.send_calls(actor, epoch, calls),
                Action::RequestCheckpoint { actor, epoch } => {
                    self.tell(actor, epoch, ToWorker::Checkpoint);
                }
                Action::Ping { actor, epoch } => self.tell(actor, epoch, ToWorker::Ping),
                Action::StopWorker { actor, epoch } => self.tell(actor, epoch, ToWorker::Stop),
                Action::Kill { actor, epoch } => self.kill(actor, epoch),
                Action::SyncDisk { actor } => {
                    let _ = self.disk_tx.send((actor, self.files[actor].clone()));
                }
                Action::Configure {
                    actor,
                    epoch,
                    checkpoint_every,
                    max_reply_bytes,
                } => self.tell(
                    actor,
                    epoch,
                    ToWorker::Configure {
                        checkpoint_every,
                        max_reply_bytes,
                    },
                ),
                Action::Reload { origin } => {
                    let result = self.reload(core, Instant::now());
                    core.answer(&origin, result);
                }
                Action::Release { actor } => {
                    let name = &self.files[actor].name;
                    let mut m = self.manifest.lock().unwrap_or_else(PoisonError::into_inner);
                    // What it has is recorded again as it writes it (a disk copy, a log).
                    let release = |e: &mut crate::manifest::ActorEntry| {
                        *e = crate::manifest::ActorEntry::default();
                    };
                    self.logs[actor].forget_mark();
                    if let Err(e) = m.update(name, release) {
                        tracing::error!(actor = %name, path = %m.path().display(), error = %e, "cannot record the release in the state directory's manifest: the next start holds the actor again");
                    }
                }
                Action::Exit { code } => self.exit_code = Some(code),
                Action::Metrics { origin } => {
                    let text = self.render_metrics(core);
                    core.answer(&origin, Ok(crate::core::json_string(&text)));
                }
                Action::Subscribe { origin } => {
                    self.publish_notices(core);
                    let history = self.events.history();
                    let ack = serde_json::json!({
                        "subscribed": true,
                        "next_seq": self.events.next_seq(),
                        "history": history.len(),
                    });
                    let ack = resurgam_shared::protocol::encode_ok(&origin.id, &ack.to_string());
                    self.conns.subscribe(origin.conn, &ack, history);
                }
            }
        }
    }

    /// Sends a worker a message if it is the actor's current one and connected.
    fn tell(&self, actor: ActorId, epoch: u64, msg: ToWorker) {
        if let Some(outbox) = self.outbox(actor, epoch) {
            let _ = outbox.send(msg);
        }
    }

    /// Appends calls to the actor's log and tells the core how it went (an fsync'd log
    /// reports the calls durable later, from the fsync thread).
    fn append(&mut self, actor: ActorId, calls: &[resurgam_shared::ipc::Call], core: &mut Core) {
        let (Some(first), Some(last)) = (calls.first(), calls.last()) else {
            return;
        };
        let (from, upto) = (first.seq, last.seq);
        let log = &mut self.logs[actor];
        let event = match log.append(calls) {
            Ok(()) => {
                let appended = log.note_appended(upto);
                if appended.ask_mark {
                    // Off the loop: the manifest's write fsyncs twice.
                    let name = self.files[actor].name.clone();
                    let _ = self.fsync_tx.send(LogJob::Mark { actor, name });
                }
                if self.actor_configs[actor].policy.durability == Durability::Fsync
                    && let Some(request) = log.sync_request(actor, upto)
                {
                    let _ = self.fsync_tx.send(LogJob::Sync(request));
                }
                Event::Logged {
                    actor,
                    upto,
                    durable: appended.durable,
                }
            }
            Err(error) => Event::LogFailed {
                actor,
                from,
                upto,
                error: error.to_string(),
            },
        };
        core.handle(event, Instant::now());
    }

    /// Writes a tombstone for calls the core refused after they were logged.
    fn cancel(&mut self, actor: ActorId, seq: u64, cancelled: &[u64], core: &mut Core) {
        let log = &mut self.logs[actor];
        match log.cancel(seq, cancelled) {
            Ok(()) => {
                if self.actor_configs[actor].policy.durability == Durability::Fsync
                    && let Some(request) = log.sync_request(actor, seq)
                {
                    let _ = self.fsync_tx.send(LogJob::Sync(request));
                }
            }
            Err(e) => {
                tracing::error!(actor = %self.config_actor(actor).name, error = %e, ?cancelled, "cannot write a tombstone for refused calls; a supervisor restart would replay them");
                core.handle(Event::TombstoneFailed { actor, seq }, Instant::now());
            }
        }
    }

    /// Gives the actor's `epoch` a worker: a standby if one is ready, else a new process.
    fn spawn(&mut self, actor: ActorId, epoch: u64, core: &mut Core) {
        self.forget_pidfd(actor);
        let w = &mut self.workers.0[actor];
        if let Some(mut r) = w.reports.take() {
            let _ = self.poll_registry.deregister(&mut r.stream);
        }
        *w = WorkerSlot {
            epoch,
            answer_time: w.answer_time,
            // The actor may still be in the read queue.
            read_queued: w.read_queued,
            ..WorkerSlot::default()
        };
        let mut init = self.init_for(actor);
        init.calls_waiting = core.calls_waiting(actor);
        if let Some(standby) = self.standby.take() {
            // Restoring takes a standby about 100 µs: when calls wait for it, wait for its
            // `Ready` awake rather than pay a wake-up from sleep.
            if init.calls_waiting {
                self.spin = self.config.supervisor.busy_poll;
            }
            self.bind(actor, epoch, standby, init, core);
            // Its replacement starts once this worker is ready: a process start now
            // would take the CPUs the restore needs.
            self.refill_after_ready = true;
            return;
        }
        let job = SpawnJob::Actor {
            actor,
            epoch,
            init: Box::new(init),
        };
        if self.spawn_tx.send(job).is_err() {
            let error = "the spawner thread is gone".to_string();
            core.handle(
                Event::SpawnFailed {
                    actor,
                    epoch,
                    error,
                },
                Instant::now(),
            );
        }
    }

    /// Sends a batch of calls, and decides whether the loop waits awake for the answer.
    fn send_calls(&mut self, actor: ActorId, epoch: u64, calls: Vec<resurgam_shared::ipc::Call>) {
        let Some(outbox) = self.outbox(actor, epoch) else {
            return;
        };
        // ipc-channel asserts (panics) when it cannot create the shared memory of a large
        // batch (no fds or memory left): never let that take the main loop down.
        let encoded = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            calls_message(calls).map_err(|e| e.to_string())
        }))
        .unwrap_or_else(|_| {
            Err("no shared memory for a large batch (out of fds or memory?)".into())
        });
        let sent = match encoded {
            Ok(msg) => outbox.send(msg).is_ok(),
            Err(error) => {
                tracing::error!(actor = %self.files[actor].name, %error, "cannot send a call batch; restarting the worker so the calls are replayed");
                false
            }
        };
        if !sent {
            // The batch counts as in flight: only a new worker can take it.
            self.kill(actor, epoch);
            return;
        }
        let w = &mut self.workers.0[actor];
        w.sent_at.get_or_insert_with(Instant::now);
        // Wait on the CPU for the answer only for a worker that usually answers within the
        // spin: for a slow one it would be wasted. An answer time measured while asleep
        // includes the loop's own wake-up, so now and then try again awake.
        let budget = self.config.supervisor.busy_poll;
        w.batches_since_spin += 1;
        if w.answer_time <= budget || w.batches_since_spin >= SPIN_PROBE_EVERY {
            w.batches_since_spin = 0;
            self.spin = budget;
        }
    }

    /// Kills the actor's `epoch` worker (now, or as soon as its pid is known).
    fn kill(&mut self, actor: ActorId, epoch: u64) {
        let w = &mut self.workers.0[actor];
        if w.epoch == epoch && !w.reaped {
            match w.pid {
                Some(pid) => spawn::kill_group(pid),
                None => w.kill_pending = true,
            }
        }
    }
}

/// Sends a worker its `Init` (a large one through shared memory, so the send never
/// blocks the loop on a worker that dies mid-message, and stays in order with what the
/// loop sends next).
fn send_init(name: &str, pid: Option<u32>, outbox: &IpcSender<ToWorker>, init: Init) {
    // ipc-channel asserts (panics) when it cannot create shared memory: as for call
    // batches, that must not take the loop down.
    let sent = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        init_message(init)
            .map_err(|e| e.to_string())
            .and_then(|msg| outbox.send(msg).map_err(|e| e.to_string()))
    }))
    .unwrap_or_else(|_| Err("no shared memory for a large init (out of fds or memory?)".into()));
    if let Err(error) = sent {
        tracing::error!(actor = %name, ?pid, %error, "cannot send init to the worker; killing it");
        if let Some(pid) = pid {
            spawn::kill_group(pid);
        }
    }
}

/// The fields of an event built as a JSON object.
fn event_fields(v: serde_json::Value) -> serde_json::Map<String, serde_json::Value> {
    match v {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    }
}

/// Tells the core the sizes of its actors' files, for a `status` reply (gone actors
/// are not shown there, so their files are not stat'ed on the loop).
fn measure_files(core: &mut Core, logs: &[ActorLog], files: &[Files]) {
    let len = |p: &std::path::Path| std::fs::symlink_metadata(p).ok().map(|m| m.len());
    for id in core.actor_ids() {
        let (Some(log), Some(f)) = (logs.get(id), files.get(id)) else {
            continue;
        };
        if core.is_gone(id) {
            continue;
        }
        let sizes = FileSizes {
            mmap_bytes: len(&f.mmap),
            disk_copy_bytes: len(&f.disk),
            log_bytes: log.bytes(),
        };
        core.note_files(id, sizes);
    }
}

/// The core's event for one report of a worker.
fn report_event(name: &str, pid: Option<u32>, actor: ActorId, epoch: u64, report: Report) -> Event {
    match report {
        Report::Ready(restored) => Event::Ready {
            actor,
            epoch,
            restored,
        },
        Report::Replies(replies) => Event::Replies {
            actor,
            epoch,
            replies,
        },
        Report::MoreReplies(replies) => Event::MoreReplies {
            actor,
            epoch,
            replies,
        },
        Report::Checkpointed {
            generation,
            last_seq,
            previous,
            bytes,
            micros,
        } => {
            tracing::debug!(actor = %name, ?pid, generation, last_seq, bytes, micros, "checkpoint written");
            Event::Checkpointed {
                actor,
                epoch,
                generation,
                last_seq,
                previous,
            }
        }
        Report::CheckpointFailed { message } => Event::CheckpointFailed {
            actor,
            epoch,
            message,
        },
        Report::Fatal { message } => Event::Fatal {
            actor,
            epoch,
            message,
        },
        Report::Crashed { reason } => Event::Crashed {
            actor,
            epoch,
            reason,
        },
        Report::Pong => Event::Pong { actor, epoch },
        Report::Verified {
            rejected,
            mmap_slots,
        } => Event::Verified {
            actor,
            epoch,
            rejected,
            mmap_slots,
        },
    }
}

/// Call logs of actors that are no longer configured are kept, and said so.
fn report_orphan_logs(config: &Config) {
    let Ok(entries) = std::fs::read_dir(&config.supervisor.state_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name();
        let Some(actor) = name.to_str().and_then(|n| n.strip_suffix(".log")) else {
            continue;
        };
        if config.actor(actor).is_none() && e.path().is_dir() {
            tracing::warn!(
                actor,
                path = %e.path().display(),
                "call log of an actor that is not in the config: kept as it is; add the actor back to replay it"
            );
        }
    }
}

/// Everything needed to start supervising one configured actor: its core spec (with
/// the checkpoint found and the calls recovered from its log), its files, its log.
fn prepare_actor(
    config: &Config,
    a: &ActorConfig,
    registry: &Registry,
    manifest: &Mutex<Manifest>,
) -> Result<(ActorSpec, Files, ActorLog, Launched), RunError> {
    let fail = |reason: String| RunError::Actor {
        actor: a.name.clone(),
        reason,
    };
    // An exec actor's methods are its program's: the program refuses unknown ones.
    let methods = if a.kind == EXEC_KIND {
        None
    } else {
        let kind = registry
            .get(&a.kind)
            .ok_or_else(|| fail(format!("unknown kind {:?}", a.kind)))?;
        Some(kind.methods())
    };
    let launched = launch::resolve(config, a).map_err(|e| fail(e.join("\n")))?;
    let mmap = paths::mmap_file(config, &a.name);
    let disk = paths::disk_copy(config, &a.name);
    let owner = manifest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .owner(&a.name);
    let state_dir_id = manifest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .id()
        .to_string();
    let scan = checkpoint::scan_owned(&mmap, &disk, Some(&owner));
    let foreign = foreign_checkpoints(config, &scan);
    for f in &foreign {
        tracing::error!(actor = %a.name, "{f}: refused");
    }
    let start_seq = scan.chosen.as_ref().map_or(0, |(_, c)| c.last_seq);
    if let Some((source, c)) = &scan.chosen {
        tracing::info!(actor = %a.name, %source, generation = c.generation, last_seq = c.last_seq, "found checkpoint");
    }
    let fsync = a.policy.durability == Durability::Fsync;
    let opened = ActorLog::open(
        &config.supervisor.state_dir,
        &a.name,
        fsync,
        Box::new(RealSink),
        start_seq,
        Some(&state_dir_id),
    )
    .map_err(|e| fail(format!("call log: {e}")))?;
    let mut opened = opened;
    let held = hold_reason(config, a, &scan, &foreign, &opened, manifest)?;
    let marked = manifest
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .entry(&a.name)
        .logged;
    if marked || opened.range.is_some() {
        opened.log.set_recorded();
    }
    for p in &opened.problems {
        tracing::error!(actor = %a.name, problem = %p, "call log recovery");
    }
    if !opened.records.is_empty() {
        let after = opened.records.iter().filter(|r| r.seq > start_seq).count();
        tracing::info!(actor = %a.name, records = opened.records.len(), to_replay = after, "call log recovered");
    }
    let spec = ActorSpec {
        name: a.name.clone(),
        kind: a.kind.clone(),
        policy: a.policy.clone(),
        methods,
        start_seq,
        recovered: opened.records,
        log_range: opened.range,
        held,
    };
    let files = Files {
        owner,
        name: a.name.clone(),
        mmap,
        disk,
    };
    Ok((spec, files, opened.log, launched))
}

/// The candidates of `scan` refused as another owner's, each described with the actor
/// and state directory they belong to (named when it is an actor of this config).
fn foreign_checkpoints(config: &Config, scan: &checkpoint::Scan) -> Vec<String> {
    scan.candidates
        .iter()
        .filter_map(|(source, outcome)| match outcome {
            Err(checkpoint::CheckpointError::Foreign { found, expected }) => {
                let whose = config
                    .actors
                    .iter()
                    .find(|o| found.is_actor(&o.name))
                    .map_or_else(
                        || "another actor".to_string(),
                        |o| format!("actor {:?}", o.name),
                    );
                let dir = if found.dir == expected.dir {
                    "of this state directory".to_string()
                } else {
                    format!("of another state directory ({found})")
                };
                Some(format!(
                    "the {source} belongs to {whose} {dir} (swapped or copied?)"
                ))
            }
            _ => None,
        })
        .collect()
}

/// Why the actor must be held DEAD, if it must: a hold recorded earlier, acknowledged
/// calls its log lost, or state files the manifest recorded and that are gone. A new
/// hold is recorded in the manifest (so it survives restarts until `restart --fresh`).
fn hold_reason(
    config: &Config,
    a: &ActorConfig,
    scan: &checkpoint::Scan,
    foreign: &[String],
    opened: &calllog::Opened,
    manifest: &Mutex<Manifest>,
) -> Result<Option<String>, RunError> {
    let mut m = manifest.lock().unwrap_or_else(PoisonError::into_inner);
    let entry = m.entry(&a.name);
    let vanished =
        (entry.checkpointed || entry.logged) && scan.chosen.is_none() && opened.range.is_none();
    // Another's checkpoint in its place and none of its own: starting from nothing
    // would silently reset it.
    let replaced = (scan.chosen.is_none() && !foreign.is_empty()).then(|| {
        format!(
            "its checkpoint was replaced: {}; no checkpoint of its own is left",
            foreign.join("; ")
        )
    });
    let found = opened.lost.clone().or(replaced).or_else(|| {
        vanished.then(|| {
            let mut had = Vec::new();
            if entry.checkpointed {
                had.push(format!(
                    "a checkpoint ({})",
                    paths::disk_copy(config, &a.name).display()
                ));
            }
            if entry.logged {
                had.push(format!(
                    "a call log ({})",
                    resurgam_shared::calllog::log_dir(&config.supervisor.state_dir, &a.name)
                        .display()
                ));
            }
            format!(
                "its state files are gone: {} recorded {} for it, and no checkpoint and no \
                 logged call of it is left",
                m.path().display(),
                had.join(" and ")
            )
        })
    });
    // A hold recorded earlier stays; what this start found is added to it.
    let reason = match (entry.held.clone(), found) {
        (Some(held), Some(new)) if !held.contains(&new) => {
            Some(format!("{held}; and since: {new}"))
        }
        (Some(held), _) => Some(held),
        (None, new) => new,
    };
    let recorded = m.update(&a.name, |e| {
        e.held.clone_from(&reason);
        e.checkpointed |= scan
            .candidates
            .iter()
            .any(|(s, r)| *s == checkpoint::Source::Disk && r.is_ok());
        e.logged |= opened.range.is_some();
    });
    if let Err(e) = recorded {
        return Err(RunError::Manifest(format!(
            "cannot update {}: {e}",
            m.path().display()
        )));
    }
    if let Some(r) = &reason {
        tracing::error!(actor = %a.name, reason = %r, "actor held DEAD: acknowledged calls may be lost; `resurgam restart {} --fresh` starts it from what is left", a.name);
    }
    Ok(reason)
}

/// Locks `what` (the state or the runtime directory, the socket) with the lock file at
/// `path` and writes this process's pid into it, so that a second supervisor refuses to
/// start and names the first.
fn lock(what: String, path: &Path) -> Result<Flock<std::fs::File>, RunError> {
    let path = path.to_path_buf();
    let file = safefs::open_or_create(&path).map_err(|source| RunError::LockFile {
        path: path.clone(),
        source,
    })?;
    // A worker of a supervisor that was just killed may hold a copy of the lock for a
    // moment (between fork and exec): retry briefly before giving up.
    let give_up = Instant::now() + std::time::Duration::from_secs(2);
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => {
                use std::io::Write;
                // Who holds it, for the message of the next one (best effort).
                let _ = lock.set_len(0);
                let _ = (&*lock).write_all(format!("{}\n", std::process::id()).as_bytes());
                return Ok(lock);
            }
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < give_up => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, source)) => {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|t| t.trim().parse::<u32>().ok())
                    .map_or_else(String::new, |pid| format!(" (pid {pid})"));
                return Err(RunError::Locked {
                    what,
                    holder,
                    lock: path,
                    source,
                });
            }
        }
    }
}

/// Raises the soft RLIMIT_NOFILE to the hard limit: every worker costs a few fds.
fn raise_fd_limit() {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    if let Ok((soft, hard)) = getrlimit(Resource::RLIMIT_NOFILE)
        && soft < hard
        && let Err(e) = setrlimit(Resource::RLIMIT_NOFILE, hard, hard)
    {
        tracing::warn!(soft, hard, error = %e, "cannot raise the open-file limit");
    }
}

/// Checks a config file as `run` would, without starting anything.
pub fn check(config: &Config, registry: &Registry) -> Vec<String> {
    let mut problems = Vec::new();
    for a in &config.actors {
        if a.kind != EXEC_KIND && registry.get(&a.kind).is_none() {
            let mut known = registry.names();
            known.push(EXEC_KIND);
            known.sort_unstable();
            problems.push(format!(
                "{}:{}: actor {:?}: unknown kind {:?} (known: {}; kind \"exec\" runs a program of yours)",
                config.path.display(),
                a.kind_line,
                a.name,
                a.kind,
                known.join(", ")
            ));
        }
        if let Err(e) = launch::resolve(config, a) {
            problems.extend(e);
        }
    }
    problems
}
