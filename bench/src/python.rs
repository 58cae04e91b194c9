//! W7 of `resurgam bench`: a Python exec actor, written with the SDK in `python/resurgam`,
//! measured like the Rust actors of W1–W3 so that it can stand next to Ray's Python
//! actors.
//!
//! * the interpreter's own start, standalone: `<python> bench_actor.py --probe`, spawn →
//!   the script's first statement, and that statement → `import resurgam` done (also
//!   with the SDK compiled from source at every start, as `PYTHONDONTWRITEBYTECODE=1`
//!   makes it);
//! * sync calls (W1's client and counts) and pipelined calls, 1 actor × 1 client (W2's
//!   window) on a counter;
//! * kill -9 → serving again with 1 MiB of state (W3's 1 MiB case, with 0 and 1,000
//!   calls to replay), killing the program, and separately its worker, with the time
//!   split by the supervisor's log lines and the actor's own (`resurgam-bench start` and
//!   `load` on its stderr, which resurgam logs): detection, worker start up to the
//!   script's first statement, imports, hello and the `L` frame, `load_state`, the rest
//!   of the restore, replay.
//!
//! The actor is `bench/python/bench_actor.py`, embedded in this program and written into a
//! temporary directory. The interpreter is `--python` (default `python3`), run as its
//! own `sys.executable` (so a launcher such as a pyenv shim is not measured), with a
//! bytecode cache of the benchmark's own (`PYTHONPYCACHEPREFIX`, filled once, as an
//! installed package has one); the SDK is found as [`find_sdk`] says. When either is
//! missing, W7 is skipped with the reason (listed in the report's `skipped`), and the
//! other workloads still count as run.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;
use serde::Deserialize;
use serde_json::{Value, json};

use resurgam::Client;

use super::harness::{ActorConf, LogTail, Sup, toml_string};
use super::load::{Until, pipeline, sync_calls};
use super::stats::{p50_p99, percentile, proc_stat, unix_micros};
use super::workloads::{MIB, WINDOW, check_no_errors, fill_kv, ms, put_n, start};
use super::{BenchError, Better, Context, Ctx, Failure, Result};

/// The actor program.
const SCRIPT: &str = include_str!("../python/bench_actor.py");
/// Prefix of the actor's timing lines on stderr (`TAG` in the script).
const TAG: &str = "resurgam-bench ";
/// Environment variable naming the SDK directory (after `--python-sdk`).
const ENV_SDK: &str = "RESURGAM_PYTHON_SDK";
/// Prints what the benchmark needs to know about an interpreter, and imports the SDK.
const PROBE: &str = "import json, sys\n\
info = {'executable': sys.executable, 'version': sys.version.split()[0]}\n\
import resurgam\n\
info['sdk'] = resurgam.__file__\n\
info['sdk_version'] = getattr(resurgam, '__version__', '?')\n\
print(json.dumps(info))\n";
/// Standalone starts of the interpreter per repeat.
const STARTS_PER_REPEAT: usize = 5;

/// The interpreter and SDK W7 runs with.
struct Python {
    /// The interpreter's `sys.executable`.
    exe: PathBuf,
    version: String,
    /// The directory put on `PYTHONPATH`; `None` when `import resurgam` works as is.
    sdk_dir: Option<PathBuf>,
    /// Where the SDK was found, for the report.
    sdk_origin: String,
    sdk_file: String,
    sdk_version: String,
    /// `PYTHONPYCACHEPREFIX`: the benchmark's own bytecode cache (see [`Python::warm`]).
    pycache: Option<PathBuf>,
}

impl Python {
    /// A command running the interpreter with the SDK importable (and the bytecode cache,
    /// once there is one).
    fn command(&self) -> Command {
        let mut cmd = Command::new(&self.exe);
        if let Some(dir) = &self.sdk_dir {
            cmd.env("PYTHONPATH", dir);
        }
        if let Some(dir) = &self.pycache {
            cmd.env("PYTHONPYCACHEPREFIX", dir);
        }
        cmd.stdin(Stdio::null());
        cmd
    }

    /// Makes the script's imports start from compiled bytecode, as an installed package
    /// does (pip compiles it): a `PYTHONPYCACHEPREFIX` in `dir`, filled by one run of
    /// the script's `--probe` with bytecode writing on. Without it, an environment with
    /// `PYTHONDONTWRITEBYTECODE` set (as on the development machine) compiles the SDK's
    /// sources at every start of the program.
    fn warm(&mut self, dir: &Path, script: &Path) -> Result<()> {
        self.pycache = Some(dir.to_path_buf());
        let out = self
            .command()
            .arg(script)
            .arg("--probe")
            .env_remove("PYTHONDONTWRITEBYTECODE")
            .stderr(Stdio::inherit())
            .output()
            .ctx(|| format!("run {} {} --probe", self.exe.display(), script.display()))?;
        if !out.status.success() {
            return Err(BenchError::new(format!(
                "{} --probe failed: {}",
                script.display(),
                out.status
            )));
        }
        Ok(())
    }

    /// The `[[actor]]` of the benchmark actor.
    fn actor(&self, name: &str, script: &Path) -> ActorConf {
        let command = format!(
            "[{}, {}]",
            toml_string(&self.exe.to_string_lossy()),
            toml_string(&script.to_string_lossy())
        );
        let mut env = Vec::new();
        if let Some(dir) = &self.sdk_dir {
            env.push(format!(
                "PYTHONPATH = {}",
                toml_string(&dir.to_string_lossy())
            ));
        }
        if let Some(dir) = &self.pycache {
            env.push(format!(
                "PYTHONPYCACHEPREFIX = {}",
                toml_string(&dir.to_string_lossy())
            ));
        }
        let a = ActorConf::new(name, "exec").set("command", command);
        if env.is_empty() {
            a
        } else {
            a.set("env", format!("{{ {} }}", env.join(", ")))
        }
    }
}

/// Whether `dir` holds the SDK package.
fn has_sdk(dir: &Path) -> bool {
    dir.join("resurgam").join("__init__.py").is_file()
}

/// The SDK directory and where it came from: `--python-sdk DIR`, else
/// `$RESURGAM_PYTHON_SDK`, else `python/` in a directory above the measured binary (a
/// binary in the repository's `target/`), else `python/` of the source tree this program
/// was built from, if it is still there; `Ok(None)` when none applies (an installed `resurgam`
/// package may still work). A directory named explicitly that has no SDK is an error.
fn find_sdk(ctx: &Ctx) -> std::result::Result<Option<(PathBuf, String)>, String> {
    let named = ctx
        .python_sdk
        .clone()
        .map(|d| (d, "--python-sdk"))
        .or_else(|| {
            std::env::var_os(ENV_SDK)
                .filter(|v| !v.is_empty())
                .map(|v| (PathBuf::from(v), "$RESURGAM_PYTHON_SDK"))
        });
    if let Some((dir, how)) = named {
        return if has_sdk(&dir) {
            // Absolute: the actor runs in the supervisor's temporary directory.
            let dir = dir.canonicalize().unwrap_or(dir);
            let origin = format!("{} ({how})", dir.display());
            Ok(Some((dir, origin)))
        } else {
            Err(format!(
                "{how} names {}, which has no resurgam/__init__.py",
                dir.display()
            ))
        };
    }
    let near_binary = ctx
        .exe
        .ancestors()
        .skip(1)
        .map(|a| a.join("python"))
        .find(|d| has_sdk(d));
    if let Some(dir) = near_binary {
        let origin = format!("{} (next to the measured binary)", dir.display());
        return Ok(Some((dir, origin)));
    }
    let built_from = Path::new(env!("CARGO_MANIFEST_DIR")).join("../python");
    if has_sdk(&built_from) {
        let dir = built_from.canonicalize().unwrap_or(built_from);
        let origin = format!(
            "{} (the source tree this program was built from)",
            dir.display()
        );
        return Ok(Some((dir, origin)));
    }
    Ok(None)
}

#[derive(Deserialize)]
struct ProbeInfo {
    executable: String,
    version: String,
    sdk: String,
    sdk_version: String,
}

/// Finds the interpreter and the SDK, or says why W7 cannot run.
fn find_python(ctx: &Ctx) -> std::result::Result<Python, String> {
    let sdk = find_sdk(ctx)?;
    let mut cmd = Command::new(&ctx.python);
    cmd.args(["-c", PROBE]).stdin(Stdio::null());
    if let Some((dir, _)) = &sdk {
        cmd.env("PYTHONPATH", dir);
    }
    let out = cmd.output().map_err(|e| {
        format!(
            "cannot run the Python interpreter {:?} (--python): {e}",
            ctx.python
        )
    })?;
    let where_ = sdk.as_ref().map_or_else(
        || {
            format!(
                "no SDK directory found (--python-sdk, ${ENV_SDK}, python/ near the measured binary \
                 or in its source tree) and no installed resurgam package"
            )
        },
        |(_, origin)| format!("SDK directory {origin}"),
    );
    if !out.status.success() {
        let stderr = String::from_utf8_lossy(&out.stderr);
        let last = stderr.lines().last().unwrap_or("").trim();
        return Err(format!(
            "{} cannot import resurgam ({last}); {where_}",
            ctx.python
        ));
    }
    let info: ProbeInfo = serde_json::from_slice(&out.stdout).map_err(|e| {
        format!(
            "{}'s answer to the probe is not what it should be ({e}): {}",
            ctx.python,
            String::from_utf8_lossy(&out.stdout).trim()
        )
    })?;
    let (sdk_dir, sdk_origin) = match sdk {
        Some((dir, origin)) => (Some(dir), origin),
        None => (None, "the installed package".to_string()),
    };
    Ok(Python {
        exe: PathBuf::from(info.executable),
        version: info.version,
        sdk_dir,
        sdk_origin,
        sdk_file: info.sdk,
        sdk_version: info.sdk_version,
        pycache: None,
    })
}

/// W7: see the module doc.
pub(crate) fn w7(ctx: &mut Ctx) -> Result<()> {
    let mut py = match find_python(ctx) {
        Ok(py) => py,
        Err(reason) => {
            eprintln!("bench: W7 skipped: {reason}");
            ctx.skipped.push(Failure {
                workload: "w7",
                error: reason,
            });
            return Ok(());
        }
    };
    ctx.notes.push(format!(
        "W7: Python {} ({}), SDK resurgam-python {} from {} ({})",
        py.version,
        py.exe.display(),
        py.sdk_version,
        py.sdk_origin,
        py.sdk_file
    ));
    let dir = tempfile::Builder::new()
        .prefix("resurgam-bench-py-")
        .tempdir()
        .ctx(|| "create a temporary directory".to_string())?;
    let script = dir.path().join("bench_actor.py");
    fs::write(&script, SCRIPT).ctx(|| format!("write {}", script.display()))?;

    py.warm(&dir.path().join("pycache"), &script)?;
    uncompiled_import(ctx, &py, &script, &dir.path().join("pycache-no-sdk"))?;
    interpreter_start(ctx, &py, &script)?;
    let actors = vec![
        py.actor("py", &script),
        // As W3's kv: no automatic checkpoint, and every kill below is the first quick
        // death (past min_uptime), so the restart backoff is zero.
        py.actor("pykv", &script)
            .set("checkpoint_every", "0")
            .set_str("checkpoint_interval", "0s")
            .set_str("min_uptime", "20ms"),
    ];
    let sup = start(ctx, actors, true)?;
    sync(ctx, &sup)?;
    pipelined(ctx, &sup)?;
    recovery(ctx, &sup)
}

/// One standalone start of `script --probe`: (spawn → first statement, imports, spawn →
/// exit), in ms.
fn probe_once(mut cmd: Command, script: &Path) -> Result<(f64, f64, f64)> {
    #[derive(Deserialize)]
    struct Probe {
        main: f64,
        imported: f64,
    }
    let wall0 = SystemTime::now();
    let t0 = Instant::now();
    let out = cmd
        .arg(script)
        .arg("--probe")
        .stderr(Stdio::inherit())
        .output()
        .ctx(|| format!("run {} --probe", script.display()))?;
    let whole = ms(t0.elapsed());
    if !out.status.success() {
        return Err(BenchError::new(format!(
            "{} --probe failed: {}",
            script.display(),
            out.status
        )));
    }
    let p: Probe = serde_json::from_slice(&out.stdout)
        .ctx(|| format!("{} --probe printed no times", script.display()))?;
    let wall0 = unix_micros(wall0) as f64 / 1e6;
    Ok(((p.main - wall0) * 1e3, (p.imported - p.main) * 1e3, whole))
}

/// The p50 of [`STARTS_PER_REPEAT`] probes, per repeat, of each of the three figures.
fn probe_repeats(ctx: &Ctx, script: &Path, cmd: impl Fn() -> Command) -> Result<[Vec<f64>; 3]> {
    let mut all: [Vec<f64>; 3] = Default::default();
    for _ in 0..ctx.repeats {
        let mut one: [Vec<f64>; 3] = Default::default();
        for _ in 0..STARTS_PER_REPEAT {
            let (s, i, w) = probe_once(cmd(), script)?;
            one[0].push(s);
            one[1].push(i);
            one[2].push(w);
        }
        for (v, a) in one.iter_mut().zip(all.iter_mut()) {
            v.sort_by(f64::total_cmp);
            a.push(percentile(v, 0.5));
        }
    }
    Ok(all)
}

/// The imports when the SDK is compiled at every start, as with a source checkout and
/// `PYTHONDONTWRITEBYTECODE=1` (the development machine's environment): the warm cache
/// without the SDK's files (copied to `dir`), and no writing. Only with an SDK directory
/// (an installed package has its bytecode).
fn uncompiled_import(ctx: &mut Ctx, py: &Python, script: &Path, dir: &Path) -> Result<()> {
    let (Some(sdk), Some(cache)) = (&py.sdk_dir, &py.pycache) else {
        return Ok(());
    };
    copy_tree(cache, dir).ctx(|| format!("copy {} to {}", cache.display(), dir.display()))?;
    // The cache mirrors absolute source paths under its root.
    let sdk_in_cache = dir.join(sdk.strip_prefix("/").unwrap_or(sdk));
    if sdk_in_cache.exists() {
        fs::remove_dir_all(&sdk_in_cache).ctx(|| format!("remove {}", sdk_in_cache.display()))?;
    }
    let [_, import, _] = probe_repeats(ctx, script, || {
        let mut cmd = py.command();
        cmd.env("PYTHONPYCACHEPREFIX", dir)
            .env("PYTHONDONTWRITEBYTECODE", "1");
        cmd
    })?;
    ctx.row(
        "w7.python.import_uncompiled_ms",
        "W7",
        format!(
            "python start, standalone: the script's imports with the SDK compiled from source \
             at every start (PYTHONDONTWRITEBYTECODE=1; stdlib from bytecode; p50 of \
             {STARTS_PER_REPEAT} per repeat)"
        ),
        "ms",
        Better::Lower,
        &import,
    );
    Ok(())
}

/// Copies the directory tree `from` to `to` (files and directories only).
fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    fs::create_dir_all(to)?;
    for entry in fs::read_dir(from)? {
        let entry = entry?;
        let target = to.join(entry.file_name());
        let kind = entry.file_type()?;
        if kind.is_dir() {
            copy_tree(&entry.path(), &target)?;
        } else if kind.is_file() {
            fs::copy(entry.path(), &target)?;
        }
    }
    Ok(())
}

/// The script's start-up, standalone: spawn → first statement → imports done.
fn interpreter_start(ctx: &mut Ctx, py: &Python, script: &Path) -> Result<()> {
    let [start, import, whole] = probe_repeats(ctx, script, || py.command())?;
    let what = format!("p50 of {STARTS_PER_REPEAT} per repeat; SDK and stdlib from bytecode");
    ctx.row(
        "w7.python.start_ms",
        "W7",
        format!("python start, standalone: spawn → the script's first statement ({what})"),
        "ms",
        Better::Lower,
        &start,
    );
    ctx.row(
        "w7.python.import_ms",
        "W7",
        "  the script's imports (resurgam SDK, json, pickle)",
        "ms",
        Better::Lower,
        &import,
    );
    ctx.row(
        "w7.python.probe_process_ms",
        "W7",
        "  the whole `bench_actor.py --probe` process, spawn → exit",
        "ms",
        Better::Lower,
        &whole,
    );
    Ok(())
}

/// Sync calls to the Python counter, as W1.
fn sync(ctx: &mut Ctx, sup: &Sup) -> Result<()> {
    let mut c = sup.client()?;
    let calls = if ctx.quick { 1000 } else { 3000 };
    sync_calls(&mut c, "py", "incr", Until::Count(500), false, |_| {
        Value::Null
    })?;
    let (mut p50, mut p99, mut rate) = (Vec::new(), Vec::new(), Vec::new());
    for _ in 0..ctx.repeats {
        let o = sync_calls(&mut c, "py", "incr", Until::Count(calls), false, |_| {
            Value::Null
        })?;
        check_no_errors(&o, "W7 sync")?;
        rate.push(o.rate());
        let (a, b) = p50_p99(o.latencies_us);
        p50.push(a);
        p99.push(b);
    }
    let rows = [
        (
            "w7.sync.p50_us",
            "w1.sync.p50_us",
            format!(
                "Python exec actor: sync call p50 (Rust client, 1 connection, {calls} calls per repeat)"
            ),
            "µs",
            Better::Lower,
            p50,
        ),
        (
            "w7.sync.p99_us",
            "w1.sync.p99_us",
            "Python exec actor: sync call p99".to_string(),
            "µs",
            Better::Lower,
            p99,
        ),
        (
            "w7.sync.calls_per_s",
            "w1.sync.calls_per_s",
            "Python exec actor: sync calls/s, 1 client".to_string(),
            "calls/s",
            Better::Higher,
            rate,
        ),
    ];
    for (id, pair, label, unit, better, v) in rows {
        if let Some(row) = ctx.row(id, "W7", label, unit, better, &v) {
            row.pairs_with = Some(pair.to_string());
        }
    }
    Ok(())
}

/// Pipelined calls to the Python counter, 1 actor × 1 client, as W2.
fn pipelined(ctx: &mut Ctx, sup: &Sup) -> Result<()> {
    let window = ctx.window(1000);
    let mut c = sup.client()?;
    pipeline(
        &mut c,
        "py",
        "incr",
        WINDOW,
        Until::for_duration(window / 4),
        |_| Value::Null,
    )?;
    let mut rate = Vec::new();
    for _ in 0..ctx.repeats {
        let o = pipeline(
            &mut c,
            "py",
            "incr",
            WINDOW,
            Until::for_duration(window),
            |_| Value::Null,
        )?;
        check_no_errors(&o, "W7 pipelined")?;
        rate.push(o.rate());
    }
    if let Some(row) = ctx.row(
        "w7.pipe_1x1.calls_per_s",
        "W7",
        format!("Python exec actor: pipelined, 1 actor × 1 client, window {WINDOW}"),
        "calls/s",
        Better::Higher,
        &rate,
    ) {
        row.pairs_with = Some("w2.pipe_1x1.calls_per_s".to_string());
    }
    Ok(())
}

/// The pid of `actor`'s program while it is ALIVE, checked to be a child of `worker`.
fn program_pid(c: &mut Client, actor: &str, worker: i32) -> Result<i32> {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status = c.status().ctx(|| "status".to_string())?;
        let pid = status["actors"]
            .as_array()
            .and_then(|all| all.iter().find(|a| a["name"] == actor))
            .and_then(|a| a["program_pid"].as_i64())
            .and_then(|p| i32::try_from(p).ok());
        if let Some(pid) = pid
            && matches!(proc_stat(pid), Some((_, ppid, _)) if ppid == worker)
        {
            return Ok(pid);
        }
        if Instant::now() >= deadline {
            return Err(BenchError::new(format!(
                "actor {actor} shows no program pid that is a child of its worker {worker}"
            )));
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One recovery, from the supervisor's log and the actor's timing lines (µs since the
/// epoch).
struct Breakdown {
    died: i64,
    main: i64,
    imported: i64,
    load_start: i64,
    load_end: i64,
    ready: i64,
    replay: u64,
}

/// Seconds since the epoch (the actor's `time.time()`) → µs.
fn secs_to_us(v: &Value) -> Option<i64> {
    v.as_f64().map(|s| (s * 1e6).round() as i64)
}

/// Reads the log until it shows the death of worker `pid`, the new program's start and
/// load lines, and the next 'worker ready' (at most 3 s).
fn read_breakdown(tail: &mut LogTail, actor: &str, pid: i32) -> Option<Breakdown> {
    let (mut started, mut loaded): (Option<Value>, Option<Value>) = (None, None);
    let b =
        super::workloads::read_breakdown_with(tail, actor, pid, Duration::from_secs(3), |msg| {
            if let Some(rest) = msg.strip_prefix(TAG) {
                let (event, body) = rest.split_once(' ').unwrap_or((rest, "null"));
                let body = serde_json::from_str::<Value>(body).ok();
                match event {
                    "start" if started.is_none() => started = body,
                    "load" if loaded.is_none() => loaded = body,
                    _ => {}
                }
            }
            started.is_some() && loaded.is_some()
        })?;
    let (s, l) = (started?, loaded?);
    Some(Breakdown {
        died: b.died,
        main: secs_to_us(&s["main"])?,
        imported: secs_to_us(&s["imported"])?,
        load_start: secs_to_us(&l["start"])?,
        load_end: secs_to_us(&l["end"])?,
        ready: b.ready,
        replay: b.replay,
    })
}

/// kill -9 of the program, then of the worker, → the next reply, 1 MiB of state.
fn recovery(ctx: &mut Ctx, sup: &Sup) -> Result<()> {
    let actor = "pykv";
    let mut c = sup.client()?;
    fill_kv(&mut c, actor, MIB)?;
    for target in ["program", "worker"] {
        for n in [0u64, 1_000] {
            // total, then the parts in order; the parts add up to the total.
            let mut v: [Vec<f64>; 9] = Default::default();
            for _ in 0..ctx.repeats {
                c.call(actor, "put", json!({"key": "n", "value": -1}))?;
                c.checkpoint(actor).ctx(|| format!("checkpoint {actor}"))?;
                if n > 0 {
                    let o = pipeline(&mut c, actor, "put", WINDOW, Until::Count(n), put_n)?;
                    check_no_errors(&o, "W7 calls to replay")?;
                }
                let worker = sup.worker_pid(actor)?;
                let victim = match target {
                    "program" => program_pid(&mut c, actor, worker)?,
                    _ => worker,
                };
                // Past min_uptime (20 ms) since the worker became ready.
                std::thread::sleep(Duration::from_millis(40));
                let mut tail = LogTail::at_end(sup.log_path());
                let wall0 = unix_micros(SystemTime::now());
                let t0 = Instant::now();
                kill(Pid::from_raw(victim), Signal::SIGKILL)
                    .ctx(|| format!("kill -9 {victim} (the {target} of {actor})"))?;
                let got = c
                    .call(actor, "get", json!({"key": "n"}))
                    .ctx(|| format!("first call to {actor} after the kill"))?;
                let dt = t0.elapsed();
                let wall1 = unix_micros(SystemTime::now());
                let expected = if n > 0 { json!(n - 1) } else { json!(-1) };
                if got != expected {
                    return Err(BenchError::new(format!(
                        "{actor} answered {got} after recovery, expected {expected}: state lost or doubled"
                    )));
                }
                v[0].push(ms(dt));
                match read_breakdown(&mut tail, actor, worker) {
                    Some(b) => {
                        let d = |from: i64, to: i64| (to - from) as f64 / 1e3;
                        v[1].push(d(wall0, b.died));
                        v[2].push(d(b.died, b.main));
                        v[3].push(d(b.main, b.imported));
                        v[4].push(d(b.imported, b.load_start));
                        v[5].push(d(b.load_start, b.load_end));
                        v[6].push(d(b.load_end, b.ready));
                        v[7].push(d(b.ready, wall1));
                        v[8].push(b.replay as f64);
                    }
                    None => ctx.notes.push(format!(
                        "W7 {target} kill, n={n}: the log lacks 'worker died' for pid {worker}, \
                         the actor's timing lines or 'worker ready'"
                    )),
                }
            }
            let id = format!("w7.recovery.{target}.1MiB.{n}");
            let whom = match target {
                "program" => "kill -9 of the Python program",
                _ => "kill -9 of its worker (the program dies with it)",
            };
            let labels: [(&str, String); 9] = [
                (
                    "total_ms",
                    format!(
                        "Python exec actor: {whom} → next reply, 1 MiB state, {n} calls to replay"
                    ),
                ),
                ("detect_ms", "  of which kill → 'worker died' logged".into()),
                (
                    "spawn_ms",
                    "  of which → the script's first statement (worker start, checkpoint read, exec, interpreter start)"
                        .into(),
                ),
                ("import_ms", "  of which the script's imports (resurgam SDK)".into()),
                (
                    "hello_ms",
                    "  of which imports done → load_state called (instance, hello, the 1 MiB L frame)"
                        .into(),
                ),
                ("load_state_ms", "  of which load_state (unpickling 1 MiB)".into()),
                (
                    "ready_ms",
                    "  of which load_state done → 'worker ready' logged".into(),
                ),
                (
                    "replay_ms",
                    "  of which 'worker ready' → reply (replay + the call)".into(),
                ),
                ("replayed", "  calls replayed (log field)".into()),
            ];
            for (k, ((suffix, label), values)) in labels.into_iter().zip(&v).enumerate() {
                let (unit, better) = if k == 8 {
                    ("calls", Better::Neither)
                } else {
                    ("ms", Better::Lower)
                };
                let row = ctx.row(format!("{id}.{suffix}"), "W7", label, unit, better, values);
                if let Some(row) = row {
                    if k == 0 && n == 0 {
                        row.pairs_with = Some("w3.recovery.1MiB.0.total_ms".to_string());
                    }
                    if k == 8 {
                        row.note = Some("includes the call sent after the kill".to_string());
                    }
                }
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_actor_config_names_the_interpreter_the_script_and_the_sdk() {
        let py = Python {
            exe: PathBuf::from("/usr/bin/python3"),
            version: "3.11".into(),
            sdk_dir: Some(PathBuf::from("/repo/python")),
            sdk_origin: String::new(),
            sdk_file: String::new(),
            sdk_version: String::new(),
            pycache: Some(PathBuf::from("/tmp/b/pycache")),
        };
        let a = py.actor("py", Path::new("/tmp/b/bench_actor.py"));
        assert_eq!(a.kind, "exec");
        assert_eq!(
            a.keys,
            vec![
                (
                    "command",
                    "[\"/usr/bin/python3\", \"/tmp/b/bench_actor.py\"]".to_string()
                ),
                (
                    "env",
                    "{ PYTHONPATH = \"/repo/python\", PYTHONPYCACHEPREFIX = \"/tmp/b/pycache\" }"
                        .to_string()
                ),
            ]
        );
    }

    #[test]
    fn the_embedded_script_reports_what_the_breakdown_reads() {
        assert!(SCRIPT.contains("TAG = \"resurgam-bench\""));
        assert!(SCRIPT.contains("_report(\"load\""));
        assert!(SCRIPT.contains("\"--probe\""));
    }
}
