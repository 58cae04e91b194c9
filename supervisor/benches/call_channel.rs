//! The call channel, side by side: one call's round trip to an echo thread that answers
//! on a report socket, with the call sent (a) over ipc-channel, as the supervisor does,
//! or (b) over the same stream socket as the answer, in a postcard frame. Both sides
//! block (no spin), so the figure is the channel's cost plus two thread wake-ups.

mod common;

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::thread;

use criterion::{Criterion, criterion_group, criterion_main};
use ipc_channel::ipc;

use resurgam::shared::ipc::{
    Call, Outcome, Reply, Report, ReportDecoder, ToWorker, calls_message, encode_report,
};

fn one_call(seq: u64) -> Vec<Call> {
    vec![Call {
        seq,
        method: "incr".into(),
        args: b"1".to_vec(),
        key: None,
    }]
}

fn answer(calls: &[Call]) -> Vec<u8> {
    let replies = calls
        .iter()
        .map(|c| Reply {
            seq: c.seq,
            outcome: Outcome::Ok(b"1".to_vec()),
        })
        .collect();
    encode_report(&Report::Replies(replies)).unwrap_or_default()
}

/// Reads from `stream` until `decoder` holds one complete report.
fn read_report(stream: &mut UnixStream, decoder: &mut ReportDecoder, buf: &mut [u8]) -> bool {
    loop {
        if let Ok(Some(_)) = decoder.next_report() {
            return true;
        }
        match stream.read(buf) {
            Ok(0) | Err(_) => return false,
            Ok(n) => decoder.push(&buf[..n]),
        }
    }
}

/// Reads one length-prefixed postcard frame of calls.
fn read_calls(stream: &mut UnixStream) -> Option<Vec<Call>> {
    let mut len = [0u8; 4];
    stream.read_exact(&mut len).ok()?;
    let mut body = vec![0u8; u32::from_le_bytes(len) as usize];
    stream.read_exact(&mut body).ok()?;
    postcard::from_bytes(&body).ok()
}

fn calls_frame(calls: &[Call]) -> Vec<u8> {
    let mut frame = postcard::to_extend(calls, vec![0u8; 4]).unwrap_or_default();
    let len = u32::try_from(frame.len() - 4).unwrap_or(0);
    frame[..4].copy_from_slice(&len.to_le_bytes());
    frame
}

/// Times round trips of one call: `send` sends it, the answer comes back on `ours`.
fn round_trips(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    name: &str,
    ours: &mut UnixStream,
    mut send: impl FnMut(&[Call]) -> bool,
) {
    let (mut decoder, mut buf, mut seq) = (ReportDecoder::default(), vec![0u8; 65536], 0);
    g.bench_function(name, |b| {
        b.iter(|| {
            seq += 1;
            send(&one_call(seq)) && read_report(ours, &mut decoder, &mut buf)
        })
    });
}

fn bench_call_channel(c: &mut Criterion) {
    let mut g = c.benchmark_group("call_channel");

    // (a) Today's design: calls over ipc-channel, answers over the report socket.
    if let (Ok((tx, rx)), Ok((mut ours, mut theirs))) =
        (ipc::channel::<ToWorker>(), UnixStream::pair())
    {
        let echo = thread::spawn(move || {
            while let Ok(ToWorker::Calls(calls)) = rx.recv() {
                if theirs.write_all(&answer(&calls)).is_err() {
                    break;
                }
            }
        });
        round_trips(&mut g, "ipc_channel_out_socket_back", &mut ours, |calls| {
            calls_message(calls.to_vec()).is_ok_and(|m| tx.send(m).is_ok())
        });
        drop(tx);
        let _ = echo.join();
    }

    // (b) Calls framed on the same stream socket the answers come back on.
    if let Ok((mut ours, mut theirs)) = UnixStream::pair() {
        let echo = thread::spawn(move || {
            while let Some(calls) = read_calls(&mut theirs) {
                if theirs.write_all(&answer(&calls)).is_err() {
                    break;
                }
            }
        });
        let mut out = ours.try_clone().ok();
        round_trips(&mut g, "socket_both_ways", &mut ours, |calls| {
            out.as_mut()
                .is_some_and(|o| o.write_all(&calls_frame(calls)).is_ok())
        });
        let _ = ours.shutdown(std::net::Shutdown::Both);
        let _ = echo.join();
    }
    g.finish();
}

criterion_group! {
    name = benches;
    config = common::quick();
    targets = bench_call_channel
}
criterion_main!(benches);
