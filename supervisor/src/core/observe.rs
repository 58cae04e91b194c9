//! What the core counts (per-actor metrics) and what it tells (notices for the event
//! stream). Both are plain data updated where things happen; the shell writes the
//! metrics out and stamps, numbers and publishes the notices.

use std::time::Duration;

use crate::exit::WorkerExit;
use crate::metrics::{CALL_SECONDS, Counts, Histogram, RECOVERY_SECONDS};

use super::actor::{ActorState, Phase};
use super::{ActorId, Core};

/// Most notices kept between two drains by the shell (a core driven without a shell,
/// as in tests, must not grow without bound).
const MAX_NOTICES: usize = 4096;

/// One actor's counters.
#[derive(Debug)]
pub struct ActorMetrics {
    /// Calls answered, by outcome: `ok` or the error kind's name.
    pub outcomes: Counts,
    /// From a call's arrival to its answer (every outcome).
    pub latency: Histogram,
    /// Workers started again, by cause ([`death_cause`], or `operator`).
    pub restarts: Counts,
    /// From a worker's death to its successor serving.
    pub recovery: Histogram,
    /// Calls replayed into restarted workers.
    pub replayed: u64,
    /// Calls dropped as poison (they killed their worker `max_call_retries` times).
    pub poisoned: u64,
}

impl Default for ActorMetrics {
    fn default() -> Self {
        ActorMetrics {
            outcomes: Counts::default(),
            latency: Histogram::new(CALL_SECONDS),
            restarts: Counts::default(),
            recovery: Histogram::new(RECOVERY_SECONDS),
            replayed: 0,
            poisoned: 0,
        }
    }
}

/// Something an operator may want to hear about, as the core saw it.
#[derive(Debug, Clone, PartialEq)]
pub enum Notice {
    /// The actor's state changed.
    State {
        actor: ActorId,
        from: Phase,
        to: Phase,
    },
    /// The worker died: `reason` as `last_exit` says it, `cause` as the restart metric
    /// labels it; `restart_in` is the backoff, None when the actor goes DEAD instead.
    Died {
        actor: ActorId,
        pid: Option<u32>,
        reason: String,
        cause: &'static str,
        restart_in: Option<Duration>,
    },
    /// The actor gave up (restart intensity, a fatal worker error, a checkpoint gap).
    Dead { actor: ActorId, reason: String },
    /// A restarted worker serves again.
    Recovered {
        actor: ActorId,
        pid: Option<u32>,
        took: Duration,
        replayed: u64,
        generation: u64,
        last_seq: u64,
    },
    /// A call was dropped as poison.
    Poison {
        actor: ActorId,
        seq: u64,
        method: String,
        attempts: u32,
    },
}

/// What a worker's death is counted as: `hung`, `startup` (died before it was ready),
/// `program` (an exec actor's program failed), `signal`, `exit` (a non-zero status) or
/// `spawn` (no process could be started).
pub(super) fn death_cause(a: &ActorState) -> &'static str {
    if a.hung {
        "hung"
    } else if a.phase == Phase::Starting {
        "startup"
    } else if a.crash_reason.is_some() {
        "program"
    } else {
        match a.exit_status {
            Some(WorkerExit::Signal { .. }) => "signal",
            Some(WorkerExit::Code(_)) => "exit",
            None => "spawn",
        }
    }
}

/// Moves the actor to `to`, with a notice when that is a change (a free function, so
/// that it can be called while the actor is borrowed from the core).
pub(super) fn set_phase(notices: &mut Vec<Notice>, actor: ActorId, a: &mut ActorState, to: Phase) {
    // The actor's own transition clears the timers of the phase it leaves.
    let from = a.set_phase(to);
    if from != to {
        push(notices, Notice::State { actor, from, to });
    }
}

/// Records a notice for the shell (dropped past [`MAX_NOTICES`] undrained ones).
pub(super) fn push(notices: &mut Vec<Notice>, notice: Notice) {
    if notices.len() < MAX_NOTICES {
        notices.push(notice);
    }
}

impl Core {
    pub(super) fn notify(&mut self, notice: Notice) {
        push(&mut self.notices, notice);
    }

    /// The notices since the last call, oldest first.
    pub fn drain_notices(&mut self, into: &mut Vec<Notice>) {
        into.append(&mut self.notices);
    }

    /// Every actor ever configured (removed ones included: their counters stay), by id.
    pub fn actor_ids(&self) -> std::ops::Range<ActorId> {
        0..self.actors.len()
    }

    /// The actor's counters.
    pub fn actor_metrics(&self, id: ActorId) -> &ActorMetrics {
        &self.actors[id].metrics
    }

    /// The actor's calls waiting for an answer (queued, in flight or held for fsync).
    pub fn queue_depth(&self, id: ActorId) -> usize {
        self.actors[id].unanswered
    }

    /// True for an actor removed by a reload that has stopped.
    pub fn is_gone(&self, id: ActorId) -> bool {
        self.actors[id].gone()
    }

    /// When the core started.
    pub fn started(&self) -> std::time::Instant {
        self.started
    }

    /// Counts a call's answer for its actor (the origin of a call carries its actor and
    /// arrival; other requests' origins carry nothing).
    pub(super) fn count_answer(
        &mut self,
        call: Option<(ActorId, std::time::Instant)>,
        outcome: &'static str,
    ) {
        if let Some((actor, at)) = call
            && let Some(a) = self.actors.get_mut(actor)
        {
            a.metrics.outcomes.add(outcome, 1);
            a.metrics
                .latency
                .observe(self.now.saturating_duration_since(at));
        }
    }
}
