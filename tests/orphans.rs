//! No orphans (G9): workers die with their supervisor; a graceful stop exits 0 with every
//! worker gone, and a new supervisor on the same directories restores the state. What a
//! built-in worker's code starts shares its process group and dies with it (here: a
//! process the test puts into the group, as a fork by actor code would).

use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::process::{Command, Stdio};
use std::time::Duration;

use ipc_channel::ipc::{IpcOneShotServer, IpcSender};
use nix::sys::signal::Signal;
use resurgam::shared::ipc::{
    ENV_BOOTSTRAP, ENV_PARENT_PID, FromWorker, IPC_VERSION, Init, Privileges, ToWorker,
};
use serde_json::{Value, json};

use crate::util::{BIN, KillOnDrop, Proc, SCRUBBED_ENV, Supervisor, wait_with_timeout};

const CONFIG: &str = r#"
[[actor]]
name = "c"
kind = "counter"

[[actor]]
name = "kv"
kind = "kv"

[[actor]]
name = "c3"
kind = "counter"
"#;

const WAIT: Duration = Duration::from_secs(20);

/// Waits until none of `workers` runs (gone, or a zombie waiting for its new parent).
fn assert_all_gone(sup: &Supervisor, workers: &[Proc], what: &str) {
    sup.wait_all_gone(
        &format!("every worker to be gone after {what}"),
        WAIT,
        workers,
    );
}

/// A process in a worker's process group, as one its actor code started would be;
/// killed and reaped on drop.
struct GroupMember(KillOnDrop);

impl GroupMember {
    fn join(worker: &Proc) -> GroupMember {
        let group = worker.pid;
        let mut cmd = Command::new("sleep");
        cmd.arg("3600").stdin(Stdio::null());
        // SAFETY: setpgid is async-signal-safe; the closure allocates nothing.
        unsafe {
            cmd.pre_exec(move || {
                nix::unistd::setpgid(
                    nix::unistd::Pid::from_raw(0),
                    nix::unistd::Pid::from_raw(group),
                )
                .map_err(std::io::Error::from)
            });
        }
        let child = cmd.spawn().expect("start a process in the worker's group");
        GroupMember(KillOnDrop(child))
    }

    fn proc(&self) -> Proc {
        Proc::of(self.0.id() as i32).expect("the group member runs")
    }
}

/// A member in each worker's group; returns them and every process to watch.
fn join_groups(workers: &[Proc]) -> (Vec<GroupMember>, Vec<Proc>) {
    let members: Vec<GroupMember> = workers.iter().map(GroupMember::join).collect();
    let mut all = workers.to_vec();
    all.extend(members.iter().map(GroupMember::proc));
    (members, all)
}

/// The workers of the actors as status reports them now (all must be ALIVE).
fn current_workers(sup: &Supervisor) -> Vec<Proc> {
    let st = sup.status();
    let workers: Vec<Proc> = st["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| {
            let pid = a["pid"].as_i64().unwrap_or_else(|| panic!("no pid: {a}")) as i32;
            Proc::of(pid).unwrap_or_else(|| panic!("worker {pid} is not running"))
        })
        .collect();
    assert_eq!(workers.len(), 3);
    workers
}

#[test]
fn sigkill_of_the_supervisor_leaves_no_worker_alive() {
    let sup = Supervisor::start(CONFIG);
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(3)).unwrap(), json!(3));
    let workers = current_workers(&sup);
    // Workers are the supervisor's children.
    let children = crate::util::children_of(sup.pid());
    for w in &workers {
        assert!(
            children.contains(w),
            "worker {w:?} is not a child of {}",
            sup.pid()
        );
    }
    let (_members, all) = join_groups(&workers);
    let status = sup.kill_supervisor();
    assert_eq!(status.signal(), Some(9));
    assert_all_gone(&sup, &all, "SIGKILL of the supervisor");
}

/// A worker started by this test playing its supervisor (the worker's parent, alive
/// throughout: no parent-death signal ever comes), serving a fresh counter, with a
/// process in its group.
struct LoneWorker {
    worker: KillOnDrop,
    member: GroupMember,
    /// The channel to the worker (None: closed).
    to_worker: Option<IpcSender<ToWorker>>,
    /// The report socket (what the worker sends its replies and reports on).
    reports: UnixStream,
    _dir: tempfile::TempDir,
}

impl LoneWorker {
    fn start() -> LoneWorker {
        let dir = tempfile::tempdir().expect("tempdir");
        let (server, token) = IpcOneShotServer::<FromWorker>::new().expect("bootstrap server");
        let (reports, worker_end) = UnixStream::pair().expect("report socket");
        let mut cmd = Command::new(BIN);
        cmd.env(ENV_BOOTSTRAP, &token)
            .env(ENV_PARENT_PID, std::process::id().to_string())
            .stdin(Stdio::from(OwnedFd::from(worker_end)))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0);
        for var in SCRUBBED_ENV {
            cmd.env_remove(var);
        }
        // (Killed, with its group, and reaped on drop like a group member.)
        let worker = KillOnDrop(cmd.spawn().expect("start a worker"));
        let pid = worker.0.id() as i32;
        let member = GroupMember::join(&Proc::of(pid).expect("the worker runs"));
        let (_, hello) = server.accept().expect("the worker's hello");
        let FromWorker::Hello { to_worker, .. } = hello else {
            panic!("expected a hello, got {hello:?}");
        };
        let path = |name: &str| dir.path().join(name).into_os_string().into_encoded_bytes();
        let init = Init {
            version: IPC_VERSION,
            actor: "c".into(),
            kind: "counter".into(),
            mmap_path: path("c.mmap"),
            disk_path: path("c.disk"),
            checkpoint_every: 0,
            spin_micros: 0,
            calls_waiting: false,
            max_reply_bytes: 1 << 20,
            exec: None,
            privileges: Privileges::default(),
            state_dir_id: [0; 16],
        };
        to_worker
            .send(ToWorker::Init(Box::new(init)))
            .expect("send Init");
        LoneWorker {
            worker,
            member,
            to_worker: Some(to_worker),
            reports,
            _dir: dir,
        }
    }

    /// Asserts the worker ends by its own kill of its group, and the member with it.
    fn assert_group_killed(mut self) {
        let status = wait_with_timeout(&mut self.worker, "the worker", WAIT);
        assert_eq!(
            status.signal(),
            Some(9),
            "the worker did not kill its group ({status})"
        );
        wait_with_timeout(&mut self.member.0, "the worker's group member", WAIT);
    }
}

/// A dying supervisor's descriptors are closed before the kernel re-parents its
/// workers and sends them their parent-death signal, so a worker can find its channel
/// closed first: it must then take its process group along just the same.
#[test]
fn a_worker_whose_channel_closes_kills_its_process_group() {
    let mut w = LoneWorker::start();
    // The worker reads the Init before it sees the channel's end.
    w.to_worker = None;
    w.assert_group_killed();
}

/// Likewise when what it finds closed is the report socket (a reply cannot be sent).
#[test]
fn a_worker_whose_report_socket_closes_kills_its_process_group() {
    let mut w = LoneWorker::start();
    // Ready comes once the Init is applied; then the socket closes and a ping's pong
    // cannot be sent.
    let mut first = [0u8; 1];
    w.reports
        .set_read_timeout(Some(WAIT))
        .expect("a read timeout");
    w.reports
        .read_exact(&mut first)
        .expect("the worker's Ready report");
    w.reports
        .shutdown(std::net::Shutdown::Both)
        .expect("close the report socket");
    let to_worker = w.to_worker.as_ref().expect("the channel is open");
    to_worker.send(ToWorker::Ping).expect("send a ping");
    w.assert_group_killed();
}

#[test]
fn sigkill_of_a_worker_kills_its_process_group() {
    let sup = Supervisor::start(CONFIG);
    let workers = current_workers(&sup);
    let (_members, all) = join_groups(&workers[..1]);
    assert!(workers[0].signal(Signal::SIGKILL));
    assert_all_gone(&sup, &all, "SIGKILL of a worker");
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(1));
}

#[test]
fn graceful_stop_exits_zero_and_a_restart_restores_the_state() {
    let sup = Supervisor::start(CONFIG);
    let mut c = sup.client();
    for _ in 0..42 {
        c.call("c", "incr", json!(1)).unwrap();
    }
    c.call(
        "kv",
        "put",
        json!({"key": "a", "value": [1, "two", {"three": 3}]}),
    )
    .unwrap();
    c.call("kv", "put", json!({"key": "b", "value": null}))
        .unwrap();
    c.call("kv", "put", json!({"key": "gone", "value": 1}))
        .unwrap();
    c.call("kv", "delete", json!({"key": "gone"})).unwrap();
    let workers = current_workers(&sup);
    let (_members, all) = join_groups(&workers);

    assert_eq!(c.stop().unwrap(), json!({"stopping": true}));
    let status = sup.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "exit after `stop`");
    assert_all_gone(&sup, &all, "a graceful stop");
    assert!(
        !sup.socket.exists(),
        "the control socket file was left behind"
    );

    sup.restart_same_dirs();
    let mut c = sup.client();
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(42));
    assert_eq!(c.call("c3", "get", Value::Null).unwrap(), json!(0));
    assert_eq!(
        c.call("kv", "get", json!({"key": "a"})).unwrap(),
        json!([1, "two", {"three": 3}])
    );
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(2));
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(43));

    // SIGTERM is a graceful shutdown too.
    let workers = current_workers(&sup);
    sup.signal_supervisor(Signal::SIGTERM);
    let status = sup.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0), "exit after SIGTERM");
    assert_all_gone(&sup, &workers, "SIGTERM");

    sup.restart_same_dirs();
    let mut c = sup.client();
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(43));
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(2));
}

#[test]
fn stop_while_an_actor_is_restarting_keeps_acknowledged_calls() {
    // A graceful stop promises final checkpoints: an actor that happens to be waiting
    // out its restart backoff at that moment must not lose the calls acknowledged
    // since its last checkpoint.
    let sup = Supervisor::start(
        r#"
[[actor]]
name = "c"
kind = "counter"
checkpoint_every = 0
checkpoint_interval = "0s"
backoff_initial = "3s"
backoff_max = "3s"
min_uptime = "60s"
"#,
    );
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(10)).unwrap(), json!(10));
    // Two quick deaths: the second restart waits out the (long) backoff.
    let pid = sup.kill_worker("c");
    sup.wait_new_pid("c", pid, WAIT);
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(11));
    sup.kill_worker("c");
    sup.wait_state("c", "RESTARTING", WAIT);
    assert_eq!(c.stop().unwrap(), json!({"stopping": true}));
    let status = sup.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0));

    sup.restart_same_dirs();
    let mut c = sup.client();
    assert_eq!(
        c.call("c", "get", Value::Null).unwrap(),
        json!(11),
        "acknowledged calls were lost by a graceful stop"
    );
}

/// The children of a worker named `w-holder` (its address-space holder).
fn holders_of(worker: &Proc) -> Vec<Proc> {
    crate::util::children_of(worker.pid)
        .into_iter()
        .filter(|p| crate::util::comm(p.pid) == crate::util::HOLDER_COMM)
        .collect()
}

#[test]
fn a_workers_address_space_holder_dies_with_it() {
    let sup = Supervisor::start(CONFIG);
    let mut c = sup.client();
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(1));
    let worker = current_workers(&sup)
        .into_iter()
        .find(|w| Some(w.pid) == sup.worker_pid("c"))
        .expect("the worker of c");
    // A built-in worker forked by the fork server holds its memory through one child.
    let holders = holders_of(&worker);
    assert_eq!(holders.len(), 1, "holders of {worker:?}: {holders:?}");
    let old = sup.kill_worker("c");
    assert_eq!(old, worker.pid);
    sup.wait_all_gone("the killed worker's holder to be gone", WAIT, &holders);
    // The replacement has its own, and the state survived.
    let new = sup.wait_new_pid("c", old, WAIT);
    assert_eq!(c.call("c", "incr", json!(1)).unwrap(), json!(2));
    let new = Proc::of(new).expect("the new worker runs");
    let holders = holders_of(&new);
    assert_eq!(holders.len(), 1, "holders of {new:?}: {holders:?}");
    // A graceful stop leaves no holder either.
    assert_eq!(sup.client().stop().unwrap(), json!({"stopping": true}));
    let status = sup.wait_exit(WAIT);
    assert_eq!(status.code(), Some(0));
    sup.wait_all_gone("the holder to be gone after a stop", WAIT, &holders);
    // A stopping worker ends its holder itself: the supervisor finds nothing left behind.
    assert!(!sup.log().contains("left behind"), "{}", sup.log_tail(20));
}
