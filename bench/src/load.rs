//! Load generators over one [`Client`] connection: synchronous calls (one in flight,
//! each timed) and pipelined calls (a window of calls in flight).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use resurgam::{Client, ClientError};

use super::Result;
use super::stats::micros;

/// When a generator stops sending.
#[derive(Clone, Copy)]
pub(crate) enum Until<'a> {
    /// After this many calls.
    Count(u64),
    /// At this instant.
    Deadline(Instant),
    /// When this flag becomes true.
    Flag(&'a AtomicBool),
}

impl Until<'_> {
    fn more(&self, sent: u64) -> bool {
        match self {
            Until::Count(n) => sent < *n,
            Until::Deadline(d) => Instant::now() < *d,
            Until::Flag(f) => !f.load(Ordering::Relaxed),
        }
    }

    /// A deadline `d` from now.
    pub(crate) fn for_duration(d: Duration) -> Until<'static> {
        Until::Deadline(Instant::now() + d)
    }
}

/// A `call` request object (the client sets its `id`).
pub(crate) fn call_request(actor: &str, method: &str, args: &Value) -> Value {
    if args.is_null() {
        json!({"op": "call", "actor": actor, "method": method})
    } else {
        json!({"op": "call", "actor": actor, "method": method, "args": args})
    }
}

/// What a generator did.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    pub ok: u64,
    /// Error replies (the call was answered with an error).
    pub err: u64,
    pub first_err: Option<String>,
    pub elapsed: Duration,
    /// Per-call latency in µs (synchronous generator only).
    pub latencies_us: Vec<f64>,
    /// Start of each timed call (synchronous generator only, same order).
    pub starts: Vec<Instant>,
}

impl Outcome {
    /// Answered calls per second.
    pub(crate) fn rate(&self) -> f64 {
        (self.ok + self.err) as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    fn note_err(&mut self, e: impl ToString) {
        self.err += 1;
        if self.first_err.is_none() {
            self.first_err = Some(e.to_string());
        }
    }
}

/// One call at a time; every call is timed. `args(i)` gives the i-th call's arguments.
pub(crate) fn sync_calls(
    c: &mut Client,
    actor: &str,
    method: &str,
    until: Until<'_>,
    keep_starts: bool,
    mut args: impl FnMut(u64) -> Value,
) -> Result<Outcome> {
    sync_requests(c, until, keep_starts, |i| {
        call_request(actor, method, &args(i))
    })
}

/// [`sync_calls`] of whole requests: `request(i)` gives the i-th.
pub(crate) fn sync_requests(
    c: &mut Client,
    until: Until<'_>,
    keep_starts: bool,
    mut request: impl FnMut(u64) -> Value,
) -> Result<Outcome> {
    let mut out = Outcome::default();
    let start = Instant::now();
    let mut i = 0u64;
    while until.more(i) {
        let req = request(i);
        let t = Instant::now();
        let r = c.request(req);
        let dt = t.elapsed();
        match r {
            Ok(_) => out.ok += 1,
            Err(ClientError::Remote(e)) => out.note_err(e),
            Err(e) => return Err(e.into()),
        }
        out.latencies_us.push(micros(dt));
        if keep_starts {
            out.starts.push(t);
        }
        i += 1;
    }
    out.elapsed = start.elapsed();
    Ok(out)
}

/// Keeps between `window / 2` and `window` calls in flight on one connection: sends half
/// a window, flushes once, then reads replies and refills in half-window bursts. Reads
/// every reply of what was sent before returning.
pub(crate) fn pipeline(
    c: &mut Client,
    actor: &str,
    method: &str,
    window: usize,
    until: Until<'_>,
    mut args: impl FnMut(u64) -> Value,
) -> Result<Outcome> {
    pipeline_requests(c, window, until, |i| call_request(actor, method, &args(i)))
}

/// [`pipeline`] of whole requests: `request(i)` gives the i-th.
pub(crate) fn pipeline_requests(
    c: &mut Client,
    window: usize,
    until: Until<'_>,
    mut request: impl FnMut(u64) -> Value,
) -> Result<Outcome> {
    let window = window.max(1) as u64;
    let refill = (window / 2).max(1);
    let mut out = Outcome::default();
    let start = Instant::now();
    let (mut sent, mut done) = (0u64, 0u64);
    while sent < window && until.more(sent) {
        c.send(request(sent))?;
        sent += 1;
    }
    c.flush()?;
    while done < sent {
        let reply = c.recv()?;
        done += 1;
        match reply.into_result() {
            Ok(_) => out.ok += 1,
            Err(e) => out.note_err(e),
        }
        if sent - done <= window - refill && until.more(sent) {
            let mut k = 0;
            while k < refill && until.more(sent) {
                c.send(request(sent))?;
                sent += 1;
                k += 1;
            }
            c.flush()?;
        }
    }
    out.elapsed = start.elapsed();
    Ok(out)
}
