//! Logging: `tracing` to stderr, one line per event with actor and pid fields, or,
//! under systemd with stderr on the journal, native journal entries with a priority and
//! `RESURGAM_*` fields (see [`crate::journal`]). `RESURGAM_LOG` sets the filter
//! (default `info`).

use resurgam_shared::config::Config;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt as _;
use tracing_subscriber::util::SubscriberInitExt as _;

use crate::journal::{self, JournalLayer};

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    /// One `LEVEL message key=value…` line per event, for terminals and files.
    Text,
    /// One JSON object per line.
    Json,
    /// Native journald entries (PRIORITY, RESURGAM_ACTOR, …); plain text when the
    /// journal's socket is unusable.
    Journal,
}

/// Installs the global subscriber. `None`: journal entries when stderr is the journal
/// stream systemd set up (`JOURNAL_STREAM`), plain text otherwise.
pub fn init(format: Option<LogFormat>) {
    let filter = EnvFilter::try_from_env("RESURGAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
    let format = format.unwrap_or(if journal::stderr_is_journal() {
        LogFormat::Journal
    } else {
        LogFormat::Text
    });
    if format == LogFormat::Journal
        && let Some(layer) = JournalLayer::new()
    {
        let _ = tracing_subscriber::registry()
            .with(filter)
            .with(layer)
            .try_init();
        return;
    }
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colour only on a terminal: files and the journal get plain `key=value` lines.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        // A log line that cannot be written (stderr closed: `resurgam run | head`, a
        // full disk) is dropped. By default the subscriber would report it with
        // `eprintln!`, which panics on the same closed stderr and took the supervisor,
        // and with it every worker, down.
        .log_internal_errors(false);
    let _ = match format {
        LogFormat::Text | LogFormat::Journal => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
}

/// Logs a config's warnings (legal but risky choices) at WARN, one line each with its
/// `FILE:LINE:COL`, as `check` prints them.
pub fn config_warnings(config: &Config) {
    for w in &config.warnings {
        tracing::warn!("{}", w.0);
    }
}
