//! The control protocol: newline-delimited JSON over the Unix control socket.
//!
//! Request: `{"id": <any JSON>, "op": "call", "actor": "counter", "method": "incr", "args": 5}`.
//! Other ops: `status`, `checkpoint` (`actor`), `restart` (`actor`), `reload`, `stop` (the
//! whole supervisor), `stop_actor` / `start_actor` (`actor`: one actor; named apart from
//! `stop` so that a request naming an actor can never stop the supervisor), `pid`
//! (optional `actor`), `export` (`actor`; the actor's state as an export file, see
//! [`crate::export`]), `import` (`actor`, `file`: an export file in base64), `metrics` (the
//! Prometheus text format, as a JSON string) and `subscribe` (an acknowledgement, then a
//! stream of event lines on the same connection; see `docs/observability.md`).
//! Every op takes `id`; a field its op does not take (`{"op":"stop","actor":"c"}`) is a
//! `BadRequest` naming the field, never silently ignored.
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
    /// The actor was stopped by an operator (`stop_actor`) and not started again.
    ActorStopped,
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
            ErrorKind::ActorStopped => "ActorStopped",
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
        /// The idempotency key (G10), checked: 1 to [`MAX_KEY_LEN`] printable ASCII.
        key: Option<String>,
    },
    Status,
    Checkpoint {
        actor: String,
    },
    Restart {
        actor: String,
        /// Revive an actor held DEAD because its state files are damaged or gone,
        /// accepting the loss (`"fresh": true`).
        fresh: bool,
    },
    /// Re-read the config file and apply the changes (like SIGHUP).
    Reload,
    /// Stop the whole supervisor.
    Stop,
    /// Stop one actor: its accepted calls are answered, a final checkpoint is taken, its
    /// worker exits; new calls get `ActorStopped` until `StartActor`.
    StopActor {
        actor: String,
    },
    /// Start an actor stopped by `StopActor` (or revive a DEAD one).
    StartActor {
        actor: String,
    },
    /// The pid of an actor's worker (and program), or of the supervisor without `actor`.
    Pid {
        actor: Option<String>,
    },
    /// The metrics in the Prometheus text exposition format.
    Metrics,
    /// Stream events (NDJSON lines, each with a `seq`) on this connection from now on.
    Subscribe,
    /// The actor's state as an export file, taken in its call order.
    Export {
        actor: String,
    },
    /// Install a (verified) export file's state, in the actor's call order.
    Import {
        actor: String,
        file: crate::export::StateFile,
    },
}

/// One parsed request line.
#[derive(Debug, Clone, PartialEq)]
pub struct Request {
    /// Raw JSON text of `id` (`null` when absent).
    pub id: String,
    pub op: Op,
}

/// The fields of one request line, whatever its op. Which fields are present is kept,
/// so that a field the op does not take is refused rather than silently ignored (a
/// `{"op":"stop","actor":"c"}` must not stop the whole supervisor).
struct WireRequest<'a> {
    id: Option<&'a RawValue>,
    op: Option<String>,
    actor: Option<String>,
    method: Option<String>,
    args: Option<&'a RawValue>,
    /// A call's idempotency key (G10), checked here; the worker keeps what it promises.
    key: Option<String>,
    /// An import's export file, in base64.
    file: Option<String>,
    /// A restart's `fresh` flag.
    fresh: Option<bool>,
    /// The [`Field`]s present, as their bits (`Field::ACTOR`, ...).
    present: u8,
    /// The first field that no op takes, by name.
    unknown: Option<String>,
}

/// A request field name; `Other` is one no op takes.
enum Field {
    Id,
    Op,
    Actor,
    Method,
    Args,
    Key,
    File,
    Fresh,
    Other(String),
}

impl Field {
    /// The fields an op may take besides `id` and `op` (which every op takes), as bits.
    const ACTOR: u8 = 1;
    const METHOD: u8 = 2;
    const ARGS: u8 = 4;
    const KEY: u8 = 8;
    /// `id` and `op`, taken by every op: never in [`Field::OPTIONAL`].
    const ID: u8 = 16;
    const OP: u8 = 32;
    const FILE: u8 = 64;
    const FRESH: u8 = 128;
    /// The optional fields, each with its bit, in the order they are reported.
    const OPTIONAL: [(u8, &'static str); 6] = [
        (Field::ACTOR, "actor"),
        (Field::METHOD, "method"),
        (Field::ARGS, "args"),
        (Field::KEY, "key"),
        (Field::FILE, "file"),
        (Field::FRESH, "fresh"),
    ];

    /// The bits of the fields `op` takes (besides `id` and `op`); None for an unknown op.
    fn taken_by(op: &str) -> Option<u8> {
        Some(match op {
            "call" => Field::ACTOR | Field::METHOD | Field::ARGS | Field::KEY,
            "checkpoint" | "stop_actor" | "start_actor" | "pid" | "export" => Field::ACTOR,
            "restart" => Field::ACTOR | Field::FRESH,
            "import" => Field::ACTOR | Field::FILE,
            "status" | "reload" | "stop" | "metrics" | "subscribe" => 0,
            _ => return None,
        })
    }
}

impl<'de> Deserialize<'de> for Field {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl serde::de::Visitor<'_> for V {
            type Value = Field;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a field name")
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Field, E> {
                Ok(match v {
                    "id" => Field::Id,
                    "op" => Field::Op,
                    "actor" => Field::Actor,
                    "method" => Field::Method,
                    "args" => Field::Args,
                    "key" => Field::Key,
                    "file" => Field::File,
                    "fresh" => Field::Fresh,
                    other => Field::Other(other.to_string()),
                })
            }
        }
        d.deserialize_identifier(V)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for WireRequest<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V<'a>(std::marker::PhantomData<&'a ()>);
        impl<'de: 'a, 'a> serde::de::Visitor<'de> for V<'a> {
            type Value = WireRequest<'a>;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a request object")
            }
            fn visit_map<M: serde::de::MapAccess<'de>>(
                self,
                mut map: M,
            ) -> Result<WireRequest<'a>, M::Error> {
                use serde::de::Error;
                let mut present = 0u8;
                let mut seen = |bit: u8, name: &'static str| {
                    if present & bit != 0 {
                        return Err(M::Error::duplicate_field(name));
                    }
                    present |= bit;
                    Ok(())
                };
                let (mut id, mut op, mut actor, mut method, mut args, mut idem_key) =
                    (None, None, None, None, None, None);
                let mut file = None;
                let mut fresh = None;
                let mut unknown = None;
                // Each known field: refused when repeated, its value typed by its slot.
                macro_rules! take {
                    ($bit:expr, $name:literal, $slot:ident) => {{
                        seen($bit, $name)?;
                        // A value of the wrong type is refused naming its field.
                        $slot = map.next_value().map_err(|e: M::Error| {
                            serde::de::Error::custom(format_args!("field `{}`: {e}", $name))
                        })?;
                    }};
                }
                while let Some(key) = map.next_key::<Field>()? {
                    match key {
                        Field::Id => take!(Field::ID, "id", id),
                        Field::Op => take!(Field::OP, "op", op),
                        Field::Actor => take!(Field::ACTOR, "actor", actor),
                        Field::Method => take!(Field::METHOD, "method", method),
                        Field::Args => take!(Field::ARGS, "args", args),
                        Field::Key => take!(Field::KEY, "key", idem_key),
                        Field::File => take!(Field::FILE, "file", file),
                        Field::Fresh => take!(Field::FRESH, "fresh", fresh),
                        Field::Other(name) => {
                            map.next_value::<serde::de::IgnoredAny>()?;
                            unknown.get_or_insert(name);
                        }
                    }
                }
                Ok(WireRequest {
                    id,
                    op,
                    actor,
                    method,
                    args,
                    key: idem_key,
                    file,
                    fresh,
                    present,
                    unknown,
                })
            }
        }
        d.deserialize_map(V(std::marker::PhantomData))
    }
}

/// A request that could not be accepted: the id to answer (raw JSON) and why.
#[derive(Debug, Clone, PartialEq)]
pub struct Rejected {
    pub id: String,
    pub error: ErrorBody,
}

/// Longest method name accepted, in bytes (the call log stores the length in 16 bits,
/// the largest value marking a keyed record).
pub const MAX_METHOD_LEN: usize = u16::MAX as usize - 1;
/// The longest idempotency key a call may carry (G10).
pub const MAX_KEY_LEN: usize = 128;

/// Only a request's `id`, for answering a request that does not parse otherwise.
#[derive(Deserialize)]
struct IdOnly<'a> {
    #[serde(borrow)]
    id: Option<&'a RawValue>,
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
        // The error belongs to the request's id when the line has one to read.
        id: serde_json::from_str::<IdOnly<'_>>(text)
            .ok()
            .and_then(|r| r.id)
            .map_or(NULL_ID, RawValue::get)
            .to_string(),
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
    let Some(op_name) = wire.op.as_deref() else {
        return Err(bad("request has no \"op\" string".to_string()));
    };
    let unknown_op = |op: &str| {
        bad(format!(
            "unknown op {op:?} (expected call, status, checkpoint, restart, reload, stop, \
             stop_actor, start_actor, pid, metrics, subscribe, export, import)"
        ))
    };
    let Some(taken) = Field::taken_by(op_name) else {
        return Err(unknown_op(op_name));
    };
    let not_taken = Field::OPTIONAL
        .iter()
        .find(|(bit, _)| wire.present & bit & !taken != 0)
        .map(|(_, name)| *name)
        .or(wire.unknown.as_deref());
    if let Some(field) = not_taken {
        return Err(bad(format!(
            "field `{field}` is not taken by op `{op_name}`"
        )));
    }
    if let Some(key) = &wire.key
        && (!(1..=MAX_KEY_LEN).contains(&key.len())
            || key.bytes().any(|b| !(b' '..=b'~').contains(&b)))
    {
        return Err(bad(format!(
            "\"key\" must be 1-{MAX_KEY_LEN} printable ASCII characters"
        )));
    }
    let op = match op_name {
        "call" => {
            let method = wire
                .method
                .ok_or_else(|| bad("op \"call\" needs a \"method\" string".to_string()))?;
            // Reserved for the log's own entries (tombstones, exports, imports).
            if method.starts_with('\0') {
                return Err(bad(
                    "a method name cannot start with NUL (reserved)".to_string()
                ));
            }
            if method.len() > MAX_METHOD_LEN {
                return Err(bad(format!(
                    "a method name is at most {MAX_METHOD_LEN} bytes (this one: {})",
                    method.len()
                )));
            }
            Op::Call {
                actor: need_actor(wire.actor, "call")?,
                method,
                args: wire.args.map(|a| a.get().to_string()),
                key: wire.key,
            }
        }
        "checkpoint" => Op::Checkpoint {
            actor: need_actor(wire.actor, "checkpoint")?,
        },
        "restart" => Op::Restart {
            actor: need_actor(wire.actor, "restart")?,
            fresh: wire.fresh.unwrap_or(false),
        },
        "stop_actor" => Op::StopActor {
            actor: need_actor(wire.actor, "stop_actor")?,
        },
        "start_actor" => Op::StartActor {
            actor: need_actor(wire.actor, "start_actor")?,
        },
        "pid" => Op::Pid { actor: wire.actor },
        "status" => Op::Status,
        "stop" => Op::Stop,
        "reload" => Op::Reload,
        "metrics" => Op::Metrics,
        "subscribe" => Op::Subscribe,
        "export" => Op::Export {
            actor: need_actor(wire.actor, "export")?,
        },
        "import" => {
            let actor = need_actor(wire.actor, "import")?;
            let text = wire.file.ok_or_else(|| {
                bad("op \"import\" needs a \"file\" string (an export file in base64)".to_string())
            })?;
            let bytes = crate::export::base64_decode(&text)
                .map_err(|e| bad(format!("\"file\" is not base64: {e}")))?;
            let file = crate::export::decode(&bytes).map_err(|e| bad(format!("import: {e}")))?;
            Op::Import { actor, file }
        }
        other => return Err(unknown_op(other)),
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
    /// An export file of actor "a" holding `state`.
    fn export_file(state: &[u8]) -> Vec<u8> {
        crate::export::encode(
            &crate::export::Header {
                actor: "a".into(),
                kind: "counter".into(),
                generation: 1,
                last_seq: 2,
                bytes: 0,
            },
            state,
        )
    }

    #[test]
    fn reserved_methods_cannot_be_called_and_an_import_is_verified_at_parse() {
        let r = parse_request(br#"{"id":1,"op":"call","actor":"a","method":"\u0000import"}"#);
        assert!(r.unwrap_err().error.message.contains("NUL"));
        let file = export_file(b"7");
        let line = format!(
            r#"{{"id":2,"op":"import","actor":"b","file":"{}"}}"#,
            crate::export::base64_encode(&file)
        );
        match parse_request(line.as_bytes()).map(|r| r.op) {
            Ok(Op::Import { actor, file }) => {
                assert_eq!(actor, "b");
                assert_eq!(file.state, b"7");
            }
            other => panic!("{other:?}"),
        }
        let r = parse_request(br#"{"op":"import","actor":"b"}"#);
        assert!(r.unwrap_err().error.message.contains("\"file\""));
        let r = parse_request(br#"{"op":"export","actor":"b","file":"x"}"#);
        assert!(r.unwrap_err().error.message.contains("`file`"));
    }

    #[test]
    fn an_import_of_bad_base64_or_a_damaged_file_is_a_bad_request() {
        let import = |file: &str| {
            let line = format!(r#"{{"id":3,"op":"import","actor":"b","file":"{file}"}}"#);
            parse_request(line.as_bytes()).unwrap_err().error
        };
        for text in ["Zm9v!g==", "Zm9", "Z===", "Zg==Zg=="] {
            let e = import(text);
            assert_eq!(e.kind, ErrorKind::BadRequest);
            assert!(e.message.contains("not base64"), "{text}: {}", e.message);
        }
        // Base64 of bytes that are no export file, and of one with a flipped bit.
        let e = import(&crate::export::base64_encode(b"not an export file"));
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("RSGMSTAT"), "{}", e.message);
        let mut file = export_file(b"7");
        let n = file.len();
        file[n - 5] ^= 1;
        let e = import(&crate::export::base64_encode(&file));
        assert_eq!(e.kind, ErrorKind::BadRequest);
        assert!(e.message.contains("damaged"), "{}", e.message);
    }

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
                args: Some("5".into()),
                key: None,
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
            Op::Restart {
                actor: "kv".into(),
                fresh: false
            }
        );
    }

    #[test]
    fn per_actor_stop_and_start_and_pid_have_ops_of_their_own() {
        let op = |line: &str| parse_request(line.as_bytes()).map(|r| r.op);
        assert_eq!(
            op(r#"{"op":"stop_actor","actor":"c"}"#),
            Ok(Op::StopActor { actor: "c".into() })
        );
        assert_eq!(
            op(r#"{"op":"start_actor","actor":"c"}"#),
            Ok(Op::StartActor { actor: "c".into() })
        );
        assert_eq!(
            op(r#"{"op":"pid","actor":"c"}"#),
            Ok(Op::Pid {
                actor: Some("c".into())
            })
        );
        assert_eq!(op(r#"{"op":"pid"}"#), Ok(Op::Pid { actor: None }));
        for needs_actor in ["stop_actor", "start_actor"] {
            let e = op(&format!(r#"{{"op":"{needs_actor}"}}"#)).unwrap_err();
            assert_eq!(e.error.kind, ErrorKind::BadRequest);
            assert!(e.error.message.contains("\"actor\""), "{}", e.error);
        }
        let e = op(r#"{"op":"stop_actor","actor":"c","method":"m"}"#).unwrap_err();
        assert!(e.error.message.contains("`method`"), "{}", e.error);
        assert_eq!(ErrorKind::ActorStopped.as_str(), "ActorStopped");
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
    fn a_field_of_the_wrong_type_is_refused_naming_it_under_the_requests_id() {
        for (line, field) in [
            (
                r#"{"id":9,"op":"call","actor":"c","method":"m","key":7}"#,
                "`key`",
            ),
            (
                r#"{"id":"x","op":"call","actor":["c"],"method":"m"}"#,
                "`actor`",
            ),
            (
                r#"{"id":9,"op":"restart","actor":"c","fresh":"yes"}"#,
                "`fresh`",
            ),
        ] {
            let e = parse_request(line.as_bytes()).unwrap_err();
            assert_eq!(e.error.kind, ErrorKind::BadRequest, "{line}");
            assert!(
                e.error.message.contains(field),
                "{line}: {}",
                e.error.message
            );
            assert_ne!(e.id, NULL_ID, "{line}: the request's id is readable");
        }
        // A line whose id cannot be read either is answered with the null id.
        let e = parse_request(br#"{"id":9,"op":"call""#).unwrap_err();
        assert_eq!(e.id, NULL_ID);
    }

    #[test]
    fn a_method_name_longer_than_the_log_can_hold_is_refused() {
        let at_most = "m".repeat(MAX_METHOD_LEN);
        let line = format!(r#"{{"id":1,"op":"call","actor":"c","method":"{at_most}"}}"#);
        assert!(parse_request(line.as_bytes()).is_ok());
        let line = format!(r#"{{"id":1,"op":"call","actor":"c","method":"{at_most}m"}}"#);
        let e = parse_request(line.as_bytes()).unwrap_err();
        assert_eq!(e.error.kind, ErrorKind::BadRequest);
        assert!(
            e.error.message.contains("method name"),
            "{}",
            e.error.message
        );
    }

    #[test]
    fn a_call_may_carry_an_idempotency_key_of_printable_ascii() {
        let ok = parse_request(br#"{"id":1,"op":"call","actor":"c","method":"m","key":"k-1 x"}"#);
        assert!(
            matches!(&ok, Ok(r) if matches!(&r.op, Op::Call { key: Some(k), .. } if k == "k-1 x")),
            "{ok:?}"
        );
        // `null` is no key, as a missing field: a plain call.
        let plain = parse_request(br#"{"id":1,"op":"call","actor":"c","method":"m","key":null}"#);
        assert!(
            matches!(&plain, Ok(r) if matches!(&r.op, Op::Call { key: None, .. })),
            "{plain:?}"
        );
        let long = "k".repeat(MAX_KEY_LEN);
        let line = format!(r#"{{"id":1,"op":"call","actor":"c","method":"m","key":"{long}"}}"#);
        assert!(parse_request(line.as_bytes()).is_ok());
        for bad in [
            String::new(),
            "k".repeat(MAX_KEY_LEN + 1),
            "tab\there".into(),
            "é".into(),
        ] {
            let line = format!(
                r#"{{"id":1,"op":"call","actor":"c","method":"m","key":{}}}"#,
                serde_json::to_string(&bad).unwrap()
            );
            let e = parse_request(line.as_bytes()).unwrap_err();
            assert_eq!(e.error.kind, ErrorKind::BadRequest, "{bad:?}");
            assert!(
                e.error.message.contains("printable ASCII"),
                "{}",
                e.error.message
            );
        }
        let e = parse_request(br#"{"id":1,"op":"status","key":"k"}"#).unwrap_err();
        assert_eq!(e.error.message, "field `key` is not taken by op `status`");
    }

    #[test]
    fn a_field_the_op_does_not_take_is_refused_by_name() {
        let refused = |line: &str, field: &str, op: &str| {
            let e = parse_request(line.as_bytes()).unwrap_err();
            assert_eq!(e.error.kind, ErrorKind::BadRequest, "{line}");
            assert_eq!(
                e.error.message,
                format!("field `{field}` is not taken by op `{op}`"),
                "{line}"
            );
            assert_eq!(e.id, "7", "{line}");
        };
        refused(r#"{"id":7,"op":"stop","actor":"counter"}"#, "actor", "stop");
        refused(r#"{"id":7,"op":"reload","actor":null}"#, "actor", "reload");
        refused(r#"{"id":7,"op":"metrics","actor":"c"}"#, "actor", "metrics");
        refused(
            r#"{"id":7,"op":"subscribe","follow":true}"#,
            "follow",
            "subscribe",
        );
        refused(r#"{"id":7,"op":"status","method":"m"}"#, "method", "status");
        refused(
            r#"{"id":7,"op":"checkpoint","actor":"c","args":1}"#,
            "args",
            "checkpoint",
        );
        refused(
            r#"{"id":7,"op":"restart","actor":"c","method":"m"}"#,
            "method",
            "restart",
        );
        refused(
            r#"{"id":7,"op":"call","actor":"c","method":"m","timeout":5}"#,
            "timeout",
            "call",
        );
        refused(
            r#"{"id":7,"op":"stop","force":{"deep":[1]}}"#,
            "force",
            "stop",
        );
        // `id` is taken by every op, and each op takes its own fields.
        for line in [
            r#"{"id":7,"op":"call","actor":"c","method":"m","args":[1]}"#,
            r#"{"id":7,"op":"call","actor":"c","method":"m","key":"k"}"#,
            r#"{"id":7,"op":"status"}"#,
            r#"{"id":7,"op":"checkpoint","actor":"c"}"#,
            r#"{"id":7,"op":"restart","actor":"c"}"#,
            r#"{"id":7,"op":"reload"}"#,
            r#"{"id":7,"op":"stop"}"#,
            r#"{"id":7,"op":"metrics"}"#,
            r#"{"id":7,"op":"subscribe"}"#,
        ] {
            assert!(parse_request(line.as_bytes()).is_ok(), "{line}");
        }
        // A repeated field is refused too (it was before: the derived parser did it).
        let e = parse_request(br#"{"id":7,"op":"stop","op":"status"}"#).unwrap_err();
        assert!(e.error.message.contains("duplicate field `op`"), "{e:?}");
        // Every field, each named in the refusal.
        for (field, value) in [
            ("id", "7"),
            ("actor", "\"c\""),
            ("method", "\"m\""),
            ("args", "1"),
            ("key", "\"k\""),
            ("file", "\"\""),
            ("fresh", "true"),
        ] {
            let line = format!(r#"{{"id":7,"op":"call","{field}":{value},"{field}":{value}}}"#);
            let e = parse_request(line.as_bytes()).unwrap_err();
            let want = format!("duplicate field `{field}`");
            assert!(e.error.message.contains(&want), "{line}: {e:?}");
        }
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
