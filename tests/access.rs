//! G7: only the allowed may call. The control socket's mode keeps other users out at
//! the file system; a socket opened up with `socket_mode` still checks every peer's
//! uid (SO_PEERCRED) against root, the supervisor's own uid and `allowed_uids`.

use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output};
use std::time::Duration;

use crate::util::{Supervisor, run_with_timeout};

const NOBODY: u32 = 65534;

/// Runs `resurgam status --json` against the supervisor's socket as uid `NOBODY`, or
/// None (with the reason printed) when this process may not switch users.
fn status_as_nobody(sup: &Supervisor) -> Option<Output> {
    if !nix::unistd::getuid().is_root() {
        crate::util::skip("not root, cannot run a client as another uid");
        return None;
    }
    // Another user must be able to reach the socket and run the binary: open up the
    // tempdir for traversal and use a copy of the binary inside it.
    std::fs::set_permissions(sup.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
    let bin = sup.dir().join("resurgam-client");
    if !bin.exists() {
        std::fs::copy(env!("CARGO_BIN_EXE_resurgam"), &bin).unwrap();
        std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
        // A child forked by another test thread while the copy was open holds its
        // write fd until that child execs (ETXTBSY): wait until the copy runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while let Err(e) = Command::new(&bin).arg("--version").output() {
            assert!(
                e.raw_os_error() == Some(libc_etxtbsy()) && std::time::Instant::now() < deadline,
                "cannot run {}: {e}",
                bin.display()
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let mut cmd = Command::new(&bin);
    cmd.args(["status", "--json", "--socket"])
        .arg(&sup.socket)
        .env_remove("RESURGAM_SOCKET")
        .uid(NOBODY)
        .gid(NOBODY);
    Some(run_with_timeout(cmd, Duration::from_secs(20)))
}

fn libc_etxtbsy() -> i32 {
    nix::errno::Errno::ETXTBSY as i32
}

#[test]
fn the_default_socket_mode_keeps_other_users_out() {
    let sup = Supervisor::start("[[actor]]\nname = \"c\"\nkind = \"counter\"\n");
    let mode = std::fs::metadata(&sup.socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "socket mode {mode:o}");
    let Some(out) = status_as_nobody(&sup) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uid {NOBODY} got in: {stderr}");
    assert!(stderr.contains("Permission denied"), "{stderr}");
}

#[test]
fn an_open_socket_still_refuses_uids_that_are_not_allowed() {
    let sup = Supervisor::start(
        "[supervisor]\nsocket_mode = \"0666\"\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
    );
    let Some(out) = status_as_nobody(&sup) else {
        return;
    };
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "uid {NOBODY} got in");
    assert!(stderr.contains("Unauthorized"), "{stderr}");
    assert!(stderr.contains(&NOBODY.to_string()), "{stderr}");
    // The refusal is logged and costs nothing else: the owner still gets served.
    assert!(
        sup.log().contains("uid not allowed"),
        "{}",
        sup.log_tail(10)
    );
    assert!(sup.client().status().is_ok());
}

#[test]
fn allowed_uids_let_that_user_in() {
    let sup = Supervisor::start(&format!(
        "[supervisor]\nsocket_mode = \"0666\"\nallowed_uids = [{NOBODY}]\n\
         [[actor]]\nname = \"c\"\nkind = \"counter\"\n"
    ));
    let Some(out) = status_as_nobody(&sup) else {
        return;
    };
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(stdout.trim()).unwrap();
    assert_eq!(v["actors"][0]["name"], "c");
}
