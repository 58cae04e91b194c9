//! Checkpoint slots and disk copies: `decode_record` on bytes, and the file readers
//! (`read_disk_copy`, `read_mmap_slots`, `scan`, `read_executing`, `MmapCheckpoint::open`)
//! on files written from the input.
//!
//! Input: a control byte, then the mmap file's first 72 bytes (file header and
//! executing word), a u16 split point, then the bytes of slot A and slot B. Control
//! bits: 0 = fix up every checksum (so mutations reach the checks after them; the
//! capacity is then also cut to < 16 KiB), 1 = also open the file as the worker does,
//! 2..8 = cut that many 64-byte blocks off the end of the mmap file. The disk copy is
//! slot A's bytes.
//!
//! Asserts: no panic, no unbounded allocation; the file readers agree with
//! `decode_record` on the same bytes (a record the file readers accept decodes the
//! same from memory, the disk copy exactly as `decode_record`); a decoded record
//! re-encodes to itself; `scan` picks the newest of the candidates it reports and hands
//! out the payload the readers read; the worker's open keeps a valid file's slots and
//! moves an invalid one aside.
#![no_main]

use std::fs;

use libfuzzer_sys::fuzz_target;
use resurgam_shared::checkpoint::{
    Checkpoint, EXECUTING_OFFSET, MMAP_HEADER_LEN, MmapCheckpoint, OWNED_FORMAT_VERSION, OwnerTag,
    RECORD_HEADER_LEN, SECTIONED_FORMAT_VERSION, Source, decode_record, encode_record,
    encode_record_owned, encode_record_sectioned, read_disk_copy, read_executing, read_mmap_slots,
    scan, split_sections,
};

#[global_allocator]
static ALLOC: resurgam_fuzz::Bounded = resurgam_fuzz::Bounded;

const FILE_HEADER: usize = 72;
const PAGE: usize = 4096;
/// Largest mmap file written (a larger layout is written as its first bytes only).
const MAX_FILE: usize = 1 << 20;

fn le_u64(b: &[u8], off: usize) -> u64 {
    u64::from_le_bytes(b[off..off + 8].try_into().unwrap())
}

/// Encodes a decoded record again in its own format version (with any owner: a
/// `Checkpoint` does not carry it). `None` for a format 3 payload whose sections do not
/// split (nothing to encode them from).
fn reencode(ck: &Checkpoint) -> Option<Vec<u8>> {
    let owner = OwnerTag::new("fuzz", [1; 16]);
    let (generation, last_seq, payload) = (ck.generation, ck.last_seq, &ck.payload[..]);
    Some(match ck.version {
        SECTIONED_FORMAT_VERSION => {
            let s = split_sections(ck.version, payload).ok()?;
            encode_record_sectioned(generation, last_seq, s.keys, s.state, Some(&owner))
        }
        OWNED_FORMAT_VERSION => encode_record_owned(generation, last_seq, payload, Some(&owner)),
        _ => encode_record(generation, last_seq, payload),
    })
}

/// Recomputes a record's payload and header checksums (payload cut to the bytes there).
fn fix_record(r: &mut [u8]) {
    if r.len() < RECORD_HEADER_LEN {
        return;
    }
    let avail = (r.len() - RECORD_HEADER_LEN) as u64;
    let n = le_u64(r, 32).min(avail) as usize;
    let crc = crc32c::crc32c(&r[RECORD_HEADER_LEN..RECORD_HEADER_LEN + n]);
    r[40..44].copy_from_slice(&crc.to_le_bytes());
    let crc = crc32c::crc32c(&r[..60]);
    r[60..64].copy_from_slice(&crc.to_le_bytes());
}

/// Cuts the capacity and recomputes the file header's checksum.
fn fix_file_header(h: &mut [u8]) {
    if h.len() < 28 {
        return;
    }
    let cap = le_u64(h, 16) % 16384;
    h[16..24].copy_from_slice(&cap.to_le_bytes());
    let crc = crc32c::crc32c(&h[..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
}

/// The mmap file: header, then each slot at its offset for the header's capacity.
fn mmap_file(header: &[u8], a: &[u8], b: &[u8]) -> Vec<u8> {
    let mut h = header.to_vec();
    h.resize(FILE_HEADER, 0);
    let slot_size = (h.len() >= 24)
        .then(|| le_u64(&h, 16))
        .and_then(|cap| cap.checked_add(RECORD_HEADER_LEN as u64))
        .and_then(|n| n.checked_next_multiple_of(PAGE as u64))
        .and_then(|n| usize::try_from(n).ok())
        .filter(|&n| n <= MAX_FILE / 2);
    let mut file = vec![0u8; PAGE];
    file[..FILE_HEADER].copy_from_slice(&h);
    match slot_size {
        Some(size) => {
            file.resize(PAGE + 2 * size, 0);
            let a = &a[..a.len().min(size)];
            let b = &b[..b.len().min(size)];
            file[PAGE..PAGE + a.len()].copy_from_slice(a);
            file[PAGE + size..PAGE + size + b.len()].copy_from_slice(b);
        }
        None => {
            file.extend_from_slice(a);
            file.extend_from_slice(b);
        }
    }
    file
}

/// The bytes of slot `i` of a file with a valid header of capacity `cap`.
fn slot_bytes(file: &[u8], cap: u64, i: usize) -> &[u8] {
    let size = (cap as usize + RECORD_HEADER_LEN).next_multiple_of(PAGE);
    let start = (MMAP_HEADER_LEN as usize + i * size).min(file.len());
    &file[start..(start + size).min(file.len())]
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let fix = ctl & 1 != 0;
    let open = ctl & 2 != 0;
    let cut = usize::from(ctl >> 2) * 64;
    let (header, rest) = rest.split_at(rest.len().min(FILE_HEADER));
    let (split, rest) = rest.split_at(rest.len().min(2));
    let split = match split {
        [lo, hi] => usize::from(u16::from_le_bytes([*lo, *hi])) % (rest.len() + 1),
        _ => rest.len(),
    };
    let (mut a, mut b, mut header) = (
        rest[..split].to_vec(),
        rest[split..].to_vec(),
        header.to_vec(),
    );
    if fix {
        fix_record(&mut a);
        fix_record(&mut b);
        fix_file_header(&mut header);
    }

    // In memory.
    let decoded_a = decode_record(&a);
    let _ = decode_record(&b);
    if let Ok(ck) = &decoded_a {
        assert!(ck.payload.len() + RECORD_HEADER_LEN <= a.len());
        if let Some(again) = reencode(ck) {
            assert_eq!(decode_record(&again).as_ref(), Ok(ck));
        }
    }
    if let Err(e) = &decoded_a {
        let _ = e.to_string();
    }

    // The same bytes as files.
    let dir = resurgam_fuzz::scratch_dir();
    let disk_path = dir.join("a.checkpoint");
    let mmap_path = dir.join("a.ckpt");
    fs::write(&disk_path, &a).unwrap();
    let disk = read_disk_copy(&disk_path);
    assert_eq!(
        disk, decoded_a,
        "the disk copy reader and decode_record disagree"
    );

    let mut file = mmap_file(&header, &a, &b);
    file.truncate(file.len().saturating_sub(cut));
    fs::write(&mmap_path, &file).unwrap();
    let slots = read_mmap_slots(&mmap_path);
    assert_eq!(slots.len(), 2);
    assert_eq!((slots[0].0, slots[1].0), (Source::SlotA, Source::SlotB));
    let cap = le_u64(&file, 16);
    for (i, (_, r)) in slots.iter().enumerate() {
        if let Ok(ck) = r {
            assert!(ck.payload.len() as u64 <= cap);
            let from_memory = decode_record(slot_bytes(&file, cap, i));
            assert_eq!(
                from_memory.as_ref(),
                Ok(ck),
                "slot {i}: the readers disagree"
            );
        }
    }

    let executing = read_executing(&mmap_path);
    if let Some(seq) = executing {
        assert_eq!(seq, le_u64(&file, EXECUTING_OFFSET as usize));
    }

    let found = scan(&mmap_path, &disk_path);
    assert_eq!(found.candidates.len(), 3);
    let read: Vec<Option<&Checkpoint>> = slots
        .iter()
        .map(|(_, r)| r.as_ref().ok())
        .chain(std::iter::once(disk.as_ref().ok()))
        .collect();
    for ((source, outcome), ck) in found.candidates.iter().zip(&read) {
        assert_eq!(
            outcome.as_ref().ok().copied(),
            ck.map(|c| (c.generation, c.last_seq)),
            "{source}: scan and the readers disagree"
        );
    }
    let newest = found
        .candidates
        .iter()
        .filter_map(|(_, r)| r.as_ref().ok().copied())
        .max();
    match &found.chosen {
        None => assert_eq!(newest, None),
        Some((source, ck)) => {
            assert_eq!(Some((ck.generation, ck.last_seq)), newest);
            let index = match source {
                Source::SlotA => 0,
                Source::SlotB => 1,
                Source::Disk => 2,
            };
            assert_eq!(read[index], Some(ck), "scan hands out another payload");
        }
    }

    if open {
        let expected: [Option<(u64, u64)>; 2] =
            [0, 1].map(|i| read[i].map(|c| (c.generation, c.last_seq)));
        match MmapCheckpoint::open(&mmap_path, 0) {
            Ok((mapped, moved_aside)) => {
                if executing.is_some() {
                    assert_eq!(moved_aside, None, "a valid file was moved aside");
                    assert_eq!(mapped.slot_contents(), expected);
                } else {
                    assert!(moved_aside.is_some(), "an invalid file was kept");
                    assert_eq!(mapped.slot_contents(), [None, None]);
                }
            }
            Err(e) => panic!("open: {e}"),
        }
        resurgam_fuzz::empty_dir(dir);
    }
});
