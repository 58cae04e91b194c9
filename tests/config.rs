//! Bad configs are refused by `check` and `run` alike with exit code 2 and
//! `FILE:LINE...: reason` lines on stderr (values out of range, paths `run` would fail on
//! or destroy data with); a good config passes `check`, and a risky but legal one passes
//! with a `FILE:LINE:COL: warning: reason` line that `run` logs too.

use std::path::Path;
use std::time::Duration;

use crate::util::{resurgam_cmd, run_with_timeout};

/// A config file in its own tempdir. Every file carries a `[supervisor]` section with
/// paths inside the tempdir, so a `run` that wrongly accepted it would not touch anything
/// outside. `tail` is appended; `marker` is a substring of the line the error must name.
struct Case {
    name: &'static str,
    tail: &'static str,
    marker: &'static str,
    /// Every one of these (lowercase) must appear in the error line.
    reasons: &'static [&'static str],
}

const CASES: &[Case] = &[
    Case {
        name: "syntax error",
        tail: "[defaults]\nmax_restarts = = 3\n",
        marker: "max_restarts = = 3",
        reasons: &["syntax"],
    },
    Case {
        name: "unknown key",
        tail: "[defaults]\ncheckpoint_every = 10\nbogus_knob = 1\n",
        marker: "bogus_knob",
        reasons: &["unknown key", "bogus_knob"],
    },
    Case {
        name: "bad duration",
        tail: "[defaults]\nrestart_window = \"5 parsecs\"\n",
        marker: "5 parsecs",
        reasons: &["restart_window", "parsecs"],
    },
    Case {
        name: "duplicate actor name",
        tail: "[[actor]]\nname = \"twin\"\nkind = \"counter\"\n\n[[actor]]\nname = \"twin\" # again\nkind = \"kv\"\n",
        marker: "# again",
        reasons: &["duplicate", "twin"],
    },
    Case {
        name: "name escaping the state dir",
        tail: "[[actor]]\nname = \"../x\"\nkind = \"kv\"\n",
        marker: "\"../x\"",
        reasons: &["name", "../x"],
    },
    Case {
        name: "empty name",
        tail: "[[actor]]\nkind = \"kv\"\nname = \"\"\n",
        marker: "name = \"\"",
        reasons: &["name"],
    },
    Case {
        name: "unknown kind",
        tail: "[[actor]]\nname = \"a\"\nkind = \"no-such-kind\"\n",
        marker: "no-such-kind",
        reasons: &["unknown kind", "no-such-kind"],
    },
    // Values `check` once accepted and `run` then failed on or looped with. A tail
    // without a table header lands in the [supervisor] table.
    Case {
        name: "shutdown_timeout of 0s (every stop exited 1)",
        tail: "shutdown_timeout = \"0s\"\n",
        marker: "shutdown_timeout",
        reasons: &["shutdown_timeout", "\"0s\"", "allowed: at least \"100ms\""],
    },
    Case {
        name: "heartbeat_timeout of 1ns (a kill loop)",
        tail: "[defaults]\nheartbeat_timeout = \"1ns\"\n",
        marker: "heartbeat_timeout",
        reasons: &[
            "heartbeat_timeout",
            "allowed: \"0s\" (off) or at least \"100ms\"",
        ],
    },
    Case {
        name: "sub-nanosecond duration (was silently 0, i.e. off)",
        tail: "[defaults]\ncheckpoint_interval = \"0.1ns\"\n",
        marker: "checkpoint_interval",
        reasons: &["checkpoint_interval", "whole number of nanoseconds"],
    },
    Case {
        name: "socket_mode without owner read and write",
        tail: "socket_mode = \"0000\"\n",
        marker: "socket_mode",
        reasons: &["socket_mode", "allowed: \"0600\" to \"0777\""],
    },
];

fn write_config(dir: &Path, tail: &str) -> (std::path::PathBuf, String) {
    let path = dir.join("resurgam.toml");
    let text = format!(
        "# a test config\n[supervisor]\nstate_dir = \"{0}/state\"\nruntime_dir = \"{0}/run\"\n\
         socket = \"{0}/ctl.sock\"\ndurability = \"memory\"\n\n{tail}",
        dir.display()
    );
    std::fs::write(&path, &text).expect("write config");
    (path, text)
}

/// 1-based line of the first line containing `marker`.
fn line_of(text: &str, marker: &str) -> usize {
    text.lines()
        .position(|l| l.contains(marker))
        .unwrap_or_else(|| panic!("marker {marker:?} not in config"))
        + 1
}

fn assert_refused(case: &Case, subcommand: &str) {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, text) = write_config(dir.path(), case.tail);
    let path_s = path.to_str().expect("utf-8 path");
    let mut cmd = resurgam_cmd(&[subcommand, "--config", path_s]);
    cmd.current_dir(dir.path());
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    let stderr = crate::util::strip_ansi(&String::from_utf8_lossy(&out.stderr));
    let what = format!("`{subcommand}` on a config with a {}", case.name);
    assert_eq!(
        out.status.code(),
        Some(2),
        "{what}: exit status {:?}, stderr:\n{stderr}",
        out.status
    );
    let line = line_of(&text, case.marker);
    let prefix = format!("{path_s}:{line}:");
    let hit = stderr.lines().find(|l| l.starts_with(&prefix));
    let Some(hit) = hit else {
        panic!("{what}: no stderr line starts with {prefix:?}; stderr:\n{stderr}\nconfig:\n{text}");
    };
    let lower = hit.to_lowercase();
    for reason in case.reasons {
        assert!(
            lower.contains(reason),
            "{what}: error line {hit:?} does not mention {reason:?}"
        );
    }
    // `run` must not have started anything.
    assert!(
        !dir.path().join("ctl.sock").exists(),
        "{what}: a control socket was created"
    );
}

#[test]
fn check_refuses_bad_configs_with_file_line_and_reason() {
    for case in CASES {
        assert_refused(case, "check");
    }
}

#[test]
fn run_refuses_bad_configs_with_file_line_and_reason() {
    for case in CASES {
        assert_refused(case, "run");
    }
}

#[test]
fn check_reports_every_problem_at_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, text) = write_config(
        dir.path(),
        "[defaults]\nbogus_knob = 1\nbackoff_max = \"forever\"\n\n[[actor]]\nname = \"../up\"\nkind = \"kv\"\n",
    );
    let path_s = path.to_str().expect("utf-8 path");
    let out = crate::util::cli(&["check", "--config", path_s], &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    for marker in ["bogus_knob", "forever", "../up"] {
        let prefix = format!("{path_s}:{}:", line_of(&text, marker));
        assert!(
            stderr.lines().any(|l| l.starts_with(&prefix)),
            "no error for line of {marker:?} ({prefix}); stderr:\n{stderr}"
        );
    }
}

#[test]
fn a_good_config_passes_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (path, _) = write_config(
        dir.path(),
        "[defaults]\nmax_restarts = 5\nrestart_window = \"30s\"\nmax_call_retries = 2\n\
         checkpoint_every = 100\ncheckpoint_interval = \"250ms\"\nbackoff_initial = \"5ms\"\n\
         backoff_max = \"500ms\"\n\n[[actor]]\nname = \"counter\"\nkind = \"counter\"\n\n\
         [[actor]]\nname = \"store_1\"\nkind = \"kv\"\ncheckpoint_every = 0\n",
    );
    let path_s = path.to_str().expect("utf-8 path");
    let out = crate::util::cli(&["check", "--config", path_s], &[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("OK"), "stdout: {stdout}");
    assert!(
        !dir.path().join("ctl.sock").exists(),
        "check must not start anything"
    );
}

/// Runs `resurgam SUBCOMMAND --config PATH` in `dir`; returns (exit code, stderr).
fn run_in(dir: &Path, subcommand: &str, config: &Path) -> (Option<i32>, String) {
    let config = config.to_str().expect("utf-8 path");
    let mut cmd = resurgam_cmd(&[subcommand, "--config", config]);
    cmd.current_dir(dir);
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    let stderr = crate::util::strip_ansi(&String::from_utf8_lossy(&out.stderr));
    (out.status.code(), stderr)
}

/// The socket path named an actor's checkpoint: `run` used to bind there (deleting the
/// file) and remove the socket at exit. Now `check` and `run` refuse it at its line and
/// column, relative paths resolved against the config file's directory, and the
/// checkpoint is still there.
#[test]
fn a_socket_on_a_checkpoint_is_refused_and_the_checkpoint_kept() {
    let dir = tempfile::tempdir().expect("tempdir");
    let state = dir.path().join("state");
    std::fs::create_dir(&state).expect("mkdir");
    let checkpoint = state.join("a.checkpoint");
    std::fs::write(&checkpoint, b"precious").expect("write checkpoint");
    let path = dir.path().join("resurgam.toml");
    std::fs::write(
        &path,
        "[supervisor]\nstate_dir = \"state\"\nsocket = \"state/a.checkpoint\"\n\n\
         [[actor]]\nname = \"a\"\nkind = \"counter\"\n",
    )
    .expect("write config");
    let prefix = format!("{}:3:10: [supervisor] socket: ", path.display());
    for subcommand in ["check", "run"] {
        // From another working directory: the paths are the config file's.
        let (code, stderr) = run_in(&std::env::temp_dir(), subcommand, &path);
        assert_eq!(code, Some(2), "`{subcommand}`: stderr:\n{stderr}");
        let line = stderr.lines().find(|l| l.starts_with(&prefix));
        let line = line.unwrap_or_else(|| panic!("`{subcommand}`: no {prefix:?} in:\n{stderr}"));
        assert!(
            line.contains("where `run` keeps an actor's checkpoint"),
            "{line}"
        );
        assert_eq!(
            std::fs::read(&checkpoint).expect("checkpoint still there"),
            b"precious",
            "`{subcommand}` touched the checkpoint"
        );
    }
}

/// A state directory that is an existing file, and a socket path that is a directory:
/// `run` failed on both after `check` passed them.
#[test]
fn directories_and_sockets_in_the_way_are_refused_by_check_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("not-a-dir"), b"").expect("write");
    std::fs::create_dir(dir.path().join("a-dir")).expect("mkdir");
    for (supervisor, line, wrong) in [
        (
            "state_dir = \"not-a-dir\"\nruntime_dir = \"run\"\nsocket = \"ctl.sock\"",
            2,
            "[supervisor] state_dir: ",
        ),
        (
            "state_dir = \"state\"\nsocket = \"a-dir\"",
            3,
            "[supervisor] socket: ",
        ),
    ] {
        let path = dir.path().join("resurgam.toml");
        std::fs::write(&path, format!("[supervisor]\n{supervisor}\n")).expect("write config");
        for subcommand in ["check", "run"] {
            let (code, stderr) = run_in(dir.path(), subcommand, &path);
            assert_eq!(code, Some(2), "`{subcommand}`: stderr:\n{stderr}");
            let prefix = format!("{}:{line}:", path.display());
            assert!(
                stderr
                    .lines()
                    .any(|l| l.starts_with(&prefix) && l.contains(wrong)),
                "`{subcommand}`: no {prefix:?}…{wrong:?} line in:\n{stderr}"
            );
        }
        assert!(!dir.path().join("ctl.sock").exists());
    }
}

/// Never checkpointing is legal: `check` prints a warning line with its place and still
/// exits 0, and `run` logs the same warning.
#[test]
fn never_checkpointing_is_a_warning_from_check_and_run() {
    let dir = tempfile::tempdir().expect("tempdir");
    let tail = "[defaults]\ncheckpoint_every = 0\ncheckpoint_interval = \"0s\"\n\n\
                [[actor]]\nname = \"c\"\nkind = \"counter\"\n";
    let (path, text) = write_config(dir.path(), tail);
    let (code, stderr) = run_in(dir.path(), "check", &path);
    assert_eq!(code, Some(0), "stderr:\n{stderr}");
    let warning = format!(
        "{}:{}:20: warning: [defaults] checkpoint_every: 0 with checkpoint_interval \"0s\" \
         never checkpoints the state by itself",
        path.display(),
        line_of(&text, "checkpoint_every")
    );
    assert!(
        stderr.lines().any(|l| l.starts_with(&warning)),
        "no line starting with {warning:?} in:\n{stderr}"
    );

    let sup = crate::util::Supervisor::start(tail);
    let log = sup.log();
    assert!(
        log.lines()
            .any(|l| l.contains("WARN")
                && l.contains("checkpoint_every: 0 with checkpoint_interval")),
        "no warning in the supervisor log:\n{log}"
    );
}

/// `run` without `--config` used to serve zero actors (nothing to reload either); it is a
/// usage error now.
#[test]
fn run_needs_a_config_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = resurgam_cmd(&["run"]);
    cmd.current_dir(dir.path());
    let out = run_with_timeout(cmd, Duration::from_secs(20));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "stderr:\n{stderr}");
    assert!(stderr.contains("--config"), "stderr:\n{stderr}");
    assert!(
        !dir.path().join("resurgam-state").exists(),
        "`run` without a config created a state directory"
    );
}
