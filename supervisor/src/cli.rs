//! The command line: `run`, `check`, and the client subcommands.
//!
//! Exit codes: 0 success; 1 the supervisor answered with an error or could not be
//! reached; 2 bad usage or a bad config file.

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Parser, Subcommand};
use serde_json::Value;

use resurgam_shared::config::{Config, Environment};
use resurgam_worker::Registry;

use crate::client::{Client, ClientError};
use crate::logging::{self, LogFormat};
use crate::shell::forkserver::ForkServer;

#[derive(Parser, Debug)]
#[command(
    name = "resurgam",
    version,
    about = "A multi-process actor supervisor: workers survive kill -9 with no lost and no doubled call."
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where a client subcommand finds the control socket.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SocketArgs {
    /// The control socket (else $RESURGAM_SOCKET, else --config's, else the default).
    #[arg(long, global = true)]
    pub socket: Option<PathBuf>,
    /// A config file to read the socket path from.
    #[arg(long, global = true)]
    pub config: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// The config file (TOML), e.g. examples/demo.toml: the actors to supervise, and
        /// the file `reload` re-reads.
        #[arg(long)]
        config: PathBuf,
        /// Log line format.
        #[arg(long, value_enum, default_value = "text")]
        log_format: LogFormat,
    },
    /// Validate a config file; prints every problem with file, line and reason.
    Check {
        #[arg(long)]
        config: PathBuf,
    },
    /// Call a method of an actor and print the result as JSON.
    Call {
        actor: String,
        method: String,
        /// Arguments as JSON (e.g. 5, '{"key":"a","value":1}').
        args: Option<String>,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Show every actor's state.
    Status {
        /// Print the raw JSON reply.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Checkpoint an actor now (returns once the disk copy is synced).
    Checkpoint {
        actor: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Restart an actor's worker (revives a DEAD actor).
    Restart {
        actor: String,
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Re-read the supervisor's config file and apply it (like SIGHUP).
    Reload {
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Stop the supervisor gracefully.
    Stop {
        #[command(flatten)]
        socket: SocketArgs,
    },
    /// Run the end-to-end benchmarks (W1–W7) of this binary: runs the `resurgam-bench`
    /// program next to it with these arguments (`resurgam bench --help` lists them).
    #[command(disable_help_flag = true)]
    Bench {
        /// Passed on to `resurgam-bench`.
        #[arg(
            trailing_var_arg = true,
            allow_hyphen_values = true,
            value_name = "ARGS"
        )]
        args: Vec<OsString>,
    },
}

/// Runs the command line; `registry` holds the actor kinds this binary knows.
/// `forks`: the fork server, if `main_with` started one already (for `run`).
pub fn main(registry: Registry, forks: Option<ForkServer>) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(2)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    match cli.command {
        Command::Run { config, log_format } => {
            // Before any thread and before the config is in memory: workers are forked
            // from it.
            let forks = forks.unwrap_or_else(|| ForkServer::start(&registry));
            logging::init(log_format);
            forks.log_start();
            let config = match load(&config, &registry) {
                Ok(c) => c,
                Err(code) => return code,
            };
            logging::config_warnings(&config);
            match crate::run::run(config, &registry, forks) {
                Ok(0) => ExitCode::SUCCESS,
                Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(1)),
                Err(e) => {
                    tracing::error!(error = %e, "supervisor failed");
                    eprintln!("resurgam: {e}");
                    ExitCode::from(1)
                }
            }
        }
        Command::Check { config } => match load(&config, &registry) {
            Ok(c) => {
                for w in &c.warnings {
                    eprintln!("{w}");
                }
                println!(
                    "{}: OK ({} actors; socket {})",
                    config.display(),
                    c.actors.len(),
                    c.supervisor.socket.display()
                );
                ExitCode::SUCCESS
            }
            Err(code) => code,
        },
        Command::Call {
            actor,
            method,
            args,
            socket,
        } => {
            let args = match args.as_deref().map(serde_json::from_str::<Value>) {
                None => Value::Null,
                Some(Ok(v)) => v,
                Some(Err(e)) => {
                    eprintln!("resurgam: arguments are not JSON: {e}");
                    return ExitCode::from(2);
                }
            };
            client_cmd(&socket, |c| c.call(&actor, &method, args))
        }
        Command::Status { json, socket } => {
            let socket_path = match socket_path(&socket) {
                Ok(p) => p,
                Err(code) => return code,
            };
            let status = Client::connect(&socket_path).and_then(|mut c| c.status());
            match status {
                Ok(v) if json => {
                    println!("{v}");
                    ExitCode::SUCCESS
                }
                Ok(v) => {
                    print!("{}", render_status(&v));
                    ExitCode::SUCCESS
                }
                Err(e) => report(e),
            }
        }
        Command::Checkpoint { actor, socket } => client_cmd(&socket, |c| c.checkpoint(&actor)),
        Command::Restart { actor, socket } => client_cmd(&socket, |c| c.restart(&actor)),
        Command::Reload { socket } => client_cmd(&socket, |c| c.reload()),
        Command::Stop { socket } => client_cmd(&socket, |c| c.stop()),
        Command::Bench { args } => bench(args),
    }
}

/// The program `resurgam bench` runs, in the directory of this binary.
const BENCH_PROGRAM: &str = "resurgam-bench";

/// `resurgam bench`: replaces this process with `resurgam-bench --binary <this binary>
/// ARGS…` (the harness is a program of its own, so the library carries none of it).
/// Returns only when that cannot be done.
fn bench(args: Vec<OsString>) -> ExitCode {
    let me = match std::env::current_exe() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("resurgam bench: cannot locate this program: {e}");
            return ExitCode::from(1);
        }
    };
    let harness = me.with_file_name(BENCH_PROGRAM);
    if !harness.is_file() {
        eprintln!(
            "resurgam bench: {} is missing: the benchmark harness is a program of its own; \
             build it next to this binary with `cargo build --release -p resurgam-bench` \
             (or run it from where it was built, with --binary {})",
            harness.display(),
            me.display()
        );
        return ExitCode::from(1);
    }
    let mut cmd = std::process::Command::new(&harness);
    let names_binary = args.iter().any(|a| {
        a.to_str()
            .is_some_and(|a| a == "--binary" || a.starts_with("--binary="))
    });
    if !names_binary {
        cmd.arg("--binary").arg(&me);
    }
    let e = cmd.args(&args).exec();
    eprintln!("resurgam bench: cannot run {}: {e}", harness.display());
    ExitCode::from(1)
}

/// Reads and checks a config file as `run` will use it; every problem is printed, one
/// line each, and is exit code 2.
fn load(path: &Path, registry: &Registry) -> Result<Config, ExitCode> {
    let env = Environment::from_process();
    let config = Config::load(path, &env).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        ExitCode::from(2)
    })?;
    let problems = crate::run::check(&config, registry);
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{p}");
        }
        return Err(ExitCode::from(2));
    }
    Ok(config)
}

/// `--socket`, else `$RESURGAM_SOCKET`, else the socket of `--config`, else the default.
pub fn socket_path(args: &SocketArgs) -> Result<PathBuf, ExitCode> {
    if let Some(s) = &args.socket {
        return Ok(s.clone());
    }
    if let Some(s) = std::env::var_os("RESURGAM_SOCKET").filter(|s| !s.is_empty()) {
        return Ok(PathBuf::from(s));
    }
    let env = Environment::from_process();
    match &args.config {
        Some(path) => match Config::load(path, &env) {
            Ok(c) => Ok(c.supervisor.socket),
            Err(errors) => {
                for e in &errors.0 {
                    eprintln!("{e}");
                }
                Err(ExitCode::from(2))
            }
        },
        None => Ok(Config::embedded_defaults(&env).supervisor.socket),
    }
}

fn client_cmd(
    socket: &SocketArgs,
    f: impl FnOnce(&mut Client) -> Result<Value, ClientError>,
) -> ExitCode {
    let path = match socket_path(socket) {
        Ok(p) => p,
        Err(code) => return code,
    };
    match Client::connect(&path).and_then(|mut c| f(&mut c)) {
        Ok(v) => {
            println!("{v}");
            ExitCode::SUCCESS
        }
        Err(e) => report(e),
    }
}

fn report(e: ClientError) -> ExitCode {
    eprintln!("resurgam: {e}");
    ExitCode::from(1)
}

/// The human-readable `status` table.
pub fn render_status(v: &Value) -> String {
    let mut out = String::new();
    let sup = &v["supervisor"];
    out.push_str(&format!(
        "supervisor pid {} {} (up {} ms)\n",
        sup["pid"],
        sup["state"].as_str().unwrap_or("?"),
        sup["uptime_ms"]
    ));
    out.push_str(&format!(
        "{:<20} {:<10} {:<10} {:>8} {:>8} {:>8} {:>10} {:>7} {:>10}  {}\n",
        "ACTOR",
        "KIND",
        "STATE",
        "PID",
        "RESTARTS",
        "GEN",
        "LAST_SEQ",
        "QUEUE",
        "SERVED",
        "LAST_EXIT"
    ));
    let empty = Vec::new();
    for a in v["actors"].as_array().unwrap_or(&empty) {
        let s = |k: &str| match &a[k] {
            Value::String(s) => s.clone(),
            Value::Null => "-".to_string(),
            other => other.to_string(),
        };
        out.push_str(&format!(
            "{:<20} {:<10} {:<10} {:>8} {:>8} {:>8} {:>10} {:>7} {:>10}  {}\n",
            s("name"),
            s("kind"),
            s("state"),
            s("pid"),
            s("restarts"),
            a["checkpoint"]["generation"].to_string(),
            a["checkpoint"]["last_seq"].to_string(),
            s("queue"),
            s("served"),
            s("last_exit"),
        ));
    }
    out
}

/// The config reference table of the README, generated from the config module so the
/// two cannot drift (a test compares them).
pub fn config_reference_markdown() -> String {
    let mut out = String::from("| table | key | default | meaning |\n|---|---|---|---|\n");
    for (table, key, default, meaning) in resurgam_shared::config::reference() {
        out.push_str(&format!(
            "| `{table}` | `{key}` | `{}` | {} |\n",
            default.replace('|', "\\|"),
            meaning.replace('|', "\\|")
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readme_config_reference_matches_the_code() {
        let readme = include_str!("../../README.md");
        let table = config_reference_markdown();
        if !readme.contains(&table) {
            panic!("README.md's config reference is stale; replace the table with:\n{table}");
        }
    }

    #[test]
    fn socket_discovery_prefers_the_flag() {
        let args = SocketArgs {
            socket: Some(PathBuf::from("/x/s.sock")),
            config: Some(PathBuf::from("/nonexistent/c.toml")),
        };
        assert_eq!(socket_path(&args).unwrap(), PathBuf::from("/x/s.sock"));
    }

    #[test]
    fn bench_passes_every_argument_on() {
        let cli =
            Cli::try_parse_from(["resurgam", "bench", "--only", "w1", "--help", "--json"]).unwrap();
        let Command::Bench { args } = cli.command else {
            panic!("not parsed as bench: {:?}", cli.command);
        };
        assert_eq!(args, ["--only", "w1", "--help", "--json"]);
    }

    #[test]
    fn status_table_lists_every_actor() {
        let v = serde_json::json!({
            "supervisor": {"pid": 1, "state": "running", "uptime_ms": 5},
            "actors": [
                {"name": "a", "kind": "counter", "state": "ALIVE", "pid": 7, "restarts": 2,
                 "checkpoint": {"generation": 3, "last_seq": 9}, "queue": 0, "served": 4,
                 "last_exit": "killed by SIGKILL"},
                {"name": "b", "kind": "kv", "state": "DEAD", "pid": null, "restarts": 5,
                 "checkpoint": {"generation": 0, "last_seq": 0}, "queue": 0, "served": 0,
                 "last_exit": null}
            ]
        });
        let t = render_status(&v);
        assert!(t.contains("killed by SIGKILL"));
        assert!(t.lines().any(|l| l.starts_with("b ") && l.contains("DEAD")));
    }
}
