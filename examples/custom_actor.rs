//! A user-defined actor supervised by resurgam, from your own `main`.
//!
//! `cargo run --example custom_actor -- run --config examples/custom_actor.toml`, then
//! `cargo run --example custom_actor -- call --config examples/custom_actor.toml tally add '"apples"'`.
//!
//! The binary is both the supervisor and the worker: `resurgam::main_with` runs the
//! actor when started as a worker, and the command line otherwise.

use std::collections::BTreeMap;

use resurgam::{Actor, ActorError, Registry};
use serde_json::{Value, json};

/// Counts how often each word was added. Deterministic: same state + same call ⇒ same
/// new state and reply, which is what replay after a crash relies on.
#[derive(Default)]
struct Tally {
    counts: BTreeMap<String, u64>,
}

impl Actor for Tally {
    fn methods() -> &'static [&'static str] {
        &["add", "count", "top"]
    }

    fn new() -> Self {
        Tally::default()
    }

    fn handle(&mut self, method: &str, args: Value) -> Result<Value, ActorError> {
        match method {
            "add" => {
                let word = args
                    .as_str()
                    .ok_or_else(|| ActorError::bad_args("add takes a string"))?;
                let n = self.counts.entry(word.to_string()).or_default();
                *n += 1;
                Ok(json!(*n))
            }
            "count" => {
                let word = args
                    .as_str()
                    .ok_or_else(|| ActorError::bad_args("count takes a string"))?;
                Ok(json!(self.counts.get(word).copied().unwrap_or(0)))
            }
            "top" => Ok(json!(
                self.counts
                    .iter()
                    .max_by_key(|(w, n)| (**n, std::cmp::Reverse((*w).clone())))
                    .map(|(w, _)| w.clone())
            )),
            other => Err(ActorError::unknown_method(other)),
        }
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.counts).map_err(|e| e.to_string())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        let counts = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        Ok(Tally { counts })
    }
}

fn main() -> std::process::ExitCode {
    resurgam::main_with(Registry::with_builtins().register::<Tally>("tally"))
}
