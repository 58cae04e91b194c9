//! The supervisor's I/O side, around the pure [`crate::core`]: one event loop (in
//! `run`) owns the control connections ([`conns`]) and the workers' report sockets
//! ([`reports`]); the few threads left (signals and reaping, spawners, disk copy, log
//! fsync, worker output) hand it [`ShellEvent`]s through a [`LoopTx`], which also wakes
//! the loop.

pub mod conns;
pub mod events;
pub mod forkserver;
pub mod http;
pub mod observe;
pub mod output;
pub mod reports;
pub mod standby;
pub mod sweep;

use std::os::unix::net::UnixStream;
use std::sync::Arc;

use ipc_channel::ipc::IpcSender;
use mio::{Token, Waker};

use resurgam_shared::ipc::{Init, ToWorker};

use crate::core::{ActorId, ConnId, Event};

/// Everything the shell threads tell the loop.
pub enum ShellEvent {
    Core(Event),
    Spawned {
        actor: ActorId,
        epoch: u64,
        pid: u32,
        server_name: String,
    },
    /// The worker said hello: its inbound channel, our end of its report socket, and
    /// the `Init` to send it.
    Connected {
        actor: ActorId,
        epoch: u64,
        outbox: IpcSender<ToWorker>,
        reports: UnixStream,
        init: Box<Init>,
    },
    /// The worker never connected (or sent a bad hello, or died first).
    BootstrapFailed {
        actor: ActorId,
        epoch: u64,
    },
    /// A standby worker was started (`server_name`: its bootstrap server).
    StandbySpawned {
        pid: u32,
        server_name: String,
        /// The pool's epoch when it asked for this standby.
        epoch: u64,
    },
    /// A standby worker said hello and waits for an actor.
    StandbyReady {
        pid: u32,
        outbox: IpcSender<ToWorker>,
        reports: UnixStream,
    },
    /// A standby worker could not be started (`pid`: the process, if there was one).
    StandbyFailed {
        pid: Option<u32>,
    },
    /// A new fork server runs an upgraded binary: standbys of the old one are replaced.
    ForkServerUpgraded {
        pid: u32,
    },
    Hangup,
    /// The log thread recorded in the manifest that the actor has a call log
    /// (`calllog::LogJob::Mark`).
    LogMarked {
        actor: ActorId,
    },
}

/// The loop is gone (it ended, or is ending).
#[derive(Debug)]
pub struct LoopGone;

/// How a thread hands the loop an event: a channel, plus a wake-up of its `epoll_wait`.
#[derive(Clone)]
pub struct LoopTx {
    tx: crossbeam_channel::Sender<ShellEvent>,
    waker: Arc<Waker>,
}

impl LoopTx {
    pub fn new(tx: crossbeam_channel::Sender<ShellEvent>, waker: Arc<Waker>) -> LoopTx {
        LoopTx { tx, waker }
    }

    pub fn send(&self, ev: ShellEvent) -> Result<(), LoopGone> {
        self.tx.send(ev).map_err(|_| LoopGone)?;
        // A failed wake-up (eventfd counter full) means one is pending anyway.
        let _ = self.waker.wake();
        Ok(())
    }
}

/// The loop's tokens: the listener, the waker, then connections and workers.
pub mod token {
    use super::*;

    pub const LISTENER: Token = Token(0);
    pub const WAKER: Token = Token(1);
    /// The metrics endpoint's listener (`metrics_listen`).
    pub const HTTP_LISTENER: Token = Token(2);
    /// SIGCHLD arrived (`reap::ChildSignals`).
    pub const CHILD: Token = Token(3);
    const DEATH_BASE: usize = 1 << 50;
    const WORKER_BASE: usize = 1 << 48;
    const HTTP_BASE: usize = 1 << 46;
    /// Metrics endpoint connections are numbered modulo this.
    pub const HTTP_CONNS: usize = 1 << 20;
    const CONN_BASE: usize = 16;

    pub fn conn(conn: ConnId) -> Token {
        Token(CONN_BASE + conn as usize)
    }

    pub fn worker(actor: ActorId) -> Token {
        Token(WORKER_BASE + actor)
    }

    /// A connection to the metrics endpoint.
    pub fn http(id: usize) -> Token {
        Token(HTTP_BASE + id % HTTP_CONNS)
    }

    /// The pidfd of an actor's worker (readable once the process has exited).
    pub fn death(actor: ActorId) -> Token {
        Token(DEATH_BASE + actor)
    }

    /// What a token stands for.
    pub enum Of {
        Listener,
        Waker,
        HttpListener,
        Child,
        Http(usize),
        Conn(ConnId),
        Worker(ActorId),
        Death(ActorId),
    }

    pub fn of(t: Token) -> Of {
        match t.0 {
            0 => Of::Listener,
            2 => Of::HttpListener,
            3 => Of::Child,
            n if n >= DEATH_BASE => Of::Death(n - DEATH_BASE),
            n if n >= WORKER_BASE => Of::Worker(n - WORKER_BASE),
            n if n >= HTTP_BASE => Of::Http(n - HTTP_BASE),
            n if n >= CONN_BASE => Of::Conn((n - CONN_BASE) as ConnId),
            _ => Of::Waker,
        }
    }
}
