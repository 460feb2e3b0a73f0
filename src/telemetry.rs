//! Logging setup: `USERHOOKS_LOG` (or `RUST_LOG`) filters, `USERHOOKS_LOG_FORMAT` picks text
//! or JSON lines.

use tracing_subscriber::EnvFilter;

#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormat {
    Text,
    Json,
}

/// `default_filter` applies when neither variable is set.
pub fn init(format: LogFormat, default_filter: &str) {
    let filter = std::env::var("USERHOOKS_LOG")
        .ok()
        .or_else(|| std::env::var("RUST_LOG").ok())
        .map(|f| with_quiet_driver(&f))
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    // Colour codes only for a person at a terminal: in a file, a pipe or a log collector they
    // are noise around every field.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// At debug level the Postgres driver logs every statement *with its parameters* (user ids,
/// URLs, results). Keep it at info unless the filter names it explicitly.
fn with_quiet_driver(filter: &str) -> String {
    if filter.contains("tokio_postgres") {
        filter.to_string()
    } else {
        format!("{filter},tokio_postgres=info")
    }
}

/// An error and its whole `source()` chain on one line (`outer: cause: root cause`), skipping
/// a cause whose text the outer message already contains.
pub fn error_chain(err: &(dyn std::error::Error + 'static)) -> String {
    let mut message = err.to_string();
    let mut source = err.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

/// Lets one log line through per `interval` and counts the ones it held back, so an error
/// that repeats (Sequin down, every request rescheduled) is reported, not flooded.
pub struct RateLimit {
    interval: std::time::Duration,
    state: std::sync::Mutex<(Option<std::time::Instant>, u64)>,
}

impl RateLimit {
    pub const fn new(interval: std::time::Duration) -> Self {
        RateLimit {
            interval,
            state: std::sync::Mutex::new((None, 0)),
        }
    }

    /// `Some(suppressed)` when this line may be logged (with how many were held back since
    /// the last one), `None` when it should be dropped.
    pub fn check(&self) -> Option<u64> {
        let now = std::time::Instant::now();
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        match state.0 {
            Some(last) if now.duration_since(last) < self.interval => {
                state.1 += 1;
                None
            }
            _ => {
                let suppressed = state.1;
                *state = (Some(now), 0);
                Some(suppressed)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn debug_filter_keeps_the_postgres_driver_quiet_unless_asked() {
        assert_eq!(with_quiet_driver("debug"), "debug,tokio_postgres=info");
        assert_eq!(
            with_quiet_driver("info,tokio_postgres=trace"),
            "info,tokio_postgres=trace"
        );
    }

    #[test]
    fn rate_limit_lets_one_line_through_per_interval_and_counts_the_rest() {
        let limit = RateLimit::new(Duration::from_millis(200));
        assert_eq!(limit.check(), Some(0));
        assert_eq!(limit.check(), None);
        assert_eq!(limit.check(), None);
        std::thread::sleep(Duration::from_millis(250));
        assert_eq!(limit.check(), Some(2));
    }

    #[test]
    fn error_chain_names_every_cause_once() {
        let inner = std::io::Error::new(std::io::ErrorKind::ConnectionRefused, "refused");
        assert_eq!(error_chain(&Wrapper(inner)), "wrapped: refused");
    }

    #[derive(Debug)]
    struct Wrapper(std::io::Error);
    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("wrapped")
        }
    }
    impl std::error::Error for Wrapper {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            Some(&self.0)
        }
    }
}
