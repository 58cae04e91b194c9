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
//!
//! The state directory's manifest records that an actor has a log (its "logged" mark,
//! [`Mark`]) before any of its calls is acknowledged: a log that vanishes later is
//! then noticed rather than taken for a new actor. The first append of a run that needs
//! the mark asks the same thread for it ([`LogJob::Mark`]), so the manifest's write and
//! its two fsyncs stay off the event loop; until it is on disk, the calls appended
//! count as written but not durable (their replies wait, like fsync mode's).

use std::collections::{HashMap, VecDeque};
use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::{Arc, Mutex, PoisonError};

use nix::fcntl::OFlag;

use crossbeam_channel::Receiver;

use resurgam_shared::calllog::{self, LogOwner, LogRecord, Recovered, Stop};
use resurgam_shared::ipc::Call;
use resurgam_shared::safefs::Dir;

use crate::core::{ActorId, Event};
use crate::manifest::Manifest;
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
    /// The log directory's path; `dir` holds it open once it exists.
    path: PathBuf,
    /// Shared with the log thread, which makes a new segment's entry in it durable.
    dir: Option<Arc<Dir>>,
    fsync: bool,
    current: Option<Segment>,
    /// Closed segments, oldest first.
    closed: VecDeque<Closed>,
    sink: Box<dyn Sink>,
    buf: Vec<u8>,
    /// Whether the state directory's manifest records that this actor has a log.
    mark: Mark,
    /// Named by the owner record each new segment begins with.
    owner: Option<LogOwner>,
}

/// A segment no longer appended to.
struct Closed {
    /// Its newest call (`None`: nothing but its owner record).
    last: Option<u64>,
    path: PathBuf,
    /// Its length, learnt when it was closed, so `status` and a metrics scrape need not
    /// stat it.
    len: u64,
}

/// Whether the manifest records an actor's log (its "logged" mark), which must be on
/// disk before any call of the actor is acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mark {
    /// Not known to be recorded: the next append asks for it.
    Unrecorded,
    /// Asked for, not on disk yet; `upto`: the newest call appended meanwhile. `stale`:
    /// `restart --fresh` reset the manifest's entry while it was being written, so the
    /// write may have come before the reset: it is asked for again when it finishes.
    Pending {
        upto: u64,
        stale: bool,
    },
    Recorded,
}

/// What a finished mark means (see [`ActorLog::note_marked`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Marked {
    /// Recorded; the calls up to this seq are durable now (log mode).
    Durable(u64),
    /// Recorded; nothing was waiting for it here.
    Recorded,
    /// Ask the log thread for the mark again ([`LogJob::Mark`]).
    AskAgain,
}

/// What the shell does after a successful append (see [`ActorLog::note_appended`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Ask the log thread to record the mark ([`LogJob::Mark`]).
    pub ask_mark: bool,
    /// The calls count as durable as the mode promises (`log` mode: the page cache)
    /// now; else their `Durable` comes once the mark is on disk.
    pub durable: bool,
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

/// A file that should be there and is not.
fn gone(op: &'static str, path: &Path) -> LogError {
    LogError::Io {
        op,
        path: path.to_path_buf(),
        source: std::io::ErrorKind::NotFound.into(),
    }
}

/// The file name of a path in a log directory (segments are always named).
fn name_of(path: &Path) -> &OsStr {
    path.file_name().unwrap_or(path.as_os_str())
}

/// Moves the damaged segments of `found` (and those recovery did not read) into a new
/// `quarantine-<nanos>/` folder of `dir`, and puts each damaged segment's good prefix
/// back under its name. Crash-atomic: a damaged segment is first linked into the
/// quarantine (its bytes never move, whatever its size), its good prefix written to a
/// new file and fsync'd, and only then renamed over the damaged one; every directory is
/// fsync'd. A crash at any point leaves the damaged segment in place or in the
/// quarantine, never neither. Returns the quarantine's path.
fn quarantine(dir: &Dir, found: &Recovered) -> Result<PathBuf, LogError> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    let qname = OsString::from(format!("quarantine-{stamp}"));
    let qpath = dir.join(&qname);
    let q = dir
        .subdir(&qname, true)
        .map_err(ctx("create", &qpath))?
        .ok_or_else(|| gone("create", &qpath))?;
    for info in found.segments.iter().filter(|s| s.damaged()) {
        let name = name_of(&info.path);
        if info.last_seq.is_none() {
            dir.rename(name, &q, name)
                .map_err(ctx("move aside", &info.path))?;
            continue;
        }
        let tmp = OsString::from(format!("{}.rewrite", name.to_string_lossy()));
        let tmp_path = dir.join(&tmp);
        dir.remove(&tmp).map_err(ctx("remove", &tmp_path))?;
        let mut out = dir
            .create_file(&tmp, OFlag::empty())
            .map_err(ctx("create", &tmp_path))?;
        let src = dir
            .open_file(name, OFlag::O_RDONLY)
            .map_err(ctx("open", &info.path))?
            .ok_or_else(|| gone("open", &info.path))?;
        let copied = std::io::copy(&mut (&src).take(info.good_len), &mut out)
            .map_err(ctx("copy the good records of", &info.path))?;
        if copied != info.good_len {
            return Err(gone("copy the good records of", &info.path));
        }
        out.sync_all().map_err(ctx("fsync", &tmp_path))?;
        nix::unistd::linkat(
            dir.as_fd(),
            name,
            q.as_fd(),
            name,
            nix::fcntl::AtFlags::empty(),
        )
        .map_err(|e| LogError::Io {
            op: "link into the quarantine",
            path: info.path.clone(),
            source: e.into(),
        })?;
        q.sync().map_err(ctx("fsync", &qpath))?;
        dir.rename(&tmp, dir, name)
            .map_err(ctx("replace", &info.path))?;
    }
    for p in &found.unread {
        dir.rename(name_of(p), &q, name_of(p))
            .map_err(ctx("move aside", p))?;
    }
    q.sync().map_err(ctx("fsync", &qpath))?;
    dir.sync().map_err(ctx("fsync", dir.path()))?;
    Ok(qpath)
}

impl ActorLog {
    /// Reads the actor's log (if any) and prepares it for appending; `covered` is the
    /// `last_seq` of the newest checkpoint on file. A torn tail is cut off. Damage is
    /// quarantined ([`quarantine`]) before anything is cut, so new records never follow
    /// a bad one; when acknowledged calls may be lost, [`Opened::lost`] says why.
    pub fn open(
        state_dir: &Path,
        name: &str,
        fsync: bool,
        sink: Box<dyn Sink>,
        covered: u64,
        state_dir_id: Option<&str>,
    ) -> Result<Opened, LogError> {
        let path = calllog::log_dir(state_dir, name);
        let owner = state_dir_id.map(|dir| LogOwner {
            actor: name.to_string(),
            dir: dir.to_string(),
        });
        let found = calllog::recover_covered(&path, covered, owner.as_ref());
        // A link in place of the directory was refused by the recovery (and is `lost`).
        let dir = match Dir::open(&path) {
            Ok(d) => d,
            Err(e) if found.lost.is_some() => {
                tracing::debug!(error = %e, "log directory not usable");
                None
            }
            Err(e) => return Err(ctx("open", &path)(e)),
        };
        let mut problems = found.problems.clone();
        if let Some(dir) = &dir {
            if found.segments.iter().any(|s| s.damaged()) || !found.unread.is_empty() {
                let q = quarantine(dir, &found)?;
                problems.push(format!(
                    "the damaged segments and the {} after them that could not be used were \
                     moved to {} (byte for byte); each damaged one's good records were put back",
                    found.unread.len(),
                    q.display()
                ));
            } else if let Some(last) = found.segments.last()
                && matches!(last.stop, Some(Stop::TornTail { .. }))
            {
                // A crash mid-append: cut the torn record off so appends follow good data.
                let f = dir
                    .open_file(name_of(&last.path), OFlag::O_WRONLY)
                    .map_err(ctx("open", &last.path))?
                    .ok_or_else(|| gone("open", &last.path))?;
                f.set_len(last.good_len)
                    .and_then(|()| f.sync_all())
                    .map_err(ctx("truncate torn tail of", &last.path))?;
            }
        }
        let mut closed = VecDeque::new();
        if let Some(dir) = &dir {
            for (_, seg) in calllog::segments_of(dir).map_err(ctx("list", &path))? {
                let p = dir.join(&seg);
                match found.segments.iter().find(|s| s.path == p) {
                    // Nothing but a torn record or nothing at all (a crash right after
                    // the file was created): it would only be in the way of the next
                    // append, which may want this very name.
                    Some(info) if info.last_seq.is_none() => {
                        dir.remove(&seg).map_err(ctx("remove empty segment", &p))?;
                    }
                    Some(info) => {
                        // Quarantine may have rewritten it: its length now, once.
                        let len = std::fs::symlink_metadata(&p).map_or(0, |m| m.len());
                        closed.push_back(Closed {
                            last: info.last_seq,
                            path: p,
                            len,
                        });
                    }
                    // Not read (it appeared meanwhile): never ours to delete.
                    None => {}
                }
            }
        }
        let log = ActorLog {
            name: name.to_string(),
            path,
            dir: dir.map(Arc::new),
            fsync,
            current: None,
            closed,
            sink,
            buf: Vec::new(),
            mark: Mark::Unrecorded,
            owner,
        };
        Ok(Opened {
            log,
            range: found.first_seq.zip(found.last_seq),
            records: found.records,
            problems,
            lost: found.lost,
        })
    }

    /// The manifest already records this actor's log (found at start, or written).
    pub fn set_recorded(&mut self) {
        self.mark = Mark::Recorded;
    }

    /// `restart --fresh` forgot what the manifest recorded: the next append records the
    /// log again, and a mark still being written is written once more when it finishes
    /// (see [`ActorLog::note_marked`]).
    pub fn forget_mark(&mut self) {
        match &mut self.mark {
            Mark::Recorded => self.mark = Mark::Unrecorded,
            Mark::Pending { stale, .. } => *stale = true,
            Mark::Unrecorded => {}
        }
    }

    /// After calls up to `upto` were appended: whether to ask for the mark, and whether
    /// they count as durable now. In fsync mode they never do here (the fsync thread
    /// reports them, after any mark it was asked for before); in log mode only once the
    /// mark is on disk ([`ActorLog::note_marked`] says how far then).
    pub fn note_appended(&mut self, upto: u64) -> Appended {
        let ask_mark = self.mark == Mark::Unrecorded;
        match &mut self.mark {
            Mark::Recorded => {}
            Mark::Unrecorded => self.mark = Mark::Pending { upto, stale: false },
            Mark::Pending { upto: u, .. } => *u = (*u).max(upto),
        }
        Appended {
            ask_mark,
            durable: !self.fsync && self.mark == Mark::Recorded,
        }
    }

    /// The mark is on disk (or could not be written, which is logged): in log mode, the
    /// newest call appended meanwhile, now durable. A mark a `restart --fresh` made stale
    /// while it was written is not trusted: [`Marked::AskAgain`], and the calls wait for
    /// the next one.
    pub fn note_marked(&mut self) -> Marked {
        match self.mark {
            Mark::Pending { upto, stale: true } => {
                self.mark = Mark::Pending { upto, stale: false };
                Marked::AskAgain
            }
            Mark::Pending { upto, stale: false } if !self.fsync => {
                self.mark = Mark::Recorded;
                Marked::Durable(upto)
            }
            _ => {
                self.mark = Mark::Recorded;
                Marked::Recorded
            }
        }
    }

    /// Writes a tombstone (record `seq`) for logged calls that were refused after all.
    pub fn cancel(&mut self, seq: u64, cancelled: &[u64]) -> Result<(), LogError> {
        self.append(&[Call {
            seq,
            method: calllog::CANCEL_METHOD.to_string(),
            args: calllog::encode_cancel_args(cancelled),
            key: None,
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
            calllog::encode_call_into(&mut self.buf, c.seq, &c.method, c.key.as_ref(), &c.args);
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
                        // Its length is unknown now: the file system's, once.
                        let len = std::fs::symlink_metadata(&seg.path).map_or(seg.len, |m| m.len());
                        self.closed.push_back(Closed {
                            last: seg.last,
                            path: seg.path,
                            len,
                        });
                    }
                }
                Err(msg)
            }
        }
    }

    fn rotate(&mut self, first_seq: u64) -> Result<(), LogError> {
        if self.dir.is_none() {
            let dir = Dir::create(&self.path).map_err(ctx("create", &self.path))?;
            self.dir = Some(Arc::new(dir));
        }
        let Some(dir) = &self.dir else {
            return Err(LogError::NoSegment);
        };
        let name = OsString::from(calllog::segment_name(first_seq));
        let path = dir.join(&name);
        // Never keep the file we append to on the list of closed (deletable) segments.
        self.closed.retain(|c| c.path != path);
        let flags = OFlag::O_WRONLY | OFlag::O_APPEND;
        let file = match dir.open_file(&name, flags).map_err(ctx("open", &path))? {
            Some(f) => f,
            None => dir
                .create_file(&name, flags)
                .map_err(ctx("create", &path))?,
        };
        let mut len = file.metadata().map_err(ctx("stat", &path))?.len();
        if len == 0
            && let Some(owner) = &self.owner
        {
            // Every segment begins by naming whose it is (a failed write leaves a torn
            // record only, which the next start cuts off).
            self.buf.clear();
            calllog::encode_into(
                &mut self.buf,
                first_seq,
                calllog::OWNER_METHOD,
                &owner.encode(),
            );
            self.sink
                .write_all(&file, &self.buf)
                .map_err(ctx("append to", &path))?;
            len = self.buf.len() as u64;
        }
        // In fsync mode the log thread makes the old segment and the new one's directory
        // entry durable before it reports any call in them (see [`start_fsync_thread`]).
        if let Some(old) = self.current.take() {
            self.closed.push_back(Closed {
                last: old.last,
                path: old.path,
                len: old.len,
            });
        }
        self.current = Some(Segment {
            file: Arc::new(file),
            path,
            last: None,
            len,
        });
        Ok(())
    }

    /// The bytes of the log's segments on disk (for `status` and metrics), from the
    /// lengths kept as they were written: no file is looked at on the event loop.
    pub fn bytes(&self) -> u64 {
        let closed: u64 = self.closed.iter().map(|c| c.len).sum();
        closed + self.current.as_ref().map_or(0, |s| s.len)
    }

    /// What the fsync thread needs to make the calls up to `upto` durable: the current
    /// segment and its directory.
    pub fn sync_request(&self, actor: ActorId, upto: u64) -> Option<SyncRequest> {
        Some(SyncRequest {
            actor,
            upto,
            file: self.current.as_ref()?.file.clone(),
            dir: self.dir.clone()?,
        })
    }

    /// Deletes closed segments whose calls are all covered (seq <= `upto`).
    pub fn truncate(&mut self, upto: u64) {
        let Some(dir) = &self.dir else {
            return;
        };
        let mut removed = false;
        while let Some(Closed { last, path, .. }) = self.closed.front() {
            if last.is_none_or(|l| l <= upto) {
                if let Err(e) = dir.remove(name_of(path)) {
                    tracing::warn!(actor = %self.name, path = %path.display(), error = %e, "cannot delete a covered log segment");
                    return;
                }
                removed = true;
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
            && dir.remove(name_of(&seg.path)).is_ok()
        {
            removed = true;
        }
        if removed && self.fsync {
            let _ = dir.sync();
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
    /// Why acknowledged calls may be lost, when they may be: the actor is held DEAD.
    pub lost: Option<String>,
}

/// A request to the fsync thread: make `file` and its entry in `dir` durable, then
/// report `upto` for `actor`.
pub struct SyncRequest {
    pub actor: ActorId,
    pub upto: u64,
    pub file: Arc<File>,
    pub dir: Arc<Dir>,
}

/// Work for the log thread.
pub enum LogJob {
    Sync(SyncRequest),
    /// Record in the manifest that actor `actor` (named `name`) has a log, then report
    /// [`ShellEvent::LogMarked`]. Done before the syncs taken with it, so no `Durable`
    /// of the actor precedes its mark.
    Mark {
        actor: ActorId,
        name: String,
    },
}

/// Why a segment is not durable after a group commit (shared, through an `Rc`, by every
/// call of the batch that waited on the same file).
#[derive(Debug, thiserror::Error)]
enum SyncError {
    /// The fsync of the segment itself.
    #[error("{0}")]
    Data(std::io::Error),
    /// The fsync of the directory that holds the segment's entry.
    #[error("fsync directory {}: {source}", dir.display())]
    Dir {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// Records an actor's log in the manifest; a failure is logged (the calls go on, as
/// they would with the manifest gone).
fn record_logged(manifest: &Mutex<Manifest>, actor: &str) {
    let mut m = manifest.lock().unwrap_or_else(PoisonError::into_inner);
    if let Err(e) = m.update(actor, |e| e.logged = true) {
        tracing::error!(actor, path = %m.path().display(), error = %e, "cannot record the call log in the state directory's manifest");
    }
}

/// Starts the log thread: it takes every pending job, records the marks asked for, then
/// fsyncs each file once and reports the highest durable seq per actor (group commit).
/// A segment's directory is fsynced once, the first time the segment is: until that
/// succeeds, a crash could lose the whole file.
pub fn start_fsync_thread(
    requests: Receiver<LogJob>,
    events: LoopTx,
    latency: Arc<crate::metrics::AtomicHistogram>,
    manifest: Arc<Mutex<Manifest>>,
) -> std::io::Result<std::thread::JoinHandle<()>> {
    std::thread::Builder::new()
        .name("log-fsync".into())
        .spawn(move || {
            // Per actor, the segment whose directory entry is known durable.
            let mut entered: HashMap<ActorId, Arc<File>> = HashMap::new();
            while let Ok(first) = requests.recv() {
                let mut batch = Vec::new();
                for job in std::iter::once(first).chain(requests.try_iter()) {
                    match job {
                        LogJob::Sync(r) => batch.push(r),
                        LogJob::Mark { actor, name } => {
                            record_logged(&manifest, &name);
                            if events.send(ShellEvent::LogMarked { actor }).is_err() {
                                return;
                            }
                        }
                    }
                }
                let mut done: HashMap<ActorId, (u64, Option<Rc<SyncError>>)> = HashMap::new();
                let mut synced: Vec<(*const File, Result<(), Rc<SyncError>>)> = Vec::new();
                for r in &batch {
                    let key = Arc::as_ptr(&r.file);
                    let result = match synced.iter().find(|(k, _)| *k == key) {
                        Some((_, res)) => res.clone(),
                        None => {
                            let start = std::time::Instant::now();
                            let mut res =
                                r.file.sync_data().map_err(|e| Rc::new(SyncError::Data(e)));
                            let known = entered
                                .get(&r.actor)
                                .is_some_and(|f| Arc::ptr_eq(f, &r.file));
                            if res.is_ok() && !known {
                                res = r.dir.sync().map_err(|source| {
                                    Rc::new(SyncError::Dir {
                                        dir: r.dir.path().to_path_buf(),
                                        source,
                                    })
                                });
                                if res.is_ok() {
                                    entered.insert(r.actor, r.file.clone());
                                }
                            }
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
                        Some(error) => Event::DurableFailed {
                            actor,
                            upto,
                            error: error.to_string(),
                        },
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
    use std::fs::OpenOptions;

    /// Opens actor `a`'s log in `state_dir` (no fsync, nothing covered, no owner).
    fn reopen(state_dir: &Path) -> Opened {
        ActorLog::open(state_dir, "a", false, Box::new(RealSink), 0, None).unwrap()
    }

    /// [`reopen`], for appending.
    fn open_log(state_dir: &Path) -> ActorLog {
        reopen(state_dir).log
    }

    fn call(seq: u64) -> Call {
        Call {
            seq,
            method: "incr".into(),
            args: b"1".to_vec(),
            key: None,
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

    /// The first append of a run asks for the manifest's mark once; in log mode the
    /// calls appended until it is on disk are durable only then (all of them at once),
    /// in fsync mode never here (the fsync thread reports them after the mark).
    #[test]
    fn the_logged_mark_is_asked_once_and_gates_durability_until_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_log(dir.path());
        let held = Appended {
            ask_mark: false,
            durable: false,
        };
        assert_eq!(
            log.note_appended(2),
            Appended {
                ask_mark: true,
                durable: false
            }
        );
        assert_eq!(log.note_appended(5), held);
        assert_eq!(log.note_marked(), Marked::Durable(5));
        assert_eq!(
            log.note_appended(6),
            Appended {
                ask_mark: false,
                durable: true
            }
        );
        assert_eq!(log.note_marked(), Marked::Recorded);
        // `restart --fresh` forgets it: asked again.
        log.forget_mark();
        assert!(log.note_appended(7).ask_mark);
        // A forget while the mark is written (it may have reached the manifest before
        // the reset) has it written again before anything counts as durable.
        log.forget_mark();
        assert_eq!(log.note_appended(8), held);
        assert_eq!(log.note_marked(), Marked::AskAgain);
        assert_eq!(log.note_appended(9), held);
        assert_eq!(log.note_marked(), Marked::Durable(9));

        let mut fsynced = ActorLog::open(dir.path(), "b", true, Box::new(RealSink), 0, None)
            .unwrap()
            .log;
        assert_eq!(
            fsynced.note_appended(1),
            Appended {
                ask_mark: true,
                durable: false
            }
        );
        assert_eq!(fsynced.note_marked(), Marked::Recorded);
        assert_eq!(fsynced.note_appended(2), held);
        // Found recorded at start: nothing to ask.
        let mut found = open_log(dir.path());
        found.set_recorded();
        assert!(!found.note_appended(9).ask_mark);
    }

    #[test]
    fn append_recover_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let o = reopen(dir.path());
        let (mut log, recs, problems) = (o.log, o.records, o.problems);
        assert!(recs.is_empty() && problems.is_empty());
        log.append(&[call(1), call(2)]).unwrap();
        log.append(&[call(3)]).unwrap();
        drop(log);
        let o = reopen(dir.path());
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
        let mut log = ActorLog::open(
            dir.path(),
            "a",
            false,
            Box::new(FullDisk { budget: 40 }),
            0,
            None,
        )
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
        let o = reopen(dir.path());
        let (recs, problems) = (o.records, o.problems);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 4]);
        assert!(problems.is_empty(), "{problems:?}");
    }

    #[test]
    fn torn_tail_is_cut_and_appends_continue_after_good_data() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_log(dir.path());
        log.append(&[call(1), call(2)]).unwrap();
        let seg = log.current.as_ref().unwrap().path.clone();
        drop(log);
        let mut f = OpenOptions::new().append(true).open(&seg).unwrap();
        f.write_all(&[9, 0, 0, 0, 1, 2]).unwrap();
        let o = reopen(dir.path());
        let (mut log, recs, problems) = (o.log, o.records, o.problems);
        assert_eq!(recs.len(), 2);
        assert_eq!(problems.len(), 1, "{problems:?}");
        log.append(&[call(3)]).unwrap();
        drop(log);
        let o = reopen(dir.path());
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
        let mut log = open_log(dir.path());
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
        let o = reopen(dir.path());
        let (mut log, recs, problems) = (o.log, o.records, o.problems);
        assert_eq!(recs.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
        assert!(o.lost.is_some_and(|l| l.contains("calls from seq 2 on")));
        assert!(
            problems.iter().any(|p| p.contains("corrupt")),
            "{problems:?}"
        );
        assert!(
            problems.iter().any(|p| p.contains("quarantine")),
            "{problems:?}"
        );
        // The damaged bytes are in the quarantine, whole; the good record is in place.
        let q: Vec<PathBuf> = std::fs::read_dir(seg.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.is_dir())
            .collect();
        assert_eq!(q.len(), 1);
        assert_eq!(
            std::fs::read(q[0].join(seg.file_name().unwrap())).unwrap(),
            bytes
        );
        assert_eq!(std::fs::read(&seg).unwrap(), &bytes[..one]);
        // Once the operator accepted the loss, calls go on from seq 2.
        log.append(&[call(2)]).unwrap();
        drop(log);
        let o = reopen(dir.path());
        assert_eq!(
            o.records.iter().map(|r| r.seq).collect::<Vec<_>>(),
            vec![1, 2]
        );
        assert!(
            o.problems.is_empty() && o.lost.is_none(),
            "{:?}",
            o.problems
        );
    }

    #[test]
    fn a_quarantine_rewrite_keeps_tombstones() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_log(dir.path());
        log.append(&[call(1), call(2)]).unwrap();
        log.cancel(3, &[2]).unwrap();
        log.append(&[call(4)]).unwrap();
        let seg = log.current.as_ref().unwrap().path.clone();
        drop(log);
        let mut bytes = std::fs::read(&seg).unwrap();
        let l = bytes.len();
        bytes[l - 1] ^= 0xff;
        std::fs::write(&seg, &bytes).unwrap();
        for _ in 0..2 {
            let o = reopen(dir.path());
            // The refused call stays refused, also on the second start.
            assert_eq!(o.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1]);
            assert_eq!(o.range, Some((1, 3)));
        }
    }

    #[test]
    fn an_empty_segment_from_a_crash_is_removed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_log(dir.path());
        log.append(&[call(1), call(2)]).unwrap();
        drop(log);
        let empty = calllog::log_dir(dir.path(), "a").join(calllog::segment_name(3));
        std::fs::write(&empty, b"").unwrap();
        let mut log = open_log(dir.path());
        assert!(!empty.exists());
        log.append(&[call(3)]).unwrap();
        log.truncate(2);
        drop(log);
        let o = reopen(dir.path());
        assert_eq!(o.records.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![3]);
    }

    #[test]
    fn truncation_deletes_only_covered_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_log(dir.path());
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

    /// The bytes of every segment file in actor `a`'s log directory.
    fn on_disk(state_dir: &Path) -> u64 {
        let dir = calllog::log_dir(state_dir, "a");
        std::fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().metadata().unwrap().len())
            .sum()
    }

    /// The kept lengths add up to what the files hold: across rotation, truncation,
    /// a reopen that cuts a torn tail, and a failed append that is cut back.
    #[test]
    fn log_bytes_match_the_segments_on_disk() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = open_log(dir.path());
        assert_eq!(log.bytes(), 0);
        log.append(&[call(1), call(2)]).unwrap();
        log.rotate(3).unwrap();
        log.append(&[call(3), call(4)]).unwrap();
        log.rotate(5).unwrap();
        log.append(&[call(5)]).unwrap();
        assert_eq!(log.bytes(), on_disk(dir.path()));
        log.truncate(3);
        assert_eq!(log.bytes(), on_disk(dir.path()));
        drop(log);
        // A torn record at the end of the newest segment.
        let newest = calllog::log_dir(dir.path(), "a").join(calllog::segment_name(5));
        let mut f = OpenOptions::new().append(true).open(&newest).unwrap();
        f.write_all(b"\x01\x02\x03").unwrap();
        drop(f);
        let mut log = open_log(dir.path());
        assert_eq!(log.bytes(), on_disk(dir.path()));
        log.append(&[call(6)]).unwrap();
        assert_eq!(log.bytes(), on_disk(dir.path()));
        let mut log = ActorLog {
            sink: Box::new(FullDisk { budget: 0 }),
            ..log
        };
        assert!(log.append(&[call(7)]).is_err());
        assert_eq!(log.bytes(), on_disk(dir.path()));
    }

    /// In fsync mode the log thread, not the append, makes a rotated segment durable:
    /// calls on both sides of a rotation are reported durable, in order.
    #[test]
    fn the_log_thread_reports_calls_across_a_rotation_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut log = ActorLog::open(dir.path(), "a", true, Box::new(RealSink), 0, None)
            .unwrap()
            .log;
        let poll = mio::Poll::new().unwrap();
        let waker = Arc::new(mio::Waker::new(poll.registry(), mio::Token(0)).unwrap());
        let (ev_tx, ev_rx) = crossbeam_channel::unbounded();
        let (job_tx, job_rx) = crossbeam_channel::unbounded();
        let manifest = Arc::new(Mutex::new(Manifest::open(dir.path()).unwrap()));
        let latency = Arc::new(crate::metrics::AtomicHistogram::new(
            crate::metrics::FSYNC_SECONDS,
        ));
        let thread =
            start_fsync_thread(job_rx, LoopTx::new(ev_tx, waker), latency, manifest).unwrap();
        let actor: ActorId = 0;
        for (calls, rotate) in [(vec![call(1), call(2)], None), (vec![call(3)], Some(3))] {
            if let Some(first) = rotate {
                log.rotate(first).unwrap();
            }
            log.append(&calls).unwrap();
            let upto = calls.last().unwrap().seq;
            let request = log.sync_request(actor, upto).unwrap();
            job_tx.send(LogJob::Sync(request)).unwrap();
            match ev_rx.recv().unwrap() {
                ShellEvent::Core(Event::Durable { actor: a, upto: u }) => {
                    assert_eq!((a, u), (actor, upto));
                }
                _ => panic!("expected Durable up to {upto}"),
            }
        }
        drop(job_tx);
        thread.join().unwrap();
    }
}
