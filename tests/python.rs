//! The Python SDK's own unit tests (`python/tests`), run by `cargo test`: `python3 -m
//! unittest discover` from the repository root, against the binary under test
//! (`$RESURGAM_BIN`). The whole output is printed (shown on failure or with
//! `--nocapture`); its summary lines always reach the run's log.

use std::io::Write;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::util::{BIN, SCRUBBED_ENV, run_with_timeout};

/// The repository's root.
const REPO: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/..");
/// Bound of the whole Python run.
const TIMEOUT: Duration = Duration::from_secs(300);

#[test]
fn python_sdk_unit_tests_pass() {
    let repo = Path::new(REPO);
    if let Err(e) = Command::new("python3").arg("--version").output() {
        panic!("the Python SDK's tests need python3 on PATH (CI has it): cannot run python3: {e}");
    }
    let mut cmd = Command::new("python3");
    cmd.args([
        "-m",
        "unittest",
        "discover",
        "-s",
        "python/tests",
        "-t",
        "python",
        "-v",
    ])
    .current_dir(repo)
    .env("RESURGAM_BIN", BIN)
    .env("PYTHONPATH", "python")
    .env("PYTHONDONTWRITEBYTECODE", "1")
    .env("PYTHONUNBUFFERED", "1");
    for var in SCRUBBED_ENV {
        cmd.env_remove(var);
    }
    let start = Instant::now();
    let out = run_with_timeout(cmd, TIMEOUT);
    let took = start.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    println!("--- python3 -m unittest (stdout) ---\n{stdout}");
    println!("--- python3 -m unittest (stderr) ---\n{stderr}");
    // unittest ends with "Ran N tests in Xs" and "OK" / "FAILED (...)": write those past
    // the test harness's capture, so every run's log shows the Python test count.
    let summary: Vec<&str> = stderr
        .lines()
        .filter(|l| l.starts_with("Ran ") || l.starts_with("OK") || l.starts_with("FAILED"))
        .collect();
    let _ = writeln!(
        std::io::stderr(),
        "python SDK unit tests ({:.1}s): {}",
        took.as_secs_f64(),
        summary.join("; ")
    );
    assert!(
        out.status.success(),
        "the Python SDK's unit tests failed ({}); output above",
        out.status
    );
    assert!(
        summary
            .iter()
            .any(|l| l.starts_with("Ran ") && !l.starts_with("Ran 0 ")),
        "unittest found no tests under python/tests"
    );
    // "OK (skipped=N)": a skipped Python test is a skip of this one (a failure in CI).
    if let Some(line) = summary.iter().find(|l| l.contains("skipped=")) {
        crate::util::skip(&format!("Python SDK tests skipped: {line}"));
    }
}
