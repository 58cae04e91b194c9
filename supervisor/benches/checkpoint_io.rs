//! Checkpoint write and verify: encoding a record (CRC32C over header and payload),
//! decoding and verifying it, writing into the two-slot mmap file, restoring by scanning
//! both slots and the disk copy, and the fsync'd disk copy itself.

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use resurgam::shared::checkpoint::{
    MmapCheckpoint, decode_record, encode_record, scan, write_disk_copy,
};

const SIZES: [(&str, usize); 3] = [("1KiB", 1 << 10), ("1MiB", 1 << 20), ("16MiB", 16 << 20)];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn bench_checkpoint(c: &mut Criterion) {
    let dir = match tempfile::tempdir() {
        Ok(d) => d,
        Err(e) => panic!("cannot create a temporary directory: {e}"),
    };
    let mut g = c.benchmark_group("checkpoint");
    for (label, len) in SIZES {
        let data = payload(len);
        g.throughput(Throughput::Bytes(len as u64));
        g.bench_with_input(
            BenchmarkId::new("encode_record", label),
            &data,
            |b, data| b.iter(|| encode_record(1, 2, black_box(data))),
        );
        let record = encode_record(1, 2, &data);
        g.bench_with_input(
            BenchmarkId::new("decode_verify_record", label),
            &record,
            |b, r| b.iter(|| decode_record(black_box(r)).map(|c| c.last_seq)),
        );
        let mmap_path = dir.path().join(format!("{label}.mmap"));
        let disk_path = dir.path().join(format!("{label}.ckpt"));
        let (mut ck, _) = match MmapCheckpoint::open(&mmap_path, 2 * len as u64) {
            Ok(x) => x,
            Err(e) => panic!("open {}: {e}", mmap_path.display()),
        };
        let mut generation = 0u64;
        g.bench_with_input(BenchmarkId::new("mmap_write", label), &data, |b, data| {
            b.iter(|| {
                generation += 1;
                ck.write(generation, generation, data)
            })
        });
        if let Err(e) = write_disk_copy(&disk_path, generation, generation, &data) {
            panic!("write {}: {e}", disk_path.display());
        }
        g.bench_function(BenchmarkId::new("scan_restore", label), |b| {
            b.iter(|| {
                scan(&mmap_path, &disk_path)
                    .chosen
                    .map(|(_, c)| c.generation)
            })
        });
        if len <= 1 << 20 {
            g.bench_with_input(
                BenchmarkId::new("disk_copy_fsync", label),
                &data,
                |b, data| b.iter(|| write_disk_copy(&disk_path, 1, 1, data)),
            );
        }
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = bench_checkpoint
}
criterion_main!(benches);
