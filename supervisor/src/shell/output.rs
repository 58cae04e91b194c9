//! Workers' stdout and stderr: one thread polls every worker's output pipe and logs each
//! line with the actor's name and the worker's pid. Off the event loop, so a slow log
//! sink or a chatty worker never delays calls; one thread for all workers.

use std::collections::{HashMap, VecDeque};
use std::io::{ErrorKind, Read};
use std::os::fd::AsRawFd;
use std::sync::Arc;

use crossbeam_channel::{Receiver, Sender};
use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};

/// Longest part of one output line that is logged; the rest of the line is dropped
/// (and counted in the log line). A program writing without newlines cannot make the
/// supervisor buffer more than this.
pub const MAX_OUTPUT_LINE: usize = 16 * 1024;

const WAKER: Token = Token(0);

/// Hands new output pipes to the relay thread.
#[derive(Clone)]
pub struct OutputRelay {
    tx: Sender<Msg>,
    waker: Arc<Waker>,
}

enum Msg {
    Add(Pipe),
    /// The worker `pid` now serves `actor` (a standby worker was taken).
    Rename {
        pid: u32,
        actor: String,
    },
}

/// The read end of one worker's output pipe.
pub struct Pipe {
    pub file: std::fs::File,
    pub actor: String,
    pub pid: u32,
}

impl OutputRelay {
    /// Starts the relay thread.
    pub fn start() -> std::io::Result<OutputRelay> {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER)?);
        let (tx, rx) = crossbeam_channel::unbounded::<Msg>();
        std::thread::Builder::new()
            .name("worker-output".into())
            .spawn(move || relay(poll, &rx))?;
        Ok(OutputRelay { tx, waker })
    }

    /// Logs everything the pipe carries until its writers are gone.
    pub fn add(&self, pipe: Pipe) {
        self.send(Msg::Add(pipe));
    }

    /// Lines of worker `pid` carry `actor` from now on.
    pub fn rename(&self, pid: u32, actor: &str) {
        self.send(Msg::Rename {
            pid,
            actor: actor.to_string(),
        });
    }

    fn send(&self, msg: Msg) {
        if self.tx.send(msg).is_ok() {
            let _ = self.waker.wake();
        }
    }
}

struct Source {
    pipe: Pipe,
    lines: OutputLines,
}

/// Bytes read from one pipe per pass, so one chatty worker cannot starve the others.
const PASS_BUDGET: usize = 64 * 1024;

fn relay(mut poll: Poll, new: &Receiver<Msg>) {
    let mut sources: HashMap<usize, Source> = HashMap::new();
    let mut next = 1usize;
    let mut events = Events::with_capacity(256);
    let mut chunk = vec![0u8; 8192];
    // Pipes that may hold more than their last pass read.
    let mut more: VecDeque<usize> = VecDeque::new();
    loop {
        let timeout = (!more.is_empty()).then_some(std::time::Duration::ZERO);
        if let Err(e) = poll.poll(&mut events, timeout) {
            if e.kind() == ErrorKind::Interrupted {
                continue;
            }
            tracing::error!(error = %e, "worker output relay cannot poll; output is no longer logged");
            return;
        }
        // New pipes and renames first, so that lines read this pass carry the right name.
        for msg in new.try_iter() {
            let pipe = match msg {
                Msg::Add(pipe) => pipe,
                Msg::Rename { pid, actor } => {
                    // The newest pipe of that pid (an older one may still be held open by
                    // a leftover process of a worker that had the same pid).
                    if let Some((_, src)) = sources
                        .iter_mut()
                        .filter(|(_, s)| s.pipe.pid == pid)
                        .max_by_key(|(k, _)| **k)
                    {
                        src.pipe.actor = actor;
                    }
                    continue;
                }
            };
            let key = next;
            next += 1;
            if let Err(e) = nix::fcntl::fcntl(
                &pipe.file,
                nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
            ) {
                tracing::warn!(actor = %pipe.actor, pid = pipe.pid, error = %e, "cannot relay a worker's output");
                continue;
            }
            let registered = poll.registry().register(
                &mut SourceFd(&pipe.file.as_raw_fd()),
                Token(key),
                Interest::READABLE,
            );
            if let Err(e) = registered {
                tracing::warn!(actor = %pipe.actor, pid = pipe.pid, error = %e, "cannot relay a worker's output");
                continue;
            }
            sources.insert(
                key,
                Source {
                    pipe,
                    lines: OutputLines::default(),
                },
            );
        }
        for ev in events.iter() {
            if ev.token() != WAKER && !more.contains(&ev.token().0) {
                more.push_back(ev.token().0);
            }
        }
        for _ in 0..more.len() {
            let Some(key) = more.pop_front() else {
                break;
            };
            let Some(src) = sources.get_mut(&key) else {
                continue;
            };
            match drain(src, &mut chunk) {
                Drained::Empty => {}
                Drained::More => more.push_back(key),
                Drained::End => {
                    let _ = poll
                        .registry()
                        .deregister(&mut SourceFd(&src.pipe.file.as_raw_fd()));
                    if let Some(mut src) = sources.remove(&key) {
                        let (actor, pid) = (&src.pipe.actor, src.pipe.pid);
                        src.lines.finish(|line| log_output(actor, pid, line));
                    }
                }
            }
        }
    }
}

enum Drained {
    /// Everything the pipe held is read.
    Empty,
    /// The pass's budget ran out first.
    More,
    /// Every writer is gone.
    End,
}

/// Reads what the pipe holds, up to [`PASS_BUDGET`].
fn drain(src: &mut Source, chunk: &mut [u8]) -> Drained {
    let (actor, pid) = (&src.pipe.actor, src.pipe.pid);
    let mut taken = 0;
    while taken < PASS_BUDGET {
        match (&src.pipe.file).read(chunk) {
            Ok(0) => return Drained::End,
            Ok(n) => {
                taken += n;
                src.lines
                    .push(&chunk[..n], |line| log_output(actor, pid, line));
            }
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) if e.kind() == ErrorKind::WouldBlock => return Drained::Empty,
            Err(_) => return Drained::End,
        }
    }
    Drained::More
}

fn log_output(actor: &str, pid: u32, line: &str) {
    tracing::info!(target: "worker", actor = %actor, pid, "{line}");
}

/// Splits a worker's output into lines of at most [`MAX_OUTPUT_LINE`] bytes.
#[derive(Default)]
struct OutputLines {
    line: Vec<u8>,
    dropped: usize,
}

impl OutputLines {
    /// Takes the next bytes; calls `emit` for every line they complete.
    fn push(&mut self, mut bytes: &[u8], mut emit: impl FnMut(&str)) {
        while !bytes.is_empty() {
            let (part, rest, complete) = match bytes.iter().position(|&b| b == b'\n') {
                Some(i) => (&bytes[..i], &bytes[i + 1..], true),
                None => (bytes, &[][..], false),
            };
            let room = MAX_OUTPUT_LINE - self.line.len();
            let keep = part.len().min(room);
            self.line.extend_from_slice(&part[..keep]);
            self.dropped += part.len() - keep;
            if complete {
                self.emit(&mut emit);
            }
            bytes = rest;
        }
    }

    /// Emits what is left (a last line without a newline).
    fn finish(&mut self, mut emit: impl FnMut(&str)) {
        if !self.line.is_empty() || self.dropped > 0 {
            self.emit(&mut emit);
        }
    }

    fn emit(&mut self, emit: &mut impl FnMut(&str)) {
        let text = String::from_utf8_lossy(&self.line);
        let text = text.trim_end();
        if self.dropped > 0 {
            emit(&format!(
                "{text} … ({} more bytes of this line dropped)",
                self.dropped
            ));
        } else if !text.is_empty() {
            emit(text);
        }
        self.line.clear();
        self.dropped = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(chunks: &[&[u8]]) -> Vec<String> {
        let mut out = Vec::new();
        let mut l = OutputLines::default();
        for c in chunks {
            l.push(c, |s| out.push(s.to_string()));
        }
        l.finish(|s| out.push(s.to_string()));
        out
    }

    #[test]
    fn output_is_split_into_lines_across_chunks() {
        assert_eq!(
            lines(&[b"a\nb", b"c\n\n", b"d"]),
            vec!["a".to_string(), "bc".to_string(), "d".to_string()]
        );
    }

    #[test]
    fn an_endless_line_is_capped_and_what_was_dropped_is_counted() {
        let big = vec![b'x'; 3 * MAX_OUTPUT_LINE];
        let out = lines(&[&big, &big, b"\nnext\n"]);
        assert_eq!(out.len(), 2);
        assert!(out[0].starts_with(&"x".repeat(MAX_OUTPUT_LINE)));
        assert!(
            out[0].ends_with(&format!(
                "({} more bytes of this line dropped)",
                5 * MAX_OUTPUT_LINE
            )),
            "{}",
            &out[0][MAX_OUTPUT_LINE..]
        );
        assert_eq!(out[1], "next");
    }
}
