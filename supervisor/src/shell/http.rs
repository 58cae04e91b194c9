//! The optional metrics endpoint (`[supervisor].metrics_listen`): `GET /metrics` over
//! HTTP/1.x, served by the event loop itself (no thread per connection, no HTTP
//! library: one request per connection, answered, then closed).
//!
//! Bounds: at most [`MAX_CONNS`] connections at once (more are closed at once), a
//! request head of at most [`MAX_REQUEST_BYTES`], and [`DEADLINE`] for a connection's
//! whole life (reading the request and writing the answer); a slow or silent client is
//! closed then. Anything but `GET /metrics` gets 404, 405 or 400 without a body
//! worth reading.

use std::collections::HashMap;
use std::io::{ErrorKind as IoKind, Read, Write};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};
use mio::{Interest, Registry};

use crate::shell::token;

/// Connections served at once.
pub const MAX_CONNS: usize = 16;
/// Largest request head (request line and headers) read.
pub const MAX_REQUEST_BYTES: usize = 8 * 1024;
/// A connection's whole life: read the request, write the answer.
pub const DEADLINE: Duration = Duration::from_secs(10);

struct HttpConn {
    stream: TcpStream,
    head: Vec<u8>,
    out: Vec<u8>,
    sent: usize,
    until: Instant,
    /// The request was `GET /metrics`: its answer waits for the body.
    wants_metrics: bool,
}

/// The listener and its connections.
pub struct MetricsHttp {
    listener: TcpListener,
    registry: Registry,
    conns: HashMap<usize, HttpConn>,
    next: usize,
    /// Requests answered with the metrics (for the metrics).
    pub scrapes: u64,
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Asked {
    Metrics,
    /// Anything else: the status line and a short reason.
    Refused(&'static str, &'static str),
}

impl MetricsHttp {
    /// Binds `addr` and registers the listener with the loop.
    pub fn bind(addr: SocketAddr, registry: Registry) -> std::io::Result<MetricsHttp> {
        let mut listener = TcpListener::bind(addr)?;
        registry.register(&mut listener, token::HTTP_LISTENER, Interest::READABLE)?;
        Ok(MetricsHttp {
            listener,
            registry,
            conns: HashMap::new(),
            next: 0,
            scrapes: 0,
        })
    }

    /// The address it listens on (port 0 in the config: the one the system chose).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Accepts every waiting connection (closing those past [`MAX_CONNS`]).
    pub fn accept(&mut self, now: Instant) {
        loop {
            let mut stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == IoKind::Interrupted => continue,
                // WouldBlock, or out of fds: what waits stays in the backlog.
                Err(_) => return,
            };
            if self.conns.len() >= MAX_CONNS {
                continue;
            }
            let id = self.next;
            self.next = (self.next + 1) % token::HTTP_CONNS;
            if self.conns.contains_key(&id)
                || self
                    .registry
                    .register(&mut stream, token::http(id), Interest::READABLE)
                    .is_err()
            {
                continue;
            }
            self.conns.insert(
                id,
                HttpConn {
                    stream,
                    head: Vec::new(),
                    out: Vec::new(),
                    sent: 0,
                    until: now + DEADLINE,
                    wants_metrics: false,
                },
            );
            // The request may have come with the connection.
            self.ready(id);
        }
    }

    /// A connection's socket is ready: read the request, or write the answer.
    pub fn ready(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        if c.out.is_empty() && !c.wants_metrics {
            match read_head(c) {
                Ok(None) => {}
                Ok(Some(Asked::Metrics)) => c.wants_metrics = true,
                Ok(Some(Asked::Refused(status, reason))) => c.out = response(status, reason),
                Err(()) => return self.close(id),
            }
        }
        if !c.out.is_empty() {
            self.write(id);
        }
    }

    /// True when some request waits for the metrics.
    pub fn waiting(&self) -> bool {
        self.conns.values().any(|c| c.wants_metrics)
    }

    /// Answers every request waiting for the metrics with `body`.
    pub fn answer(&mut self, body: &str) {
        let ids: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.wants_metrics)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if let Some(c) = self.conns.get_mut(&id) {
                c.wants_metrics = false;
                c.out = response("200 OK", body);
                self.scrapes += 1;
            }
            self.write(id);
        }
    }

    /// Closes connections past their deadline; returns the next deadline.
    pub fn sweep(&mut self, now: Instant) -> Option<Instant> {
        let late: Vec<usize> = self
            .conns
            .iter()
            .filter(|(_, c)| c.until <= now)
            .map(|(id, _)| *id)
            .collect();
        for id in late {
            self.close(id);
        }
        self.conns.values().map(|c| c.until).min()
    }

    fn write(&mut self, id: usize) {
        let Some(c) = self.conns.get_mut(&id) else {
            return;
        };
        while c.sent < c.out.len() {
            match c.stream.write(&c.out[c.sent..]) {
                Ok(0) => return self.close(id),
                Ok(n) => c.sent += n,
                Err(e) if e.kind() == IoKind::WouldBlock => {
                    let _ = self.registry.reregister(
                        &mut c.stream,
                        token::http(id),
                        Interest::READABLE | Interest::WRITABLE,
                    );
                    return;
                }
                Err(e) if e.kind() == IoKind::Interrupted => {}
                Err(_) => return self.close(id),
            }
        }
        let _ = c.stream.shutdown(std::net::Shutdown::Write);
        self.close(id);
    }

    fn close(&mut self, id: usize) {
        if let Some(mut c) = self.conns.remove(&id) {
            let _ = self.registry.deregister(&mut c.stream);
        }
    }
}

/// Reads what the client sent; `Some` once the request head is complete (or too big).
fn read_head(c: &mut HttpConn) -> Result<Option<Asked>, ()> {
    let mut buf = [0u8; 2048];
    loop {
        match c.stream.read(&mut buf) {
            Ok(0) => return Err(()),
            Ok(n) => {
                c.head.extend_from_slice(&buf[..n]);
                if let Some(end) = head_end(&c.head) {
                    return Ok(Some(parse_head(&c.head[..end])));
                }
                if c.head.len() > MAX_REQUEST_BYTES {
                    return Ok(Some(Asked::Refused(
                        "431 Request Header Fields Too Large",
                        "request head too large\n",
                    )));
                }
            }
            Err(e) if e.kind() == IoKind::WouldBlock => return Ok(None),
            Err(e) if e.kind() == IoKind::Interrupted => {}
            Err(_) => return Err(()),
        }
    }
}

/// Where the request head ends (its blank line), if it has.
fn head_end(head: &[u8]) -> Option<usize> {
    let crlf = head.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = head.windows(2).position(|w| w == b"\n\n");
    crlf.into_iter().chain(lf).min()
}

fn parse_head(head: &[u8]) -> Asked {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let mut parts = line.trim_end().split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Asked::Refused("400 Bad Request", "malformed request line\n");
    };
    if !version.starts_with("HTTP/1.") {
        return Asked::Refused("400 Bad Request", "HTTP/1.x only\n");
    }
    let path = target.split('?').next().unwrap_or_default();
    if path != "/metrics" {
        return Asked::Refused("404 Not Found", "only /metrics is served here\n");
    }
    if method != "GET" {
        return Asked::Refused("405 Method Not Allowed", "only GET /metrics\n");
    }
    Asked::Metrics
}

fn response(status: &str, body: &str) -> Vec<u8> {
    let kind = if status.starts_with("200") {
        "text/plain; version=0.0.4; charset=utf-8"
    } else {
        "text/plain; charset=utf-8"
    };
    let allow = if status.starts_with("405") {
        "Allow: GET\r\n"
    } else {
        ""
    };
    format!(
        "HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n{body}",
        body.len()
    )
    .into_bytes()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_get_metrics_is_served() {
        assert_eq!(
            parse_head(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Asked::Metrics
        );
        assert_eq!(parse_head(b"GET /metrics?x=1 HTTP/1.0"), Asked::Metrics);
        assert!(matches!(
            parse_head(b"POST /metrics HTTP/1.1"),
            Asked::Refused(s, _) if s.starts_with("405")
        ));
        assert!(matches!(
            parse_head(b"GET / HTTP/1.1"),
            Asked::Refused(s, _) if s.starts_with("404")
        ));
        assert!(matches!(
            parse_head(b"GET /metrics"),
            Asked::Refused(s, _) if s.starts_with("400")
        ));
        assert!(matches!(
            parse_head(b"\xff\xfe"),
            Asked::Refused(s, _) if s.starts_with("400")
        ));
    }

    #[test]
    fn a_head_ends_at_its_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.0\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
