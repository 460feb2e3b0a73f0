//! The emulator's command line, shared by its own binary and `userhooks emulator`.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::{DeliveryConfig, EmulatorConfig, Faults};

#[derive(Args, Debug)]
pub struct EmulatorArgs {
    /// Address to listen on.
    #[arg(long, env = "EMULATOR_LISTEN", default_value = "127.0.0.1:7376")]
    pub listen: SocketAddr,
    /// The one API token the emulator accepts.
    #[arg(long, env = "SEQUIN_API_TOKEN", hide_env_values = true)]
    pub token: String,
    /// Sequin's name of the source database.
    #[arg(long, env = "SEQUIN_DATABASE", default_value = "app")]
    pub database: String,
    /// Tables known in that database (repeat the flag for more).
    #[arg(long = "table", default_value = "public.notifications")]
    pub tables: Vec<String>,
    /// Initial faults as JSON (same shape as PUT /_emulator/faults); a rate outside 0..=1 or
    /// a negative delay is refused.
    #[arg(long)]
    pub faults: Option<String>,
    /// Deliver webhooks: follow the source tables in this Postgres database and POST
    /// Sequin-shaped messages to each sink's endpoint (off by default).
    #[arg(long, value_name = "DATABASE_URL", hide_env_values = true)]
    pub deliver_from: Option<String>,
    /// Column compared with each sink's `annotations.user_id` when delivering.
    #[arg(long, default_value = "user_id")]
    pub user_column: String,
    /// How often delivery polls the change log (e.g. 200ms).
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    pub delivery_poll_interval: Duration,
    /// Whether the account may use functions; `false` behaves like a Sequin Cloud account
    /// without the function_transforms feature.
    #[arg(long, default_value = "true", action = clap::ArgAction::Set)]
    pub functions_enabled: bool,
}

fn parse_duration(text: &str) -> Result<Duration, String> {
    humantime::parse_duration(text).map_err(|e| format!("{e} (write durations like 200ms, 2s)"))
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("--faults: {0}")]
    Faults(String),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("emulator stopped: {0}")]
    Serve(std::io::Error),
}

/// Serve the emulator described by `args` until `shutdown`.
pub async fn run(
    args: EmulatorArgs,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let faults = match &args.faults {
        Some(text) => Faults::parse(text.as_bytes()).map_err(CliError::Faults)?,
        None => Faults::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: args.listen,
            source,
        })?;
    let config = EmulatorConfig {
        token: args.token,
        database: args.database,
        tables: args.tables,
        faults,
        delivery: args.deliver_from.map(|url| DeliveryConfig {
            user_column: args.user_column,
            poll_interval: args.delivery_poll_interval,
            ..DeliveryConfig::new(url)
        }),
        functions_enabled: args.functions_enabled,
        ..EmulatorConfig::default()
    };
    eprintln!(
        "Sequin emulator listening on http://{}/api (control routes under /_emulator/)",
        args.listen
    );
    crate::serve(config, listener, shutdown)
        .await
        .map_err(CliError::Serve)
}
