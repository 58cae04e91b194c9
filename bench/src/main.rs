//! `resurgam-bench` (also run as `resurgam bench`): end-to-end benchmarks of a real
//! supervisor (ARCHITECTURE.md, Testing). A program of its own, so that none of it is in
//! the `resurgam` library or binary it measures.
//!
//! The binary measured is `--binary PATH`, else the `resurgam` next to this program (cargo
//! builds both into the same target directory; `resurgam bench` passes itself). By
//! default every workload starts a supervisor of its own: that binary run as
//! `run --config <tmp>/bench.toml` in a fresh temporary directory, with its JSON log
//! captured there; it is killed and reaped (and its workers with it) when the workload
//! ends. `--socket PATH` measures a running supervisor instead; then only W1 and W2 run,
//! on its ALIVE `counter` actors (they are incremented).
//!
//! * W1 sync call round trip through the control socket with [`resurgam::Client`], and the same
//!   through one `resurgam call` process invocation (the CLI's own cost);
//! * W2 pipelined throughput, 1 actor × 1 client and 8 actors × 8 clients;
//! * W3 recovery after SIGKILL of a worker (kill → next reply) for kv states of 1 KiB,
//!   1 MiB, 64 MiB and 0 / 1,000 / 100,000 logged calls to replay, with the breakdown read
//!   from the supervisor's log; and lost / doubled increments under repeated kills;
//! * W4 scale: 100 and 1,000 actors until all serve, PSS, idle CPU;
//! * W5 checkpoint cost (every call / every 100 / never on a 1 MiB kv; 64 MiB on demand and
//!   the latency of another actor meanwhile);
//! * W6 each durability mode with 1 and 16 clients;
//! * W7 a Python exec actor (the SDK in `python/resurgam`): sync calls, pipelined calls
//!   and recovery after SIGKILL of its program or of its worker with a 1 MiB state, with
//!   the time split into interpreter start, import, load_state and replay. Its rows
//!   name the W1–W3 rows they compare with on Ray (`pairs_with`);
//! * W9 recovery of large call logs after `kill -9` of the supervisor: 1,000,000 logged
//!   calls (all replayed, or a checkpoint near the end), a 3 GiB hole in a segment, a
//!   valid 1 GiB segment; restart → first reply, peak memory (`VmHWM`) of the new
//!   supervisor and worker (`biglog.rs`).
//!
//! Method: each figure is computed once per repeat (a percentile or a rate over many calls,
//! or one recovery), and the report gives the median and [min–max] over the repeats. The
//! client runs in this process, on the same cores as the supervisor and its workers.

mod biglog;
mod harness;
mod load;
mod python;
mod stats;
mod workloads;

use std::fmt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Instant;

use clap::Parser;
use serde::Serialize;

use resurgam::ClientError;

use stats::{Machine, Summary, fmt_num, loadavg};

/// Options of `resurgam-bench` (and of `resurgam bench`, which passes them on).
#[derive(Parser, Debug, Clone)]
#[command(
    name = "resurgam-bench",
    version,
    about = "End-to-end benchmarks (W1–W7, W9) of a resurgam supervisor: a table, or JSON with --json."
)]
pub struct BenchArgs {
    /// The `resurgam` binary to measure (default: `resurgam` in this program's directory).
    #[arg(long, value_name = "PATH")]
    pub binary: Option<PathBuf>,
    /// Measure a running supervisor at this control socket instead of starting one
    /// (W1 and W2 only, on its ALIVE counter actors, which get incremented).
    #[arg(long)]
    pub socket: Option<PathBuf>,
    /// Print the results as JSON on stdout instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Shorter runs (3 repeats, half-length windows) and no 1,000-actor case.
    #[arg(long)]
    pub quick: bool,
    /// Repeats per figure (default 5, or 3 with --quick).
    #[arg(long)]
    pub repeats: Option<usize>,
    /// Run only these workloads (comma-separated, e.g. w1,w3). W9 (large call logs:
    /// minutes, and gigabytes written to the temporary directory) runs only when named.
    #[arg(long, value_delimiter = ',')]
    pub only: Vec<String>,
    /// Durability mode of the actors of W1–W5, W7 and W9 (W6 measures all three; W9 is
    /// skipped in `memory`).
    #[arg(long, value_enum, default_value = "log")]
    pub durability: BenchDurability,
    /// `[supervisor] busy_poll` of the benchmark's supervisors, e.g. `0s` (default: the
    /// product's default).
    #[arg(long, value_name = "DURATION")]
    pub busy_poll: Option<String>,
    /// W7: the Python interpreter (a name looked up in PATH, or a path). The benchmark
    /// runs the interpreter's own `sys.executable`, so a launcher shim (pyenv) is not
    /// part of the figures.
    #[arg(long, default_value = "python3", value_name = "PROGRAM")]
    pub python: String,
    /// W7: the directory holding the SDK package `resurgam/` (default
    /// `$RESURGAM_PYTHON_SDK`, else the `python/` directory of the source tree the
    /// measured binary sits in or this program was built from, else an installed
    /// `resurgam` package).
    #[arg(long, value_name = "DIR")]
    pub python_sdk: Option<PathBuf>,
}

/// `[supervisor] durability` of the benchmark's supervisors.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchDurability {
    Memory,
    Log,
    Fsync,
}

impl BenchDurability {
    fn as_str(self) -> &'static str {
        match self {
            BenchDurability::Memory => "memory",
            BenchDurability::Log => "log",
            BenchDurability::Fsync => "fsync",
        }
    }
}

/// Runs the benchmarks and prints the report.
/// Exit status 0 when every selected workload ran, 1 otherwise (the report still lists
/// what was measured, and why the rest failed); 2 on bad usage.
fn main() -> ExitCode {
    let args = BenchArgs::parse();
    match run(&args) {
        Ok(report) => {
            if args.json {
                match serde_json::to_string_pretty(&report) {
                    Ok(s) => println!("{s}"),
                    Err(e) => {
                        eprintln!("resurgam-bench: cannot encode the report: {e}");
                        return ExitCode::from(1);
                    }
                }
            } else {
                print!("{}", render_table(&report));
            }
            if report.failures.is_empty() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("resurgam-bench: {e}");
            ExitCode::from(if e.usage { 2 } else { 1 })
        }
    }
}

/// An error with the context it happened in.
#[derive(Debug)]
pub struct BenchError {
    message: String,
    usage: bool,
}

impl BenchError {
    pub(crate) fn new(message: impl Into<String>) -> BenchError {
        BenchError {
            message: message.into(),
            usage: false,
        }
    }
}

impl fmt::Display for BenchError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for BenchError {}

impl From<ClientError> for BenchError {
    fn from(e: ClientError) -> Self {
        BenchError::new(format!("control socket: {e}"))
    }
}

pub(crate) type Result<T> = std::result::Result<T, BenchError>;

/// Adds what was being done to an error.
pub(crate) trait Context<T> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn ctx(self, what: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| BenchError::new(format!("{}: {e}", what())))
    }
}

/// Whether a smaller or a larger figure is better (for ratios).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Better {
    Lower,
    Higher,
    /// A count to read as is (e.g. lost calls).
    Neither,
}

/// One figure: median [min–max] over repeats.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Row {
    /// Stable identifier, shared with the Ray side (`bench/ray`) where comparable.
    pub id: String,
    pub workload: &'static str,
    pub label: String,
    pub unit: &'static str,
    pub better: Better,
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub n: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// The id of the row to compare with on the other side when it differs from `id`
    /// (W7's Python actor compares with Ray's W1–W3 rows).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pairs_with: Option<String>,
}

/// The load average around one workload.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct LoadMark {
    pub workload: &'static str,
    pub loadavg_start: Option<[f64; 3]>,
    pub loadavg_end: Option<[f64; 3]>,
    pub seconds: f64,
}

/// A workload that did not complete.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    pub workload: &'static str,
    pub error: String,
}

/// Everything `resurgam bench` measured.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Report {
    pub tool: &'static str,
    pub version: &'static str,
    /// "own supervisor" or the socket measured.
    pub target: String,
    pub durability: BenchDurability,
    pub repeats: usize,
    pub quick: bool,
    pub machine: Machine,
    pub clk_tck: u64,
    pub seconds: f64,
    pub rows: Vec<Row>,
    pub loads: Vec<LoadMark>,
    pub failures: Vec<Failure>,
    /// Workloads that could not run on this machine (e.g. W7 without Python), with why.
    pub skipped: Vec<Failure>,
    pub notes: Vec<String>,
}

/// What the workloads share: options, and where results go.
pub(crate) struct Ctx {
    /// The `resurgam` binary measured (absolute).
    pub exe: PathBuf,
    pub repeats: usize,
    pub quick: bool,
    pub durability: &'static str,
    /// `--busy-poll`.
    pub busy_poll: Option<String>,
    /// W7's `--python` and `--python-sdk`.
    pub python: String,
    pub python_sdk: Option<PathBuf>,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    /// Workloads skipped with the reason.
    pub skipped: Vec<Failure>,
}

impl Ctx {
    /// Records one figure from its per-repeat values (NaNs are ignored; a figure with no
    /// value left is noted as missing).
    pub(crate) fn row(
        &mut self,
        id: impl Into<String>,
        workload: &'static str,
        label: impl Into<String>,
        unit: &'static str,
        better: Better,
        samples: &[f64],
    ) -> Option<&mut Row> {
        let (id, label) = (id.into(), label.into());
        let Some(s) = Summary::of(samples) else {
            self.notes.push(format!("{id}: no value measured"));
            return None;
        };
        self.rows.push(Row {
            id,
            workload,
            label,
            unit,
            better,
            median: s.median,
            min: s.min,
            max: s.max,
            n: s.n,
            note: None,
            pairs_with: None,
        });
        self.rows.last_mut()
    }

    /// Duration of a load window (half with --quick).
    pub(crate) fn window(&self, full_ms: u64) -> std::time::Duration {
        std::time::Duration::from_millis(if self.quick { full_ms / 2 } else { full_ms })
    }
}

/// One workload run against a supervisor of its own.
type Workload = fn(&mut Ctx) -> Result<()>;

const WORKLOADS: [&str; 8] = ["w1", "w2", "w3", "w4", "w5", "w6", "w7", "w9"];

fn run(args: &BenchArgs) -> Result<Report> {
    for o in &args.only {
        if !WORKLOADS.iter().any(|w| w.eq_ignore_ascii_case(o)) {
            return Err(BenchError {
                message: format!("--only: unknown workload {o:?} (expected w1 … w7 or w9)"),
                usage: true,
            });
        }
    }
    if args.repeats == Some(0) {
        return Err(BenchError {
            message: "--repeats must be at least 1".to_string(),
            usage: true,
        });
    }
    let selected =
        |w: &str| args.only.is_empty() || args.only.iter().any(|o| o.eq_ignore_ascii_case(w));
    let exe = measured_binary(args.binary.as_deref())?;
    let mut ctx = Ctx {
        exe,
        repeats: args.repeats.unwrap_or(if args.quick { 3 } else { 5 }),
        quick: args.quick,
        durability: args.durability.as_str(),
        busy_poll: args.busy_poll.clone(),
        python: args.python.clone(),
        python_sdk: args.python_sdk.clone(),
        rows: Vec::new(),
        notes: Vec::new(),
        skipped: Vec::new(),
    };
    if let Some(d) = &args.busy_poll {
        ctx.notes.push(format!(
            "[supervisor] busy_poll = {d:?} in the benchmark's supervisors (--busy-poll)"
        ));
    }
    let mut machine = Machine::probe();
    let started = Instant::now();
    let mut loads = Vec::new();
    let mut failures = Vec::new();
    let mut section = |ctx: &mut Ctx, name: &'static str, f: &dyn Fn(&mut Ctx) -> Result<()>| {
        let load0 = loadavg();
        let t = Instant::now();
        eprintln!(
            "bench: {} … (load {})",
            name.to_uppercase(),
            load0.map_or("?".into(), |l| fmt_num(l[0]))
        );
        if let Err(e) = f(ctx) {
            eprintln!("bench: {} failed: {e}", name.to_uppercase());
            failures.push(Failure {
                workload: name,
                error: e.to_string(),
            });
        }
        loads.push(LoadMark {
            workload: name,
            loadavg_start: load0,
            loadavg_end: loadavg(),
            seconds: t.elapsed().as_secs_f64(),
        });
    };
    let target = match &args.socket {
        Some(socket) => {
            let counters = workloads::external_counters(socket)?;
            if selected("w1") {
                section(&mut ctx, "w1", &|ctx| {
                    // The same ninth counter W2's keyed calls use: its remembered keys
                    // must not weigh on the checkpoints of W2's 8 × 8 plain actors.
                    let keyed = counters.get(8).map(String::as_str);
                    workloads::w1_sync(ctx, socket, &counters[0], keyed)
                });
            }
            if selected("w2") {
                section(&mut ctx, "w2", &|ctx| {
                    // Keyed calls go to a ninth counter, outside the 8 × 8 set.
                    let keyed = counters.get(8).map(String::as_str);
                    let plain = &counters[..counters.len().min(8)];
                    workloads::w2_pipelined(ctx, socket, plain, keyed)
                });
            }
            ctx.notes.push(
                "W3–W7 need a supervisor configured for them: run without --socket".to_string(),
            );
            socket.display().to_string()
        }
        None => {
            let all: [(&'static str, Workload); 8] = [
                ("w1", workloads::w1_own),
                ("w2", workloads::w2_own),
                ("w3", workloads::w3),
                ("w4", workloads::w4_scale),
                ("w5", workloads::w5_checkpoint),
                ("w6", workloads::w6_durability),
                ("w7", python::w7),
                ("w9", biglog::w9),
            ];
            for (name, f) in all {
                // W9 writes gigabytes and takes minutes: only when asked for by name.
                let asked = name != "w9" || !args.only.is_empty();
                if asked && selected(name) {
                    section(&mut ctx, name, &f);
                }
            }
            "own supervisor".to_string()
        }
    };
    machine.loadavg_end = loadavg();
    Ok(Report {
        tool: "resurgam",
        version: env!("CARGO_PKG_VERSION"),
        target,
        durability: args.durability,
        repeats: ctx.repeats,
        quick: ctx.quick,
        machine,
        clk_tck: stats::clk_tck(),
        seconds: started.elapsed().as_secs_f64(),
        rows: ctx.rows,
        loads,
        failures,
        skipped: ctx.skipped,
        notes: ctx.notes,
    })
}

/// The `resurgam` binary to measure, absolute (the SDK search looks above it, and the
/// supervisors run in directories of their own): `--binary`, else the `resurgam` in the
/// directory of this program.
fn measured_binary(flag: Option<&Path>) -> Result<PathBuf> {
    let (path, how) = match flag {
        Some(p) => (p.to_path_buf(), "--binary"),
        None => {
            let me = std::env::current_exe().ctx(|| "locate this program".to_string())?;
            (me.with_file_name("resurgam"), "next to this program")
        }
    };
    let hint = "build it with `cargo build --release -p resurgam`, or pass --binary PATH";
    let exe = path.canonicalize().map_err(|e| {
        BenchError::new(format!(
            "no resurgam binary at {} ({how}): {e}; {hint}",
            path.display()
        ))
    })?;
    if !exe.is_file() {
        return Err(BenchError::new(format!(
            "{} ({how}) is not a file; {hint}",
            exe.display()
        )));
    }
    Ok(exe)
}

/// The human-readable report: a Markdown table, one line per figure.
fn render_table(r: &Report) -> String {
    let mut out = String::new();
    let m = &r.machine;
    let load = |l: Option<[f64; 3]>| l.map_or("?".to_string(), |l| fmt_num(l[0]));
    out.push_str(&format!(
        "resurgam bench ({}; durability {:?} for W1–W5, W7 and W9; {} repeats; {:.0} s)\n",
        r.target,
        r.durability.as_str(),
        r.repeats,
        r.seconds
    ));
    out.push_str(&format!(
        "machine: {} CPUs ({}), {} MiB RAM, Linux {}; load average (1 min) {} at start, {} at end\n",
        m.nproc,
        m.cpu_model.as_deref().unwrap_or("?"),
        m.mem_total_kib.map_or(0, |k| k / 1024),
        m.kernel.as_deref().unwrap_or("?"),
        load(m.loadavg_start),
        load(m.loadavg_end)
    ));
    out.push_str("figures: median [min–max] over repeats\n\n");
    out.push_str("| id | figure | median | [min–max] | unit | n |\n|---|---|---|---|---|---|\n");
    for row in &r.rows {
        let note = row
            .note
            .as_deref()
            .map_or(String::new(), |n| format!(" ({n})"));
        out.push_str(&format!(
            "| {} | {}{} | {} | [{}–{}] | {} | {} |\n",
            row.id,
            row.label,
            note,
            fmt_num(row.median),
            fmt_num(row.min),
            fmt_num(row.max),
            row.unit,
            row.n
        ));
    }
    out.push_str("\n| workload | seconds | load at start | load at end |\n|---|---|---|---|\n");
    for l in &r.loads {
        out.push_str(&format!(
            "| {} | {:.1} | {} | {} |\n",
            l.workload.to_uppercase(),
            l.seconds,
            load(l.loadavg_start),
            load(l.loadavg_end)
        ));
    }
    for n in &r.notes {
        out.push_str(&format!("\nnote: {n}"));
    }
    for f in &r.skipped {
        out.push_str(&format!(
            "\nSKIPPED {}: {}",
            f.workload.to_uppercase(),
            f.error
        ));
    }
    for f in &r.failures {
        out.push_str(&format!(
            "\nFAILED {}: {}",
            f.workload.to_uppercase(),
            f.error
        ));
    }
    out.push('\n');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_binary_is_named() {
        let e = measured_binary(Some(Path::new("/nonexistent/resurgam"))).unwrap_err();
        assert!(
            e.to_string().contains("/nonexistent/resurgam (--binary)"),
            "{e}"
        );
        assert!(!e.usage);
    }
}
