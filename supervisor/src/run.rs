//! `resurgam run`: wires the shell threads around the core and runs the event loop.
//!
//! Order matters: signals are registered before any thread exists; the state directory
//! is locked before anything is touched; the control socket is bound last, once every
//! worker has been asked to start.

use std::collections::HashMap;
use std::time::Instant;

use crossbeam_channel::{RecvTimeoutError, Sender};
use ipc_channel::ipc::IpcSender;
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use resurgam_shared::checkpoint;
use resurgam_shared::config::{ActorConfig, Config, Environment};
use resurgam_shared::ipc::{ToWorker, calls_message};
use resurgam_shared::protocol::{ErrorBody, ErrorKind};

use resurgam_shared::config::Durability;

use crate::calllog::{self, ActorLog, RealSink, SyncRequest};
use crate::control::{self, Access, ConnOut, SocketFile};
use crate::core::{Action, ActorId, ActorSpec, ConnId, Core, Event};
use crate::disk::{self, Files};
use crate::exit::WorkerExit;
use crate::launch::{self, EXEC_KIND, Launched};
use crate::notify::Notifier;
use crate::spawn::{self, SpawnJob};
use crate::{paths, reap};
use resurgam_worker::Registry;

/// Everything the shell threads tell the loop.
pub enum ShellEvent {
    Core(Event),
    Spawned {
        actor: ActorId,
        epoch: u64,
        pid: u32,
        server_name: String,
    },
    Connected {
        actor: ActorId,
        epoch: u64,
        outbox: IpcSender<ToWorker>,
    },
    Reaped {
        pid: i32,
        exit: WorkerExit,
    },
    ConnOpened {
        conn: ConnId,
        conn_out: ConnOut,
    },
    /// A request the connection's reader refused itself (malformed, oversized).
    Refused {
        conn: ConnId,
        line: String,
    },
    ConnClosed {
        conn: ConnId,
    },
    Hangup,
}

/// Polls the channel for up to `budget`.
fn spin_recv(
    events: &crossbeam_channel::Receiver<ShellEvent>,
    budget: std::time::Duration,
) -> Option<ShellEvent> {
    let start = Instant::now();
    loop {
        if let Ok(ev) = events.try_recv() {
            return Some(ev);
        }
        if start.elapsed() >= budget {
            return None;
        }
        std::hint::spin_loop();
    }
}

/// How long an exit reaped before its worker's spawn was reported is remembered.
const EARLY_EXIT_MEMORY: std::time::Duration = std::time::Duration::from_secs(5);

/// How long replies are still delivered to a client that stopped sending.
const HALF_CLOSED_GRACE: std::time::Duration = std::time::Duration::from_secs(60);

/// The shell's view of one actor's current worker.
#[derive(Default)]
struct WorkerSlot {
    epoch: u64,
    pid: Option<u32>,
    server_name: Option<String>,
    outbox: Option<IpcSender<ToWorker>>,
    reaped: bool,
    /// The core asked for a kill before the pid was known.
    kill_pending: bool,
}

/// Kills every worker still running when the loop ends, however it ends (G9; workers
/// also have PR_SET_PDEATHSIG for when the supervisor itself is killed).
struct KillOnDrop(Vec<WorkerSlot>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for w in &self.0 {
            if let (Some(pid), false) = (w.pid, w.reaped) {
                spawn::kill_group(pid);
            }
        }
    }
}

/// Runs the supervisor until it is stopped. Returns the process exit code.
pub fn run(config: Config, registry: &Registry) -> Result<i32, String> {
    let signals = reap::register().map_err(|e| format!("register signal handlers: {e}"))?;
    raise_fd_limit();
    let sup = &config.supervisor;
    for (what, dir) in [("state", &sup.state_dir), ("runtime", &sup.runtime_dir)] {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("create {what} directory {}: {e}", dir.display()))?;
    }
    let _lock = lock_state_dir(&config)?;
    report_orphan_logs(&config);

    let mut specs = Vec::new();
    let mut files = Vec::new();
    let mut logs = Vec::new();
    let mut launches = Vec::new();
    for a in &config.actors {
        let (spec, f, log, launched) = prepare_actor(&config, a, registry)?;
        specs.push(spec);
        files.push(f);
        logs.push(log);
        launches.push(launched);
    }

    let (events_tx, events) = crossbeam_channel::unbounded::<ShellEvent>();
    let (spawn_tx, spawn_rx) = crossbeam_channel::unbounded::<SpawnJob>();
    let (disk_tx, disk_rx) = crossbeam_channel::unbounded::<(ActorId, Files)>();
    reap::start(signals, events_tx.clone()).map_err(|e| format!("start signal thread: {e}"))?;
    spawn::start_spawners(spawn_rx, events_tx.clone())
        .map_err(|e| format!("start spawner thread: {e}"))?;
    disk::start(disk_rx, events_tx.clone()).map_err(|e| format!("start disk thread: {e}"))?;
    let (fsync_tx, fsync_rx) = crossbeam_channel::unbounded::<SyncRequest>();
    calllog::start_fsync_thread(fsync_rx, events_tx.clone())
        .map_err(|e| format!("start fsync thread: {e}"))?;

    let listener = control::bind(&sup.socket, sup.socket_mode)?;
    let _socket_file = SocketFile(sup.socket.clone());
    control::start(
        listener,
        Access {
            own_uid: nix::unistd::getuid().as_raw(),
            allowed_uids: sup.allowed_uids.clone(),
            max_request_bytes: sup.max_request_bytes,
            // Reloads may add actors: keep room for twice today's.
            max_connections: control::max_connections(2 * config.actors.len() + 16),
        },
        events_tx.clone(),
    )
    .map_err(|e| format!("start control thread: {e}"))?;
    drop(events_tx);

    tracing::info!(
        socket = %sup.socket.display(),
        state_dir = %sup.state_dir.display(),
        actors = config.actors.len(),
        pid = std::process::id(),
        "resurgam supervisor starting"
    );

    let mut core = Core::new(&config, specs, std::process::id(), Instant::now());
    let notifier = Notifier::from_env();
    let next_watchdog = notifier.watchdog_interval().map(|d| Instant::now() + d);
    let mut shell = Shell {
        workers: KillOnDrop(
            (0..config.actors.len())
                .map(|_| WorkerSlot::default())
                .collect(),
        ),
        actor_configs: config.actors.clone(),
        config,
        registry: registry.clone(),
        notifier,
        ready_sent: false,
        stopping_sent: false,
        status_states: String::new(),
        status_due: Instant::now(),
        next_watchdog,
        files,
        launches,
        pids: HashMap::new(),
        early_exits: HashMap::new(),
        conns: HashMap::new(),
        outgoing: HashMap::new(),
        half_closed: HashMap::new(),
        awaiting_worker: false,
        spawn_tx,
        disk_tx,
        logs,
        fsync_tx,
        exit_code: None,
    };
    let mut actions = Vec::new();
    shell.run_actions(&mut core, &mut actions);

    while shell.exit_code.is_none() {
        let now = Instant::now();
        // One scan of the actors' timers per turn of the loop (not per event).
        let core_deadline = core.next_deadline();
        let deadline = match (core_deadline, shell.next_watchdog) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        // A worker that was just sent calls usually answers within tens of µs: wait
        // for that briefly on the CPU instead of sleeping (a futex wake-up costs 10–50 µs
        // on a VM), and only then block.
        let spun = if std::mem::take(&mut shell.awaiting_worker) {
            spin_recv(&events, shell.config.supervisor.busy_poll)
        } else {
            None
        };
        let first = match (spun, deadline) {
            (Some(ev), _) => Ok(ev),
            (None, Some(d)) if d <= now => Err(RecvTimeoutError::Timeout),
            (None, Some(d)) => events.recv_timeout(d.saturating_duration_since(Instant::now())),
            (None, None) => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
        };
        match first {
            Ok(ev) => shell.on_event(ev, &mut core),
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => {
                return Err("every shell thread is gone".to_string());
            }
        }
        // Drain the burst: everything that arrived meanwhile goes into the same batches.
        for ev in events.try_iter().take(8192) {
            shell.on_event(ev, &mut core);
        }
        let now = Instant::now();
        // Timers set by this turn's events are seen at the top of the next turn.
        if core_deadline.is_some_and(|d| d <= now) {
            core.handle(Event::Tick, now);
        }
        shell.run_actions(&mut core, &mut actions);
        shell.tell_systemd(&core, now);
    }
    let code = shell.exit_code.unwrap_or(1);
    // Let the connection writers take the last replies (e.g. to `stop`) before the
    // process ends; a client that does not read gets at most a second.
    let give_up = Instant::now() + std::time::Duration::from_secs(1);
    while Instant::now() < give_up && shell.conns.values().any(|c| c.busy()) {
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
    std::thread::sleep(std::time::Duration::from_millis(5));
    Ok(code)
}

struct Shell {
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
    /// pid → (actor, epoch) of every worker not yet reaped.
    pids: HashMap<u32, (ActorId, u64)>,
    /// Exits reaped before their Spawned event arrived.
    early_exits: HashMap<u32, (WorkerExit, Instant)>,
    conns: HashMap<ConnId, ConnOut>,
    /// Connections whose client stopped sending, and when to forget them.
    half_closed: HashMap<ConnId, Instant>,
    /// Calls went to a worker in this turn of the loop (its answer is worth a short spin).
    awaiting_worker: bool,
    /// Reply lines gathered in this turn of the loop, per connection.
    outgoing: HashMap<ConnId, String>,
    spawn_tx: Sender<SpawnJob>,
    disk_tx: Sender<(ActorId, Files)>,
    logs: Vec<ActorLog>,
    fsync_tx: Sender<SyncRequest>,
    exit_code: Option<i32>,
}

impl Shell {
    fn on_event(&mut self, ev: ShellEvent, core: &mut Core) {
        let now = Instant::now();
        match ev {
            ShellEvent::Core(e) => core.handle(e, now),
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
                    return;
                }
                w.pid = Some(pid);
                w.server_name = Some(server_name);
                if std::mem::take(&mut w.kill_pending) {
                    spawn::kill_group(pid);
                }
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
            } => {
                let w = &mut self.workers.0[actor];
                if w.epoch == epoch {
                    w.outbox = Some(outbox);
                    w.server_name = None;
                }
            }
            ShellEvent::Reaped { pid, exit } => self.on_reaped(pid, exit, core),
            ShellEvent::ConnOpened { conn, conn_out } => {
                self.conns.insert(conn, conn_out);
            }
            ShellEvent::Refused { conn, line } => self.reply(conn, &line),
            ShellEvent::ConnClosed { conn } => {
                // The client stopped sending; it may still wait for replies (a
                // half-closed socket, as `socat` and `nc -N` leave it): close once it
                // has them all (or a write fails, or the grace ends).
                if self.conns.get(&conn).is_none_or(|c| c.owed() == 0) {
                    self.forget_conn(conn);
                } else {
                    self.half_closed.insert(conn, now + HALF_CLOSED_GRACE);
                }
                self.sweep_half_closed(now);
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
        let Some((actor, epoch)) = u32::try_from(pid).ok().and_then(|p| self.pids.remove(&p))
        else {
            if let Ok(p) = u32::try_from(pid) {
                self.early_exits.insert(p, (exit, Instant::now()));
            }
            return;
        };
        // Whatever the worker left in its process group (an exec actor's program, the
        // program's children) dies with it. The group id stays reserved while any member
        // lives, so this cannot reach another process.
        if pid > 1 {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        let w = &mut self.workers.0[actor];
        if w.epoch == epoch {
            w.reaped = true;
            w.outbox = None;
            if let Some(name) = w.server_name.take() {
                // Died before it connected: release the reader waiting in accept.
                spawn::abandon(name);
            }
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
        let Some(c) = self.conns.get(&conn) else {
            return;
        };
        c.answered();
        self.outgoing.entry(conn).or_default().push_str(line);
    }

    /// Drops a connection's output: once its writer thread has written what it holds,
    /// the socket closes and the client sees the end.
    fn forget_conn(&mut self, conn: ConnId) {
        self.conns.remove(&conn);
        self.half_closed.remove(&conn);
    }

    /// Forgets half-closed connections whose grace ran out.
    fn sweep_half_closed(&mut self, now: Instant) {
        let expired: Vec<ConnId> = self
            .half_closed
            .iter()
            .filter(|(_, t)| **t <= now)
            .map(|(c, _)| *c)
            .collect();
        for conn in expired {
            self.forget_conn(conn);
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
                prepare_actor(&new, a, &self.registry).map_err(bad)?,
            ));
        }
        let mut removed = Vec::new();
        for old in &self.config.actors {
            if new.actor(&old.name).is_none()
                && let Some(id) = core.actor_id(&old.name)
            {
                core.retire_actor(id);
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
        let mut gone = Vec::new();
        for (conn, text) in self.outgoing.drain() {
            if let Some(c) = self.conns.get(&conn)
                && !c.send(text)
            {
                gone.push(conn);
            }
        }
        for conn in gone {
            self.forget_conn(conn);
        }
        // Half-closed connections that now have every reply are done.
        let done: Vec<ConnId> = self
            .half_closed
            .keys()
            .filter(|c| self.conns.get(c).is_none_or(|c| c.owed() == 0))
            .copied()
            .collect();
        for conn in done {
            self.forget_conn(conn);
        }
    }

    fn execute(&mut self, actions: &mut Vec<Action>, core: &mut Core) {
        for action in actions.drain(..) {
            match action {
                Action::Append { actor, calls } => {
                    let (Some(first), Some(last)) = (calls.first(), calls.last()) else {
                        continue;
                    };
                    let (from, upto) = (first.seq, last.seq);
                    let log = &mut self.logs[actor];
                    let event = match log.append(&calls) {
                        Ok(()) => {
                            if self.actor_configs[actor].policy.durability == Durability::Fsync
                                && let Some(file) = log.sync_handle()
                            {
                                let _ = self.fsync_tx.send(SyncRequest { actor, upto, file });
                            }
                            Event::Logged { actor, upto }
                        }
                        Err(error) => Event::LogFailed {
                            actor,
                            from,
                            upto,
                            error,
                        },
                    };
                    core.handle(event, Instant::now());
                }
                Action::TruncateLog { actor, upto } => self.logs[actor].truncate(upto),
                Action::Cancel {
                    actor,
                    seq,
                    cancelled,
                } => {
                    let log = &mut self.logs[actor];
                    match log.cancel(seq, &cancelled) {
                        Ok(()) => {
                            if self.actor_configs[actor].policy.durability == Durability::Fsync
                                && let Some(file) = log.sync_handle()
                            {
                                let _ = self.fsync_tx.send(SyncRequest {
                                    actor,
                                    upto: seq,
                                    file,
                                });
                            }
                        }
                        Err(e) => {
                            tracing::error!(actor = %self.config_actor(actor).name, error = %e, ?cancelled, "cannot write a tombstone for refused calls; a supervisor restart would replay them");
                            core.handle(Event::TombstoneFailed { actor, seq }, Instant::now());
                        }
                    }
                }
                Action::Reply { conn, line } => self.reply(conn, &line),
                Action::Spawn { actor, epoch } => {
                    let w = &mut self.workers.0[actor];
                    *w = WorkerSlot {
                        epoch,
                        ..WorkerSlot::default()
                    };
                    let a = &self.config_actor(actor);
                    let f = &self.files[actor];
                    let launched = &self.launches[actor];
                    let job = SpawnJob {
                        actor,
                        epoch,
                        name: a.name.clone(),
                        kind: a.kind.clone(),
                        mmap_path: f.mmap.clone(),
                        disk_path: f.disk.clone(),
                        checkpoint_every: a.policy.checkpoint_every,
                        exec: launched.exec.clone(),
                        privileges: launched.privileges.clone(),
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
                Action::SendCalls {
                    actor,
                    epoch,
                    calls,
                } => {
                    let Some(outbox) = self.outbox(actor, epoch) else {
                        continue;
                    };
                    // ipc-channel asserts (panics) when it cannot create the shared
                    // memory of a large batch (no fds or memory left): never let that
                    // take the main loop down.
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
                    self.awaiting_worker = true;
                    if !sent {
                        // The batch counts as in flight: only a new worker can take it.
                        let w = &self.workers.0[actor];
                        if !w.reaped
                            && let Some(pid) = w.pid
                        {
                            spawn::kill_group(pid);
                        }
                    }
                }
                Action::RequestCheckpoint { actor, epoch } => {
                    if let Some(outbox) = self.outbox(actor, epoch) {
                        let _ = outbox.send(ToWorker::Checkpoint);
                    }
                }
                Action::Ping { actor, epoch } => {
                    if let Some(outbox) = self.outbox(actor, epoch) {
                        let _ = outbox.send(ToWorker::Ping);
                    }
                }
                Action::StopWorker { actor, epoch } => {
                    if let Some(outbox) = self.outbox(actor, epoch) {
                        let _ = outbox.send(ToWorker::Stop);
                    }
                }
                Action::Kill { actor, epoch } => {
                    let w = &mut self.workers.0[actor];
                    if w.epoch == epoch && !w.reaped {
                        match w.pid {
                            Some(pid) => {
                                spawn::kill_group(pid);
                            }
                            // Not started yet: kill it as soon as its pid is known.
                            None => w.kill_pending = true,
                        }
                    }
                }
                Action::SyncDisk { actor } => {
                    let _ = self.disk_tx.send((actor, self.files[actor].clone()));
                }
                Action::Configure {
                    actor,
                    epoch,
                    checkpoint_every,
                } => {
                    if let Some(outbox) = self.outbox(actor, epoch) {
                        let _ = outbox.send(ToWorker::Configure { checkpoint_every });
                    }
                }
                Action::Reload { origin } => {
                    let result = self.reload(core, Instant::now());
                    core.answer(&origin, result);
                }
                Action::Exit { code } => self.exit_code = Some(code),
            }
        }
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
) -> Result<(ActorSpec, Files, ActorLog, Launched), String> {
    // An exec actor's methods are its program's: the program refuses unknown ones.
    let methods = if a.kind == EXEC_KIND {
        None
    } else {
        let kind = registry
            .get(&a.kind)
            .ok_or_else(|| format!("actor {:?}: unknown kind {:?}", a.name, a.kind))?;
        Some(kind.methods())
    };
    let launched = launch::resolve(config, a).map_err(|e| e.join("\n"))?;
    let mmap = paths::mmap_file(config, &a.name);
    let disk = paths::disk_copy(config, &a.name);
    let scan = checkpoint::scan(&mmap, &disk);
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
    )
    .map_err(|e| format!("actor {:?}: call log: {e}", a.name))?;
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
    };
    let files = Files {
        name: a.name.clone(),
        mmap,
        disk,
    };
    Ok((spec, files, opened.log, launched))
}

fn lock_state_dir(config: &Config) -> Result<Flock<std::fs::File>, String> {
    let path = paths::lock_file(config);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open lock file {}: {e}", path.display()))?;
    // A worker of a supervisor that was just killed may hold a copy of the lock for a
    // moment (between fork and exec): retry briefly before giving up.
    let give_up = Instant::now() + std::time::Duration::from_secs(2);
    let mut file = file;
    loop {
        match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(lock) => return Ok(lock),
            Err((f, nix::errno::Errno::EWOULDBLOCK)) if Instant::now() < give_up => {
                file = f;
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err((_, e)) => {
                return Err(format!(
                    "state directory {} is in use by another supervisor (lock {}: {e})",
                    config.supervisor.state_dir.display(),
                    path.display()
                ));
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
