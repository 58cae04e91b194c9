//! The cost of the identity check (issue 9): every checkpoint record and log segment
//! names its owner (the actor and the state directory), and restore and recovery refuse
//! another's. Side by side in one run, the same files with and without owner:
//!
//! * `scan`: the supervisor's start-up scan of both mmap slots and the disk copy
//!   (version-1 records and `scan`, against version-2 records and `scan_owned`);
//! * `restore`: the worker's restore (`MmapCheckpoint::restore` against `restore_owned`);
//! * `log_recovery`: reading a log of 100,000 calls in 4 segments, without owner records
//!   (`recover_covered` with no owner expected) against segments that begin with one
//!   (and the owner expected).

mod common;

use std::hint::black_box;
use std::path::Path;

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};

use resurgam::shared::calllog::{self, LogOwner, OWNER_METHOD};
use resurgam::shared::checkpoint::{
    MmapCheckpoint, OwnerTag, scan, scan_owned, write_disk_copy_owned,
};

const SIZES: [(&str, usize); 2] = [("1KiB", 1 << 10), ("1MiB", 1 << 20)];
const LOG_CALLS: u64 = 100_000;
const LOG_SEGMENTS: u64 = 4;
const DIR_ID: [u8; 16] = *b"0123456789abcdef";

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn or_die<T, E: std::fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        Err(e) => panic!("{what}: {e}"),
    }
}

/// Writes both mmap slots and the disk copy of one actor, naming `owner` if given.
fn write_checkpoints(mmap: &Path, disk: &Path, data: &[u8], owner: Option<OwnerTag>) {
    let (mut ck, _) = or_die(
        MmapCheckpoint::open(mmap, 2 * data.len() as u64),
        "open the mmap file",
    );
    if let Some(tag) = owner {
        ck.set_owner(tag);
    }
    for generation in 1..=2 {
        or_die(ck.write(generation, generation, data), "write a slot");
    }
    or_die(
        write_disk_copy_owned(disk, 2, 2, data, owner.as_ref()),
        "write the disk copy",
    );
}

fn bench_checkpoints(c: &mut Criterion) {
    let dir = or_die(tempfile::tempdir(), "create a temporary directory");
    let tag = OwnerTag::new("counter", DIR_ID);
    let mut g = c.benchmark_group("identity");
    for (label, len) in SIZES {
        let data = payload(len);
        for (kind, owner) in [("plain", None), ("owned", Some(tag))] {
            let mmap = dir.path().join(format!("{label}-{kind}.mmap"));
            let disk = dir.path().join(format!("{label}-{kind}.ckpt"));
            write_checkpoints(&mmap, &disk, &data, owner);
            g.bench_function(BenchmarkId::new(format!("scan/{kind}"), label), |b| {
                b.iter(|| {
                    let s = match &owner {
                        Some(t) => scan_owned(&mmap, &disk, Some(t)),
                        None => scan(&mmap, &disk),
                    };
                    assert!(s.chosen.is_some(), "no checkpoint chosen");
                    black_box(s.chosen.map(|(_, c)| c.generation))
                })
            });
            g.bench_function(BenchmarkId::new(format!("restore/{kind}"), label), |b| {
                b.iter(|| {
                    let r = or_die(
                        match &owner {
                            Some(t) => MmapCheckpoint::restore_owned(&mmap, &disk, Some(t)),
                            None => MmapCheckpoint::restore(&mmap, &disk),
                        },
                        "restore",
                    );
                    assert!(r.chosen.is_some(), "nothing restored");
                    black_box(r.payload().len())
                })
            });
        }
    }
    g.finish();
}

/// Writes a log of [`LOG_CALLS`] `incr` calls in [`LOG_SEGMENTS`] segments into `dir`,
/// each segment beginning with an owner record if `owner` is given.
fn write_log(dir: &Path, owner: Option<&LogOwner>) {
    or_die(std::fs::create_dir_all(dir), "create the log directory");
    let per = LOG_CALLS / LOG_SEGMENTS;
    for s in 0..LOG_SEGMENTS {
        let first = s * per + 1;
        let mut buf = Vec::new();
        if let Some(o) = owner {
            calllog::encode_into(&mut buf, first, OWNER_METHOD, &o.encode());
        }
        for seq in first..first + per {
            calllog::encode_into(&mut buf, seq, "incr", b"null");
        }
        or_die(
            std::fs::write(dir.join(calllog::segment_name(first)), &buf),
            "write a segment",
        );
    }
}

fn bench_log(c: &mut Criterion) {
    let dir = or_die(tempfile::tempdir(), "create a temporary directory");
    let owner = LogOwner {
        actor: "counter".to_string(),
        dir: "0123456789abcdef".to_string(),
    };
    let mut g = c.benchmark_group("identity");
    for (kind, owner) in [("plain", None), ("owned", Some(&owner))] {
        let log = dir.path().join(format!("{kind}.log"));
        write_log(&log, owner);
        g.bench_function(BenchmarkId::new("log_recovery", kind), |b| {
            b.iter(|| {
                let r = calllog::recover_covered(&log, 0, owner);
                assert!(r.lost.is_none(), "{:?}", r.problems);
                assert_eq!(r.records.len() as u64, LOG_CALLS);
                black_box(r.records.len())
            })
        });
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = bench_checkpoints, bench_log
}
criterion_main!(benches);
