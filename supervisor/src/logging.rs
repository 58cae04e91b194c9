//! Logging: `tracing` to stderr, one line per event with actor and pid fields
//! (journald-friendly). `RESURGAM_LOG` sets the filter (default `info`).

use resurgam_shared::config::Config;
use tracing_subscriber::EnvFilter;

/// Output format of the log lines.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

pub fn init(format: LogFormat) {
    let filter = EnvFilter::try_from_env("RESURGAM_LOG").unwrap_or_else(|_| EnvFilter::new("info"));
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
        LogFormat::Text => builder.try_init(),
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
