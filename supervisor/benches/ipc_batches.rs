//! IPC batch encoding and decoding: postcard of call and reply batches (what ipc-channel
//! does for every inline message), the shared-memory path of large call batches, and
//! the framing of large reply batches on the report socket.

mod common;

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};

use resurgam::shared::ipc::{
    Call, Outcome, Reply, Report, ReportDecoder, ToWorker, calls_message, decode_calls,
    encode_report,
};

fn calls(n: u64, args_len: usize) -> Vec<Call> {
    (0..n)
        .map(|seq| Call {
            seq,
            method: "incr".into(),
            args: vec![b'7'; args_len],
            key: None,
        })
        .collect()
}

fn replies(n: u64, len: usize) -> Vec<Reply> {
    (0..n)
        .map(|seq| Reply {
            seq,
            outcome: Outcome::Ok(vec![b'1'; len]),
        })
        .collect()
}

fn bench_ipc(c: &mut Criterion) {
    let mut g = c.benchmark_group("ipc");
    for n in [1u64, 64, 4096] {
        let batch = calls(n, 2);
        let bytes = postcard::to_allocvec(&batch).unwrap_or_default();
        g.throughput(Throughput::Elements(n));
        g.bench_with_input(
            BenchmarkId::new("postcard_encode_calls", n),
            &batch,
            |b, batch| b.iter(|| postcard::to_allocvec(black_box(batch))),
        );
        g.bench_with_input(
            BenchmarkId::new("postcard_decode_calls", n),
            &bytes,
            |b, bytes| b.iter(|| postcard::from_bytes::<Vec<Call>>(black_box(bytes))),
        );
        let rs = replies(n, 2);
        let rbytes = postcard::to_allocvec(&rs).unwrap_or_default();
        g.bench_with_input(
            BenchmarkId::new("postcard_encode_replies", n),
            &rs,
            |b, rs| b.iter(|| postcard::to_allocvec(black_box(rs))),
        );
        g.bench_with_input(
            BenchmarkId::new("postcard_decode_replies", n),
            &rbytes,
            |b, bytes| b.iter(|| postcard::from_bytes::<Vec<Reply>>(black_box(bytes))),
        );
    }
    // Large batches go through one shared-memory region (memfd + copy + decode).
    let big = calls(64, 16 * 1024);
    g.throughput(Throughput::Bytes(64 * 16 * 1024));
    g.bench_function("calls_message_shm_1MiB_encode_decode", |b| {
        b.iter(|| match calls_message(big.clone()) {
            Ok(ToWorker::CallsShm(shm)) => decode_calls(&shm).map(|v| v.len()).unwrap_or(0),
            _ => 0,
        })
    });
    // Large reply batches stream through the report socket as one frame.
    let big_replies = Report::Replies(replies(64, 16 * 1024));
    g.bench_function("report_frame_1MiB_encode_decode", |b| {
        b.iter(|| {
            let frame = encode_report(black_box(&big_replies)).unwrap_or_default();
            let mut d = ReportDecoder::default();
            d.push(&frame);
            match d.next_report() {
                Ok(Some(Report::Replies(v))) => v.len(),
                _ => 0,
            }
        })
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = bench_ipc
}
criterion_main!(benches);
