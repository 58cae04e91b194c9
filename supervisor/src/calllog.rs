//! The durable call log, shell side: recovery at start, appends before dispatch, group
//! fsync, and segment truncation once checkpoints cover them.
//!
//! The format and the reader are in `resurgam_shared::calllog`. Per actor, calls are
//! appended with one `write` per batch to the current segment (in the page cache: that
//! survives a crash of the supervisor process); in `fsync` mode a separate thread
//! `fdatasync`s the segments in groups and reports how far each actor's log is durable,
//! and only then are the replies released. Segments rotate at [`SEGMENT_BYTES`] and are
//! deleted once every checkpoint on file covers their last call, so disk use is bounded
//! by the calls since the older of the two newest checkpoints plus one segment.

use std::collections::{HashMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crossbeam_channel::Receiver;

use resurgam_shared::calllog::{self, LogRecord, Recovered, Stop};
use resurgam_shared::ipc::Call;

use crate::core::{ActorId, Event};
use crate::shell::{LoopTx, ShellEvent};

/// A segment is closed and a new one started beyond this size.
pub const SEGMENT_BYTES: u64 = 8 << 20;

/// Where a write goes; a seam so tests can make writes fail like a full disk does.
pub trait Sink: Send {
    fn write_all(&mut self, file: &File, buf: &[u8]) -> std::io::Result<()>;
}

/// Writes to the file.
pub struct RealSink;

impl Sink for RealSink {
    fn write_all(&mut self, mut file: &File, buf: &[u8]) -> std::io::Result<()> {
        file.write_all(buf)
    }
}

struct Segment {
    file: Arc<File>,
    path: PathBuf,
    last: Option<u64>,
    len: u64,
}

/// One actor's log writer.
pub struct ActorLog {
    name: String,
    dir: PathBuf,
    fsync: bool,
    current: Option<Segment>,
    /// Closed segments: (last seq, path), oldest first.
    closed: VecDeque<(Option<u64>, PathBuf)>,
    sink: Box<dyn Sink>,
    buf: Vec<u8>,
}

/// Why a call log operation failed, with the file it concerns.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    #[error("{op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no open segment")]
    NoSegment,
}

fn ctx(op: &'static str, path: &Path) -> impl Fn(std::io::Error) -> LogError {
    let path = path.to_path_buf();
    move |source| LogError::Io {
        op,
        path: path.clone(),
        source,
    }
}

/// Fsyncs a directory so that a created, renamed or deleted entry is durable.
fn sync_dir(dir: &Path) -> Result<(), LogError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync directory", dir))
}

impl ActorLog {
    /// Reads the actor's log (if any) and prepares it for appending. A torn tail is cut
    /// off; a log that stops early (corruption) has the bad segment and everything after
    /// it moved into a `quarantine-<time>` folder and its good prefix rewritten, so that
    /// new records never follow a bad one. Returns the good records and what was found.
    pub fn open(
        state_dir: &Path,
        name: &str,
        fsync: bool,
        sink: Box<dyn Sink>,
    ) -> Result<Opened, LogError> {
        let dir = calllog::log_dir(state_dir, name);
        let Recovered {
            segments,
            unread,
            records,
            first_seq,
            last_seq,
            mut problems,
            stopped_early,
            ..
        } = calllog::recover(&dir);
        let mut log = ActorLog {
            name: name.to_string(),
            dir: dir.clone(),
            fsync,
            current: None,
            closed: VecDeque::new(),
            sink,
            buf: Vec::new(),
        };
        if stopped_early {
            let bad = segments.last().map(|s| s.path.clone());
            let quarantine = dir.join(format!(
                "quarantine-{}",
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos())
            ));
            std::fs::create_dir_all(&quarantine).map_err(ctx("create", &quarantine))?;
            for p in bad.iter().chain(unread.iter()) {
                if let Some(file_name) = p.file_name() {
                    std::fs::rename(p, quarantine.join(file_name)).map_err(ctx("move aside", p))?;
                }
            }
            problems.push(format!(
                "recovery stopped early: the damaged segment and {} later ones were moved to {}; calls after the last good record are lost",
                unread.len(),
                quarantine.display()
            ));
            // Rewrite the good records of the damaged segment as a fresh segment.
            if let Some(info) = segments.last() {
                let keep: Vec<&LogRecord> =
                    records.iter().filter(|r| r.seq >= info.first_seq).collect();
                if let Some(first) = keep.first() {
                    let path = dir.join(calllog::segment_name(first.seq));
                    let mut bytes = Vec::new();
                    for r in &keep {
                        calllog::encode_into(&mut bytes, r.seq, &r.method, &r.args);
                    }
                    std::fs::write(&path, &bytes).map_err(ctx("rewrite", &path))?;
                    File::open(&path)
                        .and_then(|f| f.sync_all())
                        .map_err(ctx("fsync", &path))?;
                }
            }
            sync_dir(&dir)?;
        } else if let Some(last) = segments.last()
            && matches!(last.stop, Some(Stop::TornTail { .. }))
        {
            // A crash mid-append: cut the torn record off so appends follow good data.
            let f = OpenOptions::new()
                .write(true)
                .open(&last.path)
                .map_err(ctx("open", &last.path))?;
            f.set_len(last.good_len)
                .and_then(|()| f.sync_all())
                .map_err(ctx("truncate torn tail of", &last.path))?;
        }
        let on_disk = calllog::list_segments(&dir).map_err(ctx("list", &dir))?;
        for (i, (first, path)) in on_disk.iter().enumerate() {
            let next = on_disk.get(i + 1).map_or(u64::MAX, |s| s.0);
            let last = records
                .iter()
                .map(|r| r.seq)
                .filter(|&s| s >= *first && s < next)
                .max();
            let holds_anything = segments
                .iter()
                .find(|s| s.path == *path)
                .is_none_or(|s| s.last_seq.is_some());
            if last.is_none() && !holds_anything {
                // Nothing but a torn record or nothing at all (a crash right after the
                // file was created): it would only be in the way of the next append,
                // which may want this very name.
                std::fs::remove_file(path).map_err(ctx("remove empty segment", path))?;
                continue;
            }
            log.closed.push_back((last, path.clone()));
        }
        Ok(Opened {
            log,
            records,
            range: first_seq.zip(last_seq),
            problems,
        })
    }

    /// Writes a tombstone (record `seq`) for logged calls that were refused after all.
    pub fn cancel(&mut self, seq: u64, cancelled: &[u64]) -> Result<(), LogError> {
        self.append(&[Call {
            seq,
            method: calllog::CANCEL_METHOD.to_string(),
            args: calllog::encode_cancel_args(cancelled),
        }])
    }

    /// Appends a batch of calls (one write). On failure the segment is cut back to where
    /// it was, so a later append never follows a partial record.
    pub fn append(&mut self, calls: &[Call]) -> Result<(), LogError> {
        let Some(first) = calls.first() else {
            return Ok(());
        };
        if self.current.as_ref().is_none_or(|s| s.len >= SEGMENT_BYTES) {
            self.rotate(first.seq)?;
        }
        self.buf.clear();
        for c in calls {
            calllog::encode_into(&mut self.buf, c.seq, &c.method, &c.args);
        }
        let Some(seg) = self.current.as_mut() else {
            return Err(LogError::NoSegment);
        };
        match self.sink.write_all(&seg.file, &self.buf) {
            Ok(()) => {
                seg.len += self.buf.len() as u64;
                seg.last = calls.last().map(|c| c.seq);
                Ok(())
            }
            Err(e) => {
                let msg = ctx("append to", &seg.path)(e);
                if let Err(e2) = seg.file.set_len(seg.len) {
                    // The segment may end in a partial record: start a new one next
                    // time; recovery treats this one's tail as torn and moves on only
                    // if it is the last, so keep it closed and out of the way.
                    tracing::error!(actor = %self.name, path = %seg.path.display(), error = %e2, "cannot cut back a failed append");
                    if let Some(seg) = self.current.take() {
                        self.closed.push_back((seg.last, seg.path));
                    }
                }
                Err(msg)
            }
        }
    }

    fn rotate(&mut self, first_seq: u64) -> Result<(), LogError> {
        std::fs::create_dir_all(&self.dir).map_err(ctx("create", &self.dir))?;
        let path = self.dir.join(calllog::segment_name(first_seq));
        // Never keep the file we append to on the list of closed (deletable) segments.
        self.closed.retain(|(_, p)| *p != path);
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(ctx("create", &path))?;
        let len = file.metadata().map_err(ctx("stat", &path))?.len();
        if self.fsync {
            if let Some(old) = &self.current {
                old.file.sync_data().map_err(ctx("fsync", &old.path))?;
            }
            sync_dir(&self.dir)?;
        }
        if let Some(old) = self.current.take() {
            self.closed.push_back((old.last, old.path));
        }
        self.current = Some(Segment {
            file: Arc::new(file),
            path,
            last: None,
            len,
        });
        Ok(())
    }

    /// The bytes of the log's segments on disk (for `status`): the current one's length
    /// as written, the closed ones' as the file system reports them.
    pub fn bytes(&self) -> u64 {
        let closed: u64 = self
            .closed
            .iter()
            .filter_map(|(_, path)| std::fs::symlink_metadata(path).ok())
            .map(|m| m.len())
            .sum();
        closed + self.current.as_ref().map_or(0, |s| s.len)
    }

    /// The current segment, for the fsync thread.
    pub fn sync_handle(&self) -> Option<Arc<File>> {
        self.current.as_ref().map(|s| s.file.clone())
    }

    /// Deletes closed segments whose calls are all covered (seq <= `upto`).
    pub fn truncate(&mut self, upto: u64) {
        let mut removed = false;
        while let Some((last, path)) = self.closed.front() {
            if last.is_none_or(|l| l <= upto) {
                match std::fs::remove_file(path) {
                    Ok(()) => removed = true,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                    Err(e) => {
                        tracing::warn!(actor = %self.name, path = %path.display(), error = %e, "cannot delete a covered log segment");
                        return;
                    }
                }
                self.closed.pop_front();
            } else {
                break;
            }
        }
        // The current segment can go too once it is large and fully covered.
        let covered = self
            .current
            .as_ref()
            .is_some_and(|seg| seg.len >= SEGMENT_BYTES / 8 && seg.last.is_some_and(|l| l <= upto));
        if covered
            && let Some(seg) = self.current.take()
            && std::fs::remove_file(&seg.path).is_ok()
        {
            removed = true;
        }
        if removed && self.fsync {
            let _ = sync_dir(&self.dir);
        }
    }
}

/// What opening an actor's log found.
pub struct Opened {
    pub log: ActorLog,
    /// The good records, cancelled ones removed.
    pub records: Vec<LogRecord>,
    /// Smallest and largest seq in the log, cancelled records included.
    pub range: Option<(u64, u64)>,
    /// Torn tails, corruption, quarantined segments: for the operator's log.
    pub problems: Vec<String>,
}

/// A request to the fsync thread: make `file` durable, then report `upto` for `actor`.
pub struct SyncRequest {
    pub actor: ActorId,
    pub upto: u64,
    pub file: Arc<File>,
}

/// Starts the group-commit thread: it takes every pending request, fsyncs each file once,
/// and reports the highest durable seq per actor.
pub fn start_fsync_thread(
    requests: Receiver<SyncRequest>,
    events: LoopTx,
    latency: Arc<crate::metrics::AtomicHistogram>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("log-fsync".into())
        .spawn(move || {
            while let Ok(first) = requests.recv() {
                let mut batch = vec![first];
                batch.extend(requests.try_iter());
                let mut done: HashMap<ActorId, (u64, Option<String>)> = HashMap::new();
                let mut synced: Vec<(*const File, Result<(), String>)> = Vec::new();
                for r in &batch {
                    let key = Arc::as_ptr(&r.file);
                    let result = match synced.iter().find(|(k, _)| *k == key) {
                        Some((_, res)) => res.clone(),
                        None => {
                            let start = std::time::Instant::now();
                            let res = r.file.sync_data().map_err(|e| e.to_string());
                            latency.observe(start.elapsed());
                            synced.push((key, res.clone()));
                            res
                        }
                    };
                    let entry = done.entry(r.actor).or_insert((0, None));
                    entry.0 = entry.0.max(r.upto);
                    if let Err(e) = result {
                        entry.1 = Some(e);
                    }
                }
                for (actor, (upto, error)) in done {
                    let ev = match error {
                        None => Event::Durable { actor, upto },
                        Some(error) => Event::DurableFailed { actor, upto, error },
                    };
                    if events.send(ShellEvent::Core(ev)).is_err() {
                        return;
                    }
                }
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(seq: u64) -> Call {
        Call {
            seq,
            method: "incr".into(),
            args: b"1".to_vec(),
        }
    }

    /// Fails every write after `budget` bytes, writing a partial record first, like a
    /// file system that runs out of space mid-write.
    struct FullDisk {
        budget: usize,
    }

    impl Sink for FullDisk {
        fn write_all(&mut self, mut file: &File, buf: &[u8]) -> std::io::Result<()> {
            if buf.len() <= self.budget {
                self.budget -= buf.len();
                return file.write_all(buf);
            }
            let part = self.budget.min(buf.len() / 2);
            file.write_all(&buf[..part])?;
            self.budget = 0;
            Err(std::io::Error::from_raw_os_error(28))
        }
    }

    #[test]
    fn append_recover_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (mut log, recs, problems) = (o.log, o.records, o.problems);
        assert!(recs.is_empty() && problems.is_empty());
        log.append(&[call(1), call(2)]).unwrap();
        log.append(&[call(3)]).unwrap();
        drop(log);
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (recs, problems) = (o.records, o.problems);
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(problems.is_empty());
    }

    #[test]
    fn a_failed_append_leaves_no_partial_record_and_later_appends_work() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ActorLog::open(dir.path(), "a", false, Box::new(FullDisk { budget: 40 }))
            .unwrap()
            .log;
        log.append(&[call(1)]).unwrap();
        let err = log.append(&[call(2), call(3)]).unwrap_err();
        // Typed: the operation, the segment and the OS error.
        match &err {
            LogError::Io { op, path, source } => {
                assert_eq!(*op, "append to");
                assert!(path.starts_with(dir.path()), "{}", path.display());
                assert_eq!(source.raw_os_error(), Some(28), "{err}");
            }
            other => panic!("expected an I/O error, got {other}"),
        }
        // Space returns.
        log.sink = Box::new(RealSink);
        log.append(&[call(4)]).unwrap();
        drop(log);
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (recs, problems) = (o.records, o.problems);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 4]);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue_after_good_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ActorLog::open(dir.path(), "a", false, Box::new(RealSink))
            .unwrap()
            .log;
        log.append(&[call(1), call(2)]).unwrap();
        let seg = log.current.as_ref().unwrap().path.clone();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (mut log, recs, problems) = (o.log, o.records, o.problems);
        assert_eq!(recs.len(), 2);
        assert_eq!(problems.len(), 1, "{problems:?}");
        log.append(&[call(3)]).unwrap();
        drop(log);
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (recs, problems) = (o.records, o.problems);
        assert_eq!(
            recs.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2, 3]
        );
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn corruption_is_quarantined_and_the_good_prefix_kept() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ActorLog::open(dir.path(), "a", false, Box::new(RealSink))
            .unwrap()
            .log;
        log.append(&[call(1), call(2), call(3)]).unwrap();
        let seg = log.current.as_ref().unwrap().path.clone();
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let one = {
            let mut b = Vec::new();
            calllog::encode_into(&mut b, 1, "incr", b"1");
            b.len()
        };
        bytes[one + 12] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (mut log, recs, problems) = (o.log, o.records, o.problems);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        assert!(
            problems.iter().any(|p| p.contains("corrupt")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("quarantine")),
            "{problems:?}"
        );
        log.append(&[call(4)]).unwrap();
        drop(log);
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        let (recs, problems) = (o.records, o.problems);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 4]);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn an_empty_segment_from_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ActorLog::open(dir.path(), "a", false, Box::new(RealSink))
            .unwrap()
            .log;
        log.append(&[call(1), call(2)]).unwrap();
        drop(log);
        let empty = calllog::log_dir(dir.path(), "a").join(calllog::segment_name(3));
        std::fs::write(&empty, b"").unwrap();
        let mut log = ActorLog::open(dir.path(), "a", false, Box::new(RealSink))
            .unwrap()
            .log;
        assert!(!empty.exists());
        log.append(&[call(3)]).unwrap();
        log.truncate(2);
        drop(log);
        let o = ActorLog::open(dir.path(), "a", false, Box::new(RealSink)).unwrap();
        assert_eq!(o.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn truncation_deletes_only_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ActorLog::open(dir.path(), "a", false, Box::new(RealSink))
            .unwrap()
            .log;
        log.append(&[call(1), call(2)]).unwrap();
        log.rotate(3).unwrap();
        log.append(&[call(3), call(4)]).unwrap();
        log.rotate(5).unwrap();
        log.append(&[call(5)]).unwrap();
        log.truncate(3);
        let left: Vec<u64> = calllog::list_segments(&calllog::log_dir(dir.path(), "a"))
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, vec![3, 5]);
        log.truncate(4);
        let left: Vec<u64> = calllog::list_segments(&calllog::log_dir(dir.path(), "a"))
            .unwrap()
            .into_iter()
            .map(|s| s.0)
            .collect();
        assert_eq!(left, vec![5]);
    }
}
