//! State export/import through the real binary: a round trip across two supervisors
//! (counter and kv), the import's place in the call order, refusals (another kind, a
//! damaged file, a bad file sent straight to the socket) and exactly-once across a
//! worker kill -9 and a supervisor kill -9 right after an import.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::{Value, json};

use resurgam_shared::export;
use resurgam_shared::protocol::ErrorKind;

use nix::sys::signal::Signal;
use resurgam::Client;

use crate::util::{Proc, Supervisor, cli_expect as run, expect_kind};

const WAIT: Duration = Duration::from_secs(20);

const CONFIG: &str = r#"
actor = [{ name = "c", kind = "counter" }, { name = "store", kind = "kv" }]

[supervisor]
durability = "log"
"#;

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn call(sup: &Supervisor, actor: &str, method: &str, args: Value) -> Value {
    sup.client()
        .call(actor, method, args)
        .unwrap_or_else(|e| panic!("{actor}.{method}: {e}\n{}", sup.log_tail(30)))
}

fn path_str(p: &Path) -> &str {
    p.to_str().expect("utf-8 temp path")
}

/// Exports `actor` of `sup` into `<sup dir>/<actor>.state`; returns the path.
fn export_to_file(sup: &Supervisor, actor: &str) -> std::path::PathBuf {
    let path = sup.dir().join(format!("{actor}.state"));
    let out = run(sup, &["export", actor, path_str(&path)], 0);
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains(&format!("exported {actor}")),
        "export line: {line:?}"
    );
    path
}

#[test]
fn state_moves_between_two_supervisors_for_counter_and_kv() {
    let a = Supervisor::start(CONFIG);
    call(&a, "c", "incr", json!(5));
    call(&a, "c", "incr", json!(7));
    call(&a, "store", "put", json!({"key": "city", "value": "Lyon"}));
    call(&a, "store", "put", json!({"key": "n", "value": [1, 2]}));

    let counter_file = export_to_file(&a, "c");
    let kv_file = export_to_file(&a, "store");
    let mode = std::fs::metadata(&counter_file)
        .expect("exported file")
        .permissions()
        .mode();
    assert_eq!(mode & 0o777, 0o600, "export file mode {mode:o}");
    let bytes = std::fs::read(&counter_file).expect("read export");
    let file = export::decode(&bytes).expect("a valid export file");
    assert_eq!(file.header.actor, "c");
    assert_eq!(file.header.kind, "counter");
    // Two calls were accepted before the export: both, and nothing else, are in it.
    assert_eq!(file.header.last_seq, 2, "{:?}", file.header);
    assert_eq!(file.state, b"12");
    // Without FILE the same file goes to stdout.
    let out = run(&a, &["export", "c"], 0);
    assert_eq!(
        export::decode(&out.stdout).expect("stdout export").state,
        b"12"
    );

    let b = Supervisor::start(CONFIG);
    call(&b, "c", "incr", json!(100));
    call(&b, "store", "put", json!({"key": "old", "value": true}));
    let out = run(&b, &["import", "c", path_str(&counter_file)], 0);
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("imported into c"),
        "{out:?}"
    );
    run(&b, &["import", "store", path_str(&kv_file)], 0);
    assert_eq!(call(&b, "c", "get", Value::Null), json!(12));
    assert_eq!(call(&b, "c", "incr", json!(1)), json!(13));
    assert_eq!(
        call(&b, "store", "get", json!({"key": "city"})),
        json!("Lyon")
    );
    assert_eq!(call(&b, "store", "get", json!({"key": "n"})), json!([1, 2]));
    // The imported state replaces the old one entirely.
    assert_eq!(call(&b, "store", "get", json!({"key": "old"})), Value::Null);
    assert_eq!(call(&b, "store", "len", Value::Null), json!(2));
}

/// An export file of a counter named `actor` holding `state`, as if written elsewhere.
fn counter_file(actor: &str, state: &[u8]) -> Vec<u8> {
    let header = export::Header {
        actor: actor.into(),
        kind: "counter".into(),
        generation: 0,
        last_seq: 0,
        bytes: 0,
    };
    export::encode(&header, state)
}

/// Sends `lines` on one connection before reading any reply; the replies, in order.
fn pipelined(sup: &Supervisor, lines: &[Value]) -> Vec<Value> {
    let mut s = UnixStream::connect(&sup.socket).expect("connect");
    s.set_read_timeout(Some(WAIT)).expect("timeout");
    let mut text = String::new();
    for l in lines {
        text.push_str(&l.to_string());
        text.push('\n');
    }
    s.write_all(text.as_bytes()).expect("send");
    let mut r = BufReader::new(s);
    (0..lines.len())
        .map(|_| {
            let mut line = String::new();
            r.read_line(&mut line).expect("reply");
            serde_json::from_str(&line).expect("JSON reply")
        })
        .collect()
}

#[test]
fn an_import_takes_its_place_in_the_call_order() {
    let sup = Supervisor::start(CONFIG);
    let file = counter_file("elsewhere", b"1000");
    let incr = |id: u64, n: i64| json!({"id": id, "op": "call", "actor": "c", "method": "incr", "args": n});
    let replies = pipelined(
        &sup,
        &[
            incr(1, 5),
            json!({"id": 2, "op": "import", "actor": "c", "file": export::base64_encode(&file)}),
            incr(3, 1),
            json!({"id": 4, "op": "export", "actor": "c"}),
        ],
    );
    assert_eq!(replies[0]["ok"], json!(5), "{replies:?}");
    assert_eq!(replies[1]["ok"]["imported"], json!("c"), "{replies:?}");
    assert_eq!(replies[1]["ok"]["seq"], json!(2), "{replies:?}");
    assert_eq!(replies[2]["ok"], json!(1001), "{replies:?}");
    let exported =
        export::base64_decode(replies[3]["ok"]["file"].as_str().expect("file")).expect("base64");
    let exported = export::decode(&exported).expect("valid export");
    assert_eq!(exported.state, b"1001");
    assert_eq!(exported.header.last_seq, 3);
    assert_eq!(replies[3]["ok"]["last_seq"], json!(3));
}

#[test]
fn another_kind_and_a_damaged_file_are_refused_and_change_nothing() {
    let sup = Supervisor::start(CONFIG);
    call(&sup, "c", "incr", json!(3));
    call(&sup, "store", "put", json!({"key": "k", "value": 1}));
    let counter_file = export_to_file(&sup, "c");

    let out = run(&sup, &["import", "store", path_str(&counter_file)], 1);
    let err = stderr(&out);
    assert!(
        err.contains("BadRequest") && err.contains("\"counter\"") && err.contains("\"kv\""),
        "wrong-kind refusal: {err:?}"
    );

    let mut bytes = std::fs::read(&counter_file).expect("read");
    let middle = bytes.len() - 6;
    bytes[middle] ^= 0x40;
    let damaged = sup.dir().join("damaged.state");
    std::fs::write(&damaged, &bytes).expect("write damaged");
    let out = run(&sup, &["import", "c", path_str(&damaged)], 1);
    let err = stderr(&out);
    assert!(
        err.contains("damaged.state") && err.contains("damaged: CRC32C"),
        "damaged-file refusal: {err:?}"
    );
    let not_one = sup.dir().join("not-a-state");
    std::fs::write(&not_one, b"{\"hello\": 1}").expect("write");
    let err = stderr(&run(&sup, &["import", "c", path_str(&not_one)], 1));
    assert!(err.contains("not a resurgam state file"), "{err:?}");

    // The supervisor checks for itself what a client sends.
    let mut client = sup.client();
    let message = expect_kind(
        client.import("c", &export::base64_encode(&bytes)),
        ErrorKind::BadRequest,
    );
    assert!(message.contains("CRC32C"), "{message}");
    let message = expect_kind(client.import("c", "not base64!"), ErrorKind::BadRequest);
    assert!(message.contains("base64"), "{message}");

    assert_eq!(call(&sup, "c", "get", Value::Null), json!(3));
    assert_eq!(call(&sup, "store", "get", json!({"key": "k"})), json!(1));
    assert_eq!(call(&sup, "store", "len", Value::Null), json!(1));
}

#[test]
fn an_import_counts_once_across_a_worker_and_a_supervisor_kill() {
    let sup = Supervisor::start(CONFIG);
    let file = counter_file("c", b"500");
    let path = sup.dir().join("c.state");
    std::fs::write(&path, file).expect("write state file");
    call(&sup, "c", "incr", json!(1));
    run(&sup, &["import", "c", path_str(&path)], 0);
    let old = sup.kill_worker("c");
    sup.wait_new_pid("c", old, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);
    assert_eq!(call(&sup, "c", "incr", json!(2)), json!(502));
    let old = sup.kill_worker("c");
    sup.wait_new_pid("c", old, WAIT);
    sup.wait_state("c", "ALIVE", WAIT);
    assert_eq!(call(&sup, "c", "get", Value::Null), json!(502));

    // An import the worker had been sent but never applied (stopped, then killed) is
    // replayed to the next worker and answered once.
    let pid = sup.actor_pid("c").expect("alive worker");
    let worker = Proc::of(pid).expect("worker process");
    assert!(worker.signal(Signal::SIGSTOP));
    let socket = sup.socket.clone();
    let bytes = std::fs::read(&path).expect("read state file");
    let pending = std::thread::spawn(move || {
        let mut client = Client::connect(&socket).expect("connect");
        client.import("c", &export::base64_encode(&bytes))
    });
    sup.wait_until("the import is queued", WAIT, || {
        sup.actor("c")["queue"].as_u64() == Some(1)
    });
    sup.kill_worker("c");
    let reply = pending
        .join()
        .expect("import thread")
        .expect("import answered");
    assert_eq!(reply["imported"], json!("c"), "{reply}");
    sup.wait_state("c", "ALIVE", WAIT);
    assert_eq!(call(&sup, "c", "get", Value::Null), json!(500));
    call(&sup, "c", "incr", json!(2));

    // Acknowledged: survives a supervisor kill -9 too (durable call log).
    run(&sup, &["import", "c", path_str(&path)], 0);
    assert_eq!(call(&sup, "c", "incr", json!(3)), json!(503));
    sup.kill_supervisor();
    sup.restart_same_dirs();
    assert_eq!(call(&sup, "c", "get", Value::Null), json!(503));
}

#[test]
fn an_import_larger_than_a_request_may_be_names_the_setting_to_raise() {
    let sup = Supervisor::start(
        r#"
actor = [{ name = "store", kind = "kv" }]

[supervisor]
max_request_bytes = 2048
"#,
    );
    for i in 0..4 {
        let value = "v".repeat(600);
        call(
            &sup,
            "store",
            "put",
            json!({"key": format!("k{i}"), "value": value}),
        );
    }
    let file = export_to_file(&sup, "store");
    let err = stderr(&run(&sup, &["import", "store", path_str(&file)], 1));
    assert!(
        err.contains("[supervisor].max_request_bytes"),
        "oversized import: {err:?}"
    );
    assert_eq!(call(&sup, "store", "len", Value::Null), json!(4));
}

#[test]
fn an_exec_actors_state_moves_through_its_programs_get_state_and_load_state() {
    let bank = crate::exec::python_actor("bank", "bank.py", "");
    let a = crate::exec::start(&bank);
    let deposit = |sup: &Supervisor, account: &str, amount: i64| {
        call(
            sup,
            "bank",
            "deposit",
            json!({"account": account, "amount": amount}),
        )
    };
    deposit(&a, "alice", 100);
    deposit(&a, "bob", 5);
    let file = export_to_file(&a, "bank");
    let header = export::decode(&std::fs::read(&file).expect("read"))
        .expect("valid export")
        .header;
    assert_eq!(header.kind, "exec");

    let b = crate::exec::start(&bank);
    deposit(&b, "carol", 1);
    run(&b, &["import", "bank", path_str(&file)], 0);
    // The worker (and its program) killed right after the import: nothing doubles.
    let old = b.kill_worker("bank");
    b.wait_new_pid("bank", old, WAIT);
    b.wait_state("bank", "ALIVE", WAIT);
    assert_eq!(deposit(&b, "alice", 1), json!(101));
    assert_eq!(call(&b, "bank", "balance", json!("bob")), json!(5));
    assert_eq!(call(&b, "bank", "balance", json!("carol")), json!(0));
}
