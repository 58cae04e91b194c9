//! Standby workers: processes started and bootstrapped ahead of need, so that an actor
//! whose worker died (or a new actor) takes one that is already running instead of
//! waiting for a process start (exec, dynamic loading, the ipc bootstrap: milliseconds).
//!
//! A standby worker has said hello and waits for its `Init`; whatever identity, limits,
//! checkpoint or program an actor needs comes with that `Init`, so any standby suits any
//! actor. The pool refills itself after each use. It stops refilling after a run of
//! failed starts (and says so), and is emptied on reload (the binary may have been
//! upgraded) and at shutdown. Its processes die with the supervisor like any worker.

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
            if spawn_tx.send(SpawnJob::Standby).is_err() {
                return;
            }
            self.in_flight += 1;
        }
    }

    /// A ready standby, if any.
    pub fn take(&mut self) -> Option<Standby> {
        if self.closed {
            return None;
        }
        self.ready.pop()
    }

    /// A standby's process exists.
    pub fn spawned(&mut self, pid: u32, server_name: String) {
        self.in_flight = self.in_flight.saturating_sub(1);
        self.starting.insert(pid, server_name);
    }

    /// A standby said hello. Returns it back when the pool does not want it any more (the
    /// caller kills it).
    pub fn ready(&mut self, standby: Standby) -> Option<Standby> {
        if self.starting.remove(&standby.pid).is_none() || self.closed {
            return Some(standby);
        }
        self.failures = 0;
        if self.ready.len() >= self.wanted {
            return Some(standby);
        }
        self.ready.push(standby);
        None
    }

    /// A standby could not be started (`pid`: its process, if there was one).
    pub fn failed(&mut self, pid: Option<u32>) {
        match pid {
            Some(pid) => {
                self.starting.remove(&pid);
            }
            None => self.in_flight = self.in_flight.saturating_sub(1),
        }
        self.count_failure();
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

    /// Replaces every ready standby (after a reload: the binary on disk may be newer) and
    /// takes the new size; failures are forgotten.
    pub fn recycle(&mut self, wanted: usize, spawn_tx: &Sender<SpawnJob>) {
        self.wanted = wanted;
        self.failures = 0;
        for s in self.ready.drain(..) {
            spawn::kill_group(s.pid);
            self.retired.insert(s.pid);
        }
        self.fill(spawn_tx);
    }

    /// Stops the pool for good (shutdown): its processes are killed.
    pub fn close(&mut self) {
        if self.closed {
            return;
        }
        self.closed = true;
        for s in self.ready.drain(..) {
            spawn::kill_group(s.pid);
            self.retired.insert(s.pid);
        }
        for &pid in self.starting.keys() {
            spawn::kill_group(pid);
        }
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
