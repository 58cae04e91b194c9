//! Files in the state and runtime directories, opened so that a hostile or careless
//! directory cannot turn the supervisor or a worker into a weapon.
//!
//! * The last component of every path opened is never followed if it is a symbolic
//!   link (`O_NOFOLLOW`): a link planted at `<actor>.checkpoint.tmp` or at a log
//!   segment is refused with [`is_symlink_error`] naming it, its target untouched.
//! * Directories inside the state directory (an actor's call log, a quarantine) are
//!   opened once with `O_DIRECTORY | O_NOFOLLOW` as a [`Dir`], and their files relative
//!   to that descriptor (`openat`), so nothing is ever followed out of them.
//! * Temporary files are created exclusively (`O_EXCL`): a leftover is unlinked first
//!   (which removes a link, never its target), never truncated.
//! * Every file and directory created is private, 0600 and 0700, whatever the umask
//!   (set with `fchmod` after creation).
//! * [`check_private_dir`] is the start-up check of the state and runtime directories:
//!   owned by the supervisor's user and writable by nobody else.

use std::ffi::OsStr;
use std::fs::File;
use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use nix::fcntl::{AtFlags, OFlag, openat, renameat};
use nix::sys::stat::{Mode, fchmod, fstat, mkdirat};
use nix::unistd::{UnlinkatFlags, unlinkat};

/// Mode of every file the supervisor or a worker creates.
pub const FILE_MODE: u32 = 0o600;
/// Mode of every directory the supervisor creates.
pub const DIR_MODE: u32 = 0o700;

fn errno(path: &Path, op: &str, e: nix::errno::Errno) -> io::Error {
    let e = io::Error::from(e);
    explain(path, op, e)
}

/// `op of PATH: error`, with a symbolic link named as one (open with `O_NOFOLLOW`
/// fails with `ELOOP`, or `ENOTDIR` for a directory).
fn explain(path: &Path, op: &str, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) || is_link(path) {
        return io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "{op} of {}: it is a symbolic link; resurgam never follows links in its \
                 state or runtime directory (remove it)",
                path.display()
            ),
        );
    }
    io::Error::new(e.kind(), format!("{op} of {}: {e}", path.display()))
}

fn is_link(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}

/// True if `e` came from refusing to follow a symbolic link.
pub fn is_symlink_error(e: &io::Error) -> bool {
    e.kind() == io::ErrorKind::InvalidData && e.to_string().contains("symbolic link")
}

/// Opens an existing file for reading without following a symbolic link at `path`.
pub fn open_read(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| link_refused(path, e))
}

/// A refusal to follow a link (`ELOOP`) said as such; any other error as it is.
fn link_refused(path: &Path, e: io::Error) -> io::Error {
    if e.raw_os_error() == Some(libc::ELOOP) {
        explain(path, "open", e)
    } else {
        e
    }
}

/// Opens an existing file for reading and writing without following a symbolic link.
pub fn open_rw(path: &Path) -> io::Result<File> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| link_refused(path, e))
}

/// Creates a new private file at `path` (0600 whatever the umask), read-write; fails if
/// anything (a file, a link) is already there.
pub fn create_new(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| link_refused(path, e))?;
    fchmod(file.as_fd(), Mode::from_bits_truncate(FILE_MODE)).map_err(io::Error::from)?;
    Ok(file)
}

/// Opens (creating it private if absent) a file for appending or locking, never through
/// a symbolic link; an existing file keeps its content and gets mode 0600.
pub fn open_or_create(path: &Path) -> io::Result<File> {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(FILE_MODE)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| explain(path, "open", e))?;
    fchmod(file.as_fd(), Mode::from_bits_truncate(FILE_MODE)).map_err(io::Error::from)?;
    Ok(file)
}

/// Removes `path` if it exists (a link is removed, never its target).
pub fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// The directory `path` is in: `.` for a bare file name.
pub fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Replaces `path` with `bytes` crash-atomically: `tmp` (a leftover, or a link planted
/// there, is unlinked first) is created private and exclusively, written, fsync'd and
/// renamed over `path`, then `path`'s directory is fsync'd. A reader sees the old file or
/// the whole new one; on an error `tmp` is removed. Errors name the operation and the
/// path. Not safe to call concurrently with the same `tmp`.
pub fn replace_file(path: &Path, tmp: &Path, bytes: &[u8]) -> io::Result<()> {
    use std::io::Write;
    let ctx = |op: &'static str, p: &Path| {
        let p = p.to_path_buf();
        move |e: io::Error| io::Error::new(e.kind(), format!("{op} of {}: {e}", p.display()))
    };
    let written = (|| {
        remove_if_present(tmp).map_err(ctx("remove", tmp))?;
        let mut f = create_new(tmp).map_err(ctx("create", tmp))?;
        f.write_all(bytes).map_err(ctx("write", tmp))?;
        f.sync_all().map_err(ctx("fsync", tmp))?;
        drop(f);
        std::fs::rename(tmp, path).map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("rename of {} to {}: {e}", tmp.display(), path.display()),
            )
        })
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(tmp);
        return Err(e);
    }
    let dir = parent_dir(path);
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(ctx("fsync", dir))
}

/// Creates every missing directory of `path` private (0700 whatever the umask); existing
/// ones are left as they are.
pub fn create_dir_all_private(path: &Path) -> io::Result<()> {
    use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
    if path.is_dir() {
        return Ok(());
    }
    if let Some(parent) = path.parent()
        && !parent.as_os_str().is_empty()
    {
        create_dir_all_private(parent)?;
    }
    match std::fs::DirBuilder::new().mode(DIR_MODE).create(path) {
        Ok(()) => std::fs::set_permissions(path, std::fs::Permissions::from_mode(DIR_MODE)),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists && path.is_dir() => Ok(()),
        Err(e) => Err(e),
    }
}

/// Why a state or runtime directory is not safe to use.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DirProblem {
    #[error("{} is owned by {owner}, not by {me} who runs the supervisor", path.display())]
    Owner {
        path: PathBuf,
        owner: String,
        me: String,
    },
    #[error("{} is writable by {who} (mode {mode:04o})", path.display())]
    Writable {
        path: PathBuf,
        who: &'static str,
        mode: u32,
    },
    #[error("{} is not a directory", path.display())]
    NotADirectory { path: PathBuf },
    #[error("stat {}: {message}", path.display())]
    Stat { path: PathBuf, message: String },
}

/// A uid as "user NAME (uid N)", or "uid N" when it has no name.
pub fn describe_uid(uid: u32) -> String {
    match nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid)) {
        Ok(Some(u)) => format!("user {} (uid {uid})", u.name),
        _ => format!("uid {uid}"),
    }
}

/// Checks that `path` (followed if it is a link: the configured directory may be one)
/// is a directory owned by this process's effective user and writable by no one else.
pub fn check_private_dir(path: &Path) -> Result<(), DirProblem> {
    let meta = std::fs::metadata(path).map_err(|e| DirProblem::Stat {
        path: path.to_path_buf(),
        message: e.to_string(),
    })?;
    if !meta.is_dir() {
        return Err(DirProblem::NotADirectory {
            path: path.to_path_buf(),
        });
    }
    let me = nix::unistd::geteuid().as_raw();
    if meta.uid() != me {
        return Err(DirProblem::Owner {
            path: path.to_path_buf(),
            owner: describe_uid(meta.uid()),
            me: describe_uid(me),
        });
    }
    let mode = meta.mode() & 0o7777;
    let who = match (mode & 0o020 != 0, mode & 0o002 != 0) {
        (_, true) => Some("every user"),
        (true, false) => Some("its group"),
        _ => None,
    };
    match who {
        Some(who) => Err(DirProblem::Writable {
            path: path.to_path_buf(),
            who,
            mode,
        }),
        None => Ok(()),
    }
}

/// A directory held open: files in it are opened relative to its descriptor, never
/// through a symbolic link.
#[derive(Debug)]
pub struct Dir {
    fd: OwnedFd,
    path: PathBuf,
}

impl AsFd for Dir {
    fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
        self.fd.as_fd()
    }
}

const FILE_FLAGS: OFlag = OFlag::O_NOFOLLOW.union(OFlag::O_CLOEXEC);
const DIR_FLAGS: OFlag = OFlag::O_DIRECTORY
    .union(OFlag::O_NOFOLLOW)
    .union(OFlag::O_CLOEXEC)
    .union(OFlag::O_RDONLY);

impl Dir {
    /// Opens `path` as a directory; a symbolic link at `path` is refused. `Ok(None)` if
    /// there is nothing at `path`.
    pub fn open(path: &Path) -> io::Result<Option<Dir>> {
        match nix::fcntl::open(path, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(Dir {
                fd,
                path: path.to_path_buf(),
            })),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno(path, "open directory", e)),
        }
    }

    /// Opens a directory named by the configuration (the state or runtime directory),
    /// following a link at `path`: the operator chose it (systemd's `DynamicUser=`
    /// makes the state directory a link), and [`check_private_dir`] vetted its target.
    pub fn open_configured(path: &Path) -> io::Result<Dir> {
        let flags = OFlag::O_DIRECTORY | OFlag::O_CLOEXEC | OFlag::O_RDONLY;
        match nix::fcntl::open(path, flags, Mode::empty()) {
            Ok(fd) => Ok(Dir {
                fd,
                path: path.to_path_buf(),
            }),
            Err(e) => Err(errno(path, "open directory", e)),
        }
    }

    /// Opens `path` as a directory, creating it private (0700) if absent.
    pub fn create(path: &Path) -> io::Result<Dir> {
        if let Some(d) = Dir::open(path)? {
            return Ok(d);
        }
        create_dir_all_private(path).map_err(|e| explain(path, "create directory", e))?;
        Dir::open(path)?.ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                format!("{} vanished right after it was created", path.display()),
            )
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The path of `name` in this directory (for messages).
    pub fn join(&self, name: impl AsRef<Path>) -> PathBuf {
        self.path.join(name)
    }

    /// A subdirectory, opened without following a link; created private if `create`.
    pub fn subdir(&self, name: &OsStr, create: bool) -> io::Result<Option<Dir>> {
        let path = self.join(name);
        if create {
            match mkdirat(self.fd.as_fd(), name, Mode::from_bits_truncate(DIR_MODE)) {
                Ok(()) => {}
                Err(nix::errno::Errno::EEXIST) => {}
                Err(e) => return Err(errno(&path, "create directory", e)),
            }
        }
        match openat(self.fd.as_fd(), name, DIR_FLAGS, Mode::empty()) {
            Ok(fd) => {
                if create {
                    let mine = fstat(fd.as_fd()).is_ok_and(|s| {
                        s.st_uid == nix::unistd::geteuid().as_raw() && s.st_mode & 0o077 == 0
                    });
                    if !mine {
                        fchmod(fd.as_fd(), Mode::from_bits_truncate(DIR_MODE))
                            .map_err(|e| errno(&path, "chmod", e))?;
                    }
                }
                Ok(Some(Dir { fd, path }))
            }
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno(&path, "open directory", e)),
        }
    }

    /// Opens an existing file in this directory (`O_NOFOLLOW`) with `flags` (e.g.
    /// `O_RDONLY`, `O_RDWR`, `O_WRONLY | O_APPEND`). `Ok(None)` if absent.
    pub fn open_file(&self, name: &OsStr, flags: OFlag) -> io::Result<Option<File>> {
        match openat(self.fd.as_fd(), name, flags | FILE_FLAGS, Mode::empty()) {
            Ok(fd) => Ok(Some(File::from(fd))),
            Err(nix::errno::Errno::ENOENT) => Ok(None),
            Err(e) => Err(errno(&self.join(name), "open", e)),
        }
    }

    /// Creates a new private file (0600) in this directory, exclusively (`O_EXCL`), with
    /// `flags` (e.g. `O_WRONLY | O_APPEND`; read-write when they name no access mode).
    pub fn create_file(&self, name: &OsStr, flags: OFlag) -> io::Result<File> {
        let access = if flags.intersects(OFlag::O_WRONLY | OFlag::O_RDWR) {
            OFlag::empty()
        } else {
            OFlag::O_RDWR
        };
        let flags = flags | access | FILE_FLAGS | OFlag::O_CREAT | OFlag::O_EXCL;
        let fd = openat(
            self.fd.as_fd(),
            name,
            flags,
            Mode::from_bits_truncate(FILE_MODE),
        )
        .map_err(|e| errno(&self.join(name), "create", e))?;
        fchmod(fd.as_fd(), Mode::from_bits_truncate(FILE_MODE))
            .map_err(|e| errno(&self.join(name), "chmod", e))?;
        Ok(File::from(fd))
    }

    /// Removes the entry `name` (a link is removed, never its target); absent is fine.
    pub fn remove(&self, name: &OsStr) -> io::Result<()> {
        match unlinkat(self.fd.as_fd(), name, UnlinkatFlags::NoRemoveDir) {
            Ok(()) | Err(nix::errno::Errno::ENOENT) => Ok(()),
            Err(e) => Err(errno(&self.join(name), "remove", e)),
        }
    }

    /// Renames `from` in this directory to `to` in `dest` (atomic, replacing `to`).
    pub fn rename(&self, from: &OsStr, dest: &Dir, to: &OsStr) -> io::Result<()> {
        renameat(self.fd.as_fd(), from, dest.fd.as_fd(), to).map_err(|e| {
            io::Error::new(
                io::Error::from(e).kind(),
                format!(
                    "rename of {} to {}: {e}",
                    self.join(from).display(),
                    dest.join(to).display()
                ),
            )
        })
    }

    /// The names of the entries in this directory (read through its descriptor).
    pub fn names(&self) -> io::Result<Vec<std::ffi::OsString>> {
        use std::os::unix::ffi::OsStrExt;
        let fd = openat(self.fd.as_fd(), ".", DIR_FLAGS, Mode::empty())
            .map_err(|e| errno(&self.path, "open directory", e))?;
        let mut d = nix::dir::Dir::from_fd(fd).map_err(|e| errno(&self.path, "list", e))?;
        let mut out = Vec::new();
        for entry in d.iter() {
            let entry = entry.map_err(|e| errno(&self.path, "list", e))?;
            let name = entry.file_name().to_bytes();
            if name != b"." && name != b".." {
                out.push(OsStr::from_bytes(name).to_os_string());
            }
        }
        Ok(out)
    }

    /// Whether `name` is a directory (not a link to one).
    pub fn is_subdir(&self, name: &OsStr) -> bool {
        nix::sys::stat::fstatat(self.fd.as_fd(), name, AtFlags::AT_SYMLINK_NOFOLLOW)
            .is_ok_and(|s| s.st_mode & libc::S_IFMT == libc::S_IFDIR)
    }

    /// Makes the directory's entries (created, renamed, removed) durable.
    pub fn sync(&self) -> io::Result<()> {
        nix::unistd::fsync(self.fd.as_fd()).map_err(|e| errno(&self.path, "fsync", e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::symlink_metadata(p).unwrap().mode() & 0o777
    }

    #[test]
    fn created_files_and_dirs_are_private_whatever_the_umask() {
        let t = tempfile::tempdir().unwrap();
        // SAFETY: umask is a plain system call; other threads of this test binary may
        // create files meanwhile with a looser mask, which only affects them.
        let old = unsafe { libc::umask(0) };
        let dir = Dir::create(&t.path().join("a/b")).unwrap();
        let sub = dir.subdir(OsStr::new("c"), true).unwrap().unwrap();
        sub.create_file(OsStr::new("f"), OFlag::empty()).unwrap();
        create_new(&t.path().join("g")).unwrap();
        open_or_create(&t.path().join("h")).unwrap();
        // SAFETY: as above.
        unsafe { libc::umask(old) };
        assert_eq!(mode(&t.path().join("a")), 0o700);
        assert_eq!(mode(&t.path().join("a/b")), 0o700);
        assert_eq!(mode(&t.path().join("a/b/c")), 0o700);
        assert_eq!(mode(&t.path().join("a/b/c/f")), 0o600);
        assert_eq!(mode(&t.path().join("g")), 0o600);
        assert_eq!(mode(&t.path().join("h")), 0o600);
    }

    #[test]
    fn links_are_never_followed() {
        let t = tempfile::tempdir().unwrap();
        let victim = t.path().join("victim");
        std::fs::write(&victim, b"precious").unwrap();
        let dir = Dir::create(&t.path().join("d")).unwrap();
        std::os::unix::fs::symlink(&victim, dir.join("link")).unwrap();
        std::os::unix::fs::symlink(t.path(), dir.join("dirlink")).unwrap();
        let e = dir
            .open_file(OsStr::new("link"), OFlag::O_RDWR)
            .unwrap_err();
        assert!(is_symlink_error(&e), "{e}");
        assert!(e.to_string().contains("link"), "{e}");
        let e = dir
            .create_file(OsStr::new("link"), OFlag::empty())
            .unwrap_err();
        assert!(e.to_string().contains("link"), "{e}");
        let e = dir.subdir(OsStr::new("dirlink"), true).unwrap_err();
        assert!(is_symlink_error(&e), "{e}");
        assert!(Dir::open(&dir.join("dirlink")).is_err());
        assert!(open_read(&dir.join("link")).is_err());
        assert!(open_rw(&dir.join("link")).is_err());
        assert!(open_or_create(&dir.join("link")).is_err());
        dir.remove(OsStr::new("link")).unwrap();
        let mut s = String::new();
        File::open(&victim).unwrap().read_to_string(&mut s).unwrap();
        assert_eq!(s, "precious");
        let mut f = dir.create_file(OsStr::new("link"), OFlag::empty()).unwrap();
        f.write_all(b"x").unwrap();
        assert_eq!(std::fs::read(&victim).unwrap(), b"precious");
        assert!(!dir.is_subdir(OsStr::new("dirlink")));
    }

    #[test]
    fn a_dir_writable_by_others_or_owned_by_another_user_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let d = t.path().join("d");
        std::fs::create_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o700)).unwrap();
        check_private_dir(&d).unwrap();
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o775)).unwrap();
        let e = check_private_dir(&d).unwrap_err();
        assert!(e.to_string().contains("writable by its group"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o1777)).unwrap();
        let e = check_private_dir(&d).unwrap_err();
        assert!(e.to_string().contains("writable by every user"), "{e}");
        std::fs::set_permissions(&d, std::fs::Permissions::from_mode(0o755)).unwrap();
        check_private_dir(&d).unwrap();
        if nix::unistd::geteuid().is_root() {
            std::os::unix::fs::chown(&d, Some(65534), None).unwrap();
            let e = check_private_dir(&d).unwrap_err();
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
    }
}
