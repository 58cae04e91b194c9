//! A hostile or careless state or runtime directory (issue: state you can trust): links
//! planted where the supervisor writes, directories other users can write, files
//! created with a loose umask, a socket path another user holds, a second supervisor.

use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;

use resurgam::shared::protocol::ErrorKind;
use serde_json::{Value, json};

use crate::util::{Supervisor, resurgam_cmd, root_or_skip, run_with_timeout};

const NOBODY: u32 = 65534;

/// Puts something at a path.
type Plant<'a> = dyn Fn(&Path) + 'a;

fn kv(durability: &str) -> String {
    format!(
        r#"
[supervisor]
durability = "{durability}"

[[actor]]
name = "kv"
kind = "kv"
checkpoint_every = 0
checkpoint_interval = "0s"
"#
    )
}

fn put(sup: &Supervisor, key: &str, value: &str) {
    let mut c = sup.client();
    assert_eq!(
        c.call("kv", "put", json!({"key": key, "value": value}))
            .unwrap(),
        Value::Null
    );
}

fn get(sup: &Supervisor, key: &str) -> Value {
    sup.client().call("kv", "get", json!({"key": key})).unwrap()
}

/// Every path under `dir` with its mode, links not followed.
fn modes(dir: &Path) -> Vec<(String, u32, bool)> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).unwrap() {
        let e = e.unwrap();
        let m = fs::symlink_metadata(e.path()).unwrap();
        out.push((
            e.path().display().to_string(),
            m.mode() & 0o7777,
            m.is_dir(),
        ));
        if m.is_dir() {
            out.extend(modes(&e.path()));
        }
    }
    out
}

#[test]
fn every_file_and_directory_created_is_private_whatever_the_umask() {
    for durability in ["log", "fsync", "memory"] {
        // The supervisor inherits this process's umask: make it as loose as can be.
        let sup = Supervisor::start_wrapped(&kv(durability), |sup| {
            let mut cmd = std::process::Command::new("sh");
            cmd.arg("-c")
                .arg(format!(
                    "umask 000 && exec {} run --config {}",
                    crate::util::BIN,
                    sup.config_path.display()
                ))
                .env("RESURGAM_LOG", "info");
            cmd
        });
        put(&sup, "secret", "hunter2");
        sup.client().checkpoint("kv").unwrap();
        put(&sup, "after", "x");
        let socket = sup.socket.display().to_string();
        for dir in [&sup.state_dir, &sup.runtime_dir] {
            for (path, mode, is_dir) in modes(dir) {
                if path == socket {
                    continue;
                }
                let want = if is_dir { 0o700 } else { 0o600 };
                assert_eq!(mode, want, "{durability}: {path} has mode {mode:04o}");
            }
        }
        for dir in [&sup.state_dir, &sup.runtime_dir] {
            let mode = fs::metadata(dir).unwrap().mode() & 0o777;
            assert_eq!(mode, 0o700, "{}", dir.display());
        }
    }
}

#[test]
fn a_state_or_runtime_dir_others_can_write_is_refused_unless_the_config_says_so() {
    let sup = Supervisor::start(&kv("log"));
    put(&sup, "a", "1");
    for (dir, mode, who) in [
        (&sup.state_dir, 0o777, "every user"),
        (&sup.runtime_dir, 0o770, "its group"),
        (&sup.state_dir, 0o1777, "every user"),
    ] {
        fs::set_permissions(dir, fs::Permissions::from_mode(mode)).unwrap();
        let log = sup.restart_expecting_refusal();
        assert!(
            log.contains(&dir.display().to_string())
                && log.contains(&format!("writable by {who}"))
                && log.contains("allow_shared_dirs"),
            "{mode:o}:\n{log}"
        );
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700)).unwrap();
    }
    // Explicitly allowed: it starts (and says so), with the state intact.
    fs::set_permissions(&sup.state_dir, fs::Permissions::from_mode(0o770)).unwrap();
    sup.write_config(&format!(
        "{}\n",
        kv("log").replace("[supervisor]\n", "[supervisor]\nallow_shared_dirs = true\n")
    ));
    sup.restart_same_dirs();
    assert_eq!(get(&sup, "a"), json!("1"));
    assert!(
        sup.run_log(sup.run_count())
            .contains("accepted (allow_shared_dirs = true)")
    );
}

#[test]
fn a_state_dir_owned_by_another_user_is_refused_naming_the_owner() {
    if !root_or_skip("give a directory to another user") {
        return;
    }
    let sup = Supervisor::start(&kv("log"));
    sup.kill_supervisor();
    std::os::unix::fs::chown(&sup.state_dir, Some(NOBODY), None).unwrap();
    let log = sup.restart_expecting_refusal();
    assert!(
        log.contains(&format!("uid {NOBODY}")) && log.contains("not by user root (uid 0)"),
        "{log}"
    );
    std::os::unix::fs::chown(&sup.state_dir, Some(0), None).unwrap();
    sup.restart_same_dirs();
}

#[test]
fn links_planted_in_the_state_dir_are_never_followed() {
    for durability in ["log", "fsync", "memory"] {
        let sup = Supervisor::start(&kv(durability));
        put(&sup, "a", "1");
        sup.client().checkpoint("kv").unwrap();
        put(&sup, "b", "2");
        sup.kill_supervisor();
        let victim = sup.dir().join("victim");
        fs::write(&victim, b"precious").unwrap();
        // The checkpoint's temp file and the lock file: links to the victim.
        std::os::unix::fs::symlink(&victim, sup.state_dir.join("kv.checkpoint.tmp")).unwrap();
        let lock = sup.state_dir.join(".resurgam.lock");
        fs::remove_file(&lock).unwrap();
        std::os::unix::fs::symlink(&victim, &lock).unwrap();
        let log = sup.restart_expecting_refusal();
        assert!(
            log.contains("symbolic link") && log.contains(".resurgam.lock"),
            "{durability}:\n{log}"
        );
        fs::remove_file(&lock).unwrap();
        // The worker's mmap file: a link is moved aside, never written through.
        let ckpt = sup.runtime_dir.join("kv.ckpt");
        fs::remove_file(&ckpt).unwrap();
        std::os::unix::fs::symlink(&victim, &ckpt).unwrap();
        sup.restart_same_dirs();
        assert!(
            !fs::symlink_metadata(&ckpt)
                .unwrap()
                .file_type()
                .is_symlink(),
            "{durability}: the link is still in place"
        );
        // (`memory` keeps only what the checkpoint holds.)
        let (key, value) = if durability == "memory" {
            ("a", "1")
        } else {
            ("b", "2")
        };
        assert_eq!(get(&sup, key), json!(value), "{durability}");
        // A new checkpoint goes through the temp file's name: the link is replaced,
        // never written through.
        put(&sup, "c", "3");
        sup.client().checkpoint("kv").unwrap();
        assert_eq!(fs::read(&victim).unwrap(), b"precious", "{durability}");
        assert_eq!(
            fs::metadata(&victim).unwrap().mode() & 0o777,
            0o644,
            "{durability}: the victim's mode changed"
        );
    }
}

#[test]
fn a_socket_path_another_user_holds_is_refused_naming_the_owner() {
    if !root_or_skip("create a file as another user") {
        return;
    }
    let sup = Supervisor::start(&kv("log"));
    sup.kill_supervisor();
    let victim = sup.dir().join("victim");
    fs::write(&victim, b"precious").unwrap();
    let plant: [(&str, &Plant<'_>); 3] = [
        ("a file", &|p| fs::write(p, b"theirs").unwrap()),
        ("a symbolic link", &|p| {
            std::os::unix::fs::symlink(&victim, p).unwrap()
        }),
        ("a socket", &|p| {
            let l = std::os::unix::net::UnixListener::bind(p).unwrap();
            std::mem::forget(l);
        }),
    ];
    // (The config check and `run` both name the owner, whichever sees it first.)
    for (kind, make) in plant {
        let _ = fs::remove_file(&sup.socket);
        make(&sup.socket);
        std::os::unix::fs::lchown(&sup.socket, Some(NOBODY), Some(NOBODY)).unwrap();
        let log = sup.restart_expecting_refusal();
        assert!(
            log.contains(&sup.socket.display().to_string())
                && log.contains("owned by")
                && log.contains(&format!("uid {NOBODY}")),
            "{kind}:\n{log}"
        );
        assert!(
            fs::symlink_metadata(&sup.socket).unwrap().uid() == NOBODY,
            "{kind} was replaced"
        );
    }
    assert_eq!(fs::read(&victim).unwrap(), b"precious");
    fs::remove_file(&sup.socket).unwrap();
    sup.restart_same_dirs();
}

/// Runs a second supervisor whose config shares `runtime` or `socket` with `sup`'s (and
/// nothing else); it must refuse to start, and its stderr is returned.
fn second_supervisor(runtime: Option<&Path>, socket: Option<&Path>) -> String {
    let other = tempfile::tempdir().unwrap();
    let config = other.path().join("other.toml");
    let own_runtime = other.path().join("run");
    let own_socket = other.path().join("ctl.sock");
    fs::write(
        &config,
        format!(
            "[supervisor]\nstate_dir = \"{}\"\nruntime_dir = \"{}\"\nsocket = \"{}\"\n\
             durability = \"log\"\n\n[[actor]]\nname = \"kv\"\nkind = \"kv\"\n",
            other.path().join("state").display(),
            runtime.unwrap_or(&own_runtime).display(),
            socket.unwrap_or(&own_socket).display()
        ),
    )
    .unwrap();
    let out = run_with_timeout(
        resurgam_cmd(&["run", "--config", config.to_str().unwrap()]),
        Duration::from_secs(30),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(!out.status.success(), "{stderr}");
    // Refused before anything started.
    assert!(!stderr.contains("worker ready"), "{stderr}");
    stderr
}

#[test]
fn a_second_supervisor_on_the_same_runtime_dir_or_socket_refuses_naming_the_first() {
    let sup = Supervisor::start(&kv("log"));
    put(&sup, "a", "1");
    let stderr = second_supervisor(Some(&sup.runtime_dir), None);
    assert!(
        stderr.contains(&format!(
            "runtime directory {} is in use by another supervisor (pid {})",
            sup.runtime_dir.display(),
            sup.pid()
        )),
        "{stderr}"
    );
    let stderr = second_supervisor(None, Some(&sup.socket));
    assert!(
        stderr.contains(&format!(
            "control socket {} is in use by another supervisor (pid {})",
            sup.socket.display(),
            sup.pid()
        )),
        "{stderr}"
    );
    // The first one is untouched.
    assert_eq!(get(&sup, "a"), json!("1"));
    assert!(sup.socket.exists());
}

// ------------------------------------------------------------------------------------
// Damage to the call log and to the checkpoints: never silent, never mislabelled.

use resurgam::shared::calllog::{
    OWNER_METHOD, decode_segment, encode_into, list_segments, log_dir,
};

/// A supervisor with `n` puts `k0..k{n}` logged (no checkpoint unless `checkpoint_at`
/// names how many puts come before one), killed, its only segment returned with the
/// offset where each record starts (and the end).
fn logged(durability: &str, n: usize, checkpoint_at: Option<usize>) -> (Supervisor, Segment) {
    let sup = Supervisor::start(&kv(durability));
    for i in 0..n {
        if checkpoint_at == Some(i) {
            sup.client().checkpoint("kv").unwrap();
        }
        put(&sup, &format!("k{i}"), &format!("v{i}"));
    }
    sup.kill_supervisor();
    sup.wait_state_dir_unlocked();
    let segs = list_segments(&log_dir(&sup.state_dir, "kv")).unwrap();
    assert_eq!(segs.len(), 1, "{segs:?}");
    let path = segs[0].1.clone();
    let bytes = fs::read(&path).unwrap();
    let offsets = call_offsets(&bytes);
    (
        sup,
        Segment {
            path,
            bytes,
            offsets,
        },
    )
}

/// Where each call record of a segment starts, then the end (the owner record the
/// segment begins with is not a call).
fn call_offsets(bytes: &[u8]) -> Vec<usize> {
    let (records, _, stop) = decode_segment(bytes);
    assert!(stop.is_none(), "{stop:?}");
    let mut offsets = vec![0usize];
    for r in &records {
        let mut b = Vec::new();
        encode_into(&mut b, r.seq, &r.method, &r.args);
        offsets.push(offsets.last().unwrap() + b.len());
    }
    if records.first().is_some_and(|r| r.method == OWNER_METHOD) {
        offsets.remove(0);
    }
    offsets
}

struct Segment {
    path: std::path::PathBuf,
    bytes: Vec<u8>,
    /// Where each record starts, then the end.
    offsets: Vec<usize>,
}

/// Restarts the supervisor and returns the actor's status once it is DEAD, asserting
/// that its reason holds every one of `words` and tells how to accept the loss.
fn held_dead(sup: &Supervisor, words: &[&str]) -> Value {
    sup.restart_until_serving();
    let a = sup.wait_state("kv", "DEAD", Duration::from_secs(20));
    let reason = a["dead_reason"].as_str().unwrap_or_default();
    for w in words.iter().chain(&["restart kv --fresh"]) {
        assert!(reason.contains(w), "{w:?} not in {reason:?}");
    }
    a
}

/// Revives a held actor with `restart --fresh` and waits until it is ALIVE.
fn accept_loss(sup: &Supervisor) {
    sup.client().restart_fresh("kv").unwrap();
    sup.wait_state("kv", "ALIVE", Duration::from_secs(20));
}

#[test]
fn zeroed_log_bytes_are_damage_in_the_middle_and_at_the_end() {
    for durability in ["log", "fsync"] {
        for at_end in [false, true] {
            let (sup, seg) = logged(durability, 10, None);
            let mut bytes = seg.bytes.clone();
            let from = seg.offsets[4];
            let to = if at_end { bytes.len() } else { seg.offsets[6] };
            bytes[from..to].fill(0);
            fs::write(&seg.path, &bytes).unwrap();
            let a = held_dead(&sup, &["zeroed", "calls from seq 5 on"]);
            assert_eq!(a["recovered_from_log"], 4, "{durability} {at_end}: {a}");
            accept_loss(&sup);
            assert_eq!(get(&sup, "k3"), json!("v3"));
            assert_eq!(get(&sup, "k4"), Value::Null);
        }
    }
}

#[test]
fn a_log_cut_at_a_record_boundary_before_the_checkpoint_is_damage() {
    for durability in ["log", "fsync"] {
        // The checkpoint covers 8 calls; the log is cut after 5.
        let (sup, seg) = logged(durability, 10, Some(8));
        fs::write(&seg.path, &seg.bytes[..seg.offsets[5]]).unwrap();
        held_dead(
            &sup,
            &["ends at seq 5", "before the newest checkpoint's seq 8"],
        );
        accept_loss(&sup);
        assert_eq!(get(&sup, "k7"), json!("v7"), "{durability}");
    }
}

#[test]
fn a_log_cut_mid_record_is_a_torn_tail_only_at_the_very_end() {
    for durability in ["log", "fsync"] {
        let (sup, seg) = logged(durability, 10, None);
        // Mid-record in the last record: what a crash mid-append leaves. Cut off,
        // reported as torn, the actor serves the calls before it.
        fs::write(&seg.path, &seg.bytes[..seg.offsets[9] + 11]).unwrap();
        sup.restart_same_dirs();
        assert!(
            sup.run_log(sup.run_count()).contains("torn record"),
            "{durability}"
        );
        assert_eq!(get(&sup, "k8"), json!("v8"));
        assert_eq!(get(&sup, "k9"), Value::Null);
        // A record cut short with records after it is damage, not a torn tail.
        sup.kill_supervisor();
        sup.wait_state_dir_unlocked();
        let segs = list_segments(&log_dir(&sup.state_dir, "kv")).unwrap();
        let mut bytes = fs::read(&segs[0].1).unwrap();
        let offsets = call_offsets(&bytes);
        // Declare record 3 one byte longer: the checksum fails there.
        let n = u32::from_le_bytes(bytes[offsets[3]..offsets[3] + 4].try_into().unwrap());
        bytes[offsets[3]..offsets[3] + 4].copy_from_slice(&(n + 1).to_le_bytes());
        fs::write(&segs[0].1, &bytes).unwrap();
        held_dead(&sup, &["corrupt record", "calls 4..=9"]);
    }
}

#[test]
fn a_missing_or_linked_segment_holds_the_actor() {
    for durability in ["log", "fsync"] {
        let (sup, seg) = logged(durability, 6, None);
        // Split the segment in three, as rotation would have, and drop the middle one.
        let dir = log_dir(&sup.state_dir, "kv");
        let names: Vec<_> = [0, 2, 4]
            .iter()
            .map(|&i| dir.join(resurgam::shared::calllog::segment_name(i as u64 + 1)))
            .collect();
        for (k, &i) in [0, 2, 4].iter().enumerate() {
            fs::write(&names[k], &seg.bytes[seg.offsets[i]..seg.offsets[i + 2]]).unwrap();
        }
        sup.restart_same_dirs();
        assert_eq!(get(&sup, "k5"), json!("v5"), "{durability}: split log");
        sup.kill_supervisor();
        sup.wait_state_dir_unlocked();
        let middle = fs::read(&names[1]).unwrap();
        fs::remove_file(&names[1]).unwrap();
        held_dead(&sup, &["jumps from seq 2 to seq 5", "segments are missing"]);
        accept_loss(&sup);

        // A link in place of a segment (to a copy of it outside the state dir).
        sup.kill_supervisor();
        sup.wait_state_dir_unlocked();
        let q = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().path())
            .find(|p| p.is_dir())
            .unwrap();
        // Put the log back as it was, then plant the link.
        for e in fs::read_dir(&q).unwrap() {
            let e = e.unwrap();
            fs::rename(e.path(), dir.join(e.file_name())).unwrap();
        }
        fs::write(&names[1], &middle).unwrap();
        let victim = sup.dir().join("victim.seg");
        fs::write(&victim, fs::read(&names[2]).unwrap()).unwrap();
        fs::remove_file(&names[2]).unwrap();
        std::os::unix::fs::symlink(&victim, &names[2]).unwrap();
        let before = fs::read(&victim).unwrap();
        held_dead(&sup, &["symbolic link"]);
        assert_eq!(
            fs::read(&victim).unwrap(),
            before,
            "the link's target changed"
        );
    }
}

#[test]
fn vanished_state_files_hold_the_actor_in_every_mode() {
    for durability in ["memory", "log", "fsync"] {
        let sup = Supervisor::start(&kv(durability));
        put(&sup, "a", "1");
        sup.client().checkpoint("kv").unwrap();
        put(&sup, "b", "2");
        sup.kill_supervisor();
        sup.wait_state_dir_unlocked();
        // Every checkpoint and the whole log gone.
        let _ = fs::remove_file(sup.state_dir.join("kv.checkpoint"));
        let _ = fs::remove_file(sup.runtime_dir.join("kv.ckpt"));
        let _ = fs::remove_dir_all(log_dir(&sup.state_dir, "kv"));
        held_dead(&sup, &["state files are gone", "resurgam-state.json"]);
        // Neither a plain restart nor a start revives it.
        for refused in [sup.client().restart("kv"), sup.client().start_actor("kv")] {
            let message = crate::util::expect_kind(refused, ErrorKind::BadRequest);
            assert!(message.contains("restart kv --fresh"), "{message}");
        }
        // Held across restarts until the operator says otherwise.
        held_dead(&sup, &["state files are gone"]);
        accept_loss(&sup);
        assert_eq!(get(&sup, "a"), Value::Null, "{durability}");
        assert!(
            sup.log()
                .contains("restart --fresh: the operator accepted the loss")
        );
        // Started fresh, it runs and restarts normally.
        put(&sup, "c", "3");
        sup.client().checkpoint("kv").unwrap();
        sup.restart_same_dirs();
        assert_eq!(get(&sup, "c"), json!("3"), "{durability}");
    }
}

/// The manifest records an actor's new log (off the event loop, on the log thread)
/// before any call of it is acknowledged: when the first reply of each of many
/// actors arrives, the mark is on disk. A log that vanishes after that reply is then
/// held DEAD, never taken for a new actor.
#[test]
fn the_log_is_in_the_manifest_before_the_first_reply() {
    const ACTORS: usize = 12;
    for durability in ["log", "fsync"] {
        let mut config = format!("[supervisor]\ndurability = \"{durability}\"\n");
        for i in 0..ACTORS {
            config.push_str(&format!("\n[[actor]]\nname = \"kv{i}\"\nkind = \"kv\"\n"));
        }
        let sup = Supervisor::start(&config);
        let manifest = sup.state_dir.join("resurgam-state.json");
        let mut c = sup.client();
        for i in 0..ACTORS {
            let name = format!("kv{i}");
            c.call(&name, "put", json!({"key": "k", "value": i}))
                .unwrap();
            let m: Value = serde_json::from_slice(&fs::read(&manifest).unwrap()).unwrap();
            assert_eq!(
                m["actors"][&name]["logged"],
                json!(true),
                "{durability}: {name} answered before its log was recorded: {m}"
            );
        }
        sup.kill_supervisor();
        sup.wait_state_dir_unlocked();
        let _ = fs::remove_dir_all(log_dir(&sup.state_dir, "kv0"));
        sup.restart_until_serving();
        let a = sup.wait_state("kv0", "DEAD", Duration::from_secs(20));
        assert!(
            a["dead_reason"]
                .as_str()
                .is_some_and(|r| r.contains("state files are gone")),
            "{durability}: {a}"
        );
    }
}

#[test]
fn a_huge_sparse_segment_is_not_read_into_memory() {
    let (sup, seg) = logged("log", 5, None);
    // 3 GiB of hole after the records.
    let f = fs::OpenOptions::new().write(true).open(&seg.path).unwrap();
    f.set_len(3 << 30).unwrap();
    drop(f);
    held_dead(&sup, &["zeroed"]);
    let status = fs::read_to_string(format!("/proc/{}/status", sup.pid())).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    assert!(peak_kib < 256 << 10, "peak RSS {peak_kib} KiB");
    // The damaged segment is in the quarantine, still 3 GiB (linked, not copied).
    let dir = log_dir(&sup.state_dir, "kv");
    let q = fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| p.is_dir())
        .unwrap();
    let moved = q.join(seg.path.file_name().unwrap());
    assert_eq!(fs::metadata(&moved).unwrap().len(), 3 << 30);
    assert_eq!(fs::read(&seg.path).unwrap(), seg.bytes);
}

// ------------------------------------------------------------------------------------
// Files that know whose they are.

fn two_kv(durability: &str) -> String {
    format!(
        r#"
[supervisor]
durability = "{durability}"

[defaults]
checkpoint_every = 0
checkpoint_interval = "0s"

[[actor]]
name = "a"
kind = "kv"

[[actor]]
name = "b"
kind = "kv"
"#
    )
}

fn swap(x: &Path, y: &Path) {
    let tmp = x.with_extension("swap");
    fs::rename(x, &tmp).unwrap();
    fs::rename(y, x).unwrap();
    fs::rename(&tmp, y).unwrap();
}

/// Restarts and waits until both actors are DEAD; returns their reasons.
fn both_dead(sup: &Supervisor) -> [String; 2] {
    sup.restart_until_serving();
    ["a", "b"].map(|name| {
        let a = sup.wait_state(name, "DEAD", Duration::from_secs(20));
        a["dead_reason"].as_str().unwrap_or_default().to_string()
    })
}

#[test]
fn checkpoints_and_logs_swapped_between_actors_are_refused_naming_both() {
    for durability in ["memory", "log", "fsync"] {
        let sup = Supervisor::start(&two_kv(durability));
        let mut c = sup.client();
        for name in ["a", "b"] {
            c.call(name, "put", json!({"key": "who", "value": name}))
                .unwrap();
            c.checkpoint(name).unwrap();
            c.call(name, "put", json!({"key": "after", "value": name}))
                .unwrap();
        }
        sup.kill_supervisor();
        sup.wait_state_dir_unlocked();
        swap(
            &sup.state_dir.join("a.checkpoint"),
            &sup.state_dir.join("b.checkpoint"),
        );
        swap(
            &sup.runtime_dir.join("a.ckpt"),
            &sup.runtime_dir.join("b.ckpt"),
        );
        if durability != "memory" {
            swap(&log_dir(&sup.state_dir, "a"), &log_dir(&sup.state_dir, "b"));
        }
        let [ra, rb] = both_dead(&sup);
        for (reason, other) in [(&ra, "b"), (&rb, "a")] {
            assert!(
                reason.contains(&format!("belongs to actor {other:?}"))
                    && reason.contains("restart"),
                "{durability}: {reason}"
            );
        }
        if durability != "memory" {
            // The log's refusal names both owners in full.
            assert!(
                ra.contains("not to actor \"a\" of state dir"),
                "{durability}: {ra}"
            );
        }
        // Nothing of the other is served: both are DEAD until the operator decides.
        crate::util::expect_kind(c_call(&sup, "a"), ErrorKind::ActorDead);
    }
}

fn c_call(sup: &Supervisor, actor: &str) -> Result<Value, resurgam::ClientError> {
    sup.client().call(actor, "get", json!({"key": "who"}))
}

#[test]
fn a_checkpoint_from_another_state_dir_is_refused() {
    let one = Supervisor::start(&kv("log"));
    put(&one, "who", "one");
    one.client().checkpoint("kv").unwrap();
    let two = Supervisor::start(&kv("memory"));
    put(&two, "who", "two");
    two.client().checkpoint("kv").unwrap();
    two.kill_supervisor();
    two.wait_state_dir_unlocked();
    // The same actor name, another state directory's checkpoint files.
    fs::copy(
        one.state_dir.join("kv.checkpoint"),
        two.state_dir.join("kv.checkpoint"),
    )
    .unwrap();
    let _ = fs::remove_file(two.runtime_dir.join("kv.ckpt"));
    two.restart_until_serving();
    let a = two.wait_state("kv", "DEAD", Duration::from_secs(20));
    let reason = a["dead_reason"].as_str().unwrap_or_default();
    assert!(
        reason.contains("of another state directory") && reason.contains("actor \"kv\""),
        "{reason}"
    );
}
