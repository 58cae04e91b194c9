//! The durable call log's record format and segment reader.
//!
//! Each actor has a directory `<state_dir>/<actor>.log/` of append-only segments named
//! `<first seq, 20 digits>.seg`. A segment is a sequence of records:
//!
//! ```text
//! offset  size  field
//! 0       4     body length N (u32 LE)
//! 4       4     CRC32C of the body (u32 LE)
//! 8       N     body: seq (u64 LE), method length M (u16 LE), method (M bytes UTF-8),
//!               args (N - 10 - M bytes, raw JSON text)
//! ```
//!
//! Recovery reads segments in order and records in order. Within a segment, the first
//! record that does not verify ends the reading: if only zeros or a short record follow,
//! it is a torn tail (a crash mid-append; that call was never acknowledged); otherwise
//! it is corruption in the middle, reported loudly. Either way recovery stops at the last
//! good record rather than guessing: replaying calls after a lost one would apply them
//! to the wrong state.

use std::fmt;
use std::path::{Path, PathBuf};

/// The method of a tombstone: a record (with a seq of its own) that cancels earlier
/// records, listed in its args as comma-separated decimal seqs (calls refused after they
/// were logged: their actor went DEAD, or they were poison calls). No actor method can
/// start with a NUL byte.
pub const CANCEL_METHOD: &str = "\u{0}cancel";

/// The args of a tombstone cancelling `seqs`.
pub fn encode_cancel_args(seqs: &[u64]) -> Vec<u8> {
    seqs.iter()
        .map(u64::to_string)
        .collect::<Vec<_>>()
        .join(",")
        .into_bytes()
}

/// The seqs a tombstone cancels (`None` if its args are malformed).
pub fn parse_cancel_args(args: &[u8]) -> Option<Vec<u64>> {
    let text = std::str::from_utf8(args).ok()?;
    if text.is_empty() {
        return Some(Vec::new());
    }
    text.split(',').map(|s| s.parse().ok()).collect()
}

/// Bytes before a record's body.
pub const RECORD_HEADER: usize = 8;
/// Largest body accepted when reading (a bigger length field is corruption).
pub const MAX_BODY: usize = 128 << 20;

/// One logged call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogRecord {
    pub seq: u64,
    pub method: String,
    pub args: Vec<u8>,
}

/// Appends the encoding of one record to `out`.
pub fn encode_into(out: &mut Vec<u8>, seq: u64, method: &str, args: &[u8]) {
    let method = &method.as_bytes()[..method.len().min(u16::MAX as usize)];
    let body_len = 8 + 2 + method.len() + args.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(method.len() as u16).to_le_bytes());
    out.extend_from_slice(method);
    out.extend_from_slice(args);
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// A partial or zeroed record at the end: a crash mid-append.
    TornTail { offset: u64 },
    /// A record that fails its checksum (or is malformed) with data after it.
    Corrupt { offset: u64, reason: String },
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::TornTail { offset } => write!(
                f,
                "torn record at offset {offset} (crash mid-append; never acknowledged)"
            ),
            Stop::Corrupt { offset, reason } => {
                write!(f, "corrupt record at offset {offset}: {reason}")
            }
        }
    }
}

/// Decodes the records of one segment's bytes. Returns the good records, the offset
/// just after the last good one, and why it stopped early, if it did.
pub fn decode_segment(bytes: &[u8]) -> (Vec<LogRecord>, u64, Option<Stop>) {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < bytes.len() {
        match decode_one(&bytes[at..]) {
            Ok((rec, used)) => {
                records.push(rec);
                at += used;
            }
            Err(reason) => {
                let rest = &bytes[at..];
                let torn = rest.len() < RECORD_HEADER
                    || rest.iter().all(|&b| b == 0)
                    || declared_len(rest).is_some_and(|n| RECORD_HEADER + n > rest.len());
                let stop = if torn {
                    Stop::TornTail { offset: at as u64 }
                } else {
                    Stop::Corrupt {
                        offset: at as u64,
                        reason,
                    }
                };
                return (records, at as u64, Some(stop));
            }
        }
    }
    (records, at as u64, None)
}

fn declared_len(b: &[u8]) -> Option<usize> {
    let n = u32::from_le_bytes(b.get(0..4)?.try_into().ok()?) as usize;
    Some(n)
}

fn decode_one(b: &[u8]) -> Result<(LogRecord, usize), String> {
    let n = declared_len(b).ok_or("short header")?;
    if !(10..=MAX_BODY).contains(&n) {
        return Err(format!("impossible body length {n}"));
    }
    let body = b
        .get(RECORD_HEADER..RECORD_HEADER + n)
        .ok_or_else(|| format!("body of {n} bytes cut short"))?;
    let want = u32::from_le_bytes(b[4..8].try_into().map_err(|_| "short header")?);
    let got = crc32c::crc32c(body);
    if want != got {
        return Err(format!(
            "checksum mismatch (expected {want:#010x}, found {got:#010x})"
        ));
    }
    let seq = u64::from_le_bytes(body[0..8].try_into().map_err(|_| "short body")?);
    let m = u16::from_le_bytes(body[8..10].try_into().map_err(|_| "short body")?) as usize;
    let method = body
        .get(10..10 + m)
        .ok_or("method length beyond the body")?;
    let method = std::str::from_utf8(method)
        .map_err(|_| "method is not UTF-8")?
        .to_string();
    let args = body[10 + m..].to_vec();
    Ok((LogRecord { seq, method, args }, RECORD_HEADER + n))
}

/// The directory of an actor's log.
pub fn log_dir(state_dir: &Path, actor: &str) -> PathBuf {
    state_dir.join(format!("{actor}{}", crate::config::LOG_DIR_SUFFIX))
}

/// The file name of the segment whose first record has `first_seq`.
pub fn segment_name(first_seq: u64) -> String {
    format!("{first_seq:020}.seg")
}

/// Parses a segment file name back into its first seq.
pub fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(".seg")?;
    if digits.len() != 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// The segments of a log directory, sorted by first seq. A missing directory has none.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    let mut out = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        if let Some(first) = entry.file_name().to_str().and_then(parse_segment_name) {
            out.push((first, entry.path()));
        }
    }
    out.sort();
    Ok(out)
}

/// One segment as recovery found it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SegmentInfo {
    pub path: PathBuf,
    pub first_seq: u64,
    /// Seq of its last good record (`None` when it holds none).
    pub last_seq: Option<u64>,
    /// Bytes up to the end of its last good record.
    pub good_len: u64,
    /// Its size on disk.
    pub len: u64,
    /// Why reading it stopped early, if it did.
    pub stop: Option<Stop>,
}

/// What reading an actor's whole log found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every segment read, in order (the one recovery stopped in is the last).
    pub segments: Vec<SegmentInfo>,
    /// Segments after the one recovery stopped in (their records are not used).
    pub unread: Vec<PathBuf>,
    /// Good records, in order, with increasing seq (cancelled ones removed).
    pub records: Vec<LogRecord>,
    /// The smallest seq any record carried, cancelled ones included: every call after
    /// `first_seq - 1` was either recovered or cancelled.
    pub first_seq: Option<u64>,
    /// The largest seq any record carried, cancelled ones included.
    pub last_seq: Option<u64>,
    /// Seq of the last record read (tombstones included), for the order check.
    last_good: Option<u64>,
    /// Problems, each naming the file: torn tails, corruption, unreadable files.
    pub problems: Vec<String>,
    /// Set when recovery stopped before the end of the log (records after it are lost).
    pub stopped_early: bool,
}

/// Reads every segment of `dir` in order. Stops at the first corrupt record or at a torn
/// tail followed by more segments; a torn tail of the last segment is normal after a
/// crash.
pub fn recover(dir: &Path) -> Recovered {
    let mut r = Recovered::default();
    let segments = match list_segments(dir) {
        Ok(s) => s,
        Err(e) => {
            r.problems
                .push(format!("cannot list {}: {e}", dir.display()));
            r.stopped_early = true;
            return r;
        }
    };
    let count = segments.len();
    let mut segments = segments.into_iter().enumerate();
    while let Some((i, (first_seq, path))) = segments.next() {
        let bytes = match std::fs::read(&path) {
            Ok(b) => b,
            Err(e) => {
                r.problems
                    .push(format!("cannot read {}: {e}", path.display()));
                r.stopped_early = true;
                r.unread = std::iter::once(path)
                    .chain(segments.map(|(_, (_, p))| p))
                    .collect();
                return r;
            }
        };
        let (records, good_len, stop) = decode_segment(&bytes);
        let mut info = SegmentInfo {
            path: path.clone(),
            first_seq,
            last_seq: None,
            good_len,
            len: bytes.len() as u64,
            stop: stop.clone(),
        };
        for rec in records {
            r.first_seq = Some(r.first_seq.map_or(rec.seq, |f| f.min(rec.seq)));
            r.last_seq = Some(r.last_seq.map_or(rec.seq, |l| l.max(rec.seq)));
            if let Some(prev) = r.last_good
                && rec.seq <= prev
            {
                r.problems.push(format!(
                    "{}: record seq {} does not follow seq {prev}; stopping here",
                    path.display(),
                    rec.seq
                ));
                r.stopped_early = true;
                r.segments.push(info);
                r.unread = segments.map(|(_, (_, p))| p).collect();
                return r;
            }
            info.last_seq = Some(rec.seq);
            r.last_good = Some(rec.seq);
            if rec.method == CANCEL_METHOD {
                match parse_cancel_args(&rec.args) {
                    Some(seqs) => r.records.retain(|x| !seqs.contains(&x.seq)),
                    None => r.problems.push(format!(
                        "{}: tombstone seq {} has malformed args; ignored",
                        path.display(),
                        rec.seq
                    )),
                }
                continue;
            }
            r.records.push(rec);
        }
        r.segments.push(info);
        if let Some(stop) = stop {
            let is_last = i + 1 == count;
            r.problems.push(format!("{}: {stop}", path.display()));
            if !(is_last && matches!(stop, Stop::TornTail { .. })) {
                r.stopped_early = true;
                r.unread = segments.map(|(_, (_, p))| p).collect();
                return r;
            }
        }
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(records: &[(u64, &str, &str)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (s, m, a) in records {
            encode_into(&mut out, *s, m, a.as_bytes());
        }
        out
    }

    #[test]
    fn round_trip() {
        let b = seg(&[
            (1, "incr", "5"),
            (2, "put", r#"{"key":"a","value":1}"#),
            (3, "get", ""),
        ]);
        let (recs, end, stop) = decode_segment(&b);
        assert_eq!(stop, None);
        assert_eq!(end, b.len() as u64);
        assert_eq!(recs.len(), 3);
        assert_eq!(recs[1].method, "put");
        assert_eq!(recs[2].args, b"");
    }

    #[test]
    fn torn_tail_is_detected_at_every_cut() {
        let full = seg(&[(1, "incr", "1"), (2, "incr", "2")]);
        let first_len = seg(&[(1, "incr", "1")]).len();
        for cut in first_len + 1..full.len() {
            let (recs, end, stop) = decode_segment(&full[..cut]);
            assert_eq!(recs.len(), 1, "cut {cut}");
            assert_eq!(end, first_len as u64);
            assert!(
                matches!(stop, Some(Stop::TornTail { .. })),
                "cut {cut}: {stop:?}"
            );
        }
    }

    #[test]
    fn zeroed_tail_is_torn_not_corrupt() {
        let mut b = seg(&[(1, "incr", "1")]);
        b.extend_from_slice(&[0; 100]);
        let (recs, _, stop) = decode_segment(&b);
        assert_eq!(recs.len(), 1);
        assert!(matches!(stop, Some(Stop::TornTail { .. })));
    }

    #[test]
    fn bit_flip_in_the_middle_is_corruption_and_stops_there() {
        let mut b = seg(&[(1, "incr", "1"), (2, "incr", "2"), (3, "incr", "3")]);
        let second = seg(&[(1, "incr", "1")]).len();
        b[second + RECORD_HEADER + 9] ^= 0x40;
        let (recs, end, stop) = decode_segment(&b);
        assert_eq!(recs.len(), 1);
        assert_eq!(end, second as u64);
        assert!(matches!(stop, Some(Stop::Corrupt { .. })), "{stop:?}");
    }

    #[test]
    fn recover_reads_segments_in_order_and_stops_at_corruption() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(segment_name(1)),
            seg(&[(1, "a", "1"), (2, "a", "2")]),
        )
        .unwrap();
        let mut second = seg(&[(3, "a", "3"), (4, "a", "4")]);
        std::fs::write(dir.path().join(segment_name(3)), &second).unwrap();
        std::fs::write(dir.path().join("junk.txt"), b"ignored").unwrap();
        let r = recover(dir.path());
        assert_eq!(
            r.records.iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![1, 2, 3, 4]
        );
        assert!(r.problems.is_empty() && !r.stopped_early);

        // A torn tail in the last segment is normal.
        second.extend_from_slice(&[7, 0, 0]);
        std::fs::write(dir.path().join(segment_name(3)), &second).unwrap();
        let r = recover(dir.path());
        assert_eq!(r.records.len(), 4);
        assert!(!r.stopped_early);
        assert_eq!(r.problems.len(), 1);

        // Corruption in the first segment stops recovery before the second.
        let mut first = seg(&[(1, "a", "1"), (2, "a", "2")]);
        let l = first.len();
        first[l - 1] ^= 1;
        std::fs::write(dir.path().join(segment_name(1)), &first).unwrap();
        let r = recover(dir.path());
        assert_eq!(r.records.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![1]);
        assert!(r.stopped_early);
        assert!(r.problems[0].contains(&segment_name(1)), "{:?}", r.problems);
    }

    #[test]
    fn tombstones_cancel_earlier_records() {
        let dir = tempfile::tempdir().unwrap();
        let b = seg(&[
            (1, "a", "1"),
            (2, "a", "2"),
            (3, "a", "3"),
            (4, CANCEL_METHOD, "2"),
            (5, "a", "5"),
            (6, CANCEL_METHOD, "1,5"),
        ]);
        std::fs::write(dir.path().join(segment_name(1)), b).unwrap();
        let r = recover(dir.path());
        assert_eq!(r.records.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![3]);
        assert_eq!((r.first_seq, r.last_seq), (Some(1), Some(6)));
        assert_eq!(
            parse_cancel_args(&encode_cancel_args(&[7, 9])),
            Some(vec![7, 9])
        );
        assert_eq!(parse_cancel_args(b"7,x"), None);
        assert!(r.problems.is_empty());
    }

    #[test]
    fn segment_names() {
        assert_eq!(parse_segment_name(&segment_name(42)), Some(42));
        assert_eq!(parse_segment_name("42.seg"), None);
        assert_eq!(parse_segment_name("0000000000000000004x.seg"), None);
    }

    proptest::proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..512)) {
            let _ = decode_segment(&bytes);
        }

        #[test]
        fn flips_are_never_silent(flip in 0usize..200, bit in 0u8..8) {
            let b = seg(&[(1, "incr", "11"), (2, "put", "{\"key\":\"k\"}"), (3, "get", "")]);
            let mut c = b.clone();
            let i = flip % c.len();
            c[i] ^= 1 << bit;
            let (recs, _, _) = decode_segment(&c);
            let (orig, _, _) = decode_segment(&b);
            // Whatever decodes is a prefix of the original records.
            proptest::prop_assert!(recs.len() <= orig.len());
            proptest::prop_assert_eq!(&recs[..], &orig[..recs.len()]);
        }
    }
}
