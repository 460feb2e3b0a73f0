//! Preflight: is everything in place for the worker? `userhooks doctor` runs every check and
//! prints one line each; the worker runs the same checks when it starts, refuses to start on
//! those it cannot work around (wrong `SEQUIN_DATABASE`, unmigrated schema, functions not
//! allowed) with the same words, and only logs the rest. Doctor writes nothing: where it
//! needs Sequin's verdict on the filter function it asks for a dry run (`config/plan`).

use deadpool_postgres::Pool;
use serde::Serialize;
use serde_json::Value;

use crate::config::Config;
use crate::db::{self, DbError};
use crate::health::Health;
use crate::metrics::Metrics;
use crate::provision::replica::{self as replica_identity, split_table};
use crate::provision::{filter_function_yaml, FilterFunctionState, Provisioner, ReplicaIdentity};
use crate::sequin::{ErrorClass, SequinClient, SequinError};
use crate::subscriptions;

/// Above this many live subscriptions on one table, doctor warns. Sequin stores every change
/// of the table once per sink and runs each sink's filter on it, so its work per change
/// grows with the number of subscriptions; by a thousand, one change is a thousand stored
/// messages and filter runs.
pub const LIVE_SUBSCRIPTIONS_WARN_ABOVE: i64 = 1_000;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Works, with a limitation worth knowing (does not fail doctor).
    Warn,
    Fail,
    /// Not checked, because a check it depends on failed.
    Skip,
}

/// The outcome of one check.
#[derive(Clone, Debug, Serialize)]
pub struct Check {
    /// Stable name for scripts: postgres, schema, sequin, token, sequin_database,
    /// source_table, functions, filter_function, replica_identity, live_subscriptions.
    pub check: &'static str,
    pub status: Status,
    /// What was checked and what was found.
    pub what: String,
    /// What to do about it (absent when all is well); for a skipped check, why it was.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    fn new(check: &'static str, status: Status, what: String, fix: Option<String>) -> Self {
        Check {
            check,
            status,
            what: one_line(&what),
            fix: fix.map(|f| one_line(&f)),
        }
    }

    fn ok(check: &'static str, what: impl Into<String>) -> Self {
        Check::new(check, Status::Ok, what.into(), None)
    }

    fn warn(check: &'static str, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Check::new(check, Status::Warn, what.into(), Some(fix.into()))
    }

    fn fail(check: &'static str, what: impl Into<String>, fix: impl Into<String>) -> Self {
        Check::new(check, Status::Fail, what.into(), Some(fix.into()))
    }

    fn skip(check: &'static str, what: impl Into<String>, why: impl Into<String>) -> Self {
        Check::new(check, Status::Skip, what.into(), Some(why.into()))
    }

    /// `<what>: <fix>`, the words a failure is reported with everywhere.
    pub fn message(&self) -> String {
        match &self.fix {
            Some(fix) => format!("{}: {fix}", self.what),
            None => self.what.clone(),
        }
    }

    /// `ok   <what>`, `warn <what>: <fix>`, `FAIL <what>: <fix>`, `skip <what>: <why>`.
    pub fn line(&self) -> String {
        let prefix = match self.status {
            Status::Ok => "ok  ",
            Status::Warn => "warn",
            Status::Fail => "FAIL",
            Status::Skip => "skip",
        };
        format!("{prefix} {}", self.message())
    }
}

/// Sequin's summaries can span lines (pretty-printed changeset errors): one line per check.
fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Every check, in order.
#[derive(Clone, Debug, Serialize)]
pub struct Report {
    /// No check failed (warnings allowed).
    pub ok: bool,
    pub checks: Vec<Check>,
}

impl Report {
    fn new(checks: Vec<Check>) -> Self {
        Report {
            ok: checks.iter().all(|c| c.status != Status::Fail),
            checks,
        }
    }

    pub fn failed(&self) -> usize {
        self.checks
            .iter()
            .filter(|c| c.status == Status::Fail)
            .count()
    }

    /// One line per check.
    pub fn render(&self) -> String {
        self.checks.iter().map(|c| c.line() + "\n").collect()
    }
}

const NEEDS_POSTGRES: &str = "Postgres is not reachable";
const NEEDS_SEQUIN: &str = "Sequin did not answer";

/// `userhooks doctor`: run every check against the configured Postgres and Sequin.
pub async fn run(config: &Config) -> Report {
    let table = &config.source_table;
    let mut checks = Vec::new();
    let client = match db::connect(&config.database_url, "userhooks-doctor").await {
        Ok(client) => {
            checks.push(Check::ok("postgres", "Postgres answers at DATABASE_URL"));
            Some(client)
        }
        Err(err) => {
            checks.push(Check::fail(
                "postgres",
                "Postgres does not answer at DATABASE_URL",
                format!("{err}; check DATABASE_URL and that Postgres is up"),
            ));
            None
        }
    };
    let migrated = match &client {
        Some(client) => {
            let check = schema(client).await;
            let migrated = check.status == Status::Ok;
            checks.push(check);
            migrated
        }
        None => {
            checks.push(Check::skip("schema", "userhooks schema", NEEDS_POSTGRES));
            false
        }
    };

    let sequin = SequinClient::new(
        &config.sequin_api_url,
        config.sequin_token.clone(),
        config.http_timeout,
        Metrics::new(),
    )
    .with_in_process_retries(0);
    let databases = sequin.databases().await;
    checks.extend(sequin_access(&databases));
    let database = match &databases {
        Ok(list) => {
            let (check, found) = sequin_database(config, list);
            checks.push(check);
            found.cloned()
        }
        Err(_) => {
            checks.push(Check::skip(
                "sequin_database",
                format!("SEQUIN_DATABASE `{}`", config.sequin_database),
                NEEDS_SEQUIN,
            ));
            None
        }
    };
    checks.push(match (&client, &database) {
        (Some(client), Some(database)) => source_table(client, config, database).await,
        _ => Check::skip(
            "source_table",
            format!("source table {table}"),
            "needs Postgres and SEQUIN_DATABASE",
        ),
    });
    if databases.is_ok() {
        checks.extend(functions(&sequin, config).await);
    } else {
        checks.push(Check::skip(
            "functions",
            "functions in Sequin",
            NEEDS_SEQUIN,
        ));
        checks.push(Check::skip(
            "filter_function",
            format!("filter function `{}`", config.filter_function),
            NEEDS_SEQUIN,
        ));
    }
    checks.push(match &client {
        Some(client) => match replica_identity::read(client, table).await {
            Ok(identity) => replica_identity_check(table, identity),
            Err(err) => Check::fail(
                "replica_identity",
                format!("cannot read the replica identity of {table}"),
                db_error(&err),
            ),
        },
        None => Check::skip(
            "replica_identity",
            format!("replica identity of {table}"),
            NEEDS_POSTGRES,
        ),
    });
    checks.push(match (&client, migrated) {
        (Some(client), true) => live_subscriptions(client, table).await,
        _ => Check::skip(
            "live_subscriptions",
            format!("live subscriptions on {table}"),
            "needs the userhooks schema",
        ),
    });
    Report::new(checks)
}

/// A check the worker cannot start without, in the words doctor uses.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct PreflightError(pub String);

/// Fail with the check's words if it failed.
fn require(check: Check) -> Result<(), PreflightError> {
    match check.status {
        Status::Fail => Err(PreflightError(check.message())),
        _ => {
            log(&check);
            Ok(())
        }
    }
}

fn log(check: &Check) {
    match check.status {
        Status::Ok => tracing::info!("preflight: {}", check.line()),
        Status::Warn | Status::Fail => tracing::warn!("preflight: {}", check.line()),
        Status::Skip => tracing::debug!("preflight: {}", check.line()),
    }
}

/// The worker's start-up checks after the schema: fatal only for a wrong `SEQUIN_DATABASE`
/// and functions Sequin will not allow; Sequin being unreachable or refusing the token is
/// not (the worker waits it out, and `/readyz` shows it). Puts the filter function in place
/// and primes the replica identity cache on the way.
pub async fn at_worker_start(
    config: &Config,
    pool: &Pool,
    provisioner: &Provisioner,
    health: &Health,
) -> Result<(), PreflightError> {
    let table = &config.source_table;
    let client = match pool.get().await {
        Ok(client) => Some(client),
        Err(err) => {
            tracing::warn!(error = %err, "preflight: cannot check the source table now");
            None
        }
    };
    if let Some(client) = &client {
        match replica_identity::read(client, table).await {
            Ok(identity) => {
                provisioner.remember_replica_identity(identity).await;
                log(&replica_identity_check(table, identity));
            }
            Err(err) => {
                tracing::warn!(error = %err, "preflight: cannot read the replica identity of {table} now")
            }
        }
    }
    let databases = match provisioner.sequin().databases().await {
        Ok(databases) => databases,
        Err(err) => {
            if err.class() == ErrorClass::Auth {
                health.set_sequin_auth_ok(false);
            }
            tracing::warn!(error = %err, "preflight: cannot check Sequin now; starting anyway (requests wait or retry until it answers)");
            return Ok(());
        }
    };
    let (check, database) = sequin_database(config, &databases);
    require(check)?;
    if let (Some(client), Some(database)) = (&client, database) {
        log(&source_table(client, config, database).await);
    }
    match provisioner.ensure_filter().await {
        Ok(state) => log(&Check::ok(
            "filter_function",
            format!(
                "filter function `{}` is current ({})",
                config.filter_function,
                match state {
                    FilterFunctionState::Current => "left as it was",
                    FilterFunctionState::Created => "created",
                    FilterFunctionState::Replaced => "rewritten",
                }
            ),
        )),
        Err(err) if err.is_functions_disabled() => require(functions_refused(&err))?,
        Err(err) => {
            if err.class() == ErrorClass::Auth {
                health.set_sequin_auth_ok(false);
            }
            tracing::warn!(error = %err, "preflight: could not put the filter function in place yet; will retry on the first subscribe");
        }
    }
    Ok(())
}

/// Migrated to the version this binary needs.
async fn schema(client: &tokio_postgres::Client) -> Check {
    match db::require_schema(client).await {
        Ok(()) => Check::ok("schema", "userhooks schema is current"),
        Err(err @ DbError::NotMigrated(_)) => Check::fail(
            "schema",
            "the userhooks schema is not ready",
            err.to_string(),
        ),
        Err(err) => Check::fail(
            "schema",
            "cannot read the userhooks schema",
            format!("{err}; run `userhooks migrate` first"),
        ),
    }
}

fn db_error(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => db.message().to_string(),
        None => err.to_string(),
    }
}

/// Reachable, and the token accepted, from one list of databases.
fn sequin_access(databases: &Result<Vec<Value>, SequinError>) -> Vec<Check> {
    match databases {
        Ok(_) => vec![
            Check::ok("sequin", "Sequin answers at SEQUIN_API_URL"),
            Check::ok("token", "Sequin accepts the API token"),
        ],
        Err(err) if err.class() == ErrorClass::Auth => vec![
            Check::ok("sequin", "Sequin answers at SEQUIN_API_URL"),
            Check::fail(
                "token",
                format!("Sequin rejects the API token (HTTP {})", err.status().unwrap_or(401)),
                format!(
                    "{}; set SEQUIN_API_TOKEN (or SEQUIN_API_TOKEN_FILE) to a token of this Sequin account",
                    err.summary().lines().next().unwrap_or_default().trim()
                ),
            ),
        ],
        Err(err) => vec![
            Check::fail(
                "sequin",
                "Sequin does not answer at SEQUIN_API_URL",
                format!("{err}; check SEQUIN_API_URL (it ends in /api) and that Sequin is up"),
            ),
            Check::skip("token", "API token", NEEDS_SEQUIN),
        ],
    }
}

/// Sequin knows `SEQUIN_DATABASE`; the error lists what it has instead.
fn sequin_database<'a>(config: &Config, databases: &'a [Value]) -> (Check, Option<&'a Value>) {
    let name = &config.sequin_database;
    if let Some(found) = databases.iter().find(|d| d["name"].as_str() == Some(name)) {
        let check = Check::ok(
            "sequin_database",
            format!("SEQUIN_DATABASE `{name}` is a database in Sequin"),
        );
        return (check, Some(found));
    }
    let known: Vec<&str> = databases
        .iter()
        .filter_map(|d| d["name"].as_str())
        .take(20)
        .collect();
    let fix = if known.is_empty() {
        "Sequin has no databases; connect the source database in Sequin and set SEQUIN_DATABASE to its name".to_string()
    } else {
        format!(
            "set SEQUIN_DATABASE to one of the databases Sequin has: {}",
            known.join(", ")
        )
    };
    let check = Check::fail(
        "sequin_database",
        format!("SEQUIN_DATABASE `{name}` is not a database in Sequin"),
        fix,
    );
    (check, None)
}

/// Sequin sees a table's changes when the table is in the publication of its database's
/// replication slot. The Management API shows that publication's name but not the tables
/// in it, so the table is looked up in Postgres (`pg_publication_tables`), in the database
/// at DATABASE_URL, which is taken to be the database Sequin reads.
async fn source_table(client: &tokio_postgres::Client, config: &Config, database: &Value) -> Check {
    let table = &config.source_table;
    let (schema, name) = split_table(table);
    let publication = database
        .pointer("/replication_slots/0/publication_name")
        .and_then(Value::as_str);
    let found = client
        .query_one(
            "select exists (select 1 from pg_class c join pg_namespace n on n.oid = c.relnamespace
                             where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')),
                    exists (select 1 from pg_publication where pubname = $3),
                    exists (select 1 from pg_publication_tables
                             where pubname = $3 and schemaname = $1 and tablename = $2)",
            &[&schema, &name, &publication.unwrap_or_default()],
        )
        .await;
    let (exists, has_publication, published) = match found {
        Ok(row) => (
            row.get::<_, bool>(0),
            row.get::<_, bool>(1),
            row.get::<_, bool>(2),
        ),
        Err(err) => {
            return Check::fail(
                "source_table",
                format!("cannot look up source table {table}"),
                db_error(&err),
            )
        }
    };
    let Some(publication) = publication else {
        return Check::warn(
            "source_table",
            format!(
                "Sequin shows no publication for SEQUIN_DATABASE `{}`",
                config.sequin_database
            ),
            "check the database's replication slot in Sequin's console",
        );
    };
    match (exists, has_publication, published) {
        (false, _, _) => Check::fail(
            "source_table",
            format!("source table {table} does not exist in DATABASE_URL's database"),
            "set USERHOOKS_SOURCE_TABLE to the table whose changes users receive",
        ),
        (true, false, _) => Check::fail(
            "source_table",
            format!("Sequin's publication `{publication}` is not in DATABASE_URL's database"),
            "SEQUIN_DATABASE must be the database at DATABASE_URL; check both",
        ),
        (true, true, false) => Check::fail(
            "source_table",
            format!("source table {table} is not in Sequin's publication `{publication}`, so Sequin sees none of its changes"),
            format!("run ALTER PUBLICATION {publication} ADD TABLE {table}"),
        ),
        (true, true, true) => Check::ok(
            "source_table",
            format!("source table {table} is in Sequin's publication `{publication}`"),
        ),
    }
}

/// Functions allowed, and the filter function as this worker writes it. Read through the
/// config export; only when the function is missing or differs, a dry run tells whether
/// Sequin would accept it.
async fn functions(sequin: &SequinClient, config: &Config) -> Vec<Check> {
    let name = &config.filter_function;
    let state = match sequin.config_export().await {
        Ok(export) => FilterFunctionState::of(export.function(name), &config.user_column),
        Err(err) => {
            return vec![
                Check::fail(
                    "functions",
                    "cannot read Sequin's functions (GET /api/config/export)",
                    err.to_string(),
                ),
                Check::skip(
                    "filter_function",
                    format!("filter function `{name}`"),
                    "Sequin's functions could not be read",
                ),
            ]
        }
    };
    if state == FilterFunctionState::Current {
        return vec![
            Check::ok("functions", "Sequin allows functions on this account"),
            Check::ok(
                "filter_function",
                format!("filter function `{name}` is current"),
            ),
        ];
    }
    let yaml = filter_function_yaml(name, &config.user_column);
    let allowed = match sequin.config_plan(&yaml).await {
        Ok(()) => Check::ok(
            "functions",
            "Sequin allows functions on this account (dry run)",
        ),
        Err(err) => functions_refused(&err),
    };
    let function = if allowed.status == Status::Fail {
        Check::skip(
            "filter_function",
            format!("filter function `{name}`"),
            "Sequin does not take functions now",
        )
    } else if state == FilterFunctionState::Created {
        Check::warn(
            "filter_function",
            format!("filter function `{name}` does not exist yet"),
            "the worker creates it when it starts",
        )
    } else {
        Check::warn(
            "filter_function",
            format!("filter function `{name}` differs from what this worker writes"),
            "the worker rewrites it when it starts, which restarts replication for every sink that uses it",
        )
    };
    vec![allowed, function]
}

/// Sequin refused to write (or dry-run) the filter function.
fn functions_refused(err: &SequinError) -> Check {
    if err.is_functions_disabled() {
        Check::fail(
            "functions",
            "Sequin does not allow functions on this account (\"Filter functions are not enabled\")",
            "ask the Sequin team to enable functions (the function_transforms feature), or self-host Sequin: every subscription filters its user's rows with a filter function",
        )
    } else {
        Check::fail(
            "functions",
            "Sequin refused the filter function",
            err.to_string(),
        )
    }
}

fn replica_identity_check(table: &str, identity: ReplicaIdentity) -> Check {
    match identity {
        ReplicaIdentity::Full => Check::ok(
            "replica_identity",
            format!("{table} has REPLICA IDENTITY FULL: deletes are delivered"),
        ),
        ReplicaIdentity::Unknown => Check::skip(
            "replica_identity",
            format!("replica identity of {table}"),
            "the table is not in DATABASE_URL's database",
        ),
        other => Check::warn(
            "replica_identity",
            format!(
                "{table} has REPLICA IDENTITY {}: deletes are not delivered (subscriptions get insert and update only)",
                other.as_sql()
            ),
            format!("run ALTER TABLE {table} REPLICA IDENTITY FULL"),
        ),
    }
}

async fn live_subscriptions(client: &tokio_postgres::Client, table: &str) -> Check {
    let what = format!("live subscriptions on {table}");
    match subscriptions::live_on_table(client, table).await {
        Ok(n) if n > LIVE_SUBSCRIPTIONS_WARN_ABOVE => Check::warn(
            "live_subscriptions",
            format!("{what}: {n}"),
            format!(
                "above {LIVE_SUBSCRIPTIONS_WARN_ABOVE}, Sequin stores and filters every change of {table} once per subscription; relay mode (one sink for all users) is the answer at this scale"
            ),
        ),
        Ok(n) => Check::ok("live_subscriptions", format!("{what}: {n}")),
        Err(err) => Check::fail(
            "live_subscriptions",
            format!("cannot count {what}"),
            db_error(&err),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config() -> Config {
        Config::for_local("postgres://x@localhost/db", "http://s/api", "t", "app")
    }

    #[test]
    fn lines_start_with_a_fixed_width_status_and_stay_on_one_line() {
        assert_eq!(Check::ok("x", "fine").line(), "ok   fine");
        let fail = Check::fail("x", "broken", "Error:\n  %{\n  type: [\"no\"]\n}");
        assert_eq!(fail.line(), "FAIL broken: Error: %{ type: [\"no\"] }");
        assert_eq!(fail.message(), "broken: Error: %{ type: [\"no\"] }");
        assert_eq!(Check::warn("x", "meh", "do y").line(), "warn meh: do y");
    }

    #[test]
    fn a_report_fails_on_a_failure_not_on_a_warning() {
        let warned = Report::new(vec![Check::ok("a", "a"), Check::warn("b", "b", "c")]);
        assert!(warned.ok);
        assert_eq!(warned.failed(), 0);
        let failed = Report::new(vec![Check::fail("a", "a", "b"), Check::skip("c", "c", "d")]);
        assert!(!failed.ok);
        assert_eq!(failed.failed(), 1);
        assert_eq!(failed.render(), "FAIL a: b\nskip c: d\n");
    }

    #[test]
    fn a_wrong_sequin_database_names_the_variable_and_what_sequin_has() {
        let mut config = config();
        config.sequin_database = "nope".to_string();
        let databases = [json!({"name": "app"}), json!({"name": "other"})];
        let (check, found) = sequin_database(&config, &databases);
        assert!(found.is_none());
        assert_eq!(check.status, Status::Fail);
        assert_eq!(
            check.message(),
            "SEQUIN_DATABASE `nope` is not a database in Sequin: set SEQUIN_DATABASE to one of the databases Sequin has: app, other"
        );
        config.sequin_database = "other".to_string();
        let (check, found) = sequin_database(&config, &databases);
        assert_eq!(check.status, Status::Ok);
        assert_eq!(found, Some(&databases[1]));
        let (check, _) = sequin_database(&config, &[]);
        assert!(
            check.message().contains("Sequin has no databases"),
            "{check:?}"
        );
    }

    #[test]
    fn replica_identity_warns_with_the_statement_that_fixes_it() {
        let check = replica_identity_check("public.n", ReplicaIdentity::Default);
        assert_eq!(check.status, Status::Warn);
        assert!(check
            .message()
            .ends_with("run ALTER TABLE public.n REPLICA IDENTITY FULL"));
        assert_eq!(
            replica_identity_check("public.n", ReplicaIdentity::Full).status,
            Status::Ok
        );
    }

    #[test]
    fn a_refused_function_names_the_feature_only_when_that_is_the_reason() {
        let disabled = SequinError::Rejected {
            status: 400,
            summary: "Error creating function 'f': %{\n  function: %{\n    type: [\"Filter functions are not enabled. Talk to the Sequin team to enable them.\"]\n  }\n}".to_string(),
            details: None,
        };
        let check = functions_refused(&disabled);
        assert_eq!(check.status, Status::Fail);
        assert!(check.message().contains("Filter functions are not enabled"));
        let other = SequinError::Rejected {
            status: 400,
            summary: "Invalid YAML".to_string(),
            details: None,
        };
        let check = functions_refused(&other);
        assert!(!check.message().contains("not enabled"), "{check:?}");
        assert!(check.message().contains("Invalid YAML"));
    }
}
