//! Metrics and the event stream (docs/observability.md), from outside: `resurgam
//! metrics`, the `metrics` op and `GET /metrics` checked by the official Prometheus
//! Python client's parser; `resurgam events [--follow]` and the `subscribe` op, deaths
//! and recoveries on the stream, a subscriber that does not read dropped with a notice.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::util::{CLIENT_TIMEOUT, KillOnDrop, Supervisor, cli, resurgam_cmd, skip};

/// Parses the exposition on stdin with `prometheus_client`'s parser, checks every
/// histogram (cumulative buckets, +Inf equal to _count) and prints the samples as JSON:
/// `[[name, {labels}, value], ...]`.
const VALIDATE: &str = r#"
import json, math, sys
from prometheus_client.parser import text_string_to_metric_families
out = []
for fam in text_string_to_metric_families(sys.stdin.read()):
    if fam.type == "histogram":
        series = {}
        for s in fam.samples:
            key = tuple(sorted((k, v) for k, v in s.labels.items() if k != "le"))
            series.setdefault(key, {"buckets": [], "count": None})
            if s.name.endswith("_bucket"):
                series[key]["buckets"].append((float(s.labels["le"]), s.value))
            elif s.name.endswith("_count"):
                series[key]["count"] = s.value
        for key, h in series.items():
            b = h["buckets"]
            assert b and b[-1][0] == math.inf, f"{fam.name}{key}: no +Inf bucket"
            assert all(x[1] <= y[1] for x, y in zip(b, b[1:])), f"{fam.name}{key}: not cumulative"
            assert b[-1][1] == h["count"], f"{fam.name}{key}: +Inf != _count"
    for s in fam.samples:
        assert fam.type not in ("counter", "histogram") or s.value >= 0, s
        out.append([s.name, s.labels, s.value])
print(json.dumps(out))
"#;

/// A Python interpreter that has `prometheus_client` (`.ci/run` installs Debian's
/// python3-prometheus-client), else None after reporting the skip.
fn python_with_prometheus_client() -> Option<&'static str> {
    for python in ["python3", "/usr/bin/python3"] {
        let ok = Command::new(python)
            .args(["-c", "import prometheus_client.parser"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if ok {
            return Some(python);
        }
    }
    skip("no Python with prometheus_client (Debian: python3-prometheus-client)");
    None
}

/// The samples of `text`, as the Prometheus client's parser reads them.
fn parse_metrics(python: &str, text: &str) -> Vec<(String, Value, f64)> {
    let mut child = Command::new(python)
        .args(["-c", VALIDATE])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python");
    let mut stdin = child.stdin.take().expect("stdin");
    stdin.write_all(text.as_bytes()).expect("write metrics");
    drop(stdin);
    let out = child.wait_with_output().expect("python output");
    assert!(
        out.status.success(),
        "the Prometheus parser refused the metrics: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let samples: Vec<(String, Value, f64)> =
        serde_json::from_slice(&out.stdout).expect("samples as JSON");
    samples
}

/// The value of the sample `name` whose labels include `labels`.
fn sample(samples: &[(String, Value, f64)], name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    samples
        .iter()
        .find(|(n, l, _)| n == name && labels.iter().all(|(k, v)| l[*k] == *v))
        .map(|(_, _, v)| *v)
}

/// The metrics endpoint's address, from the supervisor's log.
fn metrics_addr(sup: &Supervisor) -> String {
    let log = sup.log();
    let line = log
        .lines()
        .find(|l| l.contains("metrics endpoint listening"))
        .unwrap_or_else(|| panic!("no metrics endpoint in the log:\n{log}"));
    let addr = line.split("addr=").nth(1).expect("addr= field");
    addr.split_whitespace().next().unwrap_or(addr).to_string()
}

/// One HTTP exchange: sends `request` whole, returns what came back until the close.
fn http(addr: &str, request: &[u8]) -> String {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.write_all(request).expect("send the request");
    let mut answer = Vec::new();
    s.read_to_end(&mut answer).expect("read the answer");
    String::from_utf8(answer).expect("UTF-8 answer")
}

/// The body of a `200 OK` answer.
fn body_of(answer: &str) -> &str {
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("Content-Type: text/plain; version=0.0.4"),
        "{answer}"
    );
    answer.split_once("\r\n\r\n").expect("a head").1
}

#[test]
fn metrics_from_the_cli_the_op_and_http_parse_and_count_calls_restarts_and_checkpoints() {
    let Some(python) = python_with_prometheus_client() else {
        return;
    };
    let sup = Supervisor::start(
        r#"
[supervisor]
metrics_listen = "127.0.0.1:0"

[[actor]]
name = "counter"
kind = "counter"
durability = "fsync"
max_call_retries = 1
"#,
    );
    let mut c = sup.client();
    for _ in 0..5 {
        c.call("counter", "incr", json!(1)).expect("incr");
    }
    let refused = c.call("counter", "nope", Value::Null).unwrap_err();
    assert!(refused.to_string().contains("UnknownMethod"), "{refused}");
    c.checkpoint("counter").expect("checkpoint");
    let old = sup.kill_worker("counter");
    sup.wait_new_pid("counter", old, Duration::from_secs(20));
    sup.wait_state("counter", "ALIVE", Duration::from_secs(20));
    assert_eq!(c.call("counter", "get", Value::Null).unwrap(), json!(5));

    let socket = sup.socket.to_str().unwrap().to_string();
    let out = cli(&["metrics", "--socket", &socket], &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8(out.stdout).unwrap();
    let samples = parse_metrics(python, &text);
    let actor = ("actor", "counter");
    let calls = |outcome| {
        sample(
            &samples,
            "resurgam_calls_total",
            &[actor, ("outcome", outcome)],
        )
    };
    assert_eq!(calls("ok"), Some(6.0), "{text}");
    assert_eq!(calls("UnknownMethod"), Some(1.0), "{text}");
    let latency = sample(&samples, "resurgam_call_duration_seconds_count", &[actor]);
    assert_eq!(latency, Some(7.0), "every answered call is timed: {text}");
    let restarts = sample(
        &samples,
        "resurgam_restarts_total",
        &[actor, ("cause", "signal")],
    );
    assert_eq!(restarts, Some(1.0), "{text}");
    let recoveries = sample(
        &samples,
        "resurgam_recovery_duration_seconds_count",
        &[actor],
    );
    assert_eq!(recoveries, Some(1.0), "{text}");
    assert!(sample(&samples, "resurgam_checkpoints_total", &[actor]).unwrap_or(0.0) >= 1.0);
    assert!(sample(&samples, "resurgam_calllog_bytes", &[actor]).unwrap_or(0.0) > 0.0);
    let fsyncs = sample(
        &samples,
        "resurgam_calllog_fsync_duration_seconds_count",
        &[],
    );
    assert!(fsyncs.unwrap_or(0.0) >= 1.0, "durability fsync: {text}");
    let alive = sample(
        &samples,
        "resurgam_actor_state",
        &[actor, ("state", "ALIVE")],
    );
    assert_eq!(alive, Some(1.0));
    assert_eq!(
        sample(&samples, "resurgam_queue_depth", &[actor]),
        Some(0.0)
    );
    assert!(sample(&samples, "process_resident_memory_bytes", &[]).unwrap_or(0.0) > 1e6);
    assert!(sample(&samples, "resurgam_uptime_seconds", &[]).unwrap_or(-1.0) >= 0.0);
    assert!(sample(&samples, "resurgam_connections", &[]).unwrap_or(0.0) >= 2.0);

    // The op answers the same text as a JSON string.
    let op = c.metrics().expect("metrics op");
    parse_metrics(python, &op);

    // HTTP: GET /metrics, and nothing else.
    let addr = metrics_addr(&sup);
    let answer = http(&addr, b"GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n");
    let samples = parse_metrics(python, body_of(&answer));
    assert_eq!(
        sample(
            &samples,
            "resurgam_calls_total",
            &[actor, ("outcome", "ok")]
        ),
        Some(6.0)
    );
    let refused = http(&addr, b"GET / HTTP/1.1\r\n\r\n");
    assert!(refused.starts_with("HTTP/1.1 404 "), "{refused}");
    let refused = http(
        &addr,
        b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n",
    );
    assert!(refused.starts_with("HTTP/1.1 405 "), "{refused}");
    let mut huge = b"GET /metrics HTTP/1.1\r\n".to_vec();
    huge.extend(std::iter::repeat_n(b'x', 64 * 1024));
    let mut s = TcpStream::connect(&addr).unwrap();
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    // The endpoint answers (and closes) once the head passes its limit: the rest of the
    // request may not be taken.
    let _ = s.write_all(&huge);
    let mut answer = String::new();
    let _ = s.read_to_string(&mut answer);
    assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
    // Clients that connect and say nothing hold no thread: a scrape still gets through.
    let silent: Vec<TcpStream> = (0..4).map(|_| TcpStream::connect(&addr).unwrap()).collect();
    let answer = http(&addr, b"GET /metrics HTTP/1.0\r\n\r\n");
    body_of(&answer);
    drop(silent);
}

#[test]
fn events_list_the_history_and_follow_deaths_and_recoveries_in_order() {
    let sup = Supervisor::start("[[actor]]\nname = \"counter\"\nkind = \"counter\"\n");
    let socket = sup.socket.to_str().unwrap().to_string();
    let out = cli(&["events", "--socket", &socket], &[]);
    assert!(out.status.success(), "{out:?}");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("counter state: STARTING -> ALIVE"),
        "events without --follow print the history and exit:\n{text}"
    );

    let mut follow = Follower::start(&socket);
    let old = sup.kill_worker("counter");
    let death = follow.until("death", &sup);
    assert_eq!(death["actor"], "counter");
    assert_eq!(death["pid"], json!(old));
    assert_eq!(death["cause"], "signal");
    assert!(
        death["reason"].as_str().unwrap().contains("SIGKILL"),
        "{death}"
    );
    let recovered = follow.until("recovered", &sup);
    assert!(recovered["recovery_ms"].as_f64().is_some(), "{recovered}");
    assert!(recovered["seq"].as_u64() > death["seq"].as_u64());
    assert!(recovered["time"].as_str().unwrap().ends_with('Z'));

    // A reload is an event too.
    let out = cli(&["reload", "--socket", &socket], &[]);
    assert!(out.status.success(), "{out:?}");
    let reload = follow.until("reload", &sup);
    assert_eq!(reload["ok"], true, "{reload}");
}

/// `resurgam events --follow --json` in the background, killed on drop.
struct Follower {
    _child: KillOnDrop,
    lines: BufReader<std::process::ChildStdout>,
    last_seq: u64,
}

impl Follower {
    fn start(socket: &str) -> Follower {
        let mut child = KillOnDrop(
            resurgam_cmd(&["events", "--follow", "--json", "--socket", socket])
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn events --follow"),
        );
        let lines = BufReader::new(child.stdout.take().expect("stdout"));
        Follower {
            _child: child,
            lines,
            last_seq: 0,
        }
    }

    /// Reads events until one of kind `event` (each numbered after the one before).
    fn until(&mut self, event: &str, sup: &Supervisor) -> Value {
        loop {
            let mut line = String::new();
            let n = self.lines.read_line(&mut line).expect("read an event");
            assert!(
                n > 0,
                "events --follow ended before a {event} event\n{}",
                sup.log_tail(40)
            );
            let v: Value = serde_json::from_str(&line).expect("an event is JSON");
            let seq = v["seq"].as_u64().expect("seq");
            assert!(seq > self.last_seq, "{seq} after {}", self.last_seq);
            self.last_seq = seq;
            if v["event"] == event {
                return v;
            }
        }
    }
}

#[test]
fn a_subscriber_that_does_not_read_is_dropped_with_a_notice_and_calls_go_on() {
    // A checkpoint after every call: one event per call.
    let sup = Supervisor::start(
        "[[actor]]\nname = \"counter\"\nkind = \"counter\"\ncheckpoint_every = 1\n",
    );
    let mut sub = UnixStream::connect(&sup.socket).expect("connect");
    sub.write_all(b"{\"id\":1,\"op\":\"subscribe\"}\n").unwrap();
    let mut c = sup.client();
    // Far more events than the subscriber's buffer (1 MiB) and its socket hold: calls
    // one at a time, so each is a batch of its own with its own checkpoint.
    let mut answered = 0;
    let deadline = Instant::now() + Duration::from_secs(300);
    while !dropped_in_metrics(&mut c) {
        assert!(
            Instant::now() < deadline,
            "the subscriber was never dropped ({answered} calls)\n{}",
            sup.log_tail(40)
        );
        for _ in 0..1000 {
            c.call("counter", "incr", json!(1)).expect("incr");
            answered += 1;
        }
    }
    let value = c.call("counter", "get", Value::Null).unwrap();
    assert_eq!(value, json!(answered), "every call ran once");

    // The subscriber finds its events, then the notice, then the end of the stream.
    sub.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    let lines: Vec<Value> = BufReader::new(sub)
        .lines()
        .map(|l| serde_json::from_str(&l.expect("read")).expect("JSON line"))
        .collect();
    assert_eq!(lines[0]["ok"]["subscribed"], true, "{}", lines[0]);
    let last = lines.last().unwrap();
    assert_eq!(last["event"], "dropped", "{last}");
    assert!(
        last["reason"].as_str().unwrap().contains("unread"),
        "{last}"
    );
    let seqs: Vec<u64> = lines[1..lines.len() - 1]
        .iter()
        .map(|l| l["seq"].as_u64().expect("seq"))
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[1] == w[0] + 1),
        "no gap, no repeat"
    );
    assert_eq!(last["missed_from_seq"].as_u64(), seqs.last().map(|s| s + 1));
}

/// True once the metrics count a dropped subscriber.
fn dropped_in_metrics(c: &mut resurgam::Client) -> bool {
    let text = c.metrics().expect("metrics");
    text.lines()
        .any(|l| l == "resurgam_event_subscribers_dropped_total 1")
}
