//! The supervisor's log: one line per event with actor and pid fields, fit
//! for journald — so no terminal colour codes when stderr is not a terminal.

use std::os::unix::net::UnixDatagram;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde_json::json;

use crate::util::Supervisor;

#[test]
fn log_lines_are_plain_text_with_actor_and_pid_fields() {
    // The harness sets NO_COLOR for readability; here the supervisor gets the plain
    // environment a systemd unit would give it, with stderr going to a file.
    let sup = Supervisor::start_env(
        r#"
[[actor]]
name = "c"
kind = "counter"
"#,
        &[("NO_COLOR", None), ("TERM", None)],
    );
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(1));
    let pid = sup.kill_worker("c");
    let new_pid = sup.wait_new_pid("c", pid, std::time::Duration::from_secs(20));

    let raw = sup.raw_log();
    assert!(
        !raw.contains('\u{1b}'),
        "ANSI escape codes in a log written to a file (not a terminal):\n{}",
        raw.lines().next().unwrap_or_default().escape_debug()
    );
    let ready = raw
        .lines()
        .filter(|l| l.contains("worker ready"))
        .collect::<Vec<_>>();
    assert_eq!(
        ready.len(),
        2,
        "one \"worker ready\" line per start:\n{raw}"
    );
    assert!(
        ready[1].contains("actor=c") && ready[1].contains(&format!("pid={new_pid}")),
        "no actor/pid fields in {:?}",
        ready[1]
    );
    let died = raw
        .lines()
        .find(|l| l.contains("worker died"))
        .unwrap_or_else(|| panic!("no \"worker died\" line:\n{raw}"));
    assert!(died.contains(&format!("pid={pid}")), "{died:?}");
}

/// What a worker prints reaches the supervisor's log as lines naming the actor and the
/// worker's pid (under systemd every process of the unit writes to the same journal
/// stream, so the name must be in the line).
#[test]
fn worker_output_is_relayed_with_the_actor_name() {
    let sup = Supervisor::start("[[actor]]\nname = \"chatty\"\nkind = \"counter\"\n");
    // A directory where the worker's mmap checkpoint file should be: its next start
    // fails and the worker says why on stderr before it exits.
    let ckpt = sup.runtime_dir.join("chatty.ckpt");
    let pid = sup.worker_pid("chatty").unwrap();
    std::fs::remove_file(&ckpt).unwrap();
    std::fs::create_dir(&ckpt).unwrap();
    let _ = nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGKILL,
    );
    sup.wait_until(
        "the worker's own message in the supervisor's log",
        std::time::Duration::from_secs(20),
        || {
            sup.log().lines().any(|l| {
                l.contains("resurgam worker chatty:")
                    && l.contains("Is a directory")
                    && l.contains("actor=chatty")
                    && l.contains("pid=")
            })
        },
    );
}

#[test]
fn a_closed_stderr_does_not_take_the_supervisor_down() {
    // `resurgam run … 2>&1 | head -1`: once the reader is gone every log line fails
    // with EPIPE. The supervisor must keep serving (and its workers keep running)
    // and still stop cleanly.
    survives_a_stderr_that_fails("2> >(exit 0)");
}

#[test]
fn a_full_log_disk_does_not_take_the_supervisor_down() {
    // Every write to /dev/full fails with ENOSPC, as the log file's on a full disk.
    survives_a_stderr_that_fails("2>/dev/full");
}

/// Runs a supervisor with its stderr redirected by `redirect` (a bash redirection
/// after which every write fails), kills a worker, and stops it cleanly.
fn survives_a_stderr_that_fails(redirect: &str) {
    let body = "[[actor]]\nname = \"c\"\nkind = \"counter\"\n";
    let script = format!("exec \"$0\" run --config \"$1\" {redirect}");
    let sup = Supervisor::start_wrapped(body, |s| {
        let mut cmd = std::process::Command::new("bash");
        // exec keeps the pid: the harness's process is the supervisor itself.
        cmd.arg("-c")
            .arg(&script)
            .arg(crate::util::BIN)
            .arg(&s.config_path);
        cmd
    });
    let mut c = sup.client();
    for n in 1..=3 {
        assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(n));
    }
    // A worker death logs several lines, all of them failing.
    let pid = sup.kill_worker("c");
    sup.wait_new_pid("c", pid, std::time::Duration::from_secs(20));
    assert_eq!(c.call("c", "get", json!(null)).unwrap(), json!(3));
    assert_eq!(sup.client().stop().unwrap(), json!({"stopping": true}));
    assert_eq!(
        sup.wait_exit(std::time::Duration::from_secs(20)).code(),
        Some(0),
        "the supervisor did not exit cleanly"
    );
}

/// Starts a supervisor the way systemd does with `StandardError=journal`: stderr is a
/// stream whose device and inode `JOURNAL_STREAM` names (here the harness's log file),
/// and journald's socket is `journal` (the test-only override).
fn start_under_journal(body: &str, journal: &std::path::Path) -> Supervisor {
    Supervisor::start_wrapped(body, |s| {
        let mut cmd = std::process::Command::new("bash");
        cmd.arg("-c")
            .arg("JOURNAL_STREAM=$(stat -L -c %d:%i /proc/self/fd/2) exec \"$0\" run --config \"$1\"")
            .arg(crate::util::BIN)
            .arg(&s.config_path)
            .env(resurgam::journal::SOCKET_ENV, journal);
        cmd
    })
}

/// One journal entry as a map of its fields (text values).
type Entry = std::collections::HashMap<String, String>;

/// Reads entries from `sock` until `done` holds for what was read, at most 20 s.
fn read_entries(sock: &UnixDatagram, what: &str, done: impl Fn(&[Entry]) -> bool) -> Vec<Entry> {
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut entries = Vec::new();
    let mut buf = vec![0u8; 256 * 1024];
    while !done(&entries) {
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "timed out waiting for {what}; got {entries:#?}"
        );
        sock.set_read_timeout(Some(left)).unwrap();
        let Ok(n) = sock.recv(&mut buf) else { continue };
        let fields = resurgam::journal::decode(&buf[..n])
            .unwrap_or_else(|e| panic!("not the native protocol ({e}): {:?}", &buf[..n]));
        entries.push(
            fields
                .into_iter()
                .map(|(k, v)| (k, String::from_utf8_lossy(&v).into_owned()))
                .collect(),
        );
    }
    entries
}

fn field<'a>(e: &'a Entry, k: &str) -> &'a str {
    e.get(k).map_or("", String::as_str)
}

/// Under systemd (stderr is the journal stream) every event is a native journal entry:
/// PRIORITY from its level (a worker's death is a warning: `journalctl -p warning`
/// finds it), its fields as RESURGAM_* (RESURGAM_ACTOR selects one actor, the worker's
/// own output included), and no timestamp of its own. Nothing goes to stderr.
#[test]
fn under_the_journal_events_are_native_entries_with_priority_and_actor() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("journal.sock");
    let sock = UnixDatagram::bind(&path).unwrap();
    let body = "[[actor]]\nname = \"c\"\nkind = \"counter\"\n\n[[actor]]\nname = \"chatty\"\nkind = \"counter\"\n";
    let sup = start_under_journal(body, &path);
    let pid = sup.kill_worker("c");
    sup.wait_new_pid("c", pid, Duration::from_secs(20));
    // The chatty worker's next start fails on a directory where its checkpoint file
    // should be, and it says why on stderr (relayed by the supervisor).
    let ckpt = sup.runtime_dir.join("chatty.ckpt");
    let chatty = sup.worker_pid("chatty").unwrap();
    std::fs::remove_file(&ckpt).unwrap();
    std::fs::create_dir(&ckpt).unwrap();
    let _ = kill(Pid::from_raw(chatty), Signal::SIGKILL);

    let is_output = |e: &Entry| {
        field(e, "RESURGAM_TARGET") == "worker" && field(e, "MESSAGE").contains("Is a directory")
    };
    let entries = read_entries(&sock, "a warning for c and chatty's own output", |es| {
        es.iter().any(|e| {
            field(e, "RESURGAM_ACTOR") == "c" && field(e, "MESSAGE").starts_with("worker died")
        }) && es.iter().any(is_output)
    });
    let died = entries
        .iter()
        .find(|e| {
            field(e, "MESSAGE").starts_with("worker died") && field(e, "RESURGAM_ACTOR") == "c"
        })
        .unwrap();
    assert_eq!(field(died, "PRIORITY"), "4", "{died:#?}");
    assert_eq!(field(died, "RESURGAM_PID"), pid.to_string(), "{died:#?}");
    assert_eq!(field(died, "SYSLOG_IDENTIFIER"), "resurgam");
    let ready = entries
        .iter()
        .find(|e| {
            field(e, "MESSAGE").starts_with("worker ready") && field(e, "RESURGAM_ACTOR") == "c"
        })
        .unwrap_or_else(|| panic!("no \"worker ready\" entry for c: {entries:#?}"));
    assert_eq!(field(ready, "PRIORITY"), "6", "{ready:#?}");
    let output = entries.iter().find(|e| is_output(e)).unwrap();
    assert_eq!(field(output, "RESURGAM_ACTOR"), "chatty", "{output:#?}");
    for e in &entries {
        assert!(
            e.keys()
                .all(|k| !k.contains("TIMESTAMP") && !k.starts_with('_')),
            "a timestamp or a trusted field in {e:#?}"
        );
        assert!(!field(e, "MESSAGE").contains(" INFO "), "{e:#?}");
    }
    let log = sup.log();
    assert!(
        !log.contains("worker ready"),
        "lines on stderr although the journal takes them:\n{log}"
    );
}

/// `JOURNAL_STREAM` set but journald's socket unusable: plain lines on stderr as usual.
#[test]
fn without_a_usable_journal_socket_logs_fall_back_to_stderr() {
    let dir = tempfile::tempdir().unwrap();
    let sup = start_under_journal(
        "[[actor]]\nname = \"c\"\nkind = \"counter\"\n",
        &dir.path().join("no-such.sock"),
    );
    sup.wait_until(
        "the plain \"worker ready\" line",
        Duration::from_secs(20),
        || {
            sup.log()
                .lines()
                .any(|l| l.contains("worker ready") && l.contains("actor=c"))
        },
    );
}

#[test]
fn a_failing_command_with_closed_output_exits_with_its_code_not_a_panic() {
    // `resurgam run … 2>&1 | head -1` once the reader is gone: the message that says
    // why `run` fails cannot be written, and the exit code must still be the failure's
    // (1), not a panic's (101). Here `run` fails because a supervisor holds the
    // state directory; `status` of an unknown actor fails as a client.
    let sup = Supervisor::start("[[actor]]\nname = \"c\"\nkind = \"counter\"\n");
    let config = sup.config_path.to_str().unwrap();
    for args in [
        vec!["run", "--config", config],
        vec!["status", "--config", config, "nope"],
        vec!["status", "--config", config],
    ] {
        let (read, write) = nix::unistd::pipe().unwrap();
        drop(read);
        let write2 = write.try_clone().unwrap();
        let mut cmd = crate::util::resurgam_cmd(&args);
        cmd.stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::from(write))
            .stderr(std::process::Stdio::from(write2));
        let mut child = cmd.spawn().unwrap();
        drop(cmd);
        let status = crate::util::wait_with_timeout(
            &mut child,
            &format!("resurgam {args:?}"),
            std::time::Duration::from_secs(30),
        );
        let expected = if args.len() == 3 && args[0] == "status" {
            0
        } else {
            1
        };
        assert_eq!(status.code(), Some(expected), "{args:?}: {status:?}");
    }
}
