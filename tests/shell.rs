//! The supervisor's shape under many actors and connections: one event loop, so its
//! thread count does not grow with either (a thread per connection or per worker would
//! put hundreds here).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use crate::util::Supervisor;

const ACTORS: usize = 40;
const CONNECTIONS: usize = 200;
/// The helper threads: signals, four spawners, disk copy, log fsync, worker output,
/// plus the loop itself, with a little room.
const MAX_THREADS: usize = 12;

fn threads(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("Threads:"))
        .and_then(|n| n.trim().parse().ok())
        .expect("a Threads: line")
}

#[test]
fn thread_count_stays_constant_with_many_actors_and_connections() {
    let body: String = (0..ACTORS)
        .map(|i| format!("[[actor]]\nname = \"c{i}\"\nkind = \"counter\"\n\n"))
        .collect();
    let sup = Supervisor::start(&body);
    // Every connection has sent a call and got its answer, and stays open.
    let mut open = Vec::new();
    for i in 0..CONNECTIONS {
        let mut s = UnixStream::connect(&sup.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        let line = format!(
            "{{\"id\":{i},\"op\":\"call\",\"actor\":\"c{}\",\"method\":\"incr\",\"args\":1}}\n",
            i % ACTORS
        );
        s.write_all(line.as_bytes()).expect("send");
        let mut reply = String::new();
        BufReader::new(&s).read_line(&mut reply).expect("reply");
        assert!(reply.contains("\"ok\""), "call {i} failed: {reply}");
        open.push(s);
    }
    let n = threads(sup.pid());
    assert!(
        n <= MAX_THREADS,
        "{n} supervisor threads with {ACTORS} actors and {CONNECTIONS} open connections (at most {MAX_THREADS} expected)"
    );
    // And the connections are all still served.
    for (i, s) in open.iter_mut().enumerate() {
        let line = format!("{{\"id\":\"again-{i}\",\"op\":\"status\"}}\n");
        s.write_all(line.as_bytes()).expect("send");
    }
    for (i, s) in open.iter().enumerate() {
        let mut reply = String::new();
        BufReader::new(s).read_line(&mut reply).expect("reply");
        assert!(reply.contains(&format!("again-{i}")), "{reply}");
    }
}
