//! Command-line interface (clap): flags with environment fallbacks.

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

/// Parse the command line, or exit. A value clap refuses is reported on one line, under the
/// environment variable it came from when no flag gave it (clap names the flag either way).
pub fn parse() -> Cli {
    let args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    match Cli::try_parse_from(&args) {
        Ok(cli) => cli,
        Err(err) => match refused_value(&err, &args) {
            Some(line) => {
                eprintln!("error: {line}");
                std::process::exit(2);
            }
            None => err.exit(),
        },
    }
}

/// `NAME: invalid value 'V': reason` for a refused value, where NAME is the variable that
/// gave it or else the flag; `None` for every other kind of error.
pub fn refused_value(err: &clap::Error, args: &[std::ffi::OsString]) -> Option<String> {
    use clap::error::{ContextKind, ContextValue, ErrorKind};
    if !matches!(
        err.kind(),
        ErrorKind::ValueValidation | ErrorKind::InvalidValue
    ) {
        return None;
    }
    let Some(ContextValue::String(shown)) = err.get(ContextKind::InvalidArg) else {
        return None;
    };
    let value = match err.get(ContextKind::InvalidValue) {
        Some(ContextValue::String(v)) => v.clone(),
        _ => String::new(),
    };
    let reason = match (
        std::error::Error::source(err),
        err.get(ContextKind::ValidValue),
    ) {
        (Some(source), _) => source.to_string(),
        (None, Some(ContextValue::Strings(valid))) => format!("use one of {}", valid.join(", ")),
        (None, _) => "not accepted".to_string(),
    };
    let long = shown
        .strip_prefix("--")
        .and_then(|rest| rest.split([' ', '=']).next());
    let Some(arg) = long.and_then(|long| find_arg(long, args)) else {
        return Some(format!("{shown}: invalid value '{value}': {reason}"));
    };
    let flag = format!("--{}", arg.get_long().unwrap_or_default());
    let on_command_line = args.iter().filter_map(|a| a.to_str()).any(|a| {
        a == flag
            || a.strip_prefix(flag.as_str())
                .is_some_and(|r| r.starts_with('='))
    });
    let from_env = arg
        .get_env()
        .filter(|var| !on_command_line && std::env::var_os(var).is_some());
    let name = match from_env {
        Some(var) => var.to_string_lossy().into_owned(),
        None => flag,
    };
    if arg.is_hide_env_values_set() {
        // The value may be a secret: name it, never print it.
        return Some(format!("{name}: invalid value: {reason}"));
    }
    Some(format!("{name}: invalid value '{value}': {reason}"))
}

/// The argument `--long` of the subcommand on the command line, or of the top level.
fn find_arg(long: &str, args: &[std::ffi::OsString]) -> Option<clap::Arg> {
    use clap::CommandFactory;
    let top = Cli::command();
    let sub = args
        .iter()
        .skip(1)
        .filter_map(|a| a.to_str())
        .find_map(|a| top.find_subcommand(a));
    let found = sub
        .into_iter()
        .chain(std::iter::once(&top))
        .flat_map(|c| c.get_arguments())
        .find(|a| a.get_long() == Some(long))
        .cloned();
    found
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
#[command(mut_args(hide_unless_reconcile_reads_it))]
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

/// The worker settings `reconcile` reads (and its own flags). The others keep their defaults
/// and stay out of `reconcile --help`, where they would only mislead.
const RECONCILE_READS: &[&str] = &[
    "database_url",
    "sequin_api_url",
    "sequin_api_token",
    "sequin_api_token_file",
    "sequin_database",
    "source_table",
    "filter_function",
    "name_prefix",
    "http_timeout",
    "max_retry_count",
    "load_shedding",
    "repair",
    "json",
    "parallel",
];

fn hide_unless_reconcile_reads_it(arg: clap::Arg) -> clap::Arg {
    if RECONCILE_READS.contains(&arg.get_id().as_str()) {
        arg
    } else {
        arg.hide(true)
    }
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
            "[{bar:40}] {pos}/{len} subscriptions checked ({eta} left)",
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
    .map_err(|e| CliError(crate::telemetry::error_chain(&e)))?;
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
    /// Address to listen on, host:port (the tutorial's app used port 3333). No authentication
    /// unless USERHOOKS_SERVE_TOKEN is set: keep it on a private address.
    #[arg(long, env = "USERHOOKS_SERVE_LISTEN", default_value = "127.0.0.1:3333")]
    pub listen: String,
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
    /// Bearer token every call must carry (`Authorization: Bearer <token>`); /healthz stays open.
    #[arg(
        long,
        env = "USERHOOKS_SERVE_TOKEN",
        hide_env_values = true,
        conflicts_with = "serve_token_file"
    )]
    pub serve_token: Option<String>,
    /// File holding the bearer token.
    #[arg(long, env = "USERHOOKS_SERVE_TOKEN_FILE")]
    pub serve_token_file: Option<std::path::PathBuf>,
}

/// A token from its variable or from the file its `_FILE` variable names.
fn read_token(
    value: Option<&str>,
    file: Option<&std::path::Path>,
    file_var: &str,
) -> Result<Option<String>, CliError> {
    let token = match (value, file) {
        (Some(t), _) => t.trim().to_string(),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map_err(|e| {
                CliError(format!(
                    "{file_var} {}: cannot be read: {e}",
                    path.display()
                ))
            })?
            .trim()
            .to_string(),
        (None, None) => return Ok(None),
    };
    if token.is_empty() {
        return Err(CliError(format!(
            "{} is empty",
            file_var.trim_end_matches("_FILE")
        )));
    }
    Ok(Some(token))
}

/// `userhooks serve`: until `shutdown`.
pub async fn run_serve(
    args: ServeArgs,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), CliError> {
    // A host name (localhost:3333) is resolved, as people type it.
    let listener = tokio::net::TcpListener::bind(args.listen.as_str())
        .await
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", args.listen)))?;
    let local = listener
        .local_addr()
        .map_err(|e| CliError(format!("cannot listen on {}: {e}", args.listen)))?;
    let token = read_token(
        args.sequin_api_token.as_deref(),
        args.sequin_api_token_file.as_deref(),
        "SEQUIN_API_TOKEN_FILE",
    )?;
    let serve_token = read_token(
        args.serve_token.as_deref(),
        args.serve_token_file.as_deref(),
        "USERHOOKS_SERVE_TOKEN_FILE",
    )?;
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
    let auth = if serve_token.is_some() {
        "bearer token required (USERHOOKS_SERVE_TOKEN)"
    } else {
        "no authentication: keep this address private, or set USERHOOKS_SERVE_TOKEN"
    };
    let sequin_note = if sequin.is_some() {
        "asks Sequin when a request waits, to answer 503 if Sequin rejects the token"
    } else {
        "no SEQUIN_API_URL/SEQUIN_API_TOKEN: a rejected Sequin token is seen only once the worker records it"
    };
    let config = crate::serve::ServeConfig {
        database_url: args.db.database_url,
        wait: args.wait,
        sequin,
        token: serve_token.map(crate::config::Secret::new),
    };
    let fail = |e: crate::serve::ServeError| CliError(crate::telemetry::error_chain(&e));
    let server = crate::serve::prepare(config).await.map_err(fail)?;
    eprintln!(
        "userhooks serve listening on http://{local} (POST /subscribe, DELETE /subscribe, POST /backfill, GET /backfill/{{id}}, GET /requests/{{id}}); {auth}; {sequin_note}"
    );
    server.run(listener, shutdown).await.map_err(fail)
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
