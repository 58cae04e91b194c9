//! The control socket: a Unix stream socket speaking newline-delimited JSON. This module
//! binds it and says who may use it; the event loop serves the connections
//! (`shell::conns`).
//!
//! Access: the socket file gets `socket_mode` (0600 by default) and every connection's
//! peer credentials (SO_PEERCRED) are checked: root, the supervisor's own uid and
//! `allowed_uids` may talk; anyone else gets one `Unauthorized` reply and is closed.

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

use resurgam_shared::safefs;

use crate::error::SocketError;

/// Most connections served at once; more are refused with `Busy` (fewer when the
/// open-file limit is low: see [`max_connections`]).
pub const MAX_CONNECTIONS: usize = 4096;

/// How many connections fit in the open-file limit, keeping room for `actors` workers
/// (a few fds each) and the rest of the supervisor; a connection costs one fd.
pub fn max_connections(actors: usize) -> usize {
    let soft = nix::sys::resource::getrlimit(nix::sys::resource::Resource::RLIMIT_NOFILE)
        .map_or(1024, |(soft, _)| soft);
    let reserve = 256 + 8 * actors as u64;
    usize::try_from(soft.saturating_sub(reserve))
        .unwrap_or(MAX_CONNECTIONS)
        .clamp(1, MAX_CONNECTIONS)
}

/// The lock file of the socket at `path` (`.<name>.lock` next to it; its directory is
/// made private if absent), which keeps a second supervisor off the socket from its
/// start, before it touches anything.
pub fn lock_path(path: &Path) -> Result<PathBuf, SocketError> {
    let dir = safefs::parent_dir(path);
    safefs::create_dir_all_private(dir).map_err(|source| SocketError::Dir {
        path: dir.to_path_buf(),
        source,
    })?;
    let name = path.file_name().map_or_else(
        || "control.sock".into(),
        |n| n.to_string_lossy().into_owned(),
    );
    let lock = dir.join(format!(".{name}.lock"));
    // One another user planted there could hold it forever: refuse it, naming them.
    if let Ok(meta) = std::fs::symlink_metadata(&lock)
        && meta.uid() != nix::unistd::geteuid().as_raw()
    {
        return Err(SocketError::ForeignOwner {
            path: lock,
            kind: "a file",
            owner: safefs::describe_uid(meta.uid()),
            me: safefs::describe_uid(nix::unistd::geteuid().as_raw()),
        });
    }
    Ok(lock)
}

/// Binds the socket, replacing a stale socket but never a live supervisor's, and never
/// anything that is not a socket (a checkpoint, the config file: whatever a mistyped
/// `socket` names).
pub fn bind(path: &Path, mode: u32) -> Result<UnixListener, SocketError> {
    let path_buf = || path.to_path_buf();
    if let Some(dir) = path.parent()
        && !dir.as_os_str().is_empty()
    {
        safefs::create_dir_all_private(dir).map_err(|source| SocketError::Dir {
            path: dir.to_path_buf(),
            source,
        })?;
    }
    if let Ok(meta) = std::fs::symlink_metadata(path) {
        // Whatever another user put there (a file, a link, a listening socket) is theirs:
        // never connected to, replaced or removed, and said so.
        let me = nix::unistd::geteuid().as_raw();
        if meta.uid() != me {
            let ft = meta.file_type();
            let kind = if ft.is_symlink() {
                "a symbolic link"
            } else if ft.is_socket() {
                "a socket"
            } else if ft.is_dir() {
                "a directory"
            } else {
                "a file"
            };
            return Err(SocketError::ForeignOwner {
                path: path_buf(),
                kind,
                owner: safefs::describe_uid(meta.uid()),
                me: safefs::describe_uid(me),
            });
        }
        if !meta.file_type().is_socket() {
            return Err(SocketError::NotASocket { path: path_buf() });
        }
        if UnixStream::connect(path).is_ok() {
            return Err(SocketError::InUse { path: path_buf() });
        }
        std::fs::remove_file(path).map_err(|source| SocketError::Stale {
            path: path_buf(),
            source,
        })?;
    }
    let listener = UnixListener::bind(path).map_err(|source| SocketError::Bind {
        path: path_buf(),
        source,
    })?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode)).map_err(|source| {
        SocketError::Chmod {
            path: path_buf(),
            mode,
            source,
        }
    })?;
    Ok(listener)
}

/// Who may connect.
#[derive(Clone)]
pub struct Access {
    pub own_uid: u32,
    pub allowed_uids: Vec<u32>,
    pub max_request_bytes: usize,
    pub max_connections: usize,
    /// Replies one client may leave unread before its requests stop being read.
    pub max_queued_reply_bytes: usize,
    /// Replies all clients together may leave unread before those with replies waiting
    /// stop being read.
    pub max_total_reply_bytes: usize,
}

impl Access {
    pub fn allows(&self, uid: u32) -> bool {
        uid == 0 || uid == self.own_uid || self.allowed_uids.contains(&uid)
    }
}

/// Removes the socket file when the supervisor exits (only if a socket is still there:
/// whatever replaced it meanwhile is not ours to delete).
pub struct SocketFile(pub PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bind_errors_say_what_failed_and_where() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("a-file");
        std::fs::write(&file, b"").unwrap();
        // A socket "inside" a regular file: its directory cannot be made.
        let err = bind(&file.join("ctl.sock"), 0o600).unwrap_err();
        assert!(
            matches!(&err, SocketError::Dir { path, .. } if *path == file),
            "{err}"
        );
        assert!(
            err.to_string().contains(&file.display().to_string()),
            "{err}"
        );
        // A live socket is never replaced.
        let sock = dir.path().join("ctl.sock");
        let _live = bind(&sock, 0o600).unwrap();
        let err = bind(&sock, 0o600).unwrap_err();
        assert!(matches!(err, SocketError::InUse { .. }), "{err}");
        assert!(err.to_string().contains("stop it first"), "{err}");
        // A stale socket is replaced.
        drop(_live);
        let _again = bind(&sock, 0o600).unwrap();
    }

    #[test]
    fn bind_never_replaces_what_is_not_a_socket() {
        let dir = tempfile::tempdir().unwrap();
        let checkpoint = dir.path().join("a.checkpoint");
        std::fs::write(&checkpoint, b"state").unwrap();
        let err = bind(&checkpoint, 0o600).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        assert!(err.to_string().contains("not a socket"), "{err}");
        assert_eq!(std::fs::read(&checkpoint).unwrap(), b"state");
        // Nor a directory, nor a symbolic link (even to a socket).
        let err = bind(dir.path(), 0o600).unwrap_err();
        assert!(matches!(err, SocketError::NotASocket { .. }), "{err}");
        let sock = dir.path().join("real.sock");
        let _live = bind(&sock, 0o600).unwrap();
        let link = dir.path().join("link.sock");
        std::os::unix::fs::symlink(&sock, &link).unwrap();
        assert!(matches!(
            bind(&link, 0o600).unwrap_err(),
            SocketError::NotASocket { .. }
        ));
        assert!(link.symlink_metadata().is_ok());
    }

    #[test]
    fn access_rules() {
        let a = Access {
            own_uid: 1000,
            allowed_uids: vec![7],
            max_request_bytes: 10,
            max_connections: 1,
            max_queued_reply_bytes: 1 << 20,
            max_total_reply_bytes: 1 << 20,
        };
        assert!(a.allows(0) && a.allows(1000) && a.allows(7));
        assert!(!a.allows(8));
    }
}
