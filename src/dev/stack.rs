//! `userhooks dev-stack`: everything the tutorial needs, on this machine, until Ctrl-C. Against
//! DATABASE_URL's database: migrated with the example application, the Sequin emulator
//! delivering webhooks from it, a receiver printing every webhook it gets, the worker, and
//! `serve` on 127.0.0.1:3333. It prints what to try next.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use super::local;
use crate::config::{DatabaseArgs, Secret};
use crate::db::{self, DbError};

/// The emulator's API token: a local stand-in, so a fixed and printed one is no secret.
pub const TOKEN: &str = "userhooks-dev";
/// Users created when the `users` table is empty, so the tutorial's `userId: 1` exists.
const USERS: [&str; 3] = ["Ada", "Grace", "Linus"];

#[derive(Args, Debug)]
pub struct StackArgs {
    #[command(flatten)]
    pub db: DatabaseArgs,
    /// Address of `serve`, the tutorial's HTTP API.
    #[arg(long, default_value = "127.0.0.1:3333")]
    pub listen: String,
    /// Address of the Sequin emulator.
    #[arg(long, default_value = "127.0.0.1:7376")]
    pub emulator_listen: String,
    /// Address of the webhook receiver (any path).
    #[arg(long, default_value = "127.0.0.1:3334")]
    pub receiver_listen: String,
    /// Address of the worker's /metrics, /healthz and /readyz.
    #[arg(long, default_value = "127.0.0.1:9610")]
    pub metrics_addr: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("could not start the worker: {0}")]
    Build(#[from] crate::worker::BuildError),
    #[error(transparent)]
    Serve(#[from] crate::serve::ServeError),
    #[error("cannot listen on {addr} for the {what}: {source} (another dev stack running? pick another address with --{flag})")]
    Listen {
        what: &'static str,
        flag: &'static str,
        addr: String,
        source: std::io::Error,
    },
    #[error("{0}")]
    Io(#[from] std::io::Error),
}

async fn bind(
    addr: &str,
    what: &'static str,
    flag: &'static str,
) -> Result<tokio::net::TcpListener, StackError> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| StackError::Listen {
            what,
            flag,
            addr: addr.to_string(),
            source,
        })
}

/// The users of the example application, creating three when there are none.
async fn users(client: &tokio_postgres::Client) -> Result<Vec<(i32, String)>, StackError> {
    let count: i64 = client
        .query_one("select count(*) from users", &[])
        .await?
        .get(0);
    if count == 0 {
        for name in USERS {
            client
                .execute("insert into users (name) values ($1)", &[&name])
                .await?;
        }
    }
    Ok(client
        .query("select id, name from users order by id limit 5", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect())
}

pub async fn run(args: StackArgs) -> Result<(), StackError> {
    let url = args.db.database_url.clone();
    local::prepare_database(&url).await?;
    let client = db::connect(&url, "userhooks-dev-stack").await?;
    let users = users(&client).await?;

    let emulator_listener =
        bind(&args.emulator_listen, "Sequin emulator", "emulator-listen").await?;
    let receiver = local::start_receiver(
        bind(&args.receiver_listen, "webhook receiver", "receiver-listen").await?,
        true,
    )?;
    let serve_listener = bind(&args.listen, "HTTP API (serve)", "listen").await?;
    let metrics_addr: SocketAddr = tokio::net::lookup_host(&args.metrics_addr)
        .await?
        .next()
        .ok_or_else(|| {
            std::io::Error::other(format!("--metrics-addr {}: no address", args.metrics_addr))
        })?;

    let emulator = local::start_emulator(&url, TOKEN, emulator_listener).await;
    let mut config = local::worker_config(&url, &emulator.api_url(), TOKEN);
    config.metrics_addr = Some(metrics_addr);
    let worker = local::start_worker(config).await?;

    let sequin = crate::sequin::SequinClient::new(
        &emulator.api_url(),
        Secret::new(TOKEN),
        Duration::from_secs(3),
        crate::metrics::Metrics::new(),
    )
    .with_in_process_retries(0);
    let server = crate::serve::prepare(crate::serve::ServeConfig {
        database_url: url.clone(),
        wait: Duration::from_secs(10),
        sequin: Some(sequin),
        token: None,
    })
    .await?;
    let serve_addr = serve_listener.local_addr()?;
    let (stop_serve, serve_stopped) = tokio::sync::oneshot::channel::<()>();
    let serve_task = tokio::spawn(server.run(serve_listener, async {
        let _ = serve_stopped.await;
    }));

    print_next_steps(&Shown {
        url: &url,
        serve: serve_addr,
        emulator: emulator.api_url(),
        receiver: receiver.addr,
        metrics: worker.metrics_addr,
        users: &users,
    });

    crate::shutdown::on_signal()?.await;
    let _ = stop_serve.send(());
    let _ = serve_task.await;
    worker.stop().await;
    emulator.shutdown().await;
    println!("dev stack stopped");
    Ok(())
}

/// What [`print_next_steps`] shows.
struct Shown<'a> {
    url: &'a str,
    serve: SocketAddr,
    emulator: String,
    receiver: SocketAddr,
    metrics: Option<SocketAddr>,
    users: &'a [(i32, String)],
}

fn print_next_steps(s: &Shown<'_>) {
    let target = db::pg_config(s.url, "userhooks")
        .map(|c| db::describe_target(&c))
        .unwrap_or_default();
    let dbname = db::pg_config(s.url, "userhooks")
        .ok()
        .and_then(|c| c.get_dbname().map(str::to_string))
        .unwrap_or_else(|| "postgres".to_string());
    let users: Vec<String> = s.users.iter().map(|(id, n)| format!("{id} {n}")).collect();
    let metrics = s.metrics.map_or_else(
        || "off".to_string(),
        |a| format!("http://{a}/metrics (also /readyz)"),
    );
    let serve_port = s.serve.port();
    let hook = format!("http://{}/hooks/1", s.receiver);
    let psql = local::psql_flags(s.url);
    let same_url = if std::env::var_os("DATABASE_URL").is_some() {
        " (with the same DATABASE_URL)"
    } else {
        ""
    };
    println!(
        "userhooks dev stack is up; Ctrl-C stops it.
  HTTP API (serve)   http://{serve} (no authentication: local use only)
  Sequin emulator    {emulator} (token `{TOKEN}`; its state at /_emulator/state)
  webhook receiver   http://{receiver}/<any path>, prints one line per webhook below
  worker metrics     {metrics}
  database           {target}: userhooks schema, tables users and notifications; users {users}

Try, in another terminal{same_url}:
  curl -X POST http://localhost:{serve_port}/subscribe -H \"Content-Type: application/json\" \\
    -d '{{\"userId\": 1, \"webhookUrl\": \"{hook}\"}}'
  psql {psql} -d {dbname} -c \"insert into notifications (user_id, message) values (1, 'hello')\"
  curl -X POST http://localhost:{serve_port}/backfill -H \"Content-Type: application/json\" \\
    -d '{{\"sinkName\": \"user-1-notifications\"}}'
  userhooks generate-notifications --duration 10s
  userhooks status
Webhooks arrive here:",
        serve = s.serve,
        emulator = s.emulator,
        receiver = s.receiver,
        users = users.join(", "),
    );
}
