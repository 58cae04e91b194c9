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

/// Why a checkpoint's keys section is not a table: each names the record (its index,
/// oldest first, and its byte offset in the section) where decoding stopped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeysError {
    /// Fewer than the 4 bytes of a record's length are left.
    #[error("the checkpoint's idempotency keys: record {record}, at byte {at}, is cut short")]
    LengthCutShort { record: usize, at: usize },
    /// The record's length runs past the end of the section.
    #[error(
        "the checkpoint's idempotency keys: record {record} of {len} bytes, at byte {at}, is cut short"
    )]
    BodyCutShort {
        record: usize,
        at: usize,
        len: usize,
    },
    #[error(
        "the checkpoint's idempotency keys: record {record}, at byte {at}, cannot be decoded: {error}"
    )]
    Undecodable {
        record: usize,
        at: usize,
        error: postcard::Error,
    },
    /// A key twice, or a record whose call is not after the one before it.
    #[error(
        "the checkpoint's idempotency keys: record {record} is not in call order (key {key:?}, seq {seq})"
    )]
    OutOfOrder {
        record: usize,
        key: String,
        seq: u64,
    },
    /// A record of a call after the checkpoint's last one.
    #[error(
        "the checkpoint's idempotency keys: record {record}, key {key:?}, names call seq {seq}, \
         after the checkpoint's last call ({last_seq})"
    )]
    AfterCheckpoint {
        record: usize,
        key: String,
        seq: u64,
        last_seq: u64,
    },
}

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
    /// What it counts against `keep_bytes`.
    fn cost(&self) -> u64 {
        cost(&self.key, &self.method, &self.outcome)
    }
}

/// [`Remembered`] borrowed from the call it remembers: encodes the same.
#[derive(Serialize)]
struct RememberedRef<'a> {
    key: &'a str,
    seq: u64,
    method: &'a str,
    fingerprint: Fingerprint,
    outcome: &'a Outcome,
}

/// What a remembered call counts against `keep_bytes`.
fn cost(key: &str, method: &str, outcome: &Outcome) -> u64 {
    let outcome = match outcome {
        Outcome::Ok(v) => v.len(),
        Outcome::Err { message, .. } => message.len(),
    };
    (64 + key.len() + method.len() + outcome) as u64
}

/// Where one remembered call's record lies in [`KeyTable::records`].
#[derive(Debug)]
struct Slot {
    seq: u64,
    key: String,
    /// Offset of the record's length prefix, counted from the first record ever kept.
    start: u64,
    /// The record's length, prefix included.
    len: usize,
    cost: u64,
}

/// The keyed calls a worker remembers.
///
/// The table is kept as its checkpoint section: `records` holds one record per
/// remembered call, oldest first, each `length (u32 LE) ‖ postcard(Remembered)`, so a
/// checkpoint copies it as it is instead of encoding thousands of entries each time; a
/// record is decoded only when its key comes again.
#[derive(Debug, Default)]
pub struct KeyTable {
    records: VecDeque<u8>,
    /// Bytes of records forgotten so far (the offset of `records[0]`).
    base: u64,
    /// One per record, oldest first (so in seq order).
    slots: VecDeque<Slot>,
    /// Key → the seq of its slot.
    index: HashMap<String, u64>,
    /// What the remembered calls count against `keep_bytes`.
    bytes: u64,
    /// A buffer for encoding a record, reused.
    scratch: Vec<u8>,
}

impl KeyTable {
    /// The table a checkpoint's keys section holds, as it was written (an empty
    /// section is an empty table). `last_seq` is the checkpoint's: a record of a later
    /// call is refused (the calls replayed after it would come out of order).
    pub fn decode(section: &[u8], last_seq: u64) -> Result<KeyTable, KeysError> {
        let mut table = KeyTable::default();
        let mut at = 0usize;
        let mut record = 0usize;
        while at < section.len() {
            let len = section
                .get(at..at + 4)
                .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
                .ok_or(KeysError::LengthCutShort { record, at })?;
            let body = section
                .get(at + 4..at + 4 + len)
                .ok_or(KeysError::BodyCutShort { record, at, len })?;
            let e: Remembered = postcard::from_bytes(body)
                .map_err(|error| KeysError::Undecodable { record, at, error })?;
            if table.index.contains_key(&e.key)
                || table.slots.back().is_some_and(|last| last.seq >= e.seq)
            {
                return Err(KeysError::OutOfOrder {
                    record,
                    key: e.key,
                    seq: e.seq,
                });
            }
            if e.seq > last_seq {
                return Err(KeysError::AfterCheckpoint {
                    record,
                    key: e.key,
                    seq: e.seq,
                    last_seq,
                });
            }
            table.add_slot(&e.key, e.seq, e.cost(), at as u64, 4 + len);
            at += 4 + len;
            record += 1;
        }
        table.records = section.to_vec().into();
        Ok(table)
    }

    /// The keys section of a checkpoint (empty when no key is remembered).
    pub fn section(&mut self) -> &[u8] {
        self.records.make_contiguous()
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
        let first = self.record(seq)?;
        if first.method == call.method && first.fingerprint == Fingerprint::of(call) {
            return Some(first.outcome);
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
        let e = RememberedRef {
            key,
            seq: call.seq,
            method: &call.method,
            fingerprint: Fingerprint::of(call),
            outcome,
        };
        // Encoding a value of these types into memory cannot fail.
        let mut body = std::mem::take(&mut self.scratch);
        body.clear();
        let Ok(body) = postcard::to_extend(&e, body) else {
            return;
        };
        let start = self.base + self.records.len() as u64;
        self.records.extend((body.len() as u32).to_le_bytes());
        self.records.extend(body.iter());
        self.add_slot(
            key,
            call.seq,
            cost(key, &call.method, outcome),
            start,
            4 + body.len(),
        );
        self.scratch = body;
        let keep_calls = usize::try_from(*keep_calls).unwrap_or(usize::MAX);
        while self.slots.len() > keep_calls || self.bytes > u64::from(*keep_bytes) {
            let Some(old) = self.slots.pop_front() else {
                break;
            };
            self.records.drain(..old.len);
            self.base += old.len as u64;
            self.bytes -= old.cost;
            self.index.remove(&old.key);
        }
    }

    /// Adds the slot of the call `key` at `seq`, whose record is `len` bytes at `start`.
    fn add_slot(&mut self, key: &str, seq: u64, cost: u64, start: u64, len: usize) {
        self.bytes += cost;
        self.index.insert(key.to_string(), seq);
        self.slots.push_back(Slot {
            seq,
            key: key.to_string(),
            start,
            len,
            cost,
        });
    }

    /// The remembered call of `seq`, decoded from its record.
    fn record(&self, seq: u64) -> Option<Remembered> {
        let i = self.slots.binary_search_by_key(&seq, |s| s.seq).ok()?;
        let slot = self.slots.get(i)?;
        let from = usize::try_from(slot.start - self.base).ok()? + 4;
        let body: Vec<u8> = self
            .records
            .range(from..from + slot.len - 4)
            .copied()
            .collect();
        postcard::from_bytes(&body).ok()
    }

    /// How many keys are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.slots.len()
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
        let bytes = t.section().to_vec();
        let back = KeyTable::decode(&bytes, 5).unwrap();
        assert_eq!(back.len(), 5);
        assert_eq!(back.bytes, t.bytes);
        assert_eq!(back.answer(&call(9, Some("k3"), "1")), Some(ok("3")));
        assert!(KeyTable::default().section().is_empty());
        assert_eq!(KeyTable::decode(&[], 0).unwrap().len(), 0);
    }

    #[test]
    fn a_table_decoded_from_its_section_goes_on_like_the_original() {
        let mut a = KeyTable::default();
        for seq in 1..=6 {
            a.remember(
                &kept(seq, Some(&format!("k{seq}")), "1", 3, 1 << 20),
                &ok("7"),
            );
        }
        assert_eq!(a.len(), 3, "three were forgotten, from the front");
        let mut b = KeyTable::decode(a.section(), 6).unwrap();
        for t in [&mut a, &mut b] {
            assert_eq!(t.answer(&call(9, Some("k5"), "1")), Some(ok("7")));
            assert!(!t.knows(&call(9, Some("k2"), "1")));
            for seq in 7..=8 {
                t.remember(
                    &kept(seq, Some(&format!("k{seq}")), "1", 3, 1 << 20),
                    &ok("8"),
                );
            }
            assert_eq!(t.answer(&call(9, Some("k6"), "1")), Some(ok("7")));
            assert_eq!(t.answer(&call(9, Some("k8"), "1")), Some(ok("8")));
        }
        assert_eq!(a.section(), b.section());
        assert_eq!(a.bytes, b.bytes);
    }

    #[test]
    fn a_damaged_keys_section_is_an_error_not_a_table() {
        let mut t = KeyTable::default();
        t.remember(&call(2, Some("a"), "1"), &ok("1"));
        t.remember(&call(3, Some("b"), "1"), &ok("1"));
        let bytes = t.section().to_vec();
        assert!(KeyTable::decode(&bytes[..bytes.len() - 1], 3).is_err());
        assert!(KeyTable::decode(&[0xff; 16], 3).is_err());
        // Too few bytes left for the second record's length.
        let first = 4 + u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
        let e = KeyTable::decode(&bytes[..first + 2], 3).unwrap_err();
        assert_eq!(
            e,
            KeysError::LengthCutShort {
                record: 1,
                at: first
            }
        );
        assert!(e.to_string().contains("record 1"), "{e}");
        // A length that fits, over bytes that are no record.
        let mut garbage = 8u32.to_le_bytes().to_vec();
        garbage.extend([0xff; 8]);
        let e = KeyTable::decode(&garbage, 3).unwrap_err();
        assert!(
            matches!(
                e,
                KeysError::Undecodable {
                    record: 0,
                    at: 0,
                    ..
                }
            ),
            "{e:?}"
        );
        // Entries out of call order (or a key twice) are refused.
        let mut swapped = Vec::new();
        for seq in [3, 2] {
            let e = t.record(seq).unwrap();
            let body = postcard::to_allocvec(&e).unwrap();
            swapped.extend((body.len() as u32).to_le_bytes());
            swapped.extend(body);
        }
        let e = KeyTable::decode(&swapped, 3).unwrap_err();
        assert!(
            matches!(e, KeysError::OutOfOrder { record: 1, .. }),
            "{e:?}"
        );
        assert!(e.to_string().contains("call order"), "{e}");
        // A record of a call after the checkpoint's last one cannot be in it: taken in,
        // the calls replayed after it would be out of order, and a retry of their keys
        // would not be found (it would run twice).
        assert!(KeyTable::decode(&bytes, 3).is_ok());
        let e = KeyTable::decode(&bytes, 2).unwrap_err();
        assert!(
            matches!(e, KeysError::AfterCheckpoint { record: 1, .. }),
            "{e:?}"
        );
        let e = e.to_string();
        assert!(e.contains("seq 3") && e.contains("(2)"), "{e}");
    }
}
