//! The control protocol: newline-delimited JSON over the Unix control socket.
//!
//! Request: `{"id": <any JSON>, "op": "call", "actor": "counter", "method": "incr", "args": 5}`.
//! Other ops: `status`, `checkpoint` (`actor`), `restart` (`actor`), `stop`.
//! Reply: `{"id": <same>, "ok": <JSON>}` or
//! `{"id": <same>, "err": {"kind": "<Kind>", "message": "<text>"}}`.
//!
//! `id` and `args` are kept as raw JSON text ([`RawValue`]) so the supervisor never
//! re-encodes what it only forwards.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use std::fmt;

/// The error kinds of the control protocol. The names are part of the wire contract.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum ErrorKind {
    BadRequest,
    Unauthorized,
    UnknownActor,
    UnknownMethod,
    ActorError,
    ActorDead,
    CallFailed,
    Busy,
    Timeout,
}

impl ErrorKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorKind::BadRequest => "BadRequest",
            ErrorKind::Unauthorized => "Unauthorized",
            ErrorKind::UnknownActor => "UnknownActor",
            ErrorKind::UnknownMethod => "UnknownMethod",
            ErrorKind::ActorError => "ActorError",
            ErrorKind::ActorDead => "ActorDead",
            ErrorKind::CallFailed => "CallFailed",
            ErrorKind::Busy => "Busy",
            ErrorKind::Timeout => "Timeout",
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An error reply's body.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub kind: ErrorKind,
    pub message: String,
}

impl ErrorBody {
    pub fn new(kind: ErrorKind, message: impl Into<String>) -> Self {
        ErrorBody {
            kind,
            message: message.into(),
        }
    }
}

impl fmt::Display for ErrorBody {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

/// The `id` to echo when the request could not be parsed far enough to find one.
pub const NULL_ID: &str = "null";

/// What a request asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Op {
    Call {
        actor: String,
        method: String,
        /// Raw JSON text of `args`, or `None` when absent.
        args: Option<String>,
    },
    Status,
    Checkpoint {
        actor: String,
    },
    Restart {
        actor: String,
    },
    /// Re-read the config file and apply the changes (like SIGHUP).
    Reload,
    Stop,
}

/// One parsed request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Raw JSON text of `id` (`null` when absent).
    pub id: String,
    pub op: Op,
}

#[derive(Deserialize)]
struct WireRequest<'a> {
    #[serde(borrow, default)]
    id: Option<&'a RawValue>,
    #[serde(default)]
    op: Option<String>,
    #[serde(default)]
    actor: Option<String>,
    #[serde(default)]
    method: Option<String>,
    #[serde(borrow, default)]
    args: Option<&'a RawValue>,
}

/// A request that could not be accepted: the id to answer (raw JSON) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: String,
    pub error: ErrorBody,
}

/// Parses one request line (without its newline).
pub fn parse_request(line: &[u8]) -> Result<Request, Rejected> {
    let text = std::str::from_utf8(line).map_err(|e| Rejected {
        id: NULL_ID.to_string(),
        error: ErrorBody::new(
            ErrorKind::BadRequest,
            format!("request is not UTF-8 (byte {})", e.valid_up_to()),
        ),
    })?;
    let wire: WireRequest<'_> = serde_json::from_str(text).map_err(|e| Rejected {
        id: NULL_ID.to_string(),
        error: ErrorBody::new(
            ErrorKind::BadRequest,
            format!("malformed JSON request: {e}"),
        ),
    })?;
    let id = wire.id.map_or(NULL_ID, RawValue::get).to_string();
    let bad = |message: String| Rejected {
        id: id.clone(),
        error: ErrorBody::new(ErrorKind::BadRequest, message),
    };
    let need_actor = |actor: Option<String>, op: &str| {
        actor.ok_or_else(|| bad(format!("op {op:?} needs an \"actor\" string")))
    };
    let op = match wire.op.as_deref() {
        Some("call") => Op::Call {
            actor: need_actor(wire.actor, "call")?,
            method: wire
                .method
                .ok_or_else(|| bad("op \"call\" needs a \"method\" string".to_string()))?,
            args: wire.args.map(|a| a.get().to_string()),
        },
        Some("status") => Op::Status,
        Some("checkpoint") => Op::Checkpoint {
            actor: need_actor(wire.actor, "checkpoint")?,
        },
        Some("restart") => Op::Restart {
            actor: need_actor(wire.actor, "restart")?,
        },
        Some("stop") => Op::Stop,
        Some("reload") => Op::Reload,
        Some(other) => {
            return Err(bad(format!(
                "unknown op {other:?} (expected call, status, checkpoint, restart, reload, stop)"
            )));
        }
        None => return Err(bad("request has no \"op\" string".to_string())),
    };
    Ok(Request { id, op })
}

/// Encodes a success reply line (with its newline). `ok` must be valid JSON text.
pub fn encode_ok(id: &str, ok: &str) -> String {
    let mut s = String::with_capacity(id.len() + ok.len() + 16);
    s.push_str("{\"id\":");
    s.push_str(id);
    s.push_str(",\"ok\":");
    s.push_str(ok);
    s.push_str("}\n");
    s
}

/// Encodes an error reply line (with its newline).
pub fn encode_err(id: &str, error: &ErrorBody) -> String {
    // Serialising an ErrorBody (an enum and a string) cannot fail.
    let body = serde_json::to_string(error).unwrap_or_else(|_| {
        "{\"kind\":\"BadRequest\",\"message\":\"unencodable error\"}".to_string()
    });
    let mut s = String::with_capacity(id.len() + body.len() + 16);
    s.push_str("{\"id\":");
    s.push_str(id);
    s.push_str(",\"err\":");
    s.push_str(&body);
    s.push_str("}\n");
    s
}

/// A reply as a client sees it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
pub struct Reply {
    pub id: serde_json::Value,
    #[serde(default)]
    pub ok: Option<serde_json::Value>,
    #[serde(default)]
    pub err: Option<ErrorBody>,
}

impl Reply {
    /// The reply's result: `ok` or `err` (a reply with neither is a protocol error).
    pub fn into_result(self) -> Result<serde_json::Value, ErrorBody> {
        match (self.ok, self.err) {
            (_, Some(e)) => Err(e),
            (Some(v), None) => Ok(v),
            (None, None) => Ok(serde_json::Value::Null),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_call_with_raw_id_and_args() {
        let r = parse_request(
            br#"{"id":{"x":[1,2]},"op":"call","actor":"counter","method":"incr","args":5}"#,
        )
        .unwrap();
        assert_eq!(r.id, r#"{"x":[1,2]}"#);
        assert_eq!(
            r.op,
            Op::Call {
                actor: "counter".into(),
                method: "incr".into(),
                args: Some("5".into())
            }
        );
    }

    #[test]
    fn parses_other_ops() {
        assert_eq!(
            parse_request(br#"{"id":1,"op":"status"}"#).unwrap().op,
            Op::Status
        );
        assert_eq!(
            parse_request(br#"{"op":"stop"}"#).unwrap(),
            Request {
                id: "null".into(),
                op: Op::Stop
            }
        );
        assert_eq!(
            parse_request(br#"{"id":"a","op":"restart","actor":"kv"}"#)
                .unwrap()
                .op,
            Op::Restart { actor: "kv".into() }
        );
    }

    #[test]
    fn rejects_bad_requests_keeping_the_id_when_known() {
        let e = parse_request(b"{not json").unwrap_err();
        assert_eq!(e.id, "null");
        assert_eq!(e.error.kind, ErrorKind::BadRequest);
        let e = parse_request(br#"{"id":9,"op":"dance"}"#).unwrap_err();
        assert_eq!(e.id, "9");
        assert!(e.error.message.contains("dance"));
        let e = parse_request(br#"{"id":9,"op":"call","actor":"c"}"#).unwrap_err();
        assert!(e.error.message.contains("method"));
        let e = parse_request(br#"{"id":9,"op":"call","actor":5,"method":"m"}"#).unwrap_err();
        assert_eq!(e.error.kind, ErrorKind::BadRequest);
        let e = parse_request(&[0xff, 0xfe]).unwrap_err();
        assert!(e.error.message.contains("UTF-8"));
    }

    #[test]
    fn replies_are_valid_json() {
        let ok: Reply = serde_json::from_str(&encode_ok("\"x\"", "[1,2]")).unwrap();
        assert_eq!(ok.id, serde_json::json!("x"));
        assert_eq!(ok.into_result().unwrap(), serde_json::json!([1, 2]));
        let err: Reply = serde_json::from_str(&encode_err(
            "3",
            &ErrorBody::new(ErrorKind::ActorDead, "actor \"c\" is DEAD"),
        ))
        .unwrap();
        let e = err.into_result().unwrap_err();
        assert_eq!(e.kind, ErrorKind::ActorDead);
        assert!(e.message.contains("DEAD"));
    }
}
