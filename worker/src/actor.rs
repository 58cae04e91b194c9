//! The `Actor` trait a user implements.

use serde_json::Value;
use std::fmt;

use resurgam_shared::protocol::ErrorKind;

/// An error an actor returns for one call. The call is answered with it; the actor's
/// state must be unchanged (return errors before mutating).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ActorError {
    pub kind: ErrorKind,
    pub message: String,
}

impl ActorError {
    /// The arguments do not fit the method (answered as `BadRequest`).
    pub fn bad_args(message: impl Into<String>) -> Self {
        ActorError {
            kind: ErrorKind::BadRequest,
            message: message.into(),
        }
    }
    /// The method does not exist (answered as `UnknownMethod`).
    pub fn unknown_method(method: &str) -> Self {
        ActorError {
            kind: ErrorKind::UnknownMethod,
            message: format!("unknown method {method:?}"),
        }
    }
    /// The actor refused the call for its own reasons (answered as `ActorError`).
    pub fn failed(message: impl Into<String>) -> Self {
        ActorError {
            kind: ErrorKind::ActorError,
            message: message.into(),
        }
    }
}

impl fmt::Display for ActorError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.kind, self.message)
    }
}

impl std::error::Error for ActorError {}

/// A stateful actor that runs in its own worker process.
///
/// **Determinism contract**: the same state and the same call must give the same new
/// state and the same reply. Recovery replays calls after the last checkpoint; a reply
/// that differs from the first one is reported as non-determinism.
///
/// **Panics**: a panic (or abort) in any method ends the worker process. The supervisor
/// restarts it from the last checkpoint; a call that crashes the worker
/// `max_call_retries` times is answered with `CallFailed` and dropped.
pub trait Actor: Send + 'static {
    /// The method names this actor answers. Calls to other names are refused by the
    /// supervisor (`UnknownMethod`) without reaching the worker.
    fn methods() -> &'static [&'static str]
    where
        Self: Sized;

    /// The state of a new actor that has no checkpoint yet.
    fn new() -> Self
    where
        Self: Sized;

    /// Applies one call. `args` is `Value::Null` when the client gave none.
    fn handle(&mut self, method: &str, args: Value) -> Result<Value, ActorError>;

    /// Serialises the whole state for a checkpoint.
    fn save(&self) -> Result<Vec<u8>, String>;

    /// Rebuilds the state from a checkpoint made by [`Actor::save`].
    fn load(bytes: &[u8]) -> Result<Self, String>
    where
        Self: Sized;
}
