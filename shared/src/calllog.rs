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
//! A call that carries an idempotency key (G10) has a *keyed* body instead: seq (u64 LE),
//! the marker `0xFFFF` (u16 LE, never a method length: methods are at most
//! [`crate::protocol::MAX_METHOD_LEN`] bytes), method length M (u16 LE), key length K
//! (u8), the retention the call was accepted with ([`CallKey`]: keep_calls and
//! keep_bytes, u32 LE each), the key (K bytes of printable ASCII), the method (M bytes),
//! then the args.
//!
//! Since format 2 every segment begins with an *owner record* (method [`OWNER_METHOD`],
//! the segment's first seq, args `<state dir id>/<actor>`): recovery given the expected
//! owner refuses a segment of another actor or state directory as damage, naming both.
//! Segments written before (no owner record) are still read.
//!
//! Recovery ([`recover`]) streams segments in order and records in order, one record in
//! memory at a time (a segment of any size costs a buffer, never its size), and is
//! linear in the log (tombstones are applied with a set at the end).
//!
//! What a crash can produce, and only that, is a *torn tail*: the last record of the last
//! segment cut short (a write that did not finish; that call was never acknowledged). It
//! is cut off. Everything else is *damage*, never mislabelled: a record that fails its
//! checksum, an impossible length, zeroed bytes, a short record with segments after it,
//! a segment whose records do not continue the seqs before it (a missing or swapped
//! segment), a symbolic link, a read error. Recovery never guesses past damage. When
//! the calls the damage may have held are all covered by the newest checkpoint
//! (`covered`), nothing acknowledged is lost and recovery continues with the next
//! segment; otherwise it stops there and [`Recovered::lost`] says why: acknowledged
//! calls may be gone, and the supervisor holds the actor DEAD with that reason. A log
//! that ends before the newest checkpoint's coverage has lost its end (every call a
//! checkpoint covers was logged first), and is reported the same way.

use std::collections::HashSet;
use std::ffi::OsString;
use std::fmt;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

use crate::ipc::CallKey;
use crate::safefs::Dir;

/// The method of a tombstone: a record (with a seq of its own) that cancels earlier
/// records, listed in its args as comma-separated decimal seqs (calls refused after they
/// were logged: their actor went DEAD, or they were poison calls). No actor method can
/// start with a NUL byte.
pub const CANCEL_METHOD: &str = "\u{0}cancel";

/// The method of an owner record: the first record of a segment, naming the actor and
/// state directory the segment belongs to (args `<state dir id>/<actor>`), with the
/// segment's first seq. Not a call: never replayed.
pub const OWNER_METHOD: &str = "\u{0}owner";

/// Whose a log is: the actor's name and the id of its state directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogOwner {
    pub actor: String,
    pub dir: String,
}

impl LogOwner {
    /// The args of its owner record.
    pub fn encode(&self) -> Vec<u8> {
        format!("{}/{}", self.dir, self.actor).into_bytes()
    }

    /// Parses the args of an owner record.
    pub fn parse(args: &[u8]) -> Option<LogOwner> {
        let (dir, actor) = std::str::from_utf8(args).ok()?.split_once('/')?;
        Some(LogOwner {
            actor: actor.to_string(),
            dir: dir.to_string(),
        })
    }
}

impl fmt::Display for LogOwner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor {:?} of state dir {}", self.actor, self.dir)
    }
}

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
    /// The call's idempotency key, if it carried one (boxed: most calls have none, and a
    /// recovery holds every record).
    pub key: Option<Box<CallKey>>,
}

/// The method-length value that marks a keyed body.
const KEYED: u16 = u16::MAX;
/// Bytes a keyed body has before its key, after the marker: method length, key length,
/// keep_calls, keep_bytes.
const KEYED_HEADER: usize = 2 + 1 + 4 + 4;

/// Appends the encoding of one record without a key to `out`.
pub fn encode_into(out: &mut Vec<u8>, seq: u64, method: &str, args: &[u8]) {
    encode_call_into(out, seq, method, None, args);
}

/// Appends the encoding of one record to `out`. A method longer than
/// [`crate::protocol::MAX_METHOD_LEN`] bytes or a key longer than 255 bytes is cut (the
/// protocol refuses both before anything is logged).
pub fn encode_call_into(
    out: &mut Vec<u8>,
    seq: u64,
    method: &str,
    key: Option<&CallKey>,
    args: &[u8],
) {
    let method = &method.as_bytes()[..method.len().min(crate::protocol::MAX_METHOD_LEN)];
    let key = key.map(|k| (k, &k.key.as_bytes()[..k.key.len().min(u8::MAX as usize)]));
    let key_len = key.map_or(0, |(_, k)| KEYED_HEADER + k.len());
    let body_len = 8 + 2 + key_len + method.len() + args.len();
    let start = out.len();
    out.extend_from_slice(&(body_len as u32).to_le_bytes());
    out.extend_from_slice(&[0; 4]);
    out.extend_from_slice(&seq.to_le_bytes());
    if let Some((k, key)) = key {
        out.extend_from_slice(&KEYED.to_le_bytes());
        out.extend_from_slice(&(method.len() as u16).to_le_bytes());
        out.push(key.len() as u8);
        out.extend_from_slice(&k.keep_calls.to_le_bytes());
        out.extend_from_slice(&k.keep_bytes.to_le_bytes());
        out.extend_from_slice(key);
    } else {
        out.extend_from_slice(&(method.len() as u16).to_le_bytes());
    }
    out.extend_from_slice(method);
    out.extend_from_slice(args);
    let crc = crc32c::crc32c(&out[start + RECORD_HEADER..]);
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Why reading a segment stopped before its end.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stop {
    /// The last record is cut short: a crash mid-append, if it is the last segment's.
    TornTail { offset: u64 },
    /// A record that is not one the supervisor wrote (or cannot be read).
    Corrupt { offset: u64, reason: String },
}

impl Stop {
    pub fn offset(&self) -> u64 {
        match self {
            Stop::TornTail { offset } | Stop::Corrupt { offset, .. } => *offset,
        }
    }
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

/// What [`SegmentReader::next`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    Record(LogRecord),
    End,
    Stop(Stop),
}

/// Reads one segment's records one at a time from `r` (of `len` bytes): memory is
/// bounded by the largest record ([`MAX_BODY`]), whatever the segment's size.
pub struct SegmentReader<R> {
    r: R,
    len: u64,
    at: u64,
    /// Offset of the last record returned (where damage found in it begins).
    start: u64,
    stopped: bool,
}

impl<R: Read> SegmentReader<R> {
    pub fn new(r: R, len: u64) -> Self {
        SegmentReader {
            r,
            len,
            at: 0,
            start: 0,
            stopped: false,
        }
    }

    /// The offset just after the last good record.
    pub fn offset(&self) -> u64 {
        self.at
    }

    /// The offset at which the last record returned begins.
    pub fn record_start(&self) -> u64 {
        self.start
    }

    fn stop(&mut self, stop: Stop) -> Next {
        self.stopped = true;
        Next::Stop(stop)
    }

    fn corrupt(&mut self, reason: String) -> Next {
        let offset = self.at;
        self.stop(Stop::Corrupt { offset, reason })
    }

    pub fn read_next(&mut self) -> Next {
        if self.stopped {
            return Next::End;
        }
        let remaining = self.len.saturating_sub(self.at);
        if remaining == 0 {
            self.stopped = true;
            return Next::End;
        }
        let offset = self.at;
        if remaining < RECORD_HEADER as u64 {
            return self.stop(Stop::TornTail { offset });
        }
        let mut head = [0u8; RECORD_HEADER];
        if let Err(e) = self.r.read_exact(&mut head) {
            return self.corrupt(format!("read error: {e}"));
        }
        if head == [0; RECORD_HEADER] {
            return self.corrupt("zeroed bytes where a record must start".to_string());
        }
        let n = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        if !(10..=MAX_BODY).contains(&n) {
            return self.corrupt(format!("impossible body length {n}"));
        }
        if (RECORD_HEADER + n) as u64 > remaining {
            return self.stop(Stop::TornTail { offset });
        }
        let mut body = Vec::new();
        if body.try_reserve_exact(n).is_err() {
            return self.corrupt(format!("cannot allocate a body of {n} bytes"));
        }
        body.resize(n, 0);
        if let Err(e) = self.r.read_exact(&mut body) {
            return self.corrupt(format!("read error: {e}"));
        }
        let want = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        let got = crc32c::crc32c(&body);
        if want != got {
            return self.corrupt(format!(
                "checksum mismatch (expected {want:#010x}, found {got:#010x})"
            ));
        }
        match decode_body(body) {
            Ok(rec) => {
                self.start = offset;
                self.at += (RECORD_HEADER + n) as u64;
                Next::Record(rec)
            }
            Err(reason) => self.corrupt(reason.to_string()),
        }
    }
}

fn decode_body(mut body: Vec<u8>) -> Result<LogRecord, &'static str> {
    let u16_at = |body: &[u8], at: usize| {
        body.get(at..at + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]))
            .ok_or("short body")
    };
    let seq = u64::from_le_bytes(
        body.get(0..8)
            .ok_or("short body")?
            .try_into()
            .map_err(|_| "short body")?,
    );
    let (m, key, start) = match u16_at(&body, 8)? {
        KEYED => {
            let m = u16_at(&body, 10)? as usize;
            if m > crate::protocol::MAX_METHOD_LEN {
                return Err("method length beyond the limit");
            }
            let k = *body.get(12).ok_or("short body")? as usize;
            let u32_at = |at: usize| {
                body.get(at..at + 4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .ok_or("short body")
            };
            let (keep_calls, keep_bytes) = (u32_at(13)?, u32_at(17)?);
            let start = 10 + KEYED_HEADER;
            let key = body
                .get(start..start + k)
                .ok_or("key length beyond the body")?;
            if key.is_empty() || key.iter().any(|b| !(b' '..=b'~').contains(b)) {
                return Err("key is not 1-255 printable ASCII characters");
            }
            let key = CallKey {
                key: String::from_utf8_lossy(key).into_owned(),
                keep_calls,
                keep_bytes,
            };
            (m, Some(Box::new(key)), start + k)
        }
        m => (m as usize, None, 10),
    };
    let method = body
        .get(start..start + m)
        .ok_or("method length beyond the body")?;
    let method = std::str::from_utf8(method)
        .map_err(|_| "method is not UTF-8")?
        .to_string();
    let args = body.split_off(start + m);
    Ok(LogRecord {
        seq,
        method,
        args,
        key,
    })
}

/// Decodes the records of one segment's bytes. Returns the good records, the offset
/// just after the last good one, and why it stopped early, if it did.
pub fn decode_segment(bytes: &[u8]) -> (Vec<LogRecord>, u64, Option<Stop>) {
    let mut reader = SegmentReader::new(bytes, bytes.len() as u64);
    let mut records = Vec::new();
    loop {
        match reader.read_next() {
            Next::Record(r) => records.push(r),
            Next::End => return (records, reader.offset(), None),
            Next::Stop(stop) => return (records, reader.offset(), Some(stop)),
        }
    }
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

/// The segments of a log directory, sorted by first seq. A missing directory has none;
/// a symbolic link in its place is an error.
pub fn list_segments(dir: &Path) -> std::io::Result<Vec<(u64, PathBuf)>> {
    match Dir::open(dir)? {
        None => Ok(Vec::new()),
        Some(d) => Ok(segments_of(&d)?
            .into_iter()
            .map(|(first, name)| (first, dir.join(name)))
            .collect()),
    }
}

/// The segment names in `dir`, sorted by first seq.
pub fn segments_of(dir: &Dir) -> std::io::Result<Vec<(u64, OsString)>> {
    let mut out: Vec<(u64, OsString)> = dir
        .names()?
        .into_iter()
        .filter_map(|n| Some((n.to_str().and_then(parse_segment_name)?, n)))
        .collect();
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
    /// Why reading it stopped early, if it did: a torn tail (last segment only) or
    /// damage (to quarantine).
    pub stop: Option<Stop>,
}

impl SegmentInfo {
    /// Damaged: its bytes from `good_len` on are not what the supervisor wrote.
    pub fn damaged(&self) -> bool {
        matches!(self.stop, Some(Stop::Corrupt { .. }))
    }
}

/// What reading an actor's whole log found.
#[derive(Debug, Default)]
pub struct Recovered {
    /// Every segment read, in order.
    pub segments: Vec<SegmentInfo>,
    /// Segments after the damage recovery stopped at (their records are not used).
    pub unread: Vec<PathBuf>,
    /// Good records, in order, with increasing seq (cancelled ones removed).
    pub records: Vec<LogRecord>,
    /// The smallest seq any record carried, cancelled ones included: every call after
    /// `first_seq - 1` was either recovered or cancelled.
    pub first_seq: Option<u64>,
    /// The largest seq any record carried, cancelled ones included.
    pub last_seq: Option<u64>,
    /// Problems, each naming the file: torn tails, damage, unreadable files.
    pub problems: Vec<String>,
    /// Set when recovery stopped before the end of the log (records after it are lost).
    pub stopped_early: bool,
    /// Why acknowledged calls may be lost, when they may be (the actor must not run on
    /// as if nothing happened).
    pub lost: Option<String>,
}

/// Damage seen and not yet bounded: calls from `from` on may be gone.
struct Gap {
    from: u64,
    why: String,
}

/// [`recover_covered`] with no checkpoint.
pub fn recover(dir: &Path) -> Recovered {
    recover_covered(dir, 0, None)
}

/// Reads every segment of the log in `dir` in order (see the module doc). `covered` is
/// the `last_seq` of the newest checkpoint on file: calls up to it are not needed. A
/// segment whose owner record names another owner than `owner` is damage.
pub fn recover_covered(dir: &Path, covered: u64, owner: Option<&LogOwner>) -> Recovered {
    let mut r = Recovered::default();
    let listed = Dir::open(dir).and_then(|d| match d {
        None => Ok(None),
        Some(d) => segments_of(&d).map(|s| Some((d, s))),
    });
    let (d, segments) = match listed {
        Ok(Some(x)) => x,
        Ok(None) => return r,
        Err(e) => {
            let why = format!("cannot list {}: {e}", dir.display());
            r.problems.push(why.clone());
            r.lost = Some(why);
            r.stopped_early = true;
            return r;
        }
    };
    let count = segments.len();
    let mut cancelled: HashSet<u64> = HashSet::new();
    // Seq of the last record read (tombstones included).
    let mut prev: Option<u64> = None;
    let mut gap: Option<Gap> = None;
    for (i, (first_seq, name)) in segments.iter().enumerate() {
        let path = dir.join(name);
        // Calls between the last good record and this segment's first are missing.
        let missing = match (gap.take(), prev) {
            (Some(g), _) => Some(g),
            (None, Some(p)) if *first_seq > p.saturating_add(1) => Some(Gap {
                from: p + 1,
                why: format!(
                    "{}: the log jumps from seq {p} to seq {first_seq}: segments are missing",
                    path.display()
                ),
            }),
            _ => None,
        };
        if let Some(g) = missing {
            let upto = first_seq.saturating_sub(1);
            if g.from <= upto && upto > covered {
                lose(&mut r, &g, Some(upto), covered);
                r.unread = segments[i..].iter().map(|(_, n)| dir.join(n)).collect();
                return r;
            }
            if g.from <= upto {
                r.problems.push(format!(
                    "{}; calls {}..={upto} are covered by the checkpoint (seq {covered}): \
                     nothing acknowledged is lost",
                    g.why, g.from
                ));
            }
        }
        let is_last = i + 1 == count;
        let mut info = SegmentInfo {
            path: path.clone(),
            first_seq: *first_seq,
            last_seq: None,
            good_len: 0,
            len: 0,
            stop: None,
        };
        let file = match d.open_file(name, nix::fcntl::OFlag::O_RDONLY) {
            Ok(Some(f)) => f,
            Ok(None) => {
                info.stop = Some(Stop::Corrupt {
                    offset: 0,
                    reason: "vanished while recovery read the log".into(),
                });
                gap = Some(Gap {
                    from: prev.map_or(*first_seq, |p| p + 1),
                    why: format!("{} vanished", path.display()),
                });
                r.segments.push(info);
                continue;
            }
            Err(e) => {
                r.problems.push(format!("{e}"));
                info.stop = Some(Stop::Corrupt {
                    offset: 0,
                    reason: e.to_string(),
                });
                gap = Some(Gap {
                    from: prev.map_or(*first_seq, |p| p + 1),
                    why: e.to_string(),
                });
                r.segments.push(info);
                continue;
            }
        };
        info.len = file.metadata().map_or(0, |m| m.len());
        let mut reader = SegmentReader::new(BufReader::with_capacity(1 << 16, file), info.len);
        let stop = loop {
            match reader.read_next() {
                Next::End => break None,
                Next::Stop(s) => break Some(s),
                Next::Record(rec) if rec.method == OWNER_METHOD => {
                    let start = reader.record_start() == 0;
                    let found = LogOwner::parse(&rec.args);
                    let problem = match (&found, owner) {
                        _ if !start || rec.seq != *first_seq => Some(format!(
                            "an owner record (seq {}) that does not begin the segment",
                            rec.seq
                        )),
                        (None, _) => Some("an owner record with malformed args".to_string()),
                        (Some(f), Some(want)) if f != want => Some(format!(
                            "the segment belongs to {f}, not to {want} (swapped, linked or \
                             copied from another log?)"
                        )),
                        _ => None,
                    };
                    if let Some(reason) = problem {
                        break Some(Stop::Corrupt {
                            offset: reader.record_start(),
                            reason,
                        });
                    }
                }
                Next::Record(rec) => {
                    let out_of_order = if info.last_seq.is_none() {
                        (rec.seq != *first_seq).then(|| {
                            format!(
                                "the segment named after seq {first_seq} begins with seq {} \
                                 (renamed, swapped or from another log)",
                                rec.seq
                            )
                        })
                    } else {
                        None
                    }
                    .or_else(|| {
                        prev.filter(|&p| rec.seq <= p)
                            .map(|p| format!("record seq {} does not follow seq {p}", rec.seq))
                    });
                    if let Some(reason) = out_of_order {
                        // The record read whole is not good: damage starts where it does.
                        break Some(Stop::Corrupt {
                            offset: reader.record_start(),
                            reason,
                        });
                    }
                    info.last_seq = Some(rec.seq);
                    prev = Some(rec.seq);
                    r.first_seq = Some(r.first_seq.map_or(rec.seq, |f| f.min(rec.seq)));
                    r.last_seq = Some(r.last_seq.map_or(rec.seq, |l| l.max(rec.seq)));
                    if rec.method == CANCEL_METHOD {
                        match parse_cancel_args(&rec.args) {
                            Some(seqs) => cancelled.extend(seqs),
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
            }
        };
        // The good length: a record refused for its place was read whole, but is not good.
        info.good_len = match &stop {
            Some(s) => s.offset(),
            None => reader.offset(),
        };
        let stop = match stop {
            Some(Stop::TornTail { offset }) if !is_last => Some(Stop::Corrupt {
                offset,
                reason: format!(
                    "record cut short ({} bytes left) with later segments after it",
                    info.len - offset
                ),
            }),
            s => s,
        };
        if let Some(s) = &stop {
            r.problems.push(format!("{}: {s}", path.display()));
            if let Stop::Corrupt { .. } = s {
                gap = Some(Gap {
                    from: prev.map_or(*first_seq, |p| p + 1),
                    why: format!("{}: {s}", path.display()),
                });
            }
        }
        info.stop = stop;
        r.segments.push(info);
    }
    if let Some(g) = gap {
        // Damage in the last segment: how many calls followed it is unknown.
        lose(&mut r, &g, None, covered);
    } else if let Some(p) = prev
        && p < covered
    {
        let why = format!(
            "{}: the log ends at seq {p}, before the newest checkpoint's seq {covered}: its \
             end is missing (every call a checkpoint covers was logged first)",
            dir.display()
        );
        r.problems.push(why.clone());
        r.lost = Some(why);
        r.stopped_early = true;
    }
    r.records.retain(|x| !cancelled.contains(&x.seq));
    r
}

/// Records that the calls of `gap` (up to `upto`, or all after it) cannot be recovered.
fn lose(r: &mut Recovered, gap: &Gap, upto: Option<u64>, covered: u64) {
    let from = gap.from.max(covered.saturating_add(1));
    let range = match upto {
        Some(u) => format!("calls {from}..={u}"),
        None => format!("calls from seq {from} on"),
    };
    r.lost = Some(format!(
        "{}; {range} may have been acknowledged and cannot be recovered",
        gap.why
    ));
    r.stopped_early = true;
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
    fn a_keyed_record_keeps_its_key_among_plain_ones() {
        let mut b = Vec::new();
        let key = CallKey {
            key: "retry-7 x".into(),
            keep_calls: 10_000,
            keep_bytes: 1 << 24,
        };
        encode_into(&mut b, 1, "incr", b"1");
        encode_call_into(&mut b, 2, "incr", Some(&key), b"2");
        encode_call_into(&mut b, 3, "get", None, b"");
        let (recs, end, stop) = decode_segment(&b);
        assert_eq!((stop, end), (None, b.len() as u64));
        let keys: Vec<_> = recs.iter().map(|r| r.key.as_deref()).collect();
        assert_eq!(keys, [None, Some(&key), None]);
        assert_eq!(
            (recs[1].method.as_str(), &recs[1].args[..]),
            ("incr", &b"2"[..])
        );
        // Each record's span, as the reader places it, and together they are the segment.
        let mut reader = SegmentReader::new(&b[..], b.len() as u64);
        let mut spans = Vec::new();
        while let Next::Record(_) = reader.read_next() {
            spans.push(reader.offset() - reader.record_start());
        }
        assert_eq!(spans.len(), recs.len());
        assert_eq!(spans.iter().sum::<u64>(), b.len() as u64);
    }

    #[test]
    fn a_keyed_record_with_a_bad_key_is_damage_not_a_call() {
        for key in ["", "tab\there"] {
            let mut b = Vec::new();
            let k = CallKey {
                key: key.into(),
                keep_calls: 1,
                keep_bytes: 1,
            };
            encode_call_into(&mut b, 1, "incr", Some(&k), b"1");
            let (recs, _, stop) = decode_segment(&b);
            assert!(recs.is_empty(), "{key:?}");
            assert!(
                matches!(stop, Some(Stop::Corrupt { .. })),
                "{key:?}: {stop:?}"
            );
        }
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
    fn zeroes_are_damage_never_a_torn_tail() {
        // A crash leaves a record cut short, never zeros: zeros are damage, at the end
        // as in the middle.
        let mut b = seg(&[(1, "incr", "1")]);
        b.extend_from_slice(&[0; 100]);
        let (recs, _, stop) = decode_segment(&b);
        assert_eq!(recs.len(), 1);
        assert!(
            matches!(&stop, Some(Stop::Corrupt { reason, .. }) if reason.contains("zeroed")),
            "{stop:?}"
        );
        let mut b = seg(&[(1, "incr", "1"), (2, "incr", "2")]);
        let one = seg(&[(1, "incr", "1")]).len();
        b[one..one + 12].fill(0);
        assert!(matches!(decode_segment(&b).2, Some(Stop::Corrupt { .. })));
    }

    fn write_log(dir: &Path, segments: &[&[(u64, &str, &str)]]) -> Vec<PathBuf> {
        std::fs::create_dir_all(dir).unwrap();
        segments
            .iter()
            .map(|recs| {
                let p = dir.join(segment_name(recs[0].0));
                std::fs::write(&p, seg(recs)).unwrap();
                p
            })
            .collect()
    }

    #[test]
    fn a_short_record_is_torn_only_at_the_end_of_the_last_segment() {
        let t = tempfile::tempdir().unwrap();
        let paths = write_log(
            t.path(),
            &[
                &[(1, "a", "1"), (2, "a", "2")],
                &[(3, "a", "3"), (4, "a", "4")],
            ],
        );
        for (i, p) in paths.iter().enumerate() {
            let bytes = std::fs::read(p).unwrap();
            std::fs::write(p, &bytes[..bytes.len() - 3]).unwrap();
            let r = recover(t.path());
            if i == 1 {
                assert!(r.lost.is_none(), "{:?}", r.lost);
                assert_eq!(r.records.len(), 3);
                assert!(matches!(r.segments[1].stop, Some(Stop::TornTail { .. })));
            } else {
                assert!(
                    r.lost.as_ref().is_some_and(|l| l.contains("cut short")),
                    "{:?}",
                    r.lost
                );
                assert_eq!(r.unread, vec![paths[1].clone()]);
                assert!(r.segments[0].damaged());
            }
            std::fs::write(p, &bytes).unwrap();
        }
    }

    #[test]
    fn damage_is_harmless_only_when_the_checkpoint_covers_what_it_may_have_held() {
        let t = tempfile::tempdir().unwrap();
        let paths = write_log(
            t.path(),
            &[
                &[(1, "a", "1"), (2, "a", "2")],
                &[(3, "a", "3"), (4, "a", "4")],
            ],
        );
        let mut b = std::fs::read(&paths[0]).unwrap();
        let l = b.len();
        b[l - 1] ^= 1;
        std::fs::write(&paths[0], &b).unwrap();
        // Seq 2 is lost; a checkpoint at 2 covers it: 3 and 4 are read on.
        let r = recover_covered(t.path(), 2, None);
        assert!(r.lost.is_none(), "{:?}", r.lost);
        assert_eq!(
            r.records.iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![1, 3, 4]
        );
        assert!(r.segments[0].damaged() && !r.stopped_early);
        // Without it, seq 2 is named lost and the next segment is not used.
        let r = recover_covered(t.path(), 1, None);
        let lost = r.lost.unwrap();
        assert!(lost.contains("calls 2..=2"), "{lost}");
        assert_eq!(r.records.iter().map(|x| x.seq).collect::<Vec<_>>(), vec![1]);
        assert_eq!(r.unread, vec![paths[1].clone()]);
    }

    #[test]
    fn missing_segments_swapped_segments_and_a_short_log_are_damage() {
        let t = tempfile::tempdir().unwrap();
        let paths = write_log(
            t.path(),
            &[&[(1, "a", "1")], &[(2, "a", "2")], &[(3, "a", "3")]],
        );
        assert!(recover(t.path()).lost.is_none());
        // The log ends before the checkpoint's coverage.
        let lost = recover_covered(t.path(), 5, None).lost.unwrap();
        assert!(
            lost.contains("before the newest checkpoint's seq 5"),
            "{lost}"
        );
        // A segment missing in the middle.
        let middle = std::fs::read(&paths[1]).unwrap();
        std::fs::remove_file(&paths[1]).unwrap();
        let lost = recover(t.path()).lost.unwrap();
        assert!(lost.contains("jumps from seq 1 to seq 3"), "{lost}");
        let covered = recover_covered(t.path(), 2, None);
        assert!(covered.lost.is_none());
        // The covered gap is still reported, as one sentence.
        assert!(
            covered.problems.iter().any(|p| p.contains(
                "calls 2..=2 are covered by the checkpoint (seq 2): nothing acknowledged is lost"
            )),
            "{:?}",
            covered.problems
        );
        // A segment under another's name.
        std::fs::write(&paths[1], std::fs::read(&paths[2]).unwrap()).unwrap();
        std::fs::write(&paths[2], &middle).unwrap();
        let lost = recover(t.path()).lost.unwrap();
        assert!(lost.contains("begins with seq 3"), "{lost}");
        // A link in place of a segment.
        std::fs::remove_file(&paths[1]).unwrap();
        std::os::unix::fs::symlink(&paths[2], &paths[1]).unwrap();
        let lost = recover(t.path()).lost.unwrap();
        assert!(lost.contains("symbolic link"), "{lost}");
    }

    #[test]
    fn a_segment_of_another_owner_is_damage_and_one_without_an_owner_is_read() {
        let t = tempfile::tempdir().unwrap();
        let ours = LogOwner {
            actor: "a".into(),
            dir: "d1".into(),
        };
        let theirs = LogOwner {
            actor: "b".into(),
            dir: "d1".into(),
        };
        // Written before owners existed: read by a recovery that expects one.
        write_log(t.path(), &[&[(1, "a", "1"), (2, "a", "2")]]);
        assert!(recover_covered(t.path(), 0, Some(&ours)).lost.is_none());
        let mut b = Vec::new();
        encode_into(&mut b, 3, OWNER_METHOD, &theirs.encode());
        encode_into(&mut b, 3, "a", b"3");
        std::fs::write(t.path().join(segment_name(3)), &b).unwrap();
        let r = recover_covered(t.path(), 0, Some(&ours));
        let lost = r.lost.unwrap();
        assert!(
            lost.contains("belongs to actor \"b\" of state dir d1, not to actor \"a\""),
            "{lost}"
        );
        assert_eq!(r.records.len(), 2);
        // Its own owner record is not a call and is not replayed.
        let mut b = Vec::new();
        encode_into(&mut b, 3, OWNER_METHOD, &ours.encode());
        encode_into(&mut b, 3, "a", b"3");
        std::fs::write(t.path().join(segment_name(3)), &b).unwrap();
        let r = recover_covered(t.path(), 0, Some(&ours));
        assert!(r.lost.is_none(), "{:?}", r.lost);
        assert_eq!(
            r.records.iter().map(|x| x.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        // An owner record anywhere else is damage.
        encode_into(&mut b, 4, OWNER_METHOD, &ours.encode());
        std::fs::write(t.path().join(segment_name(3)), &b).unwrap();
        let lost = recover_covered(t.path(), 0, Some(&ours)).lost.unwrap();
        assert!(lost.contains("does not begin the segment"), "{lost}");
    }

    #[test]
    fn a_huge_sparse_segment_is_streamed_not_read_whole() {
        let t = tempfile::tempdir().unwrap();
        let paths = write_log(t.path(), &[&[(1, "a", "1"), (2, "a", "2")]]);
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&paths[0])
            .unwrap();
        f.set_len(1 << 40).unwrap();
        let r = recover(t.path());
        assert_eq!(r.records.len(), 2);
        assert!(r.lost.is_some() && r.segments[0].damaged());
        assert_eq!(r.segments[0].len, 1 << 40);
    }

    #[test]
    fn tombstones_are_applied_in_linear_time() {
        let t = tempfile::tempdir().unwrap();
        let mut b = Vec::new();
        let n = 40_000u64;
        for s in 1..=n {
            encode_into(&mut b, s, "a", b"1");
        }
        for s in 1..=n {
            encode_into(&mut b, n + s, CANCEL_METHOD, s.to_string().as_bytes());
        }
        std::fs::write(t.path().join(segment_name(1)), b).unwrap();
        let r = recover(t.path());
        assert!(r.records.is_empty() && r.lost.is_none());
        assert_eq!(r.last_seq, Some(2 * n));
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
