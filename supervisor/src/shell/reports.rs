//! A worker's report socket as the loop reads it: non-blocking reads into a
//! [`ReportDecoder`], a budget per turn so one chatty worker cannot starve the rest.

use std::io::{ErrorKind, Read};

use mio::net::UnixStream;

use resurgam_shared::ipc::{Report, ReportDecoder, ReportError};

/// Bytes read from one worker per turn of the loop (more waits for the next turn).
pub const READ_BUDGET: usize = 1 << 20;

/// Our end of one worker's report socket.
pub struct ReportStream {
    pub stream: UnixStream,
    decoder: ReportDecoder,
}

/// Where a stream stands after a read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadEnd {
    /// Everything available was read.
    Drained,
    /// The budget ran out with more to read.
    More,
    /// The worker's end is closed (what was sent before is in `out`).
    Closed,
    /// The stream broke the framing: nothing after this can be trusted.
    Broken(ReportError),
}

impl ReportStream {
    pub fn new(stream: UnixStream) -> ReportStream {
        ReportStream {
            stream,
            decoder: ReportDecoder::default(),
        }
    }

    /// Bytes of an unfinished report (at the end of the stream: one the worker died
    /// writing, never acknowledged to anyone).
    pub fn unfinished(&self) -> usize {
        self.decoder.pending()
    }

    /// Reads up to `budget` bytes (through `chunk`, the caller's scratch buffer) and
    /// appends every complete report to `out`.
    pub fn read(&mut self, budget: usize, chunk: &mut [u8], out: &mut Vec<Report>) -> ReadEnd {
        let mut taken = 0;
        loop {
            if taken >= budget {
                return ReadEnd::More;
            }
            match self.stream.read(chunk) {
                Ok(0) => return ReadEnd::Closed,
                Ok(n) => {
                    taken += n;
                    self.decoder.push(&chunk[..n]);
                    loop {
                        match self.decoder.next_report() {
                            Ok(Some(r)) => out.push(r),
                            Ok(None) => break,
                            Err(e) => return ReadEnd::Broken(e),
                        }
                    }
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return ReadEnd::Closed,
            }
        }
    }
}
