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
        .and_then(|f| EnvFilter::try_new(f).ok())
        .unwrap_or_else(|| EnvFilter::new(default_filter));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}
