//! Checkpoint formats: the worker's two-slot memory-mapped file and the supervisor's
//! synced disk copy, plus the restore scan that picks the newest valid checkpoint.
//!
//! All integers are little-endian. Every checksum is CRC-32C (Castagnoli).
//!
//! # Slot record (format versions 1 to 3)
//!
//! A record is a 64-byte header followed by `payload_len` payload bytes:
//!
//! | offset | size | field                                                  |
//! |-------:|-----:|--------------------------------------------------------|
//! |      0 |    8 | magic `b"RSGCKPT1"`                                    |
//! |      8 |    4 | format version, u32 (= [`FORMAT_VERSION`] = 1)          |
//! |     12 |    4 | version 2: crc32c of the owning actor's name; v1: zero |
//! |     16 |    8 | generation, u64                                        |
//! |     24 |    8 | last_seq, u64                                          |
//! |     32 |    8 | payload_len, u64                                       |
//! |     40 |    4 | payload crc32c, u32 (over the `payload_len` bytes)     |
//! |     44 |   16 | version 2: id of the owning state directory; v1: zero  |
//! |     60 |    4 | header crc32c, u32 (over header bytes 0..60)           |
//!
//! Version 2 records know whose they are ([`OwnerTag`]: the actor's name, as a checksum,
//! and the id of the state directory): a reader given the expected owner refuses another
//! one's record ([`CheckpointError::Foreign`]), so a checkpoint swapped with another
//! actor's or copied from another state directory is never loaded. Version 1 records
//! (written before owners existed) carry none and are still read.
//!
//! Version 3 records have version 2's header (the owner fields all zero when the record
//! names none) and a payload of two sections ([`Sections`]): `keys length (u64 LE) ‖
//! keys ‖ state`, the worker's idempotency keys beside the actor's state, so the two are
//! always saved and restored together. The checksum covers both. Workers write version 3
//! ([`MmapCheckpoint::write_sectioned`]); the payload of a version 1 or 2 record is all
//! state.
//!
//! A header of 64 zero bytes means "empty" (never written, or invalidated by a write that
//! had not finished). Bytes after the record are ignored. Checks run in this order: empty,
//! magic, header checksum, version, length, payload checksum; the first failure is reported.
//! The magic, the 64-byte header size and the trailing header checksum are frozen for all
//! versions, so a later version is reported as [`CheckpointError::UnsupportedVersion`]
//! rather than as corruption.
//!
//! # Disk copy (`<state_dir>/<actor>.checkpoint`)
//!
//! Exactly one slot record. It is replaced atomically by [`write_disk_copy`]: write
//! `<path>.tmp`, fsync it, rename it over `<path>`, fsync the directory. A reader therefore
//! sees either the old or the new complete record, also after a power loss.
//!
//! # Memory-mapped file (`<runtime_dir>/<actor>.ckpt`)
//!
//! | offset                 | size      | content                                        |
//! |-----------------------:|----------:|------------------------------------------------|
//! |                      0 |         8 | magic `b"RSGMMAP1"`                            |
//! |                      8 |         4 | file format version, u32 (= 1)                 |
//! |                     12 |         4 | reserved, zero                                 |
//! |                     16 |         8 | slot_capacity, u64 (payload bytes per slot)    |
//! |                     24 |         4 | file header crc32c, u32 (over bytes 0..24)     |
//! |                     28 |        36 | reserved, zero                                 |
//! |                     64 |         8 | executing_seq, u64 (not checksummed; 0 = idle) |
//! |                     72 |      4024 | reserved, zero                                 |
//! |                   4096 | slot_size | slot A: a slot record, then zero padding       |
//! |       4096 + slot_size | slot_size | slot B: a slot record, then zero padding       |
//!
//! where `slot_size = round_up_4096(64 + slot_capacity)`. The file is at least
//! `4096 + 2 * slot_size` bytes long; it is never shrunk (no `set_len` on a mapped file), so
//! neither the worker nor a concurrent reader can fault on a truncated mapping. The
//! `executing_seq` word is 8-byte aligned and is stored atomically (Release) through the
//! mapping by the worker before each call, so after a crash the supervisor can tell which
//! call was running.
//!
//! # Crash-safety argument
//!
//! * The worker may be SIGKILLed at any instruction. Its stores to a `MAP_SHARED` mapping
//!   live in the page cache and survive the process, in program order (a Release fence
//!   separates the phases below, so neither the compiler nor the CPU reorders them).
//! * [`MmapCheckpoint::write`] never touches the slot that holds the newest valid
//!   checkpoint. It writes the other slot in three phases: (1) zero that slot's header,
//!   (2) write the payload, (3) write the header. A kill during (1) or (2) leaves the
//!   target header zero or torn, a kill during (3) leaves a torn header; the header checksum
//!   (or the payload checksum, for a header paired with a stale payload) rejects it, and
//!   the newest checkpoint in the other slot is untouched.
//! * Readers in other processes ([`scan`], [`read_mmap_slots`]) use `pread`, never a
//!   mapping, verify every checksum, and bound every length by the slot capacity and the
//!   file size before allocating. A read racing with a write can only produce a checksum
//!   failure, never a wrong checkpoint; [`read_mmap_slots`] re-reads a few times if it
//!   finds no valid slot. The restoring worker, which is the file's only writer, reads
//!   its slots through its own mapping ([`MmapCheckpoint::restore`]).
//! * A payload larger than the slot capacity makes the worker build a complete new file
//!   `<path>.grow` (the previous newest record in slot A, the new one in slot B), fsync it
//!   and rename it over `<path>`: a kill leaves either the old file or the complete new one.
//! * The mmap file survives worker crashes but not a power loss (it is normally on a
//!   tmpfs); the durable copy is the disk copy, which the supervisor writes from the newest
//!   valid slot. Restore takes the valid candidate with the highest generation (ties: higher
//!   `last_seq`, then the mmap slot, slot A before slot B). The worker's restore verifies
//!   the candidates newest first and the older ones only after it is ready; the section
//!   "Restore" below states what keeps that safe.
//! * A damaged mmap file header is never overwritten: [`MmapCheckpoint::open`] renames the
//!   file aside to `<path>.corrupt-<unix nanos>` and creates a fresh file (itself built at
//!   `<path>.new` and renamed into place, so a kill never leaves a half-created file).

use std::collections::VecDeque;
use std::fmt;
use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering, fence};
use std::time::{SystemTime, UNIX_EPOCH};

use memmap2::MmapRaw;

use crate::safefs;

/// Format version of the mmap file, and of a slot record that names no owner.
pub const FORMAT_VERSION: u32 = 1;
/// Format version of a slot record that names its owner ([`OwnerTag`]).
pub const OWNED_FORMAT_VERSION: u32 = 2;
/// Format version of a slot record whose payload has sections ([`Sections`]): the
/// worker's idempotency keys beside the actor's state. Its header is version 2's (the
/// owner fields all zero when it names none).
pub const SECTIONED_FORMAT_VERSION: u32 = 3;

/// The two sections of a version-3 payload: `keys length (u64 LE) ‖ keys ‖ state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sections<'a> {
    /// The worker's idempotency keys, in its own encoding (empty before version 3).
    pub keys: &'a [u8],
    /// The actor's state, as its `save` made it.
    pub state: &'a [u8],
}

/// Splits a payload of format `version` into its sections (a payload of version 1 or 2
/// is all state). A keys length beyond the payload is [`CheckpointError::BadSections`].
pub fn split_sections(version: u32, payload: &[u8]) -> Result<Sections<'_>, CheckpointError> {
    if version != SECTIONED_FORMAT_VERSION {
        return Ok(Sections {
            keys: &[],
            state: payload,
        });
    }
    let bad = |keys_len: u64| CheckpointError::BadSections {
        keys_len,
        payload_len: payload.len() as u64,
    };
    let (len, rest) = payload.split_first_chunk::<8>().ok_or_else(|| bad(0))?;
    let keys_len = u64::from_le_bytes(*len);
    match usize::try_from(keys_len) {
        Ok(n) if n <= rest.len() => {
            let (keys, state) = rest.split_at(n);
            Ok(Sections { keys, state })
        }
        _ => Err(bad(keys_len)),
    }
}

/// The parts of a version-3 payload holding `keys` then `state`, in order.
fn section_parts<'a>(keys_len: &'a [u8; 8], keys: &'a [u8], state: &'a [u8]) -> [&'a [u8]; 3] {
    [keys_len, keys, state]
}

/// Whose a checkpoint is: a checksum of the actor's name and the id of the state
/// directory it belongs to (stored in a version-2 record header).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct OwnerTag {
    /// crc32c of the actor's name.
    pub actor: u32,
    /// The state directory's id.
    pub dir: [u8; 16],
}

impl OwnerTag {
    pub fn new(actor: &str, dir: [u8; 16]) -> OwnerTag {
        OwnerTag {
            actor: crc32c::crc32c(actor.as_bytes()),
            dir,
        }
    }

    /// True if `actor` is the name this tag was made from (up to a checksum collision).
    pub fn is_actor(&self, actor: &str) -> bool {
        self.actor == crc32c::crc32c(actor.as_bytes())
    }
}

impl fmt::Display for OwnerTag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "actor #{:08x} of state dir ", self.actor)?;
        self.dir.iter().try_for_each(|b| write!(f, "{b:02x}"))
    }
}

/// Magic of a slot record (disk copy, or one slot of the mmap file).
pub const RECORD_MAGIC: [u8; 8] = *b"RSGCKPT1";
/// Magic of the memory-mapped file's header.
pub const MMAP_MAGIC: [u8; 8] = *b"RSGMMAP1";
/// Size of a slot record header.
pub const RECORD_HEADER_LEN: usize = 64;
/// Size of the mmap file header page; slot A starts here.
pub const MMAP_HEADER_LEN: u64 = 4096;
/// Offset of the `executing_seq` word in the mmap file.
pub const EXECUTING_OFFSET: u64 = 64;
/// Smallest slot capacity of a file created by [`MmapCheckpoint::open`].
pub const MIN_CAPACITY: u64 = 64 * 1024;

const PAGE: u64 = 4096;
const MMAP_HEADER_CRC_OFFSET: usize = 24;
const RECORD_HEADER_CRC_OFFSET: usize = 60;
/// How often [`read_mmap_slots`] re-reads a file in which no slot verified.
const READ_ATTEMPTS: usize = 3;

/// A verified checkpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    pub generation: u64,
    pub last_seq: u64,
    pub payload: Vec<u8>,
    /// The record's format version: [`SECTIONED_FORMAT_VERSION`] says the payload has
    /// [`Sections`].
    pub version: u32,
}

impl Checkpoint {
    /// The payload's sections (see [`split_sections`]).
    pub fn sections(&self) -> Result<Sections<'_>, CheckpointError> {
        split_sections(self.version, &self.payload)
    }
}

/// Where a checkpoint candidate came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    SlotA,
    SlotB,
    Disk,
}

impl fmt::Display for Source {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Source::SlotA => "mmap slot A",
            Source::SlotB => "mmap slot B",
            Source::Disk => "disk copy",
        })
    }
}

impl Source {
    fn slot(index: usize) -> Source {
        if index == 0 {
            Source::SlotA
        } else {
            Source::SlotB
        }
    }

    /// Tie-break rank: on equal (generation, last_seq) the higher rank wins.
    fn rank(self) -> u8 {
        match self {
            Source::SlotA => 2,
            Source::SlotB => 1,
            Source::Disk => 0,
        }
    }
}

/// Why a candidate was not used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    #[error("missing (no such file)")]
    Missing,
    #[error("empty (never written, or a write was interrupted)")]
    Empty,
    #[error("bad magic (not a resurgam checkpoint)")]
    BadMagic,
    #[error(
        "unsupported format version {0} (this build reads versions {FORMAT_VERSION} to \
         {SECTIONED_FORMAT_VERSION})"
    )]
    UnsupportedVersion(u32),
    /// A version-3 payload whose keys section does not fit in it.
    #[error("keys section of {keys_len} bytes does not fit a payload of {payload_len} bytes")]
    BadSections { keys_len: u64, payload_len: u64 },
    /// A record of another actor or another state directory (swapped, linked or copied).
    #[error("belongs to {found}, not to {expected}")]
    Foreign { found: OwnerTag, expected: OwnerTag },
    #[error("torn header (header checksum mismatch)")]
    HeaderChecksum,
    /// `expected` and `found` count bytes of the whole record or file.
    #[error("truncated: header says {expected} bytes, {found} present")]
    Truncated { expected: u64, found: u64 },
    #[error("payload checksum mismatch (expected {expected:#010x}, found {found:#010x})")]
    PayloadChecksum { expected: u32, found: u32 },
    /// A length field larger than the space that can hold it (or than this machine can address).
    #[error("length {0} is larger than the space available for it")]
    TooLarge(u64),
    #[error("I/O error: {0}")]
    Io(String),
}

// ---------------------------------------------------------------------------------------
// Little-endian helpers (offsets are constants within fixed-size arrays).

fn le_u32(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

fn le_u64(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

fn put_u32(b: &mut [u8], off: usize, v: u32) {
    b[off..off + 4].copy_from_slice(&v.to_le_bytes());
}

fn put_u64(b: &mut [u8], off: usize, v: u64) {
    b[off..off + 8].copy_from_slice(&v.to_le_bytes());
}

// ---------------------------------------------------------------------------------------
// Slot record.

#[derive(Debug, Clone, Copy)]
struct RecordHeader {
    generation: u64,
    last_seq: u64,
    payload_len: u64,
    payload_crc: u32,
    /// Version 2 and 3 records only.
    owner: Option<OwnerTag>,
    version: u32,
}

/// The format version of a record naming `owner`, with or without sections.
fn version_of(owner: Option<&OwnerTag>, sectioned: bool) -> u32 {
    match (sectioned, owner) {
        (true, _) => SECTIONED_FORMAT_VERSION,
        (false, Some(_)) => OWNED_FORMAT_VERSION,
        (false, None) => FORMAT_VERSION,
    }
}

#[cfg(test)]
fn encode_header(
    generation: u64,
    last_seq: u64,
    payload: &[u8],
    owner: Option<&OwnerTag>,
) -> [u8; RECORD_HEADER_LEN] {
    let version = version_of(owner, false);
    encode_header_parts(version, generation, last_seq, &[payload], owner)
}

/// The header of a record of format `version` whose payload is `parts`, in order.
fn encode_header_parts(
    version: u32,
    generation: u64,
    last_seq: u64,
    parts: &[&[u8]],
    owner: Option<&OwnerTag>,
) -> [u8; RECORD_HEADER_LEN] {
    let mut h = [0u8; RECORD_HEADER_LEN];
    h[0..8].copy_from_slice(&RECORD_MAGIC);
    put_u32(&mut h, 8, version);
    if let Some(o) = owner.filter(|_| version != FORMAT_VERSION) {
        put_u32(&mut h, 12, o.actor);
        h[44..60].copy_from_slice(&o.dir);
    }
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let crc = parts.iter().fold(0, |crc, p| crc32c::crc32c_append(crc, p));
    put_u64(&mut h, 16, generation);
    put_u64(&mut h, 24, last_seq);
    put_u64(&mut h, 32, len as u64);
    put_u32(&mut h, 40, crc);
    let crc = crc32c::crc32c(&h[..RECORD_HEADER_CRC_OFFSET]);
    put_u32(&mut h, RECORD_HEADER_CRC_OFFSET, crc);
    h
}

fn parse_header(h: &[u8; RECORD_HEADER_LEN]) -> Result<RecordHeader, CheckpointError> {
    if h.iter().all(|&b| b == 0) {
        return Err(CheckpointError::Empty);
    }
    if h[0..8] != RECORD_MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    if crc32c::crc32c(&h[..RECORD_HEADER_CRC_OFFSET]) != le_u32(h, RECORD_HEADER_CRC_OFFSET) {
        return Err(CheckpointError::HeaderChecksum);
    }
    let version = le_u32(h, 8);
    let mut dir = [0u8; 16];
    dir.copy_from_slice(&h[44..60]);
    let tag = OwnerTag {
        actor: le_u32(h, 12),
        dir,
    };
    let owner = match version {
        FORMAT_VERSION => None,
        OWNED_FORMAT_VERSION => Some(tag),
        SECTIONED_FORMAT_VERSION if tag.actor == 0 && tag.dir == [0; 16] => None,
        SECTIONED_FORMAT_VERSION => Some(tag),
        _ => return Err(CheckpointError::UnsupportedVersion(version)),
    };
    Ok(RecordHeader {
        generation: le_u64(h, 16),
        last_seq: le_u64(h, 24),
        payload_len: le_u64(h, 32),
        payload_crc: le_u32(h, 40),
        owner,
        version,
    })
}

fn check_payload(h: &RecordHeader, payload: &[u8]) -> Result<(), CheckpointError> {
    let found = crc32c::crc32c(payload);
    if found != h.payload_crc {
        return Err(CheckpointError::PayloadChecksum {
            expected: h.payload_crc,
            found,
        });
    }
    Ok(())
}

fn record_len(payload_len: u64) -> u64 {
    (RECORD_HEADER_LEN as u64).saturating_add(payload_len)
}

/// Encodes one slot record (64-byte header + payload) of format version 1 (no owner).
pub fn encode_record(generation: u64, last_seq: u64, payload: &[u8]) -> Vec<u8> {
    encode_record_owned(generation, last_seq, payload, None)
}

/// Encodes one slot record, of format version 2 when it names its `owner`.
pub fn encode_record_owned(
    generation: u64,
    last_seq: u64,
    payload: &[u8],
    owner: Option<&OwnerTag>,
) -> Vec<u8> {
    let version = version_of(owner, false);
    encode_record_version(version, generation, last_seq, payload, owner)
}

/// Encodes one slot record of format `version` (for version 3, `payload` holds the
/// sections already).
fn encode_record_version(
    version: u32,
    generation: u64,
    last_seq: u64,
    payload: &[u8],
    owner: Option<&OwnerTag>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(RECORD_HEADER_LEN + payload.len());
    out.extend_from_slice(&encode_header_parts(
        version,
        generation,
        last_seq,
        &[payload],
        owner,
    ));
    out.extend_from_slice(payload);
    out
}

/// Encodes one record of format version 3 holding `keys` and `state` ([`Sections`]).
pub fn encode_record_sectioned(
    generation: u64,
    last_seq: u64,
    keys: &[u8],
    state: &[u8],
    owner: Option<&OwnerTag>,
) -> Vec<u8> {
    let keys_len = (keys.len() as u64).to_le_bytes();
    encode_record_version(
        SECTIONED_FORMAT_VERSION,
        generation,
        last_seq,
        &section_parts(&keys_len, keys, state).concat(),
        owner,
    )
}

/// Decodes and verifies one slot record at the start of `bytes` (magic, version, both
/// checksums, length). Bytes after the record are ignored.
pub fn decode_record(bytes: &[u8]) -> Result<Checkpoint, CheckpointError> {
    if bytes.is_empty() {
        return Err(CheckpointError::Empty);
    }
    let Some((head, rest)) = bytes.split_first_chunk::<RECORD_HEADER_LEN>() else {
        return Err(CheckpointError::Truncated {
            expected: RECORD_HEADER_LEN as u64,
            found: bytes.len() as u64,
        });
    };
    let h = parse_header(head)?;
    let payload = match usize::try_from(h.payload_len) {
        Ok(len) if len <= rest.len() => &rest[..len],
        _ => {
            return Err(CheckpointError::Truncated {
                expected: record_len(h.payload_len),
                found: bytes.len() as u64,
            });
        }
    };
    check_payload(&h, payload)?;
    Ok(Checkpoint {
        generation: h.generation,
        last_seq: h.last_seq,
        payload: payload.to_vec(),
        version: h.version,
    })
}

// ---------------------------------------------------------------------------------------
// File helpers.

fn io_ctx(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> io::Error {
    move |e| io::Error::new(e.kind(), format!("{op} of {}: {e}", path.display()))
}

fn ck_io(op: &str, path: &Path, e: io::Error) -> CheckpointError {
    CheckpointError::Io(format!("{op} of {}: {e}", path.display()))
}

/// `<path><suffix>` (the suffix is appended to the file name, not substituted for an extension).
fn with_suffix(path: &Path, suffix: &str) -> PathBuf {
    let mut s = path.as_os_str().to_owned();
    s.push(suffix);
    PathBuf::from(s)
}

/// Reads exactly `len` bytes at `offset`, allocating fallibly. `len` must already be bounded
/// by the file size.
fn read_vec_at(
    file: &File,
    offset: u64,
    len: u64,
    path: &Path,
) -> Result<Vec<u8>, CheckpointError> {
    let n = usize::try_from(len).map_err(|_| CheckpointError::TooLarge(len))?;
    let mut buf = Vec::new();
    buf.try_reserve_exact(n)
        .map_err(|_| CheckpointError::TooLarge(len))?;
    crate::hugepages::advise(buf.as_ptr(), buf.capacity());
    buf.resize(n, 0);
    read_exact_at(file, &mut buf, offset, path)?;
    Ok(buf)
}

fn read_exact_at(
    file: &File,
    buf: &mut [u8],
    offset: u64,
    path: &Path,
) -> Result<(), CheckpointError> {
    file.read_exact_at(buf, offset).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            // The file shrank under us (or lied about its size).
            CheckpointError::Truncated {
                expected: offset.saturating_add(buf.len() as u64),
                found: file.metadata().map(|m| m.len()).unwrap_or(0),
            }
        } else {
            ck_io("read", path, e)
        }
    })
}

/// Reads and verifies a record stored at `offset` in `file`. `limit` bounds the payload
/// length (slot capacity, or what the file holds after the header).
fn read_record_at(
    file: &File,
    offset: u64,
    limit: Limit,
    path: &Path,
    expect: Option<&OwnerTag>,
) -> Result<Checkpoint, CheckpointError> {
    let h = read_header_at(file, offset, limit, path, expect)?;
    let payload = read_vec_at(file, offset + RECORD_HEADER_LEN as u64, h.payload_len, path)?;
    check_payload(&h, &payload)?;
    Ok(Checkpoint {
        generation: h.generation,
        last_seq: h.last_seq,
        payload,
        version: h.version,
    })
}

/// Bytes of payload read at a time by [`verify_record_at`].
const VERIFY_CHUNK: usize = 1 << 20;

/// Verifies a record stored at `offset` in `file` without keeping a large payload: it
/// streams through the checksum in chunks, so a large candidate costs one read of page
/// cache and no allocation of its size. A payload that fits in one chunk is returned
/// with the header (it was read and verified whole: no need to read it again).
fn verify_record_at(
    file: &File,
    offset: u64,
    limit: Limit,
    path: &Path,
    expect: Option<&OwnerTag>,
) -> Result<(RecordHeader, Option<Vec<u8>>), CheckpointError> {
    let h = read_header_at(file, offset, limit, path, expect)?;
    let len = h.payload_len;
    let mut buf = vec![0u8; usize::try_from(len).map_or(VERIFY_CHUNK, |l| l.min(VERIFY_CHUNK))];
    let (mut crc, mut done) = (0u32, 0u64);
    let start = offset + RECORD_HEADER_LEN as u64;
    while done < len {
        let n = usize::try_from(len - done).map_or(buf.len(), |r| r.min(buf.len()));
        read_exact_at(file, &mut buf[..n], start + done, path)?;
        crc = crc32c::crc32c_append(crc, &buf[..n]);
        done += n as u64;
    }
    if crc != h.payload_crc {
        return Err(CheckpointError::PayloadChecksum {
            expected: h.payload_crc,
            found: crc,
        });
    }
    let whole = (len <= VERIFY_CHUNK as u64).then(|| {
        buf.truncate(len as usize);
        buf
    });
    Ok((h, whole))
}

/// Reads and checks the header of a record stored at `offset`, and its payload length
/// against `limit`.
fn read_header_at(
    file: &File,
    offset: u64,
    limit: Limit,
    path: &Path,
    expect: Option<&OwnerTag>,
) -> Result<RecordHeader, CheckpointError> {
    let mut head = [0u8; RECORD_HEADER_LEN];
    read_exact_at(file, &mut head, offset, path)?;
    let h = parse_header(&head)?;
    if let (Some(found), Some(expected)) = (h.owner, expect)
        && found != *expected
    {
        return Err(CheckpointError::Foreign {
            found,
            expected: *expected,
        });
    }
    match limit {
        Limit::Capacity(cap) if h.payload_len > cap => {
            return Err(CheckpointError::TooLarge(h.payload_len));
        }
        Limit::FileLen(file_len) if record_len(h.payload_len) > file_len => {
            return Err(CheckpointError::Truncated {
                expected: record_len(h.payload_len),
                found: file_len,
            });
        }
        _ => {}
    }
    Ok(h)
}

#[derive(Debug, Clone, Copy)]
enum Limit {
    /// The record is a slot of this payload capacity (the file length was already checked).
    Capacity(u64),
    /// The record starts at offset 0 of a file of this length.
    FileLen(u64),
}

// ---------------------------------------------------------------------------------------
// Mmap file layout.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Layout {
    capacity: u64,
    slot_size: u64,
    file_len: u64,
}

impl Layout {
    /// `None` if the sizes overflow or cannot be mapped on this machine.
    fn new(capacity: u64) -> Option<Layout> {
        let slot_size = capacity
            .checked_add(RECORD_HEADER_LEN as u64)?
            .checked_next_multiple_of(PAGE)?;
        let file_len = slot_size.checked_mul(2)?.checked_add(MMAP_HEADER_LEN)?;
        // Must be addressable: offsets into the mapping are usize.
        usize::try_from(file_len).ok()?;
        if file_len > isize::MAX as u64 {
            return None;
        }
        Some(Layout {
            capacity,
            slot_size,
            file_len,
        })
    }

    fn slot_offset(&self, index: usize) -> u64 {
        MMAP_HEADER_LEN + self.slot_size * index as u64
    }
}

fn encode_file_header(capacity: u64, executing: u64) -> Vec<u8> {
    let mut h = vec![0u8; MMAP_HEADER_LEN as usize];
    h[0..8].copy_from_slice(&MMAP_MAGIC);
    put_u32(&mut h, 8, FORMAT_VERSION);
    put_u64(&mut h, 16, capacity);
    let crc = crc32c::crc32c(&h[..MMAP_HEADER_CRC_OFFSET]);
    put_u32(&mut h, MMAP_HEADER_CRC_OFFSET, crc);
    put_u64(&mut h, EXECUTING_OFFSET as usize, executing);
    h
}

/// Validates the mmap file header and the file length; returns the layout.
fn read_file_layout(file: &File, path: &Path) -> Result<Layout, CheckpointError> {
    let file_len = file.metadata().map_err(|e| ck_io("stat", path, e))?.len();
    if file_len == 0 {
        return Err(CheckpointError::Empty);
    }
    if file_len < MMAP_HEADER_LEN {
        return Err(CheckpointError::Truncated {
            expected: MMAP_HEADER_LEN,
            found: file_len,
        });
    }
    let mut h = [0u8; 32];
    read_exact_at(file, &mut h, 0, path)?;
    if h.iter().all(|&b| b == 0) {
        return Err(CheckpointError::Empty);
    }
    if h[0..8] != MMAP_MAGIC {
        return Err(CheckpointError::BadMagic);
    }
    if crc32c::crc32c(&h[..MMAP_HEADER_CRC_OFFSET]) != le_u32(&h, MMAP_HEADER_CRC_OFFSET) {
        return Err(CheckpointError::HeaderChecksum);
    }
    let version = le_u32(&h, 8);
    if version != FORMAT_VERSION {
        return Err(CheckpointError::UnsupportedVersion(version));
    }
    let capacity = le_u64(&h, 16);
    let layout = Layout::new(capacity).ok_or(CheckpointError::TooLarge(capacity))?;
    if file_len < layout.file_len {
        return Err(CheckpointError::Truncated {
            expected: layout.file_len,
            found: file_len,
        });
    }
    Ok(layout)
}

type SlotRead = (Source, Result<Checkpoint, CheckpointError>);

/// Reads the file header and both slots once. The flag is false if the file header (or the
/// file length) is invalid, in which case both slots carry that error.
fn read_slots_once(file: &File, path: &Path, expect: Option<&OwnerTag>) -> (Vec<SlotRead>, bool) {
    match read_file_layout(file, path) {
        Err(e) => (
            vec![(Source::SlotA, Err(e.clone())), (Source::SlotB, Err(e))],
            false,
        ),
        Ok(layout) => {
            let slots = (0..2)
                .map(|i| {
                    let res = read_record_at(
                        file,
                        layout.slot_offset(i),
                        Limit::Capacity(layout.capacity),
                        path,
                        expect,
                    );
                    (Source::slot(i), res)
                })
                .collect();
            (slots, true)
        }
    }
}

/// Reads both slots of the mmap file with `pread` (the file may be written concurrently by
/// the worker). Always returns two entries, slot A then slot B. If the file header is
/// invalid, both entries carry that error. If no slot verifies (possibly a read that raced
/// with two consecutive writes), the file is re-read a few times.
pub fn read_mmap_slots(mmap_path: &Path) -> Vec<(Source, Result<Checkpoint, CheckpointError>)> {
    read_mmap_slots_owned(mmap_path, None)
}

/// [`read_mmap_slots`], refusing a record of another owner than `expect`.
pub fn read_mmap_slots_owned(
    mmap_path: &Path,
    expect: Option<&OwnerTag>,
) -> Vec<(Source, Result<Checkpoint, CheckpointError>)> {
    let file = match safefs::open_read(mmap_path) {
        Ok(f) => f,
        Err(e) => {
            let err = if e.kind() == io::ErrorKind::NotFound {
                CheckpointError::Missing
            } else {
                ck_io("open", mmap_path, e)
            };
            return vec![(Source::SlotA, Err(err.clone())), (Source::SlotB, Err(err))];
        }
    };
    let mut attempt = 1;
    loop {
        let (slots, header_ok) = read_slots_once(&file, mmap_path, expect);
        let any_valid = slots.iter().any(|(_, r)| r.is_ok());
        if any_valid || !header_ok || attempt >= READ_ATTEMPTS {
            return slots;
        }
        attempt += 1;
        std::thread::yield_now();
    }
}

/// Outcome of one restore candidate: its `(generation, last_seq)` if it verified.
pub type CandidateOutcome = Result<(u64, u64), CheckpointError>;

/// What restore found: every candidate with its outcome, and the chosen one.
#[derive(Debug, Clone)]
pub struct Scan {
    /// Slot A, slot B, then the disk copy.
    pub candidates: Vec<(Source, CandidateOutcome)>,
    pub chosen: Option<(Source, Checkpoint)>,
}

/// Reads both mmap slots and the disk copy and picks the valid candidate with the highest
/// generation (ties: higher `last_seq`, then the mmap slot). Missing files are
/// [`CheckpointError::Missing`] candidates, not errors.
///
/// Every candidate is verified, but only the chosen one is kept: the others stream
/// through the checksum (see [`verify_record_at`]), and the chosen one is read again in
/// full and verified again as read, so a file written concurrently can never hand out a
/// payload other than the one verified.
pub fn scan(mmap_path: &Path, disk_path: &Path) -> Scan {
    scan_owned(mmap_path, disk_path, None)
}

/// [`scan`], refusing candidates of another owner than `expect`
/// ([`CheckpointError::Foreign`]).
pub fn scan_owned(mmap_path: &Path, disk_path: &Path, expect: Option<&OwnerTag>) -> Scan {
    let mut attempt = 1;
    loop {
        let (candidates, mut kept, header_ok) = verify_candidates(mmap_path, disk_path, expect);
        let mmap_valid = candidates[..2].iter().any(|(_, r)| r.is_ok());
        if !mmap_valid && header_ok && attempt < READ_ATTEMPTS {
            // Possibly a read that raced with two consecutive writes.
            attempt += 1;
            std::thread::yield_now();
            continue;
        }
        let best = candidates
            .iter()
            .enumerate()
            .filter_map(|(i, (source, r))| {
                r.as_ref()
                    .ok()
                    .map(|&(g, l)| (g, l, source.rank(), *source, i))
            })
            .max_by_key(|&(g, l, rank, _, _)| (g, l, rank));
        let Some((generation, last_seq, _, source, index)) = best else {
            return Scan {
                candidates,
                chosen: None,
            };
        };
        // A small payload was kept whole from the verification; a large one is read
        // (and verified) once more.
        let loaded = match (kept[index].take(), source) {
            (Some((version, payload)), _) => Ok(Checkpoint {
                generation,
                last_seq,
                payload,
                version,
            }),
            (None, Source::Disk) => read_disk_copy_owned(disk_path, expect),
            (None, slot) => read_mmap_slot(mmap_path, slot, expect),
        };
        match loaded {
            Ok(ck) if (ck.generation, ck.last_seq) == (generation, last_seq) => {
                return Scan {
                    candidates,
                    chosen: Some((source, ck)),
                };
            }
            // The file changed between the two reads (a writer at work): look again.
            _ if attempt < READ_ATTEMPTS => {
                attempt += 1;
                std::thread::yield_now();
            }
            _ => return scan_reading_all(mmap_path, disk_path, expect),
        }
    }
}

/// Every candidate verified, with whether the mmap file's header was valid.
/// Every candidate verified, with its payload when it was small enough to keep, and
/// whether the mmap file's header was valid.
#[allow(clippy::type_complexity)]
fn verify_candidates(
    mmap_path: &Path,
    disk_path: &Path,
    expect: Option<&OwnerTag>,
) -> (
    Vec<(Source, CandidateOutcome)>,
    Vec<Option<(u32, Vec<u8>)>>,
    bool,
) {
    let mut kept = Vec::with_capacity(3);
    let mut outcome = |r: Result<(RecordHeader, Option<Vec<u8>>), CheckpointError>| {
        let (outcome, payload) = match r {
            Ok((h, payload)) => (
                Ok((h.generation, h.last_seq)),
                payload.map(|p| (h.version, p)),
            ),
            Err(e) => (Err(e), None),
        };
        kept.push(payload);
        outcome
    };
    let mut all = Vec::with_capacity(3);
    let mut header_ok = false;
    match safefs::open_read(mmap_path) {
        Ok(file) => match read_file_layout(&file, mmap_path) {
            Ok(layout) => {
                header_ok = true;
                for i in 0..2 {
                    let r = verify_record_at(
                        &file,
                        layout.slot_offset(i),
                        Limit::Capacity(layout.capacity),
                        mmap_path,
                        expect,
                    );
                    all.push((Source::slot(i), outcome(r)));
                }
            }
            Err(e) => {
                all.push((Source::SlotA, outcome(Err(e.clone()))));
                all.push((Source::SlotB, outcome(Err(e))));
            }
        },
        Err(e) => {
            let err = if e.kind() == io::ErrorKind::NotFound {
                CheckpointError::Missing
            } else {
                ck_io("open", mmap_path, e)
            };
            all.push((Source::SlotA, outcome(Err(err.clone()))));
            all.push((Source::SlotB, outcome(Err(err))));
        }
    }
    let disk = open_disk_copy(disk_path)
        .and_then(|(file, len)| verify_record_at(&file, 0, Limit::FileLen(len), disk_path, expect));
    all.push((Source::Disk, outcome(disk)));
    (all, kept, header_ok)
}

/// Reads one slot of the mmap file in full.
fn read_mmap_slot(
    mmap_path: &Path,
    slot: Source,
    expect: Option<&OwnerTag>,
) -> Result<Checkpoint, CheckpointError> {
    let file = safefs::open_read(mmap_path).map_err(|e| ck_io("open", mmap_path, e))?;
    let layout = read_file_layout(&file, mmap_path)?;
    let i = if slot == Source::SlotB { 1 } else { 0 };
    read_record_at(
        &file,
        layout.slot_offset(i),
        Limit::Capacity(layout.capacity),
        mmap_path,
        expect,
    )
}

/// [`scan`] the simple way: every candidate read in full at once (the fallback when the
/// files keep changing under the streaming scan).
fn scan_reading_all(mmap_path: &Path, disk_path: &Path, expect: Option<&OwnerTag>) -> Scan {
    let mut all = read_mmap_slots_owned(mmap_path, expect);
    all.push((Source::Disk, read_disk_copy_owned(disk_path, expect)));
    let mut candidates = Vec::with_capacity(all.len());
    let mut chosen: Option<(Source, Checkpoint)> = None;
    for (source, res) in all {
        match res {
            Ok(ck) => {
                candidates.push((source, Ok((ck.generation, ck.last_seq))));
                let key = (ck.generation, ck.last_seq, source.rank());
                let better = match &chosen {
                    None => true,
                    Some((s, c)) => key > (c.generation, c.last_seq, s.rank()),
                };
                if better {
                    chosen = Some((source, ck));
                }
            }
            Err(e) => candidates.push((source, Err(e))),
        }
    }
    Scan { candidates, chosen }
}

/// Does the one-time set-up of the checksum code now: its first use detects the CPU's
/// features, which costs 50-60 µs on a VM (every `cpuid` traps to the hypervisor). A
/// worker calls this while it waits for its actor, so its restore does not pay it.
pub fn warm_up() {
    std::hint::black_box(crc32c::crc32c(std::hint::black_box(&[])));
}

/// Reads the `executing_seq` word of an mmap file; `None` if the file is missing, unreadable
/// or its header invalid.
pub fn read_executing(mmap_path: &Path) -> Option<u64> {
    let file = safefs::open_read(mmap_path).ok()?;
    read_file_layout(&file, mmap_path).ok()?;
    // pread does not promise an atomic 8-byte copy: read until two reads agree.
    let mut prev: Option<u64> = None;
    for _ in 0..8 {
        let mut w = [0u8; 8];
        file.read_exact_at(&mut w, EXECUTING_OFFSET).ok()?;
        let v = u64::from_le_bytes(w);
        if prev == Some(v) {
            return Some(v);
        }
        prev = Some(v);
    }
    prev
}

// ---------------------------------------------------------------------------------------
// Disk copy.

/// Writes the disk copy durably: write `<path>.tmp`, fsync it, rename it over `path`, fsync
/// the directory. Errors name the operation and the path. Not safe to call concurrently for
/// the same `path` (both would use the same `.tmp`).
pub fn write_disk_copy(
    path: &Path,
    generation: u64,
    last_seq: u64,
    payload: &[u8],
) -> io::Result<()> {
    write_disk_copy_owned(path, generation, last_seq, payload, None)
}

/// [`write_disk_copy`] of a record that names its `owner` (format version 2).
pub fn write_disk_copy_owned(
    path: &Path,
    generation: u64,
    last_seq: u64,
    payload: &[u8],
    owner: Option<&OwnerTag>,
) -> io::Result<()> {
    let record = encode_record_owned(generation, last_seq, payload, owner);
    safefs::replace_file(path, &with_suffix(path, ".tmp"), &record)
}

/// [`write_disk_copy_owned`] of `checkpoint` as it is: a version-3 record stays one.
pub fn write_disk_copy_of(
    path: &Path,
    checkpoint: &Checkpoint,
    owner: Option<&OwnerTag>,
) -> io::Result<()> {
    let version = if checkpoint.version == SECTIONED_FORMAT_VERSION {
        checkpoint.version
    } else {
        version_of(owner, false)
    };
    let record = encode_record_version(
        version,
        checkpoint.generation,
        checkpoint.last_seq,
        &checkpoint.payload,
        owner,
    );
    safefs::replace_file(path, &with_suffix(path, ".tmp"), &record)
}

/// Reads and verifies the disk copy. A missing file is [`CheckpointError::Missing`].
pub fn read_disk_copy(path: &Path) -> Result<Checkpoint, CheckpointError> {
    read_disk_copy_owned(path, None)
}

/// [`read_disk_copy`], refusing a record of another owner than `expect`.
pub fn read_disk_copy_owned(
    path: &Path,
    expect: Option<&OwnerTag>,
) -> Result<Checkpoint, CheckpointError> {
    let (file, file_len) = open_disk_copy(path)?;
    read_record_at(&file, 0, Limit::FileLen(file_len), path, expect)
}

/// Opens the disk copy and checks it can hold a record header; returns it with its length.
fn open_disk_copy(path: &Path) -> Result<(File, u64), CheckpointError> {
    let file = match safefs::open_read(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Err(CheckpointError::Missing),
        Err(e) => return Err(ck_io("open", path, e)),
    };
    let file_len = file.metadata().map_err(|e| ck_io("stat", path, e))?.len();
    if file_len == 0 {
        return Err(CheckpointError::Empty);
    }
    if file_len < RECORD_HEADER_LEN as u64 {
        return Err(CheckpointError::Truncated {
            expected: RECORD_HEADER_LEN as u64,
            found: file_len,
        });
    }
    Ok((file, file_len))
}

// ---------------------------------------------------------------------------------------
// The worker's writable mapping.

/// The worker's two-slot checkpoint file, mapped read-write and shared with readers in other
/// processes. Bytes are copied in with `ptr::copy_nonoverlapping` and the executing word is
/// an atomic store; the only reference ever created over the mapping is a shared one to a
/// slot's payload ([`Restore::payload`] and the verification of older candidates), which
/// borrows the writer, so no write can happen while it lives.
#[derive(Debug)]
pub struct MmapCheckpoint {
    path: PathBuf,
    file: File,
    map: MmapRaw,
    layout: Layout,
    /// (generation, last_seq) of the checkpoint in each slot, as last written, verified or
    /// (for a slot in `pending`) claimed by its intact header; `None`: nothing usable.
    slots: [Option<(u64, u64)>; 2],
    /// Restore candidates older than the restored one, still to be verified (see
    /// [`MmapCheckpoint::restore`]); every write verifies what is left first.
    pending: VecDeque<Pending>,
    /// What the verification of `pending` found so far.
    verified: Verified,
    /// Written into every record (format version 2); `None`: version 1.
    owner: Option<OwnerTag>,
}

/// What opening an existing mmap file found.
enum Existing {
    Valid(File, MmapRaw, Layout),
    /// The file header (or length) is damaged; the file was renamed to `moved_to`.
    Damaged {
        error: CheckpointError,
        moved_to: PathBuf,
    },
    Missing,
}

impl MmapCheckpoint {
    /// Opens the file at `path`, creating it (capacity `max(min_capacity, 64 KiB)`) if
    /// absent. An existing valid file keeps its capacity (it grows on demand in
    /// [`write`](Self::write)); both of its slots are verified. If the file exists but its
    /// header is invalid or the file is too short, it is renamed aside to
    /// `<path>.corrupt-<unix nanos>` (returned, for the caller to log) and a fresh file is
    /// created.
    pub fn open(path: &Path, min_capacity: u64) -> io::Result<(Self, Option<PathBuf>)> {
        match open_existing(path)? {
            Existing::Valid(file, map, layout) => {
                let mut this = Self::from_parts(path.to_path_buf(), file, map, layout)?;
                for i in 0..2 {
                    this.slots[i] = verify_record_at(
                        &this.file,
                        layout.slot_offset(i),
                        Limit::Capacity(layout.capacity),
                        path,
                        None,
                    )
                    .ok()
                    .map(|(h, _)| (h.generation, h.last_seq));
                }
                Ok((this, None))
            }
            Existing::Damaged { moved_to, .. } => {
                Ok((Self::create(path, min_capacity)?, Some(moved_to)))
            }
            Existing::Missing => Ok((Self::create(path, min_capacity)?, None)),
        }
    }

    /// A fresh file of capacity `max(min_capacity, 64 KiB)` at `path`, holding nothing.
    fn create(path: &Path, min_capacity: u64) -> io::Result<Self> {
        let capacity = min_capacity.max(MIN_CAPACITY);
        let layout = Layout::new(capacity).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("checkpoint capacity {capacity} is too large"),
            )
        })?;
        let (file, map) = build_file(path, ".new", layout, 0, &[])?;
        Self::from_parts(path.to_path_buf(), file, map, layout)
    }

    /// A writer over a mapped file whose header is valid; it believes both slots empty.
    fn from_parts(path: PathBuf, file: File, map: MmapRaw, layout: Layout) -> io::Result<Self> {
        if (map.len() as u64) < layout.file_len {
            return Err(io::Error::other(format!(
                "mapping of {} is {} bytes, expected at least {}",
                path.display(),
                map.len(),
                layout.file_len
            )));
        }
        if !map.as_ptr().cast::<u64>().is_aligned() {
            return Err(io::Error::other(format!(
                "mapping of {} is not 8-byte aligned",
                path.display()
            )));
        }
        Ok(MmapCheckpoint {
            path,
            file,
            map,
            layout,
            slots: [None, None],
            pending: VecDeque::new(),
            verified: Verified::default(),
            owner: None,
        })
    }

    /// What this writer believes each slot holds: `(generation, last_seq)` of a valid
    /// record, or `None`. After a [`MmapCheckpoint::write`], the slot not written holds
    /// the checkpoint before it (the fallback if the new one is ever found damaged).
    /// After [`restore`](Self::restore), a slot still being verified counts as holding
    /// what its header says, until found damaged (see the invariant there).
    pub fn slot_contents(&self) -> [Option<(u64, u64)>; 2] {
        self.slots
    }

    /// What the slot that does not hold the newest checkpoint holds: the fallback.
    pub fn older(&self) -> Option<(u64, u64)> {
        let newest = self.newest()?;
        self.slots[1 - newest]
    }

    /// Index of the slot holding the newest valid checkpoint (same order as [`scan`]).
    fn newest(&self) -> Option<usize> {
        match self.slots {
            [None, None] => None,
            [Some(_), None] => Some(0),
            [None, Some(_)] => Some(1),
            [Some(a), Some(b)] => Some(if b > a { 1 } else { 0 }),
        }
    }

    /// Copies `data` into the mapping at `offset`.
    fn copy_in(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let start = usize::try_from(offset).ok();
        let end = start.and_then(|s| s.checked_add(data.len()));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(io::Error::other("checkpoint write outside the mapping"));
        };
        if end > self.map.len() {
            return Err(io::Error::other("checkpoint write outside the mapping"));
        }
        // SAFETY: `start..end` lies within the mapping (checked above), which stays mapped
        // while `self.map` lives; the file is never truncated, so the pages are backed.
        // `data` is ordinary process memory, so it cannot overlap the mapping's pages.
        // No Rust reference to the mapping exists; concurrent readers are other processes
        // using pread, for which a torn view is detected by the checksums. Within this
        // process, `&mut self` on `write` excludes `set_executing`, which only touches
        // bytes 64..72 (never written here).
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                self.map.as_mut_ptr().add(start),
                data.len(),
            );
        }
        Ok(())
    }

    /// Writes a checkpoint into the slot that does not hold the newest valid checkpoint:
    /// zero its header, write the payload, then write the header. A payload larger than the
    /// capacity grows the file (see the module doc). Returns the slot written.
    ///
    /// Candidates left pending by [`restore`](Self::restore) are verified first (their
    /// outcome stays for [`take_verified`](Self::take_verified)): a damaged one is known
    /// before it is overwritten, and none is read while being rewritten.
    pub fn write(&mut self, generation: u64, last_seq: u64, payload: &[u8]) -> io::Result<Source> {
        let version = version_of(self.owner.as_ref(), false);
        self.write_parts(version, generation, last_seq, &[payload])
    }

    /// [`write`](Self::write) of a format-version-3 record holding the worker's
    /// idempotency `keys` beside the actor's `state` ([`Sections`]), neither copied
    /// into a buffer first.
    pub fn write_sectioned(
        &mut self,
        generation: u64,
        last_seq: u64,
        keys: &[u8],
        state: &[u8],
    ) -> io::Result<Source> {
        let keys_len = (keys.len() as u64).to_le_bytes();
        let parts = section_parts(&keys_len, keys, state);
        self.write_parts(SECTIONED_FORMAT_VERSION, generation, last_seq, &parts)
    }

    fn write_parts(
        &mut self,
        version: u32,
        generation: u64,
        last_seq: u64,
        parts: &[&[u8]],
    ) -> io::Result<Source> {
        self.verify_all();
        let len: usize = parts.iter().map(|p| p.len()).sum();
        if len as u64 > self.layout.capacity {
            return self.grow_and_write(version, generation, last_seq, &parts.concat());
        }
        let target = match self.newest() {
            Some(0) => 1,
            _ => 0,
        };
        let offset = self.layout.slot_offset(target);
        let header = encode_header_parts(version, generation, last_seq, parts, self.owner.as_ref());
        self.slots[target] = None;
        self.copy_in(offset, &[0u8; RECORD_HEADER_LEN])?;
        fence(Ordering::Release);
        let mut at = offset + RECORD_HEADER_LEN as u64;
        for part in parts {
            self.copy_in(at, part)?;
            at += part.len() as u64;
        }
        fence(Ordering::Release);
        self.copy_in(offset, &header)?;
        fence(Ordering::Release);
        self.slots[target] = Some((generation, last_seq));
        Ok(Source::slot(target))
    }

    fn grow_and_write(
        &mut self,
        version: u32,
        generation: u64,
        last_seq: u64,
        payload: &[u8],
    ) -> io::Result<Source> {
        let len = payload.len() as u64;
        let too_large = || {
            io::Error::new(
                io::ErrorKind::InvalidInput,
                format!("checkpoint payload of {len} bytes is too large"),
            )
        };
        let capacity = len
            .checked_mul(2)
            .and_then(u64::checked_next_power_of_two)
            .ok_or_else(too_large)?
            .max(MIN_CAPACITY);
        let layout = Layout::new(capacity).ok_or_else(too_large)?;

        // The previous newest record, re-read and re-verified from our own file.
        let previous = match self.newest() {
            Some(i) => read_record_at(
                &self.file,
                self.layout.slot_offset(i),
                Limit::Capacity(self.layout.capacity),
                &self.path,
                None,
            )
            .ok(),
            None => None,
        };
        let mut executing = [0u8; 8];
        self.file
            .read_exact_at(&mut executing, EXECUTING_OFFSET)
            .map_err(io_ctx("read", &self.path))?;
        let executing = u64::from_le_bytes(executing);

        // Both records name this writer's owner: the previous one was read from its own
        // file, where nothing else is ever restored from (foreign records are refused).
        let owner = self.owner;
        let new_record =
            encode_record_version(version, generation, last_seq, payload, owner.as_ref());
        let prev_record = previous.as_ref().map(|c| {
            let version = if c.version == SECTIONED_FORMAT_VERSION {
                c.version
            } else {
                version_of(owner.as_ref(), false)
            };
            encode_record_version(
                version,
                c.generation,
                c.last_seq,
                &c.payload,
                owner.as_ref(),
            )
        });
        let mut records: Vec<(usize, &[u8])> = Vec::with_capacity(2);
        if let Some(r) = &prev_record {
            records.push((0, r));
        }
        records.push((1, &new_record));

        let (file, map) = build_file(&self.path, ".grow", layout, executing, &records)?;
        self.file = file;
        self.map = map;
        self.layout = layout;
        self.slots = [
            previous.map(|c| (c.generation, c.last_seq)),
            Some((generation, last_seq)),
        ];
        Ok(Source::SlotB)
    }

    /// Stores the `executing_seq` word (atomic u64 store, Release) through the mapping.
    pub fn set_executing(&self, seq: u64) {
        // The mapping is at least MMAP_HEADER_LEN (4096) bytes long and 8-byte aligned
        // (both checked in `from_parts`), so offset 64 is in bounds and aligned.
        let ptr = self
            .map
            .as_mut_ptr()
            .wrapping_add(EXECUTING_OFFSET as usize)
            .cast::<u64>();
        // SAFETY: `ptr` is in bounds and 8-byte aligned (see above) and valid for reads and
        // writes while `self.map` lives, which outlives this temporary. Within this process
        // the word is only ever accessed atomically (here); `copy_in` never writes bytes
        // 64..72. Other processes only read it with pread.
        let word = unsafe { AtomicU64::from_ptr(ptr) };
        word.store(seq, Ordering::Release);
    }

    /// Names `owner` in every record written from now on (format version 2).
    pub fn set_owner(&mut self, owner: OwnerTag) {
        self.owner = Some(owner);
    }

    /// Payload bytes each slot can hold.
    pub fn capacity(&self) -> u64 {
        self.layout.capacity
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

/// Opens and maps an existing mmap file. A file whose header or length is damaged is
/// renamed aside to `<path>.corrupt-<unix nanos>` (it is never overwritten). An I/O
/// error is an error: nothing can be concluded about the file.
fn open_existing(path: &Path) -> io::Result<Existing> {
    let file = match safefs::open_rw(path) {
        Ok(file) => Some(file),
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Existing::Missing),
        // A link in its place is never followed, nor left in the way: moved aside (the
        // link, not its target) like a damaged file.
        Err(e) if safefs::is_symlink_error(&e) => None,
        Err(e) => return Err(io_ctx("open", path)(e)),
    };
    let error = match file {
        Some(file) => match read_file_layout(&file, path) {
            Ok(layout) => {
                let map = MmapRaw::map_raw(&file).map_err(io_ctx("mmap", path))?;
                return Ok(Existing::Valid(file, map, layout));
            }
            Err(CheckpointError::Io(msg)) => return Err(io::Error::other(msg)),
            Err(error) => error,
        },
        None => CheckpointError::Io("a symbolic link (never followed)".to_string()),
    };
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    let moved_to = with_suffix(path, &format!(".corrupt-{nanos}"));
    fs::rename(path, &moved_to).map_err(|e| {
        io::Error::new(
            e.kind(),
            format!(
                "rename of {} to {}: {e}",
                path.display(),
                moved_to.display()
            ),
        )
    })?;
    Ok(Existing::Damaged { error, moved_to })
}

// ---------------------------------------------------------------------------------------
// Restore: the newest candidate first, the older ones after the worker is ready.
//
// Invariant (what keeps a call from ever being lost to a damaged checkpoint):
//
// * Before the worker reports ready, the candidates are tried newest first (by the
//   generation and last_seq of their intact headers); the first whose payload verifies
//   is restored. Every newer one failed verification and is reported (`rejected`). Older
//   ones are *pending*: their headers are intact, their payloads not read yet.
// * A pending candidate counts, for the supervisor, as a checkpoint that may still serve
//   a restore: its mmap slot is listed in the writer's `slot_contents` (and so in the
//   worker's ready report) with the key its header claims. The supervisor keeps every
//   logged call after the oldest checkpoint it counts, so the log covers a pending
//   candidate exactly as it covers a verified one. A candidate stops counting only when
//   it is known damaged ([`MmapCheckpoint::take_verified`], reported to the supervisor)
//   or overwritten by a newer checkpoint (reported with that checkpoint).
// * The writer never overwrites the restored checkpoint: every newer slot failed and is
//   believed empty, every pending one is older, so the restored slot is the newest the
//   writer knows, and [`MmapCheckpoint::write`] always writes the other slot.
// * Before any slot is overwritten (or the file rebuilt larger), `write` finishes the
//   verification of whatever is pending, so a damaged older slot is reported before it
//   disappears, and no verification ever reads a slot being rewritten.
// * A worker killed before the verification finished leaves the files as they were; the
//   next restore starts over, newest first.

/// Payload bytes checksummed per [`MmapCheckpoint::verify_step`]: short enough that a
/// message arriving meanwhile waits only some tens of microseconds.
const VERIFY_STEP: u64 = 256 << 10;

/// A restore candidate that failed verification: which one, in which file, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejected {
    pub source: Source,
    pub path: PathBuf,
    pub error: CheckpointError,
}

impl fmt::Display for Rejected {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} of {}: {}",
            self.source,
            self.path.display(),
            self.error
        )
    }
}

/// What verifying the candidates older than the restored one found.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Verified {
    /// Candidates whose payload checksum did not match (or could not be read).
    pub rejected: Vec<Rejected>,
    /// Candidates that verified: where, and their (generation, last_seq).
    pub passed: Vec<(Source, u64, u64)>,
}

/// A restore candidate older than the restored one, whose payload is verified after the
/// worker is ready, [`VERIFY_STEP`] bytes at a time.
#[derive(Debug)]
struct Pending {
    source: Source,
    header: RecordHeader,
    /// Payload bytes checksummed so far, and their checksum.
    done: u64,
    crc: u32,
    from: PendingFrom,
}

#[derive(Debug)]
enum PendingFrom {
    /// A slot of the writer's own file, read through its mapping.
    Slot(usize),
    /// The disk copy, opened at restore (a later replacement does not change what this
    /// descriptor reads), read with `pread` into `buf`.
    Disk {
        file: File,
        path: PathBuf,
        buf: Vec<u8>,
    },
}

/// The restored checkpoint's payload.
#[derive(Debug)]
enum RestoredPayload {
    None,
    /// In this slot of the writer's mapping (`len` bytes, verified there).
    Mapped {
        slot: usize,
        len: u64,
    },
    /// Read from the disk copy (and verified as read).
    Read(Vec<u8>),
}

/// What [`MmapCheckpoint::restore`] found and chose.
#[derive(Debug)]
pub struct Restore {
    /// The writer of the mmap file. Its newest slot holds the restored checkpoint when it
    /// came from that file; the older candidates wait in it to be verified.
    pub writer: MmapCheckpoint,
    /// The restored checkpoint: where it came from, its generation and last_seq. `None`:
    /// no candidate verified (a fresh start).
    pub chosen: Option<(Source, u64, u64)>,
    /// Candidates found damaged before the chosen one: every newer one, and any whose
    /// header is unreadable. Never empty slots or missing files.
    pub rejected: Vec<Rejected>,
    /// A damaged mmap file that was renamed aside (the writer made a fresh one).
    pub moved_aside: Option<PathBuf>,
    payload: RestoredPayload,
    /// The restored record's format version (0: none restored).
    version: u32,
}

impl Restore {
    /// The restored checkpoint's payload (empty for a fresh start). For a checkpoint from
    /// the mmap file these are the mapped bytes themselves, verified where they lie: a
    /// large state is neither copied nor read twice.
    pub fn payload(&self) -> &[u8] {
        match &self.payload {
            RestoredPayload::None => &[],
            RestoredPayload::Mapped { slot, len } => self.writer.slot_payload(*slot, *len),
            RestoredPayload::Read(bytes) => bytes,
        }
    }

    /// The restored payload's sections: the actor's state and the worker's keys.
    pub fn sections(&self) -> Result<Sections<'_>, CheckpointError> {
        split_sections(self.version, self.payload())
    }
}

/// One restore candidate with an intact header.
struct Candidate {
    source: Source,
    header: RecordHeader,
    from: CandidateFrom,
}

enum CandidateFrom {
    Slot(usize),
    Disk(File),
}

impl Candidate {
    /// Restore order: the highest key first.
    fn key(&self) -> (u64, u64, u8) {
        (
            self.header.generation,
            self.header.last_seq,
            self.source.rank(),
        )
    }
}

impl MmapCheckpoint {
    /// Restore, newest candidate first, by the process that is to write the mmap file
    /// (no other process writes it meanwhile: the previous worker is gone).
    ///
    /// The candidates are both slots of the file at `mmap_path` and the disk copy at
    /// `disk_path`. Only their 64-byte headers are read up front; the payloads are then
    /// verified in the order of (generation, last_seq) down until one passes, and that
    /// one is restored ([`Restore::payload`]). The older candidates are left to the
    /// writer, to verify after the worker is ready ([`verify_step`](Self::verify_step));
    /// see the invariant at the top of this section. If the file is missing or damaged
    /// (then renamed aside), a fresh one is made, large enough for the disk copy twice.
    pub fn restore(mmap_path: &Path, disk_path: &Path) -> io::Result<Restore> {
        Self::restore_owned(mmap_path, disk_path, None)
    }

    /// [`restore`](Self::restore) for `owner`: a candidate of another owner is rejected
    /// ([`CheckpointError::Foreign`]), and the writer names `owner` in what it writes.
    pub fn restore_owned(
        mmap_path: &Path,
        disk_path: &Path,
        owner: Option<&OwnerTag>,
    ) -> io::Result<Restore> {
        let mut rejected = Vec::new();
        let mut reject = |source: Source, path: &Path, error: CheckpointError| {
            if !matches!(error, CheckpointError::Missing | CheckpointError::Empty) {
                rejected.push(Rejected {
                    source,
                    path: path.to_path_buf(),
                    error,
                });
            }
        };
        let mut candidates = Vec::with_capacity(3);
        let disk = open_disk_copy(disk_path).and_then(|(file, len)| {
            read_header_at(&file, 0, Limit::FileLen(len), disk_path, owner).map(|h| (file, h))
        });
        match disk {
            Ok((file, header)) => candidates.push(Candidate {
                source: Source::Disk,
                header,
                from: CandidateFrom::Disk(file),
            }),
            Err(e) => reject(Source::Disk, disk_path, e),
        }
        let mut moved_aside = None;
        let mut writer = match open_existing(mmap_path)? {
            Existing::Valid(file, map, layout) => {
                for i in 0..2 {
                    let offset = layout.slot_offset(i);
                    match read_header_at(
                        &file,
                        offset,
                        Limit::Capacity(layout.capacity),
                        mmap_path,
                        owner,
                    ) {
                        Ok(header) => candidates.push(Candidate {
                            source: Source::slot(i),
                            header,
                            from: CandidateFrom::Slot(i),
                        }),
                        Err(e) => reject(Source::slot(i), mmap_path, e),
                    }
                }
                Self::from_parts(mmap_path.to_path_buf(), file, map, layout)?
            }
            existing => {
                if let Existing::Damaged { error, moved_to } = existing {
                    reject(Source::SlotA, mmap_path, error.clone());
                    reject(Source::SlotB, mmap_path, error);
                    moved_aside = Some(moved_to);
                }
                let disk_len = candidates.first().map_or(0, |c| c.header.payload_len);
                Self::create(mmap_path, disk_len.saturating_mul(2))?
            }
        };
        writer.owner = owner.copied();
        candidates.sort_unstable_by_key(|c| std::cmp::Reverse(c.key()));
        let mut chosen = None;
        let mut payload = RestoredPayload::None;
        let mut version = 0;
        let mut older = candidates.into_iter();
        for c in older.by_ref() {
            let h = c.header;
            let verified = match c.from {
                CandidateFrom::Slot(i) => check_payload(&h, writer.slot_payload(i, h.payload_len))
                    .map(|()| RestoredPayload::Mapped {
                        slot: i,
                        len: h.payload_len,
                    }),
                CandidateFrom::Disk(file) => {
                    read_vec_at(&file, RECORD_HEADER_LEN as u64, h.payload_len, disk_path).and_then(
                        |bytes| check_payload(&h, &bytes).map(|()| RestoredPayload::Read(bytes)),
                    )
                }
            };
            match verified {
                Ok(p) => {
                    if let RestoredPayload::Mapped { slot, .. } = p {
                        writer.slots[slot] = Some((h.generation, h.last_seq));
                    }
                    chosen = Some((c.source, h.generation, h.last_seq));
                    payload = p;
                    version = h.version;
                    break;
                }
                Err(e) => {
                    let path = if c.source == Source::Disk {
                        disk_path
                    } else {
                        mmap_path
                    };
                    reject(c.source, path, e);
                }
            }
        }
        for c in older {
            let from = match c.from {
                CandidateFrom::Slot(i) => {
                    // Counted until found damaged: see the invariant above.
                    writer.slots[i] = Some((c.header.generation, c.header.last_seq));
                    PendingFrom::Slot(i)
                }
                CandidateFrom::Disk(file) => PendingFrom::Disk {
                    file,
                    path: disk_path.to_path_buf(),
                    buf: Vec::new(),
                },
            };
            writer.pending.push_back(Pending {
                source: c.source,
                header: c.header,
                done: 0,
                crc: 0,
                from,
            });
        }
        Ok(Restore {
            writer,
            chosen,
            rejected,
            moved_aside,
            payload,
            version,
        })
    }

    /// The first `len` bytes (at most the capacity) of slot `index`'s payload area, in
    /// the mapping.
    fn slot_payload(&self, index: usize, len: u64) -> &[u8] {
        let start = self.layout.slot_offset(index.min(1)) + RECORD_HEADER_LEN as u64;
        let len = len.min(self.layout.capacity);
        // SAFETY: `start..start + len` lies within the mapping: `len` is at most the slot
        // capacity, so the range ends inside the slot, at or before `layout.file_len`,
        // which `from_parts` checked is at most the mapping's length (all of which fits
        // in usize: `Layout::new`). The mapping lives as long as `self`, and the slice
        // borrows `self`: `write` and `grow_and_write`, the only code of this process
        // that writes slot bytes, take `&mut self` and cannot run while it exists;
        // `set_executing` only writes bytes 64..72, outside every slot. No other
        // process writes the file (the supervisor reads it with pread; the previous
        // worker is gone before a new one restores), and u8 has no invalid values.
        unsafe { std::slice::from_raw_parts(self.map.as_ptr().add(start as usize), len as usize) }
    }

    /// True while candidates older than the restored one are still to be verified.
    pub fn verification_pending(&self) -> bool {
        !self.pending.is_empty()
    }

    /// Verifies the next 256 KiB of the pending candidates. Returns true
    /// while some remain; then [`take_verified`](Self::take_verified) has the outcome.
    pub fn verify_step(&mut self) -> bool {
        let Some(mut p) = self.pending.pop_front() else {
            return false;
        };
        match self.advance(&mut p) {
            Ok(false) => self.pending.push_front(p),
            Ok(true) => {
                let (g, l) = (p.header.generation, p.header.last_seq);
                self.verified.passed.push((p.source, g, l));
            }
            Err(error) => {
                let path = match p.from {
                    PendingFrom::Slot(i) => {
                        // Damaged: it can serve no restore, and the next write may use it.
                        self.slots[i] = None;
                        self.path.clone()
                    }
                    PendingFrom::Disk { path, .. } => path,
                };
                self.verified.rejected.push(Rejected {
                    source: p.source,
                    path,
                    error,
                });
            }
        }
        !self.pending.is_empty()
    }

    /// Checksums the next step of `p`; true when all of it verified.
    fn advance(&self, p: &mut Pending) -> Result<bool, CheckpointError> {
        let len = p.header.payload_len;
        let n = (len - p.done).min(VERIFY_STEP);
        let bytes = match &mut p.from {
            PendingFrom::Slot(i) => {
                let all = self.slot_payload(*i, len);
                // `done + n <= len <= capacity`, which fits in usize (see `Layout::new`).
                &all[p.done as usize..(p.done + n) as usize]
            }
            PendingFrom::Disk { file, path, buf } => {
                buf.resize(n as usize, 0);
                let offset = RECORD_HEADER_LEN as u64 + p.done;
                read_exact_at(file, buf, offset, path)?;
                &buf[..]
            }
        };
        p.crc = crc32c::crc32c_append(p.crc, bytes);
        p.done += n;
        if p.done < len {
            return Ok(false);
        }
        if p.crc != p.header.payload_crc {
            return Err(CheckpointError::PayloadChecksum {
                expected: p.header.payload_crc,
                found: p.crc,
            });
        }
        Ok(true)
    }

    /// Verifies every pending candidate now.
    pub fn verify_all(&mut self) {
        while self.verify_step() {}
    }

    /// Once nothing is pending: what the verification of the older candidates found,
    /// if there was any to verify. Returned once.
    pub fn take_verified(&mut self) -> Option<Verified> {
        if self.verification_pending() || self.verified == Verified::default() {
            return None;
        }
        Some(std::mem::take(&mut self.verified))
    }
}

/// Allocates the blocks of `file` up to `len` bytes with fallocate(2). `Ok(false)`: the
/// file system does not support it (the caller writes zeros instead).
fn allocate(file: &File, len: u64) -> io::Result<bool> {
    let len = libc::off_t::try_from(len).map_err(|_| io::Error::other("file too large"))?;
    loop {
        // SAFETY: fallocate only acts on the descriptor, which `file` keeps open; it reads
        // and writes no memory of ours.
        let r = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len) };
        if r == 0 {
            return Ok(true);
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EINTR) => continue,
            Some(libc::EOPNOTSUPP | libc::ENOSYS) => return Ok(false),
            _ => return Err(e),
        }
    }
}

/// Builds a complete mmap file at `<path><suffix>` (header, zero-filled slots, the given
/// records), fsyncs and maps it, then renames it over `path`. Returns the open file and its
/// mapping. The file is fully written (not sparse), so later stores through the mapping
/// need no new blocks.
fn build_file(
    path: &Path,
    suffix: &str,
    layout: Layout,
    executing: u64,
    records: &[(usize, &[u8])],
) -> io::Result<(File, MmapRaw)> {
    let tmp = with_suffix(path, suffix);
    // A leftover from a killed worker: unlink rather than truncate (nobody can fault on it).
    safefs::remove_if_present(&tmp).map_err(io_ctx("remove", &tmp))?;
    let file = safefs::create_new(&tmp).map_err(io_ctx("create", &tmp))?;
    let built = (|| {
        let write =
            |buf: &[u8], off: u64| file.write_all_at(buf, off).map_err(io_ctx("write", &tmp));
        // Every block of the file, reserved without writing it (unwritten extents read as
        // zeros): a start of many actors wrote their empty slots' zeros, the largest part
        // of a fresh worker's CPU. Where the file system cannot, the zeros are written.
        if !allocate(&file, layout.file_len).map_err(io_ctx("fallocate", &tmp))? {
            let zeros = vec![0u8; 1 << 20];
            let mut off = MMAP_HEADER_LEN;
            while off < layout.file_len {
                let n = (layout.file_len - off).min(zeros.len() as u64) as usize;
                write(&zeros[..n], off)?;
                off += n as u64;
            }
        }
        write(&encode_file_header(layout.capacity, executing), 0)?;
        for &(slot, record) in records {
            if record.len() as u64 > record_len(layout.capacity) {
                return Err(io::Error::other("record larger than the slot"));
            }
            write(record, layout.slot_offset(slot))?;
        }
        // A file that holds no checkpoint yet has nothing to lose: after a power loss it
        // is found damaged or missing and made again. One with records is synced before
        // it replaces the old file.
        if !records.is_empty() {
            file.sync_data().map_err(io_ctx("fsync", &tmp))?;
        }
        let map = MmapRaw::map_raw(&file).map_err(io_ctx("mmap", &tmp))?;
        fs::rename(&tmp, path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("rename of {} to {}: {e}", tmp.display(), path.display()),
            )
        })?;
        Ok(map)
    })();
    match built {
        Ok(map) => Ok((file, map)),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::fs::OpenOptions;

    fn dir() -> tempfile::TempDir {
        tempfile::tempdir().unwrap()
    }

    fn paths(d: &tempfile::TempDir) -> (PathBuf, PathBuf) {
        (d.path().join("a.ckpt"), d.path().join("a.checkpoint"))
    }

    fn patch(path: &Path, offset: u64, f: impl FnOnce(u8) -> u8) {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .unwrap();
        let mut b = [0u8; 1];
        file.read_exact_at(&mut b, offset).unwrap();
        file.write_all_at(&[f(b[0])], offset).unwrap();
    }

    fn slot_off(cap: u64, i: usize) -> u64 {
        Layout::new(cap).unwrap().slot_offset(i)
    }

    fn candidate(s: &Scan, src: Source) -> Result<(u64, u64), CheckpointError> {
        s.candidates
            .iter()
            .find(|(x, _)| *x == src)
            .unwrap()
            .1
            .clone()
    }

    #[test]
    fn record_round_trip() {
        for payload in [&b""[..], b"x", &[7u8; 5000]] {
            let rec = encode_record(3, 99, payload);
            assert_eq!(rec.len(), 64 + payload.len());
            let ck = decode_record(&rec).unwrap();
            assert_eq!(
                ck,
                Checkpoint {
                    generation: 3,
                    last_seq: 99,
                    payload: payload.to_vec(),
                    version: FORMAT_VERSION,
                }
            );
            // Trailing bytes are ignored.
            let mut longer = rec.clone();
            longer.extend_from_slice(&[1, 2, 3]);
            assert_eq!(decode_record(&longer).unwrap(), ck);
        }
    }

    #[test]
    fn decode_errors() {
        assert_eq!(decode_record(&[]), Err(CheckpointError::Empty));
        assert_eq!(decode_record(&[0u8; 100]), Err(CheckpointError::Empty));
        assert_eq!(
            decode_record(&[1u8; 10]),
            Err(CheckpointError::Truncated {
                expected: 64,
                found: 10
            })
        );
        let rec = encode_record(1, 2, b"hello world");
        assert_eq!(
            decode_record(&rec[..70]),
            Err(CheckpointError::Truncated {
                expected: 75,
                found: 70
            })
        );
        let mut bad = rec.clone();
        bad[0] = b'X';
        assert_eq!(decode_record(&bad), Err(CheckpointError::BadMagic));
        let mut bad = rec.clone();
        bad[20] ^= 1;
        assert_eq!(decode_record(&bad), Err(CheckpointError::HeaderChecksum));
        let mut bad = rec.clone();
        bad[70] ^= 0x80;
        assert!(matches!(
            decode_record(&bad),
            Err(CheckpointError::PayloadChecksum { .. })
        ));
        // A future version with a valid header checksum.
        let mut v4 = rec.clone();
        put_u32(&mut v4, 8, 4);
        let crc = crc32c::crc32c(&v4[..60]);
        put_u32(&mut v4, 60, crc);
        assert_eq!(
            decode_record(&v4),
            Err(CheckpointError::UnsupportedVersion(4))
        );
    }

    #[test]
    fn a_sectioned_record_keeps_keys_and_state_apart_through_every_copy() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let owner = OwnerTag::new("a", [3; 16]);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.set_owner(owner);
        m.write(1, 10, b"plain state").unwrap();
        m.write_sectioned(2, 20, b"the keys", b"the state").unwrap();
        let slots = read_mmap_slots_owned(&mp, Some(&owner));
        let newest = slots[1].1.as_ref().unwrap();
        assert_eq!(newest.version, SECTIONED_FORMAT_VERSION);
        let want = Sections {
            keys: b"the keys",
            state: b"the state",
        };
        assert_eq!(newest.sections(), Ok(want));
        // The older, unsectioned record is all state.
        let older = slots[0].1.as_ref().unwrap();
        assert_eq!(older.sections().unwrap().state, b"plain state");
        assert!(older.sections().unwrap().keys.is_empty());
        // The disk copy keeps the format, so does a restore from it.
        write_disk_copy_of(&dp, newest, Some(&owner)).unwrap();
        assert_eq!(
            read_disk_copy_owned(&dp, Some(&owner)).unwrap().sections(),
            Ok(want)
        );
        fs::remove_file(&mp).unwrap();
        let r = MmapCheckpoint::restore_owned(&mp, &dp, Some(&owner)).unwrap();
        assert_eq!(r.chosen, Some((Source::Disk, 2, 20)));
        assert_eq!(r.sections(), Ok(want));
        // So does a restore from the mapping.
        let mut w = r.writer;
        w.write_sectioned(3, 30, b"", b"later").unwrap();
        drop(w);
        let r = MmapCheckpoint::restore_owned(&mp, &dp, Some(&owner)).unwrap();
        assert_eq!(r.chosen.map(|c| c.1), Some(3));
        assert_eq!(
            r.sections(),
            Ok(Sections {
                keys: b"",
                state: b"later"
            })
        );
    }

    #[test]
    fn growth_keeps_both_records_sectioned() {
        let d = dir();
        let (mp, _) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write_sectioned(1, 10, b"k1", b"small").unwrap();
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(
            m.write_sectioned(2, 20, b"k2", &big).unwrap(),
            Source::SlotB
        );
        let slots = read_mmap_slots(&mp);
        let sections = |i: usize| {
            let ck = slots[i].1.as_ref().unwrap();
            let s = ck.sections().unwrap();
            (ck.version, s.keys.to_vec(), s.state.to_vec())
        };
        assert_eq!(
            sections(0),
            (SECTIONED_FORMAT_VERSION, b"k1".to_vec(), b"small".to_vec())
        );
        assert_eq!(sections(1), (SECTIONED_FORMAT_VERSION, b"k2".to_vec(), big));
    }

    #[test]
    fn a_keys_section_longer_than_its_payload_is_reported() {
        let mut payload = 100u64.to_le_bytes().to_vec();
        payload.extend_from_slice(b"short");
        assert_eq!(
            split_sections(SECTIONED_FORMAT_VERSION, &payload),
            Err(CheckpointError::BadSections {
                keys_len: 100,
                payload_len: 13
            })
        );
        assert!(split_sections(SECTIONED_FORMAT_VERSION, b"1234567").is_err());
        // Versions 1 and 2 have no sections: the same bytes are all state.
        assert_eq!(
            split_sections(OWNED_FORMAT_VERSION, &payload)
                .unwrap()
                .state,
            payload
        );
    }

    #[test]
    fn a_record_of_another_owner_is_refused_and_one_without_an_owner_read() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let ours = OwnerTag::new("a", [1; 16]);
        let other_actor = OwnerTag::new("b", [1; 16]);
        let other_dir = OwnerTag::new("a", [2; 16]);
        assert!(ours.is_actor("a") && !ours.is_actor("b"));
        write_disk_copy_owned(&dp, 5, 50, b"b's state", Some(&other_actor)).unwrap();
        for (expect, refused) in [
            (Some(&ours), true),
            (Some(&other_actor), false),
            (None, false),
        ] {
            let s = scan_owned(&mp, &dp, expect);
            assert_eq!(s.chosen.is_none(), refused, "{expect:?}");
            let r = read_disk_copy_owned(&dp, expect);
            assert_eq!(r.is_err(), refused);
        }
        let e = read_disk_copy_owned(&dp, Some(&ours)).unwrap_err();
        assert_eq!(
            e,
            CheckpointError::Foreign {
                found: other_actor,
                expected: ours
            }
        );
        assert!(e.to_string().contains("belongs to actor #"), "{e}");
        // The worker's restore refuses it too, and names its own owner from then on.
        let r = MmapCheckpoint::restore_owned(&mp, &dp, Some(&ours)).unwrap();
        assert!(r.chosen.is_none());
        assert!(
            r.rejected
                .iter()
                .any(|x| matches!(x.error, CheckpointError::Foreign { .. }))
        );
        let mut w = r.writer;
        w.write(1, 1, b"mine").unwrap();
        drop(w);
        let slots = read_mmap_slots_owned(&mp, Some(&other_dir));
        assert!(
            slots
                .iter()
                .any(|(_, r)| matches!(r, Err(CheckpointError::Foreign { .. })))
        );
        assert!(
            read_mmap_slots_owned(&mp, Some(&ours))
                .iter()
                .any(|(_, r)| r.is_ok())
        );
        // A version-1 record (no owner) is read by every reader.
        write_disk_copy(&dp, 9, 90, b"old").unwrap();
        assert_eq!(
            read_disk_copy_owned(&dp, Some(&ours)).unwrap().payload,
            b"old"
        );
    }

    #[test]
    fn error_messages() {
        let e = CheckpointError::PayloadChecksum {
            expected: 0xdead_beef,
            found: 0x12,
        };
        assert_eq!(
            e.to_string(),
            "payload checksum mismatch (expected 0xdeadbeef, found 0x00000012)"
        );
        assert_eq!(
            CheckpointError::Truncated {
                expected: 5000,
                found: 100
            }
            .to_string(),
            "truncated: header says 5000 bytes, 100 present"
        );
        assert!(
            CheckpointError::HeaderChecksum
                .to_string()
                .contains("torn header")
        );
        assert!(CheckpointError::BadMagic.to_string().contains("bad magic"));
        assert_eq!(Source::SlotA.to_string(), "mmap slot A");
        assert_eq!(Source::SlotB.to_string(), "mmap slot B");
        assert_eq!(Source::Disk.to_string(), "disk copy");
    }

    #[test]
    fn mmap_round_trip_and_alternating_slots() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert!(moved.is_none());
        assert_eq!(m.capacity(), MIN_CAPACITY);
        assert_eq!(m.path(), mp.as_path());
        let slots = read_mmap_slots(&mp);
        assert_eq!(slots[0], (Source::SlotA, Err(CheckpointError::Empty)));
        assert_eq!(slots[1], (Source::SlotB, Err(CheckpointError::Empty)));

        assert_eq!(m.write(1, 10, b"one").unwrap(), Source::SlotA);
        assert_eq!(m.write(2, 20, b"two").unwrap(), Source::SlotB);
        assert_eq!(m.write(3, 30, b"three").unwrap(), Source::SlotA);
        let slots = read_mmap_slots(&mp);
        assert_eq!(slots[0].1.as_ref().unwrap().payload, b"three");
        assert_eq!(slots[1].1.as_ref().unwrap().payload, b"two");

        let s = scan(&mp, &dp);
        let (src, ck) = s.chosen.clone().unwrap();
        assert_eq!(src, Source::SlotA);
        assert_eq!(
            (ck.generation, ck.last_seq, &ck.payload[..]),
            (3, 30, &b"three"[..])
        );
        assert_eq!(candidate(&s, Source::Disk), Err(CheckpointError::Missing));
        assert_eq!(candidate(&s, Source::SlotB), Ok((2, 20)));

        // Reopening finds the newest slot and writes the other one.
        drop(m);
        let (mut m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert!(moved.is_none());
        assert_eq!(m.write(4, 40, b"four").unwrap(), Source::SlotB);
        assert_eq!(scan(&mp, &dp).chosen.unwrap().1.payload, b"four");
    }

    #[test]
    fn min_capacity_respected() {
        let d = dir();
        let (mp, _) = paths(&d);
        let (m, _) = MmapCheckpoint::open(&mp, 200_000).unwrap();
        assert_eq!(m.capacity(), 200_000);
        let len = fs::metadata(&mp).unwrap().len();
        assert_eq!(len, Layout::new(200_000).unwrap().file_len);
        assert!(!with_suffix(&mp, ".new").exists());
    }

    #[test]
    fn payload_flip_falls_back_to_other_slot() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(1, 10, b"first").unwrap();
        m.write(2, 20, b"second").unwrap(); // slot B
        drop(m);
        patch(&mp, slot_off(MIN_CAPACITY, 1) + 64 + 2, |b| b ^ 0x04);
        let s = scan(&mp, &dp);
        let (src, ck) = s.chosen.clone().unwrap();
        assert_eq!((src, ck.generation), (Source::SlotA, 1));
        let err = candidate(&s, Source::SlotB).unwrap_err();
        assert!(
            matches!(err, CheckpointError::PayloadChecksum { .. }),
            "{err}"
        );
        assert!(err.to_string().starts_with("payload checksum mismatch"));
    }

    #[test]
    fn header_flip_falls_back_to_other_slot() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(1, 10, b"first").unwrap();
        m.write(2, 20, b"second").unwrap(); // slot B
        drop(m);
        patch(&mp, slot_off(MIN_CAPACITY, 1) + 17, |b| b ^ 0x01);
        let s = scan(&mp, &dp);
        assert_eq!(s.chosen.clone().unwrap().0, Source::SlotA);
        assert_eq!(
            candidate(&s, Source::SlotB),
            Err(CheckpointError::HeaderChecksum)
        );
        // The writer, reopened, treats B as free and writes there, keeping A.
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert_eq!(m.write(3, 30, b"third").unwrap(), Source::SlotB);
    }

    #[test]
    fn interrupted_write_keeps_newest() {
        // Simulate a kill after the header was zeroed and part of the payload written.
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(1, 10, b"first").unwrap(); // A
        m.write(2, 20, b"second").unwrap(); // B
        let a = slot_off(MIN_CAPACITY, 0);
        m.copy_in(a, &[0u8; 64]).unwrap();
        m.copy_in(a + 64, b"partial new payl").unwrap();
        drop(m);
        let s = scan(&mp, &dp);
        assert_eq!(candidate(&s, Source::SlotA), Err(CheckpointError::Empty));
        assert_eq!(s.chosen.clone().unwrap().1.payload, b"second");

        // Kill mid-header: half of a new header over the zeroed one.
        let (m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        let h = encode_header(3, 30, b"third", None);
        m.copy_in(a, &h[..40]).unwrap();
        drop(m);
        let s = scan(&mp, &dp);
        assert_eq!(
            candidate(&s, Source::SlotA),
            Err(CheckpointError::HeaderChecksum)
        );
        assert_eq!(s.chosen.clone().unwrap().1.payload, b"second");
    }

    #[test]
    fn truncated_mmap_file_falls_back_to_disk() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(5, 50, b"mmap").unwrap();
        drop(m);
        write_disk_copy(&dp, 4, 40, b"disk").unwrap();
        OpenOptions::new()
            .write(true)
            .open(&mp)
            .unwrap()
            .set_len(10_000)
            .unwrap();
        let s = scan(&mp, &dp);
        let (src, ck) = s.chosen.clone().unwrap();
        assert_eq!(
            (src, ck.generation, &ck.payload[..]),
            (Source::Disk, 4, &b"disk"[..])
        );
        let expected = CheckpointError::Truncated {
            expected: Layout::new(MIN_CAPACITY).unwrap().file_len,
            found: 10_000,
        };
        assert_eq!(candidate(&s, Source::SlotA), Err(expected.clone()));
        assert_eq!(candidate(&s, Source::SlotB), Err(expected));
        assert_eq!(read_executing(&mp), None);
    }

    #[test]
    fn truncated_disk_copy_is_reported() {
        let d = dir();
        let (mp, dp) = paths(&d);
        write_disk_copy(&dp, 4, 40, &[9u8; 300]).unwrap();
        OpenOptions::new()
            .write(true)
            .open(&dp)
            .unwrap()
            .set_len(100)
            .unwrap();
        let s = scan(&mp, &dp);
        assert!(s.chosen.is_none());
        assert_eq!(candidate(&s, Source::SlotA), Err(CheckpointError::Missing));
        assert_eq!(
            candidate(&s, Source::Disk),
            Err(CheckpointError::Truncated {
                expected: 364,
                found: 100
            })
        );
        fs::write(&dp, b"").unwrap();
        assert_eq!(read_disk_copy(&dp), Err(CheckpointError::Empty));
        fs::write(&dp, b"short").unwrap();
        assert_eq!(
            read_disk_copy(&dp),
            Err(CheckpointError::Truncated {
                expected: 64,
                found: 5
            })
        );
    }

    #[test]
    fn scan_picks_highest_generation() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(3, 30, b"a3").unwrap(); // A
        m.write(4, 40, b"b4").unwrap(); // B
        write_disk_copy(&dp, 7, 70, b"d7").unwrap();
        let s = scan(&mp, &dp);
        assert_eq!(s.chosen.clone().unwrap().0, Source::Disk);
        assert_eq!(s.candidates.len(), 3);
        assert_eq!(candidate(&s, Source::SlotA), Ok((3, 30)));
        assert_eq!(candidate(&s, Source::Disk), Ok((7, 70)));

        m.write(8, 80, b"a8").unwrap(); // A
        assert_eq!(scan(&mp, &dp).chosen.unwrap().0, Source::SlotA);

        // Tie on generation: higher last_seq wins.
        write_disk_copy(&dp, 8, 81, b"d8").unwrap();
        assert_eq!(scan(&mp, &dp).chosen.unwrap().0, Source::Disk);
        // Full tie: the mmap slot wins.
        write_disk_copy(&dp, 8, 80, b"d8").unwrap();
        assert_eq!(scan(&mp, &dp).chosen.unwrap().0, Source::SlotA);
        // Only the disk copy.
        drop(m);
        fs::remove_file(&mp).unwrap();
        let s = scan(&mp, &dp);
        assert_eq!(s.chosen.clone().unwrap().0, Source::Disk);
        assert_eq!(candidate(&s, Source::SlotB), Err(CheckpointError::Missing));
    }

    #[test]
    fn writer_keeps_highest_key_as_newest() {
        // A lower generation written after a higher one does not displace it.
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert_eq!(m.write(5, 50, b"five").unwrap(), Source::SlotA);
        assert_eq!(m.write(2, 20, b"two").unwrap(), Source::SlotB);
        assert_eq!(m.write(3, 30, b"three").unwrap(), Source::SlotB);
        assert_eq!(scan(&mp, &dp).chosen.unwrap().1.generation, 5);
    }

    #[test]
    fn growth_preserves_previous_checkpoint() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(1, 10, b"small").unwrap();
        m.set_executing(77);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        assert_eq!(m.write(2, 20, &big).unwrap(), Source::SlotB);
        assert_eq!(m.capacity(), 262_144);
        assert!(!with_suffix(&mp, ".grow").exists());
        assert_eq!(
            fs::metadata(&mp).unwrap().len(),
            Layout::new(262_144).unwrap().file_len
        );
        let slots = read_mmap_slots(&mp);
        assert_eq!(slots[0].1.as_ref().unwrap().payload, b"small");
        assert_eq!(slots[1].1.as_ref().unwrap().payload, big);
        assert_eq!(read_executing(&mp), Some(77));
        // The new mapping is live: writes and the executing word go to the new file.
        assert_eq!(m.write(3, 30, b"after").unwrap(), Source::SlotA);
        m.set_executing(78);
        assert_eq!(read_executing(&mp), Some(78));
        let s = scan(&mp, &dp);
        assert_eq!(s.chosen.clone().unwrap().1.payload, b"after");
        assert_eq!(candidate(&s, Source::SlotB), Ok((2, 20)));
        // Reopen: valid file, capacity kept.
        drop(m);
        let (m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert!(moved.is_none());
        assert_eq!(m.capacity(), 262_144);
    }

    #[test]
    fn growth_from_empty_file() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        let big = vec![3u8; MIN_CAPACITY as usize + 1];
        assert_eq!(m.write(1, 1, &big).unwrap(), Source::SlotB);
        let s = scan(&mp, &dp);
        assert_eq!(candidate(&s, Source::SlotA), Err(CheckpointError::Empty));
        assert_eq!(s.chosen.clone().unwrap().1.payload, big);
    }

    #[test]
    fn corrupt_file_header_is_moved_aside() {
        let d = dir();
        let (mp, _) = paths(&d);
        let garbage = vec![0xabu8; 5000];
        fs::write(&mp, &garbage).unwrap();
        let (mut m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        let moved = moved.unwrap();
        assert!(
            moved
                .file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("a.ckpt.corrupt-")
        );
        assert_eq!(fs::read(&moved).unwrap(), garbage);
        assert_eq!(read_executing(&mp), Some(0));
        m.write(1, 1, b"fresh").unwrap();
        assert_eq!(
            read_mmap_slots(&mp)[0].1.as_ref().unwrap().payload,
            b"fresh"
        );
    }

    #[test]
    fn short_or_flipped_file_is_moved_aside() {
        let d = dir();
        let (mp, _) = paths(&d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.write(1, 1, b"x").unwrap();
        drop(m);
        // Valid header, but the file is too short for its slots.
        let head = fs::read(&mp).unwrap()[..8192].to_vec();
        fs::write(&mp, &head).unwrap();
        let (m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert_eq!(fs::read(moved.unwrap()).unwrap(), head);
        drop(m);
        // A flipped capacity bit.
        patch(&mp, 17, |b| b ^ 0x10);
        assert_eq!(read_executing(&mp), None);
        let slots = read_mmap_slots(&mp);
        assert_eq!(slots[0].1, Err(CheckpointError::HeaderChecksum));
        let (_m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert!(moved.is_some());
        // An empty file.
        drop(_m);
        fs::write(&mp, b"").unwrap();
        let (_m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert!(moved.is_some());
        assert_eq!(read_executing(&mp), Some(0));
    }

    #[test]
    fn executing_word_round_trip() {
        let d = dir();
        let (mp, _) = paths(&d);
        assert_eq!(read_executing(&mp), None);
        let (m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert_eq!(read_executing(&mp), Some(0));
        m.set_executing(u64::MAX - 1);
        assert_eq!(read_executing(&mp), Some(u64::MAX - 1));
        m.set_executing(42);
        assert_eq!(read_executing(&mp), Some(42));
        drop(m);
        // Survives the mapping going away, and reopening does not reset it.
        assert_eq!(read_executing(&mp), Some(42));
        let (m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert_eq!(read_executing(&mp), Some(42));
        m.set_executing(0);
        assert_eq!(read_executing(&mp), Some(0));
    }

    #[test]
    fn huge_lengths_do_not_allocate_or_panic() {
        let d = dir();
        let (mp, dp) = paths(&d);
        // Record header with a valid checksum and an absurd payload length.
        let mut h = encode_header(1, 1, b"", None);
        put_u64(&mut h, 32, u64::MAX);
        let crc = crc32c::crc32c(&h[..60]);
        put_u32(&mut h, 60, crc);
        assert_eq!(
            decode_record(&h),
            Err(CheckpointError::Truncated {
                expected: u64::MAX,
                found: 64
            })
        );
        fs::write(&dp, h).unwrap();
        assert!(matches!(
            read_disk_copy(&dp),
            Err(CheckpointError::Truncated { .. })
        ));

        // Same header in an mmap slot: larger than the slot.
        let (m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        m.copy_in(slot_off(MIN_CAPACITY, 0), &h).unwrap();
        drop(m);
        assert_eq!(
            read_mmap_slots(&mp)[0].1,
            Err(CheckpointError::TooLarge(u64::MAX))
        );
        // A slot length just above the capacity.
        let mut h2 = encode_header(1, 1, b"", None);
        put_u64(&mut h2, 32, MIN_CAPACITY + 1);
        let crc = crc32c::crc32c(&h2[..60]);
        put_u32(&mut h2, 60, crc);
        let f = OpenOptions::new().write(true).open(&mp).unwrap();
        f.write_all_at(&h2, slot_off(MIN_CAPACITY, 1)).unwrap();
        assert_eq!(
            read_mmap_slots(&mp)[1].1,
            Err(CheckpointError::TooLarge(MIN_CAPACITY + 1))
        );

        // File header with a valid checksum and absurd capacities.
        for cap in [u64::MAX, u64::MAX / 2, 1 << 50] {
            let hdr = encode_file_header(cap, 0);
            fs::write(&mp, &hdr).unwrap();
            let slots = read_mmap_slots(&mp);
            assert!(slots.iter().all(|(_, r)| r.is_err()), "{slots:?}");
            assert_eq!(read_executing(&mp), None);
            let (m, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
            assert!(moved.is_some());
            drop(m);
        }
        // An absurd requested capacity is an error, not a panic.
        fs::remove_file(&mp).unwrap();
        assert!(MmapCheckpoint::open(&mp, u64::MAX).is_err());
    }

    #[test]
    fn write_disk_copy_leaves_no_tmp() {
        let d = dir();
        let (_, dp) = paths(&d);
        write_disk_copy(&dp, 1, 2, b"payload").unwrap();
        write_disk_copy(&dp, 2, 3, b"payload 2").unwrap();
        let names: Vec<_> = fs::read_dir(d.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("a.checkpoint")]);
        let ck = read_disk_copy(&dp).unwrap();
        assert_eq!(
            (ck.generation, ck.last_seq, &ck.payload[..]),
            (2, 3, &b"payload 2"[..])
        );
        assert_eq!(fs::read(&dp).unwrap(), encode_record(2, 3, b"payload 2"));
    }

    #[test]
    fn links_in_place_of_checkpoint_files_are_never_followed() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let victim = d.path().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // A link at the temp file: removed, the copy written, the target untouched.
        std::os::unix::fs::symlink(&victim, with_suffix(&dp, ".tmp")).unwrap();
        write_disk_copy(&dp, 1, 2, b"payload").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
        assert_eq!(read_disk_copy(&dp).unwrap().payload, b"payload");
        // A link as the disk copy or the mmap file (even to a valid one) is not read.
        let other = d.path().join("other.checkpoint");
        write_disk_copy(&other, 5, 5, b"other's").unwrap();
        fs::remove_file(&dp).unwrap();
        std::os::unix::fs::symlink(&other, &dp).unwrap();
        let e = read_disk_copy(&dp).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{e}");
        std::os::unix::fs::symlink(&victim, &mp).unwrap();
        let s = scan(&mp, &dp);
        assert!(s.chosen.is_none(), "{s:?}");
        // The worker moves the link aside (not its target) and makes a file of its own.
        let (_, moved) = MmapCheckpoint::open(&mp, 0).unwrap();
        let moved = moved.unwrap();
        assert!(
            fs::symlink_metadata(&moved)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert!(!fs::symlink_metadata(&mp).unwrap().file_type().is_symlink());
        assert_eq!(fs::read(&victim).unwrap(), b"precious");
    }

    #[test]
    fn write_disk_copy_error_names_path() {
        let d = dir();
        let p = d.path().join("no-such-dir").join("x.checkpoint");
        let e = write_disk_copy(&p, 1, 1, b"").unwrap_err();
        let msg = e.to_string();
        assert!(msg.starts_with("create of "), "{msg}");
        assert!(msg.contains("x.checkpoint.tmp"), "{msg}");
        assert_eq!(read_disk_copy(&p), Err(CheckpointError::Missing));
    }

    /// Payload that a checkpoint of generation `g` holds in the concurrency tests.
    fn payload_for(g: u64) -> Vec<u8> {
        let len = (g.wrapping_mul(7919) % 150_000) as usize;
        (0..len)
            .map(|i| (g as usize).wrapping_add(i) as u8)
            .collect()
    }

    fn assert_consistent(slots: &[(Source, Result<Checkpoint, CheckpointError>)]) {
        for (src, r) in slots {
            if let Ok(ck) = r {
                assert_eq!(ck.last_seq, ck.generation * 10, "{src}");
                assert!(
                    ck.payload == payload_for(ck.generation),
                    "{src}: wrong payload"
                );
            }
        }
    }

    /// A writer thread that checkpoints generation after generation (payload
    /// `payload_for(g)`, last_seq `10 g`) until told to stop; it returns the next
    /// generation it would have written.
    fn writing_in_background(
        mp: &Path,
    ) -> (
        std::sync::Arc<std::sync::atomic::AtomicBool>,
        std::thread::JoinHandle<u64>,
    ) {
        let (mut m, _) = MmapCheckpoint::open(mp, 0).unwrap();
        m.write(1, 10, &payload_for(1)).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let writer = {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut g = 2;
                while !stop.load(Ordering::Relaxed) {
                    m.write(g, g * 10, &payload_for(g)).unwrap();
                    m.set_executing(g);
                    g += 1;
                }
                g
            })
        };
        (stop, writer)
    }

    #[test]
    fn concurrent_reader_never_sees_torn_checkpoint() {
        let d = dir();
        let (mp, _) = paths(&d);
        let (stop, writer) = writing_in_background(&mp);
        let mut valid = 0;
        for _ in 0..300 {
            let slots = read_mmap_slots(&mp);
            assert_consistent(&slots);
            valid += slots.iter().filter(|(_, r)| r.is_ok()).count();
        }
        stop.store(true, Ordering::Relaxed);
        let last = writer.join().unwrap();
        assert!(valid > 0);
        let slots = read_mmap_slots(&mp);
        assert_consistent(&slots);
        let newest = slots
            .iter()
            .filter_map(|(_, r)| r.as_ref().ok())
            .map(|c| c.generation)
            .max();
        assert_eq!(newest, Some(last - 1));
    }

    #[test]
    fn scan_under_a_concurrent_writer_hands_out_only_verified_payloads() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let (stop, writer) = writing_in_background(&mp);
        let mut chosen = 0;
        for _ in 0..300 {
            if let Some((src, ck)) = scan(&mp, &dp).chosen {
                chosen += 1;
                assert_eq!(ck.last_seq, ck.generation * 10, "{src}");
                assert!(
                    ck.payload == payload_for(ck.generation),
                    "{src}: wrong payload"
                );
            }
        }
        stop.store(true, Ordering::Relaxed);
        writer.join().unwrap();
        assert!(chosen > 0);
    }

    #[test]
    fn damage_past_the_first_verification_chunk_is_found() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let big: Vec<u8> = (0..3 * VERIFY_CHUNK + 5).map(|i| (i % 251) as u8).collect();
        let (mut m, _) = MmapCheckpoint::open(&mp, 2 * big.len() as u64).unwrap();
        m.write(1, 10, &big).unwrap(); // slot A
        m.write(2, 20, &big[1..]).unwrap(); // slot B
        let cap = m.capacity();
        drop(m);
        let s = scan(&mp, &dp);
        let (src, ck) = s.chosen.clone().unwrap();
        assert_eq!((src, ck.generation), (Source::SlotB, 2));
        assert!(ck.payload == big[1..]);
        // One byte in the third chunk of slot B's payload.
        patch(
            &mp,
            slot_off(cap, 1) + 64 + 2 * VERIFY_CHUNK as u64 + 17,
            |b| b ^ 0x40,
        );
        let s = scan(&mp, &dp);
        let (src, ck) = s.chosen.clone().unwrap();
        assert_eq!((src, ck.generation), (Source::SlotA, 1));
        assert!(ck.payload == big);
        assert!(matches!(
            candidate(&s, Source::SlotB),
            Err(CheckpointError::PayloadChecksum { .. })
        ));
        // The writer's own view agrees: slot B holds nothing valid, whether it verifies
        // the slots itself or restores newest first.
        let (m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
        assert_eq!(m.slot_contents(), [Some((1, 10)), None]);
        drop(m);
        let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
        assert_eq!(r.chosen, Some((Source::SlotA, 1, 10)));
        assert!(r.payload() == big);
        let mut m = r.writer;
        assert_eq!(m.slot_contents(), [Some((1, 10)), None]);
        // So the next write goes to the damaged slot, never over the only valid one.
        assert_eq!(m.write(3, 30, b"next").unwrap(), Source::SlotB);
        assert_eq!(scan(&mp, &dp).chosen.unwrap().1.generation, 3);
        assert!(
            read_mmap_slots(&mp)[0]
                .1
                .as_ref()
                .is_ok_and(|c| c.payload == big)
        );
    }

    /// Two checkpoints in the mmap file (generation 1 in slot A with `a`, 2 in slot B
    /// with `b`) and, if given, a disk copy of generation `disk`.
    fn two_slots(d: &tempfile::TempDir, a: &[u8], b: &[u8], disk: Option<u64>) -> u64 {
        let (mp, dp) = paths(d);
        let (mut m, _) = MmapCheckpoint::open(&mp, 2 * a.len().max(b.len()) as u64).unwrap();
        assert_eq!(m.write(1, 10, a).unwrap(), Source::SlotA);
        assert_eq!(m.write(2, 20, b).unwrap(), Source::SlotB);
        match disk {
            Some(1) => write_disk_copy(&dp, 1, 10, a).unwrap(),
            Some(_) => write_disk_copy(&dp, 2, 20, b).unwrap(),
            None => {}
        }
        m.capacity()
    }

    fn sources(r: &[Rejected]) -> Vec<Source> {
        r.iter().map(|x| x.source).collect()
    }

    #[test]
    fn restore_falls_back_from_a_damaged_newest_and_says_so() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let cap = two_slots(&d, b"first", b"second", Some(2));
        // The newest checkpoint is damaged in both places that hold it.
        patch(&mp, slot_off(cap, 1) + 64 + 3, |b| b ^ 0x10);
        patch(&dp, 64 + 1, |b| b ^ 0x10);
        let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
        assert_eq!(r.chosen, Some((Source::SlotA, 1, 10)));
        assert_eq!(r.payload(), b"first");
        // Both newer candidates were tried (slot first on a tie) and are named with their
        // file and reason.
        assert_eq!(sources(&r.rejected), [Source::SlotB, Source::Disk]);
        assert_eq!(r.rejected[0].path, mp);
        assert_eq!(r.rejected[1].path, dp);
        for rej in &r.rejected {
            assert!(
                matches!(rej.error, CheckpointError::PayloadChecksum { .. }),
                "{rej}"
            );
            let text = rej.to_string();
            assert!(text.contains(&rej.path.display().to_string()), "{text}");
            assert!(text.contains("payload checksum mismatch"), "{text}");
        }
        let mut m = r.writer;
        // Nothing older is left to verify; the damaged slot is the one written next.
        assert!(!m.verification_pending());
        assert_eq!(m.take_verified(), None);
        assert_eq!(m.slot_contents(), [Some((1, 10)), None]);
        assert_eq!(m.older(), None);
        assert_eq!(m.write(3, 30, b"third").unwrap(), Source::SlotB);
        assert_eq!(m.older(), Some((1, 10)));
        let slots = read_mmap_slots(&mp);
        assert_eq!(slots[0].1.as_ref().unwrap().payload, b"first");
    }

    #[test]
    fn older_damage_is_found_after_ready_and_reported() {
        let d = dir();
        let (mp, dp) = paths(&d);
        // Slot A's payload spans several verification steps.
        let big: Vec<u8> = (0..3 * VERIFY_STEP as usize + 9)
            .map(|i| (i % 253) as u8)
            .collect();
        let cap = two_slots(&d, &big, b"second", Some(1));
        patch(&mp, slot_off(cap, 0) + 64 + 2 * VERIFY_STEP + 5, |b| {
            b ^ 0x02
        });
        patch(&dp, 64 + VERIFY_STEP + 1, |b| b ^ 0x02);
        let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
        // Ready at once, from the newest: the older candidates are not read yet.
        assert_eq!(r.chosen, Some((Source::SlotB, 2, 20)));
        assert_eq!(r.payload(), b"second");
        assert_eq!(r.rejected, []);
        let mut m = r.writer;
        // Until verified, the older slot counts as a possible fallback (so the log keeps
        // the calls it would need).
        assert_eq!(m.slot_contents(), [Some((1, 10)), Some((2, 20))]);
        assert_eq!(m.older(), Some((1, 10)));
        assert!(m.verification_pending());
        let mut steps = 1;
        while m.verify_step() {
            assert_eq!(m.take_verified(), None, "outcome before the end");
            steps += 1;
        }
        assert!(
            steps >= 6,
            "{steps} steps for two candidates of 3+ steps each"
        );
        let v = m.take_verified().expect("the outcome, once done");
        assert_eq!(v.passed, []);
        assert_eq!(sources(&v.rejected), [Source::SlotA, Source::Disk]);
        assert_eq!((&v.rejected[0].path, &v.rejected[1].path), (&mp, &dp));
        assert!(
            v.rejected
                .iter()
                .all(|x| matches!(x.error, CheckpointError::PayloadChecksum { .. }))
        );
        assert_eq!(m.take_verified(), None, "reported once");
        // Found damaged, the slot no longer counts, and nothing else broke: the newest is
        // kept, the next checkpoint goes into the damaged slot.
        assert_eq!(m.slot_contents(), [None, Some((2, 20))]);
        assert_eq!(m.older(), None);
        assert_eq!(m.write(3, 30, b"third").unwrap(), Source::SlotA);
        let s = scan(&mp, &dp);
        assert_eq!(s.chosen.clone().unwrap().1.payload, b"third");
        assert_eq!(candidate(&s, Source::SlotB), Ok((2, 20)));
    }

    #[test]
    fn a_write_verifies_the_older_candidates_before_overwriting_one() {
        for damaged in [false, true] {
            let d = dir();
            let (mp, dp) = paths(&d);
            let cap = two_slots(&d, b"first", b"second", Some(2));
            if damaged {
                patch(&mp, slot_off(cap, 0) + 64, |b| b ^ 0x80);
            }
            let mut m = MmapCheckpoint::restore(&mp, &dp).unwrap().writer;
            assert!(m.verification_pending());
            // No verification step ran: the write does them before touching slot A.
            assert_eq!(m.write(3, 30, b"third").unwrap(), Source::SlotA);
            assert!(!m.verification_pending());
            let v = m.take_verified().expect("outcome kept for the caller");
            if damaged {
                assert_eq!(sources(&v.rejected), [Source::SlotA]);
                assert_eq!(v.passed, [(Source::Disk, 2, 20)]);
            } else {
                assert_eq!(v.rejected, []);
                assert_eq!(v.passed, [(Source::Disk, 2, 20), (Source::SlotA, 1, 10)]);
            }
            assert_eq!(m.slot_contents(), [Some((3, 30)), Some((2, 20))]);
        }
    }

    #[test]
    fn restore_from_the_disk_copy_makes_a_file_that_holds_it_twice() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let big: Vec<u8> = (0..300_000).map(|i| (i % 241) as u8).collect();
        write_disk_copy(&dp, 7, 70, &big).unwrap();
        let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
        assert_eq!(r.chosen, Some((Source::Disk, 7, 70)));
        assert!(r.payload() == big);
        assert_eq!((r.rejected.len(), &r.moved_aside), (0, &None));
        let mut m = r.writer;
        assert!(m.capacity() >= 2 * big.len() as u64);
        assert!(!m.verification_pending());
        assert_eq!(m.slot_contents(), [None, None]);
        assert_eq!(m.write(8, 80, &big).unwrap(), Source::SlotA);
    }

    #[test]
    fn restore_moves_a_damaged_file_aside_and_names_it() {
        let d = dir();
        let (mp, dp) = paths(&d);
        two_slots(&d, b"first", b"second", Some(1));
        patch(&mp, 3, |b| b ^ 0x01);
        let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
        assert_eq!(r.chosen, Some((Source::Disk, 1, 10)));
        assert_eq!(r.payload(), b"first");
        assert_eq!(sources(&r.rejected), [Source::SlotA, Source::SlotB]);
        assert!(
            r.rejected
                .iter()
                .all(|x| x.error == CheckpointError::BadMagic)
        );
        let aside = r.moved_aside.clone().expect("moved aside");
        assert!(aside.exists());
        assert!(
            read_mmap_slots(&mp)
                .iter()
                .all(|(_, x)| *x == Err(CheckpointError::Empty))
        );
    }

    #[test]
    fn restore_with_every_candidate_damaged_starts_fresh_and_names_each() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let cap = two_slots(&d, b"first", b"second", Some(2));
        patch(&mp, slot_off(cap, 0) + 64, |b| b ^ 0x01);
        patch(&mp, slot_off(cap, 1) + 20, |b| b ^ 0x01); // slot B's header
        patch(&dp, 64 + 2, |b| b ^ 0x01);
        let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
        assert_eq!(r.chosen, None);
        assert_eq!(r.payload(), b"");
        let mut got = sources(&r.rejected);
        got.sort_by_key(|s| s.rank());
        assert_eq!(got, [Source::Disk, Source::SlotB, Source::SlotA]);
        assert!(!r.writer.verification_pending());
    }

    /// Child half of `sigkill_mid_write_keeps_a_valid_checkpoint`: writes checkpoints
    /// forever when started by it, does nothing in a normal test run.
    #[test]
    fn sigkill_child_writer() {
        let Some(path) = std::env::var_os("RESURGAM_CKPT_KILL_CHILD") else {
            return;
        };
        let (mut m, _) = MmapCheckpoint::open(Path::new(&path), 0).unwrap();
        let mut g = 1;
        loop {
            m.set_executing(g);
            m.write(g, g * 10, &payload_for(g)).unwrap();
            g += 1;
        }
    }

    #[test]
    fn sigkill_mid_write_keeps_a_valid_checkpoint() {
        let d = dir();
        let (mp, dp) = paths(&d);
        let exe = std::env::current_exe().unwrap();
        for round in 0..6u64 {
            let mut child = std::process::Command::new(&exe)
                .args([
                    "--exact",
                    "checkpoint::tests::sigkill_child_writer",
                    "--nocapture",
                ])
                .env("RESURGAM_CKPT_KILL_CHILD", &mp)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap();
            let start = std::time::Instant::now();
            while !read_mmap_slots(&mp).iter().any(|(_, r)| r.is_ok()) {
                assert!(start.elapsed().as_secs() < 30, "child wrote nothing");
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
            std::thread::sleep(std::time::Duration::from_millis(1 + round * 7));
            child.kill().unwrap(); // SIGKILL
            child.wait().unwrap();
            let s = scan(&mp, &dp);
            let slots = read_mmap_slots(&mp);
            assert_consistent(&slots);
            let (_, ck) = s
                .chosen
                .clone()
                .expect("a valid checkpoint survives the kill");
            assert_eq!(ck.payload, payload_for(ck.generation));
            assert!(read_executing(&mp).unwrap() >= ck.generation);
            // The next worker continues from the file as left.
            fs::remove_file(&mp).unwrap();
        }
    }

    fn fixed_header(mut h: [u8; 64]) -> [u8; 64] {
        let crc = crc32c::crc32c(&h[..60]);
        put_u32(&mut h, 60, crc);
        h
    }

    proptest! {
        #[test]
        fn decode_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = decode_record(&bytes);
        }

        #[test]
        fn decode_never_panics_on_valid_headers(
            generation in any::<u64>(),
            last_seq in any::<u64>(),
            len in any::<u64>(),
            crc in any::<u32>(),
            version in prop_oneof![Just(1u32), any::<u32>()],
            tail in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            let mut h = encode_header(generation, last_seq, b"", None);
            put_u32(&mut h, 8, version);
            put_u64(&mut h, 32, len);
            put_u32(&mut h, 40, crc);
            let mut bytes = fixed_header(h).to_vec();
            bytes.extend_from_slice(&tail);
            match decode_record(&bytes) {
                Ok(ck) => {
                    prop_assert_eq!(version, 1);
                    prop_assert_eq!(ck.payload.len() as u64, len);
                    prop_assert_eq!(crc32c::crc32c(&ck.payload), crc);
                }
                Err(CheckpointError::Truncated { .. }) => prop_assert!(len > tail.len() as u64),
                Err(_) => {}
            }
        }

        #[test]
        fn bit_flips_are_detected(
            generation in any::<u64>(),
            last_seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            bit in any::<proptest::sample::Index>(),
        ) {
            let rec = encode_record(generation, last_seq, &payload);
            let i = bit.index(rec.len() * 8);
            let mut flipped = rec.clone();
            flipped[i / 8] ^= 1 << (i % 8);
            prop_assert!(decode_record(&flipped).is_err());
        }

        #[test]
        fn damage_never_yields_other_content(
            generation in any::<u64>(),
            last_seq in any::<u64>(),
            payload in proptest::collection::vec(any::<u8>(), 0..200),
            flips in proptest::collection::vec(any::<proptest::sample::Index>(), 1..4),
            cut in any::<proptest::sample::Index>(),
        ) {
            let rec = encode_record(generation, last_seq, &payload);
            let original = Checkpoint { generation, last_seq, payload: payload.clone(), version: FORMAT_VERSION };
            let mut damaged = rec.clone();
            for f in &flips {
                let i = f.index(rec.len() * 8);
                damaged[i / 8] ^= 1 << (i % 8);
            }
            if let Ok(ck) = decode_record(&damaged) {
                prop_assert_eq!(ck, original.clone());
            }
            let short = &rec[..cut.index(rec.len())];
            prop_assert!(decode_record(short).is_err());
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

        /// Whatever is damaged, restore picks the newest intact candidate and reports every
        /// damaged one: before ready if newer than it (or its header is torn), after
        /// ready if older; the writer then counts exactly the intact slots.
        #[test]
        fn restore_picks_the_newest_intact_and_reports_all_damage(
            gens in proptest::collection::vec(1u64..4, 3),
            damage in proptest::collection::vec(0u8..3, 3),
        ) {
            let d = dir();
            let (mp, dp) = paths(&d);
            let payload = |g: u64| vec![g as u8; 100 + g as usize];
            // Slot A, slot B, disk copy; damage 0 none, 1 payload, 2 header.
            let (mut m, _) = MmapCheckpoint::open(&mp, 0).unwrap();
            m.write(gens[0], gens[0] * 10, &payload(gens[0])).unwrap();
            let cap = m.capacity();
            // Makes the next write go to slot B whatever the generations.
            m.slots = [Some((u64::MAX, 0)), None];
            m.write(gens[1], gens[1] * 10, &payload(gens[1])).unwrap();
            drop(m);
            write_disk_copy(&dp, gens[2], gens[2] * 10, &payload(gens[2])).unwrap();
            let srcs = [Source::SlotA, Source::SlotB, Source::Disk];
            for (i, how) in damage.iter().enumerate() {
                let (path, base) = if i < 2 { (&mp, slot_off(cap, i)) } else { (&dp, 0) };
                match how {
                    1 => patch(path, base + 64 + 7, |b| b ^ 0x01),
                    2 => patch(path, base + 17, |b| b ^ 0x01),
                    _ => {}
                }
            }
            let key = |i: usize| (gens[i], gens[i] * 10, srcs[i].rank());
            let best = (0..3).filter(|&i| damage[i] == 0).max_by_key(|&i| key(i));
            let r = MmapCheckpoint::restore(&mp, &dp).unwrap();
            prop_assert_eq!(r.chosen, best.map(|i| (srcs[i], gens[i], gens[i] * 10)));
            if let Some(i) = best {
                prop_assert_eq!(r.payload(), &payload(gens[i])[..]);
            }
            let before = sources(&r.rejected);
            let mut m = r.writer;
            m.verify_all();
            let after = m.take_verified().map(|v| sources(&v.rejected)).unwrap_or_default();
            for i in 0..3 {
                let newer = best.is_none_or(|b| key(i) > key(b));
                let seen = |list: &[Source]| list.iter().filter(|s| **s == srcs[i]).count();
                let expected = match damage[i] {
                    0 => (0, 0),
                    2 => (1, 0),
                    _ if newer => (1, 0),
                    _ => (0, 1),
                };
                prop_assert_eq!((seen(&before), seen(&after)), expected, "candidate {}", i);
            }
            for i in 0..2 {
                let intact = (damage[i] == 0).then_some((gens[i], gens[i] * 10));
                prop_assert_eq!(m.slot_contents()[i], intact);
            }
        }
    }
}
