//! The metrics the shell keeps (checkpoints as workers report them, the call log's
//! fsync latency, connections) and the exposition of all of them, the core's included.
//! The names and labels are listed in `docs/observability.md`.

use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use crate::core::{ActorId, Core, Phase};
use crate::metrics::{
    AtomicHistogram, CHECKPOINT_SECONDS, Counts, Exposition, FSYNC_SECONDS, Histogram, Kind,
};

/// What the shell counts about one actor.
pub struct ActorIo {
    pub checkpoints: u64,
    pub checkpoint_failures: u64,
    /// Size of the newest checkpoint's state.
    pub checkpoint_bytes: u64,
    pub checkpoint_bytes_total: u64,
    pub checkpoint_seconds: Histogram,
}

impl Default for ActorIo {
    fn default() -> Self {
        ActorIo {
            checkpoints: 0,
            checkpoint_failures: 0,
            checkpoint_bytes: 0,
            checkpoint_bytes_total: 0,
            checkpoint_seconds: Histogram::new(CHECKPOINT_SECONDS),
        }
    }
}

/// The shell's counters.
pub struct ShellStats {
    /// By actor id (grown as reloads add actors).
    actors: Vec<ActorIo>,
    /// Shared with the fsync thread.
    pub fsync: Arc<AtomicHistogram>,
    started: SystemTime,
}

impl ShellStats {
    pub fn new() -> ShellStats {
        ShellStats {
            actors: Vec::new(),
            fsync: Arc::new(AtomicHistogram::new(FSYNC_SECONDS)),
            started: SystemTime::now(),
        }
    }

    fn actor(&mut self, id: ActorId) -> &mut ActorIo {
        if self.actors.len() <= id {
            self.actors.resize_with(id + 1, ActorIo::default);
        }
        &mut self.actors[id]
    }

    /// A worker wrote a checkpoint of `bytes` in `micros`.
    pub fn checkpointed(&mut self, id: ActorId, bytes: u64, micros: u64) {
        let a = self.actor(id);
        a.checkpoints += 1;
        a.checkpoint_bytes = bytes;
        a.checkpoint_bytes_total = a.checkpoint_bytes_total.saturating_add(bytes);
        a.checkpoint_seconds.observe(Duration::from_micros(micros));
    }

    pub fn checkpoint_failed(&mut self, id: ActorId) {
        self.actor(id).checkpoint_failures += 1;
    }
}

impl Default for ShellStats {
    fn default() -> Self {
        Self::new()
    }
}

/// The supervisor-wide numbers that live elsewhere in the shell.
pub struct Gauges {
    pub connections: usize,
    pub connections_accepted: u64,
    pub subscribers: usize,
    pub subscribers_dropped: u64,
    pub events: u64,
}

/// A per-actor counter family: name, help, value.
type Column<'f> = (&'static str, &'static str, &'f dyn Fn(ActorId) -> u64);

/// Writes one family with a sample per actor.
struct PerActor<'a> {
    core: &'a Core,
    ids: &'a [ActorId],
}

impl PerActor<'_> {
    /// One number per actor.
    fn value(
        &self,
        e: &mut Exposition,
        (name, kind): (&str, Kind),
        help: &str,
        value: &dyn Fn(ActorId) -> f64,
    ) {
        e.family(name, kind, help);
        for &id in self.ids {
            e.sample(name, &[("actor", self.core.actor_name(id))], value(id));
        }
    }

    /// A counter per actor and value of `label`.
    fn labelled<'m>(
        &self,
        e: &mut Exposition,
        (name, label): (&str, &str),
        help: &str,
        counts: &dyn Fn(ActorId) -> &'m Counts,
    ) {
        e.family(name, Kind::Counter, help);
        for &id in self.ids {
            for (value, n) in counts(id).iter() {
                let labels = [("actor", self.core.actor_name(id)), (label, value)];
                e.sample(name, &labels, n as f64);
            }
        }
    }

    /// A histogram per actor.
    fn histogram<'m>(
        &self,
        e: &mut Exposition,
        name: &str,
        help: &str,
        h: &dyn Fn(ActorId) -> &'m Histogram,
    ) {
        e.family(name, Kind::Histogram, help);
        for &id in self.ids {
            e.histogram(name, &[("actor", self.core.actor_name(id))], h(id));
        }
    }
}

/// Every metric in the Prometheus text format. `log_bytes` gives an actor's call log
/// size on disk.
pub fn render(
    core: &Core,
    stats: &ShellStats,
    gauges: &Gauges,
    log_bytes: impl Fn(ActorId) -> u64,
) -> String {
    let mut e = Exposition::new();
    let ids: Vec<ActorId> = core.actor_ids().filter(|&id| !core.is_gone(id)).collect();
    let no_io = ActorIo::default();
    let io = |id: ActorId| stats.actors.get(id).unwrap_or(&no_io);
    let m = |id: ActorId| core.actor_metrics(id);
    let each = PerActor { core, ids: &ids };

    each.labelled(
        &mut e,
        ("resurgam_calls_total", "outcome"),
        "Calls answered, by outcome (ok, or the error kind of the reply).",
        &|id| &m(id).outcomes,
    );
    each.histogram(
        &mut e,
        "resurgam_call_duration_seconds",
        "From a call's arrival at the supervisor to its answer.",
        &|id| &m(id).latency,
    );
    each.value(
        &mut e,
        ("resurgam_queue_depth", Kind::Gauge),
        "Calls accepted and not answered yet (queued, running, or waiting for fsync).",
        &|id| core.queue_depth(id) as f64,
    );
    let name = "resurgam_actor_state";
    e.family(
        name,
        Kind::Gauge,
        "1 for the actor's current state, 0 for the others.",
    );
    for &id in &ids {
        let now = core.phase(id);
        for p in [
            Phase::Starting,
            Phase::Alive,
            Phase::Restarting,
            Phase::Dead,
            Phase::Stopped,
        ] {
            let labels = [("actor", core.actor_name(id)), ("state", p.as_str())];
            e.sample(name, &labels, f64::from(u8::from(p == now)));
        }
    }
    each.labelled(
        &mut e,
        ("resurgam_restarts_total", "cause"),
        "Workers started again, by cause: signal, exit (non-zero status), hung, startup \
         (died before ready), program (an exec actor's program failed), spawn, operator.",
        &|id| &m(id).restarts,
    );
    each.histogram(
        &mut e,
        "resurgam_recovery_duration_seconds",
        "From a worker's death to its successor serving (restore and replay included).",
        &|id| &m(id).recovery,
    );
    let counters: [Column<'_>; 5] = [
        (
            "resurgam_calls_replayed_total",
            "Logged calls replayed into restarted workers.",
            &|id| m(id).replayed,
        ),
        (
            "resurgam_poison_calls_total",
            "Calls dropped for killing their worker max_call_retries times.",
            &|id| m(id).poisoned,
        ),
        (
            "resurgam_checkpoints_total",
            "Checkpoints written by the actor's workers.",
            &|id| io(id).checkpoints,
        ),
        (
            "resurgam_checkpoint_failures_total",
            "Checkpoints a worker could not write.",
            &|id| io(id).checkpoint_failures,
        ),
        (
            "resurgam_checkpoint_written_bytes_total",
            "Bytes of state written by checkpoints.",
            &|id| io(id).checkpoint_bytes_total,
        ),
    ];
    for (name, help, value) in counters {
        each.value(&mut e, (name, Kind::Counter), help, &|id| value(id) as f64);
    }
    each.value(
        &mut e,
        ("resurgam_checkpoint_bytes", Kind::Gauge),
        "Size of the newest checkpoint's state.",
        &|id| io(id).checkpoint_bytes as f64,
    );
    each.histogram(
        &mut e,
        "resurgam_checkpoint_duration_seconds",
        "Time a worker took to write a checkpoint into its mapping.",
        &|id| &io(id).checkpoint_seconds,
    );
    each.value(
        &mut e,
        ("resurgam_calllog_bytes", Kind::Gauge),
        "Size of the actor's call log segments on disk.",
        &|id| log_bytes(id) as f64,
    );
    let name = "resurgam_calllog_fsync_duration_seconds";
    e.family(
        name,
        Kind::Histogram,
        "Time of one fsync of a call log (durability = \"fsync\"; one covers many calls).",
    );
    e.histogram(name, &[], &stats.fsync.snapshot());

    let supervisor: [(&str, Kind, &str, f64); 6] = [
        (
            "resurgam_connections",
            Kind::Gauge,
            "Control socket connections open.",
            gauges.connections as f64,
        ),
        (
            "resurgam_connections_accepted_total",
            Kind::Counter,
            "Control socket connections accepted.",
            gauges.connections_accepted as f64,
        ),
        (
            "resurgam_event_subscribers",
            Kind::Gauge,
            "Connections subscribed to the event stream.",
            gauges.subscribers as f64,
        ),
        (
            "resurgam_event_subscribers_dropped_total",
            Kind::Counter,
            "Subscribers dropped for not reading their events.",
            gauges.subscribers_dropped as f64,
        ),
        (
            "resurgam_events_total",
            Kind::Counter,
            "Events published.",
            gauges.events as f64,
        ),
        (
            "resurgam_uptime_seconds",
            Kind::Gauge,
            "Seconds since the supervisor started.",
            Instant::now()
                .saturating_duration_since(core.started())
                .as_secs_f64(),
        ),
    ];
    for (name, kind, help, value) in supervisor {
        e.family(name, kind, help);
        e.sample(name, &[], value);
    }
    if let Some(rss) = crate::metrics::resident_bytes() {
        let name = "process_resident_memory_bytes";
        e.family(
            name,
            Kind::Gauge,
            "Resident memory of the supervisor process.",
        );
        e.sample(name, &[], rss as f64);
    }
    let name = "process_start_time_seconds";
    e.family(
        name,
        Kind::Gauge,
        "Start time of the supervisor since the Unix epoch.",
    );
    let start = stats
        .started
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap_or_default();
    e.sample(name, &[], start.as_secs() as f64);
    let name = "resurgam_build_info";
    e.family(name, Kind::Gauge, "The running version (always 1).");
    e.sample(name, &[("version", env!("CARGO_PKG_VERSION"))], 1.0);
    e.finish()
}
