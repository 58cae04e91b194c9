//! The exec protocol: the frames a program sends back to its worker, read by
//! `resurgam_worker::exec::read_answers` (the frame checks and body decoding of
//! `Program`, without a program or a socket).
//!
//! Input: a control byte choosing the request (hello, load, save, or 1 to 64 pipelined
//! calls), then the program's bytes.
//!
//! Asserts: no panic, no unbounded allocation (a frame's declared length, up to 2 GiB
//! for a state, costs nothing until its bytes are there); never more answers than
//! requests; a failure is a message, never a reply.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resurgam_worker::exec::{Failure, Request, read_answers};

#[global_allocator]
static ALLOC: resurgam_fuzz::Bounded = resurgam_fuzz::Bounded;

fuzz_target!(|data: &[u8]| {
    let Some((&ctl, rest)) = data.split_first() else {
        return;
    };
    let (request, expect) = match ctl & 3 {
        0 => (Request::Hello, 1),
        1 => (Request::Load, 1),
        2 => (Request::Save, 1),
        _ => {
            let n = usize::from(ctl >> 2) + 1;
            (Request::Calls(n), n)
        }
    };
    match read_answers(request, rest) {
        Ok(n) => assert!(n <= expect),
        Err(Failure::Crashed(message)) => assert!(!message.is_empty()),
        Err(Failure::Refused { message, .. }) => {
            assert!(request != Request::Hello, "a hello cannot be refused");
            assert!(message.len() <= resurgam_worker::exec::MAX_ERROR_MESSAGE + 64);
        }
    }
});
