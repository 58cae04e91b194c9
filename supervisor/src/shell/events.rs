//! The event stream (`subscribe` op, `resurgam events`): what happened to the actors,
//! as NDJSON lines numbered by `seq`, kept in a bounded history and written to every
//! subscribed connection (`shell::conns` drops a subscriber that does not keep up).
//!
//! An event line: `{"seq":7,"time":"2025-01-31T12:00:00.123Z","event":"death",
//! "actor":"counter",…}`; the fields of each `event` are in `docs/observability.md`.
//! Event lines carry no `id`, so they never pass for a reply.

use std::collections::VecDeque;
use std::time::SystemTime;

use serde_json::{Map, Value, json};

use crate::core::{Core, Notice};

/// Events kept for a new subscriber (`resurgam events` prints them).
pub const HISTORY: usize = 1000;

/// The numbered events, the most recent [`HISTORY`] of them kept.
pub struct EventLog {
    next_seq: u64,
    history: VecDeque<String>,
}

impl Default for EventLog {
    fn default() -> Self {
        EventLog {
            next_seq: 1,
            history: VecDeque::with_capacity(HISTORY),
        }
    }
}

impl EventLog {
    /// Numbers and stamps an event (`fields` holds `event` and its own fields), keeps it,
    /// and returns its line (with its newline).
    pub fn record(&mut self, fields: Map<String, Value>) -> &str {
        let mut line = Map::with_capacity(fields.len() + 2);
        line.insert("seq".into(), json!(self.next_seq));
        line.insert("time".into(), json!(rfc3339(SystemTime::now())));
        line.extend(fields);
        self.next_seq += 1;
        let mut text = Value::Object(line).to_string();
        text.push('\n');
        if self.history.len() == HISTORY {
            self.history.pop_front();
        }
        self.history.push_back(text);
        self.history.back().map_or("", String::as_str)
    }

    /// The `seq` the next event gets.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
    }

    /// The kept events, oldest first.
    pub fn history(&self) -> impl ExactSizeIterator<Item = &str> {
        self.history.iter().map(String::as_str)
    }
}

/// The fields of a notice from the core.
pub fn notice_fields(core: &Core, notice: &Notice) -> Map<String, Value> {
    let name = |id| json!(core.actor_name(id));
    let v = match notice {
        Notice::State { actor, from, to } => json!({
            "event": "state", "actor": name(*actor), "from": from.as_str(), "to": to.as_str(),
        }),
        Notice::Died {
            actor,
            pid,
            reason,
            cause,
            restart_in,
        } => json!({
            "event": "death", "actor": name(*actor), "pid": pid, "reason": reason,
            "cause": cause,
            "restart_in_ms": restart_in.map(|d| d.as_millis() as u64),
        }),
        Notice::Dead { actor, reason } => json!({
            "event": "dead", "actor": name(*actor), "reason": reason,
        }),
        Notice::Recovered {
            actor,
            pid,
            took,
            replayed,
            generation,
            last_seq,
        } => json!({
            "event": "recovered", "actor": name(*actor), "pid": pid,
            "recovery_ms": took.as_secs_f64() * 1e3, "replayed": replayed,
            "generation": generation, "last_seq": last_seq,
        }),
        Notice::Poison {
            actor,
            seq,
            method,
            attempts,
        } => json!({
            "event": "poison", "actor": name(*actor), "call_seq": seq, "method": method,
            "attempts": attempts,
        }),
    };
    match v {
        Value::Object(m) => m,
        _ => Map::new(),
    }
}

/// The last line a subscriber gets when it is dropped for not reading its events:
/// `unread` bytes of events wait for it; `missed` is the first event it does not get.
/// It has no `seq`: it is no event of the stream.
pub fn dropped_line(unread: usize, missed: u64) -> String {
    let mut line = json!({
        "time": rfc3339(SystemTime::now()),
        "event": "dropped",
        "reason": format!(
            "this subscriber did not read its events: {unread} bytes unread (limit {})",
            crate::shell::conns::SUBSCRIBER_BUFFER
        ),
        "missed_from_seq": missed,
    })
    .to_string();
    line.push('\n');
    line
}

/// An event line for people: `TIME #SEQ ACTOR EVENT: what happened`.
pub fn human_line(v: &Value) -> String {
    let text = |k: &str| match &v[k] {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    };
    let what = match v["event"].as_str().unwrap_or("?") {
        "state" => format!("{} -> {}", text("from"), text("to")),
        "death" => {
            let next = match v["restart_in_ms"].as_u64() {
                Some(ms) => format!("restart in {ms} ms"),
                None => "no restart".into(),
            };
            format!(
                "{} (pid {}, {}; {next})",
                text("reason"),
                text("pid"),
                text("cause")
            )
        }
        "dead" => text("reason"),
        "recovered" => format!(
            "serving again after {:.1} ms (pid {}, checkpoint generation {} at seq {}, {} calls replayed)",
            v["recovery_ms"].as_f64().unwrap_or(0.0),
            text("pid"),
            text("generation"),
            text("last_seq"),
            text("replayed")
        ),
        "poison" => format!(
            "call {} ({}) dropped after killing its worker {} times",
            text("call_seq"),
            text("method"),
            text("attempts")
        ),
        "checkpoint" => format!(
            "generation {} at seq {}, {} bytes in {:.3} ms",
            text("generation"),
            text("last_seq"),
            text("bytes"),
            v["duration_ms"].as_f64().unwrap_or(0.0)
        ),
        "reload" if v["ok"] == true => format!("configuration reloaded: {}", text("changes")),
        "reload" => format!("reload refused: {}", text("error")),
        "dropped" => text("reason"),
        _ => v.to_string(),
    };
    let seq = v["seq"].as_u64().map_or(String::new(), |s| format!("#{s}"));
    let mut line = format!("{} {seq:>6} ", text("time"));
    if let Some(actor) = v["actor"].as_str() {
        line.push_str(actor);
        line.push(' ');
    }
    line.push_str(&text("event"));
    line.push_str(": ");
    line.push_str(&what);
    line
}

/// A time as RFC 3339 in UTC with milliseconds, e.g. `2025-01-31T12:00:00.123Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let since = t.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since.subsec_millis()
    )
}

/// Year, month, day of a day count since 1970-01-01 (Howard Hinnant's algorithm).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn times_are_rfc3339_utc() {
        let t = SystemTime::UNIX_EPOCH + Duration::from_millis(951_782_400_007);
        assert_eq!(rfc3339(t), "2000-02-29T00:00:00.007Z");
        let t = SystemTime::UNIX_EPOCH + Duration::from_secs(1_735_689_599);
        assert_eq!(rfc3339(t), "2024-12-31T23:59:59.000Z");
    }

    #[test]
    fn the_history_keeps_the_newest_events_numbered_in_order() {
        let mut log = EventLog::default();
        for i in 0..HISTORY + 5 {
            let mut m = Map::new();
            m.insert("event".into(), json!("x"));
            m.insert("i".into(), json!(i));
            log.record(m);
        }
        assert_eq!(log.next_seq(), HISTORY as u64 + 6);
        let kept: Vec<Value> = log
            .history()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(kept.len(), HISTORY);
        assert_eq!(kept[0]["seq"], 6);
        assert_eq!(kept[HISTORY - 1]["seq"], HISTORY as u64 + 5);
        assert_eq!(kept[0]["event"], "x");
    }
}
