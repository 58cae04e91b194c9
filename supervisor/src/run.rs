//! `resurgam run`: wires the shell threads around the core and runs the event loop.
//!
//! Order matters: signals are registered before any thread exists; the state directory
//! is locked before anything is touched; the control socket is bound last, once every
//! worker has been asked to start.

use std::collections::HashMap;
use std::time::Instant;

use crossbeam_channel::{RecvTimeoutError, Sender};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use resurgam_shared::checkpoint;
use resurgam_shared::config::Config;
use resurgam_shared::ipc::{ToWorker, calls_message};

use resurgam_shared::config::Durability;

use crate::calllog::{self, ActorLog, RealSink, SyncRequest};
use crate::control::{self, Access, SocketFile};
use crate::core::{Action, ActorId, ActorSpec, ConnId, Core, Event};
use crate::disk::{self, Files};
use crate::exit::WorkerExit;
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
        outbox: Sender<ToWorker>,
    },
    Reaped {
        pid: i32,
        exit: WorkerExit,
    },
    ConnOpened {
        conn: ConnId,
        replies: Sender<String>,
    },
    ConnClosed {
        conn: ConnId,
    },
    Hangup,
}

/// The shell's view of one actor's current worker.
#[derive(Default)]
struct WorkerSlot {
    epoch: u64,
    pid: Option<u32>,
    server_name: Option<String>,
    outbox: Option<Sender<ToWorker>>,
    reaped: bool,
}

/// Kills every worker still running when the loop ends, however it ends (G9; workers
/// also have PR_SET_PDEATHSIG for when the supervisor itself is killed).
struct KillOnDrop(Vec<WorkerSlot>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        for w in &self.0 {
            if let (Some(pid), false) = (w.pid, w.reaped) {
                let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
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
    let mut any_fsync = false;
    for a in &config.actors {
        let kind = registry
            .get(&a.kind)
            .ok_or_else(|| format!("actor {:?}: unknown kind {:?}", a.name, a.kind))?;
        let mmap = paths::mmap_file(&config, &a.name);
        let disk = paths::disk_copy(&config, &a.name);
        let scan = checkpoint::scan(&mmap, &disk);
        let start_seq = scan.chosen.as_ref().map_or(0, |(_, c)| c.last_seq);
        if let Some((source, c)) = &scan.chosen {
            tracing::info!(actor = %a.name, %source, generation = c.generation, last_seq = c.last_seq, "found checkpoint");
        }
        let fsync = a.policy.durability == Durability::Fsync;
        any_fsync |= fsync;
        let opened = ActorLog::open(&sup.state_dir, &a.name, fsync, Box::new(RealSink))
            .map_err(|e| format!("actor {:?}: call log: {e}", a.name))?;
        let (log, recovered, log_range) = (opened.log, opened.records, opened.range);
        for p in &opened.problems {
            tracing::error!(actor = %a.name, problem = %p, "call log recovery");
        }
        if !recovered.is_empty() {
            let after = recovered.iter().filter(|r| r.seq > start_seq).count();
            tracing::info!(actor = %a.name, records = recovered.len(), to_replay = after, "call log recovered");
        }
        logs.push(log);
        specs.push(ActorSpec {
            name: a.name.clone(),
            kind: a.kind.clone(),
            policy: a.policy.clone(),
            methods: kind.methods(),
            start_seq,
            recovered,
            log_range,
        });
        files.push(Files {
            name: a.name.clone(),
            mmap,
            disk,
        });
    }

    let (events_tx, events) = crossbeam_channel::unbounded::<ShellEvent>();
    let (spawn_tx, spawn_rx) = crossbeam_channel::unbounded::<SpawnJob>();
    let (disk_tx, disk_rx) = crossbeam_channel::unbounded::<ActorId>();
    reap::start(signals, events_tx.clone()).map_err(|e| format!("start signal thread: {e}"))?;
    spawn::start_spawner(spawn_rx, events_tx.clone())
        .map_err(|e| format!("start spawner thread: {e}"))?;
    disk::start(files.clone(), disk_rx, events_tx.clone())
        .map_err(|e| format!("start disk thread: {e}"))?;
    let (fsync_tx, fsync_rx) = crossbeam_channel::unbounded::<SyncRequest>();
    if any_fsync {
        calllog::start_fsync_thread(fsync_rx, events_tx.clone())
            .map_err(|e| format!("start fsync thread: {e}"))?;
    }

    let listener = control::bind(&sup.socket, sup.socket_mode)?;
    let _socket_file = SocketFile(sup.socket.clone());
    control::start(
        listener,
        Access {
            own_uid: nix::unistd::getuid().as_raw(),
            allowed_uids: sup.allowed_uids.clone(),
            max_request_bytes: sup.max_request_bytes,
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
    let mut shell = Shell {
        config: &config,
        files,
        workers: KillOnDrop(
            (0..config.actors.len())
                .map(|_| WorkerSlot::default())
                .collect(),
        ),
        pids: HashMap::new(),
        early_exits: HashMap::new(),
        conns: HashMap::new(),
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
        let first = match core.next_deadline() {
            Some(d) if d <= now => Err(RecvTimeoutError::Timeout),
            Some(d) => events.recv_timeout(d - now),
            None => events.recv().map_err(|_| RecvTimeoutError::Disconnected),
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
        if core.next_deadline().is_some_and(|d| d <= now) {
            core.handle(Event::Tick, now);
        }
        shell.run_actions(&mut core, &mut actions);
    }
    let code = shell.exit_code.unwrap_or(1);
    // Let the connection writers send the last replies (e.g. to `stop`).
    let writers: Vec<_> = shell.conns.drain().collect();
    drop(writers);
    std::thread::sleep(std::time::Duration::from_millis(20));
    Ok(code)
}

struct Shell<'a> {
    config: &'a Config,
    files: Vec<Files>,
    workers: KillOnDrop,
    /// pid → (actor, epoch) of every worker not yet reaped.
    pids: HashMap<u32, (ActorId, u64)>,
    /// Exits reaped before their Spawned event arrived.
    early_exits: HashMap<u32, WorkerExit>,
    conns: HashMap<ConnId, Sender<String>>,
    spawn_tx: Sender<SpawnJob>,
    disk_tx: Sender<ActorId>,
    logs: Vec<ActorLog>,
    fsync_tx: Sender<SyncRequest>,
    exit_code: Option<i32>,
}

impl Shell<'_> {
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
                    return;
                }
                w.pid = Some(pid);
                w.server_name = Some(server_name);
                self.pids.insert(pid, (actor, epoch));
                core.handle(Event::Spawned { actor, epoch, pid }, now);
                if let Some(exit) = self.early_exits.remove(&pid) {
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
            ShellEvent::ConnOpened { conn, replies } => {
                self.conns.insert(conn, replies);
            }
            ShellEvent::ConnClosed { conn } => {
                self.conns.remove(&conn);
            }
            ShellEvent::Hangup => {
                tracing::warn!(
                    "SIGHUP received: configuration reload is not supported yet; ignored"
                );
            }
        }
    }

    fn on_reaped(&mut self, pid: i32, exit: WorkerExit, core: &mut Core) {
        let Some((actor, epoch)) = u32::try_from(pid).ok().and_then(|p| self.pids.remove(&p))
        else {
            if let Ok(p) = u32::try_from(pid) {
                self.early_exits.insert(p, exit);
            }
            return;
        };
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

    fn outbox(&self, actor: ActorId, epoch: u64) -> Option<&Sender<ToWorker>> {
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
                return;
            }
            self.execute(actions, core);
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
                            if self.config.actors[actor].policy.durability == Durability::Fsync
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
                            if self.config.actors[actor].policy.durability == Durability::Fsync
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
                            tracing::error!(actor = %self.config.actors[actor].name, error = %e, ?cancelled, "cannot write a tombstone for refused calls; a supervisor restart would replay them");
                            core.handle(Event::Durable { actor, upto: seq }, Instant::now());
                        }
                    }
                }
                Action::Reply { conn, line } => {
                    if let Some(tx) = self.conns.get(&conn) {
                        let _ = tx.send(line);
                    }
                }
                Action::Spawn { actor, epoch } => {
                    let w = &mut self.workers.0[actor];
                    *w = WorkerSlot {
                        epoch,
                        ..WorkerSlot::default()
                    };
                    let a = &self.config.actors[actor];
                    let f = &self.files[actor];
                    let _ = self.spawn_tx.send(SpawnJob {
                        actor,
                        epoch,
                        name: a.name.clone(),
                        kind: a.kind.clone(),
                        mmap_path: f.mmap.clone(),
                        disk_path: f.disk.clone(),
                        checkpoint_every: a.policy.checkpoint_every,
                    });
                }
                Action::SendCalls {
                    actor,
                    epoch,
                    calls,
                } => {
                    let Some(outbox) = self.outbox(actor, epoch) else {
                        continue;
                    };
                    match calls_message(calls) {
                        Ok(msg) => {
                            let _ = outbox.send(msg);
                        }
                        Err(e) => {
                            tracing::error!(actor = %self.files[actor].name, error = %e, "cannot encode a call batch");
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
                    let w = &self.workers.0[actor];
                    if w.epoch == epoch
                        && !w.reaped
                        && let Some(pid) = w.pid
                    {
                        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
                    }
                }
                Action::SyncDisk { actor } => {
                    let _ = self.disk_tx.send(actor);
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

fn lock_state_dir(config: &Config) -> Result<Flock<std::fs::File>, String> {
    let path = paths::lock_file(config);
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| format!("open lock file {}: {e}", path.display()))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock).map_err(|(_, e)| {
        format!(
            "state directory {} is in use by another supervisor (lock {}: {e})",
            config.supervisor.state_dir.display(),
            path.display()
        )
    })
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
    config
        .actors
        .iter()
        .filter(|a| registry.get(&a.kind).is_none())
        .map(|a| {
            format!(
                "{}:{}: actor {:?}: unknown kind {:?} (known: {})",
                config.path.display(),
                a.kind_line,
                a.name,
                a.kind,
                registry.names().join(", ")
            )
        })
        .collect()
}
