//! The supervisor's shape under many actors and connections: one event loop, so its
//! thread count does not grow with either (a thread per connection or per worker would
//! put hundreds here); and standby workers, started ahead of need and taken over by an
//! actor whose worker died.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::json;

use std::os::unix::process::ExitStatusExt;

use crate::util::{FORK_SERVER_COMM, MAX_THREADS, Proc, Supervisor, children_of, comm, threads};

const ACTORS: usize = 40;
const CONNECTIONS: usize = 200;

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

/// Pids of the supervisor's children that are not any actor's worker nor a fork server
/// (its standbys).
fn standby_pids(sup: &Supervisor, actors: &[&str]) -> Vec<i32> {
    let workers: Vec<Option<i32>> = actors.iter().map(|a| sup.worker_pid(a)).collect();
    children_of(sup.pid())
        .into_iter()
        .map(|p| p.pid)
        .filter(|p| !workers.contains(&Some(*p)) && comm(*p) != FORK_SERVER_COMM)
        .collect()
}

/// A supervisor with one counter actor `c`, `standby` standby workers, and debug logs
/// (which say when a standby is ready).
fn start_with_standbys(standby: usize) -> Supervisor {
    Supervisor::start_env(
        &format!(
            "[supervisor]\nstandby_workers = {standby}\n\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n"
        ),
        &[("RESURGAM_LOG", Some("debug"))],
    )
}

/// Waits until the log says `n` standby workers are ready.
fn wait_ready_standbys(sup: &Supervisor, n: usize) {
    let want = format!("ready={n}");
    sup.wait_until(
        &format!("{n} standby workers ready"),
        Duration::from_secs(10),
        || {
            sup.log()
                .lines()
                .any(|l| l.contains("standby worker ready") && l.contains(&want))
        },
    );
}

#[test]
fn a_dead_worker_is_replaced_by_a_standby_and_the_pool_refills() {
    let sup = start_with_standbys(2);
    wait_ready_standbys(&sup, 2);
    let standbys = standby_pids(&sup, &["c"]);
    assert_eq!(standbys.len(), 2, "{standbys:?}");
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(5)).unwrap(), json!(5));
    let old = sup.kill_worker("c");
    let new = sup.wait_new_pid("c", old, Duration::from_secs(10));
    assert!(
        standbys.contains(&new),
        "the new worker {new} is not one of the standbys {standbys:?}\n{}",
        sup.log_tail(20)
    );
    // The standby took the actor's state and name.
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(6));
    let comm = std::fs::read_to_string(format!("/proc/{new}/comm")).unwrap_or_default();
    assert_eq!(comm.trim(), "w:c");
    // And the pool is whole again, with a new process.
    sup.wait_until("the pool to refill", Duration::from_secs(10), || {
        let now = standby_pids(&sup, &["c"]);
        now.len() == 2 && !now.contains(&new)
    });
}

#[test]
fn without_standby_workers_there_are_none_and_restarts_still_work() {
    let sup = start_with_standbys(0);
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(2)).unwrap(), json!(2));
    assert_eq!(standby_pids(&sup, &["c"]), Vec::<i32>::new());
    let old = sup.kill_worker("c");
    sup.wait_new_pid("c", old, Duration::from_secs(10));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(3));
    assert_eq!(standby_pids(&sup, &["c"]), Vec::<i32>::new());
    assert!(!sup.log().contains("standby worker ready"));
}

#[test]
fn reload_resizes_the_standby_pool() {
    let sup = start_with_standbys(2);
    wait_ready_standbys(&sup, 2);
    let before = standby_pids(&sup, &["c"]);
    let body = |n: usize| {
        format!(
            "[supervisor]\nstandby_workers = {n}\n\n[[actor]]\nname = \"c\"\nkind = \"counter\"\n"
        )
    };
    // Smaller: one of the two stops, the other stays.
    sup.write_config(&body(1));
    let mut c = sup.client();
    c.reload().expect("reload");
    sup.wait_until("one standby worker left", Duration::from_secs(10), || {
        let now = standby_pids(&sup, &["c"]);
        now.len() == 1 && before.contains(&now[0])
    });
    // Larger: new ones start.
    sup.write_config(&body(3));
    c.reload().expect("reload");
    wait_ready_standbys(&sup, 3);
    assert_eq!(standby_pids(&sup, &["c"]).len(), 3);
}

#[test]
fn standby_workers_die_with_the_supervisor_and_with_a_graceful_stop() {
    for graceful in [false, true] {
        let sup = start_with_standbys(2);
        wait_ready_standbys(&sup, 2);
        let standbys: Vec<Proc> = standby_pids(&sup, &["c"])
            .into_iter()
            .filter_map(Proc::of)
            .collect();
        assert_eq!(standbys.len(), 2);
        if graceful {
            sup.client().stop().expect("stop");
            assert!(sup.wait_exit(Duration::from_secs(15)).success());
        } else {
            assert_eq!(sup.kill_supervisor().signal(), Some(9));
        }
        sup.wait_until(
            "the standby workers to be gone",
            Duration::from_secs(10),
            || standbys.iter().all(|p| !p.is_running()),
        );
    }
}
