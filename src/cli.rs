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
    /// Serve the tutorial's HTTP API (POST /subscribe, POST /backfill, ...) over the outbox.
    Serve(ServeArgs),
    /// Compare webhook_subscriptions with Sequin; report drift, fix it with --repair.
    Reconcile(ReconcileArgs),
    /// Check everything the worker needs (Postgres, schema, Sequin, token, SEQUIN_DATABASE,
    /// source table, filter function, replica identity); exits non-zero if a check fails.
    Doctor(DoctorArgs),
    /// Queue by action and status, subscriptions by status, open backfills.
    Status(DatabaseArgs),
    /// Re-queue failed requests: one by id, or all with --failed.
    ///
    /// A failed request is re-queued only while no later request of the same user has
    /// succeeded or is pending or running: running it again would reorder that user's
    /// requests. Those are listed with the later request that supersedes them; insert a new
    /// request instead.
    Retry(RetryArgs),
    /// Development tools: the demo, the Sequin emulator, the generator, the benchmark.
    #[cfg(feature = "dev")]
    #[command(flatten)]
    Dev(crate::dev::DevCommand),
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
pub struct DoctorArgs {
    /// The worker's settings (the same flags and environment as `userhooks run`).
    #[command(flatten)]
    pub worker: Box<WorkerArgs>,
    /// Print one JSON document (`{"ok": ..., "checks": [...]}`) instead of lines.
    #[arg(long)]
    pub json: bool,
}

/// `userhooks doctor`: one line per check (or one JSON document); fails if any check fails.
pub async fn run_doctor(args: DoctorArgs) -> Result<(), CliError> {
    let config = args
        .worker
        .into_config()
        .map_err(|e| CliError(e.to_string()))?;
    let report = crate::doctor::run(&config).await;
    if args.json {
        println!(
            "{}",
            serde_json::to_string_pretty(&report).unwrap_or_default()
        );
    } else {
        print!("{}", report.render());
    }
    match report.failed() {
        0 => Ok(()),
        n => Err(CliError(format!("{n} check(s) failed"))),
    }
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
#[group(id = "which", required = true, args = ["id", "failed"])]
pub struct RetryArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// The request to re-queue.
    #[arg(conflicts_with = "failed")]
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
