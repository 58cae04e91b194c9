//! Worker IPC: the worker → supervisor report stream (`ReportDecoder`), and the
//! postcard messages a worker decodes from shared memory (`decode_calls`, `decode_init`).
//!
//! Input: a control byte (the size of the pieces the stream arrives in: 1 to 256
//! bytes), then the bytes.
//!
//! Asserts: no panic, no unbounded allocation (the decoder's buffer grows with the bytes
//! pushed, never with a length a frame claims); the same reports and the same error
//! come out whether the stream arrives whole or in pieces, and the bytes left pending
//! are the same; every decoded report and message re-encodes to itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resurgam_shared::ipc::{
    Report, ReportDecoder, ReportError, decode_calls_bytes, decode_init_bytes, encode_report,
};

#[global_allocator]
static ALLOC: resurgam_fuzz::Bounded = resurgam_fuzz::Bounded;

/// Pushes `data` in pieces of `piece` bytes, draining after each; stops at an error.
fn decode(data: &[u8], piece: usize) -> (Vec<Report>, Option<ReportError>, usize) {
    let mut d = ReportDecoder::default();
    let mut reports = Vec::new();
    for chunk in data.chunks(piece.max(1)) {
        d.push(chunk);
        loop {
            match d.next_report() {
                Ok(Some(r)) => reports.push(r),
                Ok(None) => break,
                Err(e) => return (reports, Some(e), d.pending()),
            }
        }
    }
    (reports, None, d.pending())
}

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let whole = decode(rest, rest.len());
    let pieces = decode(rest, usize::from(ctl) + 1);
    assert_eq!(whole.0, pieces.0, "pieces change the reports");
    assert_eq!(whole.1, pieces.1, "pieces change the error");
    if whole.1.is_none() {
        assert_eq!(whole.2, pieces.2, "pieces change what is pending");
    }
    if let Some(e) = &whole.1 {
        let _ = e.to_string();
    }
    for r in &whole.0 {
        let frame = encode_report(r).expect("a decoded report encodes");
        let (again, error, pending) = decode(&frame, frame.len());
        assert_eq!(
            (again.as_slice(), error, pending),
            (std::slice::from_ref(r), None, 0)
        );
    }

    if let Ok(calls) = decode_calls_bytes(rest) {
        let bytes = postcard::to_allocvec(&calls).unwrap();
        assert_eq!(decode_calls_bytes(&bytes).unwrap(), calls);
    }
    if let Ok(init) = decode_init_bytes(rest) {
        let bytes = postcard::to_allocvec(&init).unwrap();
        assert_eq!(decode_init_bytes(&bytes).unwrap(), init);
    }
});
