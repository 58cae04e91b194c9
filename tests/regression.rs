//! Regressions found in review, each reproduced before its fix.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::Supervisor;

/// A partial non-blocking write of a reply can end inside a multi-byte UTF-8
/// character; the rest must go on as bytes (the supervisor used to panic slicing it).
#[test]
fn replies_split_inside_a_utf8_character_reach_a_slow_reader_intact() {
    let sup = Supervisor::start("[[actor]]\nname = \"kv\"\nkind = \"kv\"\n");
    let value = "é".repeat(3000);
    sup.client()
        .call("kv", "put", json!({"key": "k", "value": value}))
        .unwrap();
    let mut stream = UnixStream::connect(&sup.socket).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut requests = String::new();
    for id in 0..400 {
        requests.push_str(&format!(
            "{{\"id\":{id},\"op\":\"call\",\"actor\":\"kv\",\"method\":\"get\",\"args\":{{\"key\":\"k\"}}}}\n"
        ));
    }
    stream.write_all(requests.as_bytes()).unwrap();
    // Read slowly at first, so the socket buffer fills and writes come out partial.
    std::thread::sleep(Duration::from_millis(300));
    let mut reader = BufReader::with_capacity(1000, stream);
    let mut seen = vec![false; 400];
    for _ in 0..400 {
        let mut line = String::new();
        assert!(
            reader.read_line(&mut line).unwrap() > 0,
            "connection closed early"
        );
        let v: Value = serde_json::from_str(&line).expect("every reply is whole JSON");
        assert_eq!(v["ok"], json!(value));
        seen[v["id"].as_u64().unwrap() as usize] = true;
    }
    assert!(seen.iter().all(|s| *s));
    assert!(sup.try_wait_exit().is_none(), "the supervisor died");
    assert!(!sup.log().contains("panicked"), "{}", sup.log_tail(20));
}

/// When exec of a new worker fails, the spawner thread must survive: its death would
/// SIGKILL every other worker (PR_SET_PDEATHSIG follows the thread that forked).
#[test]
fn a_failed_exec_leaves_the_other_workers_alone_and_restart_recovers() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("resurgam-copy");
    std::fs::copy(env!("CARGO_BIN_EXE_resurgam"), &bin).unwrap();
    let body = "[defaults]\nbackoff_initial = \"20ms\"\nbackoff_max = \"50ms\"\n\
                [[actor]]\nname = \"a\"\nkind = \"counter\"\n\
                [[actor]]\nname = \"b\"\nkind = \"counter\"\n";
    let sup = Supervisor::start_wrapped(body, |s| {
        let mut cmd = Command::new(&bin);
        cmd.args(["run", "--config"]).arg(&s.config_path);
        cmd
    });
    let mut c = sup.client();
    c.call("a", "incr", json!(3)).unwrap();
    c.call("b", "incr", json!(4)).unwrap();
    let b_pid = sup.worker_pid("b").unwrap();
    // From now on every exec of the binary fails (EACCES).
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o600)).unwrap();
    // Workers are forked by the fork server, which execs nothing: kill it, so that every
    // start needs an exec (its successor's too).
    for server in sup.fork_servers() {
        server.signal(nix::sys::signal::Signal::SIGKILL);
    }
    for _ in 0..4 {
        let a_pid = sup.worker_pid("a").unwrap_or(0);
        if a_pid != 0 {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(a_pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    // b is untouched and serving; a cannot start.
    assert_eq!(sup.worker_pid("b"), Some(b_pid), "{}", sup.log_tail(30));
    assert_eq!(c.call("b", "incr", json!(1)).unwrap(), json!(5));
    let a = sup.actor("a");
    assert_ne!(a["state"], "ALIVE", "{a}");
    assert!(sup.try_wait_exit().is_none(), "the supervisor died");
    // Exec works again: restart revives a with its state.
    std::fs::set_permissions(&bin, std::fs::Permissions::from_mode(0o755)).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let _ = c.restart("a");
        if sup.actor("a")["state"] == "ALIVE" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "a never came back: {}",
            sup.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.call("a", "get", Value::Null).unwrap(), json!(3));
}

/// A client that sends requests and never reads the replies holds a bounded amount of
/// the supervisor's memory (its connection stops being read from), and other clients
/// keep being served.
#[test]
fn a_client_that_never_reads_its_replies_costs_bounded_memory() {
    let sup = Supervisor::start("[[actor]]\nname = \"c\"\nkind = \"counter\"\n");
    let rss_kib = |pid: i32| -> u64 {
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .unwrap()
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap()
    };
    let before = rss_kib(sup.pid());
    let mut flood = UnixStream::connect(&sup.socket).unwrap();
    flood
        .set_write_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let line = b"{\"id\":1,\"op\":\"status\"}\n".repeat(1000);
    // Write until the supervisor stops reading (the write times out) or 200k requests
    // (~100 MB of replies) are in.
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut sent = 0;
    while sent < 200 && Instant::now() < deadline {
        match flood.write_all(&line) {
            Ok(()) => sent += 1,
            Err(_) => break,
        }
    }
    assert!(
        sent < 200,
        "the supervisor kept reading a client that reads nothing"
    );
    let grown = rss_kib(sup.pid()).saturating_sub(before);
    assert!(
        grown < 64 * 1024,
        "the supervisor grew by {grown} KiB for one client that does not read"
    );
    // Everyone else is still served.
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(2)).unwrap(), json!(2));
    drop(flood);
}

/// The worker's end of its report socket, duplicated into this process with
/// `pidfd_getfd`: what the test writes on it is what a malicious worker (user code)
/// could send. The report socket is the worker's only Unix stream socket (ipc-channel's
/// are seqpacket ones). `None` (after reporting a skip) when this process may not take
/// another's descriptors.
fn report_socket_of(pid: i32) -> Option<UnixStream> {
    use std::os::fd::FromRawFd;
    let unix = std::fs::read_to_string("/proc/net/unix").unwrap();
    // "Num RefCount Protocol Flags Type St Inode Path": Type 0001 is SOCK_STREAM.
    let stream_inodes: Vec<&str> = unix
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.get(4) == Some(&"0001"))
                .then(|| f.get(6).copied())
                .flatten()
        })
        .collect();
    let mut fds = Vec::new();
    for entry in std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .flatten()
    {
        let Ok(target) = std::fs::read_link(entry.path()) else {
            continue;
        };
        let target = target.to_string_lossy().into_owned();
        if let Some(inode) = target
            .strip_prefix("socket:[")
            .and_then(|t| t.strip_suffix(']'))
            && stream_inodes.contains(&inode)
        {
            fds.push(entry.file_name().to_string_lossy().parse::<i32>().unwrap());
        }
    }
    assert_eq!(fds.len(), 1, "worker {pid}: stream sockets on fds {fds:?}");
    // SAFETY: pidfd_open and pidfd_getfd only create descriptors; they read no memory.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) } as i32;
    assert!(
        pidfd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: as above.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd, fds[0], 0) } as i32;
    let error = std::io::Error::last_os_error();
    // SAFETY: `pidfd` is ours, opened above.
    unsafe { libc::close(pidfd) };
    if fd < 0 && error.raw_os_error() == Some(libc::EPERM) && !nix::unistd::geteuid().is_root() {
        crate::util::skip(&format!("cannot take the worker's descriptor: {error}"));
        return None;
    }
    assert!(fd >= 0, "pidfd_getfd: {error}");
    // SAFETY: `fd` is the new descriptor pidfd_getfd returned; nothing else owns it.
    Some(unsafe { UnixStream::from_raw_fd(fd) })
}

/// Workers run user code: bytes on the report socket that are not a valid frame — a
/// length prefix of 4 GiB, a frame just over the limit, garbage — get the worker killed
/// with a log line saying why, never a panic or a buffer of the claimed size; the actor
/// recovers with its state.
#[test]
fn a_worker_sending_garbage_or_huge_frames_on_its_report_socket_is_killed() {
    use resurgam::shared::ipc::MAX_REPORT_BYTES;
    let sup = Supervisor::start("[[actor]]\nname = \"c\"\nkind = \"counter\"\n");
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(5)).unwrap(), json!(5));
    let over = u32::try_from(MAX_REPORT_BYTES + 1).unwrap().to_le_bytes();
    let cases: [(&str, Vec<u8>, &str); 3] = [
        (
            "a 4 GiB length",
            u32::MAX.to_le_bytes().to_vec(),
            "larger than the limit",
        ),
        (
            "one byte over the limit",
            over.to_vec(),
            "larger than the limit",
        ),
        (
            "garbage",
            [8, 0, 0, 0, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0xfa, 0xf9, 0xf8].to_vec(),
            "undecodable",
        ),
    ];
    for (i, (what, bytes, reason)) in cases.iter().enumerate() {
        let pid = sup.actor_pid("c").expect("c ALIVE");
        let Some(mut socket) = report_socket_of(pid) else {
            return;
        };
        socket.write_all(bytes).unwrap();
        drop(socket);
        sup.wait_new_pid("c", pid, Duration::from_secs(20));
        let log = sup.log();
        let line = log
            .lines()
            .filter(|l| l.contains("worker broke its report stream") && l.contains(reason))
            .nth(if i < 2 { i } else { 0 });
        assert!(line.is_some(), "{what}: no log line\n{}", sup.log_tail(20));
        assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(5), "{what}");
    }
    assert_eq!(sup.actor("c")["restarts"], 3);
    assert!(sup.try_wait_exit().is_none(), "the supervisor died");
    assert!(!sup.log().contains("panicked"), "{}", sup.log_tail(20));
}
