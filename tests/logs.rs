//! The supervisor's log: one line per event with actor and pid fields, fit
//! for journald — so no terminal colour codes when stderr is not a terminal.

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
    let body = "[[actor]]\nname = \"c\"\nkind = \"counter\"\n";
    let sup = Supervisor::start_wrapped(body, |s| {
        let mut cmd = std::process::Command::new("bash");
        // exec keeps the pid: the harness's process is the supervisor itself, with its
        // stderr a pipe whose reader has already exited.
        cmd.arg("-c")
            .arg("exec \"$0\" run --config \"$1\" 2> >(exit 0)")
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
