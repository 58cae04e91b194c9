//! How each actor's worker is launched: the exec program (kind `exec`), the user and
//! group its code runs as, and its resource limits, resolved from the config into what
//! the worker needs ([`ExecInit`], [`Privileges`]).
//!
//! Names are resolved here, once, when the config is checked or loaded (user and group
//! databases are not read on every restart). A `user` or `group` that is not the
//! supervisor's own needs the supervisor to run as root: anything else is a config error
//! with its place in the file.

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use nix::unistd::{Gid, Group, Uid, User};

use resurgam_shared::config::{ActorConfig, Config, Durability, Located};
use resurgam_shared::ipc::{ExecInit, Privileges, Rlimit};

pub use resurgam_shared::config::EXEC_KIND;

/// Everything a spawn of this actor's worker needs besides its files.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launched {
    pub exec: Option<ExecInit>,
    pub privileges: Privileges,
}

/// Resolves an actor's launch settings. Errors are `FILE:LINE:COL: message` lines.
pub fn resolve(config: &Config, a: &ActorConfig) -> Result<Launched, Vec<String>> {
    let mut errors = Vec::new();
    let at = |l: &Located<String>, message: String| place(config, a, l.line, l.column, message);
    let launch = &a.launch;
    // The program's working directory must be there when it starts (else every start
    // fails and the actor ends DEAD); the default, the config file's own directory, is.
    if let (Some(cwd), Some(l)) = (&launch.cwd, &a.cwd_at) {
        let problem = match std::fs::metadata(cwd) {
            Ok(m) if m.is_dir() => None,
            Ok(_) => Some("is not a directory".to_string()),
            Err(e) => Some(format!("cannot be used: {e}")),
        };
        if let Some(problem) = problem {
            let message = format!("cwd {} {problem}", cwd.display());
            errors.push(place(config, a, l.line, l.column, message));
        }
    }
    let user = launch
        .user
        .as_ref()
        .and_then(|u| match lookup_user(&u.value) {
            Ok(found) => Some((u, found)),
            Err(e) => {
                errors.push(at(u, e.to_string()));
                None
            }
        });
    let group = launch
        .group
        .as_ref()
        .and_then(|g| match lookup_group(&g.value) {
            Ok(gid) => Some((g, gid)),
            Err(e) => {
                errors.push(at(g, e.to_string()));
                None
            }
        });
    let me = (Uid::current(), Gid::current());
    let identity = match (&user, &group) {
        (None, None) => None,
        (Some((_, (uid, primary))), g) => Some((*uid, g.map_or(*primary, |(_, gid)| gid))),
        (None, Some((_, gid))) => Some((me.0, *gid)),
    };
    // The supervisor's own identity is no change: nothing to switch (and a non-root
    // supervisor could not call setgroups).
    let identity = identity.filter(|&id| id != me);
    if let Some((uid, gid)) = identity
        && (uid, gid) != me
        && !me.0.is_root()
    {
        let place = user.map(|(l, _)| l).or(group.map(|(l, _)| l));
        if let Some(place) = place {
            errors.push(at(
                place,
                format!(
                    "running the worker as uid {uid} gid {gid} needs the supervisor to run as \
                     root (it runs as uid {}); remove `user`/`group` or start it as root",
                    me.0
                ),
            ));
        }
    }
    // A built-in worker that dropped its identity cannot grow its checkpoint file (the
    // runtime directory is the supervisor's): with the calls only in memory, a state
    // that outgrew it would lose acknowledged calls at a stop.
    if a.kind != EXEC_KIND
        && identity.is_some_and(|id| id != me)
        && a.policy.durability == Durability::Memory
        && let Some(place) = user.map(|(l, _)| l).or(group.map(|(l, _)| l))
    {
        errors.push(at(
            place,
            format!(
                "a built-in kind ({}) run as another user cannot grow its checkpoint file, \
                 so its calls need durability \"log\" or \"fsync\" (not \"memory\"); or run the \
                 actor as kind \"exec\"",
                a.kind
            ),
        ));
    }
    let l = &launch.limits;
    let limits: Vec<Rlimit> = [
        l.memory.map(Rlimit::AddressSpace),
        l.open_files.map(Rlimit::OpenFiles),
        l.core.map(Rlimit::Core),
        l.processes.map(Rlimit::Processes),
        l.cpu_seconds.map(Rlimit::CpuSeconds),
    ]
    .into_iter()
    .flatten()
    .collect();
    let exec = launch.command.as_ref().map(|argv| ExecInit {
        argv: argv.clone(),
        env: launch
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: launch
            .cwd
            .clone()
            .unwrap_or_else(|| config_dir(&config.path))
            .as_os_str()
            .as_bytes()
            .to_vec(),
    });
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(Launched {
        exec,
        privileges: Privileges {
            identity: identity.map(|(u, g)| (u.as_raw(), g.as_raw())),
            limits,
        },
    })
}

/// `FILE:LINE:COL: actor "name": message`.
fn place(config: &Config, a: &ActorConfig, line: usize, column: usize, message: String) -> String {
    format!(
        "{}:{line}:{column}: actor {:?}: {message}",
        config.path.display(),
        a.name
    )
}

/// The directory of the config file (where relative paths in it point).
fn config_dir(path: &Path) -> std::path::PathBuf {
    match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    }
}

/// Why a `user` or `group` of an actor's launch settings names no account here.
#[derive(Debug, thiserror::Error)]
enum AccountError {
    #[error("{kind} {name:?}: no such {kind} on this machine")]
    Unknown { kind: &'static str, name: String },
    #[error("{kind} {name:?}: cannot read the {kind} database: {source}")]
    Database {
        kind: &'static str,
        name: String,
        source: nix::errno::Errno,
    },
}

impl AccountError {
    fn unknown(kind: &'static str, name: &str) -> AccountError {
        AccountError::Unknown {
            kind,
            name: name.to_string(),
        }
    }

    fn database(kind: &'static str, name: &str) -> impl FnOnce(nix::errno::Errno) -> AccountError {
        move |source| AccountError::Database {
            kind,
            name: name.to_string(),
            source,
        }
    }
}

/// A user by name or number: its uid and primary gid.
fn lookup_user(text: &str) -> Result<(Uid, Gid), AccountError> {
    let found = match text.parse::<u32>() {
        Ok(n) => User::from_uid(Uid::from_raw(n)),
        Err(_) => User::from_name(text),
    };
    match found.map_err(AccountError::database("user", text))? {
        Some(u) => Ok((u.uid, u.gid)),
        // A numeric uid need not have a passwd entry: its primary group is then its own
        // number, as systemd's DynamicUser does.
        None => match text.parse::<u32>() {
            Ok(n) => Ok((Uid::from_raw(n), Gid::from_raw(n))),
            Err(_) => Err(AccountError::unknown("user", text)),
        },
    }
}

/// A group by name or number.
fn lookup_group(text: &str) -> Result<Gid, AccountError> {
    if let Ok(n) = text.parse::<u32>() {
        return Ok(Gid::from_raw(n));
    }
    match Group::from_name(text).map_err(AccountError::database("group", text))? {
        Some(g) => Ok(g.gid),
        None => Err(AccountError::unknown("group", text)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_users_need_no_passwd_entry() {
        let (uid, gid) = lookup_user("4000000").unwrap();
        assert_eq!((uid.as_raw(), gid.as_raw()), (4_000_000, 4_000_000));
    }

    #[test]
    fn root_resolves_by_name_and_number() {
        assert_eq!(lookup_user("root").unwrap().0.as_raw(), 0);
        assert_eq!(lookup_user("0").unwrap().0.as_raw(), 0);
    }

    #[test]
    fn an_exec_cwd_must_be_an_existing_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a-file"), b"").unwrap();
        std::fs::create_dir(dir.path().join("app")).unwrap();
        let file = dir.path().join("r.toml");
        let env = resurgam_shared::config::Environment::default();
        let with_cwd = |cwd: &str| {
            let text = format!(
                "[supervisor]\nstate_dir = \"s\"\n[[actor]]\nname = \"p\"\nkind = \"exec\"\n\
                 command = [\"x\"]\ncwd = \"{cwd}\"\n"
            );
            let config = Config::parse(&text, &file, &env).unwrap();
            resolve(&config, &config.actors[0])
        };
        let d = dir.path().display();
        let f = file.display();
        // Relative to the config file's directory, as the program will be started.
        assert_eq!(
            with_cwd("missing").unwrap_err(),
            [format!(
                "{f}:7:7: actor \"p\": cwd {d}/missing cannot be used: No such file or \
                 directory (os error 2)"
            )]
        );
        assert_eq!(
            with_cwd("a-file").unwrap_err(),
            [format!(
                "{f}:7:7: actor \"p\": cwd {d}/a-file is not a directory"
            )]
        );
        let launched = with_cwd("app").unwrap();
        let cwd = launched.exec.unwrap().cwd;
        assert_eq!(cwd, dir.path().join("app").as_os_str().as_bytes());
    }

    #[test]
    fn unknown_names_are_errors_naming_them() {
        let e = lookup_user("no-such-user-resurgam")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("no-such-user-resurgam") && e.contains("no such user"),
            "{e}"
        );
        let e = lookup_group("no-such-group-resurgam")
            .unwrap_err()
            .to_string();
        assert!(e.contains("no such group"), "{e}");
    }
}
