//! Processes that left their worker's process group (G9's rule for them).
//!
//! Everything an actor starts shares its worker's process group, and the group is
//! killed whenever the worker ends. A descendant that leaves the group with `setsid`
//! escapes that kill. But it cannot escape the process tree: the supervisor is a child
//! subreaper (`PR_SET_CHILD_SUBREAPER`, for the fork server's workers), so once the
//! processes between it and the supervisor are gone (its worker's group was killed, or
//! it double-forked) it is re-parented to the supervisor.
//!
//! The rule: a child of the supervisor in another session is never one of its workers
//! (workers, standby workers and the fork server stay in the supervisor's session), so
//! it is killed, with its process group, as soon as the supervisor looks: whenever one
//! of its children ends, and once more on the way out, where every remaining child is
//! killed until none is left. A process that only changes its group (`setpgid`) and
//! stays in the session is killed on the way out. Only a kill -9 of the supervisor
//! itself leaves such a process alive (nothing of ours runs then); under systemd the
//! service's cgroup still holds it (`KillMode=mixed`).

use std::collections::HashSet;
use std::os::fd::AsFd;
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// What `/proc/PID/stat` says about a process.
struct Stat {
    state: char,
    ppid: i32,
    pgrp: i32,
    session: i32,
    comm: String,
}

fn stat_of(pid: i32) -> Option<Stat> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // "PID (COMM) STATE PPID PGRP SESSION …"; COMM may hold spaces and parentheses.
    let open = text.find('(')?;
    let close = text.rfind(')')?;
    let comm = text.get(open + 1..close)?.to_string();
    let mut fields = text.get(close + 1..)?.split_whitespace();
    let state = fields.next()?.chars().next()?;
    let ppid = fields.next()?.parse().ok()?;
    let pgrp = fields.next()?.parse().ok()?;
    let session = fields.next()?.parse().ok()?;
    Some(Stat {
        state,
        ppid,
        pgrp,
        session,
        comm,
    })
}

/// This process's children: from `/proc/self/task/*/children` (a re-parented child
/// may belong to any of our threads), else by a scan of every process's parent.
fn children() -> Vec<i32> {
    let mut out = Vec::new();
    let mut listed = false;
    if let Ok(tasks) = std::fs::read_dir("/proc/self/task") {
        for task in tasks.flatten() {
            if let Ok(text) = std::fs::read_to_string(task.path().join("children")) {
                listed = true;
                out.extend(
                    text.split_whitespace()
                        .filter_map(|p| p.parse::<i32>().ok()),
                );
            }
        }
    }
    if listed {
        out.sort_unstable();
        out.dedup();
        return out;
    }
    // Kernels without CONFIG_PROC_CHILDREN.
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
                .filter(|&pid| stat_of(pid).is_some_and(|s| s.ppid == me))
                .collect()
        })
        .unwrap_or_default()
}

/// Kills the children of this process that `wanted` picks (never one `known` names:
/// a worker), each with its process group when it leads one, and logs `why` for each
/// not in `logged` yet. Returns how many living children were picked (zombies only
/// wait to be reaped).
fn kill_children(
    known: impl Fn(u32) -> bool,
    wanted: impl Fn(&Stat) -> bool,
    why: &str,
    logged: &mut HashSet<i32>,
) -> usize {
    let me = std::process::id() as i32;
    let mut picked = 0;
    for pid in children() {
        if u32::try_from(pid).is_ok_and(&known) {
            continue;
        }
        match stat_of(pid) {
            Some(s) if s.state != 'Z' && wanted(&s) => {}
            _ => continue,
        }
        // The pidfd names this very process from now on; check it is still the child
        // we looked at (it may have ended and its pid been reused in between).
        let Some(pidfd) = crate::reap::pidfd_open(pid as u32) else {
            continue;
        };
        let Some(s) = stat_of(pid).filter(|s| s.ppid == me && wanted(s)) else {
            continue;
        };
        picked += 1;
        if logged.insert(pid) {
            tracing::warn!(pid, process = %s.comm, session = s.session, "{why}");
        }
        // Our unreaped child keeps its pid, and with it its group id, reserved: the
        // group is the one it leads (what it started since it left).
        if s.pgrp == pid {
            let _ = kill(Pid::from_raw(-pid), Signal::SIGKILL);
        }
        crate::reap::pidfd_kill(pidfd.as_fd());
    }
    picked
}

/// Kills the children of the supervisor that left its session (see the module doc);
/// `known` names the workers (which never do, so need no look).
pub fn kill_escaped(known: impl Fn(u32) -> bool) {
    let Ok(session) = nix::unistd::getsid(None) else {
        return;
    };
    let session = session.as_raw();
    kill_children(
        known,
        |s| s.session != session,
        "killing a process that left its worker's session (it was re-parented to the supervisor)",
        &mut HashSet::new(),
    );
}

/// On the way out, with every worker gone: kills every child left but the fork servers
/// (`known`; they end with the supervisor) until none is left, or `within` has passed.
/// A dead child is not reaped any more (the loop has ended): the scan sees its zombie.
pub fn kill_all_children(known: impl Fn(u32) -> bool, within: Duration) {
    let give_up = Instant::now() + within;
    let mut logged = HashSet::new();
    while kill_children(
        &known,
        |_| true,
        "killing a process an actor left behind",
        &mut logged,
    ) > 0
    {
        if Instant::now() >= give_up {
            tracing::warn!("processes left behind by actors did not die in time");
            return;
        }
        // A killed process takes a moment to die; its own children are re-parented to
        // us only then (and get killed in the next round).
        std::thread::sleep(Duration::from_millis(2));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_and_children_read_this_process_and_its_child() {
        let me = stat_of(std::process::id() as i32).unwrap();
        assert_eq!(me.ppid, nix::unistd::getppid().as_raw());
        assert_eq!(me.session, nix::unistd::getsid(None).unwrap().as_raw());
        let mut child = std::process::Command::new("sleep")
            .arg("60")
            .spawn()
            .unwrap();
        let pid = child.id() as i32;
        let listed = children().contains(&pid);
        let s = stat_of(pid);
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(listed, "child {pid} not among {:?}", children());
        let s = s.unwrap();
        assert_eq!(s.ppid, std::process::id() as i32);
        assert_eq!(s.session, me.session);
    }
}
