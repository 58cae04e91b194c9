//! The state export file (`resurgam export` / `resurgam import`): one actor's state with
//! what it is, independent of the checkpoint format on disk.
//!
//! ```text
//! offset  size  field
//! 0       8     magic "RSGMSTAT"
//! 8       4     format version (u32 LE), currently 1
//! 12      4     header length H (u32 LE), at most MAX_HEADER
//! 16      H     header: a JSON object {"actor", "kind", "generation", "last_seq", "bytes"}
//! 16+H    N     the state, exactly as the actor's `save` gave it (N = header's "bytes")
//! 16+H+N  4     CRC32C (u32 LE) of every byte before it
//! ```
//!
//! `last_seq`: every call the supervisor accepted for the actor up to this sequence
//! number is reflected in the state, and none after it. `generation`: the actor's newest
//! checkpoint generation when it was exported (for the reader; import does not use it).
//!
//! Export and import travel the control protocol as the whole file in base64
//! ([`base64_encode`]), so they never depend on who can read which path.

use serde::{Deserialize, Serialize};

/// The method of the logged entry an export is (no actor method starts with NUL).
pub const EXPORT_METHOD: &str = "\u{0}export";
/// The method of the logged entry an import is; its args are the state bytes.
pub const IMPORT_METHOD: &str = "\u{0}import";

/// The first bytes of every export file.
pub const MAGIC: &[u8; 8] = b"RSGMSTAT";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Largest header accepted when reading.
pub const MAX_HEADER: usize = 64 << 10;

/// What an export file says about its state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Header {
    pub actor: String,
    pub kind: String,
    pub generation: u64,
    pub last_seq: u64,
    /// Length of the state in bytes.
    pub bytes: u64,
}

/// A decoded export file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StateFile {
    pub header: Header,
    pub state: Vec<u8>,
}

/// Why bytes are not a valid export file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FileError {
    #[error("not a resurgam state file (no RSGMSTAT magic at the start)")]
    Magic,
    #[error("state file format version {0} is not supported (this build reads version {VERSION})")]
    Version(u32),
    #[error("truncated state file: {0}")]
    Truncated(String),
    #[error("state file header: {0}")]
    Header(String),
    #[error(
        "state file is damaged: CRC32C {stored:#010x} stored, {computed:#010x} computed over its {len} bytes"
    )]
    Checksum {
        stored: u32,
        computed: u32,
        len: u64,
    },
}

/// The bytes of an export file holding `state`.
pub fn encode(header: &Header, state: &[u8]) -> Vec<u8> {
    let header = Header {
        bytes: state.len() as u64,
        ..header.clone()
    };
    // A struct of strings and integers always serializes.
    let json = serde_json::to_vec(&header).unwrap_or_default();
    let mut out = Vec::with_capacity(16 + json.len() + state.len() + 4);
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&VERSION.to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out.extend_from_slice(state);
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}

fn u32_at(bytes: &[u8], at: usize) -> u32 {
    let mut b = [0u8; 4];
    b.copy_from_slice(&bytes[at..at + 4]);
    u32::from_le_bytes(b)
}

/// Decodes and verifies an export file.
pub fn decode(bytes: &[u8]) -> Result<StateFile, FileError> {
    if bytes.len() < MAGIC.len() || &bytes[..MAGIC.len()] != MAGIC {
        return Err(FileError::Magic);
    }
    if bytes.len() < 16 + 4 {
        return Err(FileError::Truncated(format!(
            "{} bytes, shorter than the fixed header",
            bytes.len()
        )));
    }
    let version = u32_at(bytes, 8);
    if version != VERSION {
        return Err(FileError::Version(version));
    }
    let body = bytes.len() - 4;
    let stored = u32_at(bytes, body);
    let computed = crc32c::crc32c(&bytes[..body]);
    if stored != computed {
        return Err(FileError::Checksum {
            stored,
            computed,
            len: bytes.len() as u64,
        });
    }
    let header_len = u32_at(bytes, 12) as usize;
    if header_len > MAX_HEADER {
        return Err(FileError::Header(format!(
            "{header_len} bytes long (at most {MAX_HEADER})"
        )));
    }
    let state_at = 16 + header_len;
    if state_at > body {
        return Err(FileError::Truncated(format!(
            "header of {header_len} bytes runs past the end"
        )));
    }
    let header: Header = serde_json::from_slice(&bytes[16..state_at])
        .map_err(|e| FileError::Header(e.to_string()))?;
    let len = (body - state_at) as u64;
    if header.bytes != len {
        return Err(FileError::Truncated(format!(
            "header says {} state bytes, the file holds {len}",
            header.bytes
        )));
    }
    Ok(StateFile {
        header,
        state: bytes[state_at..body].to_vec(),
    })
}

const B64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 with padding.
pub fn base64_encode(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [
            chunk[0],
            chunk.get(1).copied().unwrap_or(0),
            chunk.get(2).copied().unwrap_or(0),
        ];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(B64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Decodes standard base64 with padding; `Err` names the first bad position.
pub fn base64_decode(text: &str) -> Result<Vec<u8>, String> {
    let bytes = text.as_bytes();
    if !bytes.len().is_multiple_of(4) {
        return Err(format!(
            "base64 length {} is not a multiple of 4",
            bytes.len()
        ));
    }
    let value = |c: u8| match c {
        b'A'..=b'Z' => Some(c - b'A'),
        b'a'..=b'z' => Some(c - b'a' + 26),
        b'0'..=b'9' => Some(c - b'0' + 52),
        b'+' => Some(62),
        b'/' => Some(63),
        _ => None,
    };
    let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
    let quads = bytes.len() / 4;
    for (q, quad) in bytes.chunks(4).enumerate() {
        let pad = if q + 1 == quads {
            quad.iter().rev().take_while(|&&c| c == b'=').count()
        } else {
            0
        };
        if pad > 2 {
            return Err(format!("bad base64 padding at byte {}", q * 4));
        }
        let mut n = 0u32;
        for (i, &c) in quad.iter().enumerate() {
            let v = if i >= 4 - pad {
                0
            } else {
                value(c).ok_or_else(|| format!("bad base64 character at byte {}", q * 4 + i))?
            };
            n = (n << 6) | u32::from(v);
        }
        let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&three[..3 - pad]);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> Header {
        Header {
            actor: "counter".into(),
            kind: "counter".into(),
            generation: 3,
            last_seq: 41,
            bytes: 0,
        }
    }

    #[test]
    fn a_file_round_trips_and_says_what_it_holds() {
        let bytes = encode(&header(), b"42");
        let file = decode(&bytes).unwrap();
        assert_eq!(file.state, b"42");
        assert_eq!(file.header.bytes, 2);
        assert_eq!(file.header.last_seq, 41);
        assert_eq!(file.header.kind, "counter");
    }

    #[test]
    fn every_flipped_bit_and_every_truncation_is_refused() {
        let bytes = encode(&header(), b"{\"a\":1}");
        for i in 0..bytes.len() * 8 {
            let mut b = bytes.clone();
            b[i / 8] ^= 1 << (i % 8);
            assert!(decode(&b).is_err(), "bit {i} flipped was accepted");
        }
        for n in 0..bytes.len() {
            assert!(decode(&bytes[..n]).is_err(), "truncation to {n} accepted");
        }
    }

    #[test]
    fn damage_is_named() {
        let mut bytes = encode(&header(), b"42");
        let n = bytes.len();
        bytes[n - 6] ^= 1;
        assert!(matches!(decode(&bytes), Err(FileError::Checksum { .. })));
        assert_eq!(decode(b"hello world, no magic"), Err(FileError::Magic));
        let mut v2 = encode(&header(), b"42");
        v2[8] = 2;
        assert_eq!(decode(&v2), Err(FileError::Version(2)));
    }

    #[test]
    fn base64_round_trips_every_length() {
        let data: Vec<u8> = (0..=255u8).collect();
        for n in 0..data.len() {
            let text = base64_encode(&data[..n]);
            assert_eq!(base64_decode(&text).unwrap(), &data[..n], "length {n}");
        }
        assert_eq!(base64_encode(b"foob"), "Zm9vYg==");
        assert!(base64_decode("Zm9v!g==").is_err());
        assert!(base64_decode("Zm9").is_err());
        assert!(base64_decode("Z===").is_err());
    }
}
