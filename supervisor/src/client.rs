//! A Rust client for the control socket: connect, call, pipelined calls, status,
//! metrics, the event stream; calls with an idempotency key, and [`RetryingClient`],
//! which resends a keyed call after a lost connection.

use std::io::{BufRead, BufReader, BufWriter, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde_json::{Value, json};

use resurgam_shared::protocol::{ErrorBody, ErrorKind, Reply};

/// What can go wrong talking to a supervisor.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to {path}: {source}")]
    Connect {
        path: String,
        source: std::io::Error,
    },
    #[error("control socket I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("the supervisor closed the connection")]
    Closed,
    #[error("malformed reply from the supervisor: {0}")]
    Protocol(String),
    /// The supervisor answered with an error.
    #[error("{0}")]
    Remote(ErrorBody),
}

impl ClientError {
    /// True when the supervisor could not be reached or did not answer (an I/O error,
    /// a timeout set by [`Client::set_timeout`] included), as opposed to an answer that
    /// is an error.
    pub fn is_unreachable(&self) -> bool {
        matches!(
            self,
            ClientError::Connect { .. } | ClientError::Io(_) | ClientError::Closed
        )
    }

    /// True when no reply came within the timeout set by [`Client::set_timeout`].
    pub fn is_timeout(&self) -> bool {
        matches!(self, ClientError::Io(e) if matches!(
            e.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ))
    }
}

/// One connection to a supervisor's control socket.
pub struct Client {
    reader: BufReader<UnixStream>,
    writer: BufWriter<UnixStream>,
    next_id: u64,
}

impl Client {
    /// Connects to the socket at `path`.
    pub fn connect(path: &Path) -> Result<Client, ClientError> {
        let stream = UnixStream::connect(path).map_err(|source| ClientError::Connect {
            path: path.display().to_string(),
            source,
        })?;
        Client::from_stream(stream)
    }

    /// Connects to the socket at `path`, waiting at most `timeout` (at least a
    /// millisecond) for a supervisor whose backlog of connections to accept is full,
    /// as a stuck one's soon is.
    pub fn connect_timeout(path: &Path, timeout: Duration) -> Result<Client, ClientError> {
        use nix::sys::socket::{self, AddressFamily, SockFlag, SockType, UnixAddr, sockopt};
        let fail = |e: nix::errno::Errno| ClientError::Connect {
            path: path.display().to_string(),
            source: e.into(),
        };
        let fd = socket::socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .map_err(fail)?;
        // A blocking connect to a Unix socket waits for room in the backlog at most the
        // send timeout; the stream's own send timeout is set again by `set_timeout`.
        let t = timeout.max(Duration::from_millis(1));
        let wait = nix::sys::time::TimeVal::new(
            t.as_secs().min(i32::MAX as u64) as libc::time_t,
            t.subsec_micros() as libc::suseconds_t,
        );
        socket::setsockopt(&fd, sockopt::SendTimeout, &wait).map_err(fail)?;
        let addr = UnixAddr::new(path).map_err(fail)?;
        socket::connect(fd.as_raw_fd(), &addr).map_err(fail)?;
        Client::from_stream(UnixStream::from(fd))
    }

    fn from_stream(stream: UnixStream) -> Result<Client, ClientError> {
        let w = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer: BufWriter::new(w),
            next_id: 1,
        })
    }

    /// Sets a timeout for replies (None = wait forever); sending a request waits at
    /// most as long for the supervisor to read it.
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(t)?;
        self.reader.get_ref().set_write_timeout(t)?;
        Ok(())
    }

    /// The pid of the supervisor process behind the socket, as this process's pid
    /// namespace numbers it (None when that namespace cannot see it).
    pub fn peer_pid(&self) -> Option<u32> {
        let cred = nix::sys::socket::getsockopt(
            self.reader.get_ref(),
            nix::sys::socket::sockopt::PeerCredentials,
        )
        .ok()?;
        u32::try_from(cred.pid()).ok().filter(|&p| p != 0)
    }

    fn fresh_id(&mut self) -> u64 {
        let id = self.next_id;
        self.next_id += 1;
        id
    }

    /// Queues one request object (its `id` is set here) without flushing; returns the id.
    pub fn send(&mut self, mut request: Value) -> Result<u64, ClientError> {
        let id = self.fresh_id();
        if let Value::Object(m) = &mut request {
            m.insert("id".into(), json!(id));
        }
        serde_json::to_writer(&mut self.writer, &request).map_err(|e| match e.is_io() {
            // Writing failed (the connection, or the supervisor not reading in time).
            true => ClientError::Io(e.into()),
            false => ClientError::Protocol(e.to_string()),
        })?;
        self.writer.write_all(b"\n")?;
        Ok(id)
    }

    /// Flushes queued requests.
    pub fn flush(&mut self) -> Result<(), ClientError> {
        self.writer.flush()?;
        Ok(())
    }

    /// Reads the next reply (any id).
    pub fn recv(&mut self) -> Result<Reply, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        serde_json::from_str(&line).map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))
    }

    /// Sends one request and waits for its reply.
    pub fn request(&mut self, request: Value) -> Result<Value, ClientError> {
        let id = self.send(request)?;
        self.flush()?;
        loop {
            let reply = self.recv()?;
            // A null id answers what the supervisor could not tie to a request: a
            // refused connection (Unauthorized, Busy) or an unreadable request.
            if reply.id == json!(id) || (reply.id.is_null() && reply.err.is_some()) {
                return reply.into_result().map_err(ClientError::Remote);
            }
        }
    }

    /// Calls `method` on `actor` and waits for the result.
    pub fn call(&mut self, actor: &str, method: &str, args: Value) -> Result<Value, ClientError> {
        self.request(call_request(actor, method, args))
    }

    /// Calls `method` on `actor` with the idempotency key `key` (1-128 printable ASCII
    /// characters; [`new_key`] makes one): the same key again, on any connection, gets
    /// the first call's reply without running it twice. One attempt; [`RetryingClient`]
    /// resends after a lost connection.
    pub fn call_keyed(
        &mut self,
        actor: &str,
        method: &str,
        args: Value,
        key: &str,
    ) -> Result<Value, ClientError> {
        self.request(keyed_call_request(actor, method, args, key))
    }

    /// Sends every call before reading any reply (pipelining); results in input order.
    pub fn call_pipelined(
        &mut self,
        calls: &[(&str, &str, Value)],
    ) -> Result<Vec<Result<Value, ErrorBody>>, ClientError> {
        let mut ids = Vec::with_capacity(calls.len());
        for (actor, method, args) in calls {
            ids.push(self.send(call_request(actor, method, args.clone()))?);
        }
        self.flush()?;
        let first = ids.first().copied().unwrap_or(0);
        let mut results: Vec<Option<Result<Value, ErrorBody>>> = vec![None; calls.len()];
        let mut pending = calls.len();
        while pending > 0 {
            let reply = self.recv()?;
            let idx = reply
                .id
                .as_u64()
                .and_then(|id| id.checked_sub(first))
                .and_then(|i| usize::try_from(i).ok())
                .filter(|&i| i < results.len());
            let Some(i) = idx else { continue };
            if results[i].is_none() {
                results[i] = Some(reply.into_result());
                pending -= 1;
            }
        }
        Ok(results.into_iter().flatten().collect())
    }

    /// The `status` reply.
    pub fn status(&mut self) -> Result<Value, ClientError> {
        self.request(json!({"op": "status"}))
    }

    /// Checkpoints `actor` now; returns `{"generation", "last_seq"}` once the disk copy is synced.
    pub fn checkpoint(&mut self, actor: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "checkpoint", "actor": actor}))
    }

    /// The actor's state as an export file (its base64 in `"file"`), taken in its call
    /// order, with the file's header fields.
    pub fn export(&mut self, actor: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "export", "actor": actor}))
    }

    /// Installs an export file (`file_base64`) as the actor's state, in its call order.
    pub fn import(&mut self, actor: &str, file_base64: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "import", "actor": actor, "file": file_base64}))
    }

    /// Restarts `actor` (revives it when DEAD).
    pub fn restart(&mut self, actor: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "restart", "actor": actor}))
    }

    /// Revives `actor` when it is held DEAD because its state files are damaged or
    /// gone, accepting the loss: it starts from what is left of its state.
    pub fn restart_fresh(&mut self, actor: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "restart", "actor": actor, "fresh": true}))
    }

    /// Asks the supervisor to re-read its config file; returns what changed.
    pub fn reload(&mut self) -> Result<Value, ClientError> {
        self.request(json!({"op": "reload"}))
    }

    /// The metrics, in the Prometheus text format.
    pub fn metrics(&mut self) -> Result<String, ClientError> {
        match self.request(json!({"op": "metrics"}))? {
            Value::String(text) => Ok(text),
            other => Err(ClientError::Protocol(format!(
                "the metrics are not a string: {other}"
            ))),
        }
    }

    /// Subscribes this connection to the event stream; returns the acknowledgement
    /// `{"subscribed": true, "next_seq", "history"}`: `history` event lines (the
    /// newest events kept, oldest first) follow, then every new event. Read them with
    /// [`Client::next_event`].
    pub fn subscribe(&mut self) -> Result<Value, ClientError> {
        self.request(json!({"op": "subscribe"}))
    }

    /// The next event line of a subscribed connection (replies to other requests sent
    /// on it are skipped).
    pub fn next_event(&mut self) -> Result<Value, ClientError> {
        loop {
            let mut line = String::new();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(ClientError::Closed);
            }
            let v: Value = serde_json::from_str(&line)
                .map_err(|e| ClientError::Protocol(format!("{e}: {line:?}")))?;
            if v.get("event").is_some() {
                return Ok(v);
            }
        }
    }

    /// Asks the supervisor to shut down gracefully.
    pub fn stop(&mut self) -> Result<Value, ClientError> {
        self.request(json!({"op": "stop"}))
    }

    /// Stops one actor; returns `{"actor", "state": "STOPPED", "checkpoint"}` once its
    /// worker has stopped after its final checkpoint.
    pub fn stop_actor(&mut self, actor: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "stop_actor", "actor": actor}))
    }

    /// Starts an actor `stop_actor` stopped (or a DEAD one); returns `{"actor", "state"}`
    /// at once, without waiting for it to be ALIVE.
    pub fn start_actor(&mut self, actor: &str) -> Result<Value, ClientError> {
        self.request(json!({"op": "start_actor", "actor": actor}))
    }

    /// The supervisor's pid (`{"pid"}`), or with `actor` its worker's and program's
    /// (`{"actor", "state", "pid", "program_pid"}`, null without a process).
    pub fn pid(&mut self, actor: Option<&str>) -> Result<Value, ClientError> {
        self.request(match actor {
            Some(actor) => json!({"op": "pid", "actor": actor}),
            None => json!({"op": "pid"}),
        })
    }
}

/// A `call` request carrying the idempotency key `key`.
pub fn keyed_call_request(actor: &str, method: &str, args: Value, key: &str) -> Value {
    let mut request = call_request(actor, method, args);
    if let Value::Object(m) = &mut request {
        m.insert("key".into(), json!(key));
    }
    request
}

fn call_request(actor: &str, method: &str, args: Value) -> Value {
    if args.is_null() {
        json!({"op": "call", "actor": actor, "method": method})
    } else {
        json!({"op": "call", "actor": actor, "method": method, "args": args})
    }
}

/// A fresh idempotency key: 32 hex digits, 128 random bits from the kernel (or, should
/// `/dev/urandom` be unreadable, the process id, the time and a counter). Use one key per
/// logical call, and the same key for every retry of that call.
pub fn new_key() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut bytes = [0u8; 16];
    let random = std::fs::File::open("/dev/urandom").and_then(|mut f| f.read_exact(&mut bytes));
    if random.is_err() {
        let nanos = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos());
        let count = COUNTER.fetch_add(1, Ordering::Relaxed);
        bytes[..4].copy_from_slice(&std::process::id().to_le_bytes());
        bytes[4..12].copy_from_slice(&(nanos as u64).to_le_bytes());
        bytes[12..].copy_from_slice(&(count as u32).to_le_bytes());
    }
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// How [`RetryingClient`] retries: bounded exponential backoff between attempts, and an
/// overall deadline for the whole call (waiting for replies included).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Give up when the call has no reply this long after it was first sent; the last
    /// error is returned (a timeout when a reply was being waited for).
    pub deadline: Duration,
    /// The pause before the first retry; it doubles with every further one.
    pub backoff_initial: Duration,
    /// The longest pause between two attempts.
    pub backoff_max: Duration,
}

impl Default for RetryPolicy {
    /// A 30 s deadline (long enough for a supervisor restart), backoff from 10 ms to 1 s.
    fn default() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_secs(30),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
        }
    }
}

/// True when a keyed call that failed with `e` is worth sending again with the same
/// key: the connection was lost or never made, or the reply was cut short (the call may
/// or may not have run: the key makes a resend safe), or the supervisor refused it for
/// now (`Busy`: a full queue, too many connections, a shutdown) or could not say whether
/// it ran (`Timeout`: its shutdown_timeout ran out). Every other answer is final.
pub fn is_retryable(e: &ClientError) -> bool {
    match e {
        ClientError::Remote(body) => matches!(body.kind, ErrorKind::Busy | ErrorKind::Timeout),
        ClientError::Protocol(_) => true,
        e => e.is_unreachable(),
    }
}

/// A client for keyed calls that survives lost connections: when the connection breaks
/// or the supervisor is unreachable before the reply arrived, it reconnects (bounded
/// backoff, overall deadline: [`RetryPolicy`]) and resends the same call with the same
/// key, so the call runs once and every attempt gets its first reply. Answers that are
/// errors are returned as they are, except `Busy` and `Timeout` (see [`is_retryable`]).
///
/// A key protects a call only while the supervisor remembers it: the last
/// `idempotency_keys` keyed calls of the actor (docs/guarantees.md), and, with
/// `durability = "memory"`, not across a restart of the supervisor.
pub struct RetryingClient {
    path: PathBuf,
    policy: RetryPolicy,
    conn: Option<Client>,
    resends: u64,
}

impl RetryingClient {
    /// A client for the socket at `path` with the default [`RetryPolicy`]. It connects on
    /// the first call.
    pub fn new(path: impl Into<PathBuf>) -> RetryingClient {
        RetryingClient::with_policy(path, RetryPolicy::default())
    }

    /// A client for the socket at `path` that retries as `policy` says.
    pub fn with_policy(path: impl Into<PathBuf>, policy: RetryPolicy) -> RetryingClient {
        RetryingClient {
            path: path.into(),
            policy,
            conn: None,
            resends: 0,
        }
    }

    /// How many times a call was sent again (over every call made so far).
    pub fn resends(&self) -> u64 {
        self.resends
    }

    /// Calls `method` on `actor` with the idempotency key `key` (None: a fresh one,
    /// [`new_key`]), sending it again with the same key after a lost connection or a
    /// retryable refusal until the policy's deadline. Returns the reply, or the first
    /// final error, or the last error once the deadline has passed.
    pub fn call(
        &mut self,
        actor: &str,
        method: &str,
        args: Value,
        key: Option<&str>,
    ) -> Result<Value, ClientError> {
        let fresh;
        let key = match key {
            Some(k) => k,
            None => {
                fresh = new_key();
                &fresh
            }
        };
        let deadline = Instant::now() + self.policy.deadline;
        let mut backoff = self.policy.backoff_initial;
        let request = keyed_call_request(actor, method, args, key);
        loop {
            let e = match self.attempt(&request, deadline) {
                Ok(v) => return Ok(v),
                Err(e) => e,
            };
            if !is_retryable(&e) {
                return Err(e);
            }
            // Broken, refused, or holding a late reply: the next attempt uses a new one.
            self.conn = None;
            let now = Instant::now();
            if now >= deadline {
                return Err(e);
            }
            std::thread::sleep(backoff.min(deadline - now));
            backoff = backoff.saturating_mul(2).min(self.policy.backoff_max);
            self.resends += 1;
        }
    }

    /// One attempt: (re)connects if needed, sends, waits for the reply; none of these
    /// waits past `deadline`.
    fn attempt(&mut self, request: &Value, deadline: Instant) -> Result<Value, ClientError> {
        // A zero timeout is refused by the OS (or means none): wait at least a millisecond.
        let left = || {
            deadline
                .saturating_duration_since(Instant::now())
                .max(Duration::from_millis(1))
        };
        let conn = match &mut self.conn {
            Some(c) => c,
            None => self
                .conn
                .insert(Client::connect_timeout(&self.path, left())?),
        };
        conn.set_timeout(Some(left()))?;
        conn.request(request.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    #[test]
    fn new_keys_are_unique_valid_keys() {
        let keys: std::collections::HashSet<String> = (0..1000).map(|_| new_key()).collect();
        assert_eq!(keys.len(), 1000);
        for k in &keys {
            assert_eq!(k.len(), 32, "{k}");
            assert!(k.bytes().all(|b| b.is_ascii_hexdigit()), "{k}");
        }
    }

    #[test]
    fn a_keyed_call_request_carries_the_key() {
        assert_eq!(
            keyed_call_request("c", "incr", json!(1), "k-1"),
            json!({"op": "call", "actor": "c", "method": "incr", "args": 1, "key": "k-1"})
        );
        assert_eq!(
            keyed_call_request("c", "get", Value::Null, "k"),
            json!({"op": "call", "actor": "c", "method": "get", "key": "k"})
        );
    }

    fn remote(kind: ErrorKind) -> ClientError {
        ClientError::Remote(ErrorBody::new(kind, "m"))
    }

    #[test]
    fn only_lost_connections_and_not_run_refusals_are_retried() {
        assert!(is_retryable(&ClientError::Closed));
        assert!(is_retryable(&ClientError::Io(
            std::io::ErrorKind::BrokenPipe.into()
        )));
        assert!(is_retryable(&ClientError::Protocol("cut".into())));
        assert!(is_retryable(&remote(ErrorKind::Busy)));
        assert!(is_retryable(&remote(ErrorKind::Timeout)));
        for kind in [
            ErrorKind::BadRequest,
            ErrorKind::ActorError,
            ErrorKind::ActorDead,
            ErrorKind::ActorStopped,
            ErrorKind::CallFailed,
            ErrorKind::UnknownActor,
            ErrorKind::UnknownMethod,
            ErrorKind::Unauthorized,
        ] {
            assert!(!is_retryable(&remote(kind)), "{kind:?}");
        }
    }

    /// A fake supervisor on `path`: each connection reads one request line and hands it
    /// to `answer`, which returns the reply line to write (None: close without one).
    fn fake_supervisor(
        path: &Path,
        connections: usize,
        mut answer: impl FnMut(usize, Value) -> Option<Value> + Send + 'static,
    ) -> std::thread::JoinHandle<Vec<Value>> {
        let listener = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let mut seen = Vec::new();
            for n in 0..connections {
                let (stream, _) = listener.accept().unwrap();
                let mut line = String::new();
                BufReader::new(&stream).read_line(&mut line).unwrap();
                let request: Value = serde_json::from_str(&line).unwrap();
                seen.push(request.clone());
                if let Some(mut reply) = answer(n, request.clone()) {
                    reply["id"] = request["id"].clone();
                    writeln!(&stream, "{reply}").unwrap();
                }
            }
            seen
        })
    }

    #[test]
    fn a_lost_connection_is_retried_with_the_same_key_until_the_reply() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        // First connection: closed before the reply; second: Busy; third: the reply.
        let fake = fake_supervisor(&path, 3, |n, _| match n {
            0 => None,
            1 => Some(json!({"err": {"kind": "Busy", "message": "queue full"}})),
            _ => Some(json!({"ok": 7})),
        });
        let mut c = RetryingClient::with_policy(
            &path,
            RetryPolicy {
                deadline: Duration::from_secs(20),
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(5),
            },
        );
        assert_eq!(c.call("c", "incr", json!(1), Some("k9")).unwrap(), json!(7));
        assert_eq!(c.resends(), 2);
        let seen = fake.join().unwrap();
        for r in &seen {
            assert_eq!(r["key"], "k9", "{r}");
            assert_eq!(r["args"], 1, "{r}");
        }
    }

    #[test]
    fn an_answer_that_is_an_error_is_returned_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let fake = fake_supervisor(&path, 1, |_, _| {
            Some(json!({"err": {"kind": "BadRequest", "message": "key reused"}}))
        });
        let mut c = RetryingClient::new(&path);
        match c.call("c", "incr", json!(1), Some("k")) {
            Err(ClientError::Remote(body)) => assert_eq!(body.kind, ErrorKind::BadRequest),
            other => panic!("{other:?}"),
        }
        assert_eq!(c.resends(), 0);
        assert_eq!(fake.join().unwrap().len(), 1);
    }

    /// Runs `f` on a thread and returns its result, or panics when it has not
    /// returned long after any deadline it was given (a hang, not a slow machine).
    fn returns<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let _ = tx.send(f());
        });
        rx.recv_timeout(Duration::from_secs(60))
            .expect("the call never returned: its deadline was not kept")
    }

    fn short_deadline() -> RetryPolicy {
        RetryPolicy {
            deadline: Duration::from_millis(300),
            backoff_initial: Duration::from_millis(1),
            backoff_max: Duration::from_millis(10),
        }
    }

    /// A supervisor that is stuck (stopped, or its loop wedged) neither accepts nor
    /// reads: connecting to its full backlog, or writing a request larger than the
    /// socket's buffer, must not outlast the deadline.
    #[test]
    fn a_stuck_supervisor_is_given_up_on_at_the_deadline() {
        use nix::sys::socket::{
            AddressFamily, Backlog, SockFlag, SockType, UnixAddr, bind, listen, socket,
        };
        let dir = tempfile::tempdir().unwrap();
        // Accepts nothing, and has room for one pending connection, which it holds.
        let full = dir.path().join("full.sock");
        let listener = socket(
            AddressFamily::Unix,
            SockType::Stream,
            SockFlag::SOCK_CLOEXEC,
            None,
        )
        .unwrap();
        bind(listener.as_raw_fd(), &UnixAddr::new(&full).unwrap()).unwrap();
        listen(&listener, Backlog::new(0).unwrap()).unwrap();
        let pending = UnixStream::connect(&full).unwrap();
        let mut c = RetryingClient::with_policy(&full, short_deadline());
        let e = returns(move || c.call("c", "incr", json!(1), None).unwrap_err());
        assert!(e.is_unreachable(), "{e:?}");
        drop((pending, listener));

        // Accepts, and never reads: a large request cannot be written whole.
        let deaf = dir.path().join("deaf.sock");
        let listener = UnixListener::bind(&deaf).unwrap();
        let held = std::thread::spawn(move || listener.accept().map(|(s, _)| s));
        let mut c = RetryingClient::with_policy(&deaf, short_deadline());
        let big = "x".repeat(16 << 20);
        let e = returns(move || c.call("c", "put", json!(big), None).unwrap_err());
        assert!(e.is_unreachable(), "{e:?}");
        drop(held.join().unwrap());
    }

    #[test]
    fn an_unreachable_supervisor_is_given_up_on_at_the_deadline() {
        let dir = tempfile::tempdir().unwrap();
        let mut c = RetryingClient::with_policy(
            dir.path().join("nobody.sock"),
            RetryPolicy {
                deadline: Duration::from_millis(50),
                backoff_initial: Duration::from_millis(1),
                backoff_max: Duration::from_millis(10),
            },
        );
        let e = c.call("c", "incr", json!(1), None).unwrap_err();
        assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    }
}
