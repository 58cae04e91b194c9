//! The command line: `run`, `check`, and the client subcommands.
//!
//! Exit codes ([`EXIT_CODES`], also in `--help` and docs/cli.md): 0 success; 1 the
//! supervisor answered with an error or the command failed; 2 bad usage or a bad config
//! file; 3 the supervisor cannot be reached or did not answer in time.

use std::ffi::OsString;
use std::io::Write;
use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser, Subcommand};
use serde_json::{Value, json};

use resurgam_shared::config::{Config, Environment};
use resurgam_shared::duration::{format_duration, parse_duration};
use resurgam_shared::export;
use resurgam_worker::Registry;

use crate::client::{Client, ClientError, RetryPolicy, RetryingClient, new_key};
use crate::logging::{self, LogFormat};
use crate::render;
use crate::shell::forkserver::ForkServer;

/// Exit code: the supervisor answered with an error, or the command failed.
pub const EXIT_ERROR: u8 = 1;
/// Exit code: bad usage (clap's), or an invalid config file.
pub const EXIT_USAGE: u8 = 2;
/// Exit code: the supervisor cannot be reached, or did not answer in time.
pub const EXIT_UNREACHABLE: u8 = 3;

/// The exit codes, as `--help` shows them.
pub const EXIT_CODES: &str = "\
Exit codes:
  0  success
  1  the supervisor answered with an error (unknown actor, the actor's error, a stopped
     actor, a refused request), or the command failed (`pid` of an actor without a
     process, a `stop` that did not finish within --timeout, a `start` that did not
     reach ALIVE)
  2  usage error, or an invalid config file (`check`, `run`)
  3  the supervisor cannot be reached (no socket, nobody listening, the connection
     broke) or did not answer within `call --timeout`";

#[derive(Parser, Debug)]
#[command(
    name = "resurgam",
    version,
    about = "A multi-process actor supervisor: workers survive kill -9 with no lost and no doubled call.",
    after_help = EXIT_CODES
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// Where a client subcommand finds the control socket.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct SocketArgs {
    /// The control socket (else $RESURGAM_SOCKET, else --config's, else the default, else
    /// the packaged service's /run/resurgam/control.sock).
    #[arg(long, global = true, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// A config file to read the socket path from.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

/// The options of every client subcommand: the socket, and the output format.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClientArgs {
    /// Print the supervisor's JSON reply instead of a line for people.
    #[arg(long)]
    pub json: bool,
    #[command(flatten)]
    pub socket: SocketArgs,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the supervisor in the foreground.
    Run {
        /// The config file (TOML), e.g. examples/demo.toml: the actors to supervise, and
        /// the file `reload` re-reads.
        #[arg(long, value_name = "FILE")]
        config: PathBuf,
        /// Log format; by default `journal` when stderr is systemd's journal stream
        /// (JOURNAL_STREAM), `text` otherwise.
        #[arg(long, value_enum)]
        log_format: Option<LogFormat>,
    },
    /// Validate a config file; prints every problem with file, line and reason.
    Check {
        /// The config file (TOML) to check.
        #[arg(
            value_name = "FILE",
            required_unless_present = "config",
            conflicts_with = "config"
        )]
        file: Option<PathBuf>,
        /// The config file (TOML) to check (the same as FILE).
        #[arg(long, value_name = "FILE")]
        config: Option<PathBuf>,
    },
    /// Call a method of an actor and print the result as JSON.
    Call {
        /// The actor to call (its `name` in the config).
        actor: String,
        /// The method to call.
        method: String,
        /// The argument: JSON (5, -5, '"two words"', '{"key":"a","value":1}'), or a bare
        /// word, taken as a string (city is "city"). None: the call has no argument.
        #[arg(allow_negative_numbers = true)]
        args: Option<String>,
        /// Give up waiting for the reply after this long (e.g. 500ms, 5s) and exit 3; the
        /// call may still be carried out. Default: wait for the supervisor's answer.
        /// With --retry: the deadline for every attempt together (default 30s).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        timeout: Option<Duration>,
        /// An idempotency key (1-128 printable ASCII characters): the call runs once; the
        /// same call with the same key again gets the first reply without running twice.
        #[arg(long, value_name = "KEY")]
        key: Option<String>,
        /// When the supervisor cannot be reached or the connection is lost before the
        /// reply, or it answers Busy, try again (same key; a fresh one without --key)
        /// until --timeout.
        #[arg(long)]
        retry: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Show every actor's state, or every detail of one actor.
    Status {
        /// Show only this actor, with every detail the supervisor reports about it.
        actor: Option<String>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the pid of an actor's worker process (or of the supervisor).
    Pid {
        /// The actor (without it: the supervisor's own pid).
        actor: Option<String>,
        /// For an exec actor: the pid of its program rather than of its worker.
        #[arg(long, requires = "actor")]
        program: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Write an actor's state to a self-describing, checksummed file (see docs/export-import.md).
    Export {
        /// The actor whose state to export.
        actor: String,
        /// Where to write the file (replaced atomically, mode 0600); `-` or none: stdout.
        #[arg(value_name = "FILE")]
        file: Option<PathBuf>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Install an exported state as an actor's state, in its call order.
    Import {
        /// The actor to give the state to (of the kind the file names).
        actor: String,
        /// A file `resurgam export` wrote; `-`: stdin.
        #[arg(value_name = "FILE")]
        file: PathBuf,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Checkpoint an actor now (returns once the disk copy is synced).
    Checkpoint {
        /// The actor to checkpoint.
        actor: String,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Restart an actor's worker (revives a DEAD actor).
    Restart {
        /// The actor whose worker to restart.
        actor: String,
        /// Revive an actor held DEAD because its state files are damaged or gone: start
        /// it from what is left, accepting the loss (logged).
        #[arg(long)]
        fresh: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the metrics in the Prometheus text format (as `GET /metrics` serves them
    /// when `metrics_listen` is set).
    Metrics {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print the supervisor's recent events (state changes, deaths, recoveries,
    /// checkpoints, poison calls, reloads), one line each; --follow keeps printing new ones.
    Events {
        /// Keep the stream open and print each new event as it happens (until the
        /// supervisor stops, or drops this client for not keeping up).
        #[arg(long, short)]
        follow: bool,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Re-read the supervisor's config file and apply it (like SIGHUP).
    Reload {
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Stop the supervisor gracefully and wait until it has exited; or, with ACTOR, stop
    /// only that actor (its calls fail with ActorStopped until `start ACTOR`).
    Stop {
        /// Stop only this actor: its accepted calls are answered, a final checkpoint is
        /// taken and its worker exits; the supervisor and the other actors run on.
        actor: Option<String>,
        /// Return once the supervisor has accepted the request, without waiting for it
        /// to exit (not with ACTOR).
        #[arg(long, conflicts_with = "actor")]
        no_wait: bool,
        /// How long to wait for the supervisor (or ACTOR) to stop (e.g. 90s). Default:
        /// 60s, or --config's `shutdown_timeout` + 30s when that is longer.
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg)]
        timeout: Option<Duration>,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Start an actor `stop ACTOR` stopped (or revive a DEAD one) and wait until it is
    /// ALIVE.
    Start {
        /// The actor to start.
        actor: String,
        /// Return once the supervisor has accepted the request, without waiting for the
        /// actor to be ALIVE.
        #[arg(long)]
        no_wait: bool,
        /// How long to wait for the actor to be ALIVE (e.g. 5m for a long replay).
        #[arg(long, value_name = "DURATION", value_parser = parse_duration_arg, default_value = "60s")]
        timeout: Duration,
        #[command(flatten)]
        client: ClientArgs,
    },
    /// Print a shell completion script for this CLI (docs/cli.md says how to install it).
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
    /// Print the man page resurgam(1), or write one page per subcommand to a directory.
    Man {
        /// Write resurgam.1 and resurgam-SUBCOMMAND.1 into this directory instead.
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
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

/// clap's value parser for durations (clap shows the error's text).
fn parse_duration_arg(text: &str) -> Result<Duration, resurgam_shared::duration::DurationError> {
    parse_duration(text)
}

/// A command that did not succeed: its exit code, and what to print on stderr (after
/// `resurgam: `) unless it was printed already.
#[derive(Debug)]
pub struct Failure {
    code: u8,
    message: Option<String>,
}

impl Failure {
    fn new(code: u8, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: Some(message.into()),
        }
    }

    /// A failure whose problems were printed already.
    fn printed(code: u8) -> Failure {
        Failure {
            code,
            message: None,
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        match e {
            ClientError::Connect { path, source } => Failure::new(
                EXIT_UNREACHABLE,
                format!(
                    "cannot reach the supervisor at {path}: {source} (is it running? \
                     `resurgam run --config FILE` starts it; --socket or --config says where it listens)"
                ),
            ),
            e if e.is_unreachable() => Failure::new(EXIT_UNREACHABLE, e.to_string()),
            e => Failure::new(EXIT_ERROR, e.to_string()),
        }
    }
}

/// Runs the command line; `registry` holds the actor kinds this binary knows.
/// `forks`: the fork server, if `main_with` started one already (for `run`).
pub fn main(registry: Registry, forks: Option<ForkServer>) -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() {
                ExitCode::from(EXIT_USAGE)
            } else {
                ExitCode::SUCCESS
            };
        }
    };
    let result = match cli.command {
        Command::Run { config, log_format } => return run(&config, log_format, &registry, forks),
        Command::Check { file, config } => match file.or(config) {
            Some(path) => check(&path, &registry),
            None => Err(Failure::new(EXIT_USAGE, "check needs a config FILE")),
        },
        Command::Call {
            actor,
            method,
            args,
            timeout,
            key,
            retry,
            client,
        } => {
            let how = CallOptions {
                timeout,
                key: key.as_deref(),
                retry,
            };
            call(&actor, &method, args.as_deref(), how, &client)
        }
        Command::Status { actor, client } => status(actor.as_deref(), &client),
        Command::Pid {
            actor,
            program,
            client,
        } => pid(actor.as_deref(), program, &client),
        Command::Checkpoint { actor, client } => request(
            &client,
            |c| c.checkpoint(&actor),
            |v| render::checkpoint_line(&actor, v),
        ),
        Command::Restart {
            actor,
            fresh,
            client,
        } => request(
            &client,
            |c| {
                if fresh {
                    c.restart_fresh(&actor)
                } else {
                    c.restart(&actor)
                }
            },
            |_| format!("restarting {actor}"),
        ),
        Command::Export {
            actor,
            file,
            client,
        } => export(&actor, file.as_deref(), &client),
        Command::Import {
            actor,
            file,
            client,
        } => import(&actor, &file, &client),
        Command::Reload { client } => request(&client, |c| c.reload(), render::reload_line),
        Command::Metrics { client } => metrics(&client),
        Command::Events { follow, client } => events(follow, &client),
        Command::Stop {
            actor: Some(actor),
            timeout,
            client,
            ..
        } => stop_actor(&actor, timeout, &client),
        Command::Stop {
            actor: None,
            no_wait,
            timeout,
            client,
        } => stop(no_wait, timeout, &client),
        Command::Start {
            actor,
            no_wait,
            timeout,
            client,
        } => start_actor(&actor, no_wait, timeout, &client),
        Command::Completions { shell } => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "resurgam",
                &mut std::io::stdout(),
            );
            Ok(String::new())
        }
        Command::Man { dir } => man(dir.as_deref()),
        Command::Bench { args } => return bench(args),
    };
    match result {
        Ok(out) => {
            if !out.is_empty() {
                let mut stdout = std::io::stdout().lock();
                // A closed stdout (`resurgam status | head -0`) is not worth a panic.
                let _ = writeln!(stdout, "{}", out.trim_end_matches('\n'));
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if let Some(m) = f.message {
                say_error(&format!("resurgam: {m}"));
            }
            ExitCode::from(f.code)
        }
    }
}

/// `resurgam run`: the supervisor in the foreground.
fn run(
    config: &Path,
    log_format: Option<LogFormat>,
    registry: &Registry,
    forks: Option<ForkServer>,
) -> ExitCode {
    // Before any thread and before the config is in memory: workers are forked from it.
    let forks = forks.unwrap_or_else(|| ForkServer::start(registry));
    logging::init(log_format);
    forks.log_start();
    let config = match load(config, registry) {
        Ok(c) => c,
        Err(f) => return ExitCode::from(f.code),
    };
    logging::config_warnings(&config);
    match crate::run::run(config, registry, forks) {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(u8::try_from(code).unwrap_or(EXIT_ERROR)),
        Err(e) => {
            tracing::error!(error = %e, "supervisor failed");
            say_error(&format!("resurgam: {e}"));
            ExitCode::from(EXIT_ERROR)
        }
    }
}

/// Writes one line to stderr; a closed stderr (`resurgam run … 2>&1 | head -1`) only
/// loses it (`eprintln!` would panic, and exit 101 instead of the failure's code).
fn say_error(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// `resurgam check FILE`: the config as `run` would use it; warnings on stderr.
fn check(path: &Path, registry: &Registry) -> Result<String, Failure> {
    let c = load(path, registry)?;
    for w in &c.warnings {
        eprintln!("{w}");
    }
    let socket = &c.supervisor.socket;
    let absolute = std::path::absolute(socket).unwrap_or_else(|_| socket.clone());
    let mut out = format!(
        "{}: OK ({} actors; socket {})",
        path.display(),
        c.actors.len(),
        absolute.display()
    );
    let defaulted = *socket
        == Config::embedded_defaults(&Environment::from_process())
            .supervisor
            .socket;
    if defaulted && socket.is_relative() {
        out.push_str(&format!(
            "\n  the file names no socket: `run` started in this directory listens there; \
             run by systemd/resurgam.service (RuntimeDirectory=resurgam) it listens on {SERVICE_SOCKET}"
        ));
    }
    Ok(out)
}

/// `call`'s argument: JSON, or else a bare word (text that does not start like JSON
/// would: a quote, a bracket, a brace, a sign or a digit) as a JSON string.
pub fn call_args(text: Option<&str>) -> Result<Value, Failure> {
    let Some(text) = text else {
        return Ok(Value::Null);
    };
    serde_json::from_str(text).or_else(|e| {
        let looks_like_json = text
            .trim_start()
            .starts_with(|c: char| "{[\"-+.".contains(c) || c.is_ascii_digit());
        if looks_like_json {
            Err(Failure::new(
                EXIT_USAGE,
                format!(
                    "the argument {text:?} is not JSON: {e} (a bare word is taken as a string; \
                     quote anything else as JSON, e.g. '\"two words\"')"
                ),
            ))
        } else {
            Ok(Value::String(text.to_string()))
        }
    })
}

/// How `call` makes its call: `--timeout`, `--key`, `--retry`.
#[derive(Debug, Clone, Copy, Default)]
struct CallOptions<'a> {
    timeout: Option<Duration>,
    key: Option<&'a str>,
    retry: bool,
}

fn call(
    actor: &str,
    method: &str,
    args: Option<&str>,
    how: CallOptions,
    client: &ClientArgs,
) -> Result<String, Failure> {
    let args = call_args(args)?;
    if how.retry {
        return call_retrying(actor, method, args, how, client);
    }
    let mut c = connect(&client.socket)?;
    if how.timeout.is_some() {
        c.set_timeout(how.timeout)?;
    }
    let reply = match how.key {
        Some(key) => c.call_keyed(actor, method, args, key),
        None => c.call(actor, method, args),
    };
    let reply = reply.map_err(|e| match how.timeout {
        Some(t) if e.is_timeout() => Failure::new(
            EXIT_UNREACHABLE,
            format!(
                "no reply from the supervisor within {} (call --timeout); the call may \
                 still be carried out",
                format_duration(t)
            ),
        ),
        _ => Failure::from(e),
    })?;
    Ok(reply.to_string())
}

/// `call --retry`: a keyed call through [`RetryingClient`], to the first socket candidate
/// that accepts now (else the first one, which it waits for).
fn call_retrying(
    actor: &str,
    method: &str,
    args: Value,
    how: CallOptions,
    client: &ClientArgs,
) -> Result<String, Failure> {
    let candidates = socket_candidates(&client.socket)?;
    let path = candidates
        .iter()
        .find(|p| Client::connect(p).is_ok())
        .or(candidates.first())
        .ok_or_else(|| Failure::new(EXIT_UNREACHABLE, "no control socket to try"))?;
    let mut policy = RetryPolicy::default();
    if let Some(t) = how.timeout {
        policy.deadline = t;
    }
    let key = how.key.map_or_else(new_key, str::to_string);
    let mut c = RetryingClient::with_policy(path, policy);
    match c.call(actor, method, args, Some(&key)) {
        Ok(reply) => Ok(reply.to_string()),
        Err(e) if e.is_unreachable() || matches!(e, ClientError::Protocol(_)) => Err(Failure::new(
            EXIT_UNREACHABLE,
            format!(
                "no reply within {} (call --retry, {} attempts): {e}; the call may still be \
                 carried out: retry it with --key {key} to have it run at most once",
                format_duration(policy.deadline),
                c.resends() + 1
            ),
        )),
        Err(e) => Err(Failure::from(e)),
    }
}

/// Connects to the socket the options name (the first candidate that accepts).
fn connect(socket: &SocketArgs) -> Result<Client, Failure> {
    Ok(connect_found(socket)?.1)
}

/// One request; its reply as JSON with `--json`, else as `human` renders it.
fn request(
    client: &ClientArgs,
    f: impl FnOnce(&mut Client) -> Result<Value, ClientError>,
    human: impl FnOnce(&Value) -> String,
) -> Result<String, Failure> {
    let v = f(&mut connect(&client.socket)?)?;
    Ok(if client.json {
        v.to_string()
    } else {
        human(&v)
    })
}

/// True when FILE means stdin/stdout.
fn is_stdio(file: Option<&Path>) -> bool {
    file.is_none_or(|f| f.as_os_str() == "-")
}

/// `export ACTOR [FILE]`: the supervisor takes the state in the actor's call order and
/// sends the file back; it is verified here, then written (or printed to stdout).
fn export(actor: &str, file: Option<&Path>, client: &ClientArgs) -> Result<String, Failure> {
    let mut reply = connect(&client.socket)?.export(actor)?;
    let text = reply
        .as_object_mut()
        .and_then(|m| m.remove("file"))
        .and_then(|v| v.as_str().map(str::to_string))
        .ok_or_else(|| Failure::new(EXIT_ERROR, "the export reply has no \"file\" string"))?;
    let bytes = export::base64_decode(&text)
        .map_err(|e| Failure::new(EXIT_ERROR, format!("the export reply's file: {e}")))?;
    export::decode(&bytes)
        .map_err(|e| Failure::new(EXIT_ERROR, format!("the exported file: {e}")))?;
    let path = match file {
        Some(path) if !is_stdio(file) => path,
        _ => {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            out.write_all(&bytes)
                .and_then(|()| out.flush())
                .map_err(|e| Failure::new(EXIT_ERROR, format!("write to stdout: {e}")))?;
            return Ok(String::new());
        }
    };
    write_atomically(path, &bytes)
        .map_err(|e| Failure::new(EXIT_ERROR, format!("write {}: {e}", path.display())))?;
    reply["path"] = json!(path.display().to_string());
    Ok(if client.json {
        reply.to_string()
    } else {
        render::export_line(actor, &reply)
    })
}

/// Writes `bytes` to `path` durably, mode 0600 whatever the umask, never through a
/// symlink: a new temporary file beside it, fsync, rename over `path`, fsync the directory.
fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use resurgam_shared::safefs;
    let name = path.file_name().ok_or_else(|| {
        std::io::Error::new(std::io::ErrorKind::InvalidInput, "the path names no file")
    })?;
    let mut tmp_name = OsString::from(".");
    tmp_name.push(name);
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    safefs::replace_file(path, &safefs::parent_dir(path).join(tmp_name), bytes)
}

/// `import ACTOR FILE`: verifies the file here (a damaged one never leaves this
/// process), then the supervisor checks its kind and puts it in the actor's call order.
fn import(actor: &str, file: &Path, client: &ClientArgs) -> Result<String, Failure> {
    use std::io::Read;
    let mut bytes = Vec::new();
    let read = if is_stdio(Some(file)) {
        std::io::stdin().lock().read_to_end(&mut bytes)
    } else {
        std::fs::File::open(file).and_then(|mut f| f.read_to_end(&mut bytes))
    };
    read.map_err(|e| Failure::new(EXIT_ERROR, format!("read {}: {e}", file.display())))?;
    let decoded = export::decode(&bytes)
        .map_err(|e| Failure::new(EXIT_ERROR, format!("{}: {e}", file.display())))?;
    let size = bytes.len();
    let text = export::base64_encode(&bytes);
    drop(bytes);
    let reply = connect(&client.socket)?
        .import(actor, &text)
        .map_err(|e| match e {
            ClientError::Remote(body) if body.message.contains("max_request_bytes") => {
                Failure::new(
                    EXIT_ERROR,
                    format!(
                        "{body} (the file is {size} bytes, {} in base64: raise [supervisor].max_request_bytes (at most 64 MiB) to import it)",
                        text.len()
                    ),
                )
            }
            e => Failure::from(e),
        })?;
    Ok(if client.json {
        reply.to_string()
    } else {
        render::import_line(actor, &decoded.header, &reply)
    })
}

/// `metrics`: the text as it is (`--json`: as the JSON string of the reply).
fn metrics(client: &ClientArgs) -> Result<String, Failure> {
    let text = connect(&client.socket)?.metrics()?;
    Ok(if client.json {
        Value::String(text).to_string()
    } else {
        text
    })
}

/// `events [--follow]`: the kept events, then (with `--follow`) every new one, each
/// printed as it comes; a line for people, or the event's JSON with `--json`.
fn events(follow: bool, client: &ClientArgs) -> Result<String, Failure> {
    use std::io::Write;
    let mut c = connect(&client.socket)?;
    let ack = c.subscribe()?;
    let mut left = ack["history"].as_u64().unwrap_or(0);
    let mut out = std::io::stdout().lock();
    while follow || left > 0 {
        let event = c.next_event()?;
        left = left.saturating_sub(1);
        let line = if client.json {
            event.to_string()
        } else {
            crate::shell::events::human_line(&event)
        };
        // A closed stdout (`| head`) ends the command quietly.
        if writeln!(out, "{line}").and_then(|()| out.flush()).is_err() {
            return Ok(String::new());
        }
        if event["event"] == "dropped" {
            return Err(Failure::new(
                EXIT_ERROR,
                "the supervisor dropped this subscriber: it did not read its events in time",
            ));
        }
    }
    Ok(String::new())
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
fn load(path: &Path, registry: &Registry) -> Result<Config, Failure> {
    let env = Environment::from_process();
    let config = Config::load(path, &env).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        Failure::printed(EXIT_USAGE)
    })?;
    let problems = crate::run::check(&config, registry);
    if !problems.is_empty() {
        for p in problems {
            eprintln!("{p}");
        }
        return Err(Failure::printed(EXIT_USAGE));
    }
    Ok(config)
}

/// The socket of the packaged service, `systemd/resurgam.service`: its
/// `RuntimeDirectory=resurgam` is `/run/resurgam`, and its config names no socket.
pub const SERVICE_SOCKET: &str = "/run/resurgam/control.sock";

/// Where the client subcommands look for the control socket, in order; the first that
/// accepts a connection is used (docs/cli.md says the same):
/// 1. `--socket PATH`; 2. `$RESURGAM_SOCKET`;
/// 3. with `--config FILE`: the socket that file gives `run`: a path the file sets (a
///    relative one is relative to the file's directory, as for `run`), else the default
///    `<runtime_dir>/control.sock`; when that default is relative (no `state_dir`, no
///    `$STATE_DIRECTORY` or `$RUNTIME_DIRECTORY`), it is relative to where `run` was
///    started: the current directory, then the file's directory, then the packaged
///    service's socket are tried;
/// 4. without `--config`: the default (`$RUNTIME_DIRECTORY`, `$STATE_DIRECTORY`, else
///    `./resurgam-state/run/control.sock`), then the packaged service's socket.
pub fn socket_candidates(args: &SocketArgs) -> Result<Vec<PathBuf>, Failure> {
    let from_env = std::env::var_os("RESURGAM_SOCKET").filter(|s| !s.is_empty());
    socket_candidates_in(args, from_env, &Environment::from_process())
}

/// [`socket_candidates`] with `$RESURGAM_SOCKET` and the systemd directories given.
fn socket_candidates_in(
    args: &SocketArgs,
    from_env: Option<OsString>,
    env: &Environment,
) -> Result<Vec<PathBuf>, Failure> {
    if let Some(s) = &args.socket {
        return Ok(vec![s.clone()]);
    }
    if let Some(s) = from_env {
        return Ok(vec![PathBuf::from(s)]);
    }
    let default = Config::embedded_defaults(env).supervisor.socket;
    let mut candidates = match &args.config {
        Some(path) => {
            let socket = load_quietly(path, env)?.supervisor.socket;
            if socket != default || socket.is_absolute() {
                return Ok(vec![socket]);
            }
            let beside = path.parent().map(|dir| dir.join(&socket));
            std::iter::once(socket).chain(beside).collect()
        }
        None => vec![default.clone()],
    };
    // Only `./resurgam-state` is left: the packaged service may be the one running.
    if default.is_relative() {
        candidates.push(PathBuf::from(SERVICE_SOCKET));
    }
    candidates.dedup();
    Ok(candidates)
}

/// Reads `--config`'s file for its socket; its problems are printed (exit 2).
fn load_quietly(path: &Path, env: &Environment) -> Result<Config, Failure> {
    Config::load(path, env).map_err(|errors| {
        for e in &errors.0 {
            eprintln!("{e}");
        }
        Failure::printed(EXIT_USAGE)
    })
}

/// Connects to the first of [`socket_candidates`] that accepts; returns its path too.
/// When none does, the error names the first, and the others tried.
fn connect_found(args: &SocketArgs) -> Result<(PathBuf, Client), Failure> {
    let candidates = socket_candidates(args)?;
    let mut first_error = None;
    for path in &candidates {
        match Client::connect(path) {
            Ok(c) => return Ok((path.clone(), c)),
            Err(e) => {
                first_error.get_or_insert(e);
            }
        }
    }
    let mut failure = first_error.map_or_else(
        || Failure::new(EXIT_UNREACHABLE, "no control socket to try"),
        Failure::from,
    );
    if candidates.len() > 1
        && let Some(m) = &mut failure.message
    {
        let others: Vec<String> = candidates[1..]
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        m.push_str(&format!("; also tried {}", others.join(", ")));
    }
    Err(failure)
}

/// The status of the actor named `name`, from a `status` reply.
fn actor_status<'v>(status: &'v Value, name: &str) -> Result<&'v Value, Failure> {
    let actors = status["actors"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or(&[]);
    actors.iter().find(|a| a["name"] == name).ok_or_else(|| {
        let names: Vec<&str> = actors.iter().filter_map(|a| a["name"].as_str()).collect();
        Failure::new(
            EXIT_ERROR,
            format!("no actor named {name:?} (actors: {})", names.join(", ")),
        )
    })
}

/// `status [ACTOR]`.
fn status(actor: Option<&str>, client: &ClientArgs) -> Result<String, Failure> {
    let v = connect(&client.socket)?.status()?;
    let Some(name) = actor else {
        return Ok(if client.json {
            v.to_string()
        } else {
            render::status_table(&v)
        });
    };
    match actor_status(&v, name)? {
        a if client.json => Ok(a.to_string()),
        Value::Object(a) => Ok(render::actor_details(a)),
        other => Err(Failure::new(
            EXIT_ERROR,
            format!("malformed status of actor {name:?}: {other}"),
        )),
    }
}

/// `pid [ACTOR] [--program]`.
fn pid(actor: Option<&str>, program: bool, client: &ClientArgs) -> Result<String, Failure> {
    let v = connect(&client.socket)?.pid(actor)?;
    let (pid, what) = match actor {
        None => (&v["pid"], "the supervisor".to_string()),
        Some(name) if program => (&v["program_pid"], format!("actor {name:?}'s program")),
        Some(name) => (&v["pid"], format!("actor {name:?}'s worker")),
    };
    match pid.as_u64() {
        Some(p) if client.json => Ok(json!({ "pid": p }).to_string()),
        Some(p) => Ok(p.to_string()),
        None => {
            let state = v["state"].as_str().unwrap_or("?");
            let why = match (program, actor) {
                (true, Some(name)) => {
                    let status = connect(&client.socket)?.status()?;
                    let kind = actor_status(&status, name)?["kind"].clone();
                    match kind.as_str() {
                        Some(kind) if kind != "exec" => format!(
                            "only exec actors run a program of their own (this one is a {kind})"
                        ),
                        _ => format!("state {state}"),
                    }
                }
                _ => format!("state {state}"),
            };
            Err(Failure::new(
                EXIT_ERROR,
                format!("{what} has no process now ({why})"),
            ))
        }
    }
}

/// How long `stop` waits by default: 60 s, or --config's `shutdown_timeout` + 30 s when
/// that is longer.
fn default_stop_timeout(socket: &SocketArgs) -> Duration {
    let base = Duration::from_secs(60);
    let config = socket
        .config
        .as_ref()
        .and_then(|path| Config::load(path, &Environment::from_process()).ok());
    config.map_or(base, |c| {
        base.max(c.supervisor.shutdown_timeout + Duration::from_secs(30))
    })
}

/// The start time (field 22 of /proc/PID/stat) of process `pid` while it runs and is
/// not a zombie: with the pid, it names that process and no later one that reuses it.
fn process_start(pid: u32) -> Option<u64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name (field 2) may hold spaces and parentheses: split after the last ')'.
    let rest = text.get(text.rfind(')')? + 1..)?;
    let mut fields = rest.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    fields.nth(18)?.parse().ok()
}

/// `stop`: asks the supervisor to stop and, unless `no_wait`, waits until its process
/// has exited and its socket refuses connections.
fn stop(no_wait: bool, timeout: Option<Duration>, client: &ClientArgs) -> Result<String, Failure> {
    let (path, mut c) = connect_found(&client.socket)?;
    let pid = c.peer_pid();
    let start = pid.and_then(process_start);
    let mut reply = c.stop()?;
    drop(c);
    let who = pid.map_or_else(
        || "the supervisor".to_string(),
        |p| format!("the supervisor (pid {p})"),
    );
    if !no_wait {
        let timeout = timeout.unwrap_or_else(|| default_stop_timeout(&client.socket));
        let deadline = Instant::now() + timeout;
        let running = || start.is_some() && pid.and_then(process_start) == start;
        while running() || UnixStream::connect(&path).is_ok() {
            if Instant::now() >= deadline {
                return Err(Failure::new(
                    EXIT_ERROR,
                    format!(
                        "{who} accepted `stop` but is still running after {} (stop --timeout)",
                        format_duration(timeout)
                    ),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    if client.json {
        if let Value::Object(m) = &mut reply {
            m.insert("pid".into(), json!(pid));
            m.insert("stopped".into(), json!(!no_wait));
        }
        return Ok(reply.to_string());
    }
    Ok(if no_wait {
        format!("{who} is stopping")
    } else {
        format!("{who} has stopped")
    })
}

/// `stop ACTOR`: returns once the actor's worker has stopped after its final checkpoint.
fn stop_actor(
    actor: &str,
    timeout: Option<Duration>,
    client: &ClientArgs,
) -> Result<String, Failure> {
    let timeout = timeout.unwrap_or_else(|| default_stop_timeout(&client.socket));
    let mut c = connect(&client.socket)?;
    c.set_timeout(Some(timeout))?;
    let v = c.stop_actor(actor).map_err(|e| {
        if e.is_timeout() {
            Failure::new(
                EXIT_ERROR,
                format!(
                    "actor {actor:?} is still stopping after {} (stop --timeout); it stops \
                     once its accepted calls are answered and its final checkpoint is written",
                    format_duration(timeout)
                ),
            )
        } else {
            Failure::from(e)
        }
    })?;
    Ok(if client.json {
        v.to_string()
    } else {
        format!(
            "stopped {actor} (final checkpoint: generation {}, last_seq {}); \
             `resurgam start {actor}` starts it again",
            render::cell(&v["checkpoint"]["generation"]),
            render::cell(&v["checkpoint"]["last_seq"])
        )
    })
}

/// `start ACTOR`: starts it and, unless `no_wait`, waits until it is ALIVE (a DEAD or
/// stopped actor on the way is a failure).
fn start_actor(
    actor: &str,
    no_wait: bool,
    timeout: Duration,
    client: &ClientArgs,
) -> Result<String, Failure> {
    let mut c = connect(&client.socket)?;
    let first = c.start_actor(actor)?;
    let was = first["state"].as_str().unwrap_or("?").to_string();
    if no_wait {
        return Ok(if client.json {
            first.to_string()
        } else {
            format!("starting {actor} ({was})")
        });
    }
    let deadline = Instant::now() + timeout;
    loop {
        let v = c.pid(Some(actor))?;
        let state = v["state"].as_str().unwrap_or("?");
        match state {
            "ALIVE" if client.json => return Ok(v.to_string()),
            "ALIVE" if was == "ALIVE" => {
                return Ok(format!(
                    "{actor} was already running (ALIVE, pid {})",
                    render::cell(&v["pid"])
                ));
            }
            "ALIVE" => {
                return Ok(format!(
                    "started {actor} (ALIVE, pid {})",
                    render::cell(&v["pid"])
                ));
            }
            "DEAD" => {
                let status = c.status()?;
                let reason = actor_status(&status, actor)?["dead_reason"].clone();
                return Err(Failure::new(
                    EXIT_ERROR,
                    format!(
                        "actor {actor:?} did not start: it is DEAD: {}",
                        render::cell(&reason)
                    ),
                ));
            }
            "STOPPED" | "STOPPING" => {
                return Err(Failure::new(
                    EXIT_ERROR,
                    format!("actor {actor:?} was stopped again while starting"),
                ));
            }
            _ => {}
        }
        if Instant::now() >= deadline {
            return Err(Failure::new(
                EXIT_ERROR,
                format!(
                    "actor {actor:?} is still {state} after {} (start --timeout); it keeps \
                     starting (`resurgam status {actor}` shows how far)",
                    format_duration(timeout)
                ),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// `man [--dir DIR]`.
fn man(dir: Option<&Path>) -> Result<String, Failure> {
    let cmd = Cli::command();
    let written = match dir {
        Some(dir) => clap_mangen::generate_to(cmd, dir),
        None => clap_mangen::Man::new(cmd).render(&mut std::io::stdout()),
    };
    written.map_err(|e| {
        let to = dir.map_or_else(|| "stdout".to_string(), |d| d.display().to_string());
        Failure::new(
            EXIT_ERROR,
            format!("cannot write the man page to {to}: {e}"),
        )
    })?;
    Ok(String::new())
}

/// The config reference table of docs/configuration.md, generated from the config module so the
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
    fn docs_config_reference_matches_the_code() {
        let doc = include_str!("../../docs/configuration.md");
        let table = config_reference_markdown();
        if !doc.contains(&table) {
            panic!(
                "docs/configuration.md's config reference is stale; replace the table with:\n{table}"
            );
        }
    }

    #[test]
    fn socket_discovery_prefers_the_flag() {
        let args = SocketArgs {
            socket: Some(PathBuf::from("/x/s.sock")),
            config: Some(PathBuf::from("/nonexistent/c.toml")),
        };
        assert_eq!(
            socket_candidates(&args).unwrap(),
            [PathBuf::from("/x/s.sock")]
        );
    }

    #[test]
    fn socket_discovery_falls_back_to_the_config_directory_and_the_service() {
        let none = SocketArgs::default();
        let bare = Environment::default();
        let default = PathBuf::from("resurgam-state/run/control.sock");
        let service = PathBuf::from(SERVICE_SOCKET);
        assert_eq!(
            socket_candidates_in(&none, None, &bare).unwrap(),
            [default.clone(), service.clone()]
        );
        assert_eq!(
            socket_candidates_in(&none, Some("/e.sock".into()), &bare).unwrap(),
            [PathBuf::from("/e.sock")]
        );
        // Under systemd ($RUNTIME_DIRECTORY) the default is where the service listens.
        let systemd = Environment {
            state_directory: None,
            runtime_directory: Some(PathBuf::from("/run/x")),
        };
        assert_eq!(
            socket_candidates_in(&none, None, &systemd).unwrap(),
            [PathBuf::from("/run/x/control.sock")]
        );
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        std::fs::write(&file, "[[actor]]\nname = \"c\"\nkind = \"counter\"\n").unwrap();
        let with = SocketArgs {
            socket: None,
            config: Some(file.clone()),
        };
        assert_eq!(
            socket_candidates_in(&with, None, &bare).unwrap(),
            [default.clone(), dir.path().join(&default), service]
        );
        // A path the file sets is the only candidate (relative to the file's directory).
        std::fs::write(&file, "[supervisor]\nstate_dir = \"st\"\n").unwrap();
        assert_eq!(
            socket_candidates_in(&with, None, &bare).unwrap(),
            [dir.path().join("st/run/control.sock")]
        );
        std::fs::write(&file, "[supervisor]\nsocket = 5\n").unwrap();
        let e = socket_candidates_in(&with, None, &bare).unwrap_err();
        assert_eq!(e.code, EXIT_USAGE);
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
    fn call_takes_negative_numbers_and_bare_words() {
        let parse = |argv: &[&str]| match Cli::try_parse_from(argv).map(|c| c.command) {
            Ok(Command::Call { args, timeout, .. }) => (args, timeout),
            other => panic!("{argv:?} not parsed as call: {other:?}"),
        };
        let (args, _) = parse(&["resurgam", "call", "alice", "withdraw", "-5"]);
        assert_eq!(call_args(args.as_deref()).unwrap(), json!(-5));
        let (args, _) = parse(&["resurgam", "call", "a", "m", "-1.5", "--socket", "s"]);
        assert_eq!(call_args(args.as_deref()).unwrap(), json!(-1.5));
        let (args, timeout) = parse(&[
            "resurgam",
            "call",
            "--timeout",
            "2s",
            "store",
            "get",
            "city",
        ]);
        assert_eq!(call_args(args.as_deref()).unwrap(), json!("city"));
        assert_eq!(timeout, Some(Duration::from_secs(2)));
        assert_eq!(call_args(None).unwrap(), Value::Null);
        assert_eq!(call_args(Some("true")).unwrap(), json!(true));
        assert_eq!(call_args(Some(r#"{"a":1}"#)).unwrap(), json!({"a": 1}));
        for not_json in ["{oops", "[1,", "\"open", "12abc", "-x"] {
            let e = call_args(Some(not_json)).unwrap_err();
            assert_eq!(e.code, EXIT_USAGE, "{not_json}");
        }
        assert!(Cli::try_parse_from(["resurgam", "call", "a", "m", "--timeout", "soon"]).is_err());
    }

    #[test]
    fn call_takes_a_key_and_retry() {
        let cli = Cli::try_parse_from([
            "resurgam", "call", "c", "incr", "1", "--key", "k-1", "--retry",
        ])
        .unwrap();
        let Command::Call {
            args, key, retry, ..
        } = cli.command
        else {
            panic!("not parsed as call: {:?}", cli.command);
        };
        assert_eq!(
            (args.as_deref(), key.as_deref(), retry),
            (Some("1"), Some("k-1"), true)
        );
        let cli = Cli::try_parse_from(["resurgam", "call", "c", "get"]).unwrap();
        let Command::Call { key, retry, .. } = cli.command else {
            panic!("not parsed as call: {:?}", cli.command);
        };
        assert_eq!((key, retry), (None, false));
    }

    #[test]
    fn check_takes_the_file_as_an_argument_or_with_config() {
        for argv in [
            &["resurgam", "check", "x.toml"][..],
            &["resurgam", "check", "--config", "x.toml"],
        ] {
            match Cli::try_parse_from(argv).map(|c| c.command) {
                Ok(Command::Check { file, config }) => {
                    assert_eq!(file.or(config), Some(PathBuf::from("x.toml")), "{argv:?}")
                }
                other => panic!("{argv:?}: {other:?}"),
            }
        }
        assert!(Cli::try_parse_from(["resurgam", "check"]).is_err());
        assert!(
            Cli::try_parse_from(["resurgam", "check", "a.toml", "--config", "b.toml"]).is_err()
        );
    }

    #[test]
    fn every_argument_has_help() {
        fn walk(cmd: &clap::Command, path: &str, missing: &mut Vec<String>) {
            let path = format!("{path} {}", cmd.get_name());
            if cmd.get_about().is_none() {
                missing.push(path.clone());
            }
            for arg in cmd.get_arguments() {
                let builtin = matches!(arg.get_id().as_str(), "help" | "version");
                if !builtin
                    && arg
                        .get_help()
                        .is_none_or(|h| h.to_string().trim().is_empty())
                {
                    missing.push(format!("{path} {}", arg.get_id()));
                }
            }
            for sub in cmd.get_subcommands() {
                walk(sub, &path, missing);
            }
        }
        let mut missing = Vec::new();
        walk(&Cli::command(), "", &mut missing);
        assert!(missing.is_empty(), "no help text: {missing:?}");
        Cli::command().debug_assert();
    }
}
