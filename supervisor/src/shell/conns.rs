//! Control connections, served by the event loop itself: no thread per connection.
//!
//! Input is read without blocking, framed into lines of at most `max_request_bytes`
//! (a longer line is answered with `BadRequest` and skipped up to its newline), parsed,
//! and handed to the core in order. Each connection gets a read budget per turn of the
//! loop, so one busy client cannot starve the others. Replies collect in the
//! connection's output buffer and are written when the loop has finished its turn.
//!
//! Bounds: memory per connection counts the replies it is owed, not only the requests
//! read. A connection's requests stop being read (the rest of what was read stays
//! unparsed, at most one read's worth) once its unread replies plus its owed replies at
//! the size of its recent ones would exceed `max_queued_reply_bytes`, or once it has as
//! many requests in flight as its window allows: a new connection starts with
//! [`INITIAL_WINDOW`] and gains one per reply delivered to it, up to
//! [`MAX_OWED_REPLIES`] (a client that reads gets deep pipelining within a few round
//! trips; one that does not read never gets more than a few large replies ahead). Past
//! `max_total_reply_bytes` of unread replies over all connections, no connection with
//! replies waiting is read from. A client that does not read thus stalls only itself;
//! its memory is returned when it goes. One that accepts no output for
//! [`WRITE_TIMEOUT`] is dropped. A client that stops sending (a half-closed socket, as
//! `socat` and `nc -N` leave it) still gets every reply it is owed, for up to
//! [`HALF_CLOSED_GRACE`].
//!
//! Event subscribers (`subscribe` op) get every event line appended to their output; one
//! whose unread output would pass [`SUBSCRIBER_BUFFER`], or that accepts no output for
//! [`WRITE_TIMEOUT`], is dropped: it gets a final `dropped` line, is read no more, and
//! is closed once that is written (or after [`DROPPED_GRACE`]). Publishing never waits
//! for a subscriber.
//!
//! Access: every connection's peer credentials (SO_PEERCRED) are checked: root, the
//! supervisor's own uid and `allowed_uids` may talk; anyone else gets one `Unauthorized`
//! reply and is closed, as is a connection past the connection limit (`Busy`). Their
//! input is drained for a moment first (closing with unread input would reset the
//! socket and hide the reason), with no thread and a bounded number of them at once.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::{ErrorKind as IoKind, Read};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use mio::net::{UnixListener, UnixStream};
use mio::{Interest, Registry};
use nix::errno::Errno;
use nix::sys::socket::{MsgFlags, getsockopt, send, sockopt::PeerCredentials};

use resurgam_shared::protocol::{
    ErrorBody, ErrorKind, NULL_ID, Request, encode_err, parse_request,
};

use crate::control::Access;
use crate::core::ConnId;
use crate::shell::token;

/// Requests a new connection may have in flight; each reply delivered to it allows one
/// more…
pub const INITIAL_WINDOW: usize = 8;
/// …up to this many.
pub const MAX_OWED_REPLIES: usize = 16 * 1024;
/// A connection's reply-size estimate forgets a large reply over about this many
/// smaller ones.
const REPLY_SIZE_DECAY: usize = 64;
/// Output buffers at least this large are returned to the OS when their connection
/// closes (`malloc_trim`).
const TRIM_AFTER_BYTES: usize = 1 << 20;
/// A reply at least this large was built from a larger transient (a `status` of
/// hundreds of actors is a JSON tree several times its text): the heap is trimmed after
/// it too (measured: a status of 1,000 actors left 6.6 MiB more RSS without).
const TRIM_AFTER_REPLY_BYTES: usize = 256 << 10;
/// A client that accepts no output for this long is dropped.
pub const WRITE_TIMEOUT: Duration = Duration::from_secs(30);
/// How long replies are still delivered to a client that stopped sending.
pub const HALF_CLOSED_GRACE: Duration = Duration::from_secs(60);
/// Unread output a subscriber may have before it is dropped.
pub const SUBSCRIBER_BUFFER: usize = 1 << 20;
/// How long a dropped subscriber has to read its final line.
pub const DROPPED_GRACE: Duration = Duration::from_secs(5);
/// Bytes read from one connection per turn of the loop.
const READ_BUDGET: usize = 256 * 1024;
/// How long a refused connection's input is drained, and how much of it at most.
const REFUSED_DRAIN: Duration = Duration::from_millis(500);
const REFUSED_DRAIN_BYTES: usize = 1 << 20;
/// Refused connections drained at once; more are closed at once.
const MAX_REFUSED: usize = 256;
/// After accept fails for lack of fds, wait this long before trying again.
const ACCEPT_RETRY: Duration = Duration::from_millis(10);

struct Conn {
    stream: UnixStream,
    lines: LineFramer,
    out: Vec<u8>,
    /// How much of `out` is written.
    sent: usize,
    /// Requests read and not yet answered (every request gets exactly one reply).
    owed: usize,
    /// Requests it may have in flight (grows with the replies delivered to it).
    window: usize,
    /// Recent reply size (the largest, forgotten slowly): what an owed reply is
    /// expected to take. `None` until its first reply: then the request limit is assumed
    /// (the default `max_reply_bytes`).
    reply_size: Option<usize>,
    /// Input read but not parsed yet: the rest of a read after the connection hit its
    /// limits (at most one read's worth).
    unread: Vec<u8>,
    /// In the read queue (input may be waiting).
    queued: bool,
    /// Not read from until the client takes its replies.
    paused: bool,
    /// The client stopped sending, at this time.
    eof_at: Option<Instant>,
    /// Output has been waiting without progress since then.
    stalled_since: Option<Instant>,
    /// In the write list of this turn.
    to_write: bool,
    /// Registered for writability (only while output waits for room in the socket).
    watching_writes: bool,
    /// A subscriber dropped for not keeping up, at this time: read no more, closed once
    /// its output is written.
    dropped_at: Option<Instant>,
    /// Receives events: the stream goes on after the client stops sending.
    subscribed: bool,
}

impl Conn {
    fn pending(&self) -> usize {
        self.out.len() - self.sent
    }

    /// Writes what waits, without blocking and without SIGPIPE. Returns whether any
    /// byte went out, or `Err` once the client is gone for good. Each reply delivered
    /// whole widens the window by one.
    fn write_out(&mut self) -> Result<bool, ()> {
        let mut wrote = false;
        while self.pending() > 0 {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.stream.as_raw_fd(), &self.out[self.sent..], flags) {
                Ok(0) => return Err(()),
                Ok(n) => {
                    let delivered = self.out[self.sent..self.sent + n]
                        .iter()
                        .filter(|&&b| b == b'\n')
                        .count();
                    self.window = (self.window + delivered).min(MAX_OWED_REPLIES);
                    self.sent += n;
                    wrote = true;
                }
                Err(Errno::EAGAIN) => break,
                Err(Errno::EINTR) => {}
                Err(_) => return Err(()),
            }
        }
        Ok(wrote)
    }

    /// Appends output; the caller puts the connection in the write list.
    fn push_out(&mut self, bytes: &[u8]) {
        if self.pending() == 0 {
            self.out.clear();
            self.sent = 0;
        }
        self.out.extend_from_slice(bytes);
    }

    /// Its unread replies plus those it is owed, at their expected size.
    fn outstanding(&self, limits: &Limits) -> usize {
        let expected = self.reply_size.unwrap_or(limits.first_reply);
        self.pending()
            .saturating_add(self.owed.saturating_mul(expected))
    }

    /// True when no more of its requests may be read now: what it is owed reaches its
    /// budget, or its window is full, or every connection together is at the total
    /// budget (`others`: what the other connections are owed) and this one is owed
    /// something (one with nothing outstanding may always send a request).
    fn over_limits(&self, limits: &Limits, others: usize) -> bool {
        let mine = self.outstanding(limits);
        mine >= limits.per_connection
            || self.owed >= self.window
            || (others.saturating_add(mine) >= limits.total && mine > 0)
    }

    /// Has everything it is owed, and will ask for nothing more.
    fn finished(&self) -> bool {
        (self.eof_at.is_some() && self.owed == 0 && !self.subscribed || self.dropped_at.is_some())
            && self.pending() == 0
    }

    /// Takes no more input (it stopped sending, or was dropped).
    fn done_reading(&self) -> bool {
        self.eof_at.is_some() || self.dropped_at.is_some()
    }
}

/// The bounds of what connections are owed, from the config.
#[derive(Clone, Copy)]
struct Limits {
    per_connection: usize,
    total: usize,
    /// The size assumed for a reply before a connection has had one.
    first_reply: usize,
}

struct Refused {
    stream: UnixStream,
    until: Instant,
    left: usize,
}

/// Every control connection, and the listening socket.
pub struct Conns {
    listener: UnixListener,
    registry: Registry,
    access: Access,
    live: HashMap<ConnId, Conn>,
    refused: HashMap<ConnId, Refused>,
    next: ConnId,
    /// Connections that may have input to read, in turn order.
    to_read: VecDeque<ConnId>,
    /// Connections with output to write.
    to_write: Vec<ConnId>,
    /// Connections with a deadline (output stalled, or the client stopped sending).
    timed: HashSet<ConnId>,
    /// When to try accepting again after running out of fds.
    accept_again: Option<Instant>,
    /// Where input is read into (kept: not zeroed again every turn).
    scratch: Vec<u8>,
    /// What every connection together is owed ([`Conn::outstanding`]).
    owed_total: usize,
    limits: Limits,
    /// A large output buffer was freed: give memory back to the OS.
    trim: bool,
    /// Connections that receive events.
    subscribers: Vec<ConnId>,
    /// Connections accepted and served since the start (for the metrics).
    pub accepted: u64,
    /// Subscribers dropped for not keeping up (for the metrics).
    pub dropped_subscribers: u64,
    /// The `seq` of the newest event published.
    published: u64,
    /// When a refusal was last logged, and how many were not logged since.
    refusals_logged: Option<Instant>,
    refusals_unlogged: u64,
}

/// A refused connection is logged at most this often (a flood is not a log flood); the
/// next line counts those left out.
const REFUSAL_LOG_EVERY: Duration = Duration::from_secs(1);

impl Conns {
    pub fn new(
        mut listener: UnixListener,
        registry: Registry,
        access: Access,
    ) -> std::io::Result<Conns> {
        registry.register(&mut listener, token::LISTENER, Interest::READABLE)?;
        let limits = Limits {
            per_connection: access.max_queued_reply_bytes,
            total: access.max_total_reply_bytes,
            first_reply: access.max_request_bytes,
        };
        Ok(Conns {
            listener,
            registry,
            access,
            live: HashMap::new(),
            refused: HashMap::new(),
            next: 1,
            to_read: VecDeque::new(),
            to_write: Vec::new(),
            timed: HashSet::new(),
            accept_again: None,
            scratch: vec![0; 64 * 1024],
            owed_total: 0,
            limits,
            trim: false,
            subscribers: Vec::new(),
            accepted: 0,
            dropped_subscribers: 0,
            published: 0,
            refusals_logged: None,
            refusals_unlogged: 0,
        })
    }

    /// Accepts every waiting connection.
    pub fn accept(&mut self, now: Instant) {
        self.accept_again = None;
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == IoKind::WouldBlock => return,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                Err(e) => {
                    // EMFILE and friends: the pending connections stay in the backlog;
                    // try again shortly rather than spin.
                    tracing::warn!(error = %e, "accept on the control socket failed");
                    self.accept_again = Some(now + ACCEPT_RETRY);
                    return;
                }
            };
            let conn = self.next;
            self.next += 1;
            self.admit(stream, conn, now);
        }
    }

    fn admit(&mut self, mut stream: UnixStream, conn: ConnId, now: Instant) {
        let refusal = match getsockopt(&stream, PeerCredentials) {
            Ok(cred) if self.access.allows(cred.uid()) => None,
            Ok(cred) => {
                if self
                    .refusals_logged
                    .is_none_or(|at| now.saturating_duration_since(at) >= REFUSAL_LOG_EVERY)
                {
                    tracing::warn!(
                        uid = cred.uid(),
                        pid = cred.pid(),
                        not_logged = self.refusals_unlogged,
                        "control connection refused: uid not allowed (not_logged: refusals since the last such line)"
                    );
                    self.refusals_logged = Some(now);
                    self.refusals_unlogged = 0;
                } else {
                    self.refusals_unlogged += 1;
                }
                Some((
                    ErrorKind::Unauthorized,
                    format!("uid {} may not use this supervisor", cred.uid()),
                ))
            }
            Err(e) => Some((
                ErrorKind::Unauthorized,
                format!("cannot read peer credentials: {e}"),
            )),
        };
        let refusal = refusal.or_else(|| {
            (self.live.len() >= self.access.max_connections).then(|| {
                (
                    ErrorKind::Busy,
                    format!(
                        "too many connections (limit {})",
                        self.access.max_connections
                    ),
                )
            })
        });
        if let Some((kind, message)) = refusal {
            return self.refuse(stream, conn, kind, message, now);
        }
        if let Err(e) = self
            .registry
            .register(&mut stream, token::conn(conn), Interest::READABLE)
        {
            tracing::warn!(conn, error = %e, "cannot serve a control connection");
            return;
        }
        self.live.insert(
            conn,
            Conn {
                stream,
                lines: LineFramer::default(),
                out: Vec::new(),
                sent: 0,
                owed: 0,
                window: INITIAL_WINDOW,
                reply_size: None,
                unread: Vec::new(),
                queued: true,
                paused: false,
                eof_at: None,
                stalled_since: None,
                to_write: false,
                watching_writes: false,
                dropped_at: None,
                subscribed: false,
            },
        );
        self.accepted += 1;
        // Input may have arrived with the connection.
        self.to_read.push_back(conn);
    }

    /// Answers a connection that is not served with one error line, then drains its
    /// input for a moment and closes it.
    fn refuse(
        &mut self,
        mut stream: UnixStream,
        conn: ConnId,
        kind: ErrorKind,
        message: String,
        now: Instant,
    ) {
        let line = encode_err(NULL_ID, &ErrorBody::new(kind, message));
        let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
        let _ = send(stream.as_raw_fd(), line.as_bytes(), flags);
        let _ = stream.shutdown(std::net::Shutdown::Write);
        if self.refused.len() >= MAX_REFUSED {
            return;
        }
        if self
            .registry
            .register(&mut stream, token::conn(conn), Interest::READABLE)
            .is_ok()
        {
            let mut r = Refused {
                stream,
                until: now + REFUSED_DRAIN,
                left: REFUSED_DRAIN_BYTES,
            };
            if !drain_refused(&mut r) {
                self.refused.insert(conn, r);
            } else {
                let _ = self.registry.deregister(&mut r.stream);
            }
        }
    }

    /// A connection's socket is ready.
    pub fn ready(&mut self, conn: ConnId, readable: bool, writable: bool) {
        if let Some(r) = self.refused.get_mut(&conn) {
            if drain_refused(r)
                && let Some(mut r) = self.refused.remove(&conn)
            {
                let _ = self.registry.deregister(&mut r.stream);
            }
            return;
        }
        let Some(c) = self.live.get_mut(&conn) else {
            return;
        };
        if readable && !c.queued && !c.paused && !c.done_reading() {
            c.queued = true;
            self.to_read.push_back(conn);
        }
        if writable && c.pending() > 0 && !c.to_write {
            c.to_write = true;
            self.to_write.push(conn);
        }
    }

    /// True while some connection has input left from an earlier turn.
    pub fn has_input(&self) -> bool {
        !self.to_read.is_empty()
    }

    /// Reads each queued connection once (up to its budget) and hands every request to
    /// `deliver`, in order per connection.
    pub fn read(&mut self, now: Instant, mut deliver: impl FnMut(ConnId, Request)) {
        let max = self.access.max_request_bytes;
        let limits = self.limits;
        let mut buf = std::mem::take(&mut self.scratch);
        for _ in 0..self.to_read.len() {
            let Some(conn) = self.to_read.pop_front() else {
                break;
            };
            let Some(c) = self.live.get_mut(&conn) else {
                continue;
            };
            let before = c.outstanding(&limits);
            let others = self.owed_total - before;
            let mut taken = 0;
            let more = loop {
                if c.dropped_at.is_some() {
                    break false;
                }
                if c.over_limits(&limits, others) {
                    // Backpressure: read again once the client takes its replies.
                    c.paused = true;
                    break false;
                }
                if !c.unread.is_empty() {
                    // What was read before the connection hit its limits comes first.
                    let input = std::mem::take(&mut c.unread);
                    let used =
                        frame_requests(c, &input, (max, &limits, others), &mut deliver, conn);
                    c.unread = input;
                    c.unread.drain(..used);
                    if !c.unread.is_empty() {
                        continue;
                    }
                    if c.unread.capacity() > buf.len() {
                        c.unread = Vec::new();
                    }
                }
                if taken >= READ_BUDGET {
                    break true;
                }
                match c.stream.read(&mut buf) {
                    Ok(0) => {
                        c.eof_at = Some(now);
                        self.timed.insert(conn);
                        let lines = std::mem::take(&mut c.lines);
                        lines.finish(|l| take_line(c, l, max, &mut deliver, conn));
                        break false;
                    }
                    Ok(n) => {
                        taken += n;
                        let used = frame_requests(
                            c,
                            &buf[..n],
                            (max, &limits, others),
                            &mut deliver,
                            conn,
                        );
                        // Kept for when the connection may go on (at most one read).
                        c.unread.extend_from_slice(&buf[used..n]);
                    }
                    Err(e) if e.kind() == IoKind::WouldBlock => break false,
                    Err(e) if e.kind() == IoKind::Interrupted => {}
                    Err(e) => {
                        if e.kind() != IoKind::ConnectionReset {
                            tracing::debug!(conn, error = %e, "control connection read failed");
                        }
                        c.eof_at = Some(now);
                        self.timed.insert(conn);
                        break false;
                    }
                }
            };
            self.owed_total = others + c.outstanding(&limits);
            if c.pending() > 0 && !c.to_write {
                c.to_write = true;
                self.to_write.push(conn);
            }
            if more {
                self.to_read.push_back(conn);
            } else {
                c.queued = false;
                if c.finished() {
                    self.close(conn);
                }
            }
        }
        self.scratch = buf;
    }

    /// Queues one reply line for a connection.
    pub fn reply(&mut self, conn: ConnId, line: &str) {
        let Some(c) = self.live.get_mut(&conn) else {
            return;
        };
        tracked(&mut self.owed_total, &self.limits, c, |c| {
            c.owed = c.owed.saturating_sub(1);
            let recent = c.reply_size.map_or(0, |r| r - r / REPLY_SIZE_DECAY);
            c.reply_size = Some(line.len().max(recent));
            c.push_out(line.as_bytes());
        });
        self.trim |= line.len() >= TRIM_AFTER_REPLY_BYTES;
        if !c.to_write {
            c.to_write = true;
            self.to_write.push(conn);
        }
    }

    /// Writes what waits for each connection, as far as its socket takes it.
    pub fn flush(&mut self, now: Instant) {
        let list = std::mem::take(&mut self.to_write);
        for conn in list {
            let Some(c) = self.live.get_mut(&conn) else {
                continue;
            };
            c.to_write = false;
            let Ok(wrote) = tracked(&mut self.owed_total, &self.limits, c, Conn::write_out) else {
                // The client is gone for good: whatever it is owed cannot reach it.
                self.close(conn);
                continue;
            };
            if c.pending() == 0 {
                c.out.clear();
                c.sent = 0;
                c.stalled_since = None;
                if c.out.capacity() >= TRIM_AFTER_BYTES {
                    c.out.shrink_to(64 * 1024);
                    self.trim = true;
                }
            } else if wrote || c.stalled_since.is_none() {
                c.stalled_since = Some(now);
            }
            // Writability is watched only while output waits for room: a socket that
            // has room says so after every read of the client, waking the loop for nothing.
            let watch = c.pending() > 0;
            if watch != c.watching_writes {
                let interest = if watch {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                if self
                    .registry
                    .reregister(&mut c.stream, token::conn(conn), interest)
                    .is_ok()
                {
                    c.watching_writes = watch;
                }
            }
            let others = self.owed_total - c.outstanding(&self.limits);
            if c.paused && !c.over_limits(&self.limits, others) {
                c.paused = false;
                if !c.done_reading() && !c.queued {
                    c.queued = true;
                    self.to_read.push_back(conn);
                }
            }
            if c.stalled_since.is_some() || c.done_reading() {
                self.timed.insert(conn);
            } else {
                self.timed.remove(&conn);
            }
            if c.finished() {
                self.close(conn);
            }
        }
    }

    /// Writes what waits for every connection (at exit).
    pub fn flush_all(&mut self, now: Instant) {
        for (&conn, c) in self.live.iter_mut() {
            if c.pending() > 0 && !c.to_write {
                c.to_write = true;
                self.to_write.push(conn);
            }
        }
        self.flush(now);
    }

    /// Drops connections past their deadlines. Returns the next deadline, if any.
    pub fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let mut next: Option<Instant> = self.accept_again;
        let mut expired = Vec::new();
        for (conn, c) in self
            .timed
            .iter()
            .filter_map(|k| Some((*k, self.live.get(k)?)))
        {
            let deadlines = [
                c.stalled_since.map(|t| t + WRITE_TIMEOUT),
                c.eof_at
                    .filter(|_| !c.subscribed)
                    .map(|t| t + HALF_CLOSED_GRACE),
                c.dropped_at.map(|t| t + DROPPED_GRACE),
            ];
            for d in deadlines.into_iter().flatten() {
                if d <= now {
                    expired.push(conn);
                } else {
                    next = Some(next.map_or(d, |n| n.min(d)));
                }
            }
        }
        expired.sort_unstable();
        expired.dedup();
        for conn in expired {
            // A subscriber that takes no events gets its notice (and a grace to read it).
            if self.subscribers.contains(&conn) {
                self.drop_subscriber(conn, self.published + 1, now);
            } else {
                self.close(conn);
            }
        }
        let gone: Vec<ConnId> = self
            .refused
            .iter()
            .filter(|(_, r)| r.until <= now)
            .map(|(c, _)| *c)
            .collect();
        for conn in gone {
            if let Some(mut r) = self.refused.remove(&conn) {
                let _ = self.registry.deregister(&mut r.stream);
            }
        }
        if let Some(d) = self.refused.values().map(|r| r.until).min() {
            next = Some(next.map_or(d, |n| n.min(d)));
        }
        self.return_memory();
        next
    }

    /// True when accepting should be tried again now (after running out of fds).
    pub fn accept_due(&self, now: Instant) -> bool {
        self.accept_again.is_some_and(|t| t <= now)
    }

    /// True while some connection still has output to write.
    pub fn writing(&self) -> bool {
        self.live.values().any(|c| c.pending() > 0)
    }

    /// Connections served now.
    pub fn open(&self) -> usize {
        self.live.len()
    }

    /// Subscribers now.
    pub fn subscribed(&self) -> usize {
        self.subscribers.len()
    }

    /// Answers a `subscribe` request with `ack`, then sends the `history` lines; from now
    /// on the connection gets every event [`Conns::publish`]es.
    pub fn subscribe<'a>(
        &mut self,
        conn: ConnId,
        ack: &str,
        history: impl Iterator<Item = &'a str>,
    ) {
        self.reply(conn, ack);
        let Some(c) = self.live.get_mut(&conn) else {
            return;
        };
        tracked(&mut self.owed_total, &self.limits, c, |c| {
            for line in history {
                c.push_out(line.as_bytes());
            }
        });
        c.subscribed = true;
        if !self.subscribers.contains(&conn) {
            self.subscribers.push(conn);
        }
    }

    /// Appends event `seq`'s line (with its newline) to every subscriber's output; drops
    /// a subscriber whose unread output would pass [`SUBSCRIBER_BUFFER`].
    pub fn publish(&mut self, seq: u64, line: &str, now: Instant) {
        self.published = seq;
        let mut gone = Vec::new();
        for &conn in &self.subscribers {
            let Some(c) = self.live.get_mut(&conn) else {
                gone.push(conn);
                continue;
            };
            if c.pending() + line.len() > SUBSCRIBER_BUFFER {
                gone.push(conn);
                continue;
            }
            tracked(&mut self.owed_total, &self.limits, c, |c| {
                c.push_out(line.as_bytes());
            });
            if !c.to_write {
                c.to_write = true;
                self.to_write.push(conn);
            }
        }
        for conn in gone {
            self.drop_subscriber(conn, seq, now);
        }
    }

    /// Stops sending events to a subscriber that does not read them: its last line says
    /// so (`missed`: the first event it does not get); it is closed once that is written.
    fn drop_subscriber(&mut self, conn: ConnId, missed: u64, now: Instant) {
        self.subscribers.retain(|&c| c != conn);
        let Some(c) = self.live.get_mut(&conn) else {
            return;
        };
        let unread = c.pending();
        tracing::warn!(
            conn,
            unread,
            "event subscriber does not read its events; dropping it"
        );
        let line = crate::shell::events::dropped_line(unread, missed);
        tracked(&mut self.owed_total, &self.limits, c, |c| {
            c.push_out(line.as_bytes());
        });
        c.dropped_at = Some(now);
        c.stalled_since = None;
        self.timed.insert(conn);
        self.dropped_subscribers += 1;
        if !c.to_write {
            c.to_write = true;
            self.to_write.push(conn);
        }
    }

    fn close(&mut self, conn: ConnId) {
        if let Some(i) = self.subscribers.iter().position(|&c| c == conn) {
            self.subscribers.swap_remove(i);
        }
        self.timed.remove(&conn);
        if let Some(mut c) = self.live.remove(&conn) {
            let _ = self.registry.deregister(&mut c.stream);
            self.owed_total -= c.outstanding(&self.limits);
            self.trim |= c.out.capacity() >= TRIM_AFTER_BYTES;
        }
    }

    /// Gives the memory of large output buffers freed since the last call back to the
    /// OS: the allocator keeps freed memory for reuse otherwise, and the RSS of a
    /// supervisor that served a client who did not read would stay high.
    pub fn return_memory(&mut self) {
        if std::mem::take(&mut self.trim) {
            trim_heap();
        }
    }
}

/// Runs `f` on a connection and keeps `total` (`Conns::owed_total`, the sum of every
/// live connection's [`Conn::outstanding`]) in step with what `f` changed.
fn tracked<R>(
    total: &mut usize,
    limits: &Limits,
    c: &mut Conn,
    f: impl FnOnce(&mut Conn) -> R,
) -> R {
    let before = c.outstanding(limits);
    let result = f(c);
    *total = *total - before + c.outstanding(limits);
    result
}

/// Returns the allocator's free memory to the OS (glibc keeps freed memory for reuse,
/// even many megabytes of it).
fn trim_heap() {
    #[cfg(target_env = "gnu")]
    // SAFETY: malloc_trim only releases free memory of the allocator's own heaps; it
    // takes no pointer and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Reads and drops a refused client's input; true once done with it.
fn drain_refused(r: &mut Refused) -> bool {
    let mut sink = [0u8; 4096];
    loop {
        match r.stream.read(&mut sink) {
            Ok(0) => return true,
            Ok(n) => {
                r.left = r.left.saturating_sub(n);
                if r.left == 0 {
                    return true;
                }
            }
            Err(e) if e.kind() == IoKind::WouldBlock => return false,
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(_) => return true,
        }
    }
}

/// One framed piece of a connection's input.
#[derive(Debug, PartialEq, Eq)]
enum Framed<'a> {
    /// A line, without its newline.
    Line(&'a [u8]),
    /// A line longer than the limit (skipped).
    TooLong,
}

/// Cuts a byte stream into lines of at most `max` bytes, never holding more than
/// `max` + 1 bytes of a line.
#[derive(Default)]
struct LineFramer {
    line: Vec<u8>,
    /// The line being read is over the limit: skip to its newline.
    too_long: bool,
}

impl LineFramer {
    /// Frames `bytes`, handing each line to `emit` until it returns false. Returns how
    /// many bytes were taken: all, or up to the end of the line after which `emit`
    /// asked to stop.
    fn push(
        &mut self,
        bytes: &[u8],
        max: usize,
        mut emit: impl FnMut(Framed<'_>) -> bool,
    ) -> usize {
        let mut at = 0;
        while at < bytes.len() {
            let rest = &bytes[at..];
            let (part, len, done) = match rest.iter().position(|&b| b == b'\n') {
                Some(i) => (&rest[..i], i + 1, true),
                None => (rest, rest.len(), false),
            };
            if !self.too_long {
                if self.line.len() + part.len() > max {
                    self.too_long = true;
                    self.line = Vec::new();
                } else {
                    self.line.extend_from_slice(part);
                }
            }
            at += len;
            if done && !self.end(&mut emit) {
                break;
            }
        }
        at
    }

    /// At the end of input, a last line without a newline still counts.
    fn finish(mut self, mut emit: impl FnMut(Framed<'_>)) {
        if self.too_long || !self.line.is_empty() {
            self.end(&mut |l| {
                emit(l);
                true
            });
        }
    }

    /// Emits the line that just ended; returns what `emit` did.
    fn end(&mut self, emit: &mut impl FnMut(Framed<'_>) -> bool) -> bool {
        let go_on = if std::mem::take(&mut self.too_long) {
            emit(Framed::TooLong)
        } else {
            emit(Framed::Line(&self.line))
        };
        self.line.clear();
        if self.line.capacity() > 64 * 1024 {
            self.line = Vec::new();
        }
        go_on
    }
}

/// Frames `input` into requests for the core until the connection reaches its limits;
/// returns how many bytes were taken.
fn frame_requests(
    c: &mut Conn,
    input: &[u8],
    (max, limits, others): (usize, &Limits, usize),
    deliver: &mut impl FnMut(ConnId, Request),
    conn: ConnId,
) -> usize {
    let mut lines = std::mem::take(&mut c.lines);
    let used = lines.push(input, max, |l| {
        take_line(c, l, max, deliver, conn);
        !c.over_limits(limits, others)
    });
    c.lines = lines;
    used
}

/// Hands one framed line to the core, or answers it at once when it is no request.
fn take_line(
    c: &mut Conn,
    framed: Framed<'_>,
    max: usize,
    deliver: &mut impl FnMut(ConnId, Request),
    conn: ConnId,
) {
    let refusal = match framed {
        Framed::TooLong => Some(encode_err(
            NULL_ID,
            &ErrorBody::new(
                ErrorKind::BadRequest,
                format!("request exceeds max_request_bytes ({max} bytes)"),
            ),
        )),
        Framed::Line(line) => {
            let text = trim_line(line);
            if text.is_empty() {
                None
            } else {
                match parse_request(text) {
                    Ok(request) => {
                        c.owed += 1;
                        deliver(conn, request);
                        None
                    }
                    Err(rejected) => Some(encode_err(&rejected.id, &rejected.error)),
                }
            }
        }
    };
    if let Some(line) = refusal {
        c.push_out(line.as_bytes());
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]], max: usize) -> Vec<Result<Vec<u8>, ()>> {
        let mut out = Vec::new();
        let mut f = LineFramer::default();
        let mut emit = |l: Framed<'_>| {
            out.push(match l {
                Framed::Line(l) => Ok(trim_line(l).to_vec()),
                Framed::TooLong => Err(()),
            });
            true
        };
        for c in chunks {
            assert_eq!(f.push(c, max, &mut emit), c.len());
        }
        f.finish(|l| {
            emit(l);
        });
        out
    }

    #[test]
    fn splits_lines_across_chunks_and_skips_oversized_ones() {
        let got = lines(&[b"ab\n01234", b"56789abcdef\ncd", b"\nlast"], 8);
        assert_eq!(
            got,
            vec![
                Ok(b"ab".to_vec()),
                Err(()),
                Ok(b"cd".to_vec()),
                Ok(b"last".to_vec())
            ]
        );
    }

    #[test]
    fn a_line_of_exactly_max_bytes_is_accepted() {
        assert_eq!(lines(&[b"12345678\n"], 8), vec![Ok(b"12345678".to_vec())]);
        assert_eq!(lines(&[b"123456789\n"], 8), vec![Err(())]);
        assert_eq!(
            lines(&[b"123456789"], 8),
            vec![Err(())],
            "at the end of input too"
        );
    }

    #[test]
    fn an_endless_line_holds_no_more_than_the_limit() {
        let mut f = LineFramer::default();
        let chunk = vec![b'x'; 4096];
        for _ in 0..1000 {
            f.push(&chunk, 1024, |_| panic!("no line ends"));
            assert!(f.line.capacity() <= 8192, "{}", f.line.capacity());
        }
        let mut got = Vec::new();
        f.push(b"\nok\n", 1024, |l| {
            got.push(matches!(l, Framed::TooLong) as u8);
            true
        });
        assert_eq!(got, vec![1, 0]);
    }

    #[test]
    fn framing_stops_after_the_line_that_reaches_the_limit() {
        let mut f = LineFramer::default();
        let mut got = Vec::new();
        let input = b"a\nbb\ncc";
        let used = f.push(input, 8, |l| {
            if let Framed::Line(l) = l {
                got.push(l.to_vec());
            }
            got.is_empty()
        });
        assert_eq!(used, 2, "up to the end of the first line");
        assert_eq!(got, vec![b"a".to_vec()]);
        // The rest, given again later, frames as if never cut.
        assert_eq!(f.push(&input[used..], 8, |_| true), input.len() - used);
        let mut last = Vec::new();
        f.finish(|l| {
            if let Framed::Line(l) = l {
                last.push(l.to_vec());
            }
        });
        assert_eq!(last, vec![b"cc".to_vec()]);
    }
}
