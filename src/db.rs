//! Connections and migrations.

use std::str::FromStr;

use deadpool_postgres::{Hook, Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("DATABASE_URL is not a valid Postgres connection string: {0}")]
    BadUrl(#[source] tokio_postgres::Error),
    #[error("could not build the connection pool: {0}")]
    Pool(String),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("could not get a database connection: {0}")]
    Checkout(#[from] deadpool_postgres::PoolError),
    /// The server could not be reached (or refused us): names where, never with a password.
    #[error("cannot connect to Postgres at {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("the userhooks schema is {0} in this database: run `userhooks migrate` first")]
    NotMigrated(String),
}

impl DbError {
    fn connect(config: &tokio_postgres::Config, err: &tokio_postgres::Error) -> Self {
        DbError::Connect {
            target: describe_target(config),
            reason: crate::telemetry::error_chain(err),
        }
    }

    /// A pool's failure to open a connection, naming the server like [`connect`] does.
    pub fn from_checkout(database_url: &str, err: deadpool_postgres::PoolError) -> Self {
        use deadpool_postgres::PoolError;
        let Ok(config) = tokio_postgres::Config::from_str(database_url) else {
            return DbError::Checkout(err);
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
];

/// `sql/roles.sql`: the least-privilege roles `userhooks_app` and `userhooks_worker`.
pub const ROLES_SQL: &str = include_str!("../sql/roles.sql");

/// Planner settings for every connection we open, set right after connecting.
/// - `random_page_cost`: the default (4.0) models spinning disks. Our tables are small, hot
///   and cached, and with 4.0 the planner preferred scanning all 20,000 rows of the queue
///   over fetching 200 of them by primary key. 1.1 is the usual value for SSDs.
/// - `plan_cache_mode`: the claim took 0.8 ms to plan and was re-planned on every call (a
///   custom plan each time), about 9 µs of Postgres CPU per subscribe. Every statement is
///   prepared once per connection and fenced to keep its plan whatever the parameters
///   (tests/plans.rs checks the generic plans), so plan them once.
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

/// Parse a connection string and tag the connections with `application_name`.
pub fn pg_config(
    database_url: &str,
    application_name: &str,
) -> Result<tokio_postgres::Config, DbError> {
    let mut config = tokio_postgres::Config::from_str(database_url).map_err(DbError::BadUrl)?;
    config.application_name(application_name);
    if config.get_connect_timeout().is_none() {
        config.connect_timeout(std::time::Duration::from_secs(5));
    }
    Ok(config)
}

/// A pool of `userhooks-worker` connections.
pub fn pool(database_url: &str, max_size: usize) -> Result<Pool, DbError> {
    let config = pg_config(database_url, "userhooks-worker")?;
    let settings: std::sync::Arc<str> = session_sql(&config).into();
    let manager = Manager::from_config(
        config,
        NoTls,
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

/// One direct connection (CLI tools, listener), driven on a background task.
pub async fn connect(
    database_url: &str,
    application_name: &str,
) -> Result<tokio_postgres::Client, DbError> {
    let config = pg_config(database_url, application_name)?;
    let (client, connection) = config
        .connect(NoTls)
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
}
