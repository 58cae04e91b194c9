//! Control-socket request lines: `parse_request` on each line of the input (the
//! supervisor splits what a client sends at `\n` and parses each line).
//!
//! Asserts: no panic, no unbounded allocation; an accepted request and a rejected one
//! both carry an `id` that is JSON text, so the reply built from it (`encode_ok`,
//! `encode_err`) is one JSON line a client reads back with the same id.
#![no_main]

use libfuzzer_sys::fuzz_target;
use resurgam_shared::protocol::{encode_err, encode_ok, parse_request};
use serde_json::value::RawValue;

#[global_allocator]
static ALLOC: resurgam_fuzz::Bounded = resurgam_fuzz::Bounded;

/// The reply line: one line of JSON whose `id` is the very text of the request's id.
fn check_reply(id: &str, line: &str) {
    #[derive(serde::Deserialize)]
    struct Echo<'a> {
        #[serde(borrow)]
        id: &'a RawValue,
    }
    assert!(line.ends_with('\n') && !line[..line.len() - 1].contains('\n'));
    let echo: Echo<'_> = serde_json::from_str(line).expect("a reply line is JSON");
    assert_eq!(echo.id.get(), id);
}

fuzz_target!(|data: &[u8]| {
    for line in data.split(|&b| b == b'\n') {
        check_line(line);
    }
});

fn check_line(line: &[u8]) {
    match parse_request(line) {
        Ok(req) => {
            check_reply(&req.id, &encode_ok(&req.id, "null"));
            if let resurgam_shared::protocol::Op::Call {
                args: Some(args), ..
            } = &req.op
            {
                serde_json::from_str::<serde::de::IgnoredAny>(args).expect("args are JSON text");
            }
        }
        Err(rejected) => {
            let line = encode_err(&rejected.id, &rejected.error);
            check_reply(&rejected.id, &line);
            // A client reads the error back (the id aside: a client's own id may be a
            // number no `serde_json::Value` holds, such as 1e400).
            #[derive(serde::Deserialize)]
            struct Err {
                err: resurgam_shared::protocol::ErrorBody,
            }
            let reply: Err = serde_json::from_str(&line).unwrap();
            assert_eq!(reply.err, rejected.error);
        }
    }
}
