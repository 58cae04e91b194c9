//! A hostile or careless state or runtime directory (issue: state you can trust): links
//! planted where the supervisor writes, directories other users can write, files
//! created with a loose umask, a socket path another user holds, a second supervisor.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Supervisor, resurgam_cmd, run_with_timeout, skip};

const NOBODY: u32 = 65534;

/// Puts something at a path.
type Plant<'a> = dyn Fn(&Path) + 'a;

fn kv(durability: &str) -> String {
    format!(
        r#"
[supervisor]
durability = "{durability}"

[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 0
checkpoint_interval = "0s"
"#
    )
}

fn put(sup: &Supervisor, key: &str, value: &str) {
    let mut c = sup.client();
    assert_eq!(
        c.call("kv", "put", json!({"key": key, "value": value}))
            .unwrap(),
        Value::Null
    );
}

fn get(sup: &Supervisor, key: &str) -> Value {
    sup.client().call("kv", "get", json!({"key": key})).unwrap()
}

/// Every path under `dir` with its mode, links not followed.
fn modes(dir: &Path) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        out.push((
            e.path().display().to_string(),
            m.mode() & 0o7777,
            m.is_dir(),
        ));
        if m.is_dir() {
            out.extend(modes(&e.path()));
        }
    }
    out
}

#[test]
fn every_file_and_directory_created_is_private_whatever_the_umask() {
    for durability in ["log", "fsync", "memory"] {
        // The supervisor inherits this process's umask: make it as loose as can be.
        let sup = Supervisor::start_wrapped(&kv(durability), |sup| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "umask 000 && exec {} run --config {}",
                    crate::util::BIN,
                    sup.config_path.display()
                ))
                .env("RESURGAM_LOG", "info");
            cmd
        });
        put(&sup, "secret", "hunter2");
        sup.client().checkpoint("kv").unwrap();
        put(&sup, "after", "x");
        let socket = sup.socket.display().to_string();
        for dir in [&sup.state_dir, &sup.runtime_dir] {
            for (path, mode, is_dir) in modes(dir) {
                if path == socket {
                    continue;
                }
                let want = if is_dir { 0o700 } else { 0o600 };
                assert_eq!(mode, want, "{durability}: {path} has mode {mode:04o}");
            }
        }
        for dir in [&sup.state_dir, &sup.runtime_dir] {
            let mode = fs::metadata(dir).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}

#[test]
fn a_state_or_runtime_dir_others_can_write_is_refused_unless_the_config_says_so() {
    let sup = Supervisor::start(&kv("log"));
    put(&sup, "a", "1");
    for (dir, mode, who) in [
        (&sup.state_dir, 0o777, "every user"),
        (&sup.runtime_dir, 0o770, "its group"),
        (&sup.state_dir, 0o1777, "every user"),
    ] {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        let log = sup.restart_expecting_refusal();
        assert!(
            log.contains(&dir.display().to_string())
                && log.contains(&format!("writable by {who}"))
                && log.contains("allow_shared_dirs"),
            "{mode:o}:\n{log}"
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    // Explicitly allowed: it starts (and says so), with the state intact.
    fs::set_permissions(&sup.state_dir, fs::Permissions::from_mode(0o770)).unwrap();
    sup.write_config(&format!(
        "{}\n",
        kv("log").replace("[supervisor]\n", "[supervisor]\nallow_shared_dirs = true\n")
    ));
    sup.restart_same_dirs();
    assert_eq!(get(&sup, "a"), json!("1"));
    assert!(
        sup.run_log(sup.run_count())
            .contains("accepted (allow_shared_dirs = true)")
    );
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused_naming_the_owner() {
    if !nix::unistd::geteuid().is_root() {
        skip("not root: cannot give a directory to another user");
        return;
    }
    let sup = Supervisor::start(&kv("log"));
    sup.kill_supervisor();
    std::os::unix::fs::chown(&sup.state_dir, Some(NOBODY), None).unwrap();
    let log = sup.restart_expecting_refusal();
    assert!(
        log.contains(&format!("uid {NOBODY}")) && log.contains("not by user root (uid 0)"),
        "{log}"
    );
    std::os::unix::fs::chown(&sup.state_dir, Some(0), None).unwrap();
    sup.restart_same_dirs();
}

#[test]
fn links_planted_in_the_state_dir_are_never_followed() {
    for durability in ["log", "fsync", "memory"] {
        let sup = Supervisor::start(&kv(durability));
        put(&sup, "a", "1");
        sup.client().checkpoint("kv").unwrap();
        put(&sup, "b", "2");
        sup.kill_supervisor();
        let victim = sup.dir().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // The checkpoint's temp file and the lock file: links to the victim.
        std::os::unix::fs::symlink(&victim, sup.state_dir.join("kv.checkpoint.tmp")).unwrap();
        let lock = sup.state_dir.join(".resurgam.lock");
        fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let log = sup.restart_expecting_refusal();
        assert!(
            log.contains("symbolic link") && log.contains(".resurgam.lock"),
            "{durability}:\n{log}"
        );
        fs::remove_file(&lock).unwrap();
        sup.restart_same_dirs();
        // (`memory` keeps only what the checkpoint holds.)
        let (key, value) = if durability == "memory" {
            ("a", "1")
        } else {
            ("b", "2")
        };
        assert_eq!(get(&sup, key), json!(value), "{durability}");
        // A new checkpoint goes through the temp file's name: the link is replaced,
        // never written through.
        put(&sup, "c", "3");
        sup.client().checkpoint("kv").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "{durability}");
        assert_eq!(
            fs::metadata(&victim).unwrap().mode() & 0o777,
            0o644,
            "{durability}: the victim's mode changed"
        );
    }
}

#[test]
fn a_socket_path_another_user_holds_is_refused_naming_the_owner() {
    if !nix::unistd::geteuid().is_root() {
        skip("not root: cannot create a file as another user");
        return;
    }
    let sup = Supervisor::start(&kv("log"));
    sup.kill_supervisor();
    let victim = sup.dir().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let plant: [(&str, &Plant<'_>); 3] = [
        ("a file", &|p| fs::write(p, b"theirs").unwrap()),
        ("a symbolic link", &|p| {
            std::os::unix::fs::symlink(&victim, p).unwrap()
        }),
        ("a socket", &|p| {
            let l = std::os::unix::net::UnixListener::bind(p).unwrap();
            std::mem::forget(l);
        }),
    ];
    // (The config check and `run` both name the owner, whichever sees it first.)
    for (kind, make) in plant {
        let _ = fs::remove_file(&sup.socket);
        make(&sup.socket);
        std::os::unix::fs::lchown(&sup.socket, Some(NOBODY), Some(NOBODY)).unwrap();
        let log = sup.restart_expecting_refusal();
        assert!(
            log.contains(&sup.socket.display().to_string())
                && log.contains("owned by")
                && log.contains(&format!("uid {NOBODY}")),
            "{kind}:\n{log}"
        );
        assert!(
            fs::symlink_metadata(&sup.socket).unwrap().uid() == NOBODY,
            "{kind} was replaced"
        );
    }
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    fs::remove_file(&sup.socket).unwrap();
    sup.restart_same_dirs();
}

#[test]
fn a_second_supervisor_on_the_same_runtime_dir_refuses_naming_the_first() {
    let sup = Supervisor::start(&kv("log"));
    put(&sup, "a", "1");
    // Another state dir and socket, the same runtime dir.
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("other.toml");
    fs::write(
        &config,
        format!(
            "[supervisor]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nsocket = \"{}\"\n\
             durability = \"log\"\n\n[[actor]]\nname = \"kv\"\nkind = \"kv\"\n",
            other.path().join("state").display(),
            sup.runtime_dir.display(),
            other.path().join("ctl.sock").display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        resurgam_cmd(&["run", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "runtime directory {} is in use by another supervisor (pid {})",
            sup.runtime_dir.display(),
            sup.pid()
        )),
        "{stderr}"
    );
    // The first one is untouched.
    assert_eq!(get(&sup, "a"), json!("1"));
    assert!(sup.socket.exists());
}
