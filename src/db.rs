//! Connections and migrations.
//!
//! Every connection (the pool, the LISTEN connections, the CLI tools) is opened here, over
//! TLS as the connection string's `sslmode` asks ([`tls`]).

use std::str::FromStr;

use deadpool_postgres::{Hook, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::{Client, Connection, Socket};

mod conninfo;
mod tls;

use self::tls::MakePgTls;
pub use self::tls::{PgTlsStream, Roots, SslMode, TlsError, TlsSettings};

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Says what is wrong without quoting the connection string, which may hold a password.
    #[error("DATABASE_URL is not a valid Postgres connection string: {0}")]
    BadUrl(String),
    #[error("DATABASE_URL must start with postgres:// or postgresql:// (or be key=value pairs)")]
    BadScheme,
    #[error("DATABASE_URL has whitespace before postgres://; remove it")]
    SpaceBeforeScheme,
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("could not build the connection pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Checkout(deadpool_postgres::PoolError),
    /// The server could not be reached (or refused us): names where, never with a password.
    #[error("cannot connect to Postgres at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("the userhooks schema is {0} in this database: run `userhooks migrate` first")]
    NotMigrated(String),
}

impl From<deadpool_postgres::PoolError> for DbError {
    fn from(err: deadpool_postgres::PoolError) -> DbError {
        match err {
            deadpool_postgres::PoolError::Backend(err) => match TlsError::behind(&err) {
                Some(tls) => DbError::Tls(tls),
                None => DbError::Checkout(deadpool_postgres::PoolError::Backend(err)),
            },
            other => DbError::Checkout(other),
        }
    }
}

impl DbError {
    /// A failed connect: a TLS problem said as such, anything else naming the server.
    fn connect(config: &tokio_postgres::Config, err: &tokio_postgres::Error) -> Self {
        match TlsError::behind(err) {
            Some(tls) => DbError::Tls(tls),
            None => DbError::Connect {
                target: describe_target(config),
                reason: crate::telemetry::error_chain(err),
            },
        }
    }

    /// A pool's failure to open a connection, naming the server like [`connect`] does.
    pub fn from_checkout(database_url: &str, err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        let Ok(config) = pg_config(database_url, "userhooks") else {
            return DbError::from(err);
        };
        match err {
            PoolError::Backend(err) => DbError::connect(&config, &err),
            PoolError::Timeout(_) => DbError::Connect {
                target: describe_target(&config),
                reason: "no connection within the timeout".to_string(),
            },
            other => DbError::Checkout(other),
        }
    }
}

/// Where a connection string points, for messages: hosts, ports and database, never the
/// user's password.
pub fn describe_target(config: &tokio_postgres::Config) -> String {
    use tokio_postgres::config::Host;
    let ports = config.get_ports();
    let port = |i: usize| ports.get(i).or(ports.first()).copied().unwrap_or(5432);
    let mut hosts: Vec<String> = config
        .get_hosts()
        .iter()
        .enumerate()
        .map(|(i, host)| match host {
            Host::Tcp(name) => format!("{name}:{}", port(i)),
            #[cfg(unix)]
            Host::Unix(path) => format!("{}/.s.PGSQL.{}", path.display(), port(i)),
        })
        .collect();
    if hosts.is_empty() {
        hosts = config
            .get_hostaddrs()
            .iter()
            .enumerate()
            .map(|(i, addr)| format!("{addr}:{}", port(i)))
            .collect();
    }
    // Postgres defaults the database to the user name.
    let database = config.get_dbname().or(config.get_user()).unwrap_or("?");
    format!("{}, database `{database}`", hosts.join(","))
}

/// A warning for `sslmode=prefer` (libpq's default) towards a server not on this machine:
/// whoever can answer for it may refuse TLS, and the connection goes on in plaintext,
/// password included. `None` for other modes, and for loopback addresses, `localhost` and
/// Unix sockets.
pub fn plaintext_fallback_warning(database_url: &str) -> Option<String> {
    use tokio_postgres::config::Host;
    let Target { config, .. } = target(database_url, "userhooks").ok()?;
    if config.get_ssl_mode() != tokio_postgres::config::SslMode::Prefer {
        return None;
    }
    let (hosts, addrs) = (config.get_hosts(), config.get_hostaddrs());
    let local = (0..hosts.len().max(addrs.len())).all(|i| match (addrs.get(i), hosts.get(i)) {
        // hostaddr, when given, is where the connection goes.
        (Some(addr), _) => addr.to_canonical().is_loopback(),
        (None, Some(Host::Tcp(name))) => {
            name.eq_ignore_ascii_case("localhost")
                || name
                    .parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.to_canonical().is_loopback())
        }
        _ => true,
    });
    (!local).then(|| {
        format!(
            "sslmode=prefer towards {}: if TLS is refused the connection goes on in plaintext, password included; set sslmode=verify-full in DATABASE_URL (with sslrootcert=<the CA certificate file> for a private CA)",
            describe_target(&config)
        )
    })
}

/// Refuse to go on without the userhooks schema, or with one older than this binary's: every
/// statement would fail with a bare "db error" otherwise.
pub async fn require_schema(client: &tokio_postgres::Client) -> Result<(), DbError> {
    let present: bool = client
        .query_one(
            "select to_regclass('userhooks.subscription_requests') is not null
                and to_regclass('userhooks.schema_migrations') is not null",
            &[],
        )
        .await?
        .get(0);
    if !present {
        return Err(DbError::NotMigrated("missing".to_string()));
    }
    let version: i32 = match client
        .query_one(
            "select coalesce(max(version), 0) from userhooks.schema_migrations",
            &[],
        )
        .await
    {
        Ok(row) => row.get(0),
        // userhooks_app may not read the migrations table: the schema is there, which is
        // as much as that role can know.
        Err(err)
            if err.code() == Some(&tokio_postgres::error::SqlState::INSUFFICIENT_PRIVILEGE) =>
        {
            return Ok(())
        }
        Err(err) => return Err(err.into()),
    };
    let expected = MIGRATIONS.last().map_or(0, |(version, _, _)| *version);
    if version < expected {
        return Err(DbError::NotMigrated(format!(
            "at version {version} (this userhooks needs {expected})"
        )));
    }
    Ok(())
}

/// The migrations, embedded so the binary alone can set up a database.
pub const MIGRATIONS: &[(i32, &str, &str)] = &[
    (1, "init", include_str!("../sql/migrations/0001_init.sql")),
    (
        2,
        "helpers",
        include_str!("../sql/migrations/0002_helpers.sql"),
    ),
    (
        3,
        "scrub_secrets",
        include_str!("../sql/migrations/0003_scrub_secrets.sql"),
    ),
    (
        4,
        "request_input_limits",
        include_str!("../sql/migrations/0004_request_input_limits.sql"),
    ),
    (
        5,
        "options_checks_on_write",
        include_str!("../sql/migrations/0005_options_checks_on_write.sql"),
    ),
    (
        6,
        "request_done_from_write_back",
        include_str!("../sql/migrations/0006_request_done_from_write_back.sql"),
    ),
    (
        7,
        "subscriptions_update_in_place",
        include_str!("../sql/migrations/0007_subscriptions_update_in_place.sql"),
    ),
    (
        9,
        "retry_respects_history",
        include_str!("../sql/migrations/0009_retry_respects_history.sql"),
    ),
];

/// `sql/roles.sql`: the least-privilege roles `userhooks_app` and `userhooks_worker`.
pub const ROLES_SQL: &str = include_str!("../sql/roles.sql");

/// Planner settings for every connection we open, set right after connecting.
/// - `random_page_cost`: the default (4.0) models spinning disks. Our tables are small, hot
///   and cached, and with 4.0 the planner preferred scanning all 20,000 rows of the queue
///   over fetching 200 of them by primary key. 1.1 is the usual value for SSDs.
/// - `plan_cache_mode`: otherwise the claim is re-planned on every call (a custom plan each
///   time), and planning it costs more than running it. Every statement is prepared once
///   per connection and fenced to keep its plan whatever the parameters (tests/plans.rs
///   checks the generic plans), so plan them once.
///
/// Sent as `SET`, not as startup `options`, which PgBouncer refuses by default. A setting the
/// connection string already gives (`options=-c ...`) is left as the user chose it.
const SESSION_SETTINGS: [(&str, &str); 2] = [
    ("random_page_cost", "1.1"),
    ("plan_cache_mode", "force_generic_plan"),
];

/// The `SET` statements [`SESSION_SETTINGS`] leaves to us, given the URL's own options.
fn session_sql(config: &tokio_postgres::Config) -> String {
    let user_options = config.get_options().unwrap_or_default();
    SESSION_SETTINGS
        .iter()
        .filter(|(name, _)| !user_options.contains(name))
        .map(|(name, value)| format!("set {name} = '{value}';"))
        .collect()
}

/// Apply [`session_sql`] to a new connection. These only steer plans, so a server that
/// refuses them (an old version, a restrictive pooler) is logged, not fatal.
async fn apply_session_settings(client: &tokio_postgres::Client, sql: &str) {
    if sql.is_empty() {
        return;
    }
    if let Err(err) = client.batch_execute(sql).await {
        tracing::warn!(error = %err, "could not apply planner settings; continuing without them");
    }
}

impl From<conninfo::ConnInfoError> for DbError {
    fn from(err: conninfo::ConnInfoError) -> DbError {
        DbError::BadUrl(err.to_string())
    }
}

/// A URL tokio-postgres would not take for one: anything that is not `postgres://` or
/// `postgresql://` exactly is read as `key=value` pairs, and its first "key" (the whole URL
/// up to an `=`, password included) would be quoted back in the error.
fn check_scheme(database_url: &str) -> Result<(), DbError> {
    if ["postgres://", "postgresql://"]
        .iter()
        .any(|prefix| database_url.starts_with(prefix))
    {
        return Ok(());
    }
    let trimmed = database_url.trim_start();
    let first_word = trimmed
        .split(|c: char| c.is_whitespace() || c == '=')
        .next()
        .unwrap_or_default();
    if !first_word.contains("://") {
        return Ok(());
    }
    if ["postgres://", "postgresql://"]
        .iter()
        .any(|prefix| trimmed.starts_with(prefix))
    {
        return Err(DbError::SpaceBeforeScheme);
    }
    Err(DbError::BadScheme)
}

/// tokio-postgres's parse error in words that quote nothing of the connection string but an
/// option's name or one of its fixed texts: the input may hold a password anywhere.
fn bad_url(err: &tokio_postgres::Error) -> DbError {
    const HIDDEN: &str = "unknown option (not shown: it looks like part of a URL or a password); write key=value pairs, or a URL starting with postgres://";
    let detail = std::error::Error::source(err)
        .map(ToString::to_string)
        .unwrap_or_default();
    let said = if let Some(name) = detail
        .strip_prefix("unknown option `")
        .and_then(|rest| rest.strip_suffix('`'))
    {
        let plain = (1..=40).contains(&name.len())
            && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
        if plain {
            detail.clone()
        } else {
            HIDDEN.to_string()
        }
    } else if let Some((at, _)) = detail
        .strip_prefix("unexpected character")
        .and_then(|_| detail.split_once(" but got "))
    {
        // The character found may be one of the password's.
        at.to_string()
    } else if detail.starts_with("invalid value for option `")
        || detail.starts_with("invalid utf-8")
        || detail.starts_with("unterminated ")
        || detail == "unexpected EOF"
    {
        detail
    } else {
        "not shown: it could quote the connection string".to_string()
    };
    DbError::BadUrl(said)
}

/// A parsed connection string: where to connect, and how TLS is done.
struct Target {
    config: tokio_postgres::Config,
    tls: TlsSettings,
}

fn target(database_url: &str, application_name: &str) -> Result<Target, DbError> {
    check_scheme(database_url)?;
    // tokio-postgres refuses `verify-ca`, `verify-full` and `sslrootcert`: they are ours.
    let split = conninfo::split(database_url)?;
    let tls = TlsSettings::from_params(split.sslmode.as_deref(), split.sslrootcert.as_deref())?;
    let mut config = tokio_postgres::Config::from_str(&split.rest).map_err(|e| bad_url(&e))?;
    // `postgres://u:p@ss@h`: the credentials end at the first `@`, so the rest of the password
    // would be taken for the host and shown wherever the host is.
    if config
        .get_hosts()
        .iter()
        .any(|host| matches!(host, tokio_postgres::config::Host::Tcp(name) if name.contains('@')))
    {
        return Err(conninfo::ConnInfoError::AtInHost.into());
    }
    config.application_name(application_name);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    config.ssl_mode(tls.mode.postgres());
    // libpq: TLS is not used over Unix-domain sockets, whatever the sslmode.
    #[cfg(unix)]
    if config.get_hostaddrs().is_empty()
        && !config.get_hosts().is_empty()
        && config
            .get_hosts()
            .iter()
            .all(|host| matches!(host, tokio_postgres::config::Host::Unix(_)))
    {
        config.ssl_mode(tokio_postgres::config::SslMode::Disable);
    }
    Ok(Target { config, tls })
}

/// Parse a connection string and tag the connections with `application_name`. The TLS
/// verification asked for (`verify-ca`, `verify-full`, `sslrootcert`) is not in the result:
/// connect through [`connect`], [`connect_raw`] or [`pool`].
pub fn pg_config(
    database_url: &str,
    application_name: &str,
) -> Result<tokio_postgres::Config, DbError> {
    Ok(target(database_url, application_name)?.config)
}

/// Connect with `tls`. As libpq does with `sslmode=prefer`, a failed TLS handshake is tried
/// again without TLS.
async fn open(
    config: &tokio_postgres::Config,
    tls: &MakePgTls,
) -> Result<(Client, Connection<Socket, PgTlsStream>), tokio_postgres::Error> {
    match config.connect(tls.clone()).await {
        Err(err)
            if config.get_ssl_mode() == tokio_postgres::config::SslMode::Prefer
                && TlsError::behind(&err).is_some() =>
        {
            tracing::warn!(error = %err, "sslmode=prefer: connecting without TLS");
            let mut plain = config.clone();
            plain.ssl_mode(tokio_postgres::config::SslMode::Disable);
            plain.connect(tls.clone()).await
        }
        result => result,
    }
}

/// How the pool opens its connections: [`open`], the connection driven on its own task.
struct PoolConnect {
    tls: MakePgTls,
}

impl deadpool_postgres::Connect for PoolConnect {
    fn connect(
        &self,
        config: &tokio_postgres::Config,
    ) -> futures_util::future::BoxFuture<
        '_,
        Result<(Client, tokio::task::JoinHandle<()>), tokio_postgres::Error>,
    > {
        let config = config.clone();
        Box::pin(async move {
            let (client, connection) = open(&config, &self.tls).await?;
            let driver = tokio::spawn(async move {
                if let Err(err) = connection.await {
                    tracing::debug!(error = %err, "database connection closed");
                }
            });
            Ok((client, driver))
        })
    }
}

/// A pool of `userhooks-worker` connections.
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool, DbError> {
    let Target { config, tls } = target(database_url, "userhooks-worker")?;
    let settings: std::sync::Arc<str> = session_sql(&config).into();
    let manager = Manager::from_connect(
        config,
        PoolConnect {
            tls: tls.connector()?,
        },
        ManagerConfig {
            // A cheap check on checkout, so a connection killed by a Postgres restart is
            // replaced instead of failing the next query.
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .post_create(Hook::async_fn(move |client, _| {
            let settings = settings.clone();
            Box::pin(async move {
                apply_session_settings(client, &settings).await;
                Ok(())
            })
        }))
        .max_size(max_size)
        .wait_timeout(Some(std::time::Duration::from_secs(10)))
        .create_timeout(Some(std::time::Duration::from_secs(5)))
        .recycle_timeout(Some(std::time::Duration::from_secs(5)))
        .runtime(deadpool_postgres::Runtime::Tokio1)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// One direct connection whose driver the caller polls: a LISTEN connection reads its
/// notifications there. No planner settings are applied.
pub async fn connect_raw(
    database_url: &str,
    application_name: &str,
) -> Result<(Client, Connection<Socket, PgTlsStream>), DbError> {
    let Target { config, tls } = target(database_url, application_name)?;
    open(&config, &tls.connector()?)
        .await
        .map_err(|e| DbError::connect(&config, &e))
}

/// One direct connection (CLI tools), driven on a background task.
pub async fn connect(database_url: &str, application_name: &str) -> Result<Client, DbError> {
    let Target { config, tls } = target(database_url, application_name)?;
    let (client, connection) = open(&config, &tls.connector()?)
        .await
        .map_err(|e| DbError::connect(&config, &e))?;
    tokio::spawn(async move {
        if let Err(err) = connection.await {
            tracing::debug!(error = %err, "database connection closed");
        }
    });
    apply_session_settings(&client, &session_sql(&config)).await;
    Ok(client)
}

/// Apply the embedded migrations that are missing. Returns the versions applied.
///
/// Everything runs in one transaction under a transaction-level advisory lock: a second
/// process blocks until the first commits, then sees the versions as applied.
pub async fn migrate(database_url: &str) -> Result<Vec<i32>, DbError> {
    let mut client = connect(database_url, "userhooks-migrate").await?;
    let tx = client.transaction().await?;
    // Arbitrary constant: "userhooks migrate" in this database.
    tx.execute("select pg_advisory_xact_lock(7303830001)", &[])
        .await?;
    tx.batch_execute(
        "create schema if not exists userhooks;
         create table if not exists userhooks.schema_migrations (
             version    int primary key,
             name       text not null,
             applied_at timestamptz not null default now()
         );",
    )
    .await?;
    let applied: Vec<i32> = tx
        .query("select version from userhooks.schema_migrations", &[])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    let mut done = Vec::new();
    for (version, name, sql) in MIGRATIONS {
        if applied.contains(version) {
            continue;
        }
        tx.batch_execute(sql).await?;
        tx.execute(
            "insert into userhooks.schema_migrations (version, name) values ($1, $2)",
            &[version, name],
        )
        .await?;
        done.push(*version);
    }
    tx.commit().await?;
    Ok(done)
}

/// Create (if missing) the roles `userhooks_app` and `userhooks_worker` and set their
/// privileges on this database's `userhooks` schema (`sql/roles.sql`). Run after [`migrate`],
/// as the schema owner with CREATEROLE (or a superuser). Safe to run twice or concurrently.
pub async fn apply_roles(database_url: &str) -> Result<(), DbError> {
    let mut client = connect(database_url, "userhooks-migrate").await?;
    let tx = client.transaction().await?;
    // Same lock as `migrate`: grants on one database's objects are applied one session at a time.
    tx.execute("select pg_advisory_xact_lock(7303830001)", &[])
        .await?;
    tx.batch_execute(ROLES_SQL).await?;
    tx.commit().await?;
    Ok(())
}

/// The tutorial's application tables (`users`, `notifications`), for `migrate --example-app`.
pub const EXAMPLE_APP_SQL: &str = include_str!("../sql/example_app.sql");

/// Create the example application's tables (`users`, `notifications`).
pub async fn create_example_app(database_url: &str) -> Result<(), DbError> {
    let client = connect(database_url, "userhooks-migrate").await?;
    client.batch_execute(EXAMPLE_APP_SQL).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connections_plan_for_cached_data_and_keep_generic_plans() {
        let config = pg_config("postgres://u@localhost/db", "t").unwrap();
        assert_eq!(
            config.get_options(),
            None,
            "no startup options: PgBouncer refuses them"
        );
        assert_eq!(
            session_sql(&config),
            "set random_page_cost = '1.1';set plan_cache_mode = 'force_generic_plan';"
        );
    }

    #[test]
    fn the_target_names_host_port_and_database_but_never_the_password() {
        let config = pg_config("postgres://me:hunter2@db.internal:6543/orders", "t").unwrap();
        let target = describe_target(&config);
        assert_eq!(target, "db.internal:6543, database `orders`");
        let config = pg_config("host=/run/postgresql user=app password=hunter2", "t").unwrap();
        assert_eq!(
            describe_target(&config),
            "/run/postgresql/.s.PGSQL.5432, database `app`"
        );
    }

    #[test]
    fn a_setting_given_in_the_url_is_left_as_the_user_chose_it() {
        let config = pg_config(
            "postgres://u@localhost/db?options=-c%20random_page_cost%3D2%20-c%20statement_timeout%3D5s",
            "t",
        )
        .unwrap();
        assert_eq!(
            session_sql(&config),
            "set plan_cache_mode = 'force_generic_plan';"
        );
    }

    #[test]
    fn tls_parameters_tokio_postgres_refuses_are_taken_care_of() {
        use tokio_postgres::config::SslMode as Pg;
        let config = pg_config(
            "postgres://u@db.example.com/app?sslmode=verify-full&sslrootcert=/ca.pem&connect_timeout=3",
            "t",
        )
        .unwrap();
        assert_eq!(config.get_ssl_mode(), Pg::Require);
        assert_eq!(config.get_dbname(), Some("app"));
        assert_eq!(
            config.get_connect_timeout(),
            Some(&std::time::Duration::from_secs(3))
        );
        let config = pg_config(
            "host=db.example.com sslmode=verify-ca sslrootcert=/ca.pem dbname=app",
            "t",
        )
        .unwrap();
        assert_eq!(config.get_ssl_mode(), Pg::Require);
        assert_eq!(config.get_dbname(), Some("app"));
        let config = pg_config("postgres://u@h/app", "t").unwrap();
        assert_eq!(config.get_ssl_mode(), Pg::Prefer, "libpq's default");
    }

    #[test]
    fn unix_sockets_go_without_tls_as_in_libpq() {
        use tokio_postgres::config::SslMode as Pg;
        for url in [
            "postgres://u@%2Fvar%2Frun%2Fpostgresql/db?sslmode=require",
            "host=/tmp dbname=db sslmode=verify-full",
        ] {
            assert_eq!(
                pg_config(url, "t").unwrap().get_ssl_mode(),
                Pg::Disable,
                "{url}"
            );
        }
    }

    #[test]
    fn a_bad_sslmode_says_what_to_fix_and_not_the_password() {
        let err = pg_config("postgres://u:hunter2@h/db?sslmode=on", "t")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        assert!(
            err.contains("use one of disable, prefer, require, verify-ca, verify-full"),
            "{err}"
        );
    }

    /// The error for `url`, which must not contain any part of the password `hunter2`.
    fn refused(url: &str) -> String {
        let err = pg_config(url, "t").unwrap_err().to_string();
        assert!(!err.contains("hunter"), "{url}: {err}");
        err
    }

    #[test]
    fn a_malformed_url_is_refused_without_quoting_it() {
        // Not postgres:// exactly: tokio-postgres would read key=value pairs and quote the
        // first "key", the URL up to its first `=`.
        for url in [
            "postgresql+psycopg://u:hunter2@h/db?sslmode=require",
            "pg://u:hunter2@h/db?connect_timeout=3",
            "POSTGRES://u:hunter2@h/db?sslmode=require",
        ] {
            assert_eq!(
                refused(url),
                "DATABASE_URL must start with postgres:// or postgresql:// (or be key=value pairs)"
            );
        }
        for url in [
            " postgres://u:hunter2@h/db?sslmode=require",
            "\npostgresql://u:hunter2@h/db",
        ] {
            assert_eq!(
                refused(url),
                "DATABASE_URL has whitespace before postgres://; remove it"
            );
        }
        // No scheme at all: the first "key" is not an option name, and not shown.
        assert!(refused("u:hunter2@h/db?sslmode=require").contains("unknown option (not shown"));
        // An unknown option by name, and a misplaced character by position, are still said.
        assert_eq!(
            refused("host=h pasword=hunter2"),
            "DATABASE_URL is not a valid Postgres connection string: unknown option `pasword`"
        );
        assert_eq!(
            refused("password hunter2"),
            "DATABASE_URL is not a valid Postgres connection string: unexpected character at byte 9: expected `=`"
        );
        // An `@` in the password takes the rest of it for the host: refused, not shown.
        assert!(refused("postgres://u:hunter@2@h/db").contains("%40"));
        // ... and in the query it would lose the sslmode.
        assert!(refused("postgres://h/db?password=hunter@2&sslmode=verify-full").contains("%40"));
    }

    #[test]
    fn a_stray_equals_sign_is_an_error_not_the_end_of_the_string() {
        let err = pg_config("host=h = sslmode=verify-full", "t").unwrap_err();
        assert!(
            err.to_string().contains("no name before the '=' at byte 7"),
            "{err}"
        );
    }

    #[test]
    fn prefer_towards_another_machine_is_warned_about_once_at_start() {
        for url in [
            "postgres://u:hunter2@db.example.com/app",
            "postgres://u@db.example.com/app?sslmode=prefer",
            "host=10.0.0.5 dbname=app",
            "host=localhost,db.example.com dbname=app",
            "host=localhost hostaddr=10.0.0.5 dbname=app",
        ] {
            let warning = plaintext_fallback_warning(url).unwrap_or_else(|| panic!("{url}"));
            assert!(warning.starts_with("sslmode=prefer towards "), "{warning}");
            assert!(warning.contains("sslmode=verify-full"), "{warning}");
            assert!(!warning.contains("hunter2"), "{warning}");
        }
        for url in [
            "postgres://u@localhost/app",
            "postgres://u@127.0.0.2:5433/app",
            "postgres://u@[::1]/app",
            "postgres://u@%2Frun%2Fpostgresql/app",
            "host=db.example.com hostaddr=127.0.0.1 dbname=app",
            "postgres://u@db.example.com/app?sslmode=require",
            "postgres://u@db.example.com/app?sslmode=disable",
            "postgres://u@db.example.com/app?sslmode=verify-full",
        ] {
            assert_eq!(plaintext_fallback_warning(url), None, "{url}");
        }
    }
}
