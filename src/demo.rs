//! `userhooks demo`: the whole flow on one machine, with nothing but a local Postgres.
//!
//! It creates its own database, migrates, starts the Sequin emulator and a webhook receiver
//! in-process, runs the worker, subscribes users with plain SQL and shows what happened.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{Path, State};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::Value;

use crate::cli::DemoArgs;
use crate::config::Config;
use crate::db::{self, DbError};
use crate::emulator::{self, EmulatorConfig};

pub const EXAMPLE_APP_SQL: &str = include_str!("../sql/example_app.sql");

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("could not start the worker: {0}")]
    Build(#[from] crate::worker::BuildError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("demo check failed: {0}")]
    Check(String),
}

/// Create the example application's tables (`users`, `notifications`).
pub async fn create_example_app(database_url: &str) -> Result<(), DbError> {
    let client = db::connect(database_url, "userhooks-migrate").await?;
    client.batch_execute(EXAMPLE_APP_SQL).await?;
    Ok(())
}

pub fn database_url_for(server_url: &str, name: &str) -> String {
    match url::Url::parse(server_url) {
        Ok(mut url) => {
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
        // key=value connection strings: append dbname (the last one wins).
        Err(_) => format!("{server_url} dbname={name}"),
    }
}

/// Received webhooks, by user path segment.
type Inbox = Arc<Mutex<BTreeMap<String, Vec<Value>>>>;

async fn receive(State(inbox): State<Inbox>, Path(user): Path<String>, Json(body): Json<Value>) {
    inbox
        .lock()
        .expect("inbox lock")
        .entry(user)
        .or_default()
        .push(body);
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let started = Instant::now();
    println!("userhooks demo");
    println!("==============");

    // 1. A database of our own.
    let admin = db::connect(&args.database_url, "userhooks-demo").await?;
    let name = &args.demo_database;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DemoError::Check(format!(
            "demo database name `{name}` must be [A-Za-z0-9_]"
        )));
    }
    // Two statements: DROP/CREATE DATABASE cannot share an implicit transaction.
    admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await?;
    admin
        .batch_execute(&format!("create database {name}"))
        .await?;
    let url = database_url_for(&args.database_url, name);
    db::migrate(&url).await?;
    create_example_app(&url).await?;
    let client = db::connect(&url, "userhooks-demo").await?;
    client
        .batch_execute("insert into users (name) values ('Paul'), ('Ada'), ('Linus')")
        .await?;
    println!(
        "[1/4] database `{name}` created, userhooks schema migrated, example app tables ready"
    );

    // 2. Sequin emulator and a webhook receiver, both in-process.
    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let emulator = emulator::start(
        EmulatorConfig {
            token: token.clone(),
            database: "app".to_string(),
            tables: vec!["public.notifications".to_string()],
            ..EmulatorConfig::default()
        },
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await;
    let inbox: Inbox = Arc::default();
    let receiver = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let receiver_addr = receiver.local_addr()?;
    let app = Router::new()
        .route("/hooks/{user}", post(receive))
        .with_state(inbox.clone());
    tokio::spawn(async move {
        let _ = axum::serve(receiver, app).await;
    });
    println!(
        "[2/4] Sequin emulator at {}, webhook receiver at http://{receiver_addr}",
        emulator.api_url()
    );

    // 3. The worker.
    let mut config = Config::for_local(&url, &emulator.api_url(), &token, "app");
    config.metrics_addr = Some(if args.keep_running {
        "127.0.0.1:9610".parse().expect("valid address")
    } else {
        "127.0.0.1:0".parse().expect("valid address")
    });
    config.allow_private_urls = true; // the receiver is on localhost
    config.poll_interval = Duration::from_millis(500);
    let worker = crate::build(config).await?;
    let metrics = worker.metrics();
    let metrics_addr = worker.metrics_addr();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let worker_task = tokio::spawn(worker.run(async {
        let _ = stop_rx.await;
    }));

    // 4. Subscribe users with plain SQL, as any application would.
    let users: Vec<(i32, String)> = client
        .query("select id, name from users order by id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut request_ids = Vec::new();
    for (id, _) in &users {
        let hook = format!("http://{receiver_addr}/hooks/{id}");
        let row = client
            .query_one(
                "select userhooks.subscribe($1, $2)",
                &[&id.to_string(), &hook],
            )
            .await?;
        request_ids.push(row.get::<_, i64>(0));
    }
    println!(
        "[3/4] subscribed {} users with `select userhooks.subscribe(user_id, url)`",
        users.len()
    );

    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = client
            .query_one(
                "select count(*) from userhooks.subscription_requests
                  where id = any($1) and status in ('pending', 'running')",
                &[&request_ids],
            )
            .await?
            .get(0);
        if open == 0 {
            break;
        }
        if Instant::now() > deadline {
            return Err(DemoError::Check(
                "requests did not finish within 30 s".to_string(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    println!("[4/4] results:\n");
    println!(
        "  {:<6} {:<8} {:<11} {:<22} {:<38}",
        "user", "name", "status", "sink", "sequin sink id"
    );
    let rows = client
        .query(
            "select s.user_id, s.status, coalesce(s.sink_name, '-'), coalesce(s.sequin_sink_id::text, '-')
               from userhooks.webhook_subscriptions s order by s.id",
            &[],
        )
        .await?;
    let mut active = 0;
    for row in &rows {
        let user: String = row.get(0);
        let name = users
            .iter()
            .find(|(id, _)| id.to_string() == user)
            .map(|(_, n)| n.as_str())
            .unwrap_or("?");
        let status: String = row.get(1);
        if status == "active" {
            active += 1;
        }
        println!(
            "  {:<6} {:<8} {:<11} {:<22} {:<38}",
            user,
            name,
            status,
            row.get::<_, String>(2),
            row.get::<_, String>(3)
        );
    }
    let failed = client
        .query(
            "select id, last_error from userhooks.subscription_requests where status = 'failed'",
            &[],
        )
        .await?;
    for row in &failed {
        println!(
            "  request {} failed: {}",
            row.get::<_, i64>(0),
            row.get::<_, String>(1)
        );
    }
    println!(
        "\n  Sequin now holds {} endpoints and {} sinks; {} Sequin API calls were made.",
        emulator.endpoints().len(),
        emulator.sinks().len(),
        emulator.calls().len()
    );
    let succeeded: u64 = crate::metrics::ACTIONS
        .iter()
        .map(|a| {
            metrics
                .requests_total
                .with_label_values(&[a, "succeeded"])
                .get()
        })
        .sum();
    println!("  userhooks_requests_total{{outcome=\"succeeded\"}} = {succeeded}");
    if let Some(addr) = metrics_addr {
        println!("  metrics: http://{addr}/metrics");
    }

    let ok = active == users.len() && failed.is_empty();
    if args.keep_running && ok {
        println!("\nRunning until Ctrl-C (insert rows into userhooks.subscription_requests in `{name}` to try more).");
        let _ = tokio::signal::ctrl_c().await;
    }
    let _ = stop_tx.send(());
    let _ = worker_task.await;
    emulator.shutdown().await;
    if !ok {
        return Err(DemoError::Check(format!(
            "{active} of {} subscriptions are active",
            users.len()
        )));
    }
    println!(
        "\nDemo passed in {:.1}s: every user has their own endpoint and sink, filtered to their rows.",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
