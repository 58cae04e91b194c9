//! The control protocol: parsing request lines and serialising reply lines.

mod common;

use std::hint::black_box;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};

use resurgam::shared::protocol::{ErrorBody, ErrorKind, encode_err, encode_ok, parse_request};

fn bench_protocol(c: &mut Criterion) {
    let mut g = c.benchmark_group("protocol");
    g.throughput(Throughput::Elements(1));
    let incr = br#"{"id":17,"op":"call","actor":"counter","method":"incr","args":5}"#;
    g.bench_function("parse_call_incr", |b| {
        b.iter(|| parse_request(black_box(incr)).map(|r| r.id.len()))
    });
    let put = format!(
        r#"{{"id":"req-18","op":"call","actor":"store","method":"put","args":{{"key":"city","value":"{}"}}}}"#,
        "x".repeat(1024)
    );
    g.bench_function("parse_call_put_1KiB", |b| {
        b.iter(|| parse_request(black_box(put.as_bytes())).map(|r| r.id.len()))
    });
    g.bench_function("parse_malformed", |b| {
        b.iter(|| parse_request(black_box(br#"{"id":1,"op":"call","actor":"#)).is_err())
    });
    g.bench_function("encode_ok", |b| {
        b.iter(|| encode_ok(black_box("17"), black_box("42")))
    });
    let err = ErrorBody::new(ErrorKind::UnknownActor, "no actor named \"nope\"");
    g.bench_function("encode_err", |b| {
        b.iter(|| encode_err(black_box("17"), black_box(&err)))
    });
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = bench_protocol
}
criterion_main!(benches);
