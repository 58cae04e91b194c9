//! The supervisor's directories and control socket, checked against what `run` does with
//! them: it creates both directories, keeps its lock, checkpoints and call logs in them,
//! and binds the socket (replacing a stale one, removing it at exit). A path `run` would
//! fail on, or one where binding the socket would replace and later delete a file of its
//! own (a checkpoint, the lock, the config file), is an error here already.
//!
//! The checks look at the file system as it is now (an existing file where a directory
//! must go, a directory where the socket must go) and compare paths as `run` will use
//! them: resolved against the config file's directory, relative ones against the working
//! directory. What can only be known when `run` starts (permissions, a live supervisor,
//! a full disk) is left to it.

use std::fs;
use std::ops::Range;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Component, Path, PathBuf};

use super::{Checker, valid_actor_name};

/// Longest control socket path, in bytes: `sun_path` of AF_UNIX holds 108 bytes, the
/// last one a NUL.
pub const MAX_SOCKET_PATH_BYTES: usize = 107;
/// The lock file in the state directory that keeps two supervisors off it.
pub const LOCK_FILE: &str = ".resurgam.lock";
/// Suffix of an actor's synced checkpoint copy in the state directory.
pub const DISK_COPY_SUFFIX: &str = ".checkpoint";
/// Suffix of an actor's memory-mapped checkpoint in the runtime directory.
pub const MMAP_SUFFIX: &str = ".ckpt";
/// Suffix of an actor's call log directory in the state directory.
pub const LOG_DIR_SUFFIX: &str = ".log";

/// One of the supervisor's paths and where it came from, for messages.
pub(super) struct Setting<'p> {
    pub key: &'static str,
    pub path: &'p Path,
    /// The value in the file this path comes from: its own key's, or that of the key it
    /// defaults from; `None` for the environment or a built-in default.
    pub span: Option<Range<usize>>,
    /// How it was set when not by its own key, e.g. "by default <state_dir>/run".
    pub origin: Option<&'static str>,
}

impl Setting<'_> {
    fn label(&self) -> String {
        match self.origin {
            None => format!("[supervisor] {}", self.key),
            Some(origin) => format!("[supervisor] {} ({origin})", self.key),
        }
    }
}

impl Checker<'_> {
    /// Reports every problem of the three paths; `state`, `runtime` and `socket` are the
    /// resolved `state_dir`, `runtime_dir` and `socket`.
    pub(super) fn supervisor_paths(
        &mut self,
        state: &Setting<'_>,
        runtime: &Setting<'_>,
        socket: &Setting<'_>,
    ) {
        let mut problems: Vec<(&Setting<'_>, String)> = Vec::new();
        // An existing file in the way is reported once, at the first path it blocks.
        let mut blockers: Vec<PathBuf> = Vec::new();
        for dir in [state, runtime] {
            if let Some(p) = blocked(dir, dir.path, &mut blockers) {
                problems.push((dir, p));
            }
        }
        let clashes = [
            (runtime, state, state_entry as EntryKind),
            (state, runtime, runtime_entry),
        ];
        let mut runtime_clash = false;
        for (s, dir, kind) in clashes {
            if let Some((p, _)) = clash(s, dir, kind) {
                runtime_clash |= s.key == runtime.key;
                problems.push((s, format!("{p}; choose a directory of its own")));
            }
        }
        // The socket's worst problem only (one mistake, one line), and none when it is
        // the default inside a runtime_dir reported already.
        let socket_clash = (socket.origin.is_none() || !runtime_clash)
            .then(|| self.socket_clash(socket, state, runtime))
            .flatten();
        let socket_problem = socket_clash.or_else(|| match fs::symlink_metadata(socket.path) {
            Ok(m) if m.uid() != nix::unistd::geteuid().as_raw() => Some(format!(
                "{} exists and is owned by {}, not by {} who runs this; `run` never touches \
                 another user's file (remove it as its owner, or choose another path)",
                socket.path.display(),
                crate::safefs::describe_uid(m.uid()),
                crate::safefs::describe_uid(nix::unistd::geteuid().as_raw())
            )),
            Ok(m) if m.is_dir() => Some(format!(
                "{} is a directory; the socket needs a path of its own, e.g. {}",
                socket.path.display(),
                socket.path.join("control.sock").display()
            )),
            Ok(m) if !m.file_type().is_socket() => Some(format!(
                "{} exists and is not a socket; `run` never replaces such a file (remove it \
                 or choose another path)",
                socket.path.display()
            )),
            Ok(_) => None,
            Err(_) => socket
                .path
                .parent()
                .and_then(|parent| blocked(socket, parent, &mut blockers)),
        });
        problems.extend(socket_problem.map(|p| (socket, p)));
        let bytes = socket.path.as_os_str().len();
        if bytes > MAX_SOCKET_PATH_BYTES {
            problems.push((
                socket,
                format!(
                    "{} is {bytes} bytes long; allowed: at most {MAX_SOCKET_PATH_BYTES} bytes (a \
                     Unix socket address holds 108, the last a NUL); choose a shorter path",
                    socket.path.display()
                ),
            ));
        }

        for (s, problem) in problems {
            let error = self.placed(s.span.as_ref(), format!("{}: {problem}", s.label()));
            self.errors.push(error);
        }
    }

    /// When binding the socket would replace something of `run`'s own: the config file,
    /// the state or runtime directory, a file `run` keeps in one of them.
    fn socket_clash(
        &self,
        socket: &Setting<'_>,
        state: &Setting<'_>,
        runtime: &Setting<'_>,
    ) -> Option<String> {
        let normal_socket = normal(socket.path);
        let path = socket.path.display();
        let instead = runtime.path.join("control.sock");
        if normal_socket == normal(self.file) {
            return Some(format!(
                "{path} is this config file; binding the socket there would replace it"
            ));
        }
        let advice = format!(
            "choose a path of its own for the socket, e.g. {}",
            instead.display()
        );
        for dir in [state, runtime] {
            let normal_dir = normal(dir.path);
            if normal_dir.starts_with(&normal_socket) {
                let relation = if normal_dir == normal_socket {
                    "is"
                } else {
                    "contains"
                };
                return Some(format!(
                    "{path} {relation} the directory `run` creates for {}; {advice}",
                    dir.key
                ));
            }
        }
        [(state, state_entry as EntryKind), (runtime, runtime_entry)]
            .into_iter()
            .find_map(|(dir, kind)| clash(socket, dir, kind))
            .map(|(p, replaces)| {
                let harm = if replaces {
                    "binding the socket there would replace it and delete it at exit"
                } else {
                    "`run` would mix the socket with its files"
                };
                format!("{p}; {harm}; {advice}")
            })
    }
}

/// When `s` is, or is inside, an entry that `run` keeps directly in `dir` (of the
/// `kind` that directory holds): what is wrong, and whether `s` is the entry itself.
fn clash(s: &Setting<'_>, dir: &Setting<'_>, kind: EntryKind) -> Option<(String, bool)> {
    let rest = normal(s.path)
        .strip_prefix(normal(dir.path))
        .ok()?
        .to_path_buf();
    let mut components = rest.components();
    let Some(Component::Normal(name)) = components.next() else {
        return None;
    };
    let what = kind(name.to_str()?)?;
    let path = s.path.display();
    Some(if components.next().is_none() {
        (format!("{path} is where `run` keeps {what}"), true)
    } else {
        let entry = dir.path.join(name);
        let entry = entry.display();
        (
            format!("{path} is inside {entry}, where `run` keeps {what}"),
            false,
        )
    })
}

/// When the directory `dir` (of setting `s`) cannot be created because an existing file
/// is in the way: what is wrong. A file already in `blockers` is not reported again.
fn blocked(s: &Setting<'_>, dir: &Path, blockers: &mut Vec<PathBuf>) -> Option<String> {
    let (found, is_dir) = first_existing(dir)?;
    if is_dir || blockers.contains(&found) {
        return None;
    }
    let problem = if found == s.path {
        format!("{} exists and is not a directory", s.path.display())
    } else {
        format!(
            "{} cannot be created: {} is not a directory",
            s.path.display(),
            found.display()
        )
    };
    blockers.push(found);
    Some(problem)
}

/// What `run` keeps under a file name directly inside a directory, if anything.
type EntryKind = fn(&str) -> Option<&'static str>;

/// What `run` keeps under `name` in the state directory: the lock, an actor's checkpoint
/// copy (and its temporary files) or its call log directory.
fn state_entry(name: &str) -> Option<&'static str> {
    if name == LOCK_FILE {
        return Some("the lock that keeps two supervisors off one state directory");
    }
    match actor_suffix(name)? {
        s if s == &DISK_COPY_SUFFIX[1..] => Some("an actor's checkpoint"),
        s if s == &LOG_DIR_SUFFIX[1..] => Some("an actor's call log"),
        _ => None,
    }
}

/// What `run` keeps under `name` in the runtime directory: an actor's memory-mapped
/// checkpoint (and its temporary files).
fn runtime_entry(name: &str) -> Option<&'static str> {
    (actor_suffix(name)? == &MMAP_SUFFIX[1..]).then_some("an actor's memory-mapped checkpoint")
}

/// `checkpoint` of `counter.checkpoint` or `counter.checkpoint.tmp`: the first suffix
/// after a valid actor name.
fn actor_suffix(name: &str) -> Option<&str> {
    let (actor, rest) = name.split_once('.')?;
    valid_actor_name(actor).then(|| rest.split('.').next().unwrap_or(rest))
}

/// The first of `path` and its ancestors that exists, and whether it is a directory
/// (`None` when none does, or a relative path's ancestors run out: the working
/// directory).
fn first_existing(path: &Path) -> Option<(PathBuf, bool)> {
    path.ancestors()
        .filter(|a| !a.as_os_str().is_empty())
        .find_map(|a| fs::metadata(a).ok().map(|m| (a.to_path_buf(), m.is_dir())))
}

/// `path` made absolute (against the working directory, as `run` would use it) with `.`
/// and `..` taken out, so that two spellings of one path compare equal. Symbolic links
/// are not followed.
fn normal(path: &Path) -> PathBuf {
    let absolute = std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf());
    let mut out = PathBuf::new();
    for c in absolute.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}
