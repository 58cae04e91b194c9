//! Torn and corrupt checkpoints are harmless (G2): kill -9 while a multi-MiB checkpoint is
//! being written (at moments as they come, and a death certainly in the middle of a
//! slot write), and corruption of the newest mmap slot and the disk copy.

use std::collections::BTreeMap;
use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use resurgam::Client;
use resurgam::shared::checkpoint::{CheckpointError, Source, read_disk_copy, read_mmap_slots};
use resurgam::shared::protocol::ErrorKind;
use serde_json::{Value, json};

use crate::util::{Proc, Rng, Supervisor};

const WAIT: Duration = Duration::from_secs(20);

/// A kv actor that checkpoints only on demand.
const CONFIG: &str = r#"
[defaults]
backoff_initial = "1ms"
backoff_max = "20ms"

[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 0
checkpoint_interval = "0s"
"#;

fn mmap_path(sup: &Supervisor) -> PathBuf {
    sup.runtime_dir.join("kv.ckpt")
}

fn disk_path(sup: &Supervisor) -> PathBuf {
    sup.state_dir.join("kv.checkpoint")
}

/// File offsets of slot A and slot B of an mmap checkpoint file (see checkpoint.rs).
fn slot_offsets(path: &Path) -> [u64; 2] {
    let f = std::fs::File::open(path).expect("open mmap checkpoint");
    let mut cap = [0u8; 8];
    f.read_exact_at(&mut cap, 16).expect("read capacity");
    let capacity = u64::from_le_bytes(cap);
    let slot_size = (64 + capacity).next_multiple_of(4096);
    [4096, 4096 + slot_size]
}

fn slot_index(s: Source) -> usize {
    match s {
        Source::SlotA => 0,
        Source::SlotB => 1,
        Source::Disk => panic!("not a slot"),
    }
}

fn slot_name(i: usize) -> &'static str {
    ["mmap slot A", "mmap slot B"][i]
}

/// `(generation, last_seq)` of each valid slot.
fn slots(path: &Path) -> [Option<(u64, u64)>; 2] {
    let mut out = [None, None];
    for (src, r) in read_mmap_slots(path) {
        out[slot_index(src)] = r.ok().map(|c| (c.generation, c.last_seq));
    }
    out
}

/// Flips one byte of a file in place.
fn flip_byte(path: &Path, offset: u64) {
    let f = OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .expect("open for corruption");
    let mut b = [0u8; 1];
    f.read_exact_at(&mut b, offset).expect("read byte");
    b[0] ^= 0x5a;
    f.write_all_at(&b, offset).expect("write byte");
    f.sync_all().expect("sync");
}

/// Puts every `(key, value)` pipelined; each must answer with the previous value.
fn put_all(c: &mut Client, model: &mut BTreeMap<String, Value>, puts: &[(String, Value)]) {
    let calls: Vec<(&str, &str, Value)> = puts
        .iter()
        .map(|(k, v)| ("kv", "put", json!({"key": k, "value": v})))
        .collect();
    let results = c.call_pipelined(&calls).expect("pipelined puts");
    for ((k, v), r) in puts.iter().zip(results) {
        let prev = model.insert(k.clone(), v.clone()).unwrap_or(Value::Null);
        assert_eq!(
            r.expect("put failed"),
            prev,
            "put {k} returned a wrong previous value"
        );
    }
}

/// Asserts the actor's whole state equals `model` (every key, and the key count).
fn assert_state(sup: &Supervisor, model: &BTreeMap<String, Value>, when: &str) {
    let mut c = sup.client();
    let calls: Vec<(&str, &str, Value)> = model
        .keys()
        .map(|k| ("kv", "get", json!({"key": k})))
        .collect();
    for chunk in calls.chunks(16) {
        let results = c.call_pipelined(chunk).expect("pipelined gets");
        for ((_, _, args), r) in chunk.iter().zip(results) {
            let k = args["key"].as_str().unwrap();
            let got = r.unwrap_or_else(|e| panic!("{when}: get {k}: {e:?}"));
            if got != model[k] {
                panic!(
                    "{when}: key {k}: wrong value (len {:?}, expected len {:?})\n{}",
                    got.as_str().map(str::len),
                    model[k].as_str().map(str::len),
                    sup.log_tail(40)
                );
            }
        }
    }
    assert_eq!(
        c.call("kv", "len", Value::Null).unwrap(),
        json!(model.len()),
        "{when}: wrong number of keys"
    );
}

fn big_value(key: usize, round: usize, len: usize) -> Value {
    let fill = (b'a' + ((key * 7 + round * 3) % 26) as u8) as char;
    let mut s = format!("{key}:{round}:");
    s.extend(std::iter::repeat_n(fill, len - s.len()));
    Value::String(s)
}

/// How the kill of one round is timed.
#[derive(Debug, Clone, Copy, PartialEq)]
enum KillAt {
    /// A random moment after the request: in the request, the serialisation or the copy.
    Random,
    /// As soon as the copy of the new payload into the target slot reaches a quarter of
    /// it (the probe sits inside a value that changed, so it differs from anything there).
    PayloadQuarter,
    /// As soon as the last payload bytes reach it (before or just after its header).
    PayloadEnd,
}

/// Keys of the large state, each with a value of `LEN` bytes (4 MiB in all).
const KEYS: usize = 32;
const LEN: usize = 128 * 1024;

fn key(k: usize) -> String {
    format!("key{k:02}")
}

/// Puts the large state into `kv` and checkpoints it; returns the model.
fn large_state(c: &mut Client) -> BTreeMap<String, Value> {
    let mut model = BTreeMap::new();
    let puts: Vec<_> = (0..KEYS).map(|k| (key(k), big_value(k, 0, LEN))).collect();
    put_all(c, &mut model, &puts);
    let first = c.checkpoint("kv").expect("first checkpoint");
    assert!(first["generation"].as_u64().unwrap() >= 1);
    model
}

#[test]
fn kill_during_checkpoint_of_a_large_state_loses_nothing() {
    let seed = Rng::seed();
    eprintln!("kill_during_checkpoint seed = {seed}");
    let mut rng = Rng::new(seed);
    let sup = Supervisor::start(CONFIG);
    let mut c = sup.client();
    let mut model = large_state(&mut c);
    let path = mmap_path(&sup);

    // Where each kill lands depends on how fast this process reacts (a multi-MiB copy
    // takes about a millisecond): whatever the moment, nothing may be lost. A death
    // certainly in the middle of a slot write is the next test's.
    let mut torn = 0;
    for round in 1..=6usize {
        let kill_at = [KillAt::Random, KillAt::PayloadQuarter, KillAt::PayloadEnd][round % 3];
        // Change the last key and the one a quarter in (so the payload bytes the probes
        // watch differ from anything in the file) and two random ones, keeping every
        // size: the file does not grow and the payload layout stays the same.
        let mut changed = vec![KEYS / 4, KEYS - 1];
        changed.extend((0..2).map(|_| rng.range(1, KEYS as u64 - 2) as usize));
        let puts: Vec<_> = changed
            .iter()
            .map(|&k| (key(k), big_value(k, round, LEN)))
            .collect();
        put_all(&mut c, &mut model, &puts);

        let pid = sup.actor_pid("kv").expect("kv ALIVE");
        let worker = Proc::of(pid).expect("worker runs");
        // The next checkpoint goes to the slot that does not hold the newest valid one.
        let mut newest: Option<(usize, resurgam::shared::checkpoint::Checkpoint)> = None;
        for (src, r) in read_mmap_slots(&path) {
            if let Ok(ck) = r
                && newest
                    .as_ref()
                    .is_none_or(|(_, n)| ck.generation > n.generation)
            {
                newest = Some((slot_index(src), ck));
            }
        }
        let (newest_i, newest) = newest.expect("a valid slot");
        let target = 1 - newest_i;
        let offsets = slot_offsets(&path);
        // The new payload has the same layout as the newest one (same keys and sizes).
        let quarter_key = format!("\"{}\":\"", key(KEYS / 4));
        let quarter = newest
            .payload
            .windows(quarter_key.len())
            .position(|w| w == quarter_key.as_bytes())
            .expect("key in payload") as u64
            + quarter_key.len() as u64
            + 1024;
        let probe_at = offsets[target]
            + 64
            + match kill_at {
                KillAt::PayloadEnd => newest.payload.len() as u64 - 64,
                _ => quarter,
            };
        let file = std::fs::File::open(&path).expect("open mmap file");
        let mut original = [0u8; 64];
        file.read_exact_at(&mut original, probe_at).unwrap();

        let done = Arc::new(AtomicBool::new(false));
        let ck = {
            let mut c2 = sup.client();
            let done = done.clone();
            std::thread::spawn(move || {
                let r = c2.checkpoint("kv");
                done.store(true, Ordering::SeqCst);
                r
            })
        };
        let sigkill = || {
            // A plain kill(2), no /proc check first (every microsecond counts here): only
            // this test kills the worker, so until then its pid cannot have been reused.
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(worker.pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        };
        let mut fired = false;
        if kill_at == KillAt::Random {
            std::thread::sleep(Duration::from_micros(rng.range(0, 60_000)));
        } else {
            // Spin on the probe (no sleep: copying a few MiB takes about a millisecond).
            let deadline = Instant::now() + WAIT;
            let mut now = [0u8; 64];
            while Instant::now() < deadline && !done.load(Ordering::SeqCst) {
                file.read_exact_at(&mut now, probe_at).unwrap();
                if now != original {
                    sigkill();
                    fired = true;
                    break;
                }
            }
        }
        if !fired {
            sigkill();
        }
        sup.wait_until("the killed worker to be gone", WAIT, || {
            !worker.is_running()
        });
        let target_valid = read_mmap_slots(&path)
            .into_iter()
            .any(|(src, r)| slot_index(src) == target && r.is_ok());
        if fired && !target_valid {
            torn += 1;
        }
        eprintln!(
            "round {round}: kill at {kill_at:?} (probe fired: {fired}); \
             target slot valid after the kill: {target_valid}"
        );
        match ck.join().expect("checkpoint thread") {
            Ok(v) => assert!(v["generation"].as_u64().is_some(), "{v}"),
            Err(resurgam::ClientError::Remote(e)) => {
                assert_eq!(e.kind, ErrorKind::Busy, "checkpoint reply: {e:?}")
            }
            Err(e) => panic!("checkpoint request failed: {e}"),
        }
        sup.wait_new_pid("kv", pid, WAIT);
        assert_state(&sup, &model, &format!("round {round} ({kill_at:?})"));
    }
    eprintln!("{torn} of 6 kills landed in the middle of a slot write");
    // The state also survives one more plain restart after all that.
    let pid = sup.kill_worker("kv");
    sup.wait_new_pid("kv", pid, WAIT);
    assert_state(&sup, &model, "final");
    assert_eq!(sup.actor("kv")["nondeterministic_replies"], 0);
}

#[test]
fn a_worker_dying_in_the_middle_of_a_checkpoint_write_loses_nothing() {
    // Deterministically in the middle: the checkpoint file is on a tmpfs, the last page
    // of the target slot's payload is a hole, and the tmpfs is full, so the worker's copy
    // into its mapping dies (SIGBUS) there, before the record header is written.
    let body = r#"
[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 0
checkpoint_interval = "0s"
backoff_initial = "600s"
backoff_max = "600s"
min_uptime = "3600s"
startup_timeout = "300s"
"#;
    let Some((sup, run)) = crate::durable::start_with_tmpfs(body, "48m", |sup| &sup.runtime_dir)
    else {
        return;
    };
    let path = run.join("kv.ckpt");
    let mut c = sup.client();
    let mut model = large_state(&mut c);
    // A first quick death: the worker that dies in the write is the second, so its
    // restart waits (10 minutes) for the test to let it.
    let pid = sup.kill_worker("kv");
    sup.wait_new_pid("kv", pid, WAIT);
    let puts: Vec<_> = (0..KEYS).map(|k| (key(k), big_value(k, 1, LEN))).collect();
    put_all(&mut c, &mut model, &puts);

    let valid: Vec<_> = read_mmap_slots(&path)
        .into_iter()
        .filter_map(|(src, r)| Some((slot_index(src), r.ok()?)))
        .collect();
    let [(newest_i, newest)] = &valid[..] else {
        panic!("not exactly one valid slot: {:?}", slots(&path));
    };
    let target = 1 - *newest_i;
    let payload = offsets_of_payload(&path, target);
    let len = newest.payload.len() as u64;
    // One page five eighths in: whatever order memcpy stores a large copy in (forwards,
    // backwards, interleaved), part of the new payload lands before it faults there, and
    // the record header that would make the slot valid is written only after the copy.
    let hole = (payload + len * 5 / 8).next_multiple_of(4096);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(&path)
        .unwrap();
    let mut before = vec![0u8; len as usize];
    file.read_exact_at(&mut before, payload).unwrap();
    punch_hole(&file, hole, 4096);
    let filler = run.join("filler");
    crate::durable::fill(&filler);

    let worker = Proc::of(sup.actor_pid("kv").expect("kv ALIVE")).unwrap();
    let ck = {
        let mut c2 = sup.client();
        std::thread::spawn(move || c2.checkpoint("kv"))
    };
    sup.wait_state("kv", "RESTARTING", WAIT);
    assert!(!worker.is_running());
    let last_exit = sup.actor("kv")["last_exit"].to_string();
    assert!(last_exit.contains("SIGBUS"), "last_exit: {last_exit}");
    // Torn: part of the payload is the new one; the slot is not valid.
    let mut after = vec![0u8; len as usize];
    file.read_exact_at(&mut after, payload).unwrap();
    let changed = before.iter().zip(&after).filter(|(b, a)| b != a).count();
    eprintln!("{changed} of {len} payload bytes written before the death");
    assert!(changed > 0, "the worker died before its copy began");
    assert_eq!(
        slots(&path)[target],
        None,
        "the half-written slot reads as valid"
    );

    // Space returns; the restart goes ahead and loses nothing.
    std::fs::remove_file(&filler).unwrap();
    sup.client().restart("kv").unwrap();
    sup.wait_new_pid("kv", worker.pid, WAIT);
    match ck.join().expect("checkpoint thread") {
        Ok(v) => assert!(v["generation"].as_u64().is_some(), "{v}"),
        Err(resurgam::ClientError::Remote(e)) => {
            assert_eq!(e.kind, ErrorKind::Busy, "checkpoint reply: {e:?}")
        }
        Err(e) => panic!("checkpoint request failed: {e}"),
    }
    assert_state(&sup, &model, "after the death in the write");
    // The slot is usable again.
    c.checkpoint("kv")
        .expect("a checkpoint after the space returned");
    assert_eq!(
        slots(&path).iter().flatten().count(),
        2,
        "{:?}",
        slots(&path)
    );
    assert_state(&sup, &model, "after a checkpoint into the torn slot");
}

/// File offset of the payload of slot `slot` (after its 64-byte record header).
fn offsets_of_payload(path: &Path, slot: usize) -> u64 {
    slot_offsets(path)[slot] + 64
}

/// Frees `len` bytes of `file` from `offset` (they read as zeros and need new blocks).
fn punch_hole(file: &std::fs::File, offset: u64, len: u64) {
    use std::os::fd::AsRawFd;
    // SAFETY: fallocate acts on the descriptor only; it reads no memory of ours.
    let r = unsafe {
        libc::fallocate(
            file.as_raw_fd(),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            offset as libc::off_t,
            len as libc::off_t,
        )
    };
    assert_eq!(r, 0, "punch a hole: {}", std::io::Error::last_os_error());
}

/// Checks that `log` has a "checkpoint candidate rejected" line naming `source` with a
/// checksum failure.
fn assert_rejected(sup: &Supervisor, log: &str, source: &str) {
    let hit = log.lines().find(|l| {
        l.contains("checkpoint candidate rejected") && l.contains(source) && l.contains("checksum")
    });
    assert!(
        hit.is_some(),
        "no \"checkpoint candidate rejected\" line for {source} with a checksum reason\n{}",
        sup.log_tail(40)
    );
}

/// Corrupts the payload of the newest mmap slot and of the disk copy (both hold the same
/// generation), checks that the readers now reject them, and returns the older slot's
/// index and (generation, last_seq).
fn corrupt_newest(sup: &Supervisor, newest: (u64, u64)) -> (usize, (u64, u64)) {
    let mmap = mmap_path(sup);
    let disk = disk_path(sup);
    let s = slots(&mmap);
    let newest_i = s
        .iter()
        .position(|x| *x == Some(newest))
        .unwrap_or_else(|| panic!("no slot holds {newest:?}: {s:?}"));
    let older_i = 1 - newest_i;
    let older = s[older_i].unwrap_or_else(|| panic!("the older slot is not valid: {s:?}"));
    assert!(older < newest);
    let on_disk = read_disk_copy(&disk).expect("disk copy valid");
    assert_eq!((on_disk.generation, on_disk.last_seq), newest);

    let payload_len = on_disk.payload.len() as u64;
    let offsets = slot_offsets(&mmap);
    flip_byte(&mmap, offsets[newest_i] + 64 + payload_len / 2);
    flip_byte(&disk, 64 + payload_len / 3);

    for (src, r) in read_mmap_slots(&mmap) {
        if slot_index(src) == newest_i {
            assert!(
                matches!(r, Err(CheckpointError::PayloadChecksum { .. })),
                "corrupted slot still reads as {r:?}"
            );
        }
    }
    assert!(matches!(
        read_disk_copy(&disk),
        Err(CheckpointError::PayloadChecksum { .. })
    ));
    (older_i, older)
}

/// A supervisor running [`CONFIG`], a client, and an empty model of the kv's contents.
fn start_kv() -> (Supervisor, Client, BTreeMap<String, Value>) {
    let sup = Supervisor::start(CONFIG);
    let c = sup.client();
    (sup, c, BTreeMap::new())
}

#[test]
fn corrupt_newest_slot_and_disk_copy_fall_back_to_the_older_slot_and_replay() {
    let (sup, mut c, mut model) = start_kv();
    let val = |tag: &str, i: usize| json!({"tag": tag, "i": i, "pad": "p".repeat(2000 + i)});

    let a: Vec<_> = (0..20).map(|i| (format!("a{i}"), val("a", i))).collect();
    put_all(&mut c, &mut model, &a);
    let ck1 = c.checkpoint("kv").expect("checkpoint 1");
    let ck1 = (
        ck1["generation"].as_u64().unwrap(),
        ck1["last_seq"].as_u64().unwrap(),
    );
    assert_eq!(ck1.1, 20);

    let mut calls_after_ck1 = 0;
    let b: Vec<_> = (0..20)
        .map(|i| (format!("b{i}"), val("b", i)))
        .chain((0..5).map(|i| (format!("a{i}"), val("a2", i))))
        .collect();
    put_all(&mut c, &mut model, &b);
    calls_after_ck1 += b.len();
    let ck2 = c.checkpoint("kv").expect("checkpoint 2");
    let ck2 = (
        ck2["generation"].as_u64().unwrap(),
        ck2["last_seq"].as_u64().unwrap(),
    );
    assert!(
        ck2.0 > ck1.0 && ck2.1 == ck1.1 + b.len() as u64,
        "{ck1:?} {ck2:?}"
    );

    let cc: Vec<_> = (0..20)
        .map(|i| (format!("c{i}"), val("c", i)))
        .chain((0..5).map(|i| (format!("b{i}"), val("b2", i))))
        .collect();
    put_all(&mut c, &mut model, &cc);
    calls_after_ck1 += cc.len();
    for i in 5..10 {
        let k = format!("a{i}");
        assert_eq!(
            c.call("kv", "delete", json!({"key": k})).unwrap(),
            model.remove(&k).unwrap()
        );
        calls_after_ck1 += 1;
    }

    // checkpoint() returned after the disk copy was synced and nothing checkpoints on its
    // own, so the files are quiet now.
    let (older_i, older) = corrupt_newest(&sup, ck2);
    assert_eq!(older, ck1);
    let log_before = sup.log().len();
    let pid = sup.kill_worker("kv");
    sup.wait_new_pid("kv", pid, WAIT);
    let log = sup.log()[log_before..].to_string();
    assert_rejected(&sup, &log, slot_name(1 - older_i));
    assert_rejected(&sup, &log, "disk copy");
    let ready = log
        .lines()
        .find(|l| l.contains("worker ready"))
        .unwrap_or_else(|| panic!("no \"worker ready\" line\n{log}"));
    assert!(
        ready.contains(slot_name(older_i)) && ready.contains(&format!("generation={}", ck1.0)),
        "restored from the wrong checkpoint: {ready}"
    );
    let a = sup.actor("kv");
    assert_eq!(a["restored_from"], slot_name(older_i), "{a}");
    assert_eq!(a["replayed"], calls_after_ck1, "{a}");
    assert_state(&sup, &model, "after restoring the older slot");

    // The same fault once more, after a fresh checkpoint: the older valid slot is now
    // checkpoint 1 again, and the calls after it must still be replayable.
    let d: Vec<_> = (0..10).map(|i| (format!("d{i}"), val("d", i))).collect();
    put_all(&mut c, &mut model, &d);
    let ck3 = c.checkpoint("kv").expect("checkpoint 3");
    let ck3 = (
        ck3["generation"].as_u64().unwrap(),
        ck3["last_seq"].as_u64().unwrap(),
    );
    let e: Vec<_> = (0..10).map(|i| (format!("e{i}"), val("e", i))).collect();
    put_all(&mut c, &mut model, &e);
    let s = slots(&mmap_path(&sup));
    assert!(s.contains(&Some(ck3)), "checkpoint 3 not in a slot: {s:?}");
    let (_, fallback) = corrupt_newest(&sup, ck3);
    let pid = sup.kill_worker("kv");
    // Either the state comes back exactly, or the actor refuses to serve (DEAD) — never a
    // silently wrong state. Exact recovery is what G2 promises.
    sup.wait_until("kv to recover or die", WAIT, || {
        let a = sup.actor("kv");
        a["state"] == "DEAD" || (a["state"] == "ALIVE" && a["pid"] != json!(pid))
    });
    let a = sup.actor("kv");
    assert_eq!(
        a["state"],
        "ALIVE",
        "after a second corruption of the newest checkpoint, with a valid older slot \
         {fallback:?}, the actor went DEAD instead of replaying from it: {}\n{}",
        a["dead_reason"],
        sup.log_tail(20)
    );
    assert_state(&sup, &model, "after the second fallback");
}

#[test]
fn a_damaged_older_slot_is_reported_after_ready_and_nothing_is_lost() {
    let (sup, mut c, mut model) = start_kv();
    let val = |tag: &str, i: usize| json!({"tag": tag, "i": i, "pad": "q".repeat(3000 + i)});
    let puts = |tag: &str, n: usize| -> Vec<(String, Value)> {
        (0..n).map(|i| (format!("{tag}{i}"), val(tag, i))).collect()
    };
    let checkpoint = |c: &mut Client| {
        let ck = c.checkpoint("kv").expect("checkpoint");
        (
            ck["generation"].as_u64().unwrap(),
            ck["last_seq"].as_u64().unwrap(),
        )
    };
    put_all(&mut c, &mut model, &puts("a", 15));
    checkpoint(&mut c);
    put_all(&mut c, &mut model, &puts("b", 15));
    let ck2 = checkpoint(&mut c);
    put_all(&mut c, &mut model, &puts("c", 10));

    // The files are quiet (nothing checkpoints on its own): damage the older slot.
    let mmap = mmap_path(&sup);
    let newest_i = slots(&mmap)
        .iter()
        .position(|x| *x == Some(ck2))
        .expect("a slot holds checkpoint 2");
    let older_i = 1 - newest_i;
    let older_len = read_mmap_slots(&mmap)[older_i]
        .1
        .as_ref()
        .map(|ck| ck.payload.len() as u64)
        .expect("the older slot is valid");
    flip_byte(&mmap, slot_offsets(&mmap)[older_i] + 64 + older_len / 2);

    let log_before = sup.log().len();
    let pid = sup.kill_worker("kv");
    sup.wait_new_pid("kv", pid, WAIT);
    let after_ready = "checkpoint candidate rejected after the worker was ready";
    sup.wait_until("the damage to be reported", WAIT, || {
        sup.log()[log_before..].contains(after_ready)
    });
    let log = sup.log()[log_before..].to_string();
    // Ready at once from the newest checkpoint: the older slot was not read before.
    let ready = log
        .lines()
        .position(|l| l.contains("worker ready"))
        .unwrap_or_else(|| panic!("no \"worker ready\" line\n{log}"));
    let ready_line = log.lines().nth(ready).unwrap_or_default();
    assert!(
        ready_line.contains(slot_name(newest_i))
            && ready_line.contains(&format!("generation={}", ck2.0)),
        "restored from the wrong checkpoint: {ready_line}"
    );
    assert!(
        !log.contains("checkpoint candidate rejected\""),
        "something rejected before ready\n{log}"
    );
    // Then the damage, named with the actor, the file and the reason.
    let (at, line) = log
        .lines()
        .enumerate()
        .find(|(_, l)| l.contains(after_ready))
        .unwrap_or_default();
    assert!(at > ready, "reported before ready\n{log}");
    for part in [
        "kv",
        slot_name(older_i),
        &mmap.display().to_string(),
        "checksum",
    ] {
        assert!(line.contains(part), "no {part:?} in: {line}");
    }
    assert_state(&sup, &model, "after a restore past a damaged older slot");

    // Nothing broke: the next checkpoint goes into the damaged slot and keeps the newest,
    // and a further restart finds every call.
    put_all(&mut c, &mut model, &puts("d", 10));
    let ck3 = checkpoint(&mut c);
    let s = slots(&mmap);
    assert_eq!((s[older_i], s[newest_i]), (Some(ck3), Some(ck2)), "{s:?}");
    put_all(&mut c, &mut model, &puts("e", 5));
    let pid = sup.kill_worker("kv");
    sup.wait_new_pid("kv", pid, WAIT);
    assert_state(&sup, &model, "after one more restart");
    assert_eq!(sup.actor("kv")["nondeterministic_replies"], 0);
}
