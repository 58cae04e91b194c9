//! G7: only the allowed may call. The control socket's mode keeps other users out at
//! the file system; a socket opened up with `socket_mode` still checks every peer's
//! uid (SO_PEERCRED) against root, the supervisor's own uid and `allowed_uids`.

use std::io::{BufRead, BufReader};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::process::{Command, Output, Stdio};
use std::sync::mpsc::TryRecvError;
use std::time::Duration;

use serde_json::json;

use crate::util::{KillOnDrop, MAX_THREADS, Supervisor, fd_count, run_with_timeout, threads};

const NOBODY: u32 = 65534;

/// Runs `resurgam status --json` against the supervisor's socket as uid `NOBODY`, or
/// None (with the reason printed) when this process may not switch users.
fn status_as_nobody(sup: &Supervisor) -> Option<Output> {
    if !crate::util::root_or_skip("run a client as another uid") {
        return None;
    }
    // Another user must be able to reach the socket and run the binary: open up the
    // tempdir for traversal and use a copy of the binary inside it.
    let_others_reach(sup);
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

/// Opens the supervisor's tempdir for traversal, so other users reach its socket.
fn let_others_reach(sup: &Supervisor) {
    std::fs::set_permissions(sup.dir(), std::fs::Permissions::from_mode(0o711)).unwrap();
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

/// Connects `argv[2]` times to the socket `argv[1]`, sends a request on each and keeps
/// them all open without reading; prints how many it holds, then waits for stdin's end.
const FLOOD: &str = r#"
import resource, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
_, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
held = []
for _ in range(min(n, hard - 32)):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.connect(path)
        s.sendall(b'{"id":1,"op":"status"}\n')
    except OSError:
        pass
    held.append(s)
print(len(held), flush=True)
sys.stdin.read()
"#;

/// Refused connections cost nothing lasting: a flood of connections from a user who is
/// not allowed (the socket opened to all) gets no thread each, holds a bounded number
/// of descriptors while it lasts and none after, and never makes an allowed client's
/// call fail.
#[test]
fn an_unauthorized_flood_costs_no_thread_and_fails_no_allowed_call() {
    const FLOOD_CONNECTIONS: usize = 3000;
    if !crate::util::root_or_skip("connect as another uid") {
        return;
    }
    let sup = Supervisor::start(
        "[supervisor]\nsocket_mode = \"0666\"\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
    );
    let_others_reach(&sup);
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(1));
    let fds_before = fd_count(sup.pid());

    let mut flood = Command::new("python3");
    flood
        .args(["-c", FLOOD])
        .arg(&sup.socket)
        .arg(FLOOD_CONNECTIONS.to_string())
        .uid(NOBODY)
        .gid(NOBODY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let flooding = std::time::Instant::now();
    let mut flood = KillOnDrop(flood.spawn().expect("python3 runs (CI has it)"));
    let out = flood.0.stdout.take().unwrap();
    let (held_tx, held) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = BufReader::new(out).read_line(&mut line);
        let _ = held_tx.send(line);
    });
    // Calls while the flood comes in, and once more when it holds every connection.
    let mut total = 1;
    let held = loop {
        total += 1;
        assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(total));
        assert!(
            sup.client().status().is_ok(),
            "a new allowed connection failed"
        );
        match held.try_recv() {
            Ok(line) => break line,
            Err(TryRecvError::Empty) => continue,
            Err(TryRecvError::Disconnected) => panic!("the flood ended early"),
        }
    };
    let held: usize = held
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("flood: {held:?}"));
    assert!(held >= 1000, "the flood held only {held} connections");
    assert_eq!(c.call("c", "get", json!(null)).unwrap(), json!(total));
    let n = threads(sup.pid());
    assert!(
        n <= MAX_THREADS,
        "{n} supervisor threads under a flood of {held}"
    );
    // Refused connections are drained a moment each, at most 256 at once.
    let fds = fd_count(sup.pid());
    assert!(
        fds <= fds_before + 256 + 16,
        "{fds} descriptors (from {fds_before}) under a flood of {held}"
    );
    // Refusals are logged at most once a second, the next line counting the others.
    let logged = sup.log().matches("uid not allowed").count();
    let most = flooding.elapsed().as_secs() as usize + 1;
    assert!(
        (1..=most).contains(&logged),
        "{logged} refusal lines for {held} refusals in {:?}",
        flooding.elapsed()
    );
    eprintln!(
        "unauthorized flood of {held}: {n} supervisor threads, {fds} descriptors (from {fds_before}), {total} allowed calls all answered"
    );

    drop(flood.0.stdin.take());
    let status = crate::util::wait_with_timeout(&mut flood.0, "the flood", Duration::from_secs(20));
    assert!(status.success(), "flood: {status:?}");
    sup.wait_until(
        "the refused connections' descriptors to be closed",
        Duration::from_secs(20),
        || fd_count(sup.pid()) <= fds_before + 2,
    );
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(total + 1));
}
