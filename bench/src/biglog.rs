//! W9: recovery of large call logs (issue 9). The supervisor itself is killed with
//! `kill -9` and started again on the same directories, as a crash and a restart by
//! systemd would; what is measured is the restart: `run` started → the actor's first
//! reply, the peak memory (`VmHWM`) of the new supervisor and of the actor's new worker,
//! and the split of the time read from the supervisor's log.
//!
//! * `w9.log1M.*` (and `w9.log250k.*`, for the slope): a counter (`checkpoint_every = 0`, `checkpoint_interval = "0s"`, so
//!   the log holds every call) after 1,000,000 pipelined `incr`; recovery reads the whole
//!   log and replays it all.
//! * `w9.log1M_ckpt.*`: the same, then a `checkpoint` op and 1,000 more calls: the
//!   checkpoint truncates the log, so recovery reads the last segment only.
//! * `w9.log1M_kept.*`: the same, with the log left whole, as a crash between the
//!   checkpoint's disk copy and the truncation leaves it (the segments are hard-linked
//!   aside before the checkpoint and linked back after the kill): recovery reads 1 M
//!   records and replays 1,000, which separates reading from replaying.
//! * `w9.sparse3GiB.*`: a counter's last log segment extended by a 3 GiB hole (zeros,
//!   as `truncate -s` or a disk fault leaves it): the start must stay small and quick,
//!   and report the damage (the actor held DEAD with the reason).
//! * `w9.seg1GiB.*`: one valid segment of 1 GiB (1,024 `put`s of 1 MiB, written beside
//!   the supervisor's own records, owner record included), replayed in full.

use std::fs::{self, OpenOptions};
use std::io::{BufWriter, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use resurgam::Client;
use resurgam::shared::calllog::{self, LogRecord};

use super::harness::{ActorConf, LogTail, Sup, SupConf, log_fields};
use super::load::{Until, pipeline};
use super::stats::{hwm_rss_kib, unix_micros};
use super::workloads::{MIB, WINDOW, check_no_errors, ms};
use super::{BenchError, Better, Context, Ctx, Failure, Result};

/// Calls in the large log.
const CALLS: u64 = 1_000_000;
/// Calls after the checkpoint in `w9.log1M_ckpt`.
const AFTER_CHECKPOINT: u64 = 1_000;
/// The hole appended to a segment in `w9.sparse3GiB`.
const HOLE: u64 = 3 << 30;
/// The size of the valid segment of `w9.seg1GiB`, and of each of its values.
const BIG_SEGMENT: u64 = 1 << 30;
const BIG_VALUE: usize = MIB;
/// How long a restart may take before the benchmark gives up.
const RESTART_TIMEOUT: Duration = Duration::from_secs(600);

pub(crate) fn w9(ctx: &mut Ctx) -> Result<()> {
    if ctx.durability == "memory" {
        ctx.skipped.push(Failure {
            workload: "w9",
            error: "W9 measures call log recovery: it needs --durability log or fsync".into(),
        });
        return Ok(());
    }
    log_1m_all(ctx)?;
    sparse_segment(ctx)?;
    big_segment(ctx)
}

/// A supervisor with one actor that never checkpoints by itself.
fn start_one(ctx: &Ctx, name: &str, kind: &'static str) -> Result<Sup> {
    Sup::start(
        &ctx.exe,
        &SupConf {
            durability: ctx.durability,
            max_request_bytes: Some(4 * MIB as u64),
            busy_poll: ctx.busy_poll.clone(),
            runtime_on_tmpfs: false,
            actors: vec![
                ActorConf::new(name, kind)
                    .set("checkpoint_every", "0")
                    .set_str("checkpoint_interval", "0s"),
            ],
        },
        Duration::from_secs(60),
    )
}

/// The per-repeat figures of one restart.
#[derive(Default)]
struct Restart {
    /// `run` started → the first reply.
    serving: Vec<f64>,
    /// `run` started → 'call log recovered' logged (checkpoint scan and log read).
    read: Vec<f64>,
    /// `run` started → 'worker ready' logged.
    ready: Vec<f64>,
    /// 'worker ready' → the first reply (the replay, then the call).
    replay: Vec<f64>,
    replayed: Vec<f64>,
    records: Vec<f64>,
    sup_hwm: Vec<f64>,
    worker_hwm: Vec<f64>,
    /// The supervisor's peak before the kill (it held the same calls in memory).
    sup_hwm_before: Vec<f64>,
    log_mib: Vec<f64>,
}

impl Restart {
    fn rows(&self, ctx: &mut Ctx, id: &str, what: &str) {
        let rows: [(&str, String, &'static str, Better, &Vec<f64>); 10] = [
            (
                "serving_ms",
                format!("{what}: restart → first reply"),
                "ms",
                Better::Lower,
                &self.serving,
            ),
            (
                "read_ms",
                "  restart → 'call log recovered' (checkpoint + log read)".into(),
                "ms",
                Better::Lower,
                &self.read,
            ),
            (
                "ready_ms",
                "  restart → 'worker ready'".into(),
                "ms",
                Better::Lower,
                &self.ready,
            ),
            (
                "replay_ms",
                "  'worker ready' → first reply (replay + the call)".into(),
                "ms",
                Better::Lower,
                &self.replay,
            ),
            (
                "replayed",
                "  calls replayed ('worker ready' field)".into(),
                "calls",
                Better::Neither,
                &self.replayed,
            ),
            (
                "records",
                "  records recovered ('call log recovered' field)".into(),
                "records",
                Better::Neither,
                &self.records,
            ),
            (
                "log_mib",
                "  log segments on disk at the restart".into(),
                "MiB",
                Better::Neither,
                &self.log_mib,
            ),
            (
                "sup_hwm_mib",
                "  new supervisor's peak RSS (VmHWM) when serving".into(),
                "MiB",
                Better::Lower,
                &self.sup_hwm,
            ),
            (
                "worker_hwm_mib",
                "  new worker's peak RSS (VmHWM) when serving".into(),
                "MiB",
                Better::Lower,
                &self.worker_hwm,
            ),
            (
                "sup_hwm_before_mib",
                "  killed supervisor's peak RSS (it held the calls too)".into(),
                "MiB",
                Better::Lower,
                &self.sup_hwm_before,
            ),
        ];
        for (suffix, label, unit, better, samples) in rows {
            ctx.row(format!("{id}.{suffix}"), "W9", label, unit, better, samples);
        }
    }
}

/// The size of the files in `actor`'s log directory, and the blocks they take on disk
/// (both in bytes).
fn log_size(sup: &Sup, actor: &str) -> (u64, u64) {
    let dir = calllog::log_dir(&sup.state_dir(), actor);
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .fold((0, 0), |(len, disk), m| {
            (len + m.len(), disk + m.blocks() * 512)
        })
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / MIB as f64
}

/// Kills the supervisor, lets `damage` change its files, starts it again, and calls
/// `actor`'s `get` with `args` until it answers; records the figures into `into`;
/// returns the reply.
fn restart_and_measure(
    sup: &mut Sup,
    actor: &str,
    args: Value,
    into: &mut Restart,
    damage: impl FnOnce(&Sup) -> Result<()>,
) -> Result<Value> {
    into.sup_hwm_before
        .push(hwm_rss_kib(sup.pid()).map_or(f64::NAN, |(h, _)| h as f64 / 1024.0));
    sup.kill9()?;
    damage(sup)?;
    into.log_mib.push(mib(log_size(sup, actor).0));
    sup.restart()?;
    let reply = first_reply(sup, actor, "get", args)?;
    let serving_wall = SystemTime::now();
    let serving = sup.spawned_at.elapsed();
    let worker = sup.worker_pid(actor)?;
    let hwm = |pid: i32| hwm_rss_kib(pid).map_or(f64::NAN, |(h, _)| h as f64 / 1024.0);
    into.sup_hwm.push(hwm(sup.pid()));
    into.worker_hwm.push(hwm(worker));
    into.serving.push(ms(serving));
    let t0 = unix_micros(sup.spawned_wall);
    let since = |t: i64| (t - t0) as f64 / 1e3;
    let lines = LogTail::from_start(sup.log_path()).next_lines();
    let mut found = (None, None);
    for line in &lines {
        let (msg, a, ts) = log_fields(line);
        if a != actor {
            continue;
        }
        let f = &line["fields"];
        match (msg, ts) {
            ("call log recovered", Some(t)) => {
                into.read.push(since(t));
                into.records.push(f["records"].as_f64().unwrap_or(f64::NAN));
                found.0 = Some(t);
            }
            ("worker ready", Some(t)) if found.1.is_none() => {
                into.ready.push(since(t));
                into.replay
                    .push((unix_micros(serving_wall) - t) as f64 / 1e3);
                into.replayed.push(f["replay"].as_f64().unwrap_or(f64::NAN));
                found.1 = Some(t);
            }
            _ => {}
        }
    }
    if found.1.is_none() {
        return Err(BenchError::new(format!(
            "no 'worker ready' line for {actor} in {}",
            sup.log_path().display()
        )));
    }
    Ok(reply)
}

/// Calls `actor` until it answers (the supervisor may not listen yet); an error reply
/// ends the wait; gives up after [`RESTART_TIMEOUT`] with the last error.
fn first_reply(sup: &mut Sup, actor: &str, method: &str, args: Value) -> Result<Value> {
    let deadline = Instant::now() + RESTART_TIMEOUT;
    loop {
        let err = match Client::connect(sup.socket()) {
            Ok(mut c) => match c.call(actor, method, args.clone()) {
                Ok(v) => return Ok(v),
                Err(e) if e.is_unreachable() => e.to_string(),
                Err(e) => {
                    return Err(BenchError::new(format!(
                        "{actor} answered {method} after the restart with an error: {e}"
                    )));
                }
            },
            Err(e) => e.to_string(),
        };
        sup.check_running()?;
        if Instant::now() >= deadline {
            return Err(BenchError::new(format!(
                "{actor} did not answer within {RESTART_TIMEOUT:?} of the restart: {err}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// How `w9.log*` ends before the kill.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// No checkpoint: everything is replayed.
    NoCheckpoint,
    /// A checkpoint, then [`AFTER_CHECKPOINT`] calls.
    Checkpoint,
    /// The same, with the log's segments as they were before the checkpoint truncated it.
    CheckpointLogKept,
}

fn log_1m_all(ctx: &mut Ctx) -> Result<()> {
    // A quarter of the calls first: recovery should take a quarter of the time.
    log_calls(ctx, CALLS / 4, Ending::NoCheckpoint)?;
    for ending in [
        Ending::NoCheckpoint,
        Ending::Checkpoint,
        Ending::CheckpointLogKept,
    ] {
        log_calls(ctx, CALLS, ending)?;
    }
    Ok(())
}

/// Hard-links every segment of `actor`'s log into `aside`.
fn link_segments(sup: &Sup, actor: &str, aside: &Path) -> Result<()> {
    fs::create_dir_all(aside).ctx(|| format!("create {}", aside.display()))?;
    for seg in segments(sup, actor)? {
        let to = aside.join(seg.file_name().unwrap_or_default());
        fs::hard_link(&seg, &to).ctx(|| format!("link {} to {}", seg.display(), to.display()))?;
    }
    Ok(())
}

/// Links back into `actor`'s log the segments of `aside` that are gone from it.
fn restore_segments(sup: &Sup, actor: &str, aside: &Path) -> Result<()> {
    let dir = calllog::log_dir(&sup.state_dir(), actor);
    for e in fs::read_dir(aside).ctx(|| format!("list {}", aside.display()))? {
        let from = e.ctx(|| format!("list {}", aside.display()))?.path();
        let to = dir.join(from.file_name().unwrap_or_default());
        if !to.exists() {
            fs::hard_link(&from, &to)
                .ctx(|| format!("link {} to {}", from.display(), to.display()))?;
        }
    }
    Ok(())
}

fn log_calls(ctx: &mut Ctx, calls: u64, ending: Ending) -> Result<()> {
    let actor = "big";
    let mut r = Restart::default();
    let mut rates = Vec::new();
    for _ in 0..ctx.repeats.min(3) {
        let mut sup = start_one(ctx, actor, "counter")?;
        let aside = sup.state_dir().with_file_name("segments-aside");
        let mut c = sup.client()?;
        let o = pipeline(&mut c, actor, "incr", WINDOW, Until::Count(calls), |_| {
            json!(null)
        })?;
        check_no_errors(&o, "W9 calls")?;
        rates.push(o.rate());
        let mut expected = calls;
        if ending != Ending::NoCheckpoint {
            if ending == Ending::CheckpointLogKept {
                link_segments(&sup, actor, &aside)?;
            }
            c.checkpoint(actor).ctx(|| format!("checkpoint {actor}"))?;
            let o = pipeline(
                &mut c,
                actor,
                "incr",
                WINDOW,
                Until::Count(AFTER_CHECKPOINT),
                |_| json!(null),
            )?;
            check_no_errors(&o, "W9 calls after the checkpoint")?;
            expected += AFTER_CHECKPOINT;
        }
        drop(c);
        let v = restart_and_measure(&mut sup, actor, json!(null), &mut r, |sup| {
            if ending == Ending::CheckpointLogKept {
                restore_segments(sup, actor, &aside)?;
            }
            Ok(())
        })?;
        if v != json!(expected) {
            return Err(BenchError::new(format!(
                "{actor} answered {v} after the restart, expected {expected}: calls lost or doubled"
            )));
        }
    }
    let (id, what) = match ending {
        Ending::NoCheckpoint if calls != CALLS => {
            ("w9.log250k", "250 k logged calls, no checkpoint")
        }
        Ending::NoCheckpoint => ("w9.log1M", "1 M logged calls, no checkpoint"),
        Ending::Checkpoint => ("w9.log1M_ckpt", "1 M logged calls, checkpoint, 1,000 more"),
        Ending::CheckpointLogKept => (
            "w9.log1M_kept",
            "the same, the log not yet truncated (crash before the truncation)",
        ),
    };
    r.rows(ctx, id, what);
    ctx.row(
        format!("{id}.load_calls_per_s"),
        "W9",
        "  pipelined incr while the log was written",
        "calls/s",
        Better::Higher,
        &rates,
    );
    Ok(())
}

/// The segments of `actor`'s log, in order.
fn segments(sup: &Sup, actor: &str) -> Result<Vec<PathBuf>> {
    let dir = calllog::log_dir(&sup.state_dir(), actor);
    let list = calllog::list_segments(&dir).ctx(|| format!("list {}", dir.display()))?;
    Ok(list.into_iter().map(|(_, p)| p).collect())
}

/// `w9.sparse3GiB`: the last segment extended by a hole of [`HOLE`] bytes.
fn sparse_segment(ctx: &mut Ctx) -> Result<()> {
    let actor = "sp";
    let (mut settle, mut hwm, mut dead, mut disk_after) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut reason = String::new();
    for _ in 0..ctx.repeats.min(3) {
        let mut sup = start_one(ctx, actor, "counter")?;
        let mut c = sup.client()?;
        let o = pipeline(&mut c, actor, "incr", WINDOW, Until::Count(1000), |_| {
            json!(null)
        })?;
        check_no_errors(&o, "W9 calls before the hole")?;
        drop(c);
        sup.kill9()?;
        let last = segments(&sup, actor)?
            .pop()
            .ok_or_else(|| BenchError::new("no log segment after 1,000 logged calls"))?;
        let f = OpenOptions::new()
            .write(true)
            .open(&last)
            .ctx(|| format!("open {}", last.display()))?;
        let len = f
            .metadata()
            .ctx(|| format!("stat {}", last.display()))?
            .len();
        f.set_len(len + HOLE)
            .ctx(|| format!("extend {} by a hole", last.display()))?;
        drop(f);
        sup.restart()?;
        let deadline = Instant::now() + RESTART_TIMEOUT;
        let a = loop {
            if let Ok(status) = sup.client().and_then(|mut c| c.status().ctx(String::new)) {
                let a = status["actors"][0].clone();
                if a["state"] == "ALIVE" || a["state"] == "DEAD" {
                    break a;
                }
            }
            sup.check_running()?;
            if Instant::now() >= deadline {
                return Err(BenchError::new(format!(
                    "{actor} neither ALIVE nor DEAD {RESTART_TIMEOUT:?} after the restart"
                )));
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        settle.push(ms(sup.spawned_at.elapsed()));
        hwm.push(hwm_rss_kib(sup.pid()).map_or(f64::NAN, |(h, _)| h as f64 / 1024.0));
        dead.push(if a["state"] == "DEAD" { 1.0 } else { 0.0 });
        disk_after.push(mib(log_size(&sup, actor).1));
        reason = a["dead_reason"].as_str().unwrap_or("").to_string();
    }
    ctx.row(
        "w9.sparse3GiB.settled_ms",
        "W9",
        "3 GiB hole after a segment's records: restart → actor ALIVE or DEAD",
        "ms",
        Better::Lower,
        &settle,
    );
    ctx.row(
        "w9.sparse3GiB.sup_hwm_mib",
        "W9",
        "  new supervisor's peak RSS (VmHWM)",
        "MiB",
        Better::Lower,
        &hwm,
    );
    ctx.row(
        "w9.sparse3GiB.log_disk_mib",
        "W9",
        "  log directory's blocks on disk afterwards (quarantine included)",
        "MiB",
        Better::Neither,
        &disk_after,
    );
    if let Some(row) = ctx.row(
        "w9.sparse3GiB.dead",
        "W9",
        "  actor held DEAD (1) or ALIVE (0)",
        "",
        Better::Neither,
        &dead,
    ) {
        row.note = Some(format!("reason: {reason}"));
    }
    Ok(())
}

/// Appends `put` records of `value_len` bytes to `seg` (whose records end at seq `last`)
/// until it holds `size` bytes; returns the number of records written.
fn fill_segment(seg: &Path, last: u64, size: u64, value_len: usize) -> Result<u64> {
    let f = OpenOptions::new()
        .append(true)
        .open(seg)
        .ctx(|| format!("open {}", seg.display()))?;
    let mut len = f
        .metadata()
        .ctx(|| format!("stat {}", seg.display()))?
        .len();
    let mut w = BufWriter::with_capacity(4 * MIB, f);
    let args = serde_json::to_vec(&json!({"key": "big", "value": "x".repeat(value_len)}))
        .ctx(|| "encode a put".to_string())?;
    let mut buf = Vec::with_capacity(args.len() + 64);
    let mut n = 0;
    while len < size {
        buf.clear();
        calllog::encode_into(&mut buf, last + 1 + n, "put", &args);
        w.write_all(&buf)
            .ctx(|| format!("write {}", seg.display()))?;
        len += buf.len() as u64;
        n += 1;
    }
    w.into_inner()
        .map_err(|e| BenchError::new(format!("flush {}: {}", seg.display(), e.error())))?
        .sync_all()
        .ctx(|| format!("fsync {}", seg.display()))?;
    Ok(n)
}

/// The last record of a segment.
fn last_record(seg: &Path) -> Result<LogRecord> {
    let bytes = fs::read(seg).ctx(|| format!("read {}", seg.display()))?;
    let (records, _, stop) = calllog::decode_segment(&bytes);
    if let Some(s) = stop {
        return Err(BenchError::new(format!("{}: {s}", seg.display())));
    }
    records
        .into_iter()
        .last()
        .ok_or_else(|| BenchError::new(format!("{} holds no record", seg.display())))
}

/// `w9.seg1GiB`: one valid segment of 1 GiB, every record to replay.
fn big_segment(ctx: &mut Ctx) -> Result<()> {
    let actor = "kv";
    let mut r = Restart::default();
    let mut written = Vec::new();
    for _ in 0..ctx.repeats.min(2) {
        let mut sup = start_one(ctx, actor, "kv")?;
        sup.client()?
            .call(actor, "put", json!({"key": "n", "value": 1}))
            .ctx(|| format!("put into {actor}"))?;
        let mut n = 0;
        let v = restart_and_measure(&mut sup, actor, json!({"key": "n"}), &mut r, |sup| {
            let seg = segments(sup, actor)?
                .pop()
                .ok_or_else(|| BenchError::new("no log segment after a logged call"))?;
            let t = Instant::now();
            n = fill_segment(&seg, last_record(&seg)?.seq, BIG_SEGMENT, BIG_VALUE)?;
            written.push(ms(t.elapsed()));
            Ok(())
        });
        let v = v?;
        if v != json!(1) {
            return Err(BenchError::new(format!(
                "{actor} answered {v} for key n after the restart, expected 1"
            )));
        }
        let got = sup
            .client()?
            .call(actor, "len", json!(null))
            .ctx(|| format!("len of {actor}"))?;
        if got != json!(2) {
            return Err(BenchError::new(format!(
                "{actor} holds {got} keys after replaying {n} puts of one key, expected 2"
            )));
        }
    }
    r.rows(
        ctx,
        "w9.seg1GiB",
        "one valid 1 GiB segment (1,024 puts of 1 MiB)",
    );
    ctx.row(
        "w9.seg1GiB.write_ms",
        "W9",
        "  writing the segment (not part of the restart)",
        "ms",
        Better::Neither,
        &written,
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_filled_segment_continues_the_log_and_reaches_its_size() {
        let dir = tempfile::tempdir().unwrap();
        let seg = dir.path().join(calllog::segment_name(1));
        let mut first = Vec::new();
        calllog::encode_into(&mut first, 1, "put", br#"{"key":"n","value":1}"#);
        calllog::encode_into(&mut first, 2, "put", br#"{"key":"n","value":2}"#);
        fs::write(&seg, &first).unwrap();
        assert_eq!(last_record(&seg).unwrap().seq, 2);
        let n = fill_segment(&seg, 2, 10_000, 1000).unwrap();
        let len = fs::metadata(&seg).unwrap().len();
        assert!((10_000..11_100).contains(&len), "{len}");
        let found = calllog::recover(dir.path());
        assert!(found.lost.is_none(), "{:?}", found.problems);
        assert!(found.problems.is_empty(), "{:?}", found.problems);
        let seqs: Vec<u64> = found.records.iter().map(|r| r.seq).collect();
        assert_eq!(seqs, (1..=n + 2).collect::<Vec<_>>());
        assert_eq!(last_record(&seg).unwrap().seq, n + 2);
    }
}
