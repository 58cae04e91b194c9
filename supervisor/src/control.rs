//! The control socket: a Unix stream socket speaking newline-delimited JSON.
//!
//! One accept thread; per connection a reader thread (frames lines, enforces the size
//! limit, parses, forwards requests to the core in order). Replies are written by the
//! main loop itself with a non-blocking `send` when the connection's writer thread is
//! idle (the common case: one syscall, no thread hand-off); whatever does not fit goes
//! to the writer thread, which blocks on the socket for it (at most `WRITE_TIMEOUT`).
//! A client that does not read its replies stops being read from once
//! `MAX_QUEUED_REPLY_BYTES` wait for it, so a slow or hostile client only ever holds up
//! its own two threads and a bounded amount of memory.
//!
//! Access: the socket file gets `socket_mode` (0600 by default) and every connection's
//! peer credentials (SO_PEERCRED) are checked: root, the supervisor's own uid and
//! `allowed_uids` may talk; anyone else gets one `Unauthorized` reply and is closed.

use std::io::{BufRead, BufReader, BufWriter, ErrorKind as IoKind, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use crossbeam_channel::{Receiver, Sender};
use nix::sys::socket::{MsgFlags, getsockopt, send, sockopt::PeerCredentials};
use std::os::fd::AsRawFd;

use resurgam_shared::protocol::{ErrorBody, ErrorKind, NULL_ID, encode_err, parse_request};

use crate::core::{ConnId, Event};
use crate::run::ShellEvent;

/// Most connections served at once; more are refused with `Busy` (fewer when the
/// open-file limit is low: see [`max_connections`]).
pub const MAX_CONNECTIONS: usize = 4096;

/// How many connections fit in the open-file limit, keeping room for `actors` workers
/// (a few fds each) and the rest of the supervisor; a connection costs three fds.
pub fn max_connections(actors: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let reserve = 256 + 8 * actors as u64;
    usize::try_from(soft.saturating_sub(reserve) / 3)
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(1, MAX_CONNECTIONS)
}

/// Binds the socket, replacing a stale file but never a live supervisor's socket.
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, String> {
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        std::fs::create_dir_all(dir)
            .map_err(|e| format!("create socket directory {}: {e}", dir.display()))?;
    }
    if path.exists() {
        if UnixStream::connect(path).is_ok() {
            return Err(format!(
                "another supervisor is listening on {}; stop it first",
                path.display()
            ));
        }
        std::fs::remove_file(path)
            .map_err(|e| format!("remove stale socket {}: {e}", path.display()))?;
    }
    let listener = UnixListener::bind(path).map_err(|e| format!("bind {}: {e}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .map_err(|e| format!("chmod {:o} {}: {e}", mode, path.display()))?;
    Ok(listener)
}

/// The main loop's handle on a connection's output.
pub struct ConnOut {
    stream: UnixStream,
    writer: Sender<Vec<u8>>,
    /// Bytes handed to the writer thread and not yet written by it.
    queued: Arc<AtomicUsize>,
    /// Requests read and not yet answered (every request gets exactly one reply).
    owed: Arc<AtomicUsize>,
}

/// A connection whose client does not read its replies stops being read from once
/// this much output waits for it (bounded memory per connection)…
pub const MAX_QUEUED_REPLY_BYTES: usize = 8 << 20;
/// …or once this many of its requests wait for their replies.
pub const MAX_OWED_REPLIES: usize = 16 * 1024;
/// A client that accepts no output for this long is dropped.
const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

impl ConnOut {
    /// Sends reply text, in order with everything sent before: directly when the writer
    /// thread has nothing pending, else through it. Returns false once the client is
    /// gone for good.
    pub fn send(&self, text: String) -> bool {
        let bytes = text.into_bytes();
        if self.queued.load(Ordering::Acquire) == 0 {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.stream.as_raw_fd(), &bytes, flags) {
                Ok(n) if n == bytes.len() => return true,
                // A partial write ends anywhere, even inside a UTF-8 character: the
                // rest goes on as bytes.
                Ok(n) => return self.queue(bytes[n..].to_vec()),
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => return false,
            }
        }
        self.queue(bytes)
    }

    fn queue(&self, bytes: Vec<u8>) -> bool {
        let n = bytes.len();
        self.queued.fetch_add(n, Ordering::AcqRel);
        if self.writer.send(bytes).is_err() {
            // The writer thread is gone (the client stopped reading or left).
            self.queued.fetch_sub(n, Ordering::AcqRel);
            return false;
        }
        true
    }

    /// True while the writer thread still has output to write.
    pub fn busy(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }

    /// Counts one reply produced for this connection.
    pub fn answered(&self) {
        let _ = self
            .owed
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| n.checked_sub(1));
    }

    /// Replies this connection is still owed.
    pub fn owed(&self) -> usize {
        self.owed.load(Ordering::Acquire)
    }
}

/// Who may connect.
#[derive(Clone)]
pub struct Access {
    pub own_uid: u32,
    pub allowed_uids: Vec<u32>,
    pub max_request_bytes: usize,
    pub max_connections: usize,
}

impl Access {
    fn allows(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own_uid || self.allowed_uids.contains(&uid)
    }
}

/// Starts the accept thread.
pub fn start(
    listener: UnixListener,
    access: Access,
    events: Sender<ShellEvent>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("control-accept".into())
        .spawn(move || {
            let live = Arc::new(AtomicUsize::new(0));
            let mut next: ConnId = 1;
            for stream in listener.incoming() {
                let stream = match stream {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept on the control socket failed");
                        // EMFILE and friends: do not spin.
                        std::thread::sleep(std::time::Duration::from_millis(10));
                        continue;
                    }
                };
                let conn = next;
                next += 1;
                if !serve(stream, conn, &access, &events, &live) {
                    return;
                }
            }
        })
}

/// Answers a connection that is not served with one error line, then closes it. The
/// client's request is read and dropped first: closing a socket with unread input
/// resets it, and the client would see "connection reset" instead of the reason.
fn refuse(mut stream: UnixStream, kind: ErrorKind, message: String) {
    let line = encode_err(NULL_ID, &ErrorBody::new(kind, message));
    let _ = stream.set_write_timeout(Some(std::time::Duration::from_secs(1)));
    let _ = stream.write_all(line.as_bytes());
    let _ = stream.shutdown(std::net::Shutdown::Write);
    // Off the accept thread: a refused client must not slow down the others.
    let _ = std::thread::Builder::new()
        .name("refuse".into())
        .stack_size(64 * 1024)
        .spawn(move || {
            let _ = stream.set_read_timeout(Some(std::time::Duration::from_millis(500)));
            let mut sink = [0u8; 4096];
            let mut left: usize = 1 << 20;
            while left > 0 {
                match stream.read(&mut sink) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => left = left.saturating_sub(n),
                }
            }
        });
}

/// Sets up one connection. Returns false when the supervisor is going away.
fn serve(
    stream: UnixStream,
    conn: ConnId,
    access: &Access,
    events: &Sender<ShellEvent>,
    live: &Arc<AtomicUsize>,
) -> bool {
    match getsockopt(&stream, PeerCredentials) {
        Ok(cred) if access.allows(cred.uid()) => {}
        Ok(cred) => {
            tracing::warn!(
                uid = cred.uid(),
                pid = cred.pid(),
                "control connection refused: uid not allowed"
            );
            refuse(
                stream,
                ErrorKind::Unauthorized,
                format!("uid {} may not use this supervisor", cred.uid()),
            );
            return true;
        }
        Err(e) => {
            refuse(
                stream,
                ErrorKind::Unauthorized,
                format!("cannot read peer credentials: {e}"),
            );
            return true;
        }
    }
    if live.load(Ordering::Relaxed) >= access.max_connections {
        refuse(
            stream,
            ErrorKind::Busy,
            format!("too many connections (limit {})", access.max_connections),
        );
        return true;
    }
    let (write_half, direct) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(w), Ok(d)) => (w, d),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(conn, error = %e, "cannot clone a control connection");
            refuse(
                stream,
                ErrorKind::Busy,
                format!("cannot serve this connection: {e}"),
            );
            return true;
        }
    };
    if let Err(e) = write_half.set_write_timeout(Some(WRITE_TIMEOUT)) {
        tracing::warn!(conn, error = %e, "cannot set a write timeout on a control connection");
    }
    let (tx, rx) = crossbeam_channel::unbounded::<Vec<u8>>();
    let queued = Arc::new(AtomicUsize::new(0));
    let owed = Arc::new(AtomicUsize::new(0));
    let conn_out = ConnOut {
        stream: direct,
        writer: tx,
        queued: queued.clone(),
        owed: owed.clone(),
    };
    if events
        .send(ShellEvent::ConnOpened { conn, conn_out })
        .is_err()
    {
        return false;
    }
    // The connection counts until both of its threads have ended.
    live.fetch_add(1, Ordering::Relaxed);
    let parts = Arc::new(AtomicUsize::new(2));
    let done = {
        let (live, parts) = (live.clone(), parts.clone());
        move || {
            if parts.fetch_sub(1, Ordering::AcqRel) == 1 {
                live.fetch_sub(1, Ordering::Relaxed);
            }
        }
    };
    let done_w = done.clone();
    let queued_w = queued.clone();
    let w = std::thread::Builder::new()
        .name(format!("conn-{conn}-w"))
        .stack_size(128 * 1024)
        .spawn(move || {
            writer(write_half, rx, &queued_w);
            done_w();
        });
    let events2 = events.clone();
    let max = access.max_request_bytes;
    let done_r = done.clone();
    let r = std::thread::Builder::new()
        .name(format!("conn-{conn}-r"))
        .stack_size(128 * 1024)
        .spawn(move || {
            reader(stream, conn, max, &events2, &queued, &owed);
            let _ = events2.send(ShellEvent::ConnClosed { conn });
            done_r();
        });
    if w.is_err() || r.is_err() {
        tracing::warn!(conn, "cannot start connection threads");
        if w.is_err() {
            done();
        }
        if r.is_err() {
            done();
            let _ = events.send(ShellEvent::ConnClosed { conn });
        }
    }
    true
}

/// Writes what the main loop could not write directly. Ends when the connection is
/// forgotten, or when the client stops accepting output for `WRITE_TIMEOUT` (then the
/// main loop's next send fails and it forgets the connection).
fn writer(stream: UnixStream, chunks: Receiver<Vec<u8>>, queued: &AtomicUsize) {
    let shut = stream.try_clone();
    write_chunks(stream, &chunks, queued);
    // Whatever ended it, the connection is over: wake the reader (it sees the end of
    // input) and release its backpressure wait.
    if let Ok(s) = shut {
        let _ = s.shutdown(std::net::Shutdown::Both);
    }
    queued.store(0, Ordering::Release);
}

fn write_chunks(stream: UnixStream, chunks: &Receiver<Vec<u8>>, queued: &AtomicUsize) {
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    while let Ok(chunk) = chunks.recv() {
        let mut taken = chunk.len();
        if out.write_all(&chunk).is_err() {
            return;
        }
        for more in chunks.try_iter() {
            taken += more.len();
            if out.write_all(&more).is_err() {
                return;
            }
        }
        if out.flush().is_err() {
            return;
        }
        // Only now may the main loop write directly again (order is kept).
        queued.fetch_sub(taken, Ordering::AcqRel);
    }
}

/// Reads lines of at most `max` bytes. A longer line is answered with `BadRequest` and
/// skipped up to its newline; the connection stays usable.
fn reader(
    stream: UnixStream,
    conn: ConnId,
    max: usize,
    events: &Sender<ShellEvent>,
    queued: &AtomicUsize,
    owed: &AtomicUsize,
) {
    // Counted before it is handed on, so the main loop never sees a reply it was not
    // owed.
    let refuse = |line: String| {
        owed.fetch_add(1, Ordering::AcqRel);
        events.send(ShellEvent::Refused { conn, line }).is_ok()
    };
    let mut input = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::with_capacity(1024);
    loop {
        // Backpressure: a client that does not read its replies, or has too many
        // requests waiting, is not read from.
        while queued.load(Ordering::Acquire) > MAX_QUEUED_REPLY_BYTES
            || owed.load(Ordering::Acquire) > MAX_OWED_REPLIES
        {
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        line.clear();
        match read_line_limited(&mut input, &mut line, max) {
            Ok(LineRead::Eof) => return,
            Ok(LineRead::TooLong) => {
                let err = ErrorBody::new(
                    ErrorKind::BadRequest,
                    format!("request exceeds max_request_bytes ({max} bytes)"),
                );
                if !refuse(encode_err(NULL_ID, &err)) {
                    return;
                }
            }
            Ok(LineRead::Line) => {
                let text = trim_line(&line);
                if text.is_empty() {
                    continue;
                }
                match parse_request(text) {
                    Ok(request) => {
                        owed.fetch_add(1, Ordering::AcqRel);
                        if events
                            .send(ShellEvent::Core(Event::Request { conn, request }))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Err(rejected) => {
                        if !refuse(encode_err(&rejected.id, &rejected.error)) {
                            return;
                        }
                    }
                }
            }
            Err(e) => {
                if e.kind() != IoKind::ConnectionReset {
                    tracing::debug!(conn, error = %e, "control connection read failed");
                }
                return;
            }
        }
    }
}

fn trim_line(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b'\n' | b'\r' | b' ' | b'\t') {
        end -= 1;
    }
    &line[..end]
}

enum LineRead {
    Line,
    TooLong,
    Eof,
}

/// Reads one line into `buf` (without allocating past `max`). At end of input a final
/// line without newline still counts.
fn read_line_limited<R: Read>(
    input: &mut BufReader<R>,
    buf: &mut Vec<u8>,
    max: usize,
) -> std::io::Result<LineRead> {
    let mut too_long = false;
    loop {
        let available = match input.fill_buf() {
            Ok(b) => b,
            Err(e) if e.kind() == IoKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if available.is_empty() {
            return Ok(if too_long {
                LineRead::TooLong
            } else if buf.is_empty() {
                LineRead::Eof
            } else {
                LineRead::Line
            });
        }
        let (chunk, done) = match available.iter().position(|&b| b == b'\n') {
            Some(i) => (&available[..=i], true),
            None => (available, false),
        };
        let n = chunk.len();
        if !too_long {
            if buf.len() + n > max + 1 {
                too_long = true;
                buf.clear();
            } else {
                buf.extend_from_slice(chunk);
            }
        }
        input.consume(n);
        if done {
            return Ok(if too_long {
                LineRead::TooLong
            } else {
                LineRead::Line
            });
        }
    }
}

/// Removes the socket file when the supervisor exits.
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(input: &[u8], max: usize) -> Vec<Result<Vec<u8>, ()>> {
        let mut r = BufReader::with_capacity(7, input);
        let mut out = Vec::new();
        loop {
            let mut buf = Vec::new();
            match read_line_limited(&mut r, &mut buf, max).unwrap() {
                LineRead::Eof => return out,
                LineRead::TooLong => out.push(Err(())),
                LineRead::Line => out.push(Ok(trim_line(&buf).to_vec())),
            }
        }
    }

    #[test]
    fn splits_lines_and_skips_oversized_ones() {
        let got = lines(b"ab\n0123456789abcdef\ncd\nlast", 8);
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
        assert_eq!(lines(b"12345678\n", 8), vec![Ok(b"12345678".to_vec())]);
        assert_eq!(lines(b"123456789\n", 8), vec![Err(())]);
    }

    #[test]
    fn access_rules() {
        let a = Access {
            own_uid: 1000,
            allowed_uids: vec![7],
            max_request_bytes: 10,
            max_connections: 1,
        };
        assert!(a.allows(0) && a.allows(1000) && a.allows(7));
        assert!(!a.allows(8));
    }
}
