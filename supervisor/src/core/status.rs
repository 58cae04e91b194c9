//! The `status` reply: `{"actors": [...], "supervisor": {...}}`.

use std::time::Instant;

use serde_json::json;

use super::{Core, Mode};

pub(super) fn render(core: &Core, now: Instant) -> String {
    let actors: Vec<_> = core
        .actors
        .iter()
        .filter(|a| !a.gone())
        .map(|a| {
            json!({
                "name": a.name,
                "kind": a.kind,
                "state": a.state_name(),
                "pid": a.worker_pid(),
                "program_pid": a.live_program_pid(),
                "restarts": a.restarts,
                "last_exit": a.last_exit,
                "checkpoint": {"generation": a.checkpoint.0, "last_seq": a.checkpoint.1},
                "disk_copy": {"generation": a.disk.0, "last_seq": a.disk.1, "error": a.disk_sync_error},
                "queue": a.unanswered,
                "served": a.served,
                "log_len": a.log.len(),
                "next_seq": a.next_seq,
                "replayed": a.replayed,
                "replay": a.replay_progress().map(|(done, total)| json!({"done": done, "total": total})),
                "recovered_from_log": a.recovered,
                "durability": a.policy.durability.as_str(),
                "log_floor": a.log_floor,
                "restored_from": a.restored.as_ref().and_then(|r| r.2.clone()),
                "dead_reason": a.dead_reason,
                "nondeterministic_replies": a.nondeterministic,
                "epoch": a.epoch,
                "methods": a.methods,
                "calls_per_s": a.calls_per_s(now),
                "last_exits": a.exits.iter().rev().map(|(at, how)| json!({
                    "exit": how,
                    "ago_ms": now.saturating_duration_since(*at).as_millis() as u64,
                })).collect::<Vec<_>>(),
                "files": a.files.map(|f| json!({
                    "mmap_bytes": f.mmap_bytes,
                    "disk_copy_bytes": f.disk_copy_bytes,
                    "log_bytes": f.log_bytes,
                })),
            })
        })
        .collect();
    let state = match core.mode {
        Mode::Running => "running",
        Mode::Stopping { .. } => "stopping",
        Mode::Exited => "exited",
    };
    json!({
        "actors": actors,
        "supervisor": {
            "pid": core.pid,
            "state": state,
            "uptime_ms": now.saturating_duration_since(core.started).as_millis() as u64,
            "version": env!("CARGO_PKG_VERSION"),
        }
    })
    .to_string()
}
