//! Logging set-up: tracing to stderr as pretty text or JSON lines, through a non-blocking
//! writer so that request threads never wait on the terminal.

use tracing_subscriber::EnvFilter;

use crate::snapshot::{LogFormat, LogSettings};

/// Keeps the background log writer alive; drop it last.
pub struct LogGuard(#[allow(dead_code)] Option<tracing_appender::non_blocking::WorkerGuard>);

/// Installs the global subscriber. `log` records (Pingora's) are bridged at warn and above.
pub fn init(logging: &LogSettings) -> LogGuard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| {
            EnvFilter::try_new(format!(
                "{},pingora=warn,pingora_core=warn,pingora_proxy=warn",
                logging.level
            ))
        })
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (writer, guard) = tracing_appender::non_blocking::NonBlockingBuilder::default()
        .lossy(false)
        .finish(std::io::stderr());
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(ansi);
    let result = match logging.format {
        LogFormat::Json => builder
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .try_init(),
        LogFormat::Pretty => builder.with_target(true).try_init(),
    };
    if result.is_err() {
        return LogGuard(None);
    }
    LogGuard(Some(guard))
}
