//! Format stability: checkpoints written by earlier builds must stay readable forever.
//!
//! `tests/data/checkpoint_v1.bin` is a disk-copy record written once by the version-1
//! encoder. Never regenerate it: if this test fails, the change broke the on-disk format.
//! The same holds for the version-2 and version-3 fixtures below.

use std::os::unix::fs::FileExt;
use std::path::Path;

use resurgam_shared::checkpoint::{
    self, Checkpoint, FORMAT_VERSION, MmapCheckpoint, OWNED_FORMAT_VERSION, OwnerTag,
    SECTIONED_FORMAT_VERSION, Sections, Source, decode_record, encode_record, encode_record_owned,
    encode_record_sectioned,
};

const FIXTURE: &[u8] = include_bytes!("data/checkpoint_v1.bin");
const GENERATION: u64 = 7;
const LAST_SEQ: u64 = 42;
const PAYLOAD: &[u8] = b"resurgam checkpoint v1 fixture\x00\x01\x7f\x80\xfe\xff";

fn expected() -> Checkpoint {
    Checkpoint {
        generation: GENERATION,
        last_seq: LAST_SEQ,
        payload: PAYLOAD.to_vec(),
        version: FORMAT_VERSION,
    }
}

#[test]
fn checkpoint_v1_fixture_decodes() {
    assert_eq!(FORMAT_VERSION, 1);
    assert_eq!(decode_record(FIXTURE), Ok(expected()));
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_v1.bin");
    assert_eq!(checkpoint::read_disk_copy(&path), Ok(expected()));
}

#[test]
fn checkpoint_v1_fixture_layout() {
    assert_eq!(FIXTURE.len(), 64 + PAYLOAD.len());
    assert_eq!(&FIXTURE[0..8], b"RSGCKPT1");
    assert_eq!(FIXTURE[8..12], 1u32.to_le_bytes());
    assert_eq!(FIXTURE[16..24], GENERATION.to_le_bytes());
    assert_eq!(FIXTURE[24..32], LAST_SEQ.to_le_bytes());
    assert_eq!(FIXTURE[32..40], (PAYLOAD.len() as u64).to_le_bytes());
    assert_eq!(FIXTURE[40..44], crc32c::crc32c(PAYLOAD).to_le_bytes());
    assert_eq!(
        FIXTURE[60..64],
        crc32c::crc32c(&FIXTURE[..60]).to_le_bytes()
    );
    assert_eq!(&FIXTURE[64..], PAYLOAD);
}

#[test]
fn checkpoint_v1_encoding_is_stable() {
    assert_eq!(encode_record(GENERATION, LAST_SEQ, PAYLOAD), FIXTURE);
}

/// Builds a version-1 mmap file byte by byte from the documented layout (not with the
/// module's own encoder) and checks that this build reads and reuses it.
#[test]
fn checkpoint_v1_mmap_layout_is_readable() {
    const CAPACITY: u64 = 65536;
    const SLOT_SIZE: u64 = 69632; // round_up_4096(64 + CAPACITY)
    let mut file = vec![0u8; (4096 + 2 * SLOT_SIZE) as usize];
    file[0..8].copy_from_slice(b"RSGMMAP1");
    file[8..12].copy_from_slice(&1u32.to_le_bytes());
    file[16..24].copy_from_slice(&CAPACITY.to_le_bytes());
    let crc = crc32c::crc32c(&file[..24]);
    file[24..28].copy_from_slice(&crc.to_le_bytes());
    file[64..72].copy_from_slice(&1234u64.to_le_bytes());
    let slot_b = (4096 + SLOT_SIZE) as usize;
    file[slot_b..slot_b + FIXTURE.len()].copy_from_slice(FIXTURE);

    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("fixture.ckpt");
    std::fs::write(&path, &file).unwrap();

    assert_eq!(checkpoint::read_executing(&path), Some(1234));
    let slots = checkpoint::read_mmap_slots(&path);
    assert_eq!(
        slots[0],
        (Source::SlotA, Err(checkpoint::CheckpointError::Empty))
    );
    assert_eq!(slots[1], (Source::SlotB, Ok(expected())));
    let scan = checkpoint::scan(&path, &dir.path().join("none.checkpoint"));
    assert_eq!(scan.chosen, Some((Source::SlotB, expected())));

    let (mut m, moved) = MmapCheckpoint::open(&path, 0).unwrap();
    assert_eq!(moved, None);
    assert_eq!(m.capacity(), CAPACITY);
    assert_eq!(m.write(8, 50, b"next").unwrap(), Source::SlotA);
    m.set_executing(99);
    let f = std::fs::File::open(&path).unwrap();
    let mut word = [0u8; 8];
    f.read_exact_at(&mut word, 64).unwrap();
    assert_eq!(u64::from_le_bytes(word), 99);
    let mut head = [0u8; 8];
    f.read_exact_at(&mut head, 4096).unwrap();
    assert_eq!(&head, b"RSGCKPT1");
}

/// `tests/data/checkpoint_v2.bin`: a disk-copy record of format 2, naming its owner
/// (actor `kv`, state dir id 00 01 … 0f), written once from the documented layout.
/// Never regenerate it.
const FIXTURE_V2: &[u8] = include_bytes!("data/checkpoint_v2.bin");
const PAYLOAD_V2: &[u8] = b"resurgam checkpoint v2 fixture\x00\x01\x7f\x80\xfe\xff";

fn owner_v2() -> OwnerTag {
    OwnerTag::new("kv", std::array::from_fn(|i| i as u8))
}

#[test]
fn checkpoint_v2_fixture_decodes_for_its_owner_only() {
    assert_eq!(OWNED_FORMAT_VERSION, 2);
    assert_eq!(FIXTURE_V2[8..12], 2u32.to_le_bytes());
    assert_eq!(FIXTURE_V2[12..16], crc32c::crc32c(b"kv").to_le_bytes());
    let want = Checkpoint {
        generation: GENERATION,
        last_seq: LAST_SEQ,
        payload: PAYLOAD_V2.to_vec(),
        version: OWNED_FORMAT_VERSION,
    };
    assert_eq!(decode_record(FIXTURE_V2), Ok(want.clone()));
    assert_eq!(
        encode_record_owned(GENERATION, LAST_SEQ, PAYLOAD_V2, Some(&owner_v2())),
        FIXTURE_V2
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_v2.bin");
    assert_eq!(
        checkpoint::read_disk_copy_owned(&path, Some(&owner_v2())),
        Ok(want)
    );
    let other = OwnerTag::new("other", std::array::from_fn(|i| i as u8));
    assert!(matches!(
        checkpoint::read_disk_copy_owned(&path, Some(&other)),
        Err(checkpoint::CheckpointError::Foreign { .. })
    ));
    // A version-1 record is read whoever is expected.
    let v1 = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_v1.bin");
    assert_eq!(
        checkpoint::read_disk_copy_owned(&v1, Some(&other)),
        Ok(expected())
    );
}

/// `tests/data/checkpoint_v3.bin`: a disk-copy record of format 3 (owner as in the v2
/// fixture; payload `keys length ‖ keys ‖ state`), written once from the documented
/// layout by a separate script, not by this encoder. Never regenerate it.
const FIXTURE_V3: &[u8] = include_bytes!("data/checkpoint_v3.bin");
const KEYS_V3: &[u8] = b"keys section of the v3 fixture";
const STATE_V3: &[u8] = b"resurgam checkpoint v3 fixture\x00\x01\x7f\x80\xfe\xff";

#[test]
fn checkpoint_v3_fixture_decodes_into_its_sections() {
    assert_eq!(SECTIONED_FORMAT_VERSION, 3);
    let ck = decode_record(FIXTURE_V3).unwrap();
    assert_eq!(
        (ck.generation, ck.last_seq, ck.version),
        (GENERATION, LAST_SEQ, 3)
    );
    assert_eq!(
        ck.sections(),
        Ok(Sections {
            keys: KEYS_V3,
            state: STATE_V3
        })
    );
    assert_eq!(
        encode_record_sectioned(GENERATION, LAST_SEQ, KEYS_V3, STATE_V3, Some(&owner_v2())),
        FIXTURE_V3
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/data/checkpoint_v3.bin");
    assert_eq!(
        checkpoint::read_disk_copy_owned(&path, Some(&owner_v2())),
        Ok(ck)
    );
    let other = OwnerTag::new("other", std::array::from_fn(|i| i as u8));
    assert!(matches!(
        checkpoint::read_disk_copy_owned(&path, Some(&other)),
        Err(checkpoint::CheckpointError::Foreign { .. })
    ));
}
