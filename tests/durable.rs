//! G3 and G6 for the durable call log (ARCHITECTURE.md, Life of a call): SIGKILL of the supervisor itself under
//! pipelined load loses no acknowledged call and doubles none; torn and corrupt log
//! tails are reported and cut at the last good record; the log of an actor removed from
//! the config is kept; a full disk refuses calls without taking the supervisor down.

use std::collections::HashMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use resurgam::shared::calllog::{
    OWNER_METHOD, decode_segment, encode_into, list_segments, log_dir,
};
use resurgam::shared::protocol::ErrorKind;
use resurgam::{Client, ClientError};
use serde_json::{Value, json};

use crate::util::{
    BIN, Proc, Rng, StopOnDrop, Supervisor, expect_kind, is_connection_loss, proc_stat,
};

const WAIT: Duration = Duration::from_secs(20);

// ------------------------------------------------------------------------------------
// (a) SIGKILL of the supervisor under pipelined load.

const COUNTERS: [&str; 2] = ["c1", "c2"];
const ACTORS: [&str; 3] = ["c1", "c2", "kv"];
const CLIENTS: usize = 3;

fn chaos_config(durability: &str) -> String {
    format!(
        r#"
[supervisor]
durability = "{durability}"

[defaults]
checkpoint_every = 100
checkpoint_interval = "100ms"
max_call_retries = -1
backoff_initial = "1ms"
backoff_max = "20ms"

[[actor]]
name = "c1"
kind = "counter"

[[actor]]
name = "c2"
kind = "counter"

[[actor]]
name = "kv"
kind = "kv"
"#
    )
}

/// What one client thread saw across every supervisor run.
#[derive(Default)]
struct Seen {
    /// Replies to acknowledged `incr 1`, per counter.
    incr: HashMap<&'static str, Vec<i64>>,
    /// `incr 1` calls sent but never answered (their connection died), per counter.
    incr_unanswered: HashMap<&'static str, u64>,
    /// Acknowledged puts.
    puts: Vec<(String, String)>,
    /// Puts sent but never answered: each may or may not have taken effect.
    puts_unanswered: Vec<(String, String)>,
    /// Connections lost (one per supervisor kill this client was connected through).
    lost: usize,
}

enum Sent {
    Incr(&'static str),
    Put(String, String),
}

impl Seen {
    fn unanswered(&mut self, pending: HashMap<u64, Sent>) {
        for sent in pending.into_values() {
            match sent {
                Sent::Incr(a) => *self.incr_unanswered.entry(a).or_default() += 1,
                Sent::Put(k, v) => self.puts_unanswered.push((k, v)),
            }
        }
    }
}

/// Pipelines batches of `incr 1` and unique puts, reconnecting whenever the supervisor
/// is killed, until `stop`. Every reply must be a success.
fn load_client(
    sup: &Supervisor,
    t: usize,
    seed: u64,
    stop: &AtomicBool,
    acked: &AtomicUsize,
) -> Seen {
    let mut rng = Rng::new(seed);
    let mut seen = Seen::default();
    let mut n = 0u64;
    'connect: while !stop.load(Ordering::Relaxed) {
        // The supervisor may be dead or not listening yet: poll until it is.
        let Ok(mut c) = Client::connect(&sup.socket) else {
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        c.set_timeout(Some(WAIT)).expect("set timeout");
        while !stop.load(Ordering::Relaxed) {
            let batch = rng.range(1, 32);
            let mut pending: HashMap<u64, Sent> = HashMap::new();
            let mut send_failed = false;
            for _ in 0..batch {
                n += 1;
                let (req, sent) = match rng.range(0, 2) {
                    i @ 0..=1 => {
                        let actor = COUNTERS[i as usize];
                        (
                            json!({"op": "call", "actor": actor, "method": "incr", "args": 1}),
                            Sent::Incr(actor),
                        )
                    }
                    _ => {
                        let key = format!("t{t}-{n}");
                        let value = format!("v{t}-{n}-{}", rng.next_u64());
                        (
                            json!({"op": "call", "actor": "kv", "method": "put",
                                   "args": {"key": key, "value": value}}),
                            Sent::Put(key, value),
                        )
                    }
                };
                match c.send(req) {
                    Ok(id) => {
                        pending.insert(id, sent);
                    }
                    Err(e) => {
                        assert!(is_connection_loss(&e), "client {t}: send: {e}");
                        // It may have reached the supervisor in part: count it as sent.
                        pending.insert(u64::MAX - n, sent);
                        send_failed = true;
                        break;
                    }
                }
            }
            if send_failed || c.flush().is_err() {
                seen.lost += 1;
                seen.unanswered(pending);
                continue 'connect;
            }
            while !pending.is_empty() {
                let reply = match c.recv() {
                    Ok(r) => r,
                    Err(e) if is_connection_loss(&e) => {
                        seen.lost += 1;
                        seen.unanswered(pending);
                        continue 'connect;
                    }
                    // A reply line cut short by the supervisor's death: the call counts
                    // as unanswered if the connection then ends.
                    Err(ClientError::Protocol(p)) => match c.recv() {
                        Err(e) if is_connection_loss(&e) => {
                            seen.lost += 1;
                            seen.unanswered(pending);
                            continue 'connect;
                        }
                        other => panic!("client {t}: malformed reply {p} followed by {other:?}"),
                    },
                    Err(e) => panic!(
                        "client {t}: no reply ({} pending): {e}\n{}",
                        pending.len(),
                        sup.log_tail(60)
                    ),
                };
                let id = reply.id.as_u64().expect("numeric id");
                let sent = pending
                    .remove(&id)
                    .unwrap_or_else(|| panic!("client {t}: unexpected or duplicate reply {id}"));
                let result = reply.into_result().unwrap_or_else(|e| {
                    panic!("client {t}: call {id} failed: {e:?}\n{}", sup.log_tail(60))
                });
                acked.fetch_add(1, Ordering::Relaxed);
                match sent {
                    Sent::Incr(actor) => seen
                        .incr
                        .entry(actor)
                        .or_default()
                        .push(result.as_i64().expect("incr returns an integer")),
                    Sent::Put(key, value) => {
                        assert_eq!(result, Value::Null, "put of a fresh key {key}");
                        seen.puts.push((key, value));
                    }
                }
            }
        }
    }
    seen
}

/// SIGKILLs the supervisor and starts a new one on the same directories.
fn crash_and_restart(sup: &Supervisor) {
    sup.kill_supervisor();
    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
}

/// Sum of `recovered_from_log` over every actor in a status reply.
fn recovered_from_log(st: &Value) -> u64 {
    st["actors"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|a| a["recovered_from_log"].as_u64().unwrap_or(0))
        .sum()
}

/// Runs `kills` rounds (at least `min_kills`, more while within `budget`) of: load until
/// progress, wait a random moment, SIGKILL the supervisor (sometimes twice, the second
/// time during its recovery), restart it on the same directories. Then checks that
/// every acknowledged call is present exactly once and that the log stays bounded.
fn supervisor_kills_under_load(durability: &str, kills: usize, min_kills: usize, budget: Duration) {
    let seed = Rng::seed();
    eprintln!("durable ({durability}) seed = {seed}");
    let mut rng = Rng::new(seed);
    let started = Instant::now();
    let sup = Supervisor::start(&chaos_config(durability));
    for a in ACTORS {
        assert_eq!(sup.actor(a)["durability"], durability, "{}", sup.actor(a));
    }
    let stop = AtomicBool::new(false);
    let acked = AtomicUsize::new(0);
    let mut recovered_total = 0u64;

    let seens = std::thread::scope(|s| {
        // Stops the clients however this closure ends: on a panic, `scope` would wait
        // for them forever.
        let _stop_clients = StopOnDrop(&stop);
        let clients: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let (sup, stop, acked) = (&sup, &stop, &acked);
                s.spawn(move || load_client(sup, t, seed.wrapping_add(t as u64 + 1), stop, acked))
            })
            .collect();
        for round in 0..kills {
            if round >= min_kills && started.elapsed() > budget {
                break; // a slow machine: enough kills, keep the test short
            }
            // Let the clients make progress on this run, then pick a random moment.
            let base = acked.load(Ordering::Relaxed);
            let want = rng.range(1, 300) as usize;
            sup.wait_until(
                &format!("round {round}: {want} more acknowledged calls"),
                WAIT,
                || {
                    acked.load(Ordering::Relaxed) >= base + want
                        || clients.iter().any(|h| h.is_finished())
                },
            );
            assert!(
                !clients.iter().any(|h| h.is_finished()),
                "a client thread ended early"
            );
            std::thread::sleep(Duration::from_millis(rng.range(0, 150)));
            sup.kill_supervisor();
            if rng.range(0, 3) == 0 {
                // Sometimes kill it again in the middle of its recovery.
                sup.wait_state_dir_unlocked();
                sup.restart_same_dirs_no_wait();
                std::thread::sleep(Duration::from_millis(rng.range(0, 40)));
                sup.kill_supervisor();
            }
            sup.wait_state_dir_unlocked();
            sup.restart_same_dirs();
            recovered_total += recovered_from_log(&sup.status());
        }
        // Some load on the last run too, then stop the clients.
        let base = acked.load(Ordering::Relaxed);
        sup.wait_until("load on the last run", WAIT, || {
            acked.load(Ordering::Relaxed) >= base + 100 || clients.iter().any(|h| h.is_finished())
        });
        stop.store(true, Ordering::Relaxed);
        clients
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect::<Vec<Seen>>()
    });

    // The calls acknowledged on the last run must survive a kill too.
    crash_and_restart(&sup);
    recovered_total += recovered_from_log(&sup.status());
    let mut c = sup.client();

    let total_acked = acked.load(Ordering::Relaxed);
    let lost: usize = seens.iter().map(|s| s.lost).sum();
    eprintln!(
        "durable ({durability}): {total_acked} calls acknowledged over {} runs, {lost} connections lost, {recovered_total} records recovered from logs, {:?}",
        sup.run_count(),
        started.elapsed()
    );
    assert!(total_acked > 500, "too little load: {total_acked} calls");
    assert!(
        recovered_total > 0,
        "no run ever recovered a call from the log: is the log used?"
    );

    // Counters: acknowledged `incr 1` replies are distinct (nothing applied twice) and
    // the value covers every one of them (nothing acknowledged lost).
    for counter in COUNTERS {
        let mut values: Vec<i64> = seens
            .iter()
            .flat_map(|s| s.incr.get(counter).cloned().unwrap_or_default())
            .collect();
        values.sort_unstable();
        let dups: Vec<_> = values
            .windows(2)
            .filter(|w| w[0] == w[1])
            .take(10)
            .collect();
        assert!(
            dups.is_empty(),
            "{counter}: the same incr reply was acknowledged twice: {dups:?}"
        );
        let unanswered: u64 = seens
            .iter()
            .map(|s| s.incr_unanswered.get(counter).copied().unwrap_or(0))
            .sum();
        let value = c
            .call(counter, "get", Value::Null)
            .unwrap()
            .as_i64()
            .unwrap();
        let n = values.len() as i64;
        assert!(
            value >= n && value <= n + unanswered as i64,
            "{counter}: value {value}, but {n} increments were acknowledged and {unanswered} unanswered"
        );
        assert!(
            values.first().is_none_or(|&v| v >= 1) && values.last().is_none_or(|&v| v <= value),
            "{counter}: acknowledged replies {:?}..{:?} outside 1..={value}",
            values.first(),
            values.last()
        );
    }

    // kv: every acknowledged put is readable with its value; unanswered ones either
    // took effect with their value or not at all.
    let puts: Vec<&(String, String)> = seens.iter().flat_map(|s| &s.puts).collect();
    let maybe: Vec<&(String, String)> = seens.iter().flat_map(|s| &s.puts_unanswered).collect();
    let mut present_unanswered = 0usize;
    for (chunk, required) in puts
        .chunks(200)
        .map(|c| (c, true))
        .chain(maybe.chunks(200).map(|c| (c, false)))
    {
        let calls: Vec<(&str, &str, Value)> = chunk
            .iter()
            .map(|(k, _)| ("kv", "get", json!({"key": k})))
            .collect();
        let results = c.call_pipelined(&calls).unwrap();
        for ((k, v), r) in chunk.iter().zip(results) {
            let got = r.unwrap();
            if required {
                assert_eq!(got, json!(v), "kv: acknowledged put of {k} lost");
            } else if got != Value::Null {
                assert_eq!(got, json!(v), "kv: unanswered put of {k} has a wrong value");
                present_unanswered += 1;
            }
        }
    }
    assert_eq!(
        c.call("kv", "len", Value::Null).unwrap(),
        json!(puts.len() + present_unanswered),
        "kv len"
    );

    // Replays were deterministic; nothing corrupt was found; the logs stayed bounded.
    let st = sup.status();
    for a in st["actors"].as_array().unwrap() {
        assert_eq!(a["nondeterministic_replies"], 0, "{a}");
        assert!(
            a["checkpoint"]["generation"].as_u64().unwrap() > 0,
            "never checkpointed: {a}"
        );
    }
    let log = sup.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("call log recovery") && l.contains("corrupt")),
        "a SIGKILL of the supervisor left a corrupt log record:\n{}",
        log.lines()
            .filter(|l| l.contains("call log recovery"))
            .collect::<Vec<_>>()
            .join("\n")
    );
    let runs = sup.run_count();
    let mut counts = Vec::new();
    for a in ACTORS {
        let dir = log_dir(&sup.state_dir, a);
        let before = list_segments(&dir).unwrap().len();
        // Two checkpoints on disk cover every call logged before the first: the log
        // keeps no more than the segment being appended to (and perhaps one more).
        let probe = if a == "kv" { "len" } else { "get" };
        c.checkpoint(a).unwrap();
        c.call(a, probe, Value::Null).unwrap();
        c.checkpoint(a).unwrap();
        c.call(a, probe, Value::Null).unwrap();
        let segments = list_segments(&dir).unwrap();
        let entries: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        assert!(
            segments.len() <= 2,
            "{a}: {} log segments after {runs} runs and two checkpoints (was {before}): {entries:?}",
            segments.len(),
        );
        assert!(
            !entries.iter().any(|e| e.starts_with("quarantine")),
            "{a}: something was quarantined: {entries:?}"
        );
        counts.push((a, before, segments.len()));
    }
    eprintln!(
        "durable ({durability}): log segments (actor, at the end, after two checkpoints): {counts:?}"
    );
}

#[test]
fn supervisor_sigkill_under_load_log_mode_loses_and_doubles_nothing() {
    supervisor_kills_under_load("log", 25, 10, Duration::from_secs(20));
}

#[test]
fn supervisor_sigkill_under_load_fsync_mode_loses_and_doubles_nothing() {
    supervisor_kills_under_load("fsync", 10, 5, Duration::from_secs(10));
}

// ------------------------------------------------------------------------------------
// (b) Torn and corrupt log tails.

const KV_LOG_ONLY: &str = r#"
[supervisor]
durability = "log"

[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 0
checkpoint_interval = "0s"
"#;

/// Puts `k{i}` → `"v{i}"` for i in `range`, pipelined; all must succeed.
fn put_keys(c: &mut Client, prefix: &str, range: std::ops::Range<usize>) {
    let calls: Vec<(&str, &str, Value)> = range
        .map(|i| {
            (
                "kv",
                "put",
                json!({"key": format!("{prefix}{i}"), "value": format!("v{i}")}),
            )
        })
        .collect();
    for r in c.call_pipelined(&calls).unwrap() {
        assert_eq!(r.unwrap(), Value::Null);
    }
}

/// Asserts that `{prefix}{i}` holds `"v{i}"` for i in `present` and nothing for i in `absent`.
fn check_keys(
    c: &mut Client,
    prefix: &str,
    present: std::ops::Range<usize>,
    absent: std::ops::Range<usize>,
) {
    for i in present {
        assert_eq!(
            c.call("kv", "get", json!({"key": format!("{prefix}{i}")}))
                .unwrap(),
            json!(format!("v{i}")),
            "{prefix}{i} should be present"
        );
    }
    for i in absent {
        assert_eq!(
            c.call("kv", "get", json!({"key": format!("{prefix}{i}")}))
                .unwrap(),
            Value::Null,
            "{prefix}{i} should be absent"
        );
    }
}

/// The only segment of the kv actor's log, and the byte offset where each record starts
/// (plus the end).
fn only_segment(sup: &Supervisor) -> (PathBuf, Vec<u8>, Vec<usize>) {
    let segs = list_segments(&log_dir(&sup.state_dir, "kv")).unwrap();
    assert_eq!(segs.len(), 1, "expected one segment: {segs:?}");
    let path = segs[0].1.clone();
    let bytes = fs::read(&path).unwrap();
    let (records, good_len, stop) = decode_segment(&bytes);
    assert!(stop.is_none(), "segment damaged before the test: {stop:?}");
    assert_eq!(good_len as usize, bytes.len());
    let mut offsets = vec![0usize];
    for r in &records {
        let mut b = Vec::new();
        encode_into(&mut b, r.seq, &r.method, &r.args);
        offsets.push(offsets.last().unwrap() + b.len());
    }
    assert_eq!(*offsets.last().unwrap(), bytes.len());
    // The owner record the segment begins with is not a call.
    if records.first().is_some_and(|r| r.method == OWNER_METHOD) {
        offsets.remove(0);
    }
    (path, bytes, offsets)
}

/// The "call log recovery" lines of one supervisor run.
fn recovery_lines(sup: &Supervisor, run: u32) -> Vec<String> {
    sup.run_log(run)
        .lines()
        .filter(|l| l.contains("call log recovery"))
        .map(str::to_string)
        .collect()
}

#[test]
fn a_torn_log_tail_is_cut_and_everything_before_it_replayed() {
    let sup = Supervisor::start(KV_LOG_ONLY);
    let mut c = sup.client();
    put_keys(&mut c, "k", 0..40);
    assert_eq!(sup.actor("kv")["checkpoint"]["generation"], 0);
    sup.kill_supervisor();

    // Cut the last record in the middle of its body, like a crash mid-append.
    let (path, bytes, offsets) = only_segment(&sup);
    assert_eq!(offsets.len(), 41, "one record per put");
    let cut = offsets[39] + 13;
    fs::OpenOptions::new()
        .write(true)
        .open(&path)
        .unwrap()
        .set_len(cut as u64)
        .unwrap();
    assert!(cut < bytes.len());

    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
    let lines = recovery_lines(&sup, 2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("torn") && l.contains(&path.display().to_string())),
        "no report of the torn record:\n{}",
        sup.run_log(2)
    );
    let a = sup.actor("kv");
    assert_eq!(a["recovered_from_log"], 39, "{a}");
    let mut c = sup.client();
    check_keys(&mut c, "k", 0..39, 39..40);
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(39));

    // Appends continue after the good data: new calls survive another kill.
    put_keys(&mut c, "n", 0..5);
    crash_and_restart(&sup);
    assert!(
        recovery_lines(&sup, 3).is_empty(),
        "the log was still damaged after the first recovery:\n{}",
        sup.run_log(3)
    );
    let mut c = sup.client();
    check_keys(&mut c, "k", 0..39, 39..40);
    check_keys(&mut c, "n", 0..5, 0..0);
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(44));
}

#[test]
fn a_corrupt_log_record_holds_the_actor_dead_and_is_quarantined() {
    let sup = Supervisor::start(KV_LOG_ONLY);
    let mut c = sup.client();
    put_keys(&mut c, "k", 0..40);
    sup.kill_supervisor();

    // Flip one byte inside record 20 (0-based): records 0..20 stay good, record 20
    // fails its checksum, and records 21..40 (acknowledged) follow it.
    let (path, mut bytes, offsets) = only_segment(&sup);
    assert_eq!(offsets.len(), 41);
    let at = offsets[20] + 8 + 12; // inside the body: past seq and method length
    bytes[at] ^= 0x5a;
    fs::write(&path, &bytes).unwrap();

    sup.wait_state_dir_unlocked();
    sup.restart_until_serving();
    let a = sup.wait_state("kv", "DEAD", Duration::from_secs(20));
    let reason = a["dead_reason"].as_str().unwrap_or_default().to_string();
    assert!(
        reason.contains(&path.display().to_string())
            && reason.contains("checksum mismatch")
            && reason.contains("calls from seq 21 on")
            && reason.contains("restart kv --fresh"),
        "{a}"
    );
    let lines = recovery_lines(&sup, 2);
    assert!(
        lines
            .iter()
            .any(|l| l.contains("ERROR") && l.contains("corrupt")),
        "no loud report of the corrupt record:\n{}",
        sup.run_log(2)
    );
    assert!(
        lines.iter().any(|l| l.contains("quarantine")),
        "the report does not say where the damaged segment went:\n{}",
        lines.join("\n")
    );
    // The damaged segment was kept aside, byte for byte.
    let dir = log_dir(&sup.state_dir, "kv");
    let quarantines: Vec<PathBuf> = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("quarantine-")
        })
        .collect();
    assert_eq!(quarantines.len(), 1, "{quarantines:?}");
    let moved = quarantines[0].join(path.file_name().unwrap());
    assert_eq!(
        fs::read(&moved).unwrap_or_else(|e| panic!("{}: {e}", moved.display())),
        bytes,
        "the quarantined segment is not the damaged one"
    );
    // It stays DEAD across a restart of the supervisor, and a plain restart is refused.
    sup.restart_until_serving();
    sup.wait_state("kv", "DEAD", Duration::from_secs(20));
    let e = crate::util::remote_err(sup.client().restart("kv"));
    assert!(e.message.contains("--fresh"), "{e:?}");

    // The operator accepts the loss: the actor runs on from the last good record.
    let out = crate::util::cli(
        &[
            "restart",
            "kv",
            "--fresh",
            "--socket",
            sup.socket.to_str().unwrap(),
        ],
        &[],
    );
    assert!(out.status.success(), "{out:?}");
    let a = sup.wait_state("kv", "ALIVE", Duration::from_secs(20));
    assert_eq!(a["recovered_from_log"], 20, "{a}");
    assert!(
        sup.log()
            .contains("restart --fresh: the operator accepted the loss")
    );
    let mut c = sup.client();
    check_keys(&mut c, "k", 0..20, 20..40);
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(20));

    // New calls survive another SIGKILL and restart, with no new problem reported.
    put_keys(&mut c, "n", 0..5);
    crash_and_restart(&sup);
    let run = sup.run_count();
    assert!(
        recovery_lines(&sup, run).is_empty(),
        "the log was still damaged after the quarantine:\n{}",
        sup.run_log(run)
    );
    let mut c = sup.client();
    check_keys(&mut c, "k", 0..20, 20..40);
    check_keys(&mut c, "n", 0..5, 0..0);
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(25));
    assert!(moved.exists(), "the quarantined segment was deleted");
}

// ------------------------------------------------------------------------------------
// (c) The log of an actor that left the config.

fn two_counters(with_gone: bool) -> String {
    let mut body = String::from(
        r#"
[supervisor]
durability = "log"

[defaults]
checkpoint_every = 0
checkpoint_interval = "0s"

[[actor]]
name = "c"
kind = "counter"
"#,
    );
    if with_gone {
        body.push_str("\n[[actor]]\nname = \"gone\"\nkind = \"counter\"\n");
    }
    body
}

/// Every file under `dir` with its contents, sorted by path.
fn snapshot(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            out.extend(snapshot(&p));
        } else {
            out.push((p.clone(), fs::read(&p).unwrap()));
        }
    }
    out.sort();
    out
}

#[test]
fn the_log_of_a_removed_actor_is_kept_and_replayed_when_it_comes_back() {
    let sup = Supervisor::start(&two_counters(true));
    let mut c = sup.client();
    assert_eq!(c.call("gone", "incr", json!(7)).unwrap(), json!(7));
    assert_eq!(c.call("gone", "incr", json!(5)).unwrap(), json!(12));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(1));
    sup.kill_supervisor();
    let dir = log_dir(&sup.state_dir, "gone");
    let before = snapshot(&dir);
    assert!(!before.is_empty(), "no log files for \"gone\"");

    // Without it in the config: the log is kept untouched and reported.
    sup.write_config(&two_counters(false));
    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
    assert!(!sup.has_actor("gone"), "{}", sup.status());
    let mut c = sup.client();
    expect_kind(c.call("gone", "get", Value::Null), ErrorKind::UnknownActor);
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(2));
    let line = sup
        .run_log(2)
        .lines()
        .find(|l| l.contains("call log of an actor that is not in the config"))
        .map(str::to_string)
        .unwrap_or_else(|| panic!("orphan log not reported:\n{}", sup.run_log(2)));
    assert!(line.contains("gone"), "{line}");
    assert_eq!(snapshot(&dir), before, "the orphan log was changed");

    // Added back: its log is replayed.
    sup.write_config(&two_counters(true));
    crash_and_restart(&sup);
    let a = sup.actor("gone");
    assert_eq!(a["recovered_from_log"], 2, "{a}");
    let mut c = sup.client();
    assert_eq!(c.call("gone", "get", Value::Null).unwrap(), json!(12));
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(2));
}

// ------------------------------------------------------------------------------------
// (d) A full disk.

const FULL_DISK: &str = r#"
[supervisor]
durability = "log"

[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 0
checkpoint_interval = "0s"
"#;

/// Whether this process may create a mount namespace with a tmpfs (root, or enough
/// capabilities); the reason if not.
fn can_mount_tmpfs() -> Result<(), String> {
    let probe = tempfile::tempdir().map_err(|e| e.to_string())?;
    let mut cmd = std::process::Command::new("unshare");
    cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
        .arg(r#"mount -t tmpfs -o size=64k tmpfs "$1" && umount "$1""#)
        .arg("sh")
        .arg(probe.path());
    match crate::util::run_with_timeout(cmd, Duration::from_secs(10)) {
        out if out.status.success() => Ok(()),
        out => Err(format!(
            "cannot mount a tmpfs in a private mount namespace ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        )),
    }
}

/// The inode of a process's mount namespace.
fn mount_ns(pid: i32) -> Option<PathBuf> {
    fs::read_link(format!("/proc/{pid}/ns/mnt")).ok()
}

/// Writes zeros into `path` until the file system is full; returns the bytes written.
pub(crate) fn fill(path: &Path) -> u64 {
    use std::io::Write;
    let mut f = fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    let mut written = 0u64;
    loop {
        match f.write(&chunk) {
            Ok(0) => break,
            Ok(n) => written += n as u64,
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
            Err(e) => panic!("filling {}: {e}", path.display()),
        }
        assert!(written < 64 << 20, "the tmpfs never filled up");
    }
    written
}

/// Starts a supervisor on `body` in a mount namespace of its own, with a tmpfs of
/// `size` (as `mount -o size=` takes it) on the directory `dir` picks. Returns it and
/// that directory as the supervisor sees it (through `/proc/PID/root`), or `None`
/// (after reporting a skip) when this process cannot mount.
pub(crate) fn start_with_tmpfs(
    body: &str,
    size: &str,
    dir: fn(&Supervisor) -> &Path,
) -> Option<(Supervisor, PathBuf)> {
    if let Err(reason) = can_mount_tmpfs() {
        crate::util::skip(&reason);
        return None;
    }
    let sup = Supervisor::start_wrapped(body, |sup| {
        fs::create_dir_all(dir(sup)).unwrap();
        let mut cmd = std::process::Command::new("unshare");
        cmd.args(["--mount", "--propagation", "private", "sh", "-c"])
            .arg(r#"mount -t tmpfs -o size="$4",mode=0700 tmpfs "$1" && exec "$2" run --config "$3""#)
            .arg("sh")
            .arg(dir(sup))
            .arg(BIN)
            .arg(&sup.config_path)
            .arg(size);
        cmd
    });
    let pid = sup.pid();
    let ns = mount_ns(pid).expect("the supervisor's mount namespace");
    assert_ne!(
        Some(&ns),
        mount_ns(std::process::id() as i32).as_ref(),
        "the supervisor is not in a namespace of its own"
    );
    assert!(
        proc_stat(pid).is_some(),
        "the unshare process should have become the supervisor"
    );
    // The directory as the supervisor sees it: the tmpfs.
    let seen = PathBuf::from(format!("/proc/{pid}/root"))
        .join(dir(&sup).strip_prefix("/").expect("absolute directory"));
    assert!(
        fs::read_dir(&seen).is_ok(),
        "cannot reach {}",
        seen.display()
    );
    assert!(
        fs::read_dir(dir(&sup)).unwrap().next().is_none(),
        "the directory outside the namespace should stay empty (the tmpfs hides it)"
    );
    Some((sup, seen))
}

#[test]
fn a_full_disk_refuses_calls_and_service_resumes_when_space_returns() {
    let Some((sup, state)) = start_with_tmpfs(FULL_DISK, "2m", |sup| &sup.state_dir) else {
        return;
    };
    let pid = sup.pid();
    let ns = mount_ns(pid).expect("the supervisor's mount namespace");

    let mut c = sup.client();
    put_keys(&mut c, "k", 0..10);

    // Nearly fill the tmpfs, then write big calls until the log cannot take one more.
    let filler = state.join("filler");
    let filled = fill(&filler);
    fs::remove_file(&filler).unwrap();
    let mut f = fs::File::create(&filler).unwrap();
    std::io::Write::write_all(
        &mut f,
        &vec![1u8; (filled as usize).saturating_sub(64 << 10)],
    )
    .unwrap();
    drop(f);
    let big = "x".repeat(8 << 10);
    let mut big_acked = Vec::new();
    let refused = loop {
        let key = format!("big{}", big_acked.len());
        match c.call("kv", "put", json!({"key": key, "value": big})) {
            Ok(v) => {
                assert_eq!(v, Value::Null);
                big_acked.push(key);
                assert!(
                    big_acked.len() < 200,
                    "the log never ran out of space\n{}",
                    sup.log_tail(20)
                );
            }
            Err(e) => break (key, e),
        }
    };
    let (refused_key, err) = refused;
    let msg = expect_kind::<Value>(Err(err), ErrorKind::CallFailed);
    assert!(msg.contains("call log"), "{msg}");
    // Refused again while the disk stays full.
    let msg = expect_kind(
        c.call("kv", "put", json!({"key": "big-again", "value": big})),
        ErrorKind::CallFailed,
    );
    assert!(msg.contains("call log"), "{msg}");
    // The supervisor still serves status, and the actor lives.
    let a = sup.actor("kv");
    assert_eq!(a["state"], "ALIVE", "{a}");
    assert!(
        sup.log().contains("call log append failed"),
        "no log line for the failed append:\n{}",
        sup.log_tail(30)
    );

    // Space returns: new calls succeed; acknowledged ones are intact, refused ones absent.
    fs::remove_file(&filler).unwrap();
    assert_eq!(
        c.call("kv", "put", json!({"key": "after", "value": "ok"}))
            .unwrap(),
        Value::Null
    );
    check_keys(&mut c, "k", 0..10, 0..0);
    for key in &big_acked {
        assert_eq!(
            c.call("kv", "get", json!({"key": key})).unwrap(),
            json!(big),
            "{key}"
        );
    }
    for key in [refused_key.as_str(), "big-again"] {
        assert_eq!(
            c.call("kv", "get", json!({"key": key})).unwrap(),
            Value::Null,
            "the refused put of {key} took effect"
        );
    }
    assert_eq!(
        c.call("kv", "len", Value::Null).unwrap(),
        json!(10 + big_acked.len() + 1)
    );
    // The log on the tmpfs holds exactly the accepted calls: no partial record, no hole.
    let rec = resurgam::shared::calllog::recover(&log_dir(&state, "kv"));
    assert!(rec.problems.is_empty(), "{:?}", rec.problems);
    let puts = rec.records.iter().filter(|r| r.method == "put").count();
    assert_eq!(puts, 10 + big_acked.len() + 1, "logged puts");

    // Kill it: every worker and the namespace (with its tmpfs) go away.
    let workers = sup.seen_workers();
    sup.kill_supervisor();
    sup.wait_until("the workers to die with the supervisor", WAIT, || {
        workers.iter().all(|w: &Proc| !w.is_running())
    });
    sup.wait_until(
        "no process left in the tmpfs's mount namespace",
        WAIT,
        || {
            !fs::read_dir("/proc").unwrap().flatten().any(|e| {
                e.file_name()
                    .to_str()
                    .and_then(|s| s.parse::<i32>().ok())
                    .is_some_and(|p| Proc::of(p).is_some() && mount_ns(p).as_ref() == Some(&ns))
            })
        },
    );
}

#[test]
fn an_empty_segment_left_by_a_crash_does_not_swallow_later_calls() {
    // A supervisor killed right after creating a new segment file (before its first
    // write) leaves an empty segment named after the next seq. The next supervisor
    // appends its first calls under that very name; truncating covered segments must
    // not delete the file it is appending to.
    let sup = Supervisor::start(KV_LOG_ONLY);
    let mut c = sup.client();
    put_keys(&mut c, "k", 0..10);
    sup.kill_supervisor();
    let dir = log_dir(&sup.state_dir, "kv");
    let (_, _, offsets) = only_segment(&sup);
    assert_eq!(offsets.len(), 11);
    // Records 1..=10 are logged: the next call gets seq 11.
    let empty = dir.join(resurgam::shared::calllog::segment_name(11));
    fs::write(&empty, b"").unwrap();

    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
    let mut c = sup.client();
    put_keys(&mut c, "a", 0..10);
    // Two checkpoints on disk: the calls before the first are covered by both, so
    // the log is truncated.
    c.checkpoint("kv").unwrap();
    put_keys(&mut c, "b", 0..10);
    c.checkpoint("kv").unwrap();
    put_keys(&mut c, "c", 0..10);
    let segs = list_segments(&dir).unwrap();
    sup.kill_supervisor();

    sup.wait_state_dir_unlocked();
    sup.restart_same_dirs();
    let mut c = sup.client();
    for prefix in ["k", "a", "b", "c"] {
        for i in 0..10 {
            assert_eq!(
                c.call("kv", "get", json!({"key": format!("{prefix}{i}")}))
                    .unwrap(),
                json!(format!("v{i}")),
                "acknowledged put of {prefix}{i} lost by a SIGKILL of the supervisor; \
                 log segments on disk before the kill: {segs:?}"
            );
        }
    }
}
