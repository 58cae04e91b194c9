//! The control socket: a Unix stream socket speaking newline-delimited JSON.
//!
//! One accept thread; per connection a reader thread (frames lines, enforces the size
//! limit, parses, forwards requests to the core in order) and a writer thread (writes
//! reply lines, flushing when it has nothing more queued). A slow or hostile client only
//! ever holds up its own two threads.
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

/// Most connections served at once; more are refused with `Busy`.
pub const MAX_CONNECTIONS: usize = 4096;

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
    writer: Sender<String>,
    /// Chunks handed to the writer thread and not yet written by it.
    queued: Arc<AtomicUsize>,
}

impl ConnOut {
    /// Sends reply text, in order with everything sent before: directly when the writer
    /// thread has nothing pending, else through it. Returns false once the client is
    /// gone for good.
    pub fn send(&self, text: String) -> bool {
        if self.queued.load(Ordering::Acquire) == 0 {
            let flags = MsgFlags::MSG_DONTWAIT | MsgFlags::MSG_NOSIGNAL;
            match send(self.stream.as_raw_fd(), text.as_bytes(), flags) {
                Ok(n) if n == text.len() => return true,
                Ok(n) => {
                    self.queue(text[n..].to_string());
                    return true;
                }
                Err(nix::errno::Errno::EAGAIN) => {}
                Err(_) => return false,
            }
        }
        self.queue(text);
        true
    }

    fn queue(&self, text: String) {
        self.queued.fetch_add(1, Ordering::AcqRel);
        if self.writer.send(text).is_err() {
            self.queued.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// True while the writer thread still has text to write.
    pub fn busy(&self) -> bool {
        self.queued.load(Ordering::Acquire) > 0
    }
}

/// Who may connect.
#[derive(Clone)]
pub struct Access {
    pub own_uid: u32,
    pub allowed_uids: Vec<u32>,
    pub max_request_bytes: usize,
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

fn refuse(mut stream: UnixStream, kind: ErrorKind, message: String) {
    let line = encode_err(NULL_ID, &ErrorBody::new(kind, message));
    let _ = stream.write_all(line.as_bytes());
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
    if live.load(Ordering::Relaxed) >= MAX_CONNECTIONS {
        refuse(
            stream,
            ErrorKind::Busy,
            format!("too many connections (limit {MAX_CONNECTIONS})"),
        );
        return true;
    }
    let (write_half, direct) = match (stream.try_clone(), stream.try_clone()) {
        (Ok(w), Ok(d)) => (w, d),
        (Err(e), _) | (_, Err(e)) => {
            tracing::warn!(error = %e, "cannot clone a control connection");
            return true;
        }
    };
    let (tx, rx) = crossbeam_channel::unbounded::<String>();
    let queued = Arc::new(AtomicUsize::new(0));
    let conn_out = ConnOut {
        stream: direct,
        writer: tx,
        queued: queued.clone(),
    };
    if events
        .send(ShellEvent::ConnOpened { conn, conn_out })
        .is_err()
    {
        return false;
    }
    live.fetch_add(1, Ordering::Relaxed);
    let w = std::thread::Builder::new()
        .name(format!("conn-{conn}-w"))
        .stack_size(128 * 1024)
        .spawn(move || writer(write_half, rx, &queued));
    let events2 = events.clone();
    let max = access.max_request_bytes;
    let live2 = live.clone();
    let r = std::thread::Builder::new()
        .name(format!("conn-{conn}-r"))
        .stack_size(128 * 1024)
        .spawn(move || {
            reader(stream, conn, max, &events2);
            live2.fetch_sub(1, Ordering::Relaxed);
            let _ = events2.send(ShellEvent::ConnClosed { conn });
        });
    if w.is_err() || r.is_err() {
        tracing::warn!(conn, "cannot start connection threads");
        live.fetch_sub(1, Ordering::Relaxed);
        let _ = events.send(ShellEvent::ConnClosed { conn });
    }
    true
}

fn writer(stream: UnixStream, lines: Receiver<String>, queued: &AtomicUsize) {
    let mut out = BufWriter::with_capacity(64 * 1024, stream);
    while let Ok(line) = lines.recv() {
        let mut taken = 1;
        if out.write_all(line.as_bytes()).is_err() {
            return;
        }
        for more in lines.try_iter() {
            taken += 1;
            if out.write_all(more.as_bytes()).is_err() {
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
fn reader(stream: UnixStream, conn: ConnId, max: usize, events: &Sender<ShellEvent>) {
    let refuse = |line: String| events.send(ShellEvent::Refused { conn, line }).is_ok();
    let mut input = BufReader::with_capacity(64 * 1024, stream);
    let mut line = Vec::with_capacity(1024);
    loop {
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
        };
        assert!(a.allows(0) && a.allows(1000) && a.allows(7));
        assert!(!a.allows(8));
    }
}
