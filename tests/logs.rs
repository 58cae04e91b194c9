//! The supervisor's log (DESIGN §6): one line per event with actor and pid fields, fit
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
