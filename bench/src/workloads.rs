//! The workloads W1–W6 of `resurgam bench` (see the module doc of `main.rs`; W7 is in
//! `python.rs`).

use std::collections::HashSet;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::{Value, json};

use resurgam::Client;
use resurgam::client::keyed_call_request;

use super::harness::{ActorConf, LogTail, Sup, SupConf, connect, log_fields, state_counts};
use super::load::{Outcome, Until, pipeline, pipeline_requests, sync_calls, sync_requests};
use super::stats::{cpu_ticks, micros, p50_p99, percentile, pss_rss_kib, unix_micros};
use super::{BenchError, Better, Context, Ctx, Result};

pub(crate) const MIB: usize = 1 << 20;
/// Largest value put in one request (the config caps a request line at 64 MiB).
const MAX_PART: usize = 32 * MIB;
/// Pipelining window of W2 (and of the bulk calls of W3).
pub(crate) const WINDOW: usize = 1000;

pub(crate) fn start(ctx: &Ctx, actors: Vec<ActorConf>, big_requests: bool) -> Result<Sup> {
    let timeout = Duration::from_secs(60 + actors.len() as u64 / 10);
    Sup::start(
        &ctx.exe,
        &SupConf {
            durability: ctx.durability,
            max_request_bytes: big_requests.then_some(64 * MIB as u64),
            busy_poll: ctx.busy_poll.clone(),
            runtime_on_tmpfs: false,
            actors,
        },
        timeout,
    )
}

fn counters(n: usize, prefix: &str) -> Vec<ActorConf> {
    (0..n)
        .map(|i| ActorConf::new(format!("{prefix}{i}"), "counter"))
        .collect()
}

/// The ALIVE counter actors of a running supervisor (for `--socket`).
pub(crate) fn external_counters(socket: &Path) -> Result<Vec<String>> {
    let status = connect(socket)?.status()?;
    let names: Vec<String> = status["actors"]
        .as_array()
        .map_or(&[][..], Vec::as_slice)
        .iter()
        .filter(|a| a["kind"] == "counter" && a["state"] == "ALIVE")
        .filter_map(|a| a["name"].as_str().map(str::to_string))
        .collect();
    if names.is_empty() {
        return Err(BenchError::new(format!(
            "the supervisor at {} has no ALIVE actor of kind counter to measure",
            socket.display()
        )));
    }
    Ok(names)
}

pub(crate) fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

// ---------------------------------------------------------------------------------------
// W1: synchronous round trip.

pub(crate) fn w1_own(ctx: &mut Ctx) -> Result<()> {
    let sup = start(ctx, counters(2, "c"), false)?;
    w1_sync(ctx, sup.socket(), "c0", Some("c1"))
}

/// A prefix that makes the keys of one run unique (across runs on one supervisor too).
fn key_prefix(tag: &str) -> String {
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    format!("{tag}-{}-{nanos}", std::process::id())
}

/// W1 on `actor`; the same calls with idempotency keys on `keyed` (another actor: the
/// keys it remembers make its checkpoints larger, which would weigh on `actor`'s own
/// figures), interleaved repeat by repeat.
pub(crate) fn w1_sync(
    ctx: &mut Ctx,
    socket: &Path,
    actor: &str,
    keyed: Option<&str>,
) -> Result<()> {
    let mut c = connect(socket)?;
    let calls = if ctx.quick { 1000 } else { 3000 };
    sync_calls(&mut c, actor, "incr", Until::Count(500), false, |_| {
        Value::Null
    })?;
    let (mut p50, mut p99, mut rate) = (Vec::new(), Vec::new(), Vec::new());
    let (mut keyed_p50, mut keyed_p99) = (Vec::new(), Vec::new());
    let keys = key_prefix("w1");
    for r in 0..ctx.repeats {
        let o = sync_calls(&mut c, actor, "incr", Until::Count(calls), false, |_| {
            Value::Null
        })?;
        check_no_errors(&o, "W1")?;
        rate.push(o.rate());
        let (a, b) = p50_p99(o.latencies_us);
        p50.push(a);
        p99.push(b);
        // The same calls, each with a key of its own, in the same run.
        if let Some(keyed) = keyed {
            let o = sync_requests(&mut c, Until::Count(calls), false, |i| {
                keyed_call_request(keyed, "incr", Value::Null, &format!("{keys}-{r}-{i}"))
            })?;
            check_no_errors(&o, "W1 keyed")?;
            let (a, b) = p50_p99(o.latencies_us);
            keyed_p50.push(a);
            keyed_p99.push(b);
        }
    }
    let what = format!("Rust client, 1 connection, {calls} calls per repeat");
    ctx.row(
        "w1.sync.p50_us",
        "W1",
        format!("sync call p50 ({what})"),
        "µs",
        Better::Lower,
        &p50,
    );
    ctx.row(
        "w1.sync.p99_us",
        "W1",
        "sync call p99",
        "µs",
        Better::Lower,
        &p99,
    );
    ctx.row(
        "w1.sync.calls_per_s",
        "W1",
        "sync calls/s, 1 client",
        "calls/s",
        Better::Higher,
        &rate,
    );
    if keyed.is_some() {
        ctx.row(
            "w1.sync_keyed.p50_us",
            "W1",
            "sync call p50, every call with an idempotency key",
            "µs",
            Better::Lower,
            &keyed_p50,
        );
        ctx.row(
            "w1.sync_keyed.p99_us",
            "W1",
            "sync call p99, every call with an idempotency key",
            "µs",
            Better::Lower,
            &keyed_p99,
        );
    }

    // The CLI: one `resurgam call` process per call.
    let per_repeat = if ctx.quick { 10 } else { 20 };
    let (mut cli_p50, mut cli_max) = (Vec::new(), Vec::new());
    for _ in 0..ctx.repeats {
        let mut lat = Vec::with_capacity(per_repeat);
        for _ in 0..per_repeat {
            let t = Instant::now();
            let status = Command::new(&ctx.exe)
                .arg("call")
                .arg("--socket")
                .arg(socket)
                .args([actor, "incr"])
                .env_remove("RESURGAM_SOCKET")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .ctx(|| format!("run {} call", ctx.exe.display()))?;
            let dt = t.elapsed();
            if !status.success() {
                return Err(BenchError::new(format!("`resurgam call` failed: {status}")));
            }
            lat.push(micros(dt));
        }
        lat.sort_by(f64::total_cmp);
        cli_p50.push(percentile(&lat, 0.5));
        cli_max.push(percentile(&lat, 1.0));
    }
    ctx.row(
        "w1.cli.p50_us",
        "W1",
        format!("`resurgam call` process, spawn to exit, p50 of {per_repeat}"),
        "µs",
        Better::Lower,
        &cli_p50,
    );
    ctx.row(
        "w1.cli.max_us",
        "W1",
        "`resurgam call` process, max",
        "µs",
        Better::Lower,
        &cli_max,
    );
    Ok(())
}

pub(crate) fn check_no_errors(o: &Outcome, what: &str) -> Result<()> {
    match &o.first_err {
        None => Ok(()),
        Some(e) => Err(BenchError::new(format!(
            "{what}: {} of {} calls were answered with an error, the first: {e}",
            o.err,
            o.ok + o.err
        ))),
    }
}

// ---------------------------------------------------------------------------------------
// W2: pipelined throughput.

pub(crate) fn w2_own(ctx: &mut Ctx) -> Result<()> {
    let sup = start(ctx, counters(9, "c"), false)?;
    let names: Vec<String> = (0..8).map(|i| format!("c{i}")).collect();
    w2_pipelined(ctx, sup.socket(), &names, Some("c8"))
}

/// W2 on `actors`; the 1 × 1 case with idempotency keys on `keyed`, an actor of its own
/// (see [`w1_sync`]).
pub(crate) fn w2_pipelined(
    ctx: &mut Ctx,
    socket: &Path,
    actors: &[String],
    keyed: Option<&str>,
) -> Result<()> {
    let window = ctx.window(1000);
    let mut c = connect(socket)?;
    pipeline(
        &mut c,
        &actors[0],
        "incr",
        WINDOW,
        Until::for_duration(window / 4),
        |_| Value::Null,
    )?;
    let (mut one, mut one_keyed) = (Vec::new(), Vec::new());
    let keys = key_prefix("w2");
    for r in 0..ctx.repeats {
        let o = pipeline(
            &mut c,
            &actors[0],
            "incr",
            WINDOW,
            Until::for_duration(window),
            |_| Value::Null,
        )?;
        check_no_errors(&o, "W2 1×1")?;
        one.push(o.rate());
        // The same calls, each with a key of its own, in the same run.
        if let Some(keyed) = keyed {
            let o = pipeline_requests(&mut c, WINDOW, Until::for_duration(window), |i| {
                keyed_call_request(keyed, "incr", Value::Null, &format!("{keys}-{r}-{i}"))
            })?;
            check_no_errors(&o, "W2 1×1 keyed")?;
            one_keyed.push(o.rate());
        }
    }
    ctx.row(
        "w2.pipe_1x1.calls_per_s",
        "W2",
        format!("pipelined, 1 actor × 1 client, window {WINDOW}"),
        "calls/s",
        Better::Higher,
        &one,
    );
    if keyed.is_some() {
        ctx.row(
            "w2.pipe_1x1_keyed.calls_per_s",
            "W2",
            format!("pipelined, 1 actor × 1 client, window {WINDOW}, every call with a key"),
            "calls/s",
            Better::Higher,
            &one_keyed,
        );
    }

    let clients = 8;
    let n_actors = actors.len().min(clients);
    let (mut total, mut per_actor) = (Vec::new(), Vec::new());
    for _ in 0..ctx.repeats {
        let deadline = Instant::now() + window;
        let outcomes: Vec<Result<Outcome>> = std::thread::scope(|s| {
            let handles: Vec<_> = (0..clients)
                .map(|i| {
                    let actor = &actors[i % n_actors];
                    s.spawn(move || {
                        let mut c = connect(socket)?;
                        pipeline(
                            &mut c,
                            actor,
                            "incr",
                            WINDOW,
                            Until::Deadline(deadline),
                            |_| Value::Null,
                        )
                    })
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(BenchError::new("a W2 client thread panicked")))
                })
                .collect()
        });
        let (mut calls, mut longest) = (0u64, Duration::ZERO);
        for o in outcomes {
            let o = o?;
            check_no_errors(&o, "W2 8×8")?;
            calls += o.ok;
            longest = longest.max(o.elapsed);
        }
        let rate = calls as f64 / longest.as_secs_f64().max(1e-9);
        total.push(rate);
        per_actor.push(rate / n_actors as f64);
    }
    ctx.row(
        "w2.pipe_8x8.calls_per_s",
        "W2",
        format!("pipelined, {n_actors} actors × {clients} clients, total"),
        "calls/s",
        Better::Higher,
        &total,
    );
    ctx.row(
        "w2.pipe_8x8.per_actor_calls_per_s",
        "W2",
        format!("pipelined, {n_actors} actors × {clients} clients, per actor"),
        "calls/s",
        Better::Higher,
        &per_actor,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// W3: recovery after SIGKILL, and exactly-once under repeated kills.

pub(crate) fn w3(ctx: &mut Ctx) -> Result<()> {
    w3_recovery(ctx)?;
    w3_exactly_once(ctx)
}

/// Makes `actor` (a kv) hold about `bytes` of state in values of at most 32 MiB.
pub(crate) fn fill_kv(c: &mut Client, actor: &str, bytes: usize) -> Result<()> {
    let parts = bytes.div_ceil(MAX_PART).max(1);
    let len = (bytes / parts).saturating_sub(24);
    for p in 0..parts {
        let value = "x".repeat(len);
        c.call(
            actor,
            "put",
            json!({"key": format!("big{p}"), "value": value}),
        )
        .ctx(|| format!("put {len} bytes into {actor}"))?;
    }
    Ok(())
}

pub(crate) fn put_n(i: u64) -> Value {
    json!({"key": "n", "value": i})
}

/// Timestamps (µs since the epoch) of the supervisor's log lines about one recovery.
pub(crate) struct Breakdown {
    pub(crate) died: i64,
    pub(crate) ready: i64,
    pub(crate) replay: u64,
}

/// Reads the log until it shows `actor`'s worker `pid` died and the next one is ready
/// (waits at most 2 s).
fn read_breakdown(tail: &mut LogTail, actor: &str, pid: i32) -> Option<Breakdown> {
    read_breakdown_with(tail, actor, pid, Duration::from_secs(2), |_| true)
}

/// [`read_breakdown`] that also hands every other message of `actor` to `other`, and
/// waits (at most `wait`) until `other` says it has seen what it needs.
pub(crate) fn read_breakdown_with(
    tail: &mut LogTail,
    actor: &str,
    pid: i32,
    wait: Duration,
    mut other: impl FnMut(&str) -> bool,
) -> Option<Breakdown> {
    let deadline = Instant::now() + wait;
    let (mut died, mut ready, mut complete) = (None, None, other(""));
    loop {
        for line in tail.next_lines() {
            let (msg, a, ts) = log_fields(&line);
            if a != actor {
                continue;
            }
            if msg.starts_with("worker died") && line["fields"]["pid"].as_i64() == Some(pid.into())
            {
                died = ts;
            } else if msg == "worker ready" && died.is_some() && ready.is_none() {
                ready = ts.map(|t| (t, line["fields"]["replay"].as_u64().unwrap_or(0)));
            } else {
                complete = other(msg);
            }
        }
        if let (Some(d), Some((r, n)), true) = (died, ready, complete) {
            return Some(Breakdown {
                died: d,
                ready: r,
                replay: n,
            });
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn w3_recovery(ctx: &mut Ctx) -> Result<()> {
    let sizes: [(&str, usize); 3] = [("1KiB", 1 << 10), ("1MiB", MIB), ("64MiB", 64 * MIB)];
    let replays: [u64; 3] = [0, 1_000, 100_000];
    let actors = sizes
        .iter()
        .map(|(label, _)| {
            // min_uptime: each kill below is measured as the first death of a worker
            // that stayed up, so the restart backoff (a policy delay, not a cost) is 0.
            ActorConf::new(format!("kv{label}"), "kv")
                .set("checkpoint_every", "0")
                .set_str("checkpoint_interval", "0s")
                .set_str("min_uptime", "20ms")
        })
        .collect();
    let sup = start(ctx, actors, true)?;
    let mut c = sup.client()?;
    for (label, bytes) in sizes {
        fill_kv(&mut c, &format!("kv{label}"), bytes)?;
    }
    for (label, bytes) in sizes {
        let actor = format!("kv{label}");
        for n in replays {
            let (mut total, mut detect, mut restart, mut after_ready) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            let mut replayed = Vec::new();
            for _ in 0..recovery_samples(ctx.repeats, bytes, n) {
                // A change, so the checkpoint below is a new one; then exactly n calls after it.
                c.call(&actor, "put", json!({"key": "n", "value": -1}))?;
                c.checkpoint(&actor).ctx(|| format!("checkpoint {actor}"))?;
                if n > 0 {
                    let o = pipeline(&mut c, &actor, "put", WINDOW, Until::Count(n), put_n)?;
                    check_no_errors(&o, "W3 calls to replay")?;
                }
                let pid = sup.worker_pid(&actor)?;
                // Past min_uptime (20 ms) since the worker became ready.
                std::thread::sleep(Duration::from_millis(40));
                let mut tail = LogTail::at_end(sup.log_path());
                let wall0 = SystemTime::now();
                let t0 = Instant::now();
                kill(Pid::from_raw(pid), Signal::SIGKILL)
                    .ctx(|| format!("kill -9 {pid} (worker of {actor})"))?;
                let v = c
                    .call(&actor, "get", json!({"key": "n"}))
                    .ctx(|| format!("first call to {actor} after the kill"))?;
                let dt = t0.elapsed();
                let wall1 = SystemTime::now();
                let expected = if n > 0 { json!(n - 1) } else { json!(-1) };
                if v != expected {
                    return Err(BenchError::new(format!(
                        "{actor} answered {v} after recovery, expected {expected}: state lost or doubled"
                    )));
                }
                total.push(ms(dt));
                match read_breakdown(&mut tail, &actor, pid) {
                    Some(b) => {
                        detect.push((b.died - unix_micros(wall0)) as f64 / 1e3);
                        restart.push((b.ready - b.died) as f64 / 1e3);
                        after_ready.push((unix_micros(wall1) - b.ready) as f64 / 1e3);
                        replayed.push(b.replay as f64);
                    }
                    None => ctx.notes.push(format!(
                        "W3 {actor} n={n}: no 'worker died'/'worker ready' log lines found for pid {pid}"
                    )),
                }
            }
            let id = format!("w3.recovery.{label}.{n}");
            let what = format!("kill → next reply, {label} state, {n} calls to replay");
            ctx.row(
                format!("{id}.total_ms"),
                "W3",
                what,
                "ms",
                Better::Lower,
                &total,
            );
            ctx.row(
                format!("{id}.detect_ms"),
                "W3",
                "  of which kill → 'worker died' logged",
                "ms",
                Better::Lower,
                &detect,
            );
            ctx.row(
                format!("{id}.restart_ms"),
                "W3",
                "  of which died → 'worker ready' (spawn + restore)",
                "ms",
                Better::Lower,
                &restart,
            );
            ctx.row(
                format!("{id}.replay_ms"),
                "W3",
                "  of which ready → reply (replay + the call)",
                "ms",
                Better::Lower,
                &after_ready,
            );
            if let Some(row) = ctx.row(
                format!("{id}.replayed"),
                "W3",
                "  calls replayed (log field)",
                "calls",
                Better::Neither,
                &replayed,
            ) {
                row.note = Some("includes the call sent after the kill".to_string());
            }
        }
    }
    Ok(())
}

/// How many kills W3 times for one case: `repeats`, or four times as many where a kill
/// costs little (up to 1 MiB of state and 1,000 calls to replay). One recovery of a
/// small worker takes about a millisecond, on a path that crosses four processes and as
/// many wake-ups of a vCPU, so five of them give a median that moves by a third from run
/// to run; twenty do not.
fn recovery_samples(repeats: usize, state_bytes: usize, replay: u64) -> usize {
    if state_bytes <= MIB && replay <= 1_000 {
        repeats * 4
    } else {
        repeats
    }
}

/// A small xorshift generator (kill timing only; no need for quality).
struct Rng(u64);

impl Rng {
    fn seeded() -> Rng {
        Rng(unix_micros(SystemTime::now()) as u64 | 1)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0 % n.max(1)
    }
}

/// Streams increments while killing the worker repeatedly; compares the counter's final
/// value with the increments that were acknowledged.
fn w3_exactly_once(ctx: &mut Ctx) -> Result<()> {
    let actor = "cnt";
    let sup = start(
        ctx,
        vec![
            ActorConf::new(actor, "counter")
                .set("checkpoint_every", "100")
                .set("max_call_retries", "-1"),
        ],
        false,
    )?;
    let mut c = sup.client()?;
    let kills_per_round: u64 = if ctx.quick { 5 } else { 10 };
    let (mut acked, mut lost, mut doubled, mut errors, mut kills) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.repeats {
        let before = c.call(actor, "get", Value::Null)?.as_i64().unwrap_or(0);
        let done = AtomicBool::new(false);
        let (killed, streamed) = std::thread::scope(|s| {
            let killer = s.spawn(|| {
                let mut rng = Rng::seeded();
                let mut n = 0u64;
                let r = (|| -> Result<()> {
                    while n < kills_per_round {
                        std::thread::sleep(Duration::from_millis(20 + rng.below(80)));
                        let pid = sup.worker_pid(actor)?;
                        kill(Pid::from_raw(pid), Signal::SIGKILL)
                            .ctx(|| format!("kill -9 {pid}"))?;
                        n += 1;
                    }
                    Ok(())
                })();
                done.store(true, Ordering::Relaxed);
                r.map(|()| n)
            });
            let streamer = s.spawn(|| {
                let r = (|| {
                    let mut c = sup.client()?;
                    pipeline(&mut c, actor, "incr", 200, Until::Flag(&done), |_| {
                        Value::Null
                    })
                })();
                // If the stream fails, stop the killer too.
                done.store(true, Ordering::Relaxed);
                r
            });
            let k = killer
                .join()
                .unwrap_or_else(|_| Err(BenchError::new("killer thread panicked")));
            let o = streamer
                .join()
                .unwrap_or_else(|_| Err(BenchError::new("stream thread panicked")));
            (k, o)
        });
        let (killed, o) = (killed?, streamed?);
        let after = c.call(actor, "get", Value::Null)?.as_i64().unwrap_or(0);
        let delta = after - before;
        let ok = i64::try_from(o.ok).unwrap_or(i64::MAX);
        acked.push(o.ok as f64);
        errors.push(o.err as f64);
        lost.push((ok - delta).max(0) as f64);
        doubled.push((delta - ok).max(0) as f64);
        kills.push(killed as f64);
        if let Some(e) = o.first_err {
            ctx.notes.push(format!(
                "W3 exactly-once: {} error replies, the first: {e}",
                o.err
            ));
        }
    }
    let sum = |v: &[f64]| v.iter().sum::<f64>();
    let totals = format!(
        "totals over {} rounds: {} kills, {} acknowledged, {} lost, {} doubled, {} errors",
        ctx.repeats,
        sum(&kills),
        sum(&acked),
        sum(&lost),
        sum(&doubled),
        sum(&errors)
    );
    ctx.row(
        "w3x.kills",
        "W3",
        "kill -9 during a stream of incr (per round)",
        "kills",
        Better::Neither,
        &kills,
    );
    ctx.row(
        "w3x.acked",
        "W3",
        "  increments acknowledged (per round)",
        "calls",
        Better::Neither,
        &acked,
    );
    ctx.row(
        "w3x.lost",
        "W3",
        "  lost increments (acknowledged, not in the counter)",
        "calls",
        Better::Lower,
        &lost,
    );
    ctx.row(
        "w3x.doubled",
        "W3",
        "  doubled increments (in the counter more than acknowledged)",
        "calls",
        Better::Lower,
        &doubled,
    );
    if let Some(row) = ctx.row(
        "w3x.errors",
        "W3",
        "  error replies",
        "calls",
        Better::Lower,
        &errors,
    ) {
        row.note = Some(totals);
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// W4: scale.

/// How a start of many actors went, from the supervisor's log.
struct StartLog {
    /// `run` spawned → the last 'worker ready', ms.
    total_ms: f64,
    /// 'supervisor starting' → the last 'worker ready', ms.
    internal_ms: f64,
    /// Workers killed for not being ready within startup_timeout, and other deaths.
    startup_timeouts: usize,
    deaths: usize,
}

/// Waits until the log shows `n` distinct actors ready; times from the log's timestamps.
fn wait_ready_by_log(sup: &mut Sup, n: usize, timeout: Duration) -> Result<StartLog> {
    let mut tail = LogTail::from_start(sup.log_path());
    let deadline = Instant::now() + timeout;
    let mut ready: HashSet<String> = HashSet::new();
    let (mut started, mut last) = (None, None);
    let (mut startup_timeouts, mut deaths) = (0, 0);
    loop {
        for line in tail.next_lines() {
            let (msg, actor, ts) = log_fields(&line);
            if msg == "worker ready" {
                ready.insert(actor.to_string());
                last = ts;
            } else if msg.starts_with("resurgam supervisor starting") {
                started = ts;
            } else if msg.starts_with("worker not ready within startup_timeout") {
                startup_timeouts += 1;
            } else if msg.starts_with("worker died") {
                deaths += 1;
            }
        }
        if ready.len() >= n {
            let last = last.ok_or_else(|| BenchError::new("log lines without timestamps"))?;
            let spawn = unix_micros(sup.spawned_wall);
            return Ok(StartLog {
                total_ms: (last - spawn) as f64 / 1e3,
                internal_ms: started.map_or(f64::NAN, |s| (last - s) as f64 / 1e3),
                startup_timeouts,
                deaths,
            });
        }
        sup.check_running()?;
        if Instant::now() >= deadline {
            let counts = sup
                .status()
                .map(|s| format!("{:?}", state_counts(&s)))
                .unwrap_or_else(|e| format!("status failed: {e}"));
            return Err(BenchError::new(format!(
                "only {} of {n} actors ready within {timeout:?} (status: {counts}); log tail:\n{}",
                ready.len(),
                sup.log_tail(2000)
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

pub(crate) fn w4_scale(ctx: &mut Ctx) -> Result<()> {
    let sizes: &[usize] = if ctx.quick { &[100] } else { &[100, 1000] };
    if ctx.quick {
        ctx.notes
            .push("W4: the 1,000-actor case was skipped (--quick)".to_string());
    }
    let mut first_error = None;
    for &n in sizes {
        if let Err(e) = w4_one(ctx, n) {
            ctx.notes.push(format!("W4 with {n} actors failed: {e}"));
            first_error.get_or_insert(e);
        }
    }
    first_error.map_or(Ok(()), Err)
}

fn w4_one(ctx: &mut Ctx, n: usize) -> Result<()> {
    let reps = if n >= 1000 {
        ctx.repeats.min(3)
    } else {
        ctx.repeats
    };
    let timeout = Duration::from_secs(if n >= 1000 { 180 } else { 60 });
    let conf = SupConf {
        durability: ctx.durability,
        max_request_bytes: None,
        busy_poll: ctx.busy_poll.clone(),
        runtime_on_tmpfs: false,
        actors: (0..n)
            .map(|i| ActorConf::new(format!("a{i:04}"), "counter"))
            .collect(),
    };
    let (mut total, mut internal, mut status_ms) = (Vec::new(), Vec::new(), Vec::new());
    let (mut timeouts, mut deaths) = (Vec::new(), Vec::new());
    for r in 0..reps {
        let mut sup = Sup::spawn(&ctx.exe, &conf)?;
        let started = wait_ready_by_log(&mut sup, n, timeout)?;
        sup.wait_all_alive(timeout)?;
        total.push(started.total_ms);
        internal.push(started.internal_ms);
        timeouts.push(started.startup_timeouts as f64);
        deaths.push(started.deaths as f64);
        status_ms.push(ms(sup.spawned_at.elapsed()));
        if r + 1 < reps {
            continue;
        }
        // Memory and idle CPU, once, on the last start.
        std::thread::sleep(Duration::from_secs(1));
        let workers = sup.worker_pids();
        let (sup_pss, sup_rss) = pss_rss_kib(sup.pid())
            .ok_or_else(|| BenchError::new("cannot read the supervisor's smaps_rollup"))?;
        let mut w_pss: Vec<f64> = Vec::new();
        let mut w_rss: Vec<f64> = Vec::new();
        for &pid in &workers {
            if let Some((p, r)) = pss_rss_kib(pid) {
                w_pss.push(p as f64);
                w_rss.push(r as f64);
            }
        }
        let sup0 = cpu_ticks(sup.pid()).unwrap_or(0);
        let w0: u64 = workers.iter().filter_map(|&p| cpu_ticks(p)).sum();
        let idle = Duration::from_secs(10);
        std::thread::sleep(idle);
        sup.check_running()?;
        let sup1 = cpu_ticks(sup.pid()).unwrap_or(0);
        let w1: u64 = workers.iter().filter_map(|&p| cpu_ticks(p)).sum();
        let sum_pss: f64 = w_pss.iter().sum();
        w_pss.sort_by(f64::total_cmp);
        w_rss.sort_by(f64::total_cmp);
        let id = format!("w4.n{n}");
        let one = |x: f64| [x];
        ctx.row(
            format!("{id}.sup_pss_kib"),
            "W4",
            format!("{n} actors: supervisor PSS"),
            "KiB",
            Better::Lower,
            &one(sup_pss as f64),
        );
        ctx.row(
            format!("{id}.sup_rss_kib"),
            "W4",
            format!("{n} actors: supervisor RSS"),
            "KiB",
            Better::Lower,
            &one(sup_rss as f64),
        );
        if let Some(row) = ctx.row(
            format!("{id}.worker_pss_kib"),
            "W4",
            format!("{n} actors: one worker's PSS (median over workers)"),
            "KiB",
            Better::Lower,
            &one(percentile(&w_pss, 0.5)),
        ) {
            row.note = Some(format!(
                "min {:.0}, max {:.0} over {} workers; all workers {:.1} MiB",
                percentile(&w_pss, 0.0),
                percentile(&w_pss, 1.0),
                w_pss.len(),
                sum_pss / 1024.0
            ));
        }
        ctx.row(
            format!("{id}.worker_rss_kib"),
            "W4",
            format!("{n} actors: one worker's RSS (median)"),
            "KiB",
            Better::Lower,
            &one(percentile(&w_rss, 0.5)),
        );
        if let Some(row) = ctx.row(
            format!("{id}.sup_idle_cpu_ticks"),
            "W4",
            format!("{n} actors: supervisor CPU while idle 10 s"),
            "ticks",
            Better::Lower,
            &one(sup1.saturating_sub(sup0) as f64),
        ) {
            row.note = Some(format!(
                "1 tick = {} ms",
                1000 / super::stats::clk_tck().max(1)
            ));
        }
        ctx.row(
            format!("{id}.workers_idle_cpu_ticks"),
            "W4",
            format!("{n} actors: all workers' CPU while idle 10 s"),
            "ticks",
            Better::Lower,
            &one(w1.saturating_sub(w0) as f64),
        ); // As many idle control connections as actors: neither may grow the supervisor
        // by a thread (issue 12: one event loop).
        let mut idle_conns = Vec::with_capacity(n);
        for _ in 0..n {
            match std::os::unix::net::UnixStream::connect(sup.socket()) {
                Ok(c) => idle_conns.push(c),
                Err(e) => {
                    ctx.notes.push(format!(
                        "W4: only {} idle connections: {e}",
                        idle_conns.len()
                    ));
                    break;
                }
            }
        }
        std::thread::sleep(Duration::from_secs(1));
        sup.check_running()?;
        if let Some((_, rss)) = pss_rss_kib(sup.pid()) {
            ctx.row(
                format!("{id}.sup_rss_with_conns_kib"),
                "W4",
                format!(
                    "{n} actors + {} idle connections: supervisor RSS",
                    idle_conns.len()
                ),
                "KiB",
                Better::Lower,
                &one(rss as f64),
            );
        }
        if let Some(threads) = thread_count(sup.pid()) {
            ctx.row(
                format!("{id}.sup_threads_with_conns"),
                "W4",
                format!(
                    "{n} actors + {} idle connections: supervisor threads",
                    idle_conns.len()
                ),
                "threads",
                Better::Lower,
                &one(threads as f64),
            );
        }
        drop(idle_conns);
    }
    // The same start with the runtime dir on a tmpfs, as under the packaged unit: a
    // fresh state dir creates one checkpoint file per actor there, and on a disk file
    // system that creation can cost more than the rest of the start.
    let tmpfs_conf = SupConf {
        runtime_on_tmpfs: true,
        ..conf
    };
    let mut tmpfs_total = Vec::new();
    for _ in 0..reps {
        let mut sup = Sup::spawn(&ctx.exe, &tmpfs_conf)?;
        tmpfs_total.push(wait_ready_by_log(&mut sup, n, timeout)?.total_ms);
    }
    let id = format!("w4.n{n}");
    ctx.row(
        format!("{id}.start_tmpfs_ms"),
        "W4",
        format!("{n} actors, runtime dir on a tmpfs: `run` spawned → last 'worker ready' logged"),
        "ms",
        Better::Lower,
        &tmpfs_total,
    );
    ctx.row(
        format!("{id}.start_ms"),
        "W4",
        format!("{n} actors: `run` spawned → last 'worker ready' logged"),
        "ms",
        Better::Lower,
        &total,
    );
    ctx.row(
        format!("{id}.start_internal_ms"),
        "W4",
        format!("{n} actors: 'supervisor starting' → last 'worker ready'"),
        "ms",
        Better::Lower,
        &internal,
    );
    ctx.row(
        format!("{id}.start_status_ms"),
        "W4",
        format!("{n} actors: `run` spawned → status shows all ALIVE (polled)"),
        "ms",
        Better::Lower,
        &status_ms,
    );
    ctx.row(
        format!("{id}.startup_timeout_kills"),
        "W4",
        format!("{n} actors: workers killed during the start, not ready within startup_timeout"),
        "workers",
        Better::Lower,
        &timeouts,
    );
    ctx.row(
        format!("{id}.startup_deaths"),
        "W4",
        format!("{n} actors: 'worker died' during the start"),
        "workers",
        Better::Lower,
        &deaths,
    );
    Ok(())
}

// ---------------------------------------------------------------------------------------
// W5: checkpoint cost.

pub(crate) fn w5_checkpoint(ctx: &mut Ctx) -> Result<()> {
    let policies: [(&str, &str); 3] = [("every_1", "1"), ("every_100", "100"), ("never", "0")];
    let mut actors: Vec<ActorConf> = policies
        .iter()
        .map(|(label, every)| {
            ActorConf::new(format!("ck_{label}"), "kv")
                .set("checkpoint_every", *every)
                .set_str("checkpoint_interval", "0s")
        })
        .collect();
    actors.push(
        ActorConf::new("big64", "kv")
            .set("checkpoint_every", "0")
            .set_str("checkpoint_interval", "0s"),
    );
    actors.push(ActorConf::new("other", "counter"));
    let sup = start(ctx, actors, true)?;
    let mut c = sup.client()?;
    for (label, _) in policies {
        let actor = format!("ck_{label}");
        fill_kv(&mut c, &actor, MIB)?;
        c.checkpoint(&actor).ctx(|| format!("checkpoint {actor}"))?;
    }
    fill_kv(&mut c, "big64", 64 * MIB)?;
    c.checkpoint("big64")
        .ctx(|| "checkpoint big64".to_string())?;

    let window = ctx.window(1000);
    for (label, _) in policies {
        let actor = format!("ck_{label}");
        let (mut sync_rate, mut pipe_rate) = (Vec::new(), Vec::new());
        for _ in 0..ctx.repeats {
            let o = sync_calls(
                &mut c,
                &actor,
                "put",
                Until::for_duration(window),
                false,
                put_n,
            )?;
            check_no_errors(&o, "W5")?;
            sync_rate.push(o.rate());
            let o = pipeline(
                &mut c,
                &actor,
                "put",
                64,
                Until::for_duration(window),
                put_n,
            )?;
            check_no_errors(&o, "W5")?;
            pipe_rate.push(o.rate());
        }
        let every = label.replace('_', " ");
        ctx.row(
            format!("w5.ckpt_{label}.sync_calls_per_s"),
            "W5",
            format!("1 MiB kv, checkpoint {every}: sync calls/s"),
            "calls/s",
            Better::Higher,
            &sync_rate,
        );
        ctx.row(
            format!("w5.ckpt_{label}.pipelined_calls_per_s"),
            "W5",
            format!("1 MiB kv, checkpoint {every}: pipelined calls/s (window 64)"),
            "calls/s",
            Better::Higher,
            &pipe_rate,
        );
    }

    // Checkpoint op round trips (1 MiB and 64 MiB) while another actor is called.
    let stop = AtomicBool::new(false);
    let socket = sup.socket();
    let (marks, other) = std::thread::scope(|s| {
        let caller = s.spawn(|| -> Result<Outcome> {
            let mut c2 = connect(socket)?;
            sync_calls(&mut c2, "other", "incr", Until::Flag(&stop), true, |_| {
                Value::Null
            })
        });
        let marks = (|| -> Result<Vec<(String, Instant, Instant, Instant)>> {
            let mut marks = Vec::new();
            for _ in 0..ctx.repeats {
                for (actor, label) in [("ck_never", "1MiB"), ("big64", "64MiB")] {
                    let quiet = Instant::now();
                    std::thread::sleep(Duration::from_millis(300));
                    c.call(actor, "put", json!({"key": "n", "value": 0}))?;
                    let t0 = Instant::now();
                    c.checkpoint(actor).ctx(|| format!("checkpoint {actor}"))?;
                    marks.push((label.to_string(), quiet, t0, Instant::now()));
                }
            }
            Ok(marks)
        })();
        stop.store(true, Ordering::Relaxed);
        let other = caller
            .join()
            .unwrap_or_else(|_| Err(BenchError::new("caller thread panicked")));
        (marks, other)
    });
    let (marks, other) = (marks?, other?);
    for label in ["1MiB", "64MiB"] {
        let (mut ck, mut during, mut during_max, mut base) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (_, quiet, t0, t1) in marks.iter().filter(|m| m.0 == label) {
            ck.push(ms(*t1 - *t0));
            let window = |from: Instant, to: Instant| -> Vec<f64> {
                other
                    .starts
                    .iter()
                    .zip(&other.latencies_us)
                    .filter(|(s, _)| **s >= from && **s < to)
                    .map(|(_, l)| *l)
                    .collect()
            };
            let mut d = window(*t0, *t1);
            d.sort_by(f64::total_cmp);
            during.push(percentile(&d, 0.99));
            during_max.push(percentile(&d, 1.0));
            let mut b = window(*quiet, *t0);
            b.sort_by(f64::total_cmp);
            base.push(percentile(&b, 0.99));
        }
        ctx.row(
            format!("w5.ckpt_op_{label}.ms"),
            "W5",
            format!("`checkpoint` op round trip, {label} kv (includes the disk copy's fsync)"),
            "ms",
            Better::Lower,
            &ck,
        );
        ctx.row(
            format!("w5.ckpt_op_{label}.other_p99_us"),
            "W5",
            "  p99 of another actor's sync calls during it",
            "µs",
            Better::Lower,
            &during,
        );
        ctx.row(
            format!("w5.ckpt_op_{label}.other_max_us"),
            "W5",
            "  max of another actor's sync calls during it",
            "µs",
            Better::Lower,
            &during_max,
        );
        ctx.row(
            format!("w5.ckpt_op_{label}.other_base_p99_us"),
            "W5",
            "  same actor's p99 in the 0.3 s before",
            "µs",
            Better::Lower,
            &base,
        );
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// W6: durability modes.

pub(crate) fn w6_durability(ctx: &mut Ctx) -> Result<()> {
    let modes = ["memory", "log", "fsync"];
    let actors = modes
        .iter()
        .map(|m| ActorConf::new(format!("d_{m}"), "counter").set_str("durability", m))
        .collect();
    let sup = start(ctx, actors, false)?;
    let socket = sup.socket();
    let window = ctx.window(1000);
    for mode in modes {
        let actor = format!("d_{mode}");
        for clients in [1usize, 16] {
            let (mut rate, mut p50, mut p99) = (Vec::new(), Vec::new(), Vec::new());
            for _ in 0..ctx.repeats {
                let deadline = Instant::now() + window;
                let outcomes: Vec<Result<Outcome>> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..clients)
                        .map(|_| {
                            let actor = actor.as_str();
                            s.spawn(move || {
                                let mut c = connect(socket)?;
                                sync_calls(
                                    &mut c,
                                    actor,
                                    "incr",
                                    Until::Deadline(deadline),
                                    false,
                                    |_| Value::Null,
                                )
                            })
                        })
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| {
                            h.join().unwrap_or_else(|_| {
                                Err(BenchError::new("a W6 client thread panicked"))
                            })
                        })
                        .collect()
                });
                let (mut lat, mut calls, mut longest) = (Vec::new(), 0u64, Duration::ZERO);
                for o in outcomes {
                    let o = o?;
                    check_no_errors(&o, "W6")?;
                    calls += o.ok;
                    longest = longest.max(o.elapsed);
                    lat.extend(o.latencies_us);
                }
                rate.push(calls as f64 / longest.as_secs_f64().max(1e-9));
                let (a, b) = p50_p99(lat);
                p50.push(a);
                p99.push(b);
            }
            let id = format!("w6.{mode}.c{clients}");
            ctx.row(
                format!("{id}.calls_per_s"),
                "W6",
                format!("durability {mode}, {clients} sync client(s): calls/s"),
                "calls/s",
                Better::Higher,
                &rate,
            );
            ctx.row(
                format!("{id}.p50_us"),
                "W6",
                format!("durability {mode}, {clients} sync client(s): p50"),
                "µs",
                Better::Lower,
                &p50,
            );
            ctx.row(
                format!("{id}.p99_us"),
                "W6",
                format!("durability {mode}, {clients} sync client(s): p99"),
                "µs",
                Better::Lower,
                &p99,
            );
        }
    }
    Ok(())
}

/// The number of threads of a process (`Threads:` in /proc/PID/status).
fn thread_count(pid: i32) -> Option<u64> {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|v| v.trim().parse().ok())
}
