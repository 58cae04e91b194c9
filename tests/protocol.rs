//! The control protocol over a raw Unix socket (bad requests get an error reply to that
//! client only, the connection keeps working, pipelining, id echo) and the CLI client.

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use serde_json::{Value, json};

use crate::util::{Supervisor, cli};

const CONFIG: &str = r#"
[supervisor]
max_request_bytes = 4096

[[actor]]
name = "c"
kind = "counter"

[[actor]]
name = "c2"
kind = "counter"

[[actor]]
name = "kv"
kind = "kv"
"#;

/// A raw NDJSON connection.
struct Raw {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Raw {
    fn connect(sup: &Supervisor) -> Raw {
        let s = UnixStream::connect(&sup.socket).expect("connect");
        s.set_read_timeout(Some(Duration::from_secs(20)))
            .expect("timeout");
        Raw {
            writer: s.try_clone().expect("clone"),
            reader: BufReader::new(s),
        }
    }

    fn send_bytes(&mut self, line: &[u8]) {
        self.writer.write_all(line).expect("write");
        self.writer.write_all(b"\n").expect("write");
    }

    fn recv(&mut self) -> Value {
        let mut line = String::new();
        let n = self
            .reader
            .read_line(&mut line)
            .expect("read a reply line (timed out?)");
        assert!(n > 0, "the supervisor closed the connection");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("reply is not JSON ({e}): {line:?}"))
    }

    /// Sends one line and returns the one reply.
    fn roundtrip(&mut self, line: &[u8]) -> Value {
        self.send_bytes(line);
        self.recv()
    }
}

#[track_caller]
fn assert_err(reply: &Value, id: &Value, kind: &str) {
    assert_eq!(&reply["id"], id, "id not echoed: {reply}");
    assert_eq!(reply["err"]["kind"], kind, "wrong reply: {reply}");
    assert!(
        reply["err"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "error without a message: {reply}"
    );
    assert!(reply.get("ok").is_none(), "both ok and err: {reply}");
}

#[test]
fn bad_requests_get_error_replies_and_the_connection_keeps_working() {
    let sup = Supervisor::start(CONFIG);

    // Meanwhile another connection calls another actor and must not notice anything.
    let bystander = {
        let mut c = sup.client();
        std::thread::spawn(move || {
            for i in 1..=300i64 {
                assert_eq!(
                    c.call("c2", "incr", json!(1)).expect("bystander call"),
                    json!(i)
                );
            }
        })
    };

    let mut raw = Raw::connect(&sup);
    let cases: Vec<(Vec<u8>, Value, &str)> = vec![
        (b"{not json".to_vec(), Value::Null, "BadRequest"),
        (b"[1,2,3]".to_vec(), Value::Null, "BadRequest"),
        (vec![0xff, 0xfe, b'{', b'}'], Value::Null, "BadRequest"),
        (br#"{"id":1}"#.to_vec(), json!(1), "BadRequest"),
        (br#"{"id":2,"op":"dance"}"#.to_vec(), json!(2), "BadRequest"),
        (
            br#"{"id":3,"op":"call","actor":"c"}"#.to_vec(),
            json!(3),
            "BadRequest",
        ),
        (
            br#"{"id":"four","op":"call","actor":"nobody","method":"get"}"#.to_vec(),
            json!("four"),
            "UnknownActor",
        ),
        (
            br#"{"id":{"x":[5]},"op":"call","actor":"c","method":"fly"}"#.to_vec(),
            json!({"x":[5]}),
            "UnknownMethod",
        ),
        (
            br#"{"id":6,"op":"call","actor":"c","method":"incr","args":"x"}"#.to_vec(),
            json!(6),
            "BadRequest",
        ),
        (
            br#"{"id":7,"op":"call","actor":"c","method":"incr","args":1.5}"#.to_vec(),
            json!(7),
            "BadRequest",
        ),
        (
            br#"{"id":8,"op":"call","actor":"kv","method":"put","args":{"value":1}}"#.to_vec(),
            json!(8),
            "BadRequest",
        ),
        (
            br#"{"id":9,"op":"call","actor":"kv","method":"put","args":{"key":"k"}}"#.to_vec(),
            json!(9),
            "BadRequest",
        ),
        (
            br#"{"id":10,"op":"call","actor":"kv","method":"get","args":7}"#.to_vec(),
            json!(10),
            "BadRequest",
        ),
        (
            br#"{"id":11,"op":"checkpoint","actor":"ghost"}"#.to_vec(),
            json!(11),
            "UnknownActor",
        ),
        (
            br#"{"id":12,"op":"restart"}"#.to_vec(),
            json!(12),
            "BadRequest",
        ),
        // A field the op does not take: refused, and the supervisor is not stopped.
        (
            br#"{"id":13,"op":"stop","actor":"c"}"#.to_vec(),
            json!(13),
            "BadRequest",
        ),
        (
            br#"{"id":14,"op":"call","actor":"c","method":"incr","args":1,"retries":3}"#.to_vec(),
            json!(14),
            "BadRequest",
        ),
    ];
    for (i, (line, id, kind)) in cases.iter().enumerate() {
        let reply = raw.roundtrip(line);
        assert_err(&reply, id, kind);
        if *id == json!(13) {
            assert_eq!(
                reply["err"]["message"], "field `actor` is not taken by op `stop`",
                "{reply}"
            );
        }
        // The same connection still works after every bad request.
        let ok = raw.roundtrip(
            format!(r#"{{"id":"ok{i}","op":"call","actor":"c","method":"incr","args":1}}"#)
                .as_bytes(),
        );
        assert_eq!(
            ok,
            json!({"id": format!("ok{i}"), "ok": i + 1}),
            "after {reply}"
        );
    }

    // An oversized request (> max_request_bytes = 4096): an error reply, nothing applied,
    // and the connection stays usable.
    let big = format!(
        r#"{{"id":100,"op":"call","actor":"kv","method":"put","args":{{"key":"big","value":"{}"}}}}"#,
        "x".repeat(10_000)
    );
    let reply = raw.roundtrip(big.as_bytes());
    assert_eq!(reply["err"]["kind"], "BadRequest", "reply: {reply}");
    assert!(
        reply["id"] == json!(100) || reply["id"].is_null(),
        "oversized request answered with id {}",
        reply["id"]
    );
    let reply = raw
        .roundtrip(br#"{"id":101,"op":"call","actor":"kv","method":"get","args":{"key":"big"}}"#);
    assert_eq!(
        reply,
        json!({"id":101, "ok": null}),
        "the oversized put was applied"
    );
    // A request just under the limit is accepted.
    let fits = format!(
        r#"{{"id":102,"op":"call","actor":"kv","method":"put","args":{{"key":"fits","value":"{}"}}}}"#,
        "y".repeat(3900)
    );
    assert!(fits.len() < 4096);
    assert_eq!(
        raw.roundtrip(fits.as_bytes()),
        json!({"id":102, "ok": null})
    );
    // Blank lines are ignored, not answered.
    raw.send_bytes(b"");
    let reply = raw.roundtrip(br#"{"id":103,"op":"call","actor":"kv","method":"len"}"#);
    assert_eq!(reply, json!({"id":103, "ok": 1}));

    bystander.join().expect("bystander thread");
    // The supervisor is still fine and the counters hold exactly what was applied.
    let mut c = sup.client();
    assert_eq!(c.call("c", "get", Value::Null).unwrap(), json!(cases.len()));
    assert_eq!(c.call("c2", "get", Value::Null).unwrap(), json!(300));
    assert_eq!(sup.status()["supervisor"]["state"], "running");
}

#[test]
fn pipelined_requests_are_all_answered_in_acceptance_order() {
    let sup = Supervisor::start(CONFIG);
    let mut raw = Raw::connect(&sup);
    // 500 requests written in one go, before reading anything: calls to two actors,
    // status, and a few bad ones in between.
    let mut expected: HashMap<Value, &str> = HashMap::new();
    let mut buf = Vec::new();
    for i in 0..500u64 {
        let id = json!(format!("r{i}"));
        let (line, what) = match i % 10 {
            0 => (json!({"id": id, "op": "status"}), "status"),
            1 => (
                json!({"id": id, "op": "call", "actor": "kv", "method": "put",
                       "args": {"key": format!("k{i}"), "value": i}}),
                "put",
            ),
            2 => (
                json!({"id": id, "op": "call", "actor": "nope", "method": "get"}),
                "unknown",
            ),
            _ => (
                json!({"id": id, "op": "call", "actor": "c", "method": "incr", "args": 1}),
                "incr",
            ),
        };
        serde_json::to_writer(&mut buf, &line).unwrap();
        buf.push(b'\n');
        expected.insert(id, what);
    }
    raw.writer.write_all(&buf).expect("write pipeline");
    let mut seen = HashSet::new();
    let mut incr_values: Vec<(u64, i64)> = Vec::new();
    for _ in 0..expected.len() {
        let reply = raw.recv();
        let id = reply["id"].clone();
        let what = *expected
            .get(&id)
            .unwrap_or_else(|| panic!("reply with unknown id: {reply}"));
        assert!(seen.insert(id.clone()), "two replies for {id}");
        match what {
            "status" => assert!(reply["ok"]["actors"].is_array(), "{reply}"),
            "put" => assert_eq!(reply["ok"], Value::Null, "{reply}"),
            "unknown" => assert_eq!(reply["err"]["kind"], "UnknownActor", "{reply}"),
            _ => {
                let n: u64 = id.as_str().unwrap()[1..].parse().unwrap();
                let v = reply["ok"]
                    .as_i64()
                    .unwrap_or_else(|| panic!("incr failed: {reply}"));
                incr_values.push((n, v));
            }
        }
    }
    // G8: calls from one connection are applied in the order they were sent.
    incr_values.sort();
    let values: Vec<i64> = incr_values.iter().map(|&(_, v)| v).collect();
    let want: Vec<i64> = (1..=values.len() as i64).collect();
    assert_eq!(values, want, "incr replies out of sending order");
    let mut c = sup.client();
    assert_eq!(c.call("kv", "len", Value::Null).unwrap(), json!(50));
    assert_eq!(
        c.call("kv", "get", json!({"key": "k491"})).unwrap(),
        json!(491)
    );

    // The library's pipelining helper agrees.
    let calls: Vec<(&str, &str, Value)> = (0..100)
        .map(|_| ("c", "incr", json!(2)))
        .chain([("c", "get", Value::Null)])
        .collect();
    let results = c.call_pipelined(&calls).expect("pipelined");
    let base = values.len() as i64;
    for (i, r) in results[..100].iter().enumerate() {
        assert_eq!(r.as_ref().unwrap(), &json!(base + 2 * (i as i64 + 1)));
    }
    assert_eq!(results[100].as_ref().unwrap(), &json!(base + 200));
}

#[test]
fn cli_subcommands_and_socket_discovery() {
    let sup = Supervisor::start(CONFIG);
    let socket = sup.socket.to_str().unwrap().to_string();
    let config = sup.config_path.to_str().unwrap().to_string();
    let stdout = |o: &std::process::Output| String::from_utf8_lossy(&o.stdout).trim().to_string();
    let stderr = |o: &std::process::Output| String::from_utf8_lossy(&o.stderr).to_string();

    // --socket
    let out = cli(&["call", "c", "incr", "5", "--socket", &socket], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "5");
    // $RESURGAM_SOCKET
    let out = cli(&["call", "c", "incr", "2"], &[("RESURGAM_SOCKET", &socket)]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "7");
    // --config
    let out = cli(
        &[
            "call",
            "kv",
            "put",
            r#"{"key":"a","value":{"deep":[1,2]}}"#,
            "--config",
            &config,
        ],
        &[],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "null");
    let out = cli(
        &["call", "kv", "get", r#"{"key":"a"}"#, "--config", &config],
        &[],
    );
    assert_eq!(
        serde_json::from_str::<Value>(&stdout(&out)).unwrap(),
        json!({"deep":[1,2]})
    );
    // --socket wins over $RESURGAM_SOCKET.
    let out = cli(
        &["call", "c", "get", "--socket", &socket],
        &[("RESURGAM_SOCKET", "/nonexistent/resurgam.sock")],
    );
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    assert_eq!(stdout(&out), "7");

    // status --json parses and has every actor.
    let out = cli(&["status", "--json", "--socket", &socket], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let st: Value = serde_json::from_str(&stdout(&out)).expect("status --json is JSON");
    let names: Vec<&str> = st["actors"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["c", "c2", "kv"]);
    assert_eq!(st["actors"][0]["served"], 3);
    assert_eq!(st["supervisor"]["pid"], sup.pid());
    // status (table) mentions every actor.
    let out = cli(&["status"], &[("RESURGAM_SOCKET", &socket)]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let table = stdout(&out);
    for name in ["c2", "kv", "ALIVE"] {
        assert!(table.contains(name), "status table lacks {name}: {table}");
    }

    // checkpoint answers with the synced generation and seq (as JSON with --json).
    let out = cli(&["checkpoint", "c", "--json", "--socket", &socket], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let ck: Value = serde_json::from_str(&stdout(&out)).unwrap();
    assert!(ck["generation"].as_u64().unwrap() >= 1, "{ck}");
    assert_eq!(ck["last_seq"], 3, "{ck}");

    // Errors: exit 1 and `resurgam: Kind: message` on stderr.
    let out = cli(&["call", "ghost", "get", "--socket", &socket], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).starts_with("resurgam: UnknownActor:"),
        "stderr: {}",
        stderr(&out)
    );
    let out = cli(&["call", "c", "incr", r#""x""#, "--socket", &socket], &[]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        stderr(&out).contains("BadRequest"),
        "stderr: {}",
        stderr(&out)
    );
    // Arguments that are not JSON are a usage error.
    let out = cli(&["call", "c", "incr", "{oops", "--socket", &socket], &[]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", stderr(&out));
    // No supervisor at that socket: exit 3 (unreachable) with a message, no hang.
    let missing = sup.dir().join("missing.sock");
    let out = cli(&["status", "--socket", missing.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(3));
    assert!(
        stderr(&out).starts_with("resurgam:"),
        "stderr: {}",
        stderr(&out)
    );

    // restart via the CLI changes the worker and keeps the state.
    let old = sup.actor_pid("c").unwrap();
    let out = cli(&["restart", "c", "--socket", &socket], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    sup.wait_new_pid("c", old, Duration::from_secs(20));
    let out = cli(&["call", "c", "get", "--socket", &socket], &[]);
    assert_eq!(stdout(&out), "7");

    // stop via the CLI: exit 0, and the supervisor exits 0.
    let out = cli(&["stop", "--config", &config], &[]);
    assert!(out.status.success(), "stderr: {}", stderr(&out));
    let status = sup.wait_exit(Duration::from_secs(20));
    assert_eq!(status.code(), Some(0), "supervisor exit after `stop`");
}
