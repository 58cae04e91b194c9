//! The human-readable output of the client subcommands (`--json` prints the replies
//! themselves instead).

use std::fmt::Write as _;

use serde_json::{Map, Value};

/// An uptime the way an operator reads it: `850ms`, `42s`, `4m12s`, `2h03m`, `3d07h`.
pub fn format_uptime(ms: u64) -> String {
    let s = ms / 1000;
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        3600..86_400 => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
        _ => format!("{}d{:02}h", s / 86_400, s % 86_400 / 3600),
    }
}

/// A JSON value as a table cell or a detail: strings bare, null as `-`, objects as
/// `key value, …` (their null members left out), arrays comma-separated.
pub fn cell(v: &Value) -> String {
    match v {
        Value::Null => "-".to_string(),
        Value::String(s) => s.clone(),
        Value::Array(items) if items.is_empty() => "-".to_string(),
        Value::Array(items) => items.iter().map(cell).collect::<Vec<_>>().join(", "),
        Value::Object(m) => {
            let parts: Vec<String> = m
                .iter()
                .filter(|(_, v)| !v.is_null())
                .map(|(k, v)| format!("{} {}", k.replace('_', " "), cell(v)))
                .collect();
            if parts.is_empty() {
                "-".to_string()
            } else {
                parts.join(", ")
            }
        }
        other => other.to_string(),
    }
}

/// Left-aligned columns, each as wide as its widest cell, two spaces apart.
fn table(rows: &[Vec<String>]) -> String {
    let mut widths: Vec<usize> = Vec::new();
    for row in rows {
        for (i, c) in row.iter().enumerate() {
            let w = c.chars().count();
            match widths.get_mut(i) {
                Some(max) => *max = (*max).max(w),
                None => widths.push(w),
            }
        }
    }
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (i, c) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(c);
            } else {
                let _ = write!(line, "{c:<w$}  ", w = widths[i]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

/// The first line of `status`: the supervisor's pid, state, uptime and version.
fn supervisor_line(sup: &Value) -> String {
    let uptime = sup["uptime_ms"]
        .as_u64()
        .map_or_else(|| "?".to_string(), format_uptime);
    let mut line = format!(
        "supervisor pid {} {}, up {uptime}",
        cell(&sup["pid"]),
        sup["state"].as_str().unwrap_or("?"),
    );
    if let Some(v) = sup["version"].as_str() {
        let _ = write!(line, " (version {v})");
    }
    line.push('\n');
    line
}

/// The `status` table: one row per actor; a DEAD actor's reason on a line below it.
pub fn status_table(v: &Value) -> String {
    let mut out = supervisor_line(&v["supervisor"]);
    let header = [
        "ACTOR",
        "KIND",
        "STATE",
        "PID",
        "RESTARTS",
        "GEN",
        "LAST_SEQ",
        "QUEUE",
        "SERVED",
        "CALLS/S",
        "LAST_EXIT",
    ];
    let mut rows = vec![header.iter().map(|h| h.to_string()).collect::<Vec<_>>()];
    let mut notes: Vec<(usize, String)> = Vec::new();
    let no_actors = Vec::new();
    for a in v["actors"].as_array().unwrap_or(&no_actors) {
        rows.push(vec![
            cell(&a["name"]),
            cell(&a["kind"]),
            cell(&a["state"]),
            cell(&a["pid"]),
            cell(&a["restarts"]),
            cell(&a["checkpoint"]["generation"]),
            cell(&a["checkpoint"]["last_seq"]),
            cell(&a["queue"]),
            cell(&a["served"]),
            cell(&a["calls_per_s"]),
            cell(&a["last_exit"]),
        ]);
        if let Some(reason) = a["dead_reason"].as_str() {
            notes.push((rows.len() - 1, format!("  DEAD: {reason}")));
        }
        if let Some(progress) = replay_progress(&a["replay"]) {
            notes.push((rows.len() - 1, format!("  {progress}")));
        }
    }
    let lines = table(&rows);
    for (i, line) in lines.lines().enumerate() {
        out.push_str(line);
        out.push('\n');
        for (_, note) in notes.iter().filter(|(row, _)| *row == i) {
            out.push_str(note);
            out.push('\n');
        }
    }
    out
}

/// A size in bytes the way `ls -h` shows it: `812 B`, `4.0 KiB`, `1.5 MiB`, `2.0 GiB`.
pub fn format_bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if n < 1024 {
        return format!("{n} B");
    }
    let mut v = n as f64 / 1024.0;
    let mut unit = UNITS[0];
    for u in &UNITS[1..] {
        if v < 1024.0 {
            break;
        }
        v /= 1024.0;
        unit = u;
    }
    format!("{v:.1} {unit}")
}

/// `status ACTOR`'s line for the members that read better formatted: exits with how
/// long ago, file sizes, the replay's progress, an exec actor's methods.
fn detail(key: &str, v: &Value) -> String {
    let ago = |e: &Value| e["ago_ms"].as_u64().map(format_uptime);
    let bytes = |v: &Value| v.as_u64().map_or_else(|| "-".to_string(), format_bytes);
    match key {
        "replay" => replay_progress(v).unwrap_or_else(|| cell(v)),
        "last_exits" => match v.as_array() {
            Some(exits) if !exits.is_empty() => exits
                .iter()
                .map(|e| match ago(e) {
                    Some(ago) => format!("{} ({ago} ago)", cell(&e["exit"])),
                    None => cell(&e["exit"]),
                })
                .collect::<Vec<_>>()
                .join("; "),
            _ => "-".to_string(),
        },
        "files" if v.is_object() => format!(
            "checkpoint {} on disk (mmap file {}), call log {}",
            bytes(&v["disk_copy_bytes"]),
            bytes(&v["mmap_bytes"]),
            bytes(&v["log_bytes"])
        ),
        "methods" if v.is_null() => "decided by its program".to_string(),
        _ => cell(v),
    }
}

/// `replaying DONE/TOTAL` for a replay in progress (the `replay` member of an actor's
/// status), else None.
fn replay_progress(replay: &Value) -> Option<String> {
    let (done, total) = (replay["done"].as_u64()?, replay["total"].as_u64()?);
    Some(format!("replaying {done}/{total}"))
}

/// The members of an actor's status shown first by `status ACTOR`, in this order; the
/// others follow alphabetically.
const ACTOR_DETAILS_FIRST: [&str; 17] = [
    "kind",
    "state",
    "replay",
    "dead_reason",
    "pid",
    "program_pid",
    "restarts",
    "last_exits",
    "queue",
    "served",
    "calls_per_s",
    "checkpoint",
    "disk_copy",
    "files",
    "durability",
    "methods",
    "last_exit",
];

/// `status ACTOR`: every member of the actor's status, one per line.
pub fn actor_details(a: &Map<String, Value>) -> String {
    let name = a.get("name").map_or_else(|| "?".to_string(), cell);
    let mut rows = Vec::new();
    let first = ACTOR_DETAILS_FIRST
        .iter()
        .filter_map(|&k| a.get_key_value(k));
    let rest = a
        .iter()
        .filter(|(k, _)| k.as_str() != "name" && !ACTOR_DETAILS_FIRST.contains(&k.as_str()));
    for (k, v) in first.chain(rest) {
        rows.push(vec![format!("  {}", k.replace('_', " ")), detail(k, v)]);
    }
    format!("{name}\n{}", table(&rows))
}

/// The human line of a `checkpoint` reply.
pub fn checkpoint_line(actor: &str, reply: &Value) -> String {
    format!(
        "checkpointed {actor}: generation {}, last_seq {} (synced to disk)",
        cell(&reply["generation"]),
        cell(&reply["last_seq"])
    )
}

/// The human line of a `reload` reply: what changed, or that nothing did.
pub fn reload_line(reply: &Value) -> String {
    let parts: Vec<String> = [
        ("added", "added"),
        ("removed", "removed"),
        ("changed", "changed"),
        ("restarted", "restarted"),
        ("needs_restart", "needs a supervisor restart to apply"),
    ]
    .iter()
    .filter(|(k, _)| reply[*k].as_array().is_some_and(|a| !a.is_empty()))
    .map(|(k, label)| format!("{label}: {}", cell(&reply[*k])))
    .collect();
    if parts.is_empty() {
        "reloaded: nothing changed".to_string()
    } else {
        format!("reloaded: {}", parts.join("; "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn uptimes_read_like_an_operator_writes_them() {
        assert_eq!(format_uptime(850), "850ms");
        assert_eq!(format_uptime(42_000), "42s");
        assert_eq!(format_uptime(252_000), "4m12s");
        assert_eq!(format_uptime(7_380_000), "2h03m");
        assert_eq!(format_uptime(61_316), "1m01s");
        assert_eq!(format_uptime(3 * 86_400_000 + 7 * 3_600_000), "3d07h");
    }

    #[test]
    fn sizes_read_like_ls_h() {
        assert_eq!(format_bytes(812), "812 B");
        assert_eq!(format_bytes(1024), "1.0 KiB");
        assert_eq!(format_bytes(1536 * 1024), "1.5 MiB");
        assert_eq!(format_bytes(3 << 30), "3.0 GiB");
        assert_eq!(format_bytes(u64::MAX), "16777216.0 TiB");
    }

    fn sample() -> Value {
        json!({
            "supervisor": {"pid": 1, "state": "running", "uptime_ms": 7_380_000, "version": "0.1.0"},
            "actors": [
                {"name": "a", "kind": "counter", "state": "ALIVE", "pid": 7, "restarts": 2,
                 "checkpoint": {"generation": 3, "last_seq": 9}, "queue": 0, "served": 4,
                 "last_exit": "killed by SIGKILL", "dead_reason": null,
                 "replay": {"done": 120000, "total": 300001}, "calls_per_s": 12.5,
                 "last_exits": [{"exit": "killed by SIGKILL", "ago_ms": 252_000},
                                {"exit": "exit status 1", "ago_ms": 7_380_000}],
                 "files": {"mmap_bytes": 2_097_152, "disk_copy_bytes": 812, "log_bytes": 5120},
                 "methods": ["incr", "get"]},
                {"name": "b", "kind": "kv", "state": "DEAD", "pid": null, "restarts": 5,
                 "checkpoint": {"generation": 0, "last_seq": 0}, "queue": 0, "served": 0,
                 "last_exit": "exit status 1", "dead_reason": "5 restarts within 60s"}
            ]
        })
    }

    #[test]
    fn status_table_lists_every_actor_and_why_one_is_dead() {
        let t = status_table(&sample());
        assert!(
            t.starts_with("supervisor pid 1 running, up 2h03m (version 0.1.0)\n"),
            "{t}"
        );
        assert!(t.contains("killed by SIGKILL"), "{t}");
        let lines: Vec<&str> = t.lines().collect();
        let b = lines.iter().position(|l| l.starts_with("b ")).unwrap();
        assert!(
            lines[b].contains("DEAD") && lines[b].contains("exit status 1"),
            "{t}"
        );
        assert_eq!(lines[b + 1], "  DEAD: 5 restarts within 60s", "{t}");
        let a = lines.iter().position(|l| l.starts_with("a ")).unwrap();
        assert_eq!(lines[a + 1], "  replaying 120000/300001", "{t}");
        // The columns line up: every row's STATE starts where the header's does.
        let col = lines[1].find("STATE").unwrap();
        assert_eq!(lines[2].find("ALIVE"), Some(col), "{t}");
        assert_eq!(lines[b].find("DEAD"), Some(col), "{t}");
    }

    #[test]
    fn actor_details_show_every_member() {
        let v = sample();
        let Value::Object(b) = &v["actors"][1] else {
            panic!("not an object")
        };
        let Value::Object(a) = &v["actors"][0] else {
            panic!("not an object")
        };
        let d = actor_details(a);
        assert!(d.contains("replay       replaying 120000/300001"), "{d}");
        assert!(
            d.contains("last exits   killed by SIGKILL (4m12s ago); exit status 1 (2h03m ago)"),
            "{d}"
        );
        assert!(
            d.contains(
                "files        checkpoint 812 B on disk (mmap file 2.0 MiB), call log 5.0 KiB"
            ),
            "{d}"
        );
        assert!(d.contains("methods      incr, get"), "{d}");
        assert!(d.contains("calls per s  12.5"), "{d}");
        let d = actor_details(b);
        assert!(d.starts_with("b\n"), "{d}");
        assert!(d.contains("dead reason  5 restarts within 60s"), "{d}");
        assert!(d.contains("checkpoint   generation 0, last seq 0"), "{d}");
        assert!(d.contains("pid          -"), "{d}");
    }

    #[test]
    fn reload_lines_say_what_changed() {
        let nothing = json!({"added": [], "removed": [], "changed": [], "restarted": [],
                             "needs_restart": []});
        assert_eq!(reload_line(&nothing), "reloaded: nothing changed");
        let some = json!({"added": ["x", "y"], "removed": [], "changed": ["c"], "restarted": [],
                          "needs_restart": ["[supervisor].socket"]});
        assert_eq!(
            reload_line(&some),
            "reloaded: added: x, y; changed: c; needs a supervisor restart to apply: [supervisor].socket"
        );
    }
}
