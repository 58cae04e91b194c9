//! journald's native protocol: when the supervisor runs under systemd with stderr
//! connected to the journal, each log event becomes one journal entry sent as a
//! datagram to journald's socket, with a `PRIORITY` taken from its level (so
//! `journalctl -p warning` picks out warnings and errors), no timestamp of its own
//! (the journal stamps every entry) and every field of the event as a journal field
//! named `RESURGAM_<FIELD>` (`RESURGAM_ACTOR=counter` selects one actor's lines,
//! workers' output included).
//!
//! Protocol (systemd's "Native Journal Protocol"): a datagram of `KEY=value\n` lines;
//! a value that holds a newline is sent as `KEY\n`, its length as a little-endian u64,
//! the bytes, `\n`.

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::fd::AsFd;
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;

/// journald's native socket.
pub const SOCKET: &str = "/run/systemd/journal/socket";

/// Replaces [`SOCKET`]; for tests only (a test binds its own datagram socket and reads
/// what the supervisor would send to journald).
pub const SOCKET_ENV: &str = "RESURGAM_JOURNAL_SOCKET";

/// Prefix of the journal fields made from an event's fields.
const FIELD_PREFIX: &str = "RESURGAM_";

/// True if stderr is the journal stream systemd gave this process: `JOURNAL_STREAM`
/// ("DEV:INODE") names stderr's device and inode. (A child that inherited the variable
/// but has its stderr elsewhere, e.g. redirected to a file, does not match.)
pub fn stderr_is_journal() -> bool {
    let Some(value) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = value.to_str().and_then(parse_stream) else {
        return false;
    };
    match nix::sys::stat::fstat(std::io::stderr().as_fd()) {
        Ok(st) => st.st_dev == dev && st.st_ino == ino,
        Err(_) => false,
    }
}

/// `"DEV:INODE"` as two numbers.
fn parse_stream(value: &str) -> Option<(u64, u64)> {
    let (dev, ino) = value.split_once(':')?;
    Some((dev.parse().ok()?, ino.parse().ok()?))
}

/// syslog priority of a tracing level (`journalctl -p` filters on it).
pub fn priority(level: Level) -> u8 {
    match level {
        Level::ERROR => 3,
        Level::WARN => 4,
        Level::INFO => 6,
        Level::DEBUG | Level::TRACE => 7,
    }
}

/// The journal field name for an event field: upper case, `[A-Z0-9_]` only, prefixed
/// with [`FIELD_PREFIX`] (which also keeps it from starting with `_` or a digit, which
/// journald reserves or refuses), at most 64 bytes.
pub fn field_name(name: &str) -> String {
    let mut out = String::from(FIELD_PREFIX);
    out.extend(name.chars().map(|c| match c {
        'a'..='z' => c.to_ascii_uppercase(),
        'A'..='Z' | '0'..='9' => c,
        _ => '_',
    }));
    out.truncate(64);
    out
}

/// Appends one field to a datagram.
pub fn put_field(buf: &mut Vec<u8>, name: &str, value: &[u8]) {
    buf.extend_from_slice(name.as_bytes());
    if value.contains(&b'\n') {
        buf.push(b'\n');
        buf.extend_from_slice(&(value.len() as u64).to_le_bytes());
    } else {
        buf.push(b'=');
    }
    buf.extend_from_slice(value);
    buf.push(b'\n');
}

/// An event's message and its other fields, as text.
#[derive(Default)]
struct Fields {
    message: String,
    fields: Vec<(&'static str, String)>,
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.record(field, value.to_string());
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.record(field, format!("{value:?}"));
    }
}

impl Fields {
    fn record(&mut self, field: &Field, value: String) {
        if field.name() == "message" {
            self.message = value;
        } else {
            self.fields.push((field.name(), value));
        }
    }

    /// The message followed by ` key=value` for each field, as the plain format writes
    /// it (so the journal's default view still says which actor a line is about).
    fn line(&self) -> String {
        let mut line = self.message.clone();
        for (k, v) in &self.fields {
            let _ = write!(line, " {k}={v}");
        }
        line
    }
}

/// The journal entry for one event.
fn encode(
    level: Level,
    target: &str,
    file: Option<&str>,
    code_line: Option<u32>,
    f: &Fields,
) -> Vec<u8> {
    let mut buf = Vec::with_capacity(256 + f.message.len());
    put_field(&mut buf, "MESSAGE", f.line().as_bytes());
    put_field(&mut buf, "PRIORITY", priority(level).to_string().as_bytes());
    put_field(&mut buf, "SYSLOG_IDENTIFIER", b"resurgam");
    put_field(&mut buf, "RESURGAM_TARGET", target.as_bytes());
    if let Some(file) = file {
        put_field(&mut buf, "CODE_FILE", file.as_bytes());
    }
    if let Some(line) = code_line {
        put_field(&mut buf, "CODE_LINE", line.to_string().as_bytes());
    }
    for (k, v) in &f.fields {
        put_field(&mut buf, &field_name(k), v.as_bytes());
    }
    buf
}

/// A `tracing` layer that sends each event to journald.
pub struct JournalLayer {
    socket: UnixDatagram,
    path: PathBuf,
}

impl JournalLayer {
    /// A layer sending to journald's socket (or the test override); `None` if that
    /// socket is unusable (no journald, a sandbox that hides it), for the caller to fall
    /// back to plain lines on stderr.
    pub fn new() -> Option<JournalLayer> {
        let path =
            std::env::var_os(SOCKET_ENV).map_or_else(|| PathBuf::from(SOCKET), PathBuf::from);
        JournalLayer::to(path)
    }

    /// A layer sending to the datagram socket at `path`.
    fn to(path: PathBuf) -> Option<JournalLayer> {
        // connect() proves the socket is there and writable. The layer itself sends to
        // the path each time, so it keeps working after journald restarts.
        UnixDatagram::unbound().ok()?.connect(&path).ok()?;
        let socket = UnixDatagram::unbound().ok()?;
        // Events are logged on the event loop: a journald that falls behind (its queue
        // full) must not stall it, so a send that would wait fails instead.
        socket.set_nonblocking(true).ok()?;
        Some(JournalLayer { socket, path })
    }

    /// Sends one entry, never waiting for journald.
    fn send(&self, entry: &[u8]) -> std::io::Result<()> {
        self.socket.send_to(entry, &self.path).map(drop)
    }
}

impl<S: Subscriber> tracing_subscriber::Layer<S> for JournalLayer {
    fn on_event(&self, event: &Event<'_>, _ctx: Context<'_, S>) {
        let meta = event.metadata();
        let mut fields = Fields::default();
        event.record(&mut fields);
        let entry = encode(
            *meta.level(),
            meta.target(),
            meta.file(),
            meta.line(),
            &fields,
        );
        // Not sent (journald restarting or behind, a line too long for one datagram): the
        // line goes to stderr, which is still the journal's stream, rather than nowhere.
        if self.send(&entry).is_err() {
            let _ = writeln!(std::io::stderr(), "{} {}", meta.level(), fields.line());
        }
    }
}

/// Parses one datagram of the native protocol back into its fields, in order (for
/// tests and tools that stand in for journald).
pub fn decode(mut d: &[u8]) -> Result<Vec<(String, Vec<u8>)>, String> {
    let mut out = Vec::new();
    while !d.is_empty() {
        let nl = d
            .iter()
            .position(|&b| b == b'\n')
            .ok_or("a field without its newline")?;
        let line = &d[..nl];
        let (name, value, rest) = match line.iter().position(|&b| b == b'=') {
            Some(eq) => (&line[..eq], line[eq + 1..].to_vec(), &d[nl + 1..]),
            None => {
                let body = &d[nl + 1..];
                let len_bytes: [u8; 8] = body
                    .get(..8)
                    .and_then(|b| b.try_into().ok())
                    .ok_or("a binary field without its length")?;
                let len = usize::try_from(u64::from_le_bytes(len_bytes))
                    .map_err(|_| "a binary field too long")?;
                let end = 8usize.checked_add(len).ok_or("a binary field too long")?;
                let value = body.get(8..end).ok_or("a binary field cut short")?;
                if body.get(end) != Some(&b'\n') {
                    return Err("a binary field without its newline".into());
                }
                (line, value.to_vec(), &body[end + 1..])
            }
        };
        let name = String::from_utf8(name.to_vec()).map_err(|_| "a field name not UTF-8")?;
        out.push((name, value));
        d = rest;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_map_to_syslog_priorities() {
        assert_eq!(priority(Level::ERROR), 3);
        assert_eq!(priority(Level::WARN), 4);
        assert_eq!(priority(Level::INFO), 6);
        assert_eq!(priority(Level::DEBUG), 7);
        assert_eq!(priority(Level::TRACE), 7);
    }

    #[test]
    fn field_names_are_prefixed_upper_case_and_valid() {
        assert_eq!(field_name("actor"), "RESURGAM_ACTOR");
        assert_eq!(field_name("pid"), "RESURGAM_PID");
        assert_eq!(field_name("r#type.x-y"), "RESURGAM_R_TYPE_X_Y");
        let long = field_name(&"a".repeat(100));
        assert_eq!(long.len(), 64);
        assert!(long.bytes().all(|b| b.is_ascii_uppercase() || b == b'_'));
    }

    #[test]
    fn an_entry_carries_message_priority_and_fields_and_no_timestamp() {
        let f = Fields {
            message: "worker died".into(),
            fields: vec![("actor", "counter".into()), ("pid", "42".into())],
        };
        let got = decode(&encode(
            Level::WARN,
            "resurgam::run",
            Some("src/run.rs"),
            Some(7),
            &f,
        ))
        .unwrap();
        let get = |k: &str| {
            got.iter()
                .find(|(n, _)| n == k)
                .map(|(_, v)| String::from_utf8(v.clone()).unwrap())
        };
        assert_eq!(
            get("MESSAGE").as_deref(),
            Some("worker died actor=counter pid=42")
        );
        assert_eq!(get("PRIORITY").as_deref(), Some("4"));
        assert_eq!(get("SYSLOG_IDENTIFIER").as_deref(), Some("resurgam"));
        assert_eq!(get("RESURGAM_ACTOR").as_deref(), Some("counter"));
        assert_eq!(get("RESURGAM_PID").as_deref(), Some("42"));
        assert_eq!(get("CODE_LINE").as_deref(), Some("7"));
        assert!(got.iter().all(|(n, _)| !n.contains("TIMESTAMP")), "{got:?}");
    }

    #[test]
    fn a_value_with_newlines_uses_the_length_prefixed_form() {
        let mut buf = Vec::new();
        put_field(&mut buf, "MESSAGE", b"two\nlines");
        let mut want = b"MESSAGE\n".to_vec();
        want.extend_from_slice(&9u64.to_le_bytes());
        want.extend_from_slice(b"two\nlines\n");
        assert_eq!(buf, want);
        put_field(&mut buf, "PRIORITY", b"3");
        assert_eq!(
            decode(&buf).unwrap(),
            vec![
                ("MESSAGE".to_string(), b"two\nlines".to_vec()),
                ("PRIORITY".to_string(), b"3".to_vec())
            ]
        );
    }

    #[test]
    fn field_values_with_newlines_equals_and_nul_round_trip() {
        let odd = "line one\nKEY=forged\n\0end";
        let f = Fields {
            message: format!("out: {odd}"),
            fields: vec![("output", odd.into()), ("", "x=y".into())],
        };
        let got = decode(&encode(Level::INFO, "t", None, None, &f)).unwrap();
        let get = |k: &str| got.iter().find(|(n, _)| n == k).map(|(_, v)| v.clone());
        assert_eq!(get("RESURGAM_OUTPUT").as_deref(), Some(odd.as_bytes()));
        assert_eq!(get("RESURGAM_").as_deref(), Some(&b"x=y"[..]));
        // The newline inside a value never starts a field of its own.
        assert!(get("KEY").is_none(), "{got:?}");
        assert!(
            get("MESSAGE").is_some_and(|m| m.starts_with(b"out: line one\nKEY=forged\n")),
            "{got:?}"
        );
    }

    #[test]
    fn a_damaged_datagram_is_an_error_not_a_panic() {
        assert!(decode(b"\xff\xfe=1\n").is_err(), "a name not UTF-8");
        assert!(decode(b"MESSAGE=no newline").is_err());
        assert!(decode(b"MESSAGE\n\x05\x00").is_err());
        assert!(decode(b"MESSAGE\n\xff\xff\xff\xff\xff\xff\xff\xffab\n").is_err());
        let mut cut = b"MESSAGE\n".to_vec();
        cut.extend_from_slice(&9u64.to_le_bytes());
        cut.extend_from_slice(b"short\n");
        assert!(decode(&cut).is_err());
    }

    #[test]
    fn journal_stream_is_dev_colon_inode() {
        assert_eq!(parse_stream("8:1234"), Some((8, 1234)));
        assert_eq!(parse_stream("8"), None);
        assert_eq!(parse_stream("x:1"), None);
    }

    /// A journald that reads nothing fills its queue; the layer's sends then fail at
    /// once (for the line to go to stderr) instead of blocking the event loop.
    #[test]
    fn a_full_journal_socket_fails_sends_instead_of_blocking() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("journal");
        let _journald = UnixDatagram::bind(&path).unwrap();
        let layer = JournalLayer::to(path).unwrap();
        let entry = vec![b'x'; 4096];
        let full = (0..100_000).find_map(|_| layer.send(&entry).err());
        let e = full.expect("an unread socket's queue fills up");
        assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock);
    }
}
