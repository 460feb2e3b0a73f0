//! Worker configuration: flags with environment fallbacks (docs/architecture.md, section 6),
//! validated once at start-up with one clear message per problem.

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use clap::Args;

/// The default of `USERHOOKS_LISTENER_PING`: how often an idle LISTEN connection is checked.
/// A connection that silently stopped delivering (a network partition, a stuck backend)
/// fails the check and is replaced.
pub const LISTENER_PING: Duration = Duration::from_secs(30);

/// A value that must never reach a log line: `Debug` and `Display` print a placeholder.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    /// The only way to read the value; grep for it when auditing where secrets go.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(***)")
    }
}

impl fmt::Display for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("***")
    }
}

/// Parse `500ms`, `30s`, `2m`, `1h`, `7d`. A bare number other than 0 is refused: `30` could
/// mean seconds or milliseconds, and a wrong guess is a lease 1,000 times off.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number.parse().map_err(|_| {
        format!("`{text}` is not a duration (write it like 500ms, 30s, 2m, 1h, 7d)")
    })?;
    let seconds = match unit.trim() {
        "ms" => value / 1000.0,
        "" if value == 0.0 => 0.0,
        "" => {
            return Err(format!(
                "`{text}` has no unit: write {number}s for seconds (or 500ms, 2m, 1h, 7d)"
            ))
        }
        "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        "d" => value * 86400.0,
        other => {
            return Err(format!(
                "`{text}` has an unknown unit `{other}` (use ms, s, m, h or d)"
            ))
        }
    };
    if !seconds.is_finite() || !(0.0..=10.0 * 365.0 * 86400.0).contains(&seconds) {
        return Err(format!("`{text}` is out of range"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// `USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND`: a positive number, or `unlimited`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum WriteRate {
    Unlimited,
    PerSecond(f64),
}

impl WriteRate {
    /// Safe for a small self-hosted Sequin: its Postgres pool defaults to 10 connections
    /// (`PG_POOL_SIZE`), a sink create is a transaction that also creates the sink's
    /// partition and queues a job, and that job reloads every sink of the slot to refresh
    /// routing. At 10 writes/s a subscribe (two writes) runs 5 times a second: 10,000 users
    /// onboard in about 35 minutes.
    pub const DEFAULT: WriteRate = WriteRate::PerSecond(10.0);
}

impl std::str::FromStr for WriteRate {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let text = text.trim();
        if text.eq_ignore_ascii_case("unlimited") {
            return Ok(WriteRate::Unlimited);
        }
        match text.parse::<f64>() {
            Ok(rate) if rate.is_finite() && (0.01..=1_000_000.0).contains(&rate) => {
                Ok(WriteRate::PerSecond(rate))
            }
            _ => Err(format!(
                "`{text}` is not a rate: write a number of writes per second between 0.01 and 1000000, or `unlimited`"
            )),
        }
    }
}

/// Default minimum time between two writes that restart something in Sequin. A replication
/// restart stops and starts the slot's processor and one message store per sink on it;
/// spacing restarts lets one finish before the next begins.
pub const DEFAULT_RESTART_SPACING: Duration = Duration::from_secs(5);

/// For clap.
pub fn parse_write_rate(text: &str) -> Result<WriteRate, String> {
    text.parse()
}

/// Booleans as `true`/`false`, also `1`/`0` (and yes/no, on/off, which people type).
pub fn parse_bool(text: &str) -> Result<bool, String> {
    match text.trim().to_ascii_lowercase().as_str() {
        "true" | "1" | "yes" | "on" => Ok(true),
        "false" | "0" | "no" | "off" => Ok(false),
        other => Err(format!("`{other}` is not a boolean (use true or false)")),
    }
}

/// Only `DATABASE_URL`: what `migrate`, `status` and `retry` need.
#[derive(Args, Clone, Debug)]
pub struct DatabaseArgs {
    /// Postgres connection string.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true
    )]
    pub database_url: String,
}

/// Everything `userhooks run` reads, as flags with environment fallbacks.
#[derive(Args, Clone, Debug)]
pub struct WorkerArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Base URL of Sequin's Management API, e.g. http://localhost:7376/api.
    #[arg(long, env = "SEQUIN_API_URL")]
    pub sequin_api_url: Option<String>,
    /// Sequin API token (prefer SEQUIN_API_TOKEN_FILE in production).
    #[arg(long, env = "SEQUIN_API_TOKEN", hide_env_values = true)]
    pub sequin_api_token: Option<String>,
    /// File holding the Sequin API token.
    #[arg(long, env = "SEQUIN_API_TOKEN_FILE")]
    pub sequin_api_token_file: Option<PathBuf>,
    /// Sequin's name of the source database (see GET /api/postgres_databases).
    #[arg(long, env = "SEQUIN_DATABASE")]
    pub sequin_database: Option<String>,
    /// Table whose changes are streamed to users.
    #[arg(
        long,
        env = "USERHOOKS_SOURCE_TABLE",
        default_value = "public.notifications"
    )]
    pub source_table: String,
    /// Column of the source table that holds the user id.
    #[arg(long, env = "USERHOOKS_USER_COLUMN", default_value = "user_id")]
    pub user_column: String,
    /// Name of the shared Sequin filter function.
    #[arg(
        long,
        env = "USERHOOKS_FILTER_FUNCTION",
        default_value = "userhooks-user-filter"
    )]
    pub filter_function: String,
    /// Prefix of every Sequin resource name userhooks creates.
    #[arg(long, env = "USERHOOKS_NAME_PREFIX", default_value = "userhooks")]
    pub name_prefix: String,
    /// Requests processed at once. Sequin writes are paced anyway
    /// (--sequin-max-writes-per-second): more in flight only means more requests claimed
    /// and waiting.
    #[arg(long, env = "USERHOOKS_CONCURRENCY", default_value_t = 16)]
    pub concurrency: usize,
    /// Writes per second to Sequin's Management API from this process (a number, or
    /// `unlimited`); reads are not paced.
    #[arg(
        long,
        env = "USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND",
        default_value = "10",
        value_parser = parse_write_rate
    )]
    pub sequin_max_writes_per_second: WriteRate,
    /// Minimum time between two writes that make Sequin restart replication or pipelines
    /// (sink and endpoint updates, filter function updates). `0s` turns it off.
    #[arg(long, env = "USERHOOKS_SEQUIN_RESTART_SPACING", default_value = "5s", value_parser = parse_duration)]
    pub sequin_restart_spacing: Duration,
    /// Fallback poll when no NOTIFY arrives.
    #[arg(long, env = "USERHOOKS_POLL_INTERVAL", default_value = "1s", value_parser = parse_duration)]
    pub poll_interval: Duration,
    /// How long a claim is held before another worker may take the request [default: 60s,
    /// or twice USERHOOKS_HTTP_TIMEOUT when that is longer].
    #[arg(long, env = "USERHOOKS_LEASE", value_parser = parse_duration)]
    pub lease: Option<Duration>,
    /// Finished requests older than this are deleted.
    #[arg(long, env = "USERHOOKS_RETENTION", default_value = "7d", value_parser = parse_duration)]
    pub retention: Duration,
    /// Address of /metrics, /healthz and /readyz; `off` disables it.
    #[arg(long, env = "USERHOOKS_METRICS_ADDR", default_value = "127.0.0.1:9610")]
    pub metrics_addr: String,
    /// Allow webhook URLs on loopback/private/link-local networks (development only).
    #[arg(long, env = "USERHOOKS_ALLOW_PRIVATE_URLS", default_value = "false", value_parser = parse_bool)]
    pub allow_private_urls: bool,
    /// Refuse plain-http webhook URLs.
    #[arg(long, env = "USERHOOKS_REQUIRE_HTTPS", default_value = "false", value_parser = parse_bool)]
    pub require_https: bool,
    /// Time to finish in-flight requests after SIGTERM.
    #[arg(long, env = "USERHOOKS_SHUTDOWN_GRACE", default_value = "30s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
    /// How often backfill progress is read from Sequin.
    #[arg(long, env = "USERHOOKS_BACKFILL_POLL_INTERVAL", default_value = "2s", value_parser = parse_duration)]
    pub backfill_poll_interval: Duration,
    /// How often the idle LISTEN connection is checked (a silently dead one is replaced).
    #[arg(long, env = "USERHOOKS_LISTENER_PING", default_value = "30s", value_parser = parse_duration)]
    pub listener_ping: Duration,
    /// Timeout of one Sequin API call [default: 10s, or half of USERHOOKS_LEASE when that is
    /// shorter].
    #[arg(long, env = "USERHOOKS_HTTP_TIMEOUT", value_parser = parse_duration)]
    pub http_timeout: Option<Duration>,
    /// Sink max_retry_count (Sequin's default: retry forever).
    #[arg(long, env = "USERHOOKS_MAX_RETRY_COUNT")]
    pub max_retry_count: Option<u32>,
    /// Removed: kept only to refuse it, so a deployment that sets it learns it has no effect
    /// instead of being silently ignored.
    #[arg(long, env = "USERHOOKS_LOAD_SHEDDING", hide = true)]
    pub load_shedding: Option<String>,
    /// Identifies this process in `locked_by` (default: hostname-pid).
    #[arg(long, env = "USERHOOKS_WORKER_ID")]
    pub worker_id: Option<String>,
}

/// Validated configuration of the worker.
#[derive(Clone, Debug)]
pub struct Config {
    pub database_url: String,
    pub sequin_api_url: String,
    pub sequin_token: Secret,
    pub sequin_database: String,
    pub source_table: String,
    pub user_column: String,
    pub filter_function: String,
    pub name_prefix: String,
    pub concurrency: usize,
    pub sequin_max_writes_per_second: WriteRate,
    pub sequin_restart_spacing: Duration,
    pub poll_interval: Duration,
    pub lease: Duration,
    pub retention: Duration,
    pub metrics_addr: Option<SocketAddr>,
    pub allow_private_urls: bool,
    pub require_https: bool,
    pub shutdown_grace: Duration,
    pub backfill_poll_interval: Duration,
    pub http_timeout: Duration,
    pub listener_ping: Duration,
    pub max_retry_count: Option<u32>,
    pub worker_id: String,
}

/// All the problems found in a configuration: one on one line, several one per line.
#[derive(Debug, thiserror::Error)]
pub struct ConfigError(pub Vec<String>);

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_slice() {
            [one] => write!(f, "invalid configuration: {one}"),
            many => write!(f, "invalid configuration:\n  - {}", many.join("\n  - ")),
        }
    }
}

static NAME_RE: std::sync::LazyLock<regex::Regex> =
    std::sync::LazyLock::new(|| regex::Regex::new(r"^[A-Za-z0-9_.-]+$").expect("valid regex"));
static IDENT_RE: std::sync::LazyLock<regex::Regex> = std::sync::LazyLock::new(|| {
    regex::Regex::new(r"^[A-Za-z_][A-Za-z0-9_$]*(\.[A-Za-z_][A-Za-z0-9_$]*)?$")
        .expect("valid regex")
});

impl WorkerArgs {
    pub fn into_config(self) -> Result<Config, ConfigError> {
        let mut problems = Vec::new();
        let sequin_api_url = sequin_api_url(self.sequin_api_url, &mut problems);
        let sequin_token = sequin_token(
            self.sequin_api_token,
            self.sequin_api_token_file,
            &mut problems,
        );
        let sequin_database = self.sequin_database.unwrap_or_default();
        if sequin_database.is_empty() {
            problems.push(
                "SEQUIN_DATABASE is required: Sequin's name of the source database".to_string(),
            );
        }
        check_names(
            &self.source_table,
            &self.user_column,
            &self.filter_function,
            &self.name_prefix,
            &mut problems,
        );
        if self.concurrency == 0 || self.concurrency > 10_000 {
            problems.push("USERHOOKS_CONCURRENCY must be between 1 and 10000".to_string());
        }
        if self.poll_interval < Duration::from_millis(10) {
            problems.push("USERHOOKS_POLL_INTERVAL must be at least 10ms".to_string());
        }
        let (lease, http_timeout) = match lease_and_http_timeout(self.lease, self.http_timeout) {
            Ok(pair) => pair,
            Err(problem) => {
                problems.push(problem);
                (DEFAULT_LEASE, DEFAULT_HTTP_TIMEOUT)
            }
        };
        if self.listener_ping < Duration::from_millis(100) {
            problems.push("USERHOOKS_LISTENER_PING must be at least 100ms".to_string());
        }
        let metrics_addr = metrics_addr(&self.metrics_addr, &mut problems);
        check_sink_settings(
            self.max_retry_count,
            self.load_shedding.is_some(),
            &mut problems,
        );
        if !problems.is_empty() {
            return Err(ConfigError(problems));
        }
        let worker_id = self.worker_id.unwrap_or_else(default_worker_id);
        Ok(Config {
            database_url: self.db.database_url,
            sequin_api_url,
            sequin_token,
            sequin_database,
            source_table: qualify_table(&self.source_table),
            user_column: self.user_column,
            filter_function: self.filter_function,
            name_prefix: self.name_prefix,
            concurrency: self.concurrency,
            sequin_max_writes_per_second: self.sequin_max_writes_per_second,
            sequin_restart_spacing: self.sequin_restart_spacing,
            poll_interval: self.poll_interval,
            lease,
            retention: self.retention,
            metrics_addr,
            allow_private_urls: self.allow_private_urls,
            require_https: self.require_https,
            shutdown_grace: self.shutdown_grace,
            backfill_poll_interval: self.backfill_poll_interval,
            http_timeout,
            listener_ping: self.listener_ping,
            max_retry_count: self.max_retry_count,
            worker_id,
        })
    }
}

/// Sequin's API URL without a trailing slash (empty when it is a problem).
fn sequin_api_url(url: Option<String>, problems: &mut Vec<String>) -> String {
    match url {
        Some(url) => match url::Url::parse(&url) {
            Ok(parsed) if matches!(parsed.scheme(), "http" | "https") => {
                url.trim_end_matches('/').to_string()
            }
            _ => {
                problems.push(format!(
                    "SEQUIN_API_URL `{url}` is not an http(s) URL (e.g. http://localhost:7376/api)"
                ));
                String::new()
            }
        },
        None => {
            problems
                .push("SEQUIN_API_URL is required (e.g. http://localhost:7376/api)".to_string());
            String::new()
        }
    }
}

/// The Sequin API token, given itself or in a file (empty when it is a problem).
fn sequin_token(
    token: Option<String>,
    file: Option<std::path::PathBuf>,
    problems: &mut Vec<String>,
) -> Secret {
    let token = match (token, file) {
        (Some(_), Some(_)) => {
            problems.push("set only one of SEQUIN_API_TOKEN and SEQUIN_API_TOKEN_FILE".to_string());
            Secret::new("")
        }
        (Some(token), None) => Secret::new(token.trim()),
        (None, Some(path)) => match std::fs::read_to_string(&path) {
            Ok(text) => Secret::new(text.trim()),
            Err(err) => {
                problems.push(format!(
                    "SEQUIN_API_TOKEN_FILE {}: cannot be read: {err}",
                    path.display()
                ));
                Secret::new("")
            }
        },
        (None, None) => {
            problems.push("SEQUIN_API_TOKEN or SEQUIN_API_TOKEN_FILE is required".to_string());
            Secret::new("")
        }
    };
    if token.expose().is_empty() && problems.iter().all(|p| !p.contains("TOKEN")) {
        problems.push("the Sequin API token is empty".to_string());
    }
    token
}

/// The names the worker puts in SQL and in Sequin: the source table, its user column, the
/// filter function and the prefix of resource names.
fn check_names(
    source_table: &str,
    user_column: &str,
    filter_function: &str,
    name_prefix: &str,
    problems: &mut Vec<String>,
) {
    if !IDENT_RE.is_match(source_table) {
        problems.push(format!(
            "USERHOOKS_SOURCE_TABLE `{source_table}` is not a table name like public.notifications"
        ));
    }
    if !IDENT_RE.is_match(user_column) || user_column.contains('.') {
        problems.push(format!(
            "USERHOOKS_USER_COLUMN `{user_column}` is not a column name"
        ));
    }
    for (var, value) in [
        ("USERHOOKS_FILTER_FUNCTION", filter_function),
        ("USERHOOKS_NAME_PREFIX", name_prefix),
    ] {
        if !NAME_RE.is_match(value) || value.len() > 100 {
            problems.push(format!(
                "{var} `{value}` must be 1-100 characters of A-Z a-z 0-9 _ . -"
            ));
        }
    }
}

/// `host:port`, or `off` for no metrics server.
fn metrics_addr(text: &str, problems: &mut Vec<String>) -> Option<SocketAddr> {
    if text.eq_ignore_ascii_case("off") {
        return None;
    }
    match text.parse::<SocketAddr>() {
        Ok(addr) => Some(addr),
        Err(_) => {
            problems.push(format!(
                "USERHOOKS_METRICS_ADDR `{text}` is not host:port (e.g. 127.0.0.1:9610) or `off`"
            ));
            None
        }
    }
}

/// What the worker asks of every sink it creates.
fn check_sink_settings(
    max_retry_count: Option<u32>,
    load_shedding: bool,
    problems: &mut Vec<String>,
) {
    if max_retry_count == Some(0) {
        problems.push(
            "USERHOOKS_MAX_RETRY_COUNT must be greater than 0 (Sequin refuses 0)".to_string(),
        );
    }
    if load_shedding {
        // Sequin v0.14.6 validates and stores load_shedding_policy, but no runtime code
        // reads it (`git grep load_shedding v0.14.6 -- lib`): it isolates nothing.
        problems.push(
            "USERHOOKS_LOAD_SHEDDING is no longer supported: Sequin ignores load_shedding_policy at runtime; remove it, and set USERHOOKS_MAX_RETRY_COUNT so a failing endpoint's messages are dropped after that many attempts".to_string(),
        );
    }
}

/// `USERHOOKS_LEASE` when it is not set (and `USERHOOKS_HTTP_TIMEOUT` allows it).
pub const DEFAULT_LEASE: Duration = Duration::from_secs(60);
/// `USERHOOKS_HTTP_TIMEOUT` when it is not set (and `USERHOOKS_LEASE` allows it).
pub const DEFAULT_HTTP_TIMEOUT: Duration = Duration::from_secs(10);

/// The lease and the Sequin call timeout, from what the user set.
///
/// A call must end before its claim can expire, so the timeout must be shorter than the
/// lease. Each default gives way to a value the user set: a lease of 5s alone gets a
/// timeout of 2.5s (half the lease, leaving the other half for the write-back), a timeout
/// of 45s alone gets a lease of 90s. Only two values that were both set can conflict.
fn lease_and_http_timeout(
    lease: Option<Duration>,
    http_timeout: Option<Duration>,
) -> Result<(Duration, Duration), String> {
    if lease.is_some_and(|lease| lease < Duration::from_secs(1)) {
        return Err("USERHOOKS_LEASE must be at least 1s".to_string());
    }
    match (lease, http_timeout) {
        (Some(lease), Some(timeout)) if timeout >= lease => Err(format!(
            "USERHOOKS_HTTP_TIMEOUT ({timeout:?}) must be shorter than USERHOOKS_LEASE ({lease:?}) \
             so a call cannot outlive its claim: lower the timeout or raise the lease \
             (unset either one and it is derived from the other)"
        )),
        (Some(lease), Some(timeout)) => Ok((lease, timeout)),
        (Some(lease), None) => Ok((lease, DEFAULT_HTTP_TIMEOUT.min(lease / 2))),
        (None, Some(timeout)) => Ok((DEFAULT_LEASE.max(timeout.saturating_mul(2)), timeout)),
        (None, None) => Ok((DEFAULT_LEASE, DEFAULT_HTTP_TIMEOUT)),
    }
}

/// Sequin names tables `schema.table`; a bare name means `public`.
fn qualify_table(table: &str) -> String {
    if table.contains('.') {
        table.to_string()
    } else {
        format!("public.{table}")
    }
}

fn default_worker_id() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "host".to_string());
    format!("{host}-{}", std::process::id())
}

impl Config {
    /// A configuration for tests and the demo: everything defaulted except what is given.
    pub fn for_local(
        database_url: &str,
        sequin_api_url: &str,
        token: &str,
        database: &str,
    ) -> Self {
        Config {
            database_url: database_url.to_string(),
            sequin_api_url: sequin_api_url.trim_end_matches('/').to_string(),
            sequin_token: Secret::new(token),
            sequin_database: database.to_string(),
            source_table: "public.notifications".to_string(),
            user_column: "user_id".to_string(),
            filter_function: "userhooks-user-filter".to_string(),
            name_prefix: "userhooks".to_string(),
            concurrency: 16,
            sequin_max_writes_per_second: WriteRate::DEFAULT,
            sequin_restart_spacing: DEFAULT_RESTART_SPACING,
            poll_interval: Duration::from_secs(1),
            lease: DEFAULT_LEASE,
            retention: Duration::from_secs(7 * 86400),
            metrics_addr: None,
            allow_private_urls: true,
            require_https: false,
            shutdown_grace: Duration::from_secs(30),
            backfill_poll_interval: Duration::from_secs(2),
            http_timeout: DEFAULT_HTTP_TIMEOUT,
            listener_ping: LISTENER_PING,
            max_retry_count: None,
            worker_id: default_worker_id(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_the_documented_units() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        assert_eq!(parse_duration("7d"), Ok(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("0"), Ok(Duration::ZERO));
    }

    #[test]
    fn a_bare_number_is_refused_with_the_unit_to_add() {
        let err = parse_duration("30").unwrap_err();
        assert!(err.contains("write 30s"), "{err}");
        assert!(parse_duration("1.5").unwrap_err().contains("write 1.5s"));
    }

    #[test]
    fn durations_refuse_garbage_with_a_hint() {
        assert!(parse_duration("soon").unwrap_err().contains("500ms"));
        assert!(parse_duration("3 weeks")
            .unwrap_err()
            .contains("unknown unit"));
        assert!(parse_duration("-1s").is_err());
    }

    #[test]
    fn booleans_accept_true_false_one_zero() {
        assert_eq!(parse_bool("true"), Ok(true));
        assert_eq!(parse_bool("1"), Ok(true));
        assert_eq!(parse_bool("FALSE"), Ok(false));
        assert_eq!(parse_bool("0"), Ok(false));
        assert!(parse_bool("maybe").is_err());
    }

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        worker: WorkerArgs,
    }

    fn parse(extra: &[&str]) -> Result<Result<Config, ConfigError>, clap::Error> {
        let mut argv = vec![
            "userhooks",
            "--sequin-api-url",
            "http://sequin:7376/api",
            "--sequin-api-token",
            "t",
            "--sequin-database",
            "app",
        ];
        argv.extend(extra);
        <Cli as clap::Parser>::try_parse_from(argv).map(|cli| cli.worker.into_config())
    }

    #[test]
    fn pacing_defaults_match_the_documented_constants() {
        let config = parse(&[]).unwrap().unwrap();
        assert_eq!(config.sequin_max_writes_per_second, WriteRate::DEFAULT);
        assert_eq!(config.sequin_restart_spacing, DEFAULT_RESTART_SPACING);
        assert_eq!(config.concurrency, 16);
        let local = Config::for_local("postgres://x/y", "http://s/api", "t", "app");
        assert_eq!(local.sequin_max_writes_per_second, WriteRate::DEFAULT);
        assert_eq!(local.concurrency, config.concurrency);
        let config = parse(&["--sequin-max-writes-per-second", "unlimited"])
            .unwrap()
            .unwrap();
        assert_eq!(config.sequin_max_writes_per_second, WriteRate::Unlimited);
        let config = parse(&["--sequin-max-writes-per-second", "2.5"])
            .unwrap()
            .unwrap();
        assert_eq!(
            config.sequin_max_writes_per_second,
            WriteRate::PerSecond(2.5)
        );
        let err = parse(&["--sequin-max-writes-per-second", "0"])
            .err()
            .unwrap();
        assert!(err.to_string().contains("or `unlimited`"), "{err}");
    }

    #[test]
    fn load_shedding_is_refused_with_what_to_use_instead() {
        let err = parse(&["--load-shedding", "discard_on_full"])
            .unwrap()
            .unwrap_err()
            .to_string();
        assert!(err.contains("USERHOOKS_LOAD_SHEDDING"), "{err}");
        assert!(err.contains("USERHOOKS_MAX_RETRY_COUNT"), "{err}");
    }

    /// `userhooks run` with the required settings and `flags`, as clap parses it.
    fn run_config(flags: &[&str]) -> Result<Config, ConfigError> {
        #[derive(clap::Parser)]
        struct Run {
            #[command(flatten)]
            args: WorkerArgs,
        }
        let required = [
            "run",
            "--sequin-api-url=http://localhost:7376/api",
            "--sequin-api-token=t",
            "--sequin-database=app",
        ];
        let parsed = <Run as clap::Parser>::try_parse_from(required.iter().chain(flags))
            .expect("flags parse");
        parsed.args.into_config()
    }

    #[test]
    fn a_short_lease_alone_gets_a_shorter_http_timeout() {
        let config = run_config(&["--lease=5s"]).expect("a 5s lease alone is valid");
        assert_eq!(config.lease, Duration::from_secs(5));
        assert!(config.http_timeout < config.lease, "{config:?}");
        assert_eq!(config.http_timeout, Duration::from_millis(2500));
        let config = run_config(&["--lease=1s"]).expect("the shortest lease is valid");
        assert!(config.http_timeout < config.lease, "{config:?}");
    }

    #[test]
    fn a_long_http_timeout_alone_gets_a_longer_lease() {
        let config = run_config(&["--http-timeout=45s"]).expect("a 45s timeout alone is valid");
        assert_eq!(config.http_timeout, Duration::from_secs(45));
        assert_eq!(config.lease, Duration::from_secs(90));
    }

    #[test]
    fn unset_lease_and_timeout_keep_their_defaults() {
        let config = run_config(&[]).unwrap();
        assert_eq!(config.lease, Duration::from_secs(60));
        assert_eq!(config.http_timeout, Duration::from_secs(10));
        let config = run_config(&["--lease=120s"]).unwrap();
        assert_eq!(config.http_timeout, Duration::from_secs(10));
    }

    #[test]
    fn a_timeout_and_lease_both_set_in_conflict_are_refused_naming_both() {
        for flags in [
            ["--lease=5s", "--http-timeout=10s"],
            ["--lease=5s", "--http-timeout=5s"],
        ] {
            let err = run_config(&flags).unwrap_err().to_string();
            assert!(
                err.contains("USERHOOKS_HTTP_TIMEOUT (") && err.contains("USERHOOKS_LEASE ("),
                "{err}"
            );
        }
        let err = run_config(&["--lease=500ms"]).unwrap_err().to_string();
        assert!(err.contains("USERHOOKS_LEASE must be at least 1s"), "{err}");
        assert!(run_config(&["--lease=5s", "--http-timeout=4s"]).is_ok());
    }

    #[test]
    fn secret_never_prints_its_value() {
        let secret = Secret::new("tok-123");
        assert!(!format!("{secret:?}").contains("tok-123"));
        assert!(!format!("{secret}").contains("tok-123"));
        assert_eq!(secret.expose(), "tok-123");
    }
}
