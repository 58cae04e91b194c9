//! The systemd notification protocol (sd_notify(3)): READY=1, STATUS=, WATCHDOG=1,
//! STOPPING=1, RELOADING=1.
//!
//! [`Notifier::from_env`] reads `$NOTIFY_SOCKET` once; without it every method is a no-op,
//! so the supervisor runs the same by hand and under systemd. Messages are formatted by
//! the `sd-notify` crate ([`NotifyState`]) and sent on one datagram socket of our own to
//! the address read at start, because the crate's `notify` re-reads the environment on
//! every call and cannot reach abstract-namespace (`@name`) sockets.
//!
//! The environment is only read, never changed (`remove_var` is unsound once threads
//! exist); the spawner removes `NOTIFY_SOCKET` and `WATCHDOG_*` from every worker's
//! environment instead, so no worker can speak for the service.
//!
//! Sending never blocks (the socket is non-blocking) and never fails the caller: a lost
//! notification is logged (a warning the first time, then at debug level) and dropped.

use std::ffi::{OsStr, OsString};
use std::fmt::Write as _;
use std::io;
use std::os::linux::net::SocketAddrExt;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::path::PathBuf;
use std::time::Duration;

use sd_notify::NotifyState;

/// Sends service-manager notifications; a no-op when there is no `$NOTIFY_SOCKET`.
pub struct Notifier {
    /// Where notifications go, and the socket they leave from (made on first use).
    target: Option<Target>,
    /// Half of `$WATCHDOG_USEC` when the watchdog is meant for this process.
    watchdog_interval: Option<Duration>,
    /// READY=1 was sent and no RELOADING=1 since.
    ready: bool,
    /// STOPPING=1 was sent.
    stopping: bool,
    /// The last STATUS= line sent (after newline stripping).
    last_status: Option<String>,
    /// A failed send was already reported as a warning.
    warned: bool,
}

struct Target {
    addr: SocketAddr,
    /// For log lines: the address as given (`/run/…` or `@name`).
    shown: String,
    socket: Option<UnixDatagram>,
}

impl Notifier {
    /// Reads `$NOTIFY_SOCKET`, `$WATCHDOG_USEC` and `$WATCHDOG_PID` (the watchdog counts
    /// only when `$WATCHDOG_PID` is absent or names this process, as in
    /// sd_watchdog_enabled(3)).
    pub fn from_env() -> Notifier {
        let (socket, watchdog) = parse_env(
            std::env::var_os("NOTIFY_SOCKET"),
            std::env::var_os("WATCHDOG_USEC"),
            std::env::var_os("WATCHDOG_PID"),
            std::process::id(),
        );
        let notifier = Notifier::with_address(socket, watchdog);
        if let Some(t) = &notifier.target {
            tracing::info!(
                notify_socket = %t.shown,
                watchdog = ?watchdog,
                "systemd notification socket found"
            );
        }
        notifier
    }

    /// A notifier for an explicit socket path (`None`: disabled) and watchdog timeout
    /// (`WATCHDOG_USEC`, not yet halved). A path whose text starts with `@` names a
    /// socket in the abstract namespace, as in `$NOTIFY_SOCKET`. For tests and embedding.
    pub fn with_socket(path: Option<PathBuf>, watchdog: Option<Duration>) -> Notifier {
        Notifier::with_address(path.map(PathBuf::into_os_string), watchdog)
    }

    fn with_address(address: Option<OsString>, watchdog: Option<Duration>) -> Notifier {
        let target = address.and_then(|a| match socket_addr(&a) {
            Ok(addr) => Some(Target {
                addr,
                shown: a.to_string_lossy().into_owned(),
                socket: None,
            }),
            Err(e) => {
                tracing::warn!(
                    notify_socket = %a.to_string_lossy(),
                    error = %e,
                    "unusable NOTIFY_SOCKET; systemd notifications are off"
                );
                None
            }
        });
        Notifier {
            target,
            watchdog_interval: watchdog.filter(|d| !d.is_zero()).map(|d| d / 2),
            ready: false,
            stopping: false,
            last_status: None,
            warned: false,
        }
    }

    /// True when notifications go somewhere.
    pub fn enabled(&self) -> bool {
        self.target.is_some()
    }

    /// READY=1: start-up (or a reload) is complete. Sent once; after [`Self::reloading`]
    /// the next call sends it again, as a reload must end with READY=1.
    pub fn ready(&mut self) {
        if self.ready || self.target.is_none() {
            return;
        }
        self.ready = true;
        self.send(&[NotifyState::Ready]);
    }

    /// STATUS=<line>: the one-line status `systemctl status` shows. Newlines (and other
    /// control characters) become spaces; a line equal to the last one sent is not sent.
    pub fn status(&mut self, line: &str) {
        if self.target.is_none() {
            return;
        }
        let line: String = line
            .trim()
            .chars()
            .map(|c| if c.is_control() { ' ' } else { c })
            .collect();
        if self.last_status.as_deref() == Some(line.as_str()) {
            return;
        }
        self.send(&[NotifyState::Status(&line)]);
        self.last_status = Some(line);
    }

    /// STOPPING=1: a graceful stop has begun. Sent once.
    pub fn stopping(&mut self) {
        if self.stopping || self.target.is_none() {
            return;
        }
        self.stopping = true;
        self.send(&[NotifyState::Stopping]);
    }

    /// RELOADING=1 with MONOTONIC_USEC=<now> (systemd ≥ 253 requires the timestamp with
    /// `Type=notify-reload`; older versions ignore it). Follow with [`Self::ready`] once
    /// the new configuration is in force.
    pub fn reloading(&mut self) {
        if self.target.is_none() {
            return;
        }
        self.ready = false;
        match NotifyState::monotonic_usec_now() {
            Ok(now) => self.send(&[NotifyState::Reloading, now]),
            Err(e) => {
                tracing::debug!(error = %e, "clock_gettime(CLOCK_MONOTONIC) failed");
                self.send(&[NotifyState::Reloading]);
            }
        }
    }

    /// How often to send WATCHDOG=1: half of `$WATCHDOG_USEC`, or None when systemd
    /// expects no pings from this process.
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog_interval
    }

    /// WATCHDOG=1: this process is alive and its main loop turns.
    pub fn watchdog(&mut self) {
        if self.target.is_some() {
            self.send(&[NotifyState::Watchdog]);
        }
    }

    /// Sends one datagram with every state on its own line.
    fn send(&mut self, states: &[NotifyState<'_>]) {
        let Some(target) = self.target.as_mut() else {
            return;
        };
        let mut msg = String::new();
        for s in states {
            // Writing into a String cannot fail.
            let _ = writeln!(msg, "{s}");
        }
        let result = send_datagram(target, msg.as_bytes());
        if let Err(e) = result {
            // A socket that failed may be the cause: make a new one next time.
            target.socket = None;
            let first_line = msg.lines().next().unwrap_or_default();
            if self.warned {
                tracing::debug!(notify_socket = %target.shown, error = %e, message = first_line, "sd_notify failed");
            } else {
                self.warned = true;
                tracing::warn!(notify_socket = %target.shown, error = %e, message = first_line, "sd_notify failed (further failures are logged at debug level)");
            }
        }
    }
}

fn send_datagram(target: &mut Target, msg: &[u8]) -> io::Result<()> {
    let socket = match &target.socket {
        Some(s) => s,
        None => {
            let s = UnixDatagram::unbound()?;
            // Never block the caller (the core's loop) on a full receive queue.
            s.set_nonblocking(true)?;
            target.socket.insert(s)
        }
    };
    let sent = socket.send_to_addr(msg, &target.addr)?;
    if sent == msg.len() {
        Ok(())
    } else {
        Err(io::Error::new(
            io::ErrorKind::WriteZero,
            format!("short datagram: {sent} of {} bytes", msg.len()),
        ))
    }
}

/// `$NOTIFY_SOCKET` as a socket address: an absolute path, or `@name` for the abstract
/// namespace. (systemd ≥ 253 also knows `vsock:`; not supported here.)
fn socket_addr(address: &OsStr) -> io::Result<SocketAddr> {
    let bytes = address.as_bytes();
    match bytes.first() {
        Some(b'@') => SocketAddr::from_abstract_name(&bytes[1..]),
        Some(b'/') => SocketAddr::from_pathname(address),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "neither an absolute path nor an @abstract name",
        )),
    }
}

/// The notification address and the watchdog timeout (not halved) from the raw
/// environment values, for a process with pid `our_pid`.
fn parse_env(
    notify_socket: Option<OsString>,
    watchdog_usec: Option<OsString>,
    watchdog_pid: Option<OsString>,
    our_pid: u32,
) -> (Option<OsString>, Option<Duration>) {
    let socket = notify_socket.filter(|s| !s.is_empty());
    let usec = watchdog_usec
        .and_then(|v| v.to_str()?.trim().parse::<u64>().ok())
        .filter(|&u| u > 0);
    let for_us = match watchdog_pid {
        None => true,
        Some(p) => p.to_str().and_then(|p| p.trim().parse::<u32>().ok()) == Some(our_pid),
    };
    // Without a socket there is nobody to ping.
    let watchdog = usec
        .filter(|_| for_us && socket.is_some())
        .map(Duration::from_micros);
    (socket, watchdog)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A receiving socket like systemd's, in a temporary directory.
    struct Receiver {
        _dir: tempfile::TempDir,
        path: PathBuf,
        socket: UnixDatagram,
    }

    impl Receiver {
        fn new() -> Receiver {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("notify.sock");
            let socket = UnixDatagram::bind(&path).unwrap();
            socket
                .set_read_timeout(Some(Duration::from_secs(5)))
                .unwrap();
            Receiver {
                _dir: dir,
                path,
                socket,
            }
        }

        fn recv(&self) -> String {
            let mut buf = vec![0u8; 4096];
            let n = self.socket.recv(&mut buf).unwrap();
            String::from_utf8(buf[..n].to_vec()).unwrap()
        }

        /// Asserts nothing more is queued.
        fn assert_empty(&self) {
            self.socket.set_nonblocking(true).unwrap();
            let mut buf = [0u8; 4096];
            match self.socket.recv(&mut buf) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                other => panic!(
                    "unexpected datagram: {:?}",
                    other.map(|n| String::from_utf8_lossy(&buf[..n]).into_owned())
                ),
            }
            self.socket.set_nonblocking(false).unwrap();
        }
    }

    fn monotonic_usec() -> i128 {
        match NotifyState::monotonic_usec_now().unwrap() {
            NotifyState::MonotonicUsec(u) => u,
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ready_once_status_dedup_stopping_watchdog() {
        let r = Receiver::new();
        let mut n = Notifier::with_socket(Some(r.path.clone()), None);
        assert!(n.enabled());
        n.ready();
        assert_eq!(r.recv(), "READY=1\n");
        n.ready();
        n.status("starting: 1/2 actors up");
        assert_eq!(r.recv(), "STATUS=starting: 1/2 actors up\n");
        n.status("starting: 1/2 actors up");
        n.status("two\nlines\r\n");
        assert_eq!(r.recv(), "STATUS=two lines\n");
        n.status("two\nlines");
        n.status("two lines");
        n.status("2 actors ALIVE");
        assert_eq!(r.recv(), "STATUS=2 actors ALIVE\n");
        n.watchdog();
        assert_eq!(r.recv(), "WATCHDOG=1\n");
        n.watchdog();
        assert_eq!(r.recv(), "WATCHDOG=1\n");
        n.stopping();
        assert_eq!(r.recv(), "STOPPING=1\n");
        n.stopping();
        r.assert_empty();
    }

    #[test]
    fn reloading_carries_monotonic_time_and_rearms_ready() {
        let r = Receiver::new();
        let mut n = Notifier::with_socket(Some(r.path.clone()), None);
        n.ready();
        assert_eq!(r.recv(), "READY=1\n");
        let before = monotonic_usec();
        n.reloading();
        let after = monotonic_usec();
        let msg = r.recv();
        let lines: Vec<&str> = msg.lines().collect();
        assert_eq!(lines.len(), 2, "{msg:?}");
        assert_eq!(lines[0], "RELOADING=1");
        let usec: i128 = lines[1]
            .strip_prefix("MONOTONIC_USEC=")
            .unwrap_or_else(|| panic!("{msg:?}"))
            .parse()
            .unwrap();
        assert!(
            before <= usec && usec <= after,
            "{before} <= {usec} <= {after}"
        );
        n.ready();
        assert_eq!(r.recv(), "READY=1\n");
        n.ready();
        r.assert_empty();
    }

    #[test]
    fn abstract_namespace_socket() {
        static N: AtomicU32 = AtomicU32::new(0);
        let name = format!(
            "resurgam-notify-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        let addr = SocketAddr::from_abstract_name(name.as_bytes()).unwrap();
        let socket = UnixDatagram::bind_addr(&addr).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut n = Notifier::with_socket(Some(PathBuf::from(format!("@{name}"))), None);
        assert!(n.enabled());
        n.ready();
        n.status("up");
        let mut buf = [0u8; 256];
        let len = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"READY=1\n");
        let len = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"STATUS=up\n");
    }

    #[test]
    fn disabled_is_a_no_op() {
        let mut n = Notifier::with_socket(None, Some(Duration::from_secs(10)));
        assert!(!n.enabled());
        n.ready();
        n.status("x");
        n.watchdog();
        n.reloading();
        n.stopping();
        // The interval is kept as given; with no socket from_env never reports one.
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        let n = Notifier::with_socket(Some(PathBuf::from("relative.sock")), None);
        assert!(!n.enabled());
    }

    #[test]
    fn send_failures_do_not_panic_and_recover() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("later.sock");
        let mut n = Notifier::with_socket(Some(path.clone()), None);
        // Nobody listens yet: the notification is lost, not fatal.
        n.ready();
        n.status("lost");
        let socket = UnixDatagram::bind(&path).unwrap();
        socket
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        n.watchdog();
        let mut buf = [0u8; 256];
        let len = socket.recv(&mut buf).unwrap();
        assert_eq!(&buf[..len], b"WATCHDOG=1\n");
    }

    #[test]
    fn watchdog_interval_is_half() {
        let r = Receiver::new();
        let n = Notifier::with_socket(Some(r.path.clone()), Some(Duration::from_secs(10)));
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        let n = Notifier::with_socket(Some(r.path.clone()), Some(Duration::ZERO));
        assert_eq!(n.watchdog_interval(), None);
        let n = Notifier::with_socket(Some(r.path.clone()), None);
        assert_eq!(n.watchdog_interval(), None);
    }

    #[test]
    fn environment_parsing() {
        let s = |v: &str| Some(OsString::from(v));
        let me = 4242;
        assert_eq!(parse_env(None, s("2000000"), None, me), (None, None));
        assert_eq!(parse_env(s(""), s("2000000"), None, me), (None, None));
        assert_eq!(
            parse_env(s("/run/systemd/notify"), s("2000000"), None, me),
            (s("/run/systemd/notify"), Some(Duration::from_secs(2)))
        );
        assert_eq!(
            parse_env(s("@sd"), s("2000000"), s("4242"), me),
            (s("@sd"), Some(Duration::from_secs(2)))
        );
        // The watchdog belongs to another process (e.g. we were forked by the main one).
        assert_eq!(
            parse_env(s("/n"), s("2000000"), s("1"), me),
            (s("/n"), None)
        );
        assert_eq!(parse_env(s("/n"), s("garbage"), None, me), (s("/n"), None));
        assert_eq!(parse_env(s("/n"), s("0"), None, me), (s("/n"), None));
        assert_eq!(parse_env(s("/n"), None, None, me), (s("/n"), None));
    }
}
