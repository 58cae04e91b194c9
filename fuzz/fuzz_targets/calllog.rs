//! Call-log segments: `decode_segment` on bytes, and `recover` of a log directory whose
//! segments are cut from the input.
//!
//! Input: a control byte (its low 2 bits: how many segment files, 0 = bytes only), then
//! one u16 split point per extra segment, then the segment bytes.
//!
//! Asserts: no panic, no unbounded allocation; the good records re-encode to exactly
//! the bytes they were read from, and reading stops where it says; tombstone args and
//! segment names that parse encode back to the same value; `recover` returns records in
//! strictly increasing seq order, each read from a segment, within the first and last
//! seq it reports, and accounts for every segment file.
#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use resurgam_shared::calllog::{
    CANCEL_METHOD, Stop, decode_segment, encode_call_into, encode_cancel_args, parse_cancel_args,
    parse_segment_name, recover, segment_name,
};

#[global_allocator]
static ALLOC: resurgam_fuzz::Bounded = resurgam_fuzz::Bounded;

fn check_segment(bytes: &[u8]) -> Vec<(u64, String, Vec<u8>)> {
    let (records, good_len, stop) = decode_segment(bytes);
    let good_len = usize::try_from(good_len).unwrap();
    assert!(good_len <= bytes.len());
    let mut again = Vec::new();
    for r in &records {
        encode_call_into(&mut again, r.seq, &r.method, r.key.as_deref(), &r.args);
    }
    assert_eq!(
        again,
        &bytes[..good_len],
        "records do not re-encode to their bytes"
    );
    match &stop {
        None => assert_eq!(good_len, bytes.len()),
        Some(Stop::TornTail { offset }) | Some(Stop::Corrupt { offset, .. }) => {
            assert_eq!(*offset as usize, good_len);
            assert!(good_len < bytes.len());
            let _ = stop.as_ref().map(ToString::to_string);
        }
    }
    records
        .into_iter()
        .map(|r| (r.seq, r.method, r.args))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let files = usize::from(ctl & 3);

    // Pieces of the input that other parsers of the log read.
    if let Some(seqs) = parse_cancel_args(rest) {
        assert_eq!(parse_cancel_args(&encode_cancel_args(&seqs)), Some(seqs));
    }
    if let Ok(name) = std::str::from_utf8(rest)
        && let Some(first) = parse_segment_name(name)
    {
        assert_eq!(segment_name(first), name);
    }

    if files == 0 {
        check_segment(rest);
        return;
    }
    let (splits, mut bytes) = rest.split_at(rest.len().min(2 * (files - 1)));
    let mut segments = Vec::new();
    for s in splits.chunks(2) {
        let at = match s {
            [lo, hi] => usize::from(u16::from_le_bytes([*lo, *hi])) % (bytes.len() + 1),
            _ => bytes.len(),
        };
        let (seg, tail) = bytes.split_at(at);
        segments.push(seg);
        bytes = tail;
    }
    segments.push(bytes);

    let dir = resurgam_fuzz::scratch_dir().join("actor.log");
    if dir.is_dir() {
        resurgam_fuzz::empty_dir(&dir);
    } else {
        fs::create_dir_all(&dir).unwrap();
    }
    let mut read = Vec::new();
    let mut first_seq = 0u64;
    let mut written = 0;
    for seg in &segments {
        let records = check_segment(seg);
        // Named after the first record, as the supervisor names them (in order).
        if let Some((seq, ..)) = records.first() {
            first_seq = first_seq.max(*seq);
        }
        let path = dir.join(segment_name(first_seq));
        if path.exists() {
            continue;
        }
        fs::write(&path, seg).unwrap();
        written += 1;
        read.extend(records);
        first_seq += 1;
    }

    let r = recover(&dir);
    assert_eq!(
        r.segments.len() + r.unread.len(),
        written,
        "a segment unaccounted for"
    );
    if !r.stopped_early {
        assert_eq!(r.segments.len(), written, "a segment was left out");
    }
    let mut prev = None;
    for rec in &r.records {
        assert!(prev.is_none_or(|p| p < rec.seq), "records out of order");
        prev = Some(rec.seq);
        assert_ne!(rec.method, CANCEL_METHOD, "a tombstone among the records");
        assert!(
            read.iter()
                .any(|(s, m, a)| *s == rec.seq && *m == rec.method && *a == rec.args),
            "a record that no segment holds"
        );
        assert!(r.first_seq.is_some_and(|f| f <= rec.seq));
        assert!(r.last_seq.is_some_and(|l| l >= rec.seq));
    }
    for p in &r.problems {
        assert!(!p.is_empty());
    }
});
