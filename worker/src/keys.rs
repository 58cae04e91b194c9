//! Idempotency keys (G10): the keyed calls a worker remembers, with their first replies.
//!
//! A call may carry a client's key. The first call with a key runs; a later call with
//! the same key (a retry after a lost connection, a timeout, a restart) is answered
//! with the first call's reply and does not run. The table is part of every checkpoint
//! (the keys section of a format-3 record), so it always matches the state it is saved
//! with: a call whose effect a checkpoint holds is remembered by that checkpoint, and
//! the calls replayed after it rebuild the rest. Replay is deterministic because the
//! table depends on the call sequence alone (no clock): the last `max_keys` keyed calls
//! holding at most `max_bytes`, the oldest forgotten first.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use resurgam_shared::ipc::{Call, Outcome};
use resurgam_shared::protocol::ErrorKind;

/// What identifies a call's method and args for a key, without keeping the args.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Fingerprint {
    method_crc: u32,
    args_crc: u32,
    method_len: u32,
    args_len: u64,
}

impl Fingerprint {
    fn of(call: &Call) -> Fingerprint {
        Fingerprint {
            method_crc: crc32c::crc32c(call.method.as_bytes()),
            args_crc: crc32c::crc32c(&call.args),
            method_len: call.method.len() as u32,
            args_len: call.args.len() as u64,
        }
    }
}

/// One remembered keyed call, as the keys section stores it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Remembered {
    key: String,
    seq: u64,
    method: String,
    fingerprint: Fingerprint,
    outcome: Outcome,
}

impl Remembered {
    /// What it counts against `max_bytes`.
    fn cost(&self) -> u64 {
        let outcome = match &self.outcome {
            Outcome::Ok(v) => v.len(),
            Outcome::Err { message, .. } => message.len(),
        };
        (64 + self.key.len() + self.method.len() + outcome) as u64
    }
}

/// The keyed calls a worker remembers.
#[derive(Debug)]
pub struct KeyTable {
    max_keys: usize,
    max_bytes: u64,
    bytes: u64,
    /// Oldest first.
    order: VecDeque<Remembered>,
    /// Key → the seq of its entry in `order` (entries are in seq order).
    index: HashMap<String, u64>,
}

impl KeyTable {
    /// An empty table keeping at most `max_keys` keyed calls and `max_bytes` of them.
    pub fn new(max_keys: u64, max_bytes: u64) -> KeyTable {
        KeyTable {
            max_keys: usize::try_from(max_keys).unwrap_or(usize::MAX),
            max_bytes,
            bytes: 0,
            order: VecDeque::new(),
            index: HashMap::new(),
        }
    }

    /// The table a checkpoint's keys section holds, cut down to the limits (they may
    /// have been lowered since it was written). An empty section is an empty table.
    pub fn decode(bytes: &[u8], max_keys: u64, max_bytes: u64) -> Result<KeyTable, String> {
        let mut table = KeyTable::new(max_keys, max_bytes);
        if bytes.is_empty() {
            return Ok(table);
        }
        let entries: Vec<Remembered> = postcard::from_bytes(bytes)
            .map_err(|e| format!("the checkpoint's idempotency keys cannot be decoded: {e}"))?;
        for e in entries {
            if table.index.contains_key(&e.key)
                || table.order.back().is_some_and(|last| last.seq >= e.seq)
            {
                return Err(format!(
                    "the checkpoint's idempotency keys are not in call order (key {:?}, seq {})",
                    e.key, e.seq
                ));
            }
            table.insert(e);
        }
        Ok(table)
    }

    /// The keys section of a checkpoint (empty when no key is remembered).
    pub fn encode(&self) -> Result<Vec<u8>, String> {
        if self.order.is_empty() {
            return Ok(Vec::new());
        }
        let (a, b) = self.order.as_slices();
        let all: Vec<&Remembered> = a.iter().chain(b).collect();
        postcard::to_allocvec(&all).map_err(|e| format!("encode the idempotency keys: {e}"))
    }

    /// Whether keys are kept at all (`idempotency_keys` above 0).
    pub fn enabled(&self) -> bool {
        self.max_keys > 0 && self.max_bytes > 0
    }

    /// Whether `call` carries a key this table remembers.
    pub fn knows(&self, call: &Call) -> bool {
        call.key
            .as_ref()
            .is_some_and(|k| self.index.contains_key(k))
    }

    /// The answer to `call` if its key is remembered: the first call's outcome when
    /// method and args are the same, else a `BadRequest` (and nothing runs either way).
    pub fn answer(&self, call: &Call) -> Option<Outcome> {
        let key = call.key.as_ref()?;
        let seq = *self.index.get(key)?;
        let first = self.entry(seq)?;
        if first.method == call.method && first.fingerprint == Fingerprint::of(call) {
            return Some(first.outcome.clone());
        }
        Some(Outcome::Err {
            kind: ErrorKind::BadRequest,
            message: format!(
                "idempotency key {key:?} was first used by call {} (method {:?}) with other \
                 method or args; this call was not run",
                first.seq, first.method
            ),
        })
    }

    /// Remembers the outcome of a keyed call that ran (a call without a key, or with
    /// keys disabled, is ignored), forgetting the oldest keys past the limits.
    pub fn remember(&mut self, call: &Call, outcome: &Outcome) {
        let Some(key) = &call.key else { return };
        if !self.enabled() || self.index.contains_key(key) {
            return;
        }
        self.insert(Remembered {
            key: key.clone(),
            seq: call.seq,
            method: call.method.clone(),
            fingerprint: Fingerprint::of(call),
            outcome: outcome.clone(),
        });
    }

    /// How many keys are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }

    fn insert(&mut self, e: Remembered) {
        self.bytes += e.cost();
        self.index.insert(e.key.clone(), e.seq);
        self.order.push_back(e);
        while self.order.len() > self.max_keys || self.bytes > self.max_bytes {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
            self.index.remove(&old.key);
        }
    }

    fn entry(&self, seq: u64) -> Option<&Remembered> {
        let i = self.order.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.order.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64, key: Option<&str>, args: &str) -> Call {
        Call {
            seq,
            method: "incr".into(),
            args: args.as_bytes().to_vec(),
            key: key.map(String::from),
        }
    }

    fn ok(v: &str) -> Outcome {
        Outcome::Ok(v.as_bytes().to_vec())
    }

    #[test]
    fn a_repeated_key_gets_the_first_outcome_and_other_args_a_bad_request() {
        let mut t = KeyTable::new(10, 1 << 20);
        let first = call(1, Some("k"), "1");
        assert_eq!(t.answer(&first), None);
        t.remember(&first, &ok("5"));
        assert!(t.knows(&call(9, Some("k"), "1")));
        assert_eq!(t.answer(&call(9, Some("k"), "1")), Some(ok("5")));
        match t.answer(&call(9, Some("k"), "2")) {
            Some(Outcome::Err { kind, message }) => {
                assert_eq!(kind, ErrorKind::BadRequest);
                assert!(message.contains("call 1"), "{message}");
            }
            other => panic!("{other:?}"),
        }
        let mut other_method = call(9, Some("k"), "1");
        other_method.method = "get".into();
        assert!(matches!(t.answer(&other_method), Some(Outcome::Err { .. })));
        // Unkeyed calls and other keys are not answered.
        assert_eq!(t.answer(&call(10, None, "1")), None);
        assert_eq!(t.answer(&call(10, Some("j"), "1")), None);
        // An error outcome is remembered like any other.
        let failed = Outcome::Err {
            kind: ErrorKind::ActorError,
            message: "no".into(),
        };
        t.remember(&call(11, Some("e"), "1"), &failed);
        assert_eq!(t.answer(&call(12, Some("e"), "1")), Some(failed));
    }

    #[test]
    fn the_oldest_keys_are_forgotten_past_either_limit() {
        let mut t = KeyTable::new(2, 1 << 20);
        for (seq, k) in [(1, "a"), (2, "b"), (3, "c")] {
            t.remember(&call(seq, Some(k), "1"), &ok("1"));
        }
        assert_eq!(t.len(), 2);
        assert!(!t.knows(&call(4, Some("a"), "1")));
        assert!(t.knows(&call(4, Some("b"), "1")) && t.knows(&call(4, Some("c"), "1")));

        let mut t = KeyTable::new(100, 300);
        let big = "x".repeat(150);
        t.remember(&call(1, Some("a"), "1"), &ok(&big));
        t.remember(&call(2, Some("b"), "1"), &ok(&big));
        assert_eq!(t.len(), 1, "the byte limit forgets the oldest");
        assert!(t.knows(&call(3, Some("b"), "1")));

        let mut t = KeyTable::new(0, 1 << 20);
        assert!(!t.enabled());
        t.remember(&call(1, Some("a"), "1"), &ok("1"));
        assert_eq!(t.len(), 0);
    }

    #[test]
    fn the_keys_section_round_trips_and_is_cut_to_lower_limits() {
        let mut t = KeyTable::new(10, 1 << 20);
        for seq in 1..=5 {
            t.remember(
                &call(seq, Some(&format!("k{seq}")), "1"),
                &ok(&seq.to_string()),
            );
        }
        let bytes = t.encode().unwrap();
        let back = KeyTable::decode(&bytes, 10, 1 << 20).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.answer(&call(9, Some("k3"), "1")), Some(ok("3")));
        let cut = KeyTable::decode(&bytes, 2, 1 << 20).unwrap();
        assert_eq!(cut.len(), 2);
        assert!(cut.knows(&call(9, Some("k5"), "1")) && !cut.knows(&call(9, Some("k3"), "1")));
        assert!(KeyTable::new(10, 10).encode().unwrap().is_empty());
        assert_eq!(KeyTable::decode(&[], 10, 10).unwrap().len(), 0);
    }

    #[test]
    fn a_damaged_keys_section_is_an_error_not_a_table() {
        let mut t = KeyTable::new(10, 1 << 20);
        t.remember(&call(2, Some("a"), "1"), &ok("1"));
        t.remember(&call(3, Some("b"), "1"), &ok("1"));
        let bytes = t.encode().unwrap();
        assert!(KeyTable::decode(&bytes[..bytes.len() - 1], 10, 1 << 20).is_err());
        assert!(KeyTable::decode(&[0xff; 16], 10, 1 << 20).is_err());
        // Entries out of call order (or a key twice) are refused.
        let mut swapped: Vec<Remembered> = t.order.iter().cloned().collect();
        swapped.reverse();
        let bytes = postcard::to_allocvec(&swapped).unwrap();
        let e = KeyTable::decode(&bytes, 10, 1 << 20).unwrap_err();
        assert!(e.contains("call order"), "{e}");
    }
}
