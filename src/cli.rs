//! Command-line interface (clap): flags with environment fallbacks.

use std::net::SocketAddr;

use clap::{Args, Parser, Subcommand};

use crate::config::{DatabaseArgs, WorkerArgs};
use crate::telemetry::LogFormat;

#[derive(Parser, Debug)]
#[command(
    name = "userhooks",
    version,
    about = "Give every user of your application their own webhook, provisioned in Sequin from a Postgres outbox"
)]
pub struct Cli {
    /// Log format.
    #[arg(
        long,
        env = "USERHOOKS_LOG_FORMAT",
        default_value = "text",
        global = true
    )]
    pub log_format: LogFormat,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create or upgrade the userhooks schema (safe to run twice, or from two processes).
    Migrate(MigrateArgs),
    /// Run the worker.
    Run(Box<WorkerArgs>),
    /// Run the strict Sequin Management API emulator.
    Emulator(EmulatorArgs),
    /// Show the whole flow on this machine: emulator with delivery, worker, a few users.
    Demo(DemoArgs),
    /// Insert notifications for random existing users (the seed's generator).
    GenerateNotifications(GenerateArgs),
    /// Serve the tutorial's HTTP API (POST /subscribe, POST /backfill, ...) over the outbox.
    Serve(ServeArgs),
    /// Compare webhook_subscriptions with Sequin; report drift, fix it with --repair.
    Reconcile(ReconcileArgs),
    /// Queue by action and status, subscriptions by status, open backfills.
    Status(DatabaseArgs),
    /// Re-queue failed requests: one by id, or all with --failed.
    Retry(RetryArgs),
    /// End-to-end benchmark (burn-down, pickup, idle, claim).
    Bench(crate::bench::BenchArgs),
}

#[derive(Args, Debug)]
pub struct ReconcileArgs {
    #[command(flatten)]
    pub worker: Box<WorkerArgs>,
    /// Fix what differs: recreate missing resources, patch drifted fields, delete orphans.
    #[arg(long)]
    pub repair: bool,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Subscriptions checked at once (each is two Sequin GETs).
    #[arg(long, default_value_t = 16)]
    pub parallel: usize,
}

/// `userhooks reconcile`: exits non-zero while differences remain.
pub async fn run_reconcile(args: ReconcileArgs) -> Result<(), CliError> {
    let config = args
        .worker
        .into_config()
        .map_err(|e| CliError(e.to_string()))?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "[{bar:40}] {pos}/{len} subscriptions checked ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
        .progress_chars("=> "),
    );
    let options = crate::reconcile::Options {
        repair: args.repair,
        concurrency: args.parallel,
    };
    let report = crate::reconcile::reconcile(&config, &options, |done, total| {
        bar.set_length(total);
        bar.set_position(done);
    })
    .await
    .map_err(|e| CliError(e.to_string()))?;
    bar.finish_and_clear();
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", crate::reconcile::render(&report, args.repair));
    }
    let left = report.unresolved() + report.errors.len();
    if left > 0 {
        return Err(CliError(format!(
            "{left} differences or errors remain{}",
            if args.repair {
                ""
            } else {
                " (run with --repair to fix)"
            }
        )));
    }
    Ok(())
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Address to listen on (the tutorial's app used port 3333).
    #[arg(long, env = "USERHOOKS_SERVE_LISTEN", default_value = "127.0.0.1:3333")]
    pub listen: SocketAddr,
    /// Longest wait for a request to finish before answering 202 with its id.
    #[arg(long, default_value = "10s", value_parser = crate::config::parse_duration)]
    pub wait: std::time::Duration,
    /// Sequin's Management API (optional): lets serve answer 503 when Sequin rejects the
    /// worker's token, instead of 202.
    #[arg(long, env = "SEQUIN_API_URL")]
    pub sequin_api_url: Option<String>,
    /// The worker's Sequin API token (optional, see --sequin-api-url).
    #[arg(long, env = "SEQUIN_API_TOKEN", hide_env_values = true)]
    pub sequin_api_token: Option<String>,
    /// File holding the token.
    #[arg(long, env = "SEQUIN_API_TOKEN_FILE")]
    pub sequin_api_token_file: Option<std::path::PathBuf>,
}

/// `userhooks serve`: until `shutdown`.
pub async fn run_serve(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", args.listen)))?;
    eprintln!(
        "userhooks serve listening on http://{} (POST /subscribe, DELETE /subscribe, POST /backfill, GET /backfill/{{id}}, GET /requests/{{id}})",
        args.listen
    );
    let token = match (&args.sequin_api_token, &args.sequin_api_token_file) {
        (Some(t), _) => Some(t.trim().to_string()),
        (None, Some(path)) => Some(
            std::fs::read_to_string(path)
                .map_err(|e| {
                    CliError(format!(
                        "SEQUIN_API_TOKEN_FILE {}: cannot be read: {e}",
                        path.display()
                    ))
                })?
                .trim()
                .to_string(),
        ),
        (None, None) => None,
    };
    let sequin = match (args.sequin_api_url, token) {
        (Some(url), Some(token)) => Some(
            crate::sequin::SequinClient::new(
                &url,
                crate::config::Secret::new(token),
                std::time::Duration::from_secs(3),
                crate::metrics::Metrics::new(),
            )
            .with_in_process_retries(0),
        ),
        _ => None,
    };
    crate::serve::serve(
        crate::serve::ServeConfig {
            database_url: args.db.database_url,
            wait: args.wait,
            sequin,
        },
        listener,
        shutdown,
    )
    .await
    .map_err(|e| CliError(e.to_string()))
}

#[derive(Args, Debug)]
pub struct GenerateArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Notifications per second.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Stop after this long (e.g. 30s, 5m); default: until Ctrl-C.
    #[arg(long, value_parser = crate::config::parse_duration)]
    pub duration: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct RetryArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The request to re-queue.
    #[arg(conflicts_with = "failed", required_unless_present = "failed")]
    pub id: Option<i64>,
    /// Re-queue every failed request.
    #[arg(long)]
    pub failed: bool,
    /// With --failed: only those that failed within this long (e.g. 1h).
    #[arg(long, requires = "failed", value_parser = crate::config::parse_duration)]
    pub since: Option<std::time::Duration>,
}

#[derive(Args, Debug)]
pub struct MigrateArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Also create the example application tables (users, notifications).
    #[arg(long)]
    pub example_app: bool,
    /// Also create the least-privilege roles userhooks_app and userhooks_worker and grant
    /// their privileges (sql/roles.sql; needs CREATEROLE).
    #[arg(long)]
    pub roles: bool,
}

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
    /// Initial faults as JSON (same shape as PUT /_emulator/faults).
    #[arg(long)]
    pub faults: Option<String>,
    /// Deliver webhooks: follow the source tables in this Postgres database and POST
    /// Sequin-shaped messages to each sink's endpoint (off by default).
    #[arg(long, value_name = "DATABASE_URL", hide_env_values = true)]
    pub deliver_from: Option<String>,
    /// Column compared with each sink's `annotations.user_id` when delivering.
    #[arg(long, default_value = "user_id")]
    pub user_column: String,
    /// How often delivery polls the change log.
    #[arg(long, default_value = "200ms", value_parser = crate::config::parse_duration)]
    pub delivery_poll_interval: std::time::Duration,
}

#[derive(Args, Debug)]
pub struct DemoArgs {
    /// Postgres server to use; the demo creates (and recreates) its own database on it.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
    /// Name of the demo database (dropped and recreated).
    #[arg(long, default_value = "userhooks_demo")]
    pub demo_database: String,
    /// Leave everything running (with /metrics on 127.0.0.1:9610) until Ctrl-C.
    #[arg(long)]
    pub keep_running: bool,
    /// Notifications per second while generating.
    #[arg(long, default_value_t = 200.0)]
    pub rate: f64,
    /// How long to generate notifications.
    #[arg(long, default_value = "3s", value_parser = crate::config::parse_duration)]
    pub generate_for: std::time::Duration,
}

/// `userhooks generate-notifications`: insert until the duration passes or Ctrl-C.
pub async fn run_generate(args: GenerateArgs) -> Result<(), CliError> {
    let client = crate::db::connect(&args.db.database_url, "userhooks-generate")
        .await
        .map_err(|e| CliError(e.to_string()))?;
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {msg}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
    );
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    let rate = args.rate;
    let stop = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    let mut last_print = std::time::Instant::now();
    let hidden = bar.is_hidden();
    let total = crate::generate::run(&client, rate, args.duration, stop, |sent, elapsed| {
        let secs = elapsed.as_secs_f64().max(0.001);
        let line = format!(
            "inserted {sent} notifications in {secs:.1}s ({:.0}/s, target {rate}/s)",
            sent as f64 / secs
        );
        if hidden {
            // Not a terminal: one line every few seconds instead of a spinner.
            if last_print.elapsed() >= std::time::Duration::from_secs(5) {
                eprintln!("{line}");
                last_print = std::time::Instant::now();
            }
        } else {
            bar.set_message(line);
        }
    })
    .await
    .map_err(|e| CliError(e.to_string()))?;
    bar.finish_and_clear();
    println!("inserted {total} notifications");
    Ok(())
}

/// `userhooks emulator`: serve the emulator until `shutdown`.
pub async fn run_emulator(
    args: EmulatorArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    let faults = match &args.faults {
        Some(text) => serde_json::from_str(text)
            .map_err(|e| CliError(format!("--faults is not valid faults JSON: {e}")))?,
        None => crate::emulator::Faults::default(),
    };
    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", args.listen)))?;
    let config = crate::emulator::EmulatorConfig {
        token: args.token,
        database: args.database,
        tables: args.tables,
        faults,
        delivery: args
            .deliver_from
            .map(|url| crate::emulator::DeliveryConfig {
                user_column: args.user_column,
                poll_interval: args.delivery_poll_interval,
                ..crate::emulator::DeliveryConfig::new(url)
            }),
        ..crate::emulator::EmulatorConfig::default()
    };
    eprintln!(
        "Sequin emulator listening on http://{}/api (control routes under /_emulator/)",
        args.listen
    );
    crate::emulator::serve(config, listener, shutdown)
        .await
        .map_err(|e| CliError(e.to_string()))
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct CliError(pub String);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_subcommand_has_a_consistent_definition() {
        // clap checks flag name clashes (e.g. a flattened WorkerArgs flag) only at run time.
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
