//! A Rust client for the control socket: connect, call, pipelined calls, status,
//! metrics, the event stream.

use std::io::{BufRead, BufReader, BufWriter, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use resurgam_shared::protocol::{ErrorBody, Reply};

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
        let w = stream.try_clone()?;
        Ok(Client {
            reader: BufReader::new(stream),
            writer: BufWriter::new(w),
            next_id: 1,
        })
    }

    /// Sets a read timeout for replies (None = wait forever).
    pub fn set_timeout(&mut self, t: Option<Duration>) -> Result<(), ClientError> {
        self.reader.get_ref().set_read_timeout(t)?;
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
        serde_json::to_writer(&mut self.writer, &request)
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
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

fn call_request(actor: &str, method: &str, args: Value) -> Value {
    if args.is_null() {
        json!({"op": "call", "actor": actor, "method": method})
    } else {
        json!({"op": "call", "actor": actor, "method": method, "args": args})
    }
}
