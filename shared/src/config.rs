//! The supervisor's config file (TOML): schema, defaults and validation.
//!
//! Three optional tables: `[supervisor]` (directories, control socket, durability),
//! `[defaults]` (the restart/checkpoint [`Policy`] and the worker's user, group and
//! resource [`Limits`] every actor inherits) and any number of `[[actor]]` entries
//! (`name`, `kind`, and any `[defaults]` key as a per-actor override). An actor of kind
//! [`EXEC_KIND`] runs an external program: its own `command`, `env` and `cwd` complete
//! its [`Launch`]. [`reference()`] lists every key with its default and meaning.
//!
//! Parsing never stops at the first mistake: [`Config::parse`] reports every problem it
//! can find as a [`ConfigError`] with file, line and column, so `resurgam check` can show
//! them all at once. Only a TOML syntax error stops the semantic checks (the rest of the
//! document cannot be trusted then). A key with the wrong type or an unknown key is
//! reported and dropped, and the rest of its table is still checked.
//!
//! Relative paths in the file are resolved against the directory of the config file;
//! defaults come from an explicit [`Environment`] so that tests never touch the process
//! environment.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsStr;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use serde::de::{self, Deserializer, Unexpected, Visitor};
use toml::Spanned;
use toml::de::{DeTable, DeValue, ValueDeserializer};

use crate::duration::{format_duration, parse_duration};

mod paths;
pub use paths::{DISK_COPY_SUFFIX, LOCK_FILE, LOG_DIR_SUFFIX, MAX_SOCKET_PATH_BYTES, MMAP_SUFFIX};

/// Default for `[supervisor].max_request_bytes` (1 MiB).
pub const DEFAULT_MAX_REQUEST_BYTES: usize = 1 << 20;
/// Smallest accepted `[supervisor].max_request_bytes`.
pub const MIN_MAX_REQUEST_BYTES: usize = 1024;
/// Largest accepted `[supervisor].max_request_bytes` (64 MiB).
pub const MAX_MAX_REQUEST_BYTES: usize = 64 << 20;
/// Default for `[supervisor].max_queued_reply_bytes` (8 MiB).
pub const DEFAULT_MAX_QUEUED_REPLY_BYTES: u64 = 8 << 20;
/// Default for `[supervisor].max_total_reply_bytes` (64 MiB).
pub const DEFAULT_MAX_TOTAL_REPLY_BYTES: u64 = 64 << 20;
/// Smallest accepted `[supervisor].max_queued_reply_bytes` and `max_total_reply_bytes`.
pub const MIN_REPLY_BUFFER_BYTES: u64 = 64 << 10;
/// Largest accepted `[supervisor].max_queued_reply_bytes` and `max_total_reply_bytes`.
pub const MAX_REPLY_BUFFER_BYTES: u64 = 64 << 30;
/// Default for `idempotency_keys`: keyed calls remembered per actor.
pub const DEFAULT_IDEMPOTENCY_KEYS: u64 = 10_000;
/// Largest accepted `idempotency_keys`.
pub const MAX_IDEMPOTENCY_KEYS: u64 = 1_000_000;
/// Default for `idempotency_bytes` (16 MiB).
pub const DEFAULT_IDEMPOTENCY_BYTES: u64 = 16 << 20;
/// Largest accepted `idempotency_bytes` (1 GiB).
pub const MAX_IDEMPOTENCY_BYTES: u64 = 1 << 30;
/// Smallest accepted `max_reply_bytes`.
pub const MIN_MAX_REPLY_BYTES: u64 = 1024;
/// Largest accepted `max_reply_bytes` (64 MiB, what a worker can send at all).
pub const MAX_MAX_REPLY_BYTES: u64 = crate::ipc::MAX_REPLY_BYTES as u64;
/// Default for `[supervisor].standby_workers`.
pub const DEFAULT_STANDBY_WORKERS: usize = 2;
/// Largest accepted `[supervisor].standby_workers`.
pub const MAX_STANDBY_WORKERS: usize = 64;
/// Default for `[supervisor].busy_poll`.
pub const DEFAULT_BUSY_POLL: Duration = Duration::from_micros(200);
/// Largest accepted `[supervisor].busy_poll`.
pub const MAX_BUSY_POLL: Duration = Duration::from_millis(10);
/// Default for `[supervisor].shutdown_timeout`.
pub const DEFAULT_SHUTDOWN_TIMEOUT: Duration = Duration::from_secs(10);
/// Smallest accepted `[supervisor].shutdown_timeout`: below it even an idle actor's final
/// checkpoint does not make it, and every stop exits 1.
pub const MIN_SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(100);
/// Smallest accepted `startup_timeout`: below it workers are killed before they are
/// ready, again and again.
pub const MIN_STARTUP_TIMEOUT: Duration = Duration::from_millis(100);
/// Smallest accepted `heartbeat_timeout` other than `"0s"` (off): below it a worker
/// that is merely busy is killed as hung.
pub const MIN_HEARTBEAT_TIMEOUT: Duration = Duration::from_millis(100);
/// Default for `[supervisor].socket_mode`.
pub const DEFAULT_SOCKET_MODE: u32 = 0o600;
/// State directory used when neither the file nor `$STATE_DIRECTORY` names one
/// (relative to the working directory).
pub const DEFAULT_STATE_DIR: &str = "resurgam-state";
/// The `path` of [`Config::embedded_defaults`].
pub const EMBEDDED_PATH: &str = "<embedded>";
/// The pattern actor names must match (for messages and docs).
pub const ACTOR_NAME_PATTERN: &str = "[A-Za-z0-9_-]{1,64}";

/// The `kind` of actors whose worker runs an external program (`command`).
pub const EXEC_KIND: &str = "exec";
/// Environment variables resurgam sets for an exec worker itself; `env` may not set them.
pub const RESERVED_ENV: [&str; 2] = [crate::ipc::ENV_PROGRAM_FD, crate::ipc::ENV_ACTOR];
/// Smallest accepted `limit_memory` (16 MiB): below it a process cannot even start.
pub const MIN_LIMIT_MEMORY: u64 = 16 << 20;
/// Largest accepted `limit_open_files` (2^20, the usual kernel maximum `nr_open`).
pub const MAX_LIMIT_OPEN_FILES: u64 = 1 << 20;

/// The bits of `socket_mode` that must be set: the owner's read and write.
const OWNER_READ_WRITE: u32 = 0o600;
/// Largest uid or gid accepted (`(uid_t)-1` is not a real id).
const MAX_UID: i64 = u32::MAX as i64 - 1;
/// The units a size may have, for messages and docs.
const SIZE_UNITS: &str = "B, K or KiB, M or MiB, G or GiB, T or TiB (all powers of 1024)";
/// The key under which toml hands a date/time to a map visitor.
const TOML_DATETIME_FIELD: &str = "$__toml_private_datetime";
/// At most this many syntax errors are reported (later ones are mostly follow-ups).
const MAX_SYNTAX_ERRORS: usize = 20;

/// How calls are logged before they are acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// The call log lives in RAM only (lost if the supervisor dies).
    Memory,
    /// The call log is a file in the page cache (survives process crashes).
    Log,
    /// The call log is fsync'd before replies are released (survives power loss).
    Fsync,
}

impl Durability {
    /// Every value, in order of increasing durability.
    pub const ALL: [Durability; 3] = [Durability::Memory, Durability::Log, Durability::Fsync];

    /// The config spelling: `"memory"`, `"log"` or `"fsync"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Durability::Memory => "memory",
            Durability::Log => "log",
            Durability::Fsync => "fsync",
        }
    }

    /// The inverse of [`Durability::as_str`] (exact, lowercase).
    pub fn from_name(name: &str) -> Option<Durability> {
        Durability::ALL.into_iter().find(|d| d.as_str() == name)
    }
}

impl fmt::Display for Durability {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Restart, retry and checkpoint policy of one actor (`[defaults]` merged with the
/// actor's own overrides).
#[derive(Debug, Clone, PartialEq)]
pub struct Policy {
    /// Restarts allowed within `restart_window`; -1 = unlimited.
    pub max_restarts: i64,
    /// The restart intensity window.
    pub restart_window: Duration,
    /// Attempts for a call that kills its worker; -1 = unlimited, else >= 1.
    pub max_call_retries: i64,
    /// Checkpoint after this many calls; 0 = never by count.
    pub checkpoint_every: u64,
    /// Checkpoint after this much time; zero = never by time.
    pub checkpoint_interval: Duration,
    /// First delay after the second quick restart; doubles each time.
    pub backoff_initial: Duration,
    /// Cap of the exponential backoff (>= `backoff_initial`).
    pub backoff_max: Duration,
    /// A worker alive this long resets the backoff.
    pub min_uptime: Duration,
    /// A worker not ready within this is killed (> 0).
    pub startup_timeout: Duration,
    /// Hang detection; zero = off.
    pub heartbeat_timeout: Duration,
    /// A call's result larger than this is answered with an error (the call ran).
    pub max_reply_bytes: u64,
    /// How this actor's calls are logged.
    pub durability: Durability,
    /// Idempotency keys retained: the last this many keyed calls (0 = keys are not kept).
    pub idempotency_keys: u64,
    /// …and at most this many bytes of their first replies (oldest forgotten first).
    pub idempotency_bytes: u64,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            max_restarts: -1,
            restart_window: Duration::from_secs(60),
            max_call_retries: 3,
            checkpoint_every: 1000,
            checkpoint_interval: Duration::from_secs(1),
            backoff_initial: Duration::from_millis(10),
            backoff_max: Duration::from_secs(1),
            min_uptime: Duration::from_secs(1),
            startup_timeout: Duration::from_secs(10),
            heartbeat_timeout: Duration::from_secs(30),
            max_reply_bytes: DEFAULT_MAX_REQUEST_BYTES as u64,
            durability: Durability::Log,
            idempotency_keys: DEFAULT_IDEMPOTENCY_KEYS,
            idempotency_bytes: DEFAULT_IDEMPOTENCY_BYTES,
        }
    }
}

/// One `[[actor]]` entry, with its effective policy and launch settings.
#[derive(Debug, Clone, PartialEq)]
pub struct ActorConfig {
    /// Unique name, matching [`ACTOR_NAME_PATTERN`].
    pub name: String,
    /// Which actor implementation runs it (checked against the registry elsewhere).
    pub kind: String,
    /// `[defaults]` merged with this actor's overrides.
    pub policy: Policy,
    /// How its worker is started: `[defaults]` (user, group, limits) merged with this
    /// actor's overrides, plus its own `command`, `env` and `cwd`.
    pub launch: Launch,
    /// 1-based line of the `name` value.
    pub line: usize,
    /// 1-based line of the `kind` value.
    pub kind_line: usize,
    /// 1-based line of the `command` value (kind [`EXEC_KIND`] only).
    pub command_line: Option<usize>,
    /// Where the `cwd` value is (1-based line and column), when the actor sets one.
    pub cwd_at: Option<Located<()>>,
}

/// How an actor's worker process is started; a change of any of it needs a new worker
/// (compare with [`Launch::same_settings`], which ignores where values are written).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Launch {
    /// kind = "exec": the program and its arguments (argv, no shell). `None` for every
    /// other kind.
    pub command: Option<Vec<String>>,
    /// kind = "exec": variables added to the program's environment (sorted by name).
    pub env: BTreeMap<String, String>,
    /// kind = "exec": the program's working directory, resolved against the config
    /// file's directory; default (`None`): the config file's directory itself.
    pub cwd: Option<PathBuf>,
    /// Run the worker as this user (a name or a numeric uid, as written; an integer is
    /// kept as its decimal text), any kind.
    pub user: Option<Located<String>>,
    /// Run the worker with this primary group (a name or a numeric gid, as written), any
    /// kind.
    pub group: Option<Located<String>>,
    /// Resource limits applied to the worker before the actor's code runs.
    pub limits: Limits,
}

impl Launch {
    /// True when both start the same worker: equal apart from where in the file `user`
    /// and `group` are written (a line moved by an edit needs no new worker).
    pub fn same_settings(&self, other: &Launch) -> bool {
        let value = |l: &Option<Located<String>>| l.as_ref().map(|l| l.value.clone());
        self.command == other.command
            && self.env == other.env
            && self.cwd == other.cwd
            && value(&self.user) == value(&other.user)
            && value(&self.group) == value(&other.group)
            && self.limits == other.limits
    }
}

/// A config value with its place in the file, for errors found after parsing (e.g. a
/// user that does not exist on this machine).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Located<T> {
    /// The value.
    pub value: T,
    /// 1-based line of the value.
    pub line: usize,
    /// 1-based column (in characters) of the value.
    pub column: usize,
}

/// Resource limits (setrlimit, soft = hard). `None` = inherited from the supervisor.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Limits {
    /// RLIMIT_AS: address space in bytes (>= [`MIN_LIMIT_MEMORY`]).
    pub memory: Option<u64>,
    /// RLIMIT_NOFILE: open files (1 to [`MAX_LIMIT_OPEN_FILES`]).
    pub open_files: Option<u64>,
    /// RLIMIT_CORE: core dump size in bytes (0 = no core dumps).
    pub core: Option<u64>,
    /// RLIMIT_NPROC: processes of the worker's user (>= 1).
    pub processes: Option<u64>,
    /// RLIMIT_CPU: CPU seconds (>= 1; the config's duration rounded up to whole seconds).
    pub cpu_seconds: Option<u64>,
}

/// The `[supervisor]` table with every default filled in and paths resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct SupervisorConfig {
    /// Checkpoints and call logs live here.
    pub state_dir: PathBuf,
    /// Runtime files (the control socket).
    pub runtime_dir: PathBuf,
    /// The control socket path.
    pub socket: PathBuf,
    /// Durability of actors that do not set their own.
    pub durability: Durability,
    /// Maximum size of one control-socket request line.
    pub max_request_bytes: usize,
    /// Replies waiting for one client that does not read them: past this, its requests
    /// are no longer read.
    pub max_queued_reply_bytes: u64,
    /// Replies waiting for all clients together: past this, no client with replies
    /// waiting is read from.
    pub max_total_reply_bytes: u64,
    /// Graceful stop deadline.
    pub shutdown_timeout: Duration,
    /// How long the main loop spins for a worker's answer before it sleeps.
    pub busy_poll: Duration,
    /// Workers started ahead of need, taken by the next actor that needs one.
    pub standby_workers: usize,
    /// Uids allowed on the control socket besides root and the supervisor's own uid.
    pub allowed_uids: Vec<u32>,
    /// Permission bits of the control socket (<= 0o777).
    pub socket_mode: u32,
    /// Start even if `state_dir` or `runtime_dir` is owned by another user or writable
    /// by group or others (refused by default).
    pub allow_shared_dirs: bool,
    /// Where to serve `GET /metrics` over HTTP (None: no HTTP listener).
    pub metrics_listen: Option<std::net::SocketAddr>,
}

/// A validated config.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// The file it came from ([`EMBEDDED_PATH`] for the embedded defaults).
    pub path: PathBuf,
    /// The `[supervisor]` table.
    pub supervisor: SupervisorConfig,
    /// The actors, in file order.
    pub actors: Vec<ActorConfig>,
    /// Legal but risky choices found in the file, in file order (`check` prints them,
    /// `run` and a reload log them).
    pub warnings: Vec<ConfigWarning>,
}

/// One problem found in a config file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The config file.
    pub file: PathBuf,
    /// 1-based line, when the problem has a place.
    pub line: Option<usize>,
    /// 1-based column (in characters), when known.
    pub column: Option<usize>,
    /// What is wrong and what is allowed.
    pub message: String,
}

impl ConfigError {
    /// `FILE:LINE:COL`, or as much of it as is known.
    fn write_place(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        Ok(())
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write_place(f)?;
        write!(f, ": {}", self.message)
    }
}

impl std::error::Error for ConfigError {}

/// A legal but risky choice (never checkpointing, calls kept in memory only): placed and
/// worded like a [`ConfigError`], shown as `FILE:LINE:COL: warning: message`, and never
/// a reason to refuse the file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigWarning(pub ConfigError);

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.write_place(f)?;
        write!(f, ": warning: {}", self.0.message)
    }
}

/// All problems found (validation collects every error, not only the first).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{error}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// Where defaults come from; passed in so tests need not touch the process environment.
#[derive(Debug, Clone, Default)]
pub struct Environment {
    /// `$STATE_DIRECTORY` (first entry): default `state_dir`.
    pub state_directory: Option<PathBuf>,
    /// `$RUNTIME_DIRECTORY` (first entry): default `runtime_dir`.
    pub runtime_directory: Option<PathBuf>,
}

impl Environment {
    /// Reads `STATE_DIRECTORY` and `RUNTIME_DIRECTORY`. systemd may pass several paths
    /// separated by `:`; the first is taken. Empty values count as unset.
    pub fn from_process() -> Self {
        Environment {
            state_directory: std::env::var_os("STATE_DIRECTORY").and_then(|v| first_path(&v)),
            runtime_directory: std::env::var_os("RUNTIME_DIRECTORY").and_then(|v| first_path(&v)),
        }
    }
}

/// The first entry of a `:`-separated path list, or `None` when it is empty.
fn first_path(value: &OsStr) -> Option<PathBuf> {
    #[cfg(unix)]
    let first: PathBuf = {
        use std::os::unix::ffi::OsStrExt;
        let bytes = value.as_bytes();
        let end = bytes.iter().position(|b| *b == b':').unwrap_or(bytes.len());
        PathBuf::from(OsStr::from_bytes(&bytes[..end]))
    };
    #[cfg(not(unix))]
    let first: PathBuf = {
        let text = value.to_string_lossy();
        PathBuf::from(text.split(':').next().unwrap_or_default())
    };
    if first.as_os_str().is_empty() {
        None
    } else {
        Some(first)
    }
}

impl Config {
    /// Reads and parses `path`. An unreadable file is one [`ConfigError`] naming the file
    /// and the OS error.
    pub fn load(path: &Path, env: &Environment) -> Result<Config, ConfigErrors> {
        let bytes = std::fs::read(path).map_err(|e| {
            ConfigErrors(vec![ConfigError {
                file: path.to_path_buf(),
                line: None,
                column: None,
                message: format!("cannot read config file: {e}"),
            }])
        })?;
        Config::parse_bytes(bytes, path, env)
    }

    /// Parses the bytes of a config file as if read from `path`, as [`Config::load`] does
    /// after reading it: bytes that are not UTF-8 are one [`ConfigError`] at the position
    /// of the first bad byte. (The entry point of the config fuzz target, `fuzz/`.)
    pub fn parse_bytes(
        bytes: Vec<u8>,
        path: &Path,
        env: &Environment,
    ) -> Result<Config, ConfigErrors> {
        match String::from_utf8(bytes) {
            Ok(text) => Config::parse(&text, path, env),
            Err(e) => {
                let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
                // The valid prefix is UTF-8, so `position` counts characters correctly.
                let prefix = String::from_utf8_lossy(valid);
                let (line, column) = position(&prefix, prefix.len());
                Err(ConfigErrors(vec![ConfigError {
                    file: path.to_path_buf(),
                    line: Some(line),
                    column: Some(column),
                    message: "config file is not valid UTF-8".to_string(),
                }]))
            }
        }
    }

    /// Parses `text` as if read from `path` (used for error messages and to resolve
    /// relative paths).
    pub fn parse(text: &str, path: &Path, env: &Environment) -> Result<Config, ConfigErrors> {
        let mut cx = Checker {
            text,
            file: path,
            errors: Vec::new(),
            warnings: Vec::new(),
        };
        let mut config = cx.check(env);
        let by_place = |e: &ConfigError| (e.line.unwrap_or(0), e.column.unwrap_or(0));
        if cx.errors.is_empty() {
            cx.warnings.sort_by_key(|w| by_place(&w.0));
            config.warnings = cx.warnings;
            Ok(config)
        } else {
            let mut errors = cx.errors;
            errors.sort_by_key(by_place);
            Err(ConfigErrors(errors))
        }
    }

    /// The config with no file: all defaults, no actors (path = [`EMBEDDED_PATH`]).
    pub fn embedded_defaults(env: &Environment) -> Config {
        let state_dir = env
            .state_directory
            .clone()
            .unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR));
        let runtime_dir = env
            .runtime_directory
            .clone()
            .unwrap_or_else(|| state_dir.join("run"));
        let socket = runtime_dir.join("control.sock");
        Config {
            path: PathBuf::from(EMBEDDED_PATH),
            supervisor: SupervisorConfig {
                state_dir,
                runtime_dir,
                socket,
                durability: Durability::Log,
                max_request_bytes: DEFAULT_MAX_REQUEST_BYTES,
                max_queued_reply_bytes: DEFAULT_MAX_QUEUED_REPLY_BYTES,
                max_total_reply_bytes: DEFAULT_MAX_TOTAL_REPLY_BYTES,
                shutdown_timeout: DEFAULT_SHUTDOWN_TIMEOUT,
                busy_poll: DEFAULT_BUSY_POLL,
                standby_workers: DEFAULT_STANDBY_WORKERS,
                allowed_uids: Vec::new(),
                socket_mode: DEFAULT_SOCKET_MODE,
                allow_shared_dirs: false,
                metrics_listen: None,
            },
            actors: Vec::new(),
            warnings: Vec::new(),
        }
    }

    /// The actor called `name`, if any.
    pub fn actor(&self, name: &str) -> Option<&ActorConfig> {
        self.actors.iter().find(|a| a.name == name)
    }
}

/// True when `name` matches `[A-Za-z0-9_-]{1,64}` (so it can never escape the state
/// directory).
pub fn valid_actor_name(name: &str) -> bool {
    (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
}

/// Every key with its default and meaning, for the docs: (table, key, default as TOML
/// text, meaning). Defaults that depend on the environment or on other keys are written
/// in angle brackets inside the string.
pub fn reference() -> Vec<(&'static str, &'static str, String, &'static str)> {
    let p = Policy::default();
    let dur = |d: Duration| format!("{:?}", format_duration(d));
    vec![
        (
            "supervisor",
            "state_dir",
            format!("{DEFAULT_STATE_DIR:?}"),
            "Directory for checkpoints and call logs; created by run, so it must be a directory \
             or not exist yet. Default: $STATE_DIRECTORY (first entry) if set, else \
             ./resurgam-state in the working directory. A relative path in the file is \
             relative to the config file's directory.",
        ),
        (
            "supervisor",
            "runtime_dir",
            "\"<state_dir>/run\"".to_string(),
            "Directory for runtime files (the memory-mapped checkpoints); like state_dir, a \
             directory or not there yet. Default: $RUNTIME_DIRECTORY (first entry) if set, \
             else <state_dir>/run.",
        ),
        (
            "supervisor",
            "socket",
            "\"<runtime_dir>/control.sock\"".to_string(),
            "Path of the control socket (newline-delimited JSON): at most 107 bytes (the \
             AF_UNIX limit), not a directory nor an existing file other than a socket, and not \
             where run keeps something of its own (the config file, state_dir, runtime_dir, \
             the lock, an actor's checkpoint or call log).",
        ),
        (
            "supervisor",
            "durability",
            format!("{:?}", Durability::Log.as_str()),
            "\"memory\": the call log lives in RAM only; \"log\": in a file in the page cache \
             (survives process crashes); \"fsync\": fsync'd before replies are released \
             (survives power loss). Actors may override it. \"memory\" is legal but gets a \
             warning from check and run: calls since the last checkpoint die with the \
             supervisor.",
        ),
        (
            "supervisor",
            "max_request_bytes",
            DEFAULT_MAX_REQUEST_BYTES.to_string(),
            "Maximum size in bytes of one control-socket request line (1024 to 67108864).",
        ),
        (
            "supervisor",
            "max_queued_reply_bytes",
            format!("\"{}\"", format_size(DEFAULT_MAX_QUEUED_REPLY_BYTES)),
            "Replies one client has not read yet, at most (bytes or a size such as \"8MiB\"; \
             64KiB to 64GiB): past it the client's further requests are not read until it \
             reads its replies, so a client that does not read stalls only itself. A new \
             connection starts with a few requests in flight and gets more as its replies are \
             delivered, so at most a few replies of up to max_reply_bytes each come on top.",
        ),
        (
            "supervisor",
            "max_total_reply_bytes",
            format!("\"{}\"", format_size(DEFAULT_MAX_TOTAL_REPLY_BYTES)),
            "Replies all clients together have not read yet, at most (64KiB to 64GiB, and at \
             least max_queued_reply_bytes): past it no client with replies waiting is read \
             from; clients that read their replies are still served.",
        ),
        (
            "supervisor",
            "shutdown_timeout",
            dur(DEFAULT_SHUTDOWN_TIMEOUT),
            "Deadline for a graceful stop (drain, final checkpoints); a stop that runs out of \
             it kills the remaining workers and exits 1. Allowed: at least \"100ms\".",
        ),
        (
            "supervisor",
            "busy_poll",
            dur(DEFAULT_BUSY_POLL),
            "After sending calls to a worker that usually answers within this time, the main \
             loop waits this long for the answer before it sleeps, and a worker whose calls \
             come back to back waits up to twice this long for the next one; after a \
             worker's death, when calls wait for its replacement, the loop waits this long \
             for the replacement's restore and the replacement twice this long for its first \
             calls; all of them yielding the CPU to any other runnable process meanwhile: lower latency for sync calls at the \
             cost of otherwise idle CPU, none for actors that are slow or idle (\"0s\" = \
             off). Allowed: \"0s\" to \"10ms\".",
        ),
        (
            "supervisor",
            "standby_workers",
            DEFAULT_STANDBY_WORKERS.to_string(),
            "Worker processes started ahead of need: an actor whose worker died (or a new \
             one) takes one that is already running, so a restart costs no process start \
             (0 = off; at most 64).",
        ),
        (
            "supervisor",
            "allowed_uids",
            "[]".to_string(),
            "Uids allowed on the control socket besides root and the supervisor's own uid. Anyone else who connects gets one `Unauthorized` line and is closed; refusals cost no thread, and are logged at most once a second.",
        ),
        (
            "supervisor",
            "socket_mode",
            format!("\"{DEFAULT_SOCKET_MODE:04o}\""),
            "Permission bits of the control socket, an octal string: \"0600\" to \"0777\" with \
             the owner's read and write bits set (without them not even the supervisor's own \
             user could connect).",
        ),
        (
            "supervisor",
            "allow_shared_dirs",
            "false".to_string(),
            "run refuses to start when state_dir or runtime_dir is owned by another user or \
             writable by its group or by everyone: whoever can write there can swap, plant or \
             delete the actors' state. true accepts such a directory (e.g. one group of \
             trusted operators); files and directories run creates are private (0600/0700) \
             either way.",
        ),
        (
            "supervisor",
            "metrics_listen",
            "<none>".to_string(),
            "An IP address and port, e.g. \"127.0.0.1:9464\", where an HTTP listener serves \
             GET /metrics (the Prometheus text format, as the metrics op and `resurgam \
             metrics`); none by default. A non-loopback address is warned about: the \
             endpoint has no authentication. Port 0 takes any free port (logged at start).",
        ),
        (
            "defaults",
            "max_restarts",
            p.max_restarts.to_string(),
            "Restarts allowed within restart_window before the actor is declared dead; \
             -1 = unlimited.",
        ),
        (
            "defaults",
            "restart_window",
            dur(p.restart_window),
            "The restart intensity window. Allowed: at least \"10ms\".",
        ),
        (
            "defaults",
            "max_call_retries",
            p.max_call_retries.to_string(),
            "Attempts for a call whose worker dies while running it; -1 = unlimited, else >= 1.",
        ),
        (
            "defaults",
            "checkpoint_every",
            p.checkpoint_every.to_string(),
            "Checkpoint once this many calls have run since the last one (checked after each \
             batch of calls); 0 = never by count. With checkpoint_interval \"0s\" as well the \
             state is never checkpointed by itself and its call log grows without bound: legal, \
             but check and run print a warning.",
        ),
        (
            "defaults",
            "checkpoint_interval",
            dur(p.checkpoint_interval),
            "Checkpoint after this much time. Allowed: \"0s\" (off) or at least \"10ms\".",
        ),
        (
            "defaults",
            "backoff_initial",
            dur(p.backoff_initial),
            "First delay after the second quick restart; doubles each time. Allowed: at least \
             \"1ms\".",
        ),
        (
            "defaults",
            "backoff_max",
            dur(p.backoff_max),
            "Cap of the exponential restart backoff. Allowed: at least \"1ms\", and >= \
             backoff_initial.",
        ),
        (
            "defaults",
            "min_uptime",
            dur(p.min_uptime),
            "A worker alive this long resets the backoff. Allowed: any duration (\"0s\": every \
             worker that got ready resets it).",
        ),
        (
            "defaults",
            "startup_timeout",
            dur(p.startup_timeout),
            "A worker that is not ready within this is killed. Allowed: at least \"100ms\".",
        ),
        (
            "defaults",
            "heartbeat_timeout",
            dur(p.heartbeat_timeout),
            "Hang detection: a worker that neither answers its calls nor a ping within this \
             (stopped, stuck in a loop) is killed and recovered like a crashed one. Allowed: \
             \"0s\" (off) or at least \"100ms\". A worker busy with calls reports the ones \
             it completed at least every 50 ms, so only a single call running this long \
             counts as a hang; a call killed as hung is dropped (CallFailed) only when it \
             hangs its worker max_call_retries times.",
        ),
        (
            "defaults",
            "max_reply_bytes",
            "\"<[supervisor].max_request_bytes>\"".to_string(),
            "A call whose result is larger than this (bytes or a size such as \"4MiB\"; 1KiB \
             to 512MiB) is answered with an ActorError saying so; the call did run and the \
             actor lives on. Default: the request limit, [supervisor].max_request_bytes.",
        ),
        (
            "defaults",
            "idempotency_keys",
            p.idempotency_keys.to_string(),
            "How many keyed calls (a `call` with a \"key\") the actor remembers: a retry with \
             the key of one of its last idempotency_keys keyed calls gets that call's first \
             reply without running again. 0 to 1000000; 0 keeps none. The keys and their \
             replies are part of every checkpoint. A change applies to the calls accepted \
             after it.",
        ),
        (
            "defaults",
            "idempotency_bytes",
            format!("\"{}\"", format_size(p.idempotency_bytes)),
            "At most this many bytes of remembered keys and first replies per actor (bytes or a \
             size such as \"16MiB\"; 0 to 1GiB): past it the oldest keys are forgotten first, \
             whatever idempotency_keys says.",
        ),
        (
            "defaults",
            "durability",
            "\"<[supervisor].durability>\"".to_string(),
            "Per-actor override of [supervisor].durability: \"memory\" (a warning, as there), \
             \"log\" or \"fsync\".",
        ),
        (
            "defaults",
            "user",
            "\"<the supervisor's user>\"".to_string(),
            "Run the actor's code as this user: a name (\"resurgam\") or a numeric uid \
             (1000); needs a supervisor running as root. Kind exec: the program (its worker \
             keeps the supervisor's identity to write the checkpoint file). Built-in kinds: \
             the worker itself, once its checkpoint file is open; the file cannot grow after \
             that (past 64 KiB or twice the state's size at start, checkpoints fail and the \
             call log keeps the calls), so durability \"memory\" is refused with it.",
        ),
        (
            "defaults",
            "group",
            "\"<the user's primary group>\"".to_string(),
            "Run the actor's code with this primary group (a name or a numeric gid) and no \
             supplementary groups.",
        ),
        (
            "defaults",
            "limit_memory",
            "\"<inherited>\"".to_string(),
            "Address-space limit of the actor's code (RLIMIT_AS; kind exec: the program): bytes, or a size such as \"512MiB\" \
             or \"2G\" (units K/KiB, M/MiB, G/GiB, T/TiB, all powers of 1024); at least \
             16MiB. Allocations beyond it fail (the worker usually dies and is restarted).",
        ),
        (
            "defaults",
            "limit_open_files",
            "\"<inherited>\"".to_string(),
            "Open-file limit of the actor's code (RLIMIT_NOFILE), 1 to 1048576; the worker itself \
             needs a few descriptors.",
        ),
        (
            "defaults",
            "limit_core",
            "\"<inherited>\"".to_string(),
            "Core dump size limit of the actor's code (RLIMIT_CORE), a size like limit_memory; 0 = \
             no core dumps.",
        ),
        (
            "defaults",
            "limit_processes",
            "\"<inherited>\"".to_string(),
            "Process limit (RLIMIT_NPROC, >= 1): counts every process and thread of the \
             worker's user, not only this worker's.",
        ),
        (
            "defaults",
            "limit_cpu",
            "\"<inherited>\"".to_string(),
            "CPU time limit of the actor's code (RLIMIT_CPU), e.g. \"10m\": the total \
             over its life, not per call; the kernel kills it when it is used up and it is \
             restarted. Allowed: at least \"1s\"; rounded up to whole seconds.",
        ),
        (
            "actor",
            "name",
            "\"<required>\"".to_string(),
            "Unique actor name matching [A-Za-z0-9_-]{1,64}. Any [defaults] key may also \
             appear in an [[actor]] table and overrides it for that actor.",
        ),
        (
            "actor",
            "kind",
            "\"<required>\"".to_string(),
            "Which actor implementation runs it, e.g. \"counter\" or \"kv\"; \"exec\" runs \
             an external program (see command).",
        ),
        (
            "actor",
            "command",
            "\"<required for kind exec>\"".to_string(),
            "kind \"exec\" only: the program and its arguments, an argv array (no shell); \
             a relative program path is relative to cwd.",
        ),
        (
            "actor",
            "env",
            "{}".to_string(),
            "kind \"exec\" only: variables added to the program's environment, a table of \
             strings, e.g. { LANG = \"C.UTF-8\" }; RESURGAM_FD and RESURGAM_ACTOR are \
             reserved.",
        ),
        (
            "actor",
            "cwd",
            "\"<the config file's directory>\"".to_string(),
            "kind \"exec\" only: the program's working directory, which must exist (check \
             and run refuse one that does not); a relative path is relative to the config \
             file's directory.",
        ),
    ]
}

// ---------------------------------------------------------------------------------------
// Raw (spanned) schema. Each value keeps its byte span so errors can point at it.

/// A string-typed value whose type errors say what is expected in operator terms.
macro_rules! text_value {
    ($name:ident, $expecting:literal) => {
        #[derive(Debug, Clone)]
        struct $name(String);

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name(v.to_owned()))
                    }
                }
                d.deserialize_str(V)
            }
        }
    };
}

text_value!(
    DurationText,
    "a duration string such as \"10s\" or \"250ms\""
);
text_value!(
    DurabilityText,
    "one of the strings \"memory\", \"log\", \"fsync\""
);
text_value!(ModeText, "a quoted octal string such as \"0600\"");
text_value!(PathText, "a path string");
text_value!(AddrText, "a quoted address such as \"127.0.0.1:9464\"");
text_value!(NameText, "a string");

/// An integer whose type errors say "an integer" rather than "i64".
#[derive(Debug, Clone, Copy)]
struct Int(i64);

impl<'de> Deserialize<'de> for Int {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl Visitor<'_> for V {
            type Value = Int;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an integer")
            }
            fn visit_i64<E: de::Error>(self, v: i64) -> Result<Int, E> {
                Ok(Int(v))
            }
            fn visit_u64<E: de::Error>(self, v: u64) -> Result<Int, E> {
                i64::try_from(v)
                    .map(Int)
                    .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
            }
        }
        d.deserialize_i64(V)
    }
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSupervisor {
    state_dir: Option<Spanned<PathText>>,
    runtime_dir: Option<Spanned<PathText>>,
    socket: Option<Spanned<PathText>>,
    durability: Option<Spanned<DurabilityText>>,
    max_request_bytes: Option<Spanned<Int>>,
    max_queued_reply_bytes: Option<Spanned<SizeValue>>,
    max_total_reply_bytes: Option<Spanned<SizeValue>>,
    shutdown_timeout: Option<Spanned<DurationText>>,
    busy_poll: Option<Spanned<DurationText>>,
    standby_workers: Option<Spanned<Int>>,
    allowed_uids: Option<Vec<Spanned<Int>>>,
    socket_mode: Option<Spanned<ModeText>>,
    allow_shared_dirs: Option<bool>,
    metrics_listen: Option<Spanned<AddrText>>,
}

/// A string or an integer (`user`, `group`, sizes), with a type error that says so.
macro_rules! text_or_int_value {
    ($name:ident, $expecting:literal) => {
        #[derive(Debug, Clone)]
        enum $name {
            Text(String),
            Int(i64),
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                struct V;
                impl Visitor<'_> for V {
                    type Value = $name;
                    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                        f.write_str($expecting)
                    }
                    fn visit_str<E: de::Error>(self, v: &str) -> Result<$name, E> {
                        Ok($name::Text(v.to_owned()))
                    }
                    fn visit_i64<E: de::Error>(self, v: i64) -> Result<$name, E> {
                        Ok($name::Int(v))
                    }
                    fn visit_u64<E: de::Error>(self, v: u64) -> Result<$name, E> {
                        i64::try_from(v)
                            .map($name::Int)
                            .map_err(|_| E::invalid_value(Unexpected::Unsigned(v), &self))
                    }
                }
                d.deserialize_any(V)
            }
        }
    };
}

text_or_int_value!(
    UserValue,
    "a user name or a numeric uid, e.g. \"resurgam\" or 1000"
);
text_or_int_value!(
    GroupValue,
    "a group name or a numeric gid, e.g. \"resurgam\" or 1000"
);
text_or_int_value!(
    SizeValue,
    "a size: a number of bytes or a string such as \"512MiB\""
);

/// Any TOML value: a string, or the name of its type (so that each wrong item of an array
/// or table is reported at its own place instead of dropping the whole key).
#[derive(Debug, Clone)]
enum AnyValue {
    Text(String),
    /// Not a string: "an integer", "a table", ...
    Other(&'static str),
}

impl<'de> Deserialize<'de> for AnyValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = AnyValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("any value")
            }
            fn visit_str<E: de::Error>(self, v: &str) -> Result<AnyValue, E> {
                Ok(AnyValue::Text(v.to_owned()))
            }
            fn visit_bool<E: de::Error>(self, _: bool) -> Result<AnyValue, E> {
                Ok(AnyValue::Other("a boolean"))
            }
            fn visit_i64<E: de::Error>(self, _: i64) -> Result<AnyValue, E> {
                Ok(AnyValue::Other("an integer"))
            }
            fn visit_u64<E: de::Error>(self, _: u64) -> Result<AnyValue, E> {
                Ok(AnyValue::Other("an integer"))
            }
            fn visit_i128<E: de::Error>(self, _: i128) -> Result<AnyValue, E> {
                Ok(AnyValue::Other("an integer"))
            }
            fn visit_u128<E: de::Error>(self, _: u128) -> Result<AnyValue, E> {
                Ok(AnyValue::Other("an integer"))
            }
            fn visit_f64<E: de::Error>(self, _: f64) -> Result<AnyValue, E> {
                Ok(AnyValue::Other("a float"))
            }
            fn visit_seq<A: de::SeqAccess<'de>>(self, mut seq: A) -> Result<AnyValue, A::Error> {
                while seq.next_element::<de::IgnoredAny>()?.is_some() {}
                Ok(AnyValue::Other("an array"))
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<AnyValue, A::Error> {
                let mut datetime = false;
                while let Some(key) = map.next_key::<String>()? {
                    datetime |= key == TOML_DATETIME_FIELD;
                    map.next_value::<de::IgnoredAny>()?;
                }
                Ok(AnyValue::Other(if datetime {
                    "a date/time"
                } else {
                    "a table"
                }))
            }
        }
        d.deserialize_any(V)
    }
}

/// `command`: an array whose items are checked one by one.
#[derive(Debug, Clone)]
struct CommandValue(Vec<Spanned<AnyValue>>);

impl<'de> Deserialize<'de> for CommandValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = CommandValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("an array of strings (the program and its arguments), e.g. [\"python3\", \"bank.py\"]")
            }
            fn visit_seq<A: de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<CommandValue, A::Error> {
                let mut items = Vec::new();
                while let Some(item) = seq.next_element()? {
                    items.push(item);
                }
                Ok(CommandValue(items))
            }
        }
        d.deserialize_seq(V)
    }
}

/// `env`: a table whose names and values are checked one by one.
#[derive(Debug, Clone)]
struct EnvValue(Vec<(Spanned<String>, Spanned<AnyValue>)>);

impl<'de> Deserialize<'de> for EnvValue {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = EnvValue;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a table of strings, e.g. env = { LANG = \"C.UTF-8\" }")
            }
            fn visit_map<A: de::MapAccess<'de>>(self, mut map: A) -> Result<EnvValue, A::Error> {
                let mut entries = Vec::new();
                // A TOML table's keys are always strings that know their span; toml's
                // date/time is the only map whose key is not, so that is what failed.
                let date_time = |_| de::Error::invalid_type(Unexpected::Other("date/time"), &V);
                while let Some(key) = map.next_key::<Spanned<String>>().map_err(date_time)? {
                    entries.push((key, map.next_value()?));
                }
                Ok(EnvValue(entries))
            }
        }
        d.deserialize_map(V)
    }
}

/// Declares the keys shared by `[defaults]` and `[[actor]]` once: `RawDefaults` and
/// `RawActor` (the same keys plus `name`, `kind` and the exec keys `command`, `env`,
/// `cwd`; serde's `flatten` cannot be combined with `deny_unknown_fields`).
macro_rules! defaults_tables {
    ($($field:ident : $ty:ty),* $(,)?) => {
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawDefaults {
            $($field: Option<Spanned<$ty>>,)*
        }

        #[derive(Debug, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct RawActor {
            name: Option<Spanned<NameText>>,
            kind: Option<Spanned<NameText>>,
            command: Option<Spanned<CommandValue>>,
            env: Option<Spanned<EnvValue>>,
            cwd: Option<Spanned<PathText>>,
            $($field: Option<Spanned<$ty>>,)*
        }

        impl RawActor {
            fn split(self) -> (Option<Spanned<NameText>>, Option<Spanned<NameText>>, RawExec, RawDefaults) {
                let exec = RawExec { command: self.command, env: self.env, cwd: self.cwd };
                (self.name, self.kind, exec, RawDefaults { $($field: self.$field,)* })
            }
        }
    };
}

defaults_tables! {
    max_restarts: Int,
    restart_window: DurationText,
    max_call_retries: Int,
    checkpoint_every: Int,
    checkpoint_interval: DurationText,
    backoff_initial: DurationText,
    backoff_max: DurationText,
    min_uptime: DurationText,
    startup_timeout: DurationText,
    heartbeat_timeout: DurationText,
    max_reply_bytes: SizeValue,
    durability: DurabilityText,
    idempotency_keys: Int,
    idempotency_bytes: SizeValue,
    user: UserValue,
    group: GroupValue,
    limit_memory: SizeValue,
    limit_open_files: Int,
    limit_core: SizeValue,
    limit_processes: Int,
    limit_cpu: DurationText,
}

/// The keys only an exec actor may have.
#[derive(Debug)]
struct RawExec {
    command: Option<Spanned<CommandValue>>,
    env: Option<Spanned<EnvValue>>,
    cwd: Option<Spanned<PathText>>,
}

/// One `[[actor]]` entry as read, before validation.
struct ActorEntry {
    /// 1-based position among the actors.
    number: usize,
    /// The entry's span (its `[[actor]]` header, or the inline table).
    header: Range<usize>,
    raw: RawActor,
    /// Keys reported (wrong type) and dropped.
    dropped: Vec<String>,
    /// Where its keys are.
    index: TableIndex,
}

/// Where the keys of one table are, to say which key a serde error is about.
struct TableIndex {
    /// The table's own span (its header, or the inline table).
    span: Range<usize>,
    /// (key, key span, value span).
    keys: Vec<(String, Range<usize>, Range<usize>)>,
}

impl TableIndex {
    fn new(span: Range<usize>, table: &DeTable<'_>) -> TableIndex {
        let keys = table
            .iter()
            .map(|(k, v)| (k.get_ref().to_string(), k.span(), v.span()))
            .collect();
        TableIndex { span, keys }
    }
}

/// The value of `key` in `table`, if it is a string.
fn string_value<'a>(table: &'a DeTable<'_>, key: &str) -> Option<&'a str> {
    table.get(key).and_then(|v| v.get_ref().as_str())
}

/// 1-based (line, column) of byte `offset` in `text`; columns count characters.
fn position(text: &str, offset: usize) -> (usize, usize) {
    let bytes = text.as_bytes();
    let offset = offset.min(bytes.len());
    let before = &bytes[..offset];
    let line = before.iter().filter(|b| **b == b'\n').count() + 1;
    let line_start = before
        .iter()
        .rposition(|b| *b == b'\n')
        .map_or(0, |i| i + 1);
    let column = before[line_start..]
        .iter()
        .filter(|b| (**b & 0xC0) != 0x80)
        .count()
        + 1;
    (line, column)
}

/// Resolves a path from the file against the config file's directory.
fn resolve(config_dir: &Path, path: &str) -> PathBuf {
    let path = Path::new(path);
    if path.is_absolute() {
        path.to_path_buf()
    } else {
        config_dir.join(path)
    }
}

/// Parses an octal permission string: `"0600"`, `"600"` or `"0o600"`, at most 0o777.
fn parse_mode(text: &str) -> Option<u32> {
    let digits = text.strip_prefix("0o").unwrap_or(text);
    if digits.is_empty() || !digits.bytes().all(|b| (b'0'..=b'7').contains(&b)) {
        return None;
    }
    let mode = u32::from_str_radix(digits, 8).ok()?;
    (mode <= 0o777).then_some(mode)
}

/// Why a size text is not a size. Each names the input (`text`, as written); the message
/// is embedded in the config error that gives its place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
enum SizeError {
    #[error(
        "size {text:?} is empty; write a number of bytes or a number with a unit, e.g. \
         \"512MiB\""
    )]
    Empty { text: String },
    #[error(
        "size {text:?} is negative; write a number of bytes >= 0 or a size such as \
         \"512MiB\""
    )]
    Negative { text: String },
    #[error("size {text:?} does not start with a number; e.g. \"512MiB\" or \"2G\"")]
    NoNumber { text: String },
    #[error(
        "size {text:?} is not a whole number; use a smaller unit instead of a fraction, \
         e.g. \"1536MiB\" rather than \"1.5GiB\""
    )]
    Fraction { text: String },
    #[error(
        "size {text:?} has unknown unit {unit:?}{}; allowed units: {SIZE_UNITS}, or none for \
         bytes",
        ambiguous_unit_hint(.unit)
    )]
    UnknownUnit { text: String, unit: String },
    #[error("size {text:?} is too large (at most 2^64 - 1 bytes)")]
    TooLarge { text: String },
}

/// For a decimal-looking unit (`"MB"`), the advice to write the binary one; else empty.
fn ambiguous_unit_hint(unit: &str) -> String {
    match unit {
        "KB" | "MB" | "GB" | "TB" | "kB" => format!(
            " ({unit:?} is ambiguous: write {}iB for powers of 1024)",
            &unit[..1].to_uppercase()
        ),
        _ => String::new(),
    }
}

/// Parses a size: a whole number of bytes with an optional unit, `"4096"`, `"64KiB"`,
/// `"512MiB"`, `"1G"`. K/M/G/T and KiB/MiB/GiB/TiB are powers of 1024; `B` (or none) is
/// bytes. The error names the input and says what is allowed.
fn parse_size(text: &str) -> Result<u64, SizeError> {
    let t = text.trim();
    let input = || text.to_string();
    if t.is_empty() {
        return Err(SizeError::Empty { text: input() });
    }
    if t.starts_with('-') {
        return Err(SizeError::Negative { text: input() });
    }
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (number, unit) = t.split_at(split);
    if number.is_empty() {
        return Err(SizeError::NoNumber { text: input() });
    }
    if unit.starts_with(['.', ',']) {
        return Err(SizeError::Fraction { text: input() });
    }
    let shift = match unit.trim_start() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        "T" | "TiB" => 40,
        other => {
            return Err(SizeError::UnknownUnit {
                text: input(),
                unit: other.to_string(),
            });
        }
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(1 << shift))
        .ok_or_else(|| SizeError::TooLarge { text: input() })
}

/// Formats a byte count with the largest binary unit that divides it: `"16MiB"`.
fn format_size(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes != 0 && bytes.trailing_zeros() >= shift {
            return format!("{}{unit}", bytes >> shift);
        }
    }
    format!("{bytes}B")
}

/// The values a duration key accepts: `"0s"` where it turns the feature off, else
/// `min` to `max`.
#[derive(Debug, Clone, Copy)]
struct Bounds {
    min: Duration,
    max: Option<Duration>,
    /// `"0s"` is allowed (below `min`) and means off.
    zero_is_off: bool,
    /// Why, for the error message.
    why: &'static str,
}

impl Bounds {
    fn contains(&self, d: Duration) -> bool {
        (self.zero_is_off && d.is_zero()) || (d >= self.min && self.max.is_none_or(|m| d <= m))
    }

    /// The allowed values in config spelling: `"0s" (off) or at least "100ms"`.
    fn allowed(&self) -> String {
        let min = format_duration(self.min);
        let range = match self.max {
            Some(max) => format!("{min:?} to {:?}", format_duration(max)),
            None if self.min.is_zero() => "any duration".to_string(),
            None => format!("at least {min:?}"),
        };
        if self.zero_is_off && !self.min.is_zero() {
            format!("\"0s\" (off) or {range}")
        } else {
            range
        }
    }
}

/// The allowed range of each duration key: below it a value cannot work (a worker
/// cannot start or answer a ping within a nanosecond, a stop cannot write the final
/// checkpoints in none) or silently disables something that has no "off".
fn duration_bounds(key: &str) -> Bounds {
    let ms = Duration::from_millis;
    let at_least = |min: Duration, why: &'static str| Bounds {
        min,
        max: None,
        zero_is_off: false,
        why,
    };
    let off_or = |min: Duration, why: &'static str| Bounds {
        zero_is_off: true,
        ..at_least(min, why)
    };
    match key {
        "shutdown_timeout" => at_least(
            MIN_SHUTDOWN_TIMEOUT,
            "a graceful stop must answer the calls in flight and write every actor's final \
             checkpoint within it",
        ),
        "busy_poll" => Bounds {
            max: Some(MAX_BUSY_POLL),
            zero_is_off: true,
            ..at_least(Duration::ZERO, "it is time spent spinning; \"0s\" = off")
        },
        "restart_window" => at_least(
            ms(10),
            "max_restarts counts the restarts within it; \"0s\" would never count any",
        ),
        "checkpoint_interval" => off_or(ms(10), "each checkpoint saves the whole state"),
        "backoff_initial" | "backoff_max" => at_least(
            ms(1),
            "\"0s\" would restart a crash-looping worker at full speed",
        ),
        "startup_timeout" => at_least(
            MIN_STARTUP_TIMEOUT,
            "a worker must start and restore its checkpoint within it",
        ),
        "heartbeat_timeout" => off_or(
            MIN_HEARTBEAT_TIMEOUT,
            "a busy worker must still answer a ping within it",
        ),
        "limit_cpu" => at_least(
            Duration::from_secs(1),
            "the CPU limit counts whole seconds; remove the key for no limit",
        ),
        _ => at_least(Duration::ZERO, ""),
    }
}

/// Collects errors and warnings while turning the document into a [`Config`].
struct Checker<'a> {
    text: &'a str,
    file: &'a Path,
    errors: Vec<ConfigError>,
    warnings: Vec<ConfigWarning>,
}

impl Checker<'_> {
    /// A problem at `span` (`None`: the file as a whole, e.g. a path from the environment).
    fn placed(&self, span: Option<&Range<usize>>, message: String) -> ConfigError {
        let (line, column) = span.map(|s| position(self.text, s.start)).unzip();
        ConfigError {
            file: self.file.to_path_buf(),
            line,
            column,
            message,
        }
    }

    fn error_at(&mut self, span: &Range<usize>, message: String) {
        let error = self.placed(Some(span), message);
        self.errors.push(error);
    }

    fn warn_at(&mut self, span: &Range<usize>, message: String) {
        let warning = ConfigWarning(self.placed(Some(span), message));
        self.warnings.push(warning);
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        position(self.text, span.start).0
    }

    /// Reports a serde/toml error from deserializing the table `index` describes, and
    /// returns the key it is about (if it can be placed on one).
    fn serde_error(
        &mut self,
        section: &str,
        index: &TableIndex,
        error: &toml::de::Error,
    ) -> Option<String> {
        let message = error.message();
        let span = error.span().unwrap_or_else(|| index.span.clone());
        let on_key = index
            .keys
            .iter()
            .find(|(_, k, _)| k.contains(&span.start) || k.start == span.start);
        let in_value = index
            .keys
            .iter()
            .find(|(_, _, v)| v.contains(&span.start) || v.start == span.start);
        let (text, key) = match (on_key, in_value) {
            (Some((key, _, _)), _) => {
                let message = match message.strip_prefix("unknown field") {
                    Some(rest) => format!("unknown key{rest}"),
                    None => message.to_string(),
                };
                (format!("{section}: {message}"), Some(key.clone()))
            }
            (None, Some((key, _, _))) => (format!("{section} {key}: {message}"), Some(key.clone())),
            (None, None) => (format!("{section}: {message}"), None),
        };
        self.error_at(&span, text);
        key
    }

    /// Deserializes one table. A serde error (unknown key, wrong type) is reported, the
    /// key it is about is dropped and the rest is deserialized again, so every such error
    /// in the table is reported. Returns the raw table and the dropped keys; `None` when
    /// `value` is not a table or an error cannot be placed on a key.
    fn table<T: for<'de> Deserialize<'de>>(
        &mut self,
        section: &str,
        value: &Spanned<DeValue<'_>>,
    ) -> Option<(T, Vec<String>)> {
        let DeValue::Table(table) = value.get_ref() else {
            return None;
        };
        let span = value.span();
        let mut table = table.clone();
        let mut dropped = Vec::new();
        // Each round either succeeds or removes one key, so this ends.
        loop {
            let index = TableIndex::new(span.clone(), &table);
            let attempt = Spanned::new(span.clone(), DeValue::Table(table.clone()));
            match T::deserialize(ValueDeserializer::from(attempt)) {
                Ok(raw) => return Some((raw, dropped)),
                Err(e) => {
                    let key = self.serde_error(section, &index, &e)?;
                    table.remove(key.as_str())?;
                    dropped.push(key);
                }
            }
        }
    }

    fn check(&mut self, env: &Environment) -> Config {
        let (root, syntax) = DeTable::parse_recoverable(self.text);
        let mut config = Config::embedded_defaults(env);
        config.path = self.file.to_path_buf();
        if !syntax.is_empty() {
            // The recovered tree is unreliable: report the syntax errors only, one per
            // line (later errors on the same line are usually follow-ups).
            let mut seen_lines = Vec::new();
            for error in &syntax {
                let span = error.span().unwrap_or(0..0);
                let line = self.line_of(&span);
                if seen_lines.contains(&line) || seen_lines.len() >= MAX_SYNTAX_ERRORS {
                    continue;
                }
                seen_lines.push(line);
                let duplicate = self
                    .text
                    .get(span.clone())
                    .filter(|k| !k.is_empty() && error.message() == "duplicate key");
                let message = match duplicate {
                    Some(key) => format!(
                        "TOML syntax error: duplicate key `{key}` (each key and table may \
                         appear only once; use [[actor]] for several actors)"
                    ),
                    None => format!("TOML syntax error: {}", error.message()),
                };
                self.error_at(&span, message);
            }
            return config;
        }

        let root = root.into_inner();
        let mut raw_supervisor = RawSupervisor::default();
        let mut raw_defaults = RawDefaults::default();
        let mut raw_actors: Vec<ActorEntry> = Vec::new();
        for (key, value) in &root {
            let name: &str = key.get_ref();
            match name {
                "supervisor" | "defaults" if !value.get_ref().is_table() => {
                    self.error_at(
                        &value.span(),
                        format!(
                            "`{name}` must be a table (write a [{name}] header), not a {}",
                            value.get_ref().type_str()
                        ),
                    );
                }
                "supervisor" => {
                    if let Some((raw, _)) = self.table("[supervisor]", value) {
                        raw_supervisor = raw;
                    }
                }
                "defaults" => {
                    if let Some((raw, _)) = self.table("[defaults]", value) {
                        raw_defaults = raw;
                    }
                }
                "actor" => {
                    let DeValue::Array(entries) = value.get_ref() else {
                        self.error_at(
                            &value.span(),
                            format!(
                                "`actor` must be an array of tables (write each actor under an \
                                 [[actor]] header), not a {}",
                                value.get_ref().type_str()
                            ),
                        );
                        continue;
                    };
                    for (i, entry) in entries.iter().enumerate() {
                        let number = i + 1;
                        let DeValue::Table(table) = entry.get_ref() else {
                            self.error_at(
                                &entry.span(),
                                format!(
                                    "actor #{number} must be a table (an [[actor]] section), \
                                     not a {}",
                                    entry.get_ref().type_str()
                                ),
                            );
                            continue;
                        };
                        let label = match string_value(table, "name") {
                            Some(n) if valid_actor_name(n) => format!("actor {n:?}"),
                            _ => format!("actor #{number}"),
                        };
                        if let Some((raw, dropped)) = self.table::<RawActor>(&label, entry) {
                            raw_actors.push(ActorEntry {
                                number,
                                header: entry.span(),
                                raw,
                                dropped,
                                index: TableIndex::new(entry.span(), table),
                            });
                        }
                    }
                }
                other => {
                    self.error_at(
                        &key.span(),
                        format!(
                            "unknown key `{other}` at the top level; allowed: the tables \
                             [supervisor], [defaults] and [[actor]]"
                        ),
                    );
                }
            }
        }

        let config_dir = match self.file.parent() {
            Some(dir) if !dir.as_os_str().is_empty() => dir.to_path_buf(),
            _ => PathBuf::from("."),
        };
        config.supervisor = self.supervisor(raw_supervisor, env, &config_dir);

        let base = Policy {
            durability: config.supervisor.durability,
            // Sized to the request limit unless set.
            max_reply_bytes: config.supervisor.max_request_bytes as u64,
            ..Policy::default()
        };
        let defaults = self.policy("[defaults]", &base, &raw_defaults);
        let default_launch = self.launch("[defaults]", &Launch::default(), &raw_defaults);

        let mut seen: HashMap<String, usize> = HashMap::new();
        for entry in raw_actors {
            let inherited = (&defaults, &default_launch);
            if let Some(actor) = self.actor(entry, inherited, &config_dir, &mut seen) {
                config.actors.push(actor);
            }
        }
        config
    }

    fn path_value(&mut self, key: &str, value: &Spanned<PathText>, dir: &Path) -> Option<PathBuf> {
        let text = &value.get_ref().0;
        if text.is_empty() {
            self.error_at(
                &value.span(),
                format!(
                    "[supervisor] {key}: must not be empty (remove the key to use the default)"
                ),
            );
            return None;
        }
        if text.contains('\0') {
            self.error_at(
                &value.span(),
                format!("[supervisor] {key}: path must not contain a NUL character"),
            );
            return None;
        }
        Some(resolve(dir, text))
    }

    fn supervisor(
        &mut self,
        raw: RawSupervisor,
        env: &Environment,
        dir: &Path,
    ) -> SupervisorConfig {
        let defaults = Config::embedded_defaults(env).supervisor;

        // Each path with the span it comes from (its own value's, or that of the key it
        // defaults from) and, when not set by its own key, how it was set.
        let errors_before = self.errors.len();
        let mut own = |key, value: &Option<Spanned<PathText>>| {
            let value = value.as_ref()?;
            let path = self.path_value(key, value, dir)?;
            Some((path, Some(value.span()), None))
        };
        let (state_dir, state_span, state_origin) = own("state_dir", &raw.state_dir)
            .unwrap_or_else(|| {
                let origin = match env.state_directory {
                    Some(_) => "from $STATE_DIRECTORY",
                    None => "by default ./resurgam-state",
                };
                (defaults.state_dir, None, Some(origin))
            });
        let (runtime_dir, runtime_span, runtime_origin) = own("runtime_dir", &raw.runtime_dir)
            .unwrap_or_else(|| match &env.runtime_directory {
                Some(d) => (d.clone(), None, Some("from $RUNTIME_DIRECTORY")),
                None => (
                    state_dir.join("run"),
                    state_span.clone(),
                    Some("by default <state_dir>/run"),
                ),
            });
        let (socket, socket_span, socket_origin) =
            own("socket", &raw.socket).unwrap_or_else(|| {
                (
                    runtime_dir.join("control.sock"),
                    runtime_span.clone(),
                    Some("by default <runtime_dir>/control.sock"),
                )
            });
        if self.errors.len() == errors_before {
            let setting = |key, path, span, origin| paths::Setting {
                key,
                path,
                span,
                origin,
            };
            self.supervisor_paths(
                &setting("state_dir", &state_dir, state_span, state_origin),
                &setting("runtime_dir", &runtime_dir, runtime_span, runtime_origin),
                &setting("socket", &socket, socket_span, socket_origin),
            );
        }

        let durability = raw
            .durability
            .as_ref()
            .and_then(|v| self.durability("[supervisor]", v))
            .unwrap_or(defaults.durability);

        let mut max_request_bytes = defaults.max_request_bytes;
        if let Some(v) = &raw.max_request_bytes {
            let n = v.get_ref().0;
            match usize::try_from(n) {
                Ok(n) if (MIN_MAX_REQUEST_BYTES..=MAX_MAX_REQUEST_BYTES).contains(&n) => {
                    max_request_bytes = n;
                }
                _ => self.error_at(
                    &v.span(),
                    format!(
                        "[supervisor] max_request_bytes: {n} is out of range; allowed: \
                         {MIN_MAX_REQUEST_BYTES} to {MAX_MAX_REQUEST_BYTES} bytes (default \
                         {DEFAULT_MAX_REQUEST_BYTES})"
                    ),
                ),
            }
        }

        let mut reply_buffer = |key: &str, value: &Option<Spanned<SizeValue>>, default: u64| {
            let Some(v) = value else {
                return default;
            };
            match self.size("[supervisor]", key, v) {
                Some(n) if (MIN_REPLY_BUFFER_BYTES..=MAX_REPLY_BUFFER_BYTES).contains(&n) => n,
                Some(n) => {
                    self.error_at(
                        &v.span(),
                        format!(
                            "[supervisor] {key}: {} is out of range; allowed: {} to {} \
                             (default {})",
                            format_size(n),
                            format_size(MIN_REPLY_BUFFER_BYTES),
                            format_size(MAX_REPLY_BUFFER_BYTES),
                            format_size(default)
                        ),
                    );
                    default
                }
                None => default,
            }
        };
        let max_queued_reply_bytes = reply_buffer(
            "max_queued_reply_bytes",
            &raw.max_queued_reply_bytes,
            defaults.max_queued_reply_bytes,
        );
        let mut max_total_reply_bytes = reply_buffer(
            "max_total_reply_bytes",
            &raw.max_total_reply_bytes,
            defaults.max_total_reply_bytes,
        );
        if max_total_reply_bytes < max_queued_reply_bytes {
            let span = raw
                .max_total_reply_bytes
                .as_ref()
                .or(raw.max_queued_reply_bytes.as_ref())
                .map(|v| v.span());
            if let Some(span) = span {
                self.error_at(
                    &span,
                    format!(
                        "[supervisor] max_total_reply_bytes ({}) is smaller than \
                         max_queued_reply_bytes ({}); it must be at least as large",
                        format_size(max_total_reply_bytes),
                        format_size(max_queued_reply_bytes)
                    ),
                );
            }
            max_total_reply_bytes = max_queued_reply_bytes;
        }

        let shutdown_timeout = raw
            .shutdown_timeout
            .as_ref()
            .and_then(|v| self.duration("[supervisor]", "shutdown_timeout", v))
            .unwrap_or(defaults.shutdown_timeout);

        let busy_poll = raw
            .busy_poll
            .as_ref()
            .and_then(|v| self.duration("[supervisor]", "busy_poll", v))
            .unwrap_or(defaults.busy_poll);

        let mut standby_workers = defaults.standby_workers;
        if let Some(v) = &raw.standby_workers {
            let n = v.get_ref().0;
            match usize::try_from(n) {
                Ok(n) if n <= MAX_STANDBY_WORKERS => standby_workers = n,
                _ => self.error_at(
                    &v.span(),
                    format!(
                        "[supervisor] standby_workers: {n} is out of range; allowed: 0 to \
                         {MAX_STANDBY_WORKERS} (default {DEFAULT_STANDBY_WORKERS})"
                    ),
                ),
            }
        }

        let mut allowed_uids = Vec::new();
        for uid in raw.allowed_uids.iter().flatten() {
            let n = uid.get_ref().0;
            match u32::try_from(n) {
                Ok(u) if i64::from(u) <= MAX_UID => allowed_uids.push(u),
                _ => self.error_at(
                    &uid.span(),
                    format!(
                        "[supervisor] allowed_uids: {n} is not a valid uid; allowed: 0 to \
                         {MAX_UID}"
                    ),
                ),
            }
        }

        let mut socket_mode = defaults.socket_mode;
        if let Some(v) = &raw.socket_mode {
            let text = &v.get_ref().0;
            match parse_mode(text) {
                Some(mode) if mode & OWNER_READ_WRITE == OWNER_READ_WRITE => socket_mode = mode,
                Some(_) => self.error_at(
                    &v.span(),
                    format!(
                        "[supervisor] socket_mode: {text:?} leaves the socket's owner \
                         without read and write permission, so not even the supervisor's own user \
                         could connect; allowed: \"0600\" to \"0777\" with the owner's read and \
                         write bits (6) set, e.g. \"0600\" or \"0660\""
                    ),
                ),
                None => self.error_at(
                    &v.span(),
                    format!(
                        "[supervisor] socket_mode: {text:?} is not an octal permission mode; \
                         allowed: octal digits up to \"0777\", e.g. \"0600\" or \"0660\""
                    ),
                ),
            }
        }

        let metrics_listen = raw
            .metrics_listen
            .as_ref()
            .and_then(|v| self.metrics_listen(v));

        SupervisorConfig {
            state_dir,
            runtime_dir,
            socket,
            durability,
            max_request_bytes,
            max_queued_reply_bytes,
            max_total_reply_bytes,
            shutdown_timeout,
            busy_poll,
            standby_workers,
            allowed_uids,
            socket_mode,
            allow_shared_dirs: raw.allow_shared_dirs.unwrap_or(defaults.allow_shared_dirs),
            metrics_listen,
        }
    }

    /// `[supervisor].metrics_listen`: an IP address and port; one that is not loopback
    /// is legal but warned about (the endpoint has no authentication).
    fn metrics_listen(&mut self, value: &Spanned<AddrText>) -> Option<std::net::SocketAddr> {
        let text = &value.get_ref().0;
        match text.parse::<std::net::SocketAddr>() {
            Ok(addr) => {
                if !addr.ip().is_loopback() {
                    self.warn_at(
                        &value.span(),
                        format!(
                            "[supervisor] metrics_listen: {text:?} is not a loopback address: \
                             anyone who can reach it reads the metrics (actor names, call \
                             counts); there is no authentication"
                        ),
                    );
                }
                Some(addr)
            }
            Err(e) => {
                self.error_at(
                    &value.span(),
                    format!(
                        "[supervisor] metrics_listen: {text:?} is not an IP address with a port \
                         ({e}); allowed: e.g. \"127.0.0.1:9464\" or \"[::1]:9464\" (port 0: any \
                         free port, logged at start)"
                    ),
                );
                None
            }
        }
    }

    /// A durability; `"memory"` is legal but warned about where it is written.
    fn durability(&mut self, section: &str, value: &Spanned<DurabilityText>) -> Option<Durability> {
        let text = &value.get_ref().0;
        let found = Durability::from_name(text);
        match found {
            None => self.error_at(
                &value.span(),
                format!(
                    "{section} durability: unknown value {text:?}; allowed: \"memory\", \"log\", \
                     \"fsync\""
                ),
            ),
            Some(Durability::Memory) => self.warn_at(
                &value.span(),
                format!(
                    "{section} durability: \"memory\" keeps the call log in the supervisor's \
                     memory only: if the supervisor itself dies, the calls since each actor's last \
                     checkpoint are lost, acknowledged ones included (\"log\", the default, keeps \
                     them on disk)"
                ),
            ),
            Some(_) => {}
        }
        found
    }

    /// Warns when `p` never checkpoints by itself (legal: `resurgam checkpoint` and a
    /// graceful stop still do), at the key of `raw` that made it so; a table that sets
    /// neither key inherited the choice and was warned about where it was made.
    fn never_checkpointing(&mut self, section: &str, p: &Policy, raw: &RawDefaults) {
        if p.checkpoint_every != 0 || !p.checkpoint_interval.is_zero() {
            return;
        }
        let place = match (&raw.checkpoint_every, &raw.checkpoint_interval) {
            (Some(v), _) => Some((
                v.span(),
                "checkpoint_every: 0 with checkpoint_interval \"0s\"",
            )),
            (None, Some(v)) => Some((
                v.span(),
                "checkpoint_interval: \"0s\" with checkpoint_every 0",
            )),
            (None, None) => None,
        };
        if let Some((span, what)) = place {
            self.warn_at(
                &span,
                format!(
                    "{section} {what} never checkpoints the state by itself: the call log grows \
                     without bound and a restart replays every call since the last checkpoint \
                     (only `resurgam checkpoint` and a graceful stop make one); set \
                     checkpoint_every (e.g. 1000) or checkpoint_interval (e.g. \"1s\")"
                ),
            );
        }
    }

    /// A duration within the bounds of `key` ([`duration_bounds`]); anything else is
    /// reported with the allowed range.
    fn duration(
        &mut self,
        section: &str,
        key: &str,
        value: &Spanned<DurationText>,
    ) -> Option<Duration> {
        let text = &value.get_ref().0;
        let message = match parse_duration(text) {
            Ok(d) => {
                let bounds = duration_bounds(key);
                if bounds.contains(d) {
                    return Some(d);
                }
                format!(
                    "{section} {key}: {text:?} is out of range; allowed: {} ({})",
                    bounds.allowed(),
                    bounds.why
                )
            }
            Err(message) => {
                format!("{section} {key}: {message}; e.g. \"250ms\", \"10s\", \"2m\"")
            }
        };
        self.error_at(&value.span(), message);
        None
    }

    /// `base` overridden by the keys present in `raw`. Every bad value is reported (and
    /// leaves the base value). Cross-key checks are reported only when `raw` sets one of
    /// the keys involved, so a mistake in `[defaults]` is not repeated for every actor.
    fn policy(&mut self, section: &str, base: &Policy, raw: &RawDefaults) -> Policy {
        let mut p = base.clone();

        if let Some(v) = &raw.max_restarts {
            let n = v.get_ref().0;
            if n >= -1 {
                p.max_restarts = n;
            } else {
                self.error_at(
                    &v.span(),
                    format!(
                        "{section} max_restarts: {n} is not allowed; use -1 for unlimited or a \
                         number >= 0"
                    ),
                );
            }
        }
        if let Some(v) = &raw.max_call_retries {
            let n = v.get_ref().0;
            if n == -1 || n >= 1 {
                p.max_call_retries = n;
            } else {
                self.error_at(
                    &v.span(),
                    format!(
                        "{section} max_call_retries: {n} is not allowed (0 would never run a \
                         call); use -1 for unlimited or a number >= 1"
                    ),
                );
            }
        }
        if let Some(v) = &raw.checkpoint_every {
            let n = v.get_ref().0;
            match u64::try_from(n) {
                Ok(n) => p.checkpoint_every = n,
                Err(_) => self.error_at(
                    &v.span(),
                    format!(
                        "{section} checkpoint_every: {n} is negative; use 0 for never by count \
                         or a number of calls >= 1"
                    ),
                ),
            }
        }

        if let Some(v) = &raw.max_reply_bytes
            && let Some(n) = self.size(section, "max_reply_bytes", v)
        {
            if (MIN_MAX_REPLY_BYTES..=MAX_MAX_REPLY_BYTES).contains(&n) {
                p.max_reply_bytes = n;
            } else {
                self.error_at(
                    &v.span(),
                    format!(
                        "{section} max_reply_bytes: {} is out of range; allowed: {} to {}",
                        format_size(n),
                        format_size(MIN_MAX_REPLY_BYTES),
                        format_size(MAX_MAX_REPLY_BYTES)
                    ),
                );
            }
        }

        if let Some(v) = &raw.idempotency_keys {
            let n = v.get_ref().0;
            match u64::try_from(n) {
                Ok(n) if n <= MAX_IDEMPOTENCY_KEYS => p.idempotency_keys = n,
                _ => self.error_at(
                    &v.span(),
                    format!(
                        "{section} idempotency_keys: {n} is out of range; allowed: 0 (keys \
                         are not kept) to {MAX_IDEMPOTENCY_KEYS}"
                    ),
                ),
            }
        }
        if let Some(v) = &raw.idempotency_bytes
            && let Some(n) = self.size(section, "idempotency_bytes", v)
        {
            if n <= MAX_IDEMPOTENCY_BYTES {
                p.idempotency_bytes = n;
            } else {
                self.error_at(
                    &v.span(),
                    format!(
                        "{section} idempotency_bytes: {} is out of range; allowed: 0 to {}",
                        format_size(n),
                        format_size(MAX_IDEMPOTENCY_BYTES)
                    ),
                );
            }
        }

        let durations: [(&str, &Option<Spanned<DurationText>>, &mut Duration); 7] = [
            ("restart_window", &raw.restart_window, &mut p.restart_window),
            (
                "checkpoint_interval",
                &raw.checkpoint_interval,
                &mut p.checkpoint_interval,
            ),
            (
                "backoff_initial",
                &raw.backoff_initial,
                &mut p.backoff_initial,
            ),
            ("backoff_max", &raw.backoff_max, &mut p.backoff_max),
            ("min_uptime", &raw.min_uptime, &mut p.min_uptime),
            (
                "startup_timeout",
                &raw.startup_timeout,
                &mut p.startup_timeout,
            ),
            (
                "heartbeat_timeout",
                &raw.heartbeat_timeout,
                &mut p.heartbeat_timeout,
            ),
        ];
        for (key, value, slot) in durations {
            if let Some(d) = value.as_ref().and_then(|v| self.duration(section, key, v)) {
                *slot = d;
            }
        }

        if let Some(d) = raw
            .durability
            .as_ref()
            .and_then(|v| self.durability(section, v))
        {
            p.durability = d;
        }

        self.never_checkpointing(section, &p, raw);

        if p.backoff_max < p.backoff_initial {
            // Point at the key this table sets (backoff_max first); when it sets
            // neither, the mistake belongs to the table it inherits from.
            let place = raw
                .backoff_max
                .as_ref()
                .or(raw.backoff_initial.as_ref())
                .map(|v| v.span());
            if let Some(span) = place {
                self.error_at(
                    &span,
                    format!(
                        "{section} backoff_max ({}) is less than backoff_initial ({}); \
                         backoff_max must be >= backoff_initial",
                        format_duration(p.backoff_max),
                        format_duration(p.backoff_initial)
                    ),
                );
            }
        }
        p
    }

    /// Validates one actor: `inherited` is the policy and launch settings of `[defaults]`.
    fn actor(
        &mut self,
        entry: ActorEntry,
        inherited: (&Policy, &Launch),
        config_dir: &Path,
        seen: &mut HashMap<String, usize>,
    ) -> Option<ActorConfig> {
        let ActorEntry {
            number,
            header,
            raw,
            dropped,
            index,
        } = entry;
        let header = &header;
        let (name, kind, raw_exec, raw_defaults) = raw.split();
        let mut ok = true;

        let label = match &name {
            Some(n) if valid_actor_name(&n.get_ref().0) => format!("actor {:?}", n.get_ref().0),
            _ => format!("actor #{number}"),
        };

        let (name, line) = match name {
            // A `name` of the wrong type was reported already.
            None if dropped.iter().any(|k| k == "name") => {
                ok = false;
                (String::new(), self.line_of(header))
            }
            None => {
                self.error_at(
                    header,
                    format!(
                        "{label}: missing required key `name` (a unique name matching \
                         {ACTOR_NAME_PATTERN})"
                    ),
                );
                ok = false;
                (String::new(), self.line_of(header))
            }
            Some(n) => {
                let span = n.span();
                let line = self.line_of(&span);
                let name = n.into_inner().0;
                if !valid_actor_name(&name) {
                    self.error_at(
                        &span,
                        format!(
                            "{label} name: {name:?} is not a valid actor name; allowed: \
                             {ACTOR_NAME_PATTERN} (1 to 64 ASCII letters, digits, '_' or '-')"
                        ),
                    );
                    ok = false;
                } else if let Some(first) = seen.get(&name) {
                    self.error_at(
                        &span,
                        format!(
                            "{label} name: duplicate actor name {name:?}, first defined at \
                             line {first}; actor names must be unique"
                        ),
                    );
                    ok = false;
                } else {
                    seen.insert(name.clone(), line);
                }
                (name, line)
            }
        };

        let (kind, kind_line) = match kind {
            None if dropped.iter().any(|k| k == "kind") => {
                ok = false;
                (String::new(), self.line_of(header))
            }
            None => {
                self.error_at(
                    header,
                    format!(
                        "{label}: missing required key `kind` (which actor implementation runs \
                         it, e.g. \"counter\")"
                    ),
                );
                ok = false;
                (String::new(), self.line_of(header))
            }
            Some(k) => {
                let span = k.span();
                let kind_line = self.line_of(&span);
                let kind = k.into_inner().0;
                if kind.trim().is_empty() {
                    self.error_at(
                        &span,
                        format!(
                            "{label} kind: must not be empty; name an actor implementation, e.g. \
                             \"counter\""
                        ),
                    );
                    ok = false;
                }
                (kind, kind_line)
            }
        };

        let policy = self.policy(&label, inherited.0, &raw_defaults);
        let mut launch = self.launch(&label, inherited.1, &raw_defaults);
        // The exec keys depend on the kind; an invalid kind was reported already.
        let exec = Exec {
            label: &label,
            kind: (!kind.trim().is_empty()).then_some(kind.as_str()),
            header,
            index: &index,
            dropped: &dropped,
        };
        let (command_line, cwd_at) = self.exec(&exec, raw_exec, config_dir, &mut launch);
        ok.then_some(ActorConfig {
            name,
            kind,
            policy,
            launch,
            line,
            kind_line,
            command_line,
            cwd_at,
        })
    }

    /// `base` (user, group, limits) overridden by the keys present in `raw`. Every bad
    /// value is reported and leaves the base value.
    fn launch(&mut self, section: &str, base: &Launch, raw: &RawDefaults) -> Launch {
        let mut launch = base.clone();
        if let Some(v) = &raw.user {
            let value = match v.get_ref() {
                UserValue::Text(t) => IdValue::Text(t),
                UserValue::Int(n) => IdValue::Int(*n),
            };
            if let Some(user) = self.id(section, "user", "uid", value, &v.span()) {
                launch.user = Some(user);
            }
        }
        if let Some(v) = &raw.group {
            let value = match v.get_ref() {
                GroupValue::Text(t) => IdValue::Text(t),
                GroupValue::Int(n) => IdValue::Int(*n),
            };
            if let Some(group) = self.id(section, "group", "gid", value, &v.span()) {
                launch.group = Some(group);
            }
        }

        let limits = &mut launch.limits;
        if let Some(v) = &raw.limit_memory
            && let Some(bytes) = self.size(section, "limit_memory", v)
        {
            if bytes < MIN_LIMIT_MEMORY {
                self.error_at(
                    &v.span(),
                    format!(
                        "{section} limit_memory: {} is too small; a worker needs at least {} of \
                         address space to start (remove the key for no limit)",
                        format_size(bytes),
                        format_size(MIN_LIMIT_MEMORY)
                    ),
                );
            } else {
                limits.memory = Some(bytes);
            }
        }
        if let Some(v) = &raw.limit_core
            && let Some(bytes) = self.size(section, "limit_core", v)
        {
            limits.core = Some(bytes);
        }
        if let Some(v) = &raw.limit_open_files {
            let n = v.get_ref().0;
            match u64::try_from(n) {
                Ok(n) if (1..=MAX_LIMIT_OPEN_FILES).contains(&n) => limits.open_files = Some(n),
                _ => self.error_at(
                    &v.span(),
                    format!(
                        "{section} limit_open_files: {n} is out of range; allowed: 1 to \
                         {MAX_LIMIT_OPEN_FILES} (remove the key to inherit the supervisor's limit)"
                    ),
                ),
            }
        }
        if let Some(v) = &raw.limit_processes {
            let n = v.get_ref().0;
            match u64::try_from(n) {
                Ok(n) if n >= 1 => limits.processes = Some(n),
                _ => self.error_at(
                    &v.span(),
                    format!(
                        "{section} limit_processes: {n} is not allowed; use a number >= 1 (remove \
                         the key to inherit the supervisor's limit)"
                    ),
                ),
            }
        }
        if let Some(v) = &raw.limit_cpu
            && let Some(d) = self.duration(section, "limit_cpu", v)
        {
            // RLIMIT_CPU counts whole seconds: a remainder rounds up, never down.
            let seconds = d.as_secs() + u64::from(d.subsec_nanos() > 0);
            limits.cpu_seconds = Some(seconds);
        }
        launch
    }

    /// A `user` or `group` value (`what` is "uid" or "gid"), kept as written.
    fn id(
        &mut self,
        section: &str,
        key: &str,
        what: &str,
        value: IdValue<'_>,
        span: &Range<usize>,
    ) -> Option<Located<String>> {
        let text = match value {
            IdValue::Text(t) if t.is_empty() => {
                self.error_at(
                    span,
                    format!(
                        "{section} {key}: must not be empty; write a name or a numeric {what} \
                         (remove the key to keep the supervisor's)"
                    ),
                );
                return None;
            }
            IdValue::Text(t) if t.contains('\0') => {
                self.error_at(
                    span,
                    format!("{section} {key}: must not contain a NUL character"),
                );
                return None;
            }
            IdValue::Text(t) => t.clone(),
            IdValue::Int(n) if (0..=MAX_UID).contains(&n) => n.to_string(),
            IdValue::Int(n) => {
                self.error_at(
                    span,
                    format!("{section} {key}: {n} is not a valid {what}; allowed: 0 to {MAX_UID}"),
                );
                return None;
            }
        };
        let (line, column) = position(self.text, span.start);
        Some(Located {
            value: text,
            line,
            column,
        })
    }

    fn size(&mut self, section: &str, key: &str, value: &Spanned<SizeValue>) -> Option<u64> {
        let parsed = match value.get_ref() {
            SizeValue::Int(n) => u64::try_from(*n).map_err(|_| {
                format!("{n} is negative; use a number of bytes >= 0 or a size such as \"512MiB\"")
            }),
            SizeValue::Text(t) => parse_size(t).map_err(|e| e.to_string()),
        };
        match parsed {
            Ok(bytes) => Some(bytes),
            Err(message) => {
                self.error_at(&value.span(), format!("{section} {key}: {message}"));
                None
            }
        }
    }

    /// Checks `command`, `env` and `cwd` against the actor's kind and fills them into
    /// `launch`. Returns the line of `command` and the place of `cwd`.
    fn exec(
        &mut self,
        exec: &Exec<'_>,
        raw: RawExec,
        config_dir: &Path,
        launch: &mut Launch,
    ) -> (Option<usize>, Option<Located<()>>) {
        let label = exec.label;
        let is_exec = match exec.kind {
            Some(EXEC_KIND) => true,
            // Any other valid kind is built in: the exec keys do not belong there.
            Some(kind) => {
                let present = [
                    ("command", raw.command.as_ref().map(|v| v.span())),
                    ("env", raw.env.as_ref().map(|v| v.span())),
                    ("cwd", raw.cwd.as_ref().map(|v| v.span())),
                ];
                for (key, value_span) in present {
                    if let Some(value_span) = value_span {
                        let span = exec.key_span(key).unwrap_or(value_span);
                        self.error_at(
                            &span,
                            format!(
                                "{label} {key}: only actors of kind \"{EXEC_KIND}\" run a \
                                 command; kind {kind:?} is built in"
                            ),
                        );
                    }
                }
                return (None, None);
            }
            // Unknown kind (reported already): still check what is there.
            None => false,
        };

        let mut command_line = None;
        match raw.command {
            Some(v) => {
                command_line = Some(self.line_of(&v.span()));
                launch.command = self.command(label, &v);
            }
            None if is_exec && !exec.dropped.iter().any(|k| k == "command") => {
                self.error_at(
                    exec.header,
                    format!(
                        "{label}: kind \"{EXEC_KIND}\" needs `command`, the program to run as an \
                         argv array, e.g. command = [\"python3\", \"bank.py\"]"
                    ),
                );
            }
            None => {}
        }
        if let Some(v) = raw.env {
            launch.env = self.env(label, v.into_inner());
        }
        let mut cwd_at = None;
        if let Some(v) = raw.cwd {
            let span = v.span();
            let (line, column) = position(self.text, span.start);
            cwd_at = Some(Located {
                value: (),
                line,
                column,
            });
            let text = &v.get_ref().0;
            if text.is_empty() {
                self.error_at(
                    &span,
                    format!(
                        "{label} cwd: must not be empty (remove the key to use the config file's \
                         directory)"
                    ),
                );
            } else if text.contains('\0') {
                self.error_at(
                    &span,
                    format!("{label} cwd: path must not contain a NUL character"),
                );
            } else {
                launch.cwd = Some(resolve(config_dir, text));
            }
        }
        (command_line, cwd_at)
    }

    /// The argv of `command`, or `None` when anything in it is wrong (each reported).
    fn command(&mut self, label: &str, value: &Spanned<CommandValue>) -> Option<Vec<String>> {
        let items = &value.get_ref().0;
        if items.is_empty() {
            self.error_at(
                &value.span(),
                format!(
                    "{label} command: must not be empty; give the program and its arguments, e.g. \
                     command = [\"python3\", \"bank.py\"]"
                ),
            );
            return None;
        }
        let mut argv = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let problem = match item.get_ref() {
                AnyValue::Other(what) => Some(format!(
                    "must be a string, not {what}{}",
                    quote_hint(what, "\"8080\"")
                )),
                AnyValue::Text(t) if t.is_empty() && i == 0 => Some(
                    "the program must not be empty; e.g. \"python3\" or \"/usr/bin/python3\""
                        .to_string(),
                ),
                AnyValue::Text(t) if t.is_empty() => {
                    Some("must not be an empty string".to_string())
                }
                AnyValue::Text(t) if t.contains('\0') => {
                    Some("must not contain a NUL character".to_string())
                }
                AnyValue::Text(t) => {
                    argv.push(t.clone());
                    None
                }
            };
            if let Some(problem) = problem {
                self.error_at(&item.span(), format!("{label} command[{i}]: {problem}"));
            }
        }
        (argv.len() == items.len()).then_some(argv)
    }

    /// The variables of `env`; a bad name or value is reported and left out.
    fn env(&mut self, label: &str, value: EnvValue) -> BTreeMap<String, String> {
        let mut env = BTreeMap::new();
        for (name, value) in value.0 {
            let name_span = name.span();
            let name = name.into_inner();
            let problem = if name.is_empty() {
                Some("a variable name must not be empty".to_string())
            } else if name.contains('=') {
                Some(format!("variable name {name:?} must not contain '='"))
            } else if name.contains('\0') {
                Some(format!(
                    "variable name {name:?} must not contain a NUL character"
                ))
            } else if RESERVED_ENV.contains(&name.as_str()) {
                Some(format!(
                    "{name} is reserved: resurgam sets {} itself",
                    RESERVED_ENV.join(" and ")
                ))
            } else {
                None
            };
            let name_ok = problem.is_none();
            if let Some(problem) = problem {
                self.error_at(&name_span, format!("{label} env: {problem}"));
            }
            let value_span = value.span();
            match value.into_inner() {
                AnyValue::Other(what) => {
                    let hint = quote_hint(what, &format!("{name} = \"1\""));
                    self.error_at(
                        &value_span,
                        format!("{label} env.{name}: must be a string, not {what}{hint}"),
                    );
                }
                AnyValue::Text(t) if t.contains('\0') => self.error_at(
                    &value_span,
                    format!("{label} env.{name}: value must not contain a NUL character"),
                ),
                AnyValue::Text(t) => {
                    if name_ok {
                        env.insert(name, t);
                    }
                }
            }
        }
        env
    }
}

/// For a number or boolean where a string is needed: " (quote it, e.g. {example})".
fn quote_hint(what: &str, example: &str) -> String {
    match what {
        "an integer" | "a float" | "a boolean" => format!(" (quote it, e.g. {example})"),
        _ => String::new(),
    }
}

/// A `user` or `group` value, whichever key it came from.
enum IdValue<'a> {
    Text(&'a String),
    Int(i64),
}

/// What the exec checks of one actor need to know about it.
struct Exec<'a> {
    /// `actor "name"` or `actor #n`.
    label: &'a str,
    /// Its kind, when valid.
    kind: Option<&'a str>,
    /// The `[[actor]]` header (for a missing `command`).
    header: &'a Range<usize>,
    /// Where its keys are.
    index: &'a TableIndex,
    /// Keys reported and dropped for their type.
    dropped: &'a [String],
}

impl Exec<'_> {
    /// The span of `key` itself (not its value).
    fn key_span(&self, key: &str) -> Option<Range<usize>> {
        self.index
            .keys
            .iter()
            .find(|(k, _, _)| k == key)
            .map(|(_, span, _)| span.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A config with every key documented in the config format.
    const FULL_EXAMPLE: &str = r#"
[supervisor]
state_dir   = "state"              # default: $STATE_DIRECTORY, else ./resurgam-state
runtime_dir = "state/run"          # default: $RUNTIME_DIRECTORY, else <state_dir>/run
socket      = "state/run/control.sock"   # default: <runtime_dir>/control.sock
durability  = "log"                # "memory" | "log" | "fsync"
max_request_bytes = 1048576
shutdown_timeout = "10s"
allowed_uids = [1000]
socket_mode = "0600"

[defaults]                         # every actor inherits these, each may override
max_restarts        = -1           # -1 = unlimited, as in Ray
restart_window      = "60s"        # intensity window, as in Erlang/OTP
max_call_retries    = 3            # attempts for a call that kills its worker; -1 = unlimited
checkpoint_every    = 1000         # calls
checkpoint_interval = "1s"
backoff_initial     = "10ms"
backoff_max         = "1s"
min_uptime          = "1s"
startup_timeout     = "10s"
heartbeat_timeout   = "30s"
durability          = "log"

[[actor]]
name = "counter"                   # [A-Za-z0-9_-]{1,64}
kind = "counter"

[[actor]]
name = "store"
kind = "kv"
"#;

    const FILE: &str = "/etc/resurgam/resurgam.toml";

    fn parse(text: &str) -> Result<Config, ConfigErrors> {
        Config::parse(text, Path::new(FILE), &Environment::default())
    }

    fn ok(text: &str) -> Config {
        match parse(text) {
            Ok(c) => c,
            Err(e) => panic!("expected a valid config, got:\n{e}"),
        }
    }

    fn errors(text: &str) -> Vec<ConfigError> {
        match parse(text) {
            Ok(c) => panic!("expected errors, got {c:?}"),
            Err(e) => e.0,
        }
    }

    /// Asserts exactly one error, on `line`, whose message mentions every needle.
    fn one_error(text: &str, line: usize, needles: &[&str]) -> ConfigError {
        let errs = errors(text);
        assert_eq!(
            errs.len(),
            1,
            "expected one error for {text:?}, got {errs:#?}"
        );
        let e = errs.into_iter().next().unwrap();
        assert_eq!(e.line, Some(line), "wrong line for {text:?}: {e}");
        assert!(e.column.is_some(), "no column: {e}");
        assert_eq!(e.file, Path::new(FILE));
        for needle in needles {
            assert!(e.message.contains(needle), "{e} should mention {needle:?}");
        }
        e
    }

    fn defaults_with(line: &str) -> String {
        format!("[defaults]\n{line}\n")
    }

    // ----- valid configs ---------------------------------------------------------------

    #[test]
    fn busy_poll_is_bounded() {
        assert_eq!(ok("").supervisor.busy_poll, DEFAULT_BUSY_POLL);
        let c = ok("[supervisor]\nbusy_poll = \"0s\"\n");
        assert_eq!(c.supervisor.busy_poll, Duration::ZERO);
        one_error(
            "[supervisor]\nbusy_poll = \"20ms\"\n",
            2,
            &["busy_poll", "10ms"],
        );
        one_error("[supervisor]\nbusy_poll = \"fast\"\n", 2, &["busy_poll"]);
    }

    #[test]
    fn standby_workers_is_bounded() {
        assert_eq!(ok("").supervisor.standby_workers, DEFAULT_STANDBY_WORKERS);
        assert_eq!(
            ok("[supervisor]\nstandby_workers = 0\n")
                .supervisor
                .standby_workers,
            0
        );
        one_error(
            "[supervisor]\nstandby_workers = 65\n",
            2,
            &["standby_workers", "0 to 64"],
        );
        one_error(
            "[supervisor]\nstandby_workers = -1\n",
            2,
            &["standby_workers"],
        );
        one_error(
            "[supervisor]\nstandby_workers = \"2\"\n",
            2,
            &["standby_workers"],
        );
    }

    #[test]
    fn design_example_parses() {
        let c = ok(FULL_EXAMPLE);
        assert_eq!(c.path, Path::new(FILE));
        let s = &c.supervisor;
        assert_eq!(s.state_dir, Path::new("/etc/resurgam/state"));
        assert_eq!(s.runtime_dir, Path::new("/etc/resurgam/state/run"));
        assert_eq!(s.socket, Path::new("/etc/resurgam/state/run/control.sock"));
        assert_eq!(s.durability, Durability::Log);
        assert_eq!(s.max_request_bytes, 1 << 20);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
        assert_eq!(s.allowed_uids, vec![1000]);
        assert_eq!(s.socket_mode, 0o600);
        let names: Vec<_> = c.actors.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(names, ["counter", "store"]);
        let counter = c.actor("counter").unwrap();
        assert_eq!(counter.kind, "counter");
        assert_eq!(counter.policy, Policy::default());
        assert_eq!(counter.line, 26);
        assert_eq!(counter.kind_line, 27);
        let store = c.actor("store").unwrap();
        assert_eq!(
            (store.kind.as_str(), store.line, store.kind_line),
            ("kv", 30, 31)
        );
        assert!(c.actor("nope").is_none());
    }

    #[test]
    fn empty_file_is_all_defaults() {
        let c = ok("");
        assert_eq!(
            c.supervisor,
            Config::embedded_defaults(&Environment::default()).supervisor
        );
        assert!(c.actors.is_empty());
        let s = &c.supervisor;
        assert_eq!(s.state_dir, Path::new("resurgam-state"));
        assert_eq!(s.runtime_dir, Path::new("resurgam-state/run"));
        assert_eq!(s.socket, Path::new("resurgam-state/run/control.sock"));
        assert_eq!(s.durability, Durability::Log);
        assert_eq!(s.max_request_bytes, DEFAULT_MAX_REQUEST_BYTES);
        assert_eq!(s.shutdown_timeout, Duration::from_secs(10));
        assert!(s.allowed_uids.is_empty());
        assert_eq!(s.socket_mode, 0o600);
        // Empty tables are fine too.
        assert_eq!(ok("[supervisor]\n[defaults]\n").supervisor, c.supervisor);
    }

    #[test]
    fn policy_defaults() {
        let p = Policy::default();
        assert_eq!(p.max_restarts, -1);
        assert_eq!(p.restart_window, Duration::from_secs(60));
        assert_eq!(p.max_call_retries, 3);
        assert_eq!(p.checkpoint_every, 1000);
        assert_eq!(p.checkpoint_interval, Duration::from_secs(1));
        assert_eq!(p.backoff_initial, Duration::from_millis(10));
        assert_eq!(p.backoff_max, Duration::from_secs(1));
        assert_eq!(p.min_uptime, Duration::from_secs(1));
        assert_eq!(p.startup_timeout, Duration::from_secs(10));
        assert_eq!(p.heartbeat_timeout, Duration::from_secs(30));
        assert_eq!(p.durability, Durability::Log);
        let c = ok("[[actor]]\nname = \"a\"\nkind = \"k\"\n");
        assert_eq!(c.actors[0].policy, p);
        assert_eq!((c.actors[0].line, c.actors[0].kind_line), (2, 3));
    }

    #[test]
    fn embedded_defaults_have_no_actors() {
        let c = Config::embedded_defaults(&Environment::default());
        assert_eq!(c.path, Path::new("<embedded>"));
        assert!(c.actors.is_empty());
        assert_eq!(
            c.supervisor.socket,
            Path::new("resurgam-state/run/control.sock")
        );
    }

    #[test]
    fn overrides_inherit_from_defaults_then_actor() {
        let c = ok(r#"
[supervisor]
durability = "fsync"

[defaults]
max_restarts = 5
restart_window = "30s"
backoff_max = "2s"

[[actor]]
name = "a"
kind = "counter"
max_restarts = 2
backoff_initial = "100ms"
durability = "memory"

[[actor]]
name = "b"
kind = "kv"
heartbeat_timeout = "5s"
"#);
        assert_eq!(c.supervisor.durability, Durability::Fsync);
        let a = &c.actor("a").unwrap().policy;
        assert_eq!(a.max_restarts, 2);
        assert_eq!(a.restart_window, Duration::from_secs(30));
        assert_eq!(a.backoff_initial, Duration::from_millis(100));
        assert_eq!(a.backoff_max, Duration::from_secs(2));
        assert_eq!(a.durability, Durability::Memory);
        let b = &c.actor("b").unwrap().policy;
        assert_eq!(b.max_restarts, 5);
        assert_eq!(b.restart_window, Duration::from_secs(30));
        assert_eq!(b.heartbeat_timeout, Duration::from_secs(5));
        assert_eq!(b.backoff_initial, Duration::from_millis(10));
        assert_eq!(
            b.durability,
            Durability::Fsync,
            "inherits [supervisor].durability"
        );
        assert_eq!(b.max_call_retries, 3);
    }

    #[test]
    fn defaults_durability_overrides_supervisor_for_actors() {
        let c = ok(r#"
[supervisor]
durability = "memory"
[defaults]
durability = "fsync"
[[actor]]
name = "a"
kind = "k"
[[actor]]
name = "b"
kind = "k"
durability = "log"
"#);
        assert_eq!(c.supervisor.durability, Durability::Memory);
        assert_eq!(c.actor("a").unwrap().policy.durability, Durability::Fsync);
        assert_eq!(c.actor("b").unwrap().policy.durability, Durability::Log);
    }

    #[test]
    fn special_values_accepted() {
        let c = ok(r#"
[defaults]
max_restarts = 0
max_call_retries = -1
checkpoint_every = 0
checkpoint_interval = "0s"
backoff_initial = "1s"
backoff_max = "1s"
[supervisor]
max_request_bytes = 1024
socket_mode = "0o660"
allowed_uids = [0, 65534, 4294967294]
"#);
        assert_eq!(c.supervisor.socket_mode, 0o660);
        assert_eq!(c.supervisor.max_request_bytes, 1024);
        assert_eq!(c.supervisor.allowed_uids, vec![0, 65534, 4_294_967_294]);
        assert_eq!(
            ok("[supervisor]\nmax_request_bytes = 67108864")
                .supervisor
                .max_request_bytes,
            64 << 20
        );
        assert_eq!(
            ok("[supervisor]\nsocket_mode = \"777\"")
                .supervisor
                .socket_mode,
            0o777
        );
        assert_eq!(
            ok("[supervisor]\nsocket_mode = \"600\"")
                .supervisor
                .socket_mode,
            0o600
        );
        // Inline-table actors work like [[actor]] sections.
        let c = ok("actor = [{ name = \"x\", kind = \"k\" }, { name = \"y\", kind = \"k\" }]");
        assert_eq!(c.actors.len(), 2);
    }

    #[test]
    fn actor_order_is_preserved() {
        let mut text = String::new();
        let names = ["zeta", "alpha", "mid-1", "B_2", "0"];
        for n in names {
            text.push_str(&format!("[[actor]]\nname = \"{n}\"\nkind = \"k\"\n"));
        }
        let c = ok(&text);
        let got: Vec<_> = c.actors.iter().map(|a| a.name.as_str()).collect();
        assert_eq!(got, names);
    }

    // ----- paths and environment -------------------------------------------------------

    #[test]
    fn relative_paths_resolve_against_the_config_directory() {
        let text = "[supervisor]\nstate_dir = \"state\"\n";
        let env = Environment::default();
        let c = Config::parse(text, Path::new("conf/r.toml"), &env).unwrap();
        assert_eq!(c.supervisor.state_dir, Path::new("conf/state"));
        assert_eq!(c.supervisor.runtime_dir, Path::new("conf/state/run"));
        assert_eq!(
            c.supervisor.socket,
            Path::new("conf/state/run/control.sock")
        );
        let c = Config::parse(text, Path::new("r.toml"), &env).unwrap();
        assert_eq!(c.supervisor.state_dir, Path::new("./state"));

        let text = "[supervisor]\nstate_dir = \"/var/lib/x\"\nruntime_dir = \"../run\"\nsocket = \"s.sock\"\n";
        let c = Config::parse(text, Path::new("/etc/r/r.toml"), &env).unwrap();
        assert_eq!(c.supervisor.state_dir, Path::new("/var/lib/x"));
        assert_eq!(c.supervisor.runtime_dir, Path::new("/etc/r/../run"));
        assert_eq!(c.supervisor.socket, Path::new("/etc/r/s.sock"));
    }

    #[test]
    fn environment_supplies_default_directories() {
        let both = Environment {
            state_directory: Some(PathBuf::from("/var/lib/resurgam")),
            runtime_directory: Some(PathBuf::from("/run/resurgam")),
        };
        let c = Config::parse("", Path::new(FILE), &both).unwrap();
        assert_eq!(c.supervisor.state_dir, Path::new("/var/lib/resurgam"));
        assert_eq!(c.supervisor.runtime_dir, Path::new("/run/resurgam"));
        assert_eq!(c.supervisor.socket, Path::new("/run/resurgam/control.sock"));
        assert_eq!(Config::embedded_defaults(&both).supervisor, c.supervisor);

        let state_only = Environment {
            state_directory: Some(PathBuf::from("/var/lib/resurgam")),
            runtime_directory: None,
        };
        let c = Config::parse("", Path::new(FILE), &state_only).unwrap();
        assert_eq!(c.supervisor.runtime_dir, Path::new("/var/lib/resurgam/run"));
        assert_eq!(
            c.supervisor.socket,
            Path::new("/var/lib/resurgam/run/control.sock")
        );

        // The file wins over the environment; runtime_dir still comes from it if unset.
        let c = Config::parse(
            "[supervisor]\nstate_dir = \"s\"\n",
            Path::new("/etc/r.toml"),
            &both,
        )
        .unwrap();
        assert_eq!(c.supervisor.state_dir, Path::new("/etc/s"));
        assert_eq!(c.supervisor.runtime_dir, Path::new("/run/resurgam"));
        let c = Config::parse(
            "[supervisor]\nruntime_dir = \"/tmp/r\"\n",
            Path::new("/etc/r.toml"),
            &both,
        )
        .unwrap();
        assert_eq!(c.supervisor.socket, Path::new("/tmp/r/control.sock"));
    }

    #[test]
    fn environment_takes_the_first_of_several_paths() {
        assert_eq!(first_path(OsStr::new("/a:/b")), Some(PathBuf::from("/a")));
        assert_eq!(first_path(OsStr::new("/a")), Some(PathBuf::from("/a")));
        assert_eq!(first_path(OsStr::new("")), None);
        assert_eq!(first_path(OsStr::new(":/b")), None);
        // Reading the real environment must not panic, whatever it holds.
        let _ = Environment::from_process();
    }

    // ----- errors: one per case, with line and key -------------------------------------

    #[test]
    fn bad_durations() {
        one_error(
            &defaults_with("restart_window = \"60\""),
            2,
            &["restart_window", "no unit"],
        );
        one_error(
            "\n[supervisor]\nshutdown_timeout = \"ten\"",
            3,
            &["shutdown_timeout"],
        );
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\nmin_uptime = \"1 parsec\"",
            4,
            &["min_uptime", "actor \"a\"", "parsec"],
        );
        one_error(
            &defaults_with("checkpoint_interval = \"-1s\""),
            2,
            &["checkpoint_interval"],
        );
        // Not a string at all: a type error naming the key and the expected form.
        one_error(
            &defaults_with("restart_window = 60"),
            2,
            &["restart_window", "duration string"],
        );
    }

    #[test]
    fn negative_numbers() {
        one_error(
            &defaults_with("max_restarts = -2"),
            2,
            &["max_restarts", "-1"],
        );
        one_error(
            &defaults_with("checkpoint_every = -1"),
            2,
            &["checkpoint_every", "negative"],
        );
        one_error(
            &defaults_with("max_call_retries = -5"),
            2,
            &["max_call_retries"],
        );
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\n\nmax_restarts = -3",
            5,
            &["max_restarts", "actor \"a\""],
        );
    }

    #[test]
    fn zero_call_retries() {
        one_error(
            &defaults_with("max_call_retries = 0"),
            2,
            &["max_call_retries", ">= 1"],
        );
    }

    #[test]
    fn backoff_max_below_initial() {
        one_error(
            &defaults_with("backoff_initial = \"2s\"\nbackoff_max = \"1s\""),
            3,
            &["backoff_max", "backoff_initial"],
        );
        // Only backoff_initial set: reported there.
        one_error(
            &defaults_with("backoff_initial = \"5s\""),
            2,
            &["backoff_initial"],
        );
        // Across tables: defaults raise the floor, the actor's cap is below it.
        one_error(
            "[defaults]\nbackoff_initial = \"500ms\"\n[[actor]]\nname = \"a\"\nkind = \"k\"\nbackoff_max = \"100ms\"",
            6,
            &["backoff_max", "actor \"a\""],
        );
        // A mistake in [defaults] is reported once, not again for each actor.
        let text = "[defaults]\nbackoff_initial = \"5s\"\n[[actor]]\nname = \"a\"\nkind = \"k\"\n[[actor]]\nname = \"b\"\nkind = \"k\"";
        assert_eq!(errors(text).len(), 1);
    }

    #[test]
    fn zero_startup_timeout() {
        one_error(
            &defaults_with("startup_timeout = \"0s\""),
            2,
            &["startup_timeout", "at least \"100ms\""],
        );
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\nstartup_timeout = \"0ms\"",
            4,
            &["startup_timeout"],
        );
    }

    #[test]
    fn bad_durability() {
        one_error(
            "[supervisor]\ndurability = \"fast\"",
            2,
            &["durability", "\"fast\"", "fsync"],
        );
        one_error(&defaults_with("durability = \"LOG\""), 2, &["durability"]);
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\ndurability = \"disk\"",
            4,
            &["durability", "actor \"a\""],
        );
        one_error("[supervisor]\ndurability = 1", 2, &["durability"]);
    }

    #[test]
    fn bad_socket_mode() {
        for bad in [
            "\"0800\"",
            "\"01777\"",
            "\"abc\"",
            "\"\"",
            "\"+600\"",
            "\"0o\"",
            "\"-1\"",
        ] {
            one_error(
                &format!("[supervisor]\nsocket_mode = {bad}"),
                2,
                &["socket_mode", "octal"],
            );
        }
        // An integer is refused rather than guessed (600 decimal is not 0o600).
        one_error(
            "[supervisor]\nsocket_mode = 600",
            2,
            &["socket_mode", "octal string"],
        );
    }

    #[test]
    fn idempotency_retention_is_checked() {
        let c = ok(
            "[defaults]\nidempotency_keys = 0\nidempotency_bytes = \"1MiB\"\n\
             [[actor]]\nname = \"a\"\nkind = \"k\"\n",
        );
        let p = &c.actors[0].policy;
        assert_eq!((p.idempotency_keys, p.idempotency_bytes), (0, 1 << 20));
        let c = ok("[[actor]]\nname = \"a\"\nkind = \"k\"\nidempotency_keys = 5\n");
        assert_eq!(c.actors[0].policy.idempotency_keys, 5);
        assert_eq!(
            c.actors[0].policy.idempotency_bytes,
            DEFAULT_IDEMPOTENCY_BYTES
        );
        one_error(
            "[defaults]\nidempotency_keys = -1",
            2,
            &["idempotency_keys", "0"],
        );
        one_error(
            "[defaults]\nidempotency_keys = 1000001",
            2,
            &["idempotency_keys", "1000000"],
        );
        one_error(
            "[defaults]\nidempotency_bytes = \"2GiB\"",
            2,
            &["idempotency_bytes", "1GiB"],
        );
    }

    #[test]
    fn max_request_bytes_out_of_range() {
        for bad in ["100", "1023", "67108865", "-1", "0"] {
            one_error(
                &format!("[supervisor]\n\nmax_request_bytes = {bad}"),
                3,
                &["max_request_bytes", "1024", "67108864"],
            );
        }
    }

    #[test]
    fn reply_limits_default_to_the_request_limit_and_are_range_checked() {
        let c =
            ok("[supervisor]\nmax_request_bytes = 4096\n\n[[actor]]\nname = \"a\"\nkind = \"k\"\n");
        assert_eq!(c.actors[0].policy.max_reply_bytes, 4096);
        let c = ok("[[actor]]\nname = \"a\"\nkind = \"k\"\nmax_reply_bytes = \"4MiB\"\n");
        assert_eq!(c.actors[0].policy.max_reply_bytes, 4 << 20);
        assert_eq!(
            c.supervisor.max_queued_reply_bytes,
            DEFAULT_MAX_QUEUED_REPLY_BYTES
        );
        let c = ok(
            "[supervisor]\nmax_queued_reply_bytes = \"1MiB\"\nmax_total_reply_bytes = 2097152\n",
        );
        assert_eq!(c.supervisor.max_queued_reply_bytes, 1 << 20);
        assert_eq!(c.supervisor.max_total_reply_bytes, 2 << 20);
        one_error(
            "[defaults]\nmax_reply_bytes = 10",
            2,
            &["max_reply_bytes", "1KiB", "64MiB"],
        );
        one_error(
            "[supervisor]\nmax_queued_reply_bytes = \"1KiB\"",
            2,
            &["max_queued_reply_bytes", "64KiB", "64GiB"],
        );
        one_error(
            "[supervisor]\nmax_queued_reply_bytes = \"16MiB\"\nmax_total_reply_bytes = \"8MiB\"",
            3,
            &["max_total_reply_bytes", "smaller", "max_queued_reply_bytes"],
        );
    }

    #[test]
    fn bad_uids() {
        one_error(
            "[supervisor]\nallowed_uids = [1000, -1]",
            2,
            &["allowed_uids", "-1"],
        );
        one_error(
            "[supervisor]\nallowed_uids = [4294967295]",
            2,
            &["allowed_uids"],
        );
        one_error(
            "[supervisor]\nallowed_uids = [\"bob\"]",
            2,
            &["allowed_uids", "integer"],
        );
    }

    #[test]
    fn empty_paths() {
        one_error("[supervisor]\nstate_dir = \"\"", 2, &["state_dir", "empty"]);
        one_error("[supervisor]\nsocket = \"\"", 2, &["socket", "empty"]);
    }

    #[test]
    fn duplicate_actor_names() {
        let text =
            "[[actor]]\nname = \"a\"\nkind = \"k\"\n\n[[actor]]\nname = \"a\"\nkind = \"k\"\n";
        let e = one_error(text, 6, &["\"a\"", "line 2", "duplicate"]);
        assert_eq!(e.column, Some(8));
    }

    #[test]
    fn invalid_actor_names() {
        let long = "x".repeat(65);
        for bad in ["", "../x", ".", "a/b", long.as_str(), "é", "a b", "a.b"] {
            let text = format!("[[actor]]\nkind = \"k\"\nname = {bad:?}\n");
            one_error(&text, 3, &[&format!("{bad:?}"), ACTOR_NAME_PATTERN]);
        }
        assert!(
            ok(&format!(
                "[[actor]]\nkind = \"k\"\nname = \"{}\"\n",
                "x".repeat(64)
            ))
            .actors
            .len()
                == 1
        );
    }

    #[test]
    fn empty_kind() {
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"\"",
            3,
            &["kind", "empty", "actor \"a\""],
        );
        one_error("[[actor]]\nname = \"a\"\nkind = \"  \"", 3, &["kind"]);
    }

    #[test]
    fn missing_name_or_kind() {
        one_error(
            "# actors\n\n[[actor]]\nkind = \"k\"\n",
            3,
            &["name", "missing"],
        );
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\n[[actor]]\nname = \"b\"\n",
            4,
            &["kind", "missing", "\"b\""],
        );
        let errs = errors("[[actor]]\n");
        assert_eq!(errs.len(), 2, "{errs:?}");
        assert!(errs.iter().all(|e| e.line == Some(1)));
    }

    #[test]
    fn unknown_keys_point_at_the_key() {
        let e = one_error(
            "[supervisor]\nsocket_path = \"x\"",
            2,
            &["socket_path", "unknown key", "socket"],
        );
        assert_eq!(e.column, Some(1));
        let e = one_error(
            "[defaults]\n  max_restart = 3",
            2,
            &["max_restart", "max_restarts", "[defaults]"],
        );
        assert_eq!(e.column, Some(3));
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\ncomand = [\"/bin/x\"]",
            4,
            &[
                "comand",
                "unknown key",
                "`command`",
                "`env`",
                "`cwd`",
                "`limit_cpu`",
            ],
        );
        // Actor-only keys are not allowed in [defaults].
        one_error("[defaults]\nname = \"a\"", 2, &["name", "unknown key"]);
        one_error(
            "[defaults]\ncommand = [\"x\"]",
            2,
            &["command", "unknown key", "`user`", "`limit_memory`"],
        );
        one_error("[defaults]\ncwd = \"/\"", 2, &["cwd", "unknown key"]);
        let e = one_error(
            "\n[supervsor]\nstate_dir = \"x\"",
            2,
            &["supervsor", "[supervisor]"],
        );
        assert_eq!(e.column, Some(2));
        one_error("debug = true\n", 1, &["debug"]);
        one_error("[supervisor.extra]\nx = 1\n", 1, &["extra"]);
    }

    #[test]
    fn type_errors_point_at_the_value() {
        let e = one_error(
            &defaults_with("max_restarts = \"x\""),
            2,
            &["max_restarts", "integer"],
        );
        assert_eq!(e.column, Some(16));
        one_error(
            &defaults_with("checkpoint_every = 1.5"),
            2,
            &["checkpoint_every"],
        );
        one_error("[[actor]]\nname = 5\nkind = \"k\"", 2, &["name"]);
        one_error("[supervisor]\nstate_dir = [1]", 2, &["state_dir"]);
        one_error("supervisor = 3", 1, &["supervisor", "table"]);
        one_error(
            "\n[actor]\nname = \"a\"\nkind = \"k\"",
            2,
            &["actor", "[[actor]]"],
        );
        one_error("actor = [1]", 1, &["actor", "table"]);
    }

    #[test]
    fn syntax_errors_have_line_and_column() {
        let e = one_error("[supervisor]\nstate_dir = \n", 2, &["syntax"]);
        assert!(e.column.is_some());
        one_error(
            "[defaults]\nmax_restarts = 1\nmax_restarts = 2\n",
            3,
            &["duplicate"],
        );
        one_error("[supervisor\n", 1, &["syntax"]);
        let errs = errors("a = \nb = [1,\nc = \"x\n[x\nd=1\n");
        assert!(!errs.is_empty() && errs.len() <= MAX_SYNTAX_ERRORS);
        assert_eq!(errs[0].line, Some(1));
    }

    #[test]
    fn all_errors_are_collected() {
        let text = r#"
[supervisor]
durability = "fast"

[defaults]
restart_window = "forever"

[[actor]]
name = "../etc"
kind = "counter"
"#;
        let errs = errors(text);
        assert_eq!(errs.len(), 3, "{errs:#?}");
        let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(3), Some(6), Some(9)]);
        assert!(errs[0].message.contains("durability"));
        assert!(errs[1].message.contains("restart_window"));
        assert!(errs[2].message.contains("../etc"));

        // Unknown keys and type errors are collected too, several per table.
        let text = "[supervisor]\nbogus = 1\nmax_request_bytes = \"x\"\ndurability = \"no\"\n";
        let lines: Vec<_> = errors(text).iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(3), Some(4)]);

        // Serde errors in different tables and actors are collected too.
        let text = "[supervisor]\nbogus = 1\n[defaults]\nmax_restarts = \"x\"\n[[actor]]\nname = \"a\"\nkind = 3\n[[actor]]\nname = \"b\"\nkind = \"k\"\nmax_call_retries = 0\n";
        let lines: Vec<_> = errors(text).iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(2), Some(4), Some(7), Some(11)]);
    }

    #[test]
    fn display_formats() {
        let e = ConfigError {
            file: PathBuf::from("a.toml"),
            line: Some(3),
            column: Some(7),
            message: "bad".into(),
        };
        assert_eq!(e.to_string(), "a.toml:3:7: bad");
        let no_col = ConfigError {
            column: None,
            ..e.clone()
        };
        assert_eq!(no_col.to_string(), "a.toml:3: bad");
        let no_line = ConfigError {
            line: None,
            column: None,
            ..e.clone()
        };
        assert_eq!(no_line.to_string(), "a.toml: bad");
        let all = ConfigErrors(vec![e, no_line]);
        assert_eq!(all.to_string(), "a.toml:3:7: bad\na.toml: bad");
        let boxed: Box<dyn std::error::Error> = Box::new(all);
        assert!(boxed.to_string().contains("a.toml:3:7"));
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(position("", 0), (1, 1));
        assert_eq!(position("ab\ncd", 3), (2, 1));
        assert_eq!(position("ab\ncd", 4), (2, 2));
        assert_eq!(position("éé = 1\n", 4), (1, 3));
        assert_eq!(position("ab", 99), (1, 3));
        let e = one_error("[[actor]]\nkind = \"é\"\nname = \"é\"", 3, &["\"é\""]);
        assert_eq!(e.column, Some(8));
    }

    // ----- allowed ranges, paths as `run` uses them, warnings ---------------------------

    /// Asserts that `text` has exactly one error and that, as `check` prints it, it
    /// starts with `start` (FILE:LINE:COL, the key, the value) and contains `rest`.
    fn refused(text: &str, start: &str, rest: &[&str]) {
        let errs = errors(text);
        assert_eq!(errs.len(), 1, "{text:?}: {errs:#?}");
        let line = errs[0].to_string();
        assert!(
            line.starts_with(start),
            "{line}\n  should start with\n{start}"
        );
        for needle in rest {
            assert!(line.contains(needle), "{line}\n  should mention {needle:?}");
        }
    }

    #[test]
    fn durations_outside_their_range_are_refused_with_the_range() {
        // (table lines before the key, key, refused values, accepted values, range)
        let cases = [
            (
                "[supervisor]",
                "shutdown_timeout",
                "0s 1ns 99ms",
                "100ms 10s 1h",
                "at least \"100ms\"",
            ),
            (
                "[supervisor]",
                "busy_poll",
                "11ms 1s",
                "0s 1us 10ms",
                "\"0s\" to \"10ms\"",
            ),
            (
                "[defaults]",
                "restart_window",
                "0s 9ms",
                "10ms 24h",
                "at least \"10ms\"",
            ),
            (
                "[defaults]",
                "checkpoint_interval",
                "1ns 9ms",
                "0s 10ms 1h",
                "\"0s\" (off) or at least \"10ms\"",
            ),
            (
                "[defaults]",
                "backoff_initial",
                "0s 999us",
                "1ms 10ms",
                "at least \"1ms\"",
            ),
            (
                "[defaults]\nbackoff_initial = \"1ms\"",
                "backoff_max",
                "0s 1ns",
                "1ms 1h",
                "at least \"1ms\"",
            ),
            (
                "[defaults]",
                "startup_timeout",
                "0s 1ns 99ms",
                "100ms 1m",
                "at least \"100ms\"",
            ),
            (
                "[defaults]",
                "heartbeat_timeout",
                "1ns 1ms 99ms",
                "0s 100ms 30s",
                "\"0s\" (off) or at least \"100ms\"",
            ),
            (
                "[[actor]]\nname = \"a\"\nkind = \"k\"",
                "heartbeat_timeout",
                "1ns",
                "0s 1s",
                "\"0s\" (off) or at least \"100ms\"",
            ),
            (
                "[defaults]",
                "limit_cpu",
                "0s 999ms",
                "1s 10m",
                "at least \"1s\"",
            ),
        ];
        for (head, key, bad, good, range) in cases {
            let section = if head.starts_with("[[actor]]") {
                "actor \"a\""
            } else {
                head.lines().next().unwrap_or_default()
            };
            let line = head.lines().count() + 1;
            let column = key.len() + 4; // `key = "`: the value's opening quote
            for value in bad.split(' ') {
                let text = format!("{head}\n{key} = \"{value}\"\n");
                let start = format!(
                    "{FILE}:{line}:{column}: {section} {key}: \"{value}\" is out of range; \
                     allowed: {range} ("
                );
                refused(&text, &start, &[]);
            }
            for value in good.split(' ') {
                ok(&format!("{head}\n{key} = \"{value}\"\n"));
            }
        }
        // min_uptime has no bound: "0s" makes any worker that got ready reset the backoff.
        let c = ok("[defaults]\nmin_uptime = \"0s\"\n");
        assert_eq!(c.actors.len(), 0);
    }

    #[test]
    fn sub_nanosecond_durations_are_refused_not_rounded_to_zero() {
        for (key, value) in [
            ("checkpoint_interval", "0.1ns"),
            ("heartbeat_timeout", "0.5ns"),
            ("restart_window", "1.0000000001s"),
        ] {
            let start = format!(
                "{FILE}:2:{}: [defaults] {key}: duration \"{value}\" is not a whole number of \
                 nanoseconds",
                key.len() + 4
            );
            refused(&defaults_with(&format!("{key} = \"{value}\"")), &start, &[]);
        }
    }

    #[test]
    fn socket_modes_without_owner_read_and_write_are_refused() {
        for bad in ["0000", "0", "0400", "0200", "0500", "0077", "0o177", "0466"] {
            let text = format!("[supervisor]\nsocket_mode = \"{bad}\"\n");
            let start = format!(
                "{FILE}:2:15: [supervisor] socket_mode: \"{bad}\" leaves the socket's owner \
                 without read and write permission"
            );
            refused(&text, &start, &["allowed: \"0600\" to \"0777\""]);
        }
        for good in ["0600", "0640", "0660", "0700", "0777", "0o760"] {
            ok(&format!("[supervisor]\nsocket_mode = \"{good}\"\n"));
        }
    }

    #[test]
    fn socket_paths_longer_than_af_unix_allows_are_refused() {
        // 107 bytes fit sun_path with its NUL; 108 do not.
        let fits = format!("/{}", "s".repeat(MAX_SOCKET_PATH_BYTES - 1));
        let c = ok(&format!("[supervisor]\nsocket = \"{fits}\"\n"));
        assert_eq!(c.supervisor.socket.as_os_str().len(), 107);
        let long = format!("/{}", "s".repeat(MAX_SOCKET_PATH_BYTES));
        refused(
            &format!("[supervisor]\nsocket = \"{long}\"\n"),
            &format!(
                "{FILE}:2:10: [supervisor] socket: {long} is 108 bytes long; allowed: at most \
                 107 bytes"
            ),
            &[],
        );
        // The default socket of a long state_dir: reported at state_dir, saying why.
        let dir = format!("/nx/{}", "d".repeat(90));
        refused(
            &format!("[supervisor]\nstate_dir = \"{dir}\"\n"),
            &format!(
                "{FILE}:2:13: [supervisor] socket (by default <runtime_dir>/control.sock): \
                 {dir}/run/control.sock is 111 bytes long; allowed: at most 107 bytes"
            ),
            &[],
        );
    }

    #[test]
    fn a_socket_where_run_keeps_its_own_files_is_refused() {
        let head = "[supervisor]\nstate_dir = \"/nx/state\"\n";
        let instead = "e.g. /nx/state/run/control.sock";
        let replaces = "binding the socket there would replace it and delete it at exit";
        for (socket, what) in [
            ("/nx/state/a.checkpoint", "an actor's checkpoint"),
            ("/nx/state/a.checkpoint.tmp", "an actor's checkpoint"),
            ("/nx/state/./x/../a.checkpoint", "an actor's checkpoint"),
            ("/nx/state/.resurgam.lock", "the lock"),
            ("/nx/state/bank.log", "an actor's call log"),
            (
                "/nx/state/run/a.ckpt",
                "an actor's memory-mapped checkpoint",
            ),
            (
                "/nx/state/run/a.ckpt.new",
                "an actor's memory-mapped checkpoint",
            ),
        ] {
            let start =
                format!("{FILE}:3:10: [supervisor] socket: {socket} is where `run` keeps {what}");
            refused(
                &format!("{head}socket = \"{socket}\"\n"),
                &start,
                &[replaces, instead],
            );
        }
        refused(
            &format!("{head}socket = \"/nx/state/bank.log/s.sock\"\n"),
            "/etc/resurgam/resurgam.toml:3:10: [supervisor] socket: /nx/state/bank.log/s.sock \
             is inside /nx/state/bank.log, where `run` keeps an actor's call log",
            &[instead],
        );
        for (socket, relation, key) in [
            ("/nx/state", "is", "state_dir"),
            ("/nx", "contains", "state_dir"),
            ("/nx/state/run", "is", "runtime_dir"),
        ] {
            refused(
                &format!("{head}socket = \"{socket}\"\n"),
                &format!(
                    "{FILE}:3:10: [supervisor] socket: {socket} {relation} the directory `run` \
                     creates for {key}"
                ),
                &[instead],
            );
        }
        // The config file itself, however it is spelled.
        for socket in ["resurgam.toml", "/etc/resurgam/../resurgam/resurgam.toml"] {
            refused(
                &format!("{head}socket = \"{socket}\"\n"),
                "/etc/resurgam/resurgam.toml:3:10: [supervisor] socket: ",
                &["is this config file"],
            );
        }
        // Names that only look alike are fine.
        for socket in [
            "/nx/state/control.sock",
            "/nx/state/a.checkpointer",
            "/nx/state/not an actor.checkpoint",
            "/nx/state/run/x.sock",
            "/nx/elsewhere/a.checkpoint",
        ] {
            ok(&format!("{head}socket = \"{socket}\"\n"));
        }
        // A runtime_dir where the state directory keeps a call log: reported once, at
        // runtime_dir (the default socket inside it is not reported again).
        refused(
            &format!("{head}runtime_dir = \"/nx/state/a.log\"\n"),
            "/etc/resurgam/resurgam.toml:3:15: [supervisor] runtime_dir: /nx/state/a.log is \
             where `run` keeps an actor's call log; choose a directory of its own",
            &[],
        );
        refused(
            "[supervisor]\nruntime_dir = \"/nx/run\"\nstate_dir = \"/nx/run/a.ckpt\"\n",
            "/etc/resurgam/resurgam.toml:3:13: [supervisor] state_dir: /nx/run/a.ckpt is where \
             `run` keeps an actor's memory-mapped checkpoint",
            &[],
        );
        // One directory for both is fine.
        ok("[supervisor]\nstate_dir = \"/nx/s\"\nruntime_dir = \"/nx/s\"\n");
    }

    #[test]
    fn paths_are_checked_against_the_file_system_as_run_will_use_them() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("r.toml");
        let parse_here = |text: &str| Config::parse(text, &file, &Environment::default());
        let one = |text: &str| -> String {
            let errs = parse_here(text).unwrap_err().0;
            assert_eq!(errs.len(), 1, "{text:?}: {errs:#?}");
            errs[0].to_string()
        };
        let d = dir.path().display();
        let f = file.display();
        std::fs::write(dir.path().join("a-file"), b"").unwrap();
        std::fs::create_dir(dir.path().join("a-dir")).unwrap();

        // Relative paths are resolved against the config file's directory, as `run` does.
        assert_eq!(
            one("[supervisor]\nstate_dir = \"a-file\"\n"),
            format!("{f}:2:13: [supervisor] state_dir: {d}/a-file exists and is not a directory")
        );
        assert_eq!(
            one("[supervisor]\nruntime_dir = \"a-file/run\"\n"),
            format!(
                "{f}:2:15: [supervisor] runtime_dir: {d}/a-file/run cannot be created: \
                 {d}/a-file is not a directory"
            )
        );
        assert_eq!(
            one("[supervisor]\nsocket = \"a-dir\"\n"),
            format!(
                "{f}:2:10: [supervisor] socket: {d}/a-dir is a directory; the socket needs a \
                 path of its own, e.g. {d}/a-dir/control.sock"
            )
        );
        assert_eq!(
            one("[supervisor]\nsocket = \"a-file\"\n"),
            format!(
                "{f}:2:10: [supervisor] socket: {d}/a-file exists and is not a socket; `run` \
                 never replaces such a file (remove it or choose another path)"
            )
        );
        assert_eq!(
            one("[supervisor]\nsocket = \"a-file/s.sock\"\n"),
            format!(
                "{f}:2:10: [supervisor] socket: {d}/a-file/s.sock cannot be created: \
                 {d}/a-file is not a directory"
            )
        );
        // A file in the way of state_dir blocks the default runtime_dir and socket too:
        // one error, at state_dir.
        let errs = parse_here("[supervisor]\nstate_dir = \"a-file/s\"\n")
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert!(errs[0].message.contains("state_dir"), "{}", errs[0]);
        // A directory from the environment has no line: the file is named all the same.
        let env = Environment {
            state_directory: Some(dir.path().join("a-file")),
            runtime_directory: None,
        };
        let errs = Config::parse("", &file, &env).unwrap_err().0;
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(
            errs[0].to_string(),
            format!(
                "{f}: [supervisor] state_dir (from $STATE_DIRECTORY): {d}/a-file exists and is \
                 not a directory"
            )
        );
        // An existing socket (a stale one, or the live supervisor's at a reload) is fine,
        // and so are directories that exist or do not exist yet.
        let _listener =
            std::os::unix::net::UnixListener::bind(dir.path().join("ctl.sock")).unwrap();
        parse_here(
            "[supervisor]\nstate_dir = \"a-dir\"\nruntime_dir = \"new/run\"\nsocket = \"ctl.sock\"\n",
        )
        .unwrap();
    }

    #[test]
    fn never_checkpointing_is_a_warning_at_the_key_that_chose_it() {
        let c = ok("[defaults]\ncheckpoint_every = 0\ncheckpoint_interval = \"0s\"\n");
        assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
        let w = c.warnings[0].to_string();
        assert!(
            w.starts_with(&format!(
                "{FILE}:2:20: warning: [defaults] checkpoint_every: 0 with checkpoint_interval \
                 \"0s\" never checkpoints the state by itself: the call log grows without bound"
            )),
            "{w}"
        );
        // Inherited by actors: not repeated for each; an actor that chooses it itself (here
        // by its interval, the count being inherited) is warned about at its own key.
        let c = ok(
            "[defaults]\ncheckpoint_every = 0\n\n[[actor]]\nname = \"a\"\nkind = \"k\"\n\
                    checkpoint_interval = \"0s\"\n\n[[actor]]\nname = \"b\"\nkind = \"k\"\n",
        );
        assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
        assert!(
            c.warnings[0].to_string().starts_with(&format!(
                "{FILE}:7:23: warning: actor \"a\" checkpoint_interval: \"0s\" with \
                 checkpoint_every 0 never checkpoints"
            )),
            "{}",
            c.warnings[0]
        );
        let c = ok(
            "[defaults]\ncheckpoint_every = 0\ncheckpoint_interval = \"0s\"\n\
                    [[actor]]\nname = \"a\"\nkind = \"k\"\n[[actor]]\nname = \"b\"\nkind = \"k\"\n",
        );
        assert_eq!(c.warnings.len(), 1, "{:#?}", c.warnings);
        // Either key alone still checkpoints: no warning.
        for text in [
            "[defaults]\ncheckpoint_every = 0\n",
            "[defaults]\ncheckpoint_interval = \"0s\"\n",
            FULL_EXAMPLE,
            "",
        ] {
            assert!(ok(text).warnings.is_empty(), "{text:?}");
        }
    }

    #[test]
    fn memory_durability_is_a_warning_where_it_is_written() {
        let c = ok(
            "[supervisor]\ndurability = \"memory\"\n\n[[actor]]\nname = \"a\"\n\
                    kind = \"k\"\ndurability = \"memory\"\n[[actor]]\nname = \"b\"\nkind = \"k\"\n",
        );
        let lines: Vec<String> = c.warnings.iter().map(ToString::to_string).collect();
        assert_eq!(lines.len(), 2, "{lines:#?}");
        assert!(
            lines[0].starts_with(&format!(
                "{FILE}:2:14: warning: [supervisor] durability: \"memory\" keeps the call log in \
                 the supervisor's memory only"
            )),
            "{}",
            lines[0]
        );
        assert!(
            lines[1].starts_with(&format!(
                "{FILE}:7:14: warning: actor \"a\" durability: \"memory\""
            )),
            "{}",
            lines[1]
        );
        assert_eq!(c.actor("b").unwrap().policy.durability, Durability::Memory);
        // Warnings come in file order and never make a file invalid; errors drop them.
        let c = ok(
            "[defaults]\ncheckpoint_every = 0\ncheckpoint_interval = \"0s\"\n\
                    [supervisor]\ndurability = \"memory\"\n",
        );
        let places: Vec<_> = c.warnings.iter().map(|w| w.0.line).collect();
        assert_eq!(places, [Some(2), Some(5)]);
        one_error(
            "[supervisor]\ndurability = \"memory\"\nshutdown_timeout = \"0s\"\n",
            3,
            &["shutdown_timeout"],
        );
    }

    #[test]
    fn the_reference_states_each_duration_range() {
        let entries = reference();
        for key in [
            "shutdown_timeout",
            "busy_poll",
            "restart_window",
            "checkpoint_interval",
            "backoff_initial",
            "backoff_max",
            "min_uptime",
            "startup_timeout",
            "heartbeat_timeout",
            "limit_cpu",
        ] {
            let (_, _, default, meaning) = entries.iter().find(|e| e.1 == key).unwrap();
            let allowed = duration_bounds(key).allowed();
            assert!(
                meaning.contains(&allowed),
                "{key}: {meaning:?} lacks {allowed:?}"
            );
            if !default.contains('<') {
                let d = parse_duration(default.trim_matches('"')).unwrap();
                assert!(duration_bounds(key).contains(d), "{key}: default {default}");
            }
        }
    }

    // ----- files -----------------------------------------------------------------------

    #[test]
    fn load_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("resurgam.toml");
        std::fs::write(&path, FULL_EXAMPLE).unwrap();
        let c = Config::load(&path, &Environment::default()).unwrap();
        assert_eq!(c.path, path);
        assert_eq!(c.supervisor.state_dir, dir.path().join("state"));
        assert_eq!(c.actors.len(), 2);
    }

    #[test]
    fn load_reports_an_unreadable_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("missing.toml");
        let errs = Config::load(&path, &Environment::default()).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!(errs[0].file, path);
        assert_eq!(errs[0].line, None);
        assert!(errs[0].message.contains("cannot read"), "{}", errs[0]);
        assert!(errs[0].to_string().starts_with(&path.display().to_string()));
    }

    #[test]
    fn load_reports_invalid_utf8_with_its_line() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, b"[supervisor]\nstate_dir = \"\xff\"\n").unwrap();
        let errs = Config::load(&path, &Environment::default()).unwrap_err().0;
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].column), (Some(2), Some(14)));
        assert!(errs[0].message.contains("UTF-8"));
    }

    #[test]
    fn parse_bytes_is_load_without_the_file() {
        let env = Environment::default();
        let path = Path::new(FILE);
        let c = Config::parse_bytes(FULL_EXAMPLE.as_bytes().to_vec(), path, &env).unwrap();
        assert_eq!(c, ok(FULL_EXAMPLE));
        let errs = Config::parse_bytes(b"# \xc3\xa9\n\nx = \"\xc3\"".to_vec(), path, &env)
            .unwrap_err()
            .0;
        assert_eq!(errs.len(), 1);
        assert_eq!((errs[0].line, errs[0].column), (Some(3), Some(6)));
        assert_eq!(errs[0].file, path);
    }

    // ----- launch: exec, user, group, limits -------------------------------------------

    /// An exec actor with every launch key, for the mutation proptest too.
    const EXEC_EXAMPLE: &str = r#"
[defaults]
user = "resurgam"
limit_open_files = 4096

[[actor]]
name = "bank"
kind = "exec"
command = ["python3", "bank.py", "--port", "8080"]
env = { LANG = "C.UTF-8", PYTHONUNBUFFERED = "1" }
cwd = "apps/bank"
group = 1001
limit_memory = "512MiB"
limit_core = 0
limit_processes = 64
limit_cpu = "10m"

[[actor]]
name = "c"
kind = "counter"
"#;

    #[test]
    fn an_exec_actor_with_every_key_parses_into_its_launch() {
        let c = ok(EXEC_EXAMPLE);
        let bank = c.actor("bank").unwrap();
        let expected = Launch {
            command: Some(
                ["python3", "bank.py", "--port", "8080"]
                    .map(String::from)
                    .to_vec(),
            ),
            env: BTreeMap::from([
                ("LANG".to_string(), "C.UTF-8".to_string()),
                ("PYTHONUNBUFFERED".to_string(), "1".to_string()),
            ]),
            cwd: Some(PathBuf::from("/etc/resurgam/apps/bank")),
            user: Some(Located {
                value: "resurgam".to_string(),
                line: 3,
                column: 8,
            }),
            group: Some(Located {
                value: "1001".to_string(),
                line: 12,
                column: 9,
            }),
            limits: Limits {
                memory: Some(512 << 20),
                open_files: Some(4096),
                core: Some(0),
                processes: Some(64),
                cpu_seconds: Some(600),
            },
        };
        assert_eq!(bank.launch, expected);
        assert_eq!(bank.command_line, Some(9));
        assert_eq!(
            bank.cwd_at.as_ref().map(|l| (l.line, l.column)),
            Some((11, 7))
        );
        assert_eq!(bank.policy, Policy::default(), "launch keys are not policy");

        // A built-in kind inherits user and limits but runs no command.
        let counter = c.actor("c").unwrap();
        assert_eq!(
            counter.launch,
            Launch {
                user: expected.user.clone(),
                limits: Limits {
                    open_files: Some(4096),
                    ..Limits::default()
                },
                ..Launch::default()
            }
        );
        assert_eq!((counter.command_line, &counter.cwd_at), (None, &None));

        // Without launch keys, nothing is set: everything is inherited from the supervisor.
        let plain = ok("[[actor]]\nname = \"a\"\nkind = \"k\"\n");
        assert_eq!(plain.actors[0].launch, Launch::default());
        // The smallest exec actor: cwd defaults to None (the config file's directory).
        let c = ok("[[actor]]\nname = \"x\"\nkind = \"exec\"\ncommand = [\"./x\"]\n");
        assert_eq!(c.actors[0].launch.command, Some(vec!["./x".to_string()]));
        assert_eq!(c.actors[0].launch.cwd, None);
        assert!(c.actors[0].launch.env.is_empty());
    }

    #[test]
    fn env_may_be_a_sub_table_and_cwd_may_be_absolute() {
        let c = ok(r#"
[[actor]]
name = "bank"
kind = "exec"
command = ["/usr/bin/env"]
cwd = "/srv/bank"

[actor.env]
ZED = "last"
"A B" = ""
"#);
        let launch = &c.actors[0].launch;
        assert_eq!(launch.cwd, Some(PathBuf::from("/srv/bank")));
        let names: Vec<_> = launch.env.keys().map(String::as_str).collect();
        assert_eq!(names, ["A B", "ZED"], "sorted by name");
        assert_eq!(launch.env["A B"], "");
        // Relative cwd with a relative config path.
        let text = "[[actor]]\nname = \"x\"\nkind = \"exec\"\ncommand = [\"x\"]\ncwd = \"..\"\n";
        let c = Config::parse(text, Path::new("conf/r.toml"), &Environment::default()).unwrap();
        assert_eq!(c.actors[0].launch.cwd, Some(PathBuf::from("conf/..")));
    }

    #[test]
    fn defaults_launch_settings_are_inherited_and_an_actor_overrides_them() {
        let c = ok(r#"
[defaults]
user = "svc"
group = "svc"
limit_memory = "1G"
limit_core = "0"
limit_cpu = "90s"

[[actor]]
name = "a"
kind = "counter"

[[actor]]
name = "b"
kind = "counter"
user = 0
limit_memory = 17179869184
limit_cpu = "1500ms"
limit_processes = 10
"#);
        let a = &c.actor("a").unwrap().launch;
        assert_eq!(a.user.as_ref().unwrap().value, "svc");
        assert_eq!(a.user.as_ref().unwrap().line, 3, "points into [defaults]");
        assert_eq!(a.group.as_ref().unwrap().value, "svc");
        assert_eq!(
            a.limits,
            Limits {
                memory: Some(1 << 30),
                core: Some(0),
                cpu_seconds: Some(90),
                ..Limits::default()
            }
        );
        let b = &c.actor("b").unwrap().launch;
        assert_eq!(
            b.user,
            Some(Located {
                value: "0".to_string(),
                line: 16,
                column: 8
            })
        );
        assert_eq!(b.group, a.group, "not overridden");
        assert_eq!(
            b.limits,
            Limits {
                memory: Some(16 << 30),
                core: Some(0),
                cpu_seconds: Some(2),
                processes: Some(10),
                open_files: None,
            },
            "1500ms rounds up to 2 CPU seconds"
        );
        // Numeric strings stay as written: resolution happens in the supervisor.
        let c = ok(
            "[defaults]\nuser = \"1000\"\ngroup = \"0\"\n[[actor]]\nname = \"a\"\nkind = \"k\"\n",
        );
        let launch = &c.actors[0].launch;
        assert_eq!(launch.user.as_ref().unwrap().value, "1000");
        assert_eq!(launch.group.as_ref().unwrap().value, "0");
        // Largest id and largest open-files limit.
        let c = ok(
            "[defaults]\nuser = 4294967294\nlimit_open_files = 1048576\nlimit_cpu = \"1s\"\n[[actor]]\nname = \"a\"\nkind = \"k\"\n",
        );
        let launch = &c.actors[0].launch;
        assert_eq!(launch.user.as_ref().unwrap().value, "4294967294");
        assert_eq!(launch.limits.open_files, Some(1 << 20));
        assert_eq!(launch.limits.cpu_seconds, Some(1));
        // The smallest memory limit is accepted.
        let c = ok("[[actor]]\nname = \"a\"\nkind = \"k\"\nlimit_memory = \"16MiB\"\n");
        assert_eq!(c.actors[0].launch.limits.memory, Some(MIN_LIMIT_MEMORY));
    }

    #[test]
    fn same_settings_ignores_where_values_are_written() {
        let a = ok(EXEC_EXAMPLE).actor("bank").unwrap().launch.clone();
        let moved = ok(&format!("\n\n# a comment\n{EXEC_EXAMPLE}"))
            .actor("bank")
            .unwrap()
            .launch
            .clone();
        assert_ne!(a, moved, "== sees the lines");
        assert!(a.same_settings(&moved));
        let mut other = a.clone();
        other.user.as_mut().unwrap().value = "root".to_string();
        assert!(!a.same_settings(&other));
        let mut other = a.clone();
        other.limits.cpu_seconds = None;
        assert!(!a.same_settings(&other));
        let mut other = a.clone();
        other.env.clear();
        assert!(!a.same_settings(&other));
    }

    #[test]
    fn exec_without_command_is_reported_at_the_actor_header() {
        let e = one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\n\n[[actor]]\nname = \"bank\"\nkind = \"exec\"\n",
            5,
            &[],
        );
        assert_eq!(
            e.message,
            "actor \"bank\": kind \"exec\" needs `command`, the program to run as an argv \
             array, e.g. command = [\"python3\", \"bank.py\"]"
        );
        // A command of the wrong type is reported once, not also as missing.
        one_error(
            "[[actor]]\nname = \"bank\"\nkind = \"exec\"\ncommand = \"python3 bank.py\"\n",
            4,
            &["actor \"bank\" command", "array of strings"],
        );
        // Inline-table actors point at their table.
        one_error(
            "actor = [{ name = \"x\", kind = \"exec\" }]",
            1,
            &["command"],
        );
    }

    #[test]
    fn exec_keys_on_a_built_in_kind_are_reported_at_the_key() {
        let e = one_error(
            "[[actor]]\nname = \"c\"\nkind = \"counter\"\n  command = [\"x\"]\n",
            4,
            &[],
        );
        assert_eq!(
            e.message,
            "actor \"c\" command: only actors of kind \"exec\" run a command; kind \"counter\" \
             is built in"
        );
        assert_eq!(e.column, Some(3), "at the key");
        let errs = errors(
            "[[actor]]\nname = \"c\"\nkind = \"kv\"\nenv = { A = \"1\" }\ncwd = \"x\"\n[actor.x]\n",
        );
        let got: Vec<_> = errs.iter().map(|e| (e.line, e.message.as_str())).collect();
        assert_eq!(got.len(), 3, "{errs:#?}");
        assert_eq!(got[0].0, Some(4));
        assert!(
            got[0]
                .1
                .starts_with("actor \"c\" env: only actors of kind \"exec\"")
        );
        assert_eq!(got[1].0, Some(5));
        assert!(got[1].1.starts_with("actor \"c\" cwd: only actors"));
        assert!(got[2].1.contains("unknown key `x`"), "{}", got[2].1);
        // A sub-table is reported at its header.
        one_error(
            "[[actor]]\nname = \"c\"\nkind = \"kv\"\n\n[actor.env]\nA = \"1\"\n",
            5,
            &["env", "only actors of kind \"exec\""],
        );
        // An invalid kind was reported already: no second error about exec keys.
        one_error(
            "[[actor]]\nname = \"c\"\nkind = \"\"\ncommand = [\"x\"]\n",
            3,
            &["kind", "empty"],
        );
    }

    #[test]
    fn bad_command_items_are_each_reported_at_the_item() {
        let exec = |command: &str| {
            format!("[[actor]]\nname = \"bank\"\nkind = \"exec\"\ncommand = {command}\n")
        };
        one_error(
            &exec("[]"),
            4,
            &["actor \"bank\" command: must not be empty", "python3"],
        );
        let e = one_error(
            &exec("[\"python3\", 8080]"),
            4,
            &["command[1]", "an integer"],
        );
        assert_eq!(e.column, Some(23), "at the item");
        one_error(
            &exec("[\"\", \"x\"]"),
            4,
            &["command[0]", "program", "empty"],
        );
        one_error(&exec("[\"x\", \"\"]"), 4, &["command[1]", "empty string"]);
        one_error(&exec("[\"x\", \"a\\u0000b\"]"), 4, &["command[1]", "NUL"]);
        one_error(&exec("[\"x\", [\"y\"]]"), 4, &["command[1]", "an array"]);
        one_error(&exec("[\"x\", { y = 1 }]"), 4, &["command[1]", "a table"]);
        one_error(
            &exec("[\"x\", 1979-05-27]"),
            4,
            &["command[1]", "date/time"],
        );
        one_error(&exec("[true]"), 4, &["command[0]", "a boolean"]);
        one_error(&exec("[1.5]"), 4, &["command[0]", "a float"]);
        one_error(&exec("{ a = 1 }"), 4, &["command", "array of strings"]);
        // Every bad item is reported, each on its own line.
        let text = "[[actor]]\nname = \"bank\"\nkind = \"exec\"\ncommand = [\n  \"\",\n  \"ok\",\n  1,\n  \"\",\n]\n";
        let lines: Vec<_> = errors(text).iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(5), Some(7), Some(8)]);
    }

    #[test]
    fn bad_env_names_and_values_are_each_reported() {
        let exec = |env: &str| {
            format!("[[actor]]\nname = \"bank\"\nkind = \"exec\"\ncommand = [\"x\"]\n{env}\n")
        };
        one_error(
            &exec("env = \"A=1\""),
            5,
            &["actor \"bank\" env", "table of strings"],
        );
        one_error(&exec("env = [\"A=1\"]"), 5, &["env", "table of strings"]);
        one_error(&exec("env = 1979-05-27"), 5, &["env", "table of strings"]);
        let e = one_error(
            &exec("env = { PORT = 8080 }"),
            5,
            &["env.PORT", "an integer"],
        );
        assert_eq!(e.column, Some(16), "at the value");
        let e = one_error(
            &exec("env = { \"\" = \"x\" }"),
            5,
            &["env", "name must not be empty"],
        );
        assert_eq!(e.column, Some(9), "at the name");
        one_error(&exec("env = { \"A=B\" = \"x\" }"), 5, &["\"A=B\"", "'='"]);
        one_error(&exec("env = { \"A\\u0000\" = \"x\" }"), 5, &["NUL"]);
        one_error(&exec("env = { A = \"x\\u0000\" }"), 5, &["env.A", "NUL"]);
        for reserved in RESERVED_ENV {
            one_error(
                &exec(&format!("env = {{ {reserved} = \"3\" }}")),
                5,
                &[reserved, "reserved", "RESURGAM_FD and RESURGAM_ACTOR"],
            );
        }
        one_error(
            &exec("env = { A = { B = \"c\" } }"),
            5,
            &["env.A", "a table"],
        );
        // Every problem, one per line, in a sub-table.
        let text = exec("[actor.env]\nOK = \"1\"\nRESURGAM_FD = \"3\"\nN = 1\n\"X=Y\" = 2\n");
        let lines: Vec<_> = errors(&text).iter().map(|e| e.line).collect();
        assert_eq!(lines, [Some(7), Some(8), Some(9), Some(9)]);
    }

    #[test]
    fn bad_cwd() {
        let exec = |cwd: &str| {
            format!("[[actor]]\nname = \"bank\"\nkind = \"exec\"\ncommand = [\"x\"]\ncwd = {cwd}\n")
        };
        one_error(&exec("\"\""), 5, &["actor \"bank\" cwd", "empty"]);
        one_error(&exec("\"a\\u0000\""), 5, &["cwd", "NUL"]);
        one_error(&exec("1"), 5, &["cwd", "path string"]);
    }

    #[test]
    fn bad_user_and_group() {
        one_error(
            &defaults_with("user = \"\""),
            2,
            &["[defaults] user", "empty", "uid"],
        );
        one_error(
            &defaults_with("group = \"\""),
            2,
            &["[defaults] group", "empty", "gid"],
        );
        one_error(&defaults_with("user = \"a\\u0000\""), 2, &["user", "NUL"]);
        one_error(
            &defaults_with("user = -1"),
            2,
            &["user", "-1", "not a valid uid", "4294967294"],
        );
        one_error(
            &defaults_with("group = 4294967295"),
            2,
            &["group", "not a valid gid"],
        );
        one_error(
            &defaults_with("user = 1.5"),
            2,
            &["user", "user name or a numeric uid"],
        );
        one_error(
            &defaults_with("group = true"),
            2,
            &["group", "group name or a numeric gid"],
        );
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\nuser = \"\"\n",
            4,
            &["actor \"a\" user", "empty"],
        );
    }

    #[test]
    fn sizes_parse_with_binary_units() {
        let good: [(&str, u64); 16] = [
            ("0", 0),
            ("4096", 4096),
            ("4096B", 4096),
            ("64KiB", 64 << 10),
            ("64K", 64 << 10),
            ("512MiB", 512 << 20),
            ("100M", 100 << 20),
            ("2GiB", 2 << 30),
            ("1G", 1 << 30),
            ("3TiB", 3 << 40),
            ("1T", 1 << 40),
            (" 512 MiB ", 512 << 20),
            ("16777215T", 16_777_215 << 40),
            ("18446744073709551615", u64::MAX),
            ("18446744073709551615B", u64::MAX),
            ("007M", 7 << 20),
        ];
        for (text, bytes) in good {
            assert_eq!(parse_size(text), Ok(bytes), "{text:?}");
        }
        let bad: [(&str, &str); 14] = [
            ("", "empty"),
            ("  ", "empty"),
            ("-1", "negative"),
            ("-5G", "negative"),
            ("1.5G", "whole number"),
            ("0,5M", "whole number"),
            ("G", "does not start with a number"),
            ("+5", "does not start with a number"),
            ("16777216T", "too large"),
            ("18446744073709551616", "too large"),
            ("5 parsecs", "unknown unit \"parsecs\""),
            ("1MB", "ambiguous: write MiB"),
            ("1kB", "ambiguous: write KiB"),
            ("1mib", "unknown unit"),
        ];
        for (text, needle) in bad {
            let e = parse_size(text).unwrap_err().to_string();
            assert!(
                e.contains(needle),
                "{text:?}: {e} should mention {needle:?}"
            );
            assert!(
                e.contains(&format!("{text:?}")),
                "{e} should name the input"
            );
        }
        assert!(
            parse_size("1x")
                .unwrap_err()
                .to_string()
                .contains(SIZE_UNITS)
        );
        assert_eq!(
            parse_size(" 5 parsecs"),
            Err(SizeError::UnknownUnit {
                text: " 5 parsecs".to_string(),
                unit: "parsecs".to_string(),
            })
        );
        for (bytes, text) in [
            (0, "0B"),
            (1, "1B"),
            (1536, "1536B"),
            (16 << 20, "16MiB"),
            (3 << 40, "3TiB"),
            (1025 << 10, "1025KiB"),
        ] {
            assert_eq!(format_size(bytes), text);
            assert_eq!(parse_size(text), Ok(bytes));
        }
    }

    #[test]
    fn bad_limits() {
        let e = one_error(&defaults_with("limit_memory = \"8MiB\""), 2, &[]);
        assert_eq!(
            e.message,
            "[defaults] limit_memory: 8MiB is too small; a worker needs at least 16MiB of \
             address space to start (remove the key for no limit)"
        );
        one_error(
            &defaults_with("limit_memory = 16777215"),
            2,
            &["16777215B", "at least 16MiB"],
        );
        one_error(
            &defaults_with("limit_memory = \"1.5G\""),
            2,
            &["limit_memory", "whole number"],
        );
        one_error(
            &defaults_with("limit_memory = \"2GB\""),
            2,
            &["limit_memory", "GiB", "KiB"],
        );
        one_error(
            &defaults_with("limit_memory = -1"),
            2,
            &["limit_memory", "negative"],
        );
        one_error(
            &defaults_with("limit_memory = 1.5"),
            2,
            &["limit_memory", "a size"],
        );
        one_error(
            &defaults_with("limit_core = \"-1\""),
            2,
            &["limit_core", "negative"],
        );
        one_error(
            &defaults_with("limit_core = \"\""),
            2,
            &["limit_core", "empty"],
        );
        for bad in ["0", "-1", "1048577"] {
            one_error(
                &defaults_with(&format!("limit_open_files = {bad}")),
                2,
                &["limit_open_files", bad, "1 to 1048576"],
            );
        }
        one_error(
            &defaults_with("limit_open_files = \"1k\""),
            2,
            &["limit_open_files", "integer"],
        );
        for bad in ["0", "-3"] {
            one_error(
                &defaults_with(&format!("limit_processes = {bad}")),
                2,
                &["limit_processes", bad, ">= 1"],
            );
        }
        one_error(
            &defaults_with("limit_cpu = \"0s\""),
            2,
            &["limit_cpu", "at least \"1s\""],
        );
        one_error(
            &defaults_with("limit_cpu = \"999ms\""),
            2,
            &["limit_cpu", "999ms", "1s"],
        );
        one_error(
            &defaults_with("limit_cpu = 10"),
            2,
            &["limit_cpu", "duration"],
        );
        one_error(
            &defaults_with("limit_cpu = \"10\""),
            2,
            &["limit_cpu", "no unit"],
        );
        // An actor's bad limit names the actor; a bad [defaults] limit is reported once.
        one_error(
            "[[actor]]\nname = \"a\"\nkind = \"k\"\nlimit_open_files = 0\n",
            4,
            &["actor \"a\" limit_open_files"],
        );
        let text = "[defaults]\nlimit_memory = \"1M\"\n[[actor]]\nname = \"a\"\nkind = \"k\"\n[[actor]]\nname = \"b\"\nkind = \"k\"";
        assert_eq!(errors(text).len(), 1);
    }

    #[test]
    fn all_launch_errors_are_collected() {
        let text = r#"
[defaults]
user = ""
limit_memory = "1K"

[[actor]]
name = "bank"
kind = "exec"
env = { RESURGAM_ACTOR = "x", N = 1 }
cwd = ""
limit_cpu = "0s"

[[actor]]
name = "c"
kind = "counter"
command = ["x"]
group = -1
"#;
        let errs = errors(text);
        let lines: Vec<_> = errs.iter().map(|e| e.line).collect();
        assert_eq!(
            lines,
            [
                Some(3),
                Some(4),
                Some(6),
                Some(9),
                Some(9),
                Some(10),
                Some(11),
                Some(16),
                Some(17)
            ],
            "{errs:#?}"
        );
        assert!(errs[2].message.contains("needs `command`"));
    }

    // ----- reference and names ---------------------------------------------------------

    #[test]
    fn valid_names() {
        for good in ["a", "A-b_9", "counter", &"z".repeat(64)] {
            assert!(valid_actor_name(good), "{good:?}");
        }
        for bad in [
            "",
            ".",
            "..",
            "../x",
            "a/b",
            "a b",
            "é",
            "a\0",
            &"z".repeat(65),
        ] {
            assert!(!valid_actor_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn metrics_listen_is_an_address_and_off_by_default() {
        assert_eq!(ok("").supervisor.metrics_listen, None);
        let c = ok("[supervisor]\nmetrics_listen = \"127.0.0.1:9464\"\n");
        assert_eq!(
            c.supervisor.metrics_listen,
            Some("127.0.0.1:9464".parse().unwrap())
        );
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = ok("[supervisor]\nmetrics_listen = \"[::1]:0\"\n");
        assert!(c.warnings.is_empty(), "{:?}", c.warnings);
        let c = ok("[supervisor]\nmetrics_listen = \"0.0.0.0:9464\"\n");
        assert_eq!(c.warnings.len(), 1, "{:?}", c.warnings);
        assert!(c.warnings[0].to_string().contains("no authentication"));
        one_error(
            "[supervisor]\nmetrics_listen = \"localhost:9464\"\n",
            2,
            &["metrics_listen", "127.0.0.1:9464"],
        );
        one_error(
            "[supervisor]\nmetrics_listen = 9464\n",
            2,
            &["metrics_listen"],
        );
    }

    #[test]
    fn reference_matches_the_parser() {
        let entries = reference();
        let mut seen = std::collections::HashSet::new();
        for (table, key, _, meaning) in &entries {
            assert!(seen.insert((*table, *key)), "{table}.{key} listed twice");
            assert!(!meaning.is_empty());
        }
        // Every [defaults] key is accepted in [defaults] and in [[actor]], and the literal
        // defaults equal Policy::default().
        let mut defaults = String::from("[defaults]\n");
        let mut actor = String::from("[[actor]]\nname = \"a\"\nkind = \"k\"\n");
        for (table, key, default, _) in &entries {
            if *table == "defaults" && !default.contains('<') {
                defaults.push_str(&format!("{key} = {default}\n"));
                actor.push_str(&format!("{key} = {default}\n"));
            }
            if *table == "supervisor" && !default.contains('<') {
                // Supervisor literals parse and are the defaults.
                let c = ok(&format!("[supervisor]\n{key} = {default}\n"));
                let mut expected = ok("").supervisor;
                if *key == "state_dir" {
                    expected.state_dir = PathBuf::from("/etc/resurgam/resurgam-state");
                    expected.runtime_dir = expected.state_dir.join("run");
                    expected.socket = expected.runtime_dir.join("control.sock");
                }
                assert_eq!(c.supervisor, expected, "{key}");
            }
        }
        let c = ok(&format!("{defaults}\n{actor}"));
        assert_eq!(c.actors[0].policy, Policy::default());
        // Every key of every table appears in the reference.
        let keys: Vec<_> = entries
            .iter()
            .map(|(t, k, _, _)| format!("{t}.{k}"))
            .collect();
        for k in [
            "supervisor.socket_mode",
            "defaults.durability",
            "actor.kind",
            "defaults.heartbeat_timeout",
        ] {
            assert!(keys.contains(&k.to_string()), "{k}");
        }
        assert_eq!(entries.iter().filter(|e| e.0 == "defaults").count(), 21);
        assert_eq!(entries.iter().filter(|e| e.0 == "supervisor").count(), 14);
        assert_eq!(entries.iter().filter(|e| e.0 == "actor").count(), 5);

        // The parser accepts exactly the keys of the reference: compare with the list its
        // unknown-key error gives (an [[actor]] takes its own keys and every [defaults] key).
        let listed = |table: &str| -> Vec<String> {
            let mut keys: Vec<String> = entries
                .iter()
                .filter(|e| e.0 == table || (table == "actor" && e.0 == "defaults"))
                .map(|e| e.1.to_string())
                .collect();
            keys.sort();
            keys
        };
        for (table, text) in [
            ("supervisor", "[supervisor]\nzz = 1\n"),
            ("defaults", "[defaults]\nzz = 1\n"),
            ("actor", "[[actor]]\nname = \"a\"\nkind = \"k\"\nzz = 1\n"),
        ] {
            let message = errors(text).remove(0).message;
            let (_, allowed) = message.split_once("expected one of").expect(&message);
            let mut accepted: Vec<String> = allowed
                .split('`')
                .skip(1)
                .step_by(2)
                .map(String::from)
                .collect();
            accepted.sort();
            assert_eq!(accepted, listed(table), "{table}: {message}");
        }
        // Every actor-only launch key parses with an example value.
        let c = ok(
            "[[actor]]\nname = \"a\"\nkind = \"exec\"\ncommand = [\"x\"]\nenv = {}\ncwd = \"d\"\n",
        );
        assert_eq!(
            c.actors[0].launch.cwd,
            Some(PathBuf::from("/etc/resurgam/d"))
        );
    }

    #[test]
    fn durability_names_round_trip() {
        for d in Durability::ALL {
            assert_eq!(Durability::from_name(d.as_str()), Some(d));
            assert_eq!(serde_json::to_string(&d).unwrap(), format!("\"{d}\""));
        }
        assert_eq!(Durability::from_name("Log"), None);
    }

    // ----- never panics ----------------------------------------------------------------

    fn mutate(base: &str, edits: &[(usize, u8, char)]) -> String {
        let mut chars: Vec<char> = base.chars().collect();
        for &(pos, op, c) in edits {
            if chars.is_empty() {
                chars.push(c);
                continue;
            }
            let i = pos % chars.len();
            match op % 4 {
                0 => {
                    chars.remove(i);
                }
                1 => chars.insert(i, c),
                2 => chars[i] = c,
                _ => {
                    // Duplicate a line-sized chunk to create duplicate keys/actors.
                    let end = (i + 40).min(chars.len());
                    let chunk: Vec<char> = chars[i..end].to_vec();
                    chars.splice(i..i, chunk);
                }
            }
        }
        chars.into_iter().collect()
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(512))]

        #[test]
        fn parse_never_panics_on_arbitrary_text(text in any::<String>()) {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_tomlish_text(text in "[\\[\\]a-z_=\"'0-9. \n#{},:-]{0,200}") {
            let _ = parse(&text);
        }

        #[test]
        fn parse_never_panics_on_mutated_config(
            base in prop_oneof![Just(FULL_EXAMPLE), Just(EXEC_EXAMPLE)],
            edits in proptest::collection::vec(
                (any::<usize>(), any::<u8>(), prop_oneof![
                    Just('"'), Just('['), Just(']'), Just('='), Just('\n'), Just('-'),
                    Just('0'), Just('9'), Just('s'), Just('é'), Just('.'), Just('/'),
                    any::<char>(),
                ]),
                1..8,
            )
        ) {
            let text = mutate(base, &edits);
            match parse(&text) {
                Ok(c) => {
                    for a in &c.actors {
                        prop_assert!(valid_actor_name(&a.name));
                        prop_assert!(a.line >= 1 && a.kind_line >= 1);
                        let launch = &a.launch;
                        if a.kind == EXEC_KIND {
                            let command = launch.command.as_ref();
                            prop_assert!(command.is_some_and(|c| !c.is_empty() && !c[0].is_empty()));
                        } else {
                            prop_assert!(launch.command.is_none() && launch.env.is_empty());
                            prop_assert!(launch.cwd.is_none());
                        }
                        prop_assert!(launch.limits.memory.is_none_or(|m| m >= MIN_LIMIT_MEMORY));
                    }
                }
                Err(errs) => {
                    prop_assert!(!errs.0.is_empty());
                    let lines = text.split('\n').count();
                    for e in &errs.0 {
                        prop_assert!(!e.message.is_empty());
                        if let Some(l) = e.line {
                            prop_assert!(l >= 1 && l <= lines, "line {} of {}", l, lines);
                        }
                    }
                }
            }
        }
    }
}
