//! The built-in actor kinds, deterministic, for demos, tests and benchmarks.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::actor::{Actor, ActorError};

/// `counter`: one integer. `incr` (integer n, default 1) → the new value; `get` → the
/// value; `crash` → the worker aborts at once (to watch recovery).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Counter {
    value: i64,
}

impl Actor for Counter {
    fn methods() -> &'static [&'static str] {
        &["incr", "get", "crash"]
    }

    fn new() -> Self {
        Counter::default()
    }

    fn handle(&mut self, method: &str, args: Value) -> Result<Value, ActorError> {
        match method {
            "incr" => {
                let n = match args {
                    Value::Null => 1,
                    Value::Number(n) => n.as_i64().ok_or_else(|| {
                        ActorError::bad_args(format!("incr takes an integer, got {n}"))
                    })?,
                    other => {
                        return Err(ActorError::bad_args(format!(
                            "incr takes an integer, got {other}"
                        )));
                    }
                };
                self.value = self.value.checked_add(n).ok_or_else(|| {
                    ActorError::failed(format!("incr by {n} overflows {}", self.value))
                })?;
                Ok(Value::from(self.value))
            }
            "get" => Ok(Value::from(self.value)),
            "crash" => std::process::abort(),
            other => Err(ActorError::unknown_method(other)),
        }
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        Ok(self.value.to_string().into_bytes())
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        let text = std::str::from_utf8(bytes).map_err(|e| format!("counter state: {e}"))?;
        let value = text
            .trim()
            .parse()
            .map_err(|e| format!("counter state {text:?}: {e}"))?;
        Ok(Counter { value })
    }
}

/// `kv`: a map from string keys to JSON values. `put {"key","value"}` → the previous
/// value or null; `get {"key"}` → the value or null; `delete {"key"}` → the removed
/// value or null; `len` → the number of keys.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Kv {
    map: BTreeMap<String, Value>,
}

fn key_of(method: &str, args: &mut Value) -> Result<String, ActorError> {
    match args.get_mut("key").map(Value::take) {
        Some(Value::String(k)) => Ok(k),
        Some(other) => Err(ActorError::bad_args(format!(
            "{method}: \"key\" must be a string, got {other}"
        ))),
        None => Err(ActorError::bad_args(format!(
            "{method} takes {{\"key\": string{}}}",
            if method == "put" {
                ", \"value\": any"
            } else {
                ""
            }
        ))),
    }
}

impl Actor for Kv {
    fn methods() -> &'static [&'static str] {
        &["put", "get", "delete", "len"]
    }

    fn new() -> Self {
        Kv::default()
    }

    fn handle(&mut self, method: &str, mut args: Value) -> Result<Value, ActorError> {
        match method {
            "put" => {
                let key = key_of(method, &mut args)?;
                let value = match args.get_mut("value") {
                    Some(v) => v.take(),
                    None => return Err(ActorError::bad_args("put takes {\"key\", \"value\"}")),
                };
                Ok(self.map.insert(key, value).unwrap_or(Value::Null))
            }
            "get" => {
                let key = key_of(method, &mut args)?;
                Ok(self.map.get(&key).cloned().unwrap_or(Value::Null))
            }
            "delete" => {
                let key = key_of(method, &mut args)?;
                Ok(self.map.remove(&key).unwrap_or(Value::Null))
            }
            "len" => Ok(Value::from(self.map.len())),
            other => Err(ActorError::unknown_method(other)),
        }
    }

    fn save(&self) -> Result<Vec<u8>, String> {
        serde_json::to_vec(&self.map).map_err(|e| format!("kv state: {e}"))
    }

    fn load(bytes: &[u8]) -> Result<Self, String> {
        let map = serde_json::from_slice(bytes).map_err(|e| format!("kv state: {e}"))?;
        Ok(Kv { map })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn counter_counts_and_round_trips() {
        let mut c = Counter::new();
        assert_eq!(c.handle("incr", Value::Null), Ok(json!(1)));
        assert_eq!(c.handle("incr", json!(5)), Ok(json!(6)));
        assert_eq!(c.handle("incr", json!(-2)), Ok(json!(4)));
        assert_eq!(c.handle("get", Value::Null), Ok(json!(4)));
        let saved = c.save().unwrap();
        assert_eq!(Counter::load(&saved).unwrap(), c);
    }

    #[test]
    fn counter_rejects_bad_args_without_changing_state() {
        let mut c = Counter::new();
        for bad in [json!("x"), json!(1.5), json!([1]), json!({"n": 1})] {
            let e = c.handle("incr", bad).unwrap_err();
            assert_eq!(e.kind, ErrorKind::BadRequest);
        }
        c.handle("incr", json!(i64::MAX)).unwrap();
        assert_eq!(
            c.handle("incr", json!(1)).unwrap_err().kind,
            ErrorKind::ActorError
        );
        assert_eq!(c.handle("get", Value::Null), Ok(json!(i64::MAX)));
        assert_eq!(
            c.handle("nope", Value::Null).unwrap_err().kind,
            ErrorKind::UnknownMethod
        );
        assert!(Counter::load(b"12x").is_err());
    }

    #[test]
    fn kv_semantics() {
        let mut kv = Kv::new();
        assert_eq!(
            kv.handle("put", json!({"key": "a", "value": [1]})),
            Ok(Value::Null)
        );
        assert_eq!(
            kv.handle("put", json!({"key": "a", "value": 2})),
            Ok(json!([1]))
        );
        assert_eq!(kv.handle("get", json!({"key": "a"})), Ok(json!(2)));
        assert_eq!(kv.handle("get", json!({"key": "b"})), Ok(Value::Null));
        assert_eq!(kv.handle("len", Value::Null), Ok(json!(1)));
        assert_eq!(kv.handle("delete", json!({"key": "a"})), Ok(json!(2)));
        assert_eq!(kv.handle("delete", json!({"key": "a"})), Ok(Value::Null));
        assert_eq!(kv.handle("len", Value::Null), Ok(json!(0)));
        kv.handle("put", json!({"key": "z", "value": {"deep": true}}))
            .unwrap();
        assert_eq!(Kv::load(&kv.save().unwrap()).unwrap(), kv);
    }

    #[test]
    fn kv_rejects_bad_args() {
        let mut kv = Kv::new();
        for (m, a) in [
            ("put", json!({"key": "a"})),
            ("put", json!({"key": 1, "value": 1})),
            ("get", json!("a")),
            ("get", Value::Null),
            ("delete", json!({"k": "a"})),
        ] {
            assert_eq!(
                kv.handle(m, a).unwrap_err().kind,
                ErrorKind::BadRequest,
                "{m}"
            );
        }
        assert_eq!(kv.handle("len", Value::Null), Ok(json!(0)));
    }

    use resurgam_shared::protocol::ErrorKind;
}
