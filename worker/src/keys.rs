//! Idempotency keys (G10): the keyed calls a worker remembers, with their first replies.
//!
//! A call may carry a client's key. The first call with a key runs; a later call with
//! the same key (a retry after a lost connection, a timeout, a restart) is answered
//! with the first call's reply and does not run. The table is part of every checkpoint
//! (the keys section of a format-3 record), so it always matches the state it is saved
//! with: a call whose effect a checkpoint holds is remembered by that checkpoint, and
//! the calls replayed after it rebuild the rest. Replay is deterministic because the
//! table depends on the call sequence alone (no clock, no config): each keyed call
//! carries the retention it was accepted with ([`CallKey`]), and remembering it
//! forgets the oldest keys until the table holds at most that many calls and bytes.

use std::collections::{HashMap, VecDeque};

use serde::{Deserialize, Serialize};

use resurgam_shared::ipc::{Call, CallKey, Outcome};
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
#[derive(Debug, Default)]
pub struct KeyTable {
    bytes: u64,
    /// Oldest first.
    order: VecDeque<Remembered>,
    /// Key → the seq of its entry in `order` (entries are in seq order).
    index: HashMap<String, u64>,
}

impl KeyTable {
    /// The table a checkpoint's keys section holds, as it was written (an empty
    /// section is an empty table).
    pub fn decode(bytes: &[u8]) -> Result<KeyTable, String> {
        let mut table = KeyTable::default();
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
            table.bytes += e.cost();
            table.index.insert(e.key.clone(), e.seq);
            table.order.push_back(e);
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

    /// Whether `call` carries a key this table remembers.
    pub fn knows(&self, call: &Call) -> bool {
        call.key
            .as_ref()
            .is_some_and(|k| self.index.contains_key(&k.key))
    }

    /// The answer to `call` if its key is remembered: the first call's outcome when
    /// method and args are the same, else a `BadRequest` (and nothing runs either way).
    pub fn answer(&self, call: &Call) -> Option<Outcome> {
        let key = &call.key.as_ref()?.key;
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

    /// Remembers the outcome of a keyed call that ran (a call without a key is
    /// ignored), then forgets the oldest keys past the call's retention (so a call
    /// accepted with `keep_calls` 0 is not remembered, nor one larger than `keep_bytes`).
    pub fn remember(&mut self, call: &Call, outcome: &Outcome) {
        let Some(CallKey {
            key,
            keep_calls,
            keep_bytes,
        }) = &call.key
        else {
            return;
        };
        if self.index.contains_key(key) {
            return;
        }
        let e = Remembered {
            key: key.clone(),
            seq: call.seq,
            method: call.method.clone(),
            fingerprint: Fingerprint::of(call),
            outcome: outcome.clone(),
        };
        self.bytes += e.cost();
        self.index.insert(e.key.clone(), e.seq);
        self.order.push_back(e);
        let keep_calls = usize::try_from(*keep_calls).unwrap_or(usize::MAX);
        while self.order.len() > keep_calls || self.bytes > u64::from(*keep_bytes) {
            let Some(old) = self.order.pop_front() else {
                break;
            };
            self.bytes -= old.cost();
            self.index.remove(&old.key);
        }
    }

    /// How many keys are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.order.len()
    }

    fn entry(&self, seq: u64) -> Option<&Remembered> {
        let i = self.order.binary_search_by_key(&seq, |e| e.seq).ok()?;
        self.order.get(i)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A call keyed `key` accepted with a retention of 10 calls and 1 MiB.
    fn call(seq: u64, key: Option<&str>, args: &str) -> Call {
        kept(seq, key, args, 10, 1 << 20)
    }

    fn kept(seq: u64, key: Option<&str>, args: &str, keep_calls: u32, keep_bytes: u32) -> Call {
        Call {
            seq,
            method: "incr".into(),
            args: args.as_bytes().to_vec(),
            key: key.map(|k| CallKey {
                key: k.into(),
                keep_calls,
                keep_bytes,
            }),
        }
    }

    fn ok(v: &str) -> Outcome {
        Outcome::Ok(v.as_bytes().to_vec())
    }

    #[test]
    fn a_repeated_key_gets_the_first_outcome_and_other_args_a_bad_request() {
        let mut t = KeyTable::default();
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
    fn each_call_forgets_the_oldest_keys_past_its_own_retention() {
        let mut t = KeyTable::default();
        for (seq, k) in [(1, "a"), (2, "b"), (3, "c")] {
            t.remember(&kept(seq, Some(k), "1", 2, 1 << 20), &ok("1"));
        }
        assert_eq!(t.len(), 2);
        assert!(!t.knows(&call(4, Some("a"), "1")));
        assert!(t.knows(&call(4, Some("b"), "1")) && t.knows(&call(4, Some("c"), "1")));
        // A later call with a larger retention forgets nothing more…
        t.remember(&kept(4, Some("d"), "1", 10, 1 << 20), &ok("1"));
        assert_eq!(t.len(), 3);
        // …one with a smaller one forgets down to it.
        t.remember(&kept(5, Some("e"), "1", 1, 1 << 20), &ok("1"));
        assert_eq!(t.len(), 1);
        assert!(t.knows(&call(6, Some("e"), "1")));

        let mut t = KeyTable::default();
        let big = "x".repeat(150);
        t.remember(&kept(1, Some("a"), "1", 100, 300), &ok(&big));
        t.remember(&kept(2, Some("b"), "1", 100, 300), &ok(&big));
        assert_eq!(t.len(), 1, "the byte limit forgets the oldest");
        assert!(t.knows(&call(3, Some("b"), "1")));
        // A reply larger than the byte limit on its own is not remembered.
        t.remember(&kept(3, Some("c"), "1", 100, 100), &ok(&big));
        assert_eq!(t.len(), 0);

        let mut t = KeyTable::default();
        t.remember(&kept(1, Some("a"), "1", 0, 1 << 20), &ok("1"));
        assert_eq!(
            t.len(),
            0,
            "a call accepted with keep_calls 0 is not remembered"
        );
    }

    #[test]
    fn the_keys_section_round_trips() {
        let mut t = KeyTable::default();
        for seq in 1..=5 {
            t.remember(
                &call(seq, Some(&format!("k{seq}")), "1"),
                &ok(&seq.to_string()),
            );
        }
        let bytes = t.encode().unwrap();
        let back = KeyTable::decode(&bytes).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.bytes, t.bytes);
        assert_eq!(back.answer(&call(9, Some("k3"), "1")), Some(ok("3")));
        assert!(KeyTable::default().encode().unwrap().is_empty());
        assert_eq!(KeyTable::decode(&[]).unwrap().len(), 0);
    }

    #[test]
    fn a_damaged_keys_section_is_an_error_not_a_table() {
        let mut t = KeyTable::default();
        t.remember(&call(2, Some("a"), "1"), &ok("1"));
        t.remember(&call(3, Some("b"), "1"), &ok("1"));
        let bytes = t.encode().unwrap();
        assert!(KeyTable::decode(&bytes[..bytes.len() - 1]).is_err());
        assert!(KeyTable::decode(&[0xff; 16]).is_err());
        // Entries out of call order (or a key twice) are refused.
        let mut swapped: Vec<Remembered> = t.order.iter().cloned().collect();
        swapped.reverse();
        let bytes = postcard::to_allocvec(&swapped).unwrap();
        let e = KeyTable::decode(&bytes).unwrap_err();
        assert!(e.contains("call order"), "{e}");
    }
}
