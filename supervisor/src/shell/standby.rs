//! Standby workers: processes started and bootstrapped ahead of need, so that an actor
//! whose worker died (or a new actor) takes one that is already running instead of
//! waiting for a process start (exec, dynamic loading, the ipc bootstrap: milliseconds).
//!
//! A standby worker has said hello and waits for its `Init`; whatever identity, limits,
//! checkpoint or program an actor needs comes with that `Init`, so any standby suits any
//! actor. The pool refills itself after each use. It stops refilling after a run of
//! failed starts (and says so; a reload tries again), takes its new size on reload, and
//! is emptied at shutdown. Its processes die with the supervisor like any worker.
//!
//! Only processes the pool still counts as its own are ever killed or counted: an event
//! about one it has already forgotten (reaped, or killed on purpose) is ignored, so a
//! pid that the kernel may have reused is never signalled.

use std::collections::{HashMap, HashSet};
use std::os::unix::net::UnixStream;

use crossbeam_channel::Sender;
use ipc_channel::ipc::IpcSender;

use resurgam_shared::ipc::ToWorker;

use crate::spawn::{self, SpawnJob};

/// After this many standby starts in a row fail, the pool stops refilling.
const MAX_FAILURES: u32 = 5;

/// A bootstrapped worker waiting for an actor.
pub struct Standby {
    pub pid: u32,
    pub outbox: IpcSender<ToWorker>,
    pub reports: UnixStream,
}

/// What the pool makes of a standby that said hello.
pub enum Hello {
    /// Kept, ready for an actor.
    Kept,
    /// One of the pool's, but not wanted any more: the caller kills it.
    Unwanted(Standby),
    /// Not (or no longer) the pool's: already reaped or killed; nothing to do.
    Unknown,
}

/// What a reaped pid was to the pool.
pub enum Reaped {
    /// Not one of the pool's.
    NotOurs,
    /// A standby (ready, starting, or retired): forgotten. The server name is that of a
    /// bootstrap still waiting in accept, to abandon.
    Ours(Option<String>),
}

#[derive(Default)]
pub struct StandbyPool {
    wanted: usize,
    ready: Vec<Standby>,
    /// Started and not ready yet: pid → bootstrap server name.
    starting: HashMap<u32, String>,
    /// Jobs handed to the spawners whose process is not known yet.
    in_flight: usize,
    /// Killed on purpose (reload, shutdown), not reaped yet.
    retired: HashSet<u32>,
    failures: u32,
    closed: bool,
    /// Bumped by [`StandbyPool::renew`]: a standby asked for before is not wanted.
    epoch: u64,
}

impl StandbyPool {
    pub fn new(wanted: usize) -> StandbyPool {
        let mut pool = StandbyPool::default();
        pool.wanted = wanted;
        pool
    }

    /// Starts standby workers until the pool holds (or is starting) as many as wanted.
    pub fn fill(&mut self, spawn_tx: &Sender<SpawnJob>) {
        if self.closed || self.failures >= MAX_FAILURES {
            return;
        }
        while self.ready.len() + self.starting.len() + self.in_flight < self.wanted {
            let job = SpawnJob::Standby { epoch: self.epoch };
            if spawn_tx.send(job).is_err() {
                return;
            }
            self.in_flight += 1;
        }
    }

    /// A ready standby, if any. A standby put to use ends a run of failures.
    pub fn take(&mut self) -> Option<Standby> {
        if self.closed {
            return None;
        }
        let taken = self.ready.pop();
        if taken.is_some() {
            self.failures = 0;
        }
        taken
    }

    /// A standby's process exists (asked for in pool epoch `epoch`). One asked for
    /// before a renewal is killed at once (it may run the old binary).
    pub fn spawned(&mut self, pid: u32, server_name: String, epoch: u64) {
        self.in_flight = self.in_flight.saturating_sub(1);
        if epoch != self.epoch {
            spawn::kill_group(pid);
            spawn::abandon(server_name);
            self.retired.insert(pid);
            return;
        }
        self.starting.insert(pid, server_name);
    }

    /// A standby said hello.
    pub fn ready(&mut self, standby: Standby) -> Hello {
        if self.starting.remove(&standby.pid).is_none() {
            return Hello::Unknown;
        }
        // (Failures are forgotten when a standby is put to use, not here: a standby that
        // says hello and dies must not make the pool start new ones forever.)
        if self.closed || self.ready.len() >= self.wanted {
            self.retired.insert(standby.pid);
            return Hello::Unwanted(standby);
        }
        self.ready.push(standby);
        Hello::Kept
    }

    /// A standby could not be started (`pid`: its process, if there was one). Returns
    /// whether the caller should kill that process (false: the pool no longer knows it).
    pub fn failed(&mut self, pid: Option<u32>) -> bool {
        match pid {
            Some(pid) => {
                if self.starting.remove(&pid).is_none() {
                    return false;
                }
                self.retired.insert(pid);
            }
            None => self.in_flight = self.in_flight.saturating_sub(1),
        }
        self.count_failure();
        pid.is_some()
    }

    fn count_failure(&mut self) {
        self.failures += 1;
        if self.failures == MAX_FAILURES {
            tracing::error!(
                failures = MAX_FAILURES,
                "standby workers keep failing to start; no more are started until a reload"
            );
        }
    }

    /// A process was reaped: forgets it if it was one of the pool's.
    pub fn reaped(&mut self, pid: u32) -> Reaped {
        if self.retired.remove(&pid) {
            return Reaped::Ours(None);
        }
        if let Some(name) = self.starting.remove(&pid) {
            self.count_failure();
            return Reaped::Ours(Some(name));
        }
        if let Some(i) = self.ready.iter().position(|s| s.pid == pid) {
            self.ready.swap_remove(i);
            // A ready standby that dies on its own is a failure too.
            self.count_failure();
            return Reaped::Ours(None);
        }
        Reaped::NotOurs
    }

    /// Takes a new size (reload): extra ready standbys are stopped, missing ones started;
    /// failures are forgotten.
    pub fn resize(&mut self, wanted: usize, spawn_tx: &Sender<SpawnJob>) {
        self.wanted = wanted;
        self.failures = 0;
        while self.ready.len() > wanted {
            if let Some(s) = self.ready.pop() {
                spawn::kill_group(s.pid);
                self.retired.insert(s.pid);
            }
        }
        self.fill(spawn_tx);
    }

    /// Replaces every standby ready or starting (they run an old binary): they are
    /// stopped and new ones started.
    pub fn renew(&mut self, spawn_tx: &Sender<SpawnJob>) {
        // Standbys asked for and not started yet may be forked by the old server: they
        // are killed when they show up.
        self.epoch += 1;
        self.retire_all();
        self.fill(spawn_tx);
    }

    /// Kills every standby ready or starting.
    fn retire_all(&mut self) {
        for s in self.ready.drain(..) {
            spawn::kill_group(s.pid);
            self.retired.insert(s.pid);
        }
        for (pid, _) in self.starting.drain() {
            spawn::kill_group(pid);
            self.retired.insert(pid);
        }
    }

    /// Standbys ready now.
    pub fn ready_count(&self) -> usize {
        self.ready.len()
    }

    /// Stops the pool for good (shutdown): its processes are killed.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        self.retire_all();
    }
}

impl Drop for StandbyPool {
    fn drop(&mut self) {
        for s in &self.ready {
            spawn::kill_group(s.pid);
        }
        for &pid in self.starting.keys() {
            spawn::kill_group(pid);
        }
    }
}
