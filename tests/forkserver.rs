//! The fork server: workers are forked from it yet stay the supervisor's children in
//! groups of their own; its death costs no worker and no call, and a new one is started;
//! an upgraded binary on disk is picked up on reload; nothing outlives the supervisor.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use nix::sys::signal::Signal;
use serde_json::json;

use crate::util::{BIN, FORK_SERVER_COMM, Supervisor, children_of, cmdline, comm, forked_worker};

const CONFIG: &str = r#"
[supervisor]
standby_workers = 1

[[actor]]
name = "c"
kind = "counter"
"#;

const WAIT: Duration = Duration::from_secs(20);

/// The process group of `pid`, from /proc/<pid>/stat (field 5).
fn pgrp(pid: i32) -> i32 {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let rest = &stat[stat.rfind(')').map_or(0, |i| i + 1)..];
    rest.split_whitespace()
        .nth(2)
        .and_then(|g| g.parse().ok())
        .unwrap_or(-1)
}

/// Where the first mapping of `pid` (its executable) starts: the same for a process and
/// what it forked, chosen anew at each exec.
fn layout(pid: i32) -> String {
    let maps = fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.split('-').next().unwrap_or_default().to_string()
}

/// Where /proc/<pid>/exe points.
fn exe(pid: i32) -> PathBuf {
    fs::read_link(format!("/proc/{pid}/exe")).unwrap_or_default()
}

#[test]
fn workers_are_forked_by_it_and_outlive_its_death() {
    let sup = Supervisor::start(CONFIG);
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(1));
    let servers = sup.fork_servers();
    assert_eq!(
        servers.len(),
        1,
        "one fork server: {servers:?}\n{}",
        sup.log_tail(30)
    );
    let server = servers[0];
    let worker = sup.worker_pid("c").expect("c has a worker");
    // Forked, not exec'd, yet the supervisor's child, in its own group, and named like
    // a spawned worker: only the supervisor carries the supervisor's command line (what
    // `pgrep -f 'resurgam run'` finds).
    assert!(forked_worker(worker), "worker {worker} was not forked");
    assert_eq!(cmdline(worker), "resurgam-worker[c]");
    assert_eq!(cmdline(server.pid), "resurgam-fork-server");
    let sup_cmdline = cmdline(sup.pid());
    assert!(sup_cmdline.contains(" run --config "), "{sup_cmdline}");
    for child in children_of(sup.pid()) {
        assert_ne!(cmdline(child.pid), sup_cmdline, "child {child:?}");
    }
    assert!(
        children_of(sup.pid()).iter().any(|p| p.pid == worker),
        "worker {worker} is not a child of the supervisor {}",
        sup.pid()
    );
    assert_eq!(
        pgrp(worker),
        worker,
        "worker {worker} leads no group of its own"
    );
    assert_eq!(comm(worker), "w:c");

    // The server dies: the worker does not, calls go on, and a new server comes.
    assert!(server.signal(Signal::SIGKILL));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(2));
    assert_eq!(
        sup.worker_pid("c"),
        Some(worker),
        "the worker died with the fork server"
    );
    sup.wait_until("a new fork server", WAIT, || {
        sup.fork_servers().iter().any(|p| *p != server)
    });
    let killed = sup.kill_worker("c");
    let mut new = sup.wait_new_pid("c", killed, WAIT);
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(3));
    assert!(children_of(sup.pid()).iter().any(|p| p.pid == new));
    // That worker may be the standby the first server forked. The new server was
    // exec'd by a helper thread and double-forks: its workers, orphaned, must be the
    // supervisor's children too, and die with it below. A worker forked from a server
    // has its address-space layout (ASLR is chosen at exec).
    let new_server = sup
        .fork_servers()
        .into_iter()
        .find(|p| *p != server)
        .expect("the new fork server");
    let mut count = 3;
    while layout(new) != layout(new_server.pid) {
        assert!(
            count < 6,
            "no worker forked by the new server after {count} kills"
        );
        let killed = sup.kill_worker("c");
        new = sup.wait_new_pid("c", killed, WAIT);
        count += 1;
        assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(count));
    }
    assert!(forked_worker(new), "worker {new} was not forked");
    assert!(children_of(sup.pid()).iter().any(|p| p.pid == new));
    assert!(
        sup.log().contains("fork server lost"),
        "the loss is not logged:\n{}",
        sup.log_tail(30)
    );

    // Nothing outlives a SIGKILL of the supervisor: workers, standbys, fork servers.
    let everything = children_of(sup.pid());
    assert!(
        everything.iter().any(|p| p.pid == new)
            && everything.iter().any(|p| comm(p.pid) == FORK_SERVER_COMM),
        "{everything:?}"
    );
    sup.kill_supervisor();
    sup.wait_until("every child of the supervisor to be gone", WAIT, || {
        everything.iter().all(|p| !p.is_running())
    });
}

/// Copies the binary under test to `to` through a new file renamed into place: the old
/// file (if any) stays as it was for processes running it.
fn install(to: &Path) {
    let tmp = to.with_extension("new");
    fs::copy(BIN, &tmp).expect("copy the binary");
    fs::rename(&tmp, to).expect("rename the binary into place");
}

/// Kills c's worker: the binary its successor runs.
fn replacement_exe(sup: &Supervisor) -> PathBuf {
    let old = sup.kill_worker("c");
    let new = sup.wait_new_pid("c", old, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);
    exe(new)
}

#[test]
fn reload_picks_up_an_upgraded_binary() {
    let bin_dir = tempfile::Builder::new()
        .prefix("rsg-bin-")
        .tempdir()
        .expect("tempdir");
    let bin = bin_dir.path().join("resurgam");
    install(&bin);
    let sup = Supervisor::start_wrapped(CONFIG, |s| {
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--config"]).arg(&s.config_path);
        cmd
    });
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(5)).unwrap(), json!(5));
    let worker = sup.worker_pid("c").expect("c has a worker");
    assert_eq!(exe(worker), bin);

    // A new binary on disk changes nothing until a reload…
    install(&bin);
    let deleted = PathBuf::from(format!("{} (deleted)", bin.display()));
    assert_eq!(exe(sup.pid()), deleted);
    assert_eq!(
        replacement_exe(&sup),
        deleted,
        "a worker ran the new binary before a reload"
    );

    // …after which new workers (and standbys) run it; the state carries over.
    c.reload().expect("reload");
    sup.wait_until("the new fork server", WAIT, || {
        sup.log().contains("new workers start from it")
    });
    assert_eq!(
        replacement_exe(&sup),
        bin,
        "the worker after the reload runs the old binary"
    );
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(6));
}

#[test]
fn a_fork_server_entry_with_a_bad_pid_or_no_socket_refuses_to_serve() {
    // run_with_timeout gives the command /dev/null as stdin.
    let run = |value: &str| {
        let mut cmd = crate::util::resurgam_cmd(&["status"]);
        cmd.env("RESURGAM_FORK_SERVER", value);
        crate::util::run_with_timeout(cmd, WAIT)
    };
    let bad_pid = run("not-a-pid");
    assert_eq!(bad_pid.status.code(), Some(70), "{bad_pid:?}");
    assert!(String::from_utf8_lossy(&bad_pid.stderr).contains("is not a pid"));
    // A pid, but stdin is /dev/null, not the supervisor's socket: nothing is forked.
    let no_socket = run(&std::process::id().to_string());
    assert_eq!(no_socket.status.code(), Some(70), "{no_socket:?}");
    assert!(
        String::from_utf8_lossy(&no_socket.stderr).contains("not the supervisor's socket"),
        "{no_socket:?}"
    );
}
