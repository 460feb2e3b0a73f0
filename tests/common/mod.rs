//! Shared test harness: a fresh database per test, the emulator over real HTTP, a worker
//! with a shutdown handle.
#![allow(dead_code)]

use std::future::Future;
use std::time::{Duration, Instant};

use sequin_emulator::{self as emulator, EmulatorConfig, EmulatorHandle};
use serde_json::Value;
use tokio::sync::oneshot;
use userhooks::Config;

pub const TOKEN: &str = "test-token-7f3a";
pub const SEQUIN_DB: &str = "app";

pub fn server_url() -> String {
    std::env::var("USERHOOKS_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_string())
}

fn with_database(url: &str, name: &str) -> String {
    let base = url.rsplit_once('/').map(|(b, _)| b).unwrap_or(url);
    format!("{base}/{name}")
}

/// A database of its own, migrated, dropped when the test ends.
pub struct TestDb {
    pub name: String,
    pub url: String,
}

impl TestDb {
    pub async fn new() -> TestDb {
        let db = TestDb::unmigrated().await;
        userhooks::db::migrate(&db.url).await.expect("migrate");
        db
    }

    /// An empty database of the test's own (no schema), dropped like any other.
    pub async fn unmigrated() -> TestDb {
        let name = format!("uh_test_{}", uuid::Uuid::new_v4().simple());
        let admin = userhooks::db::connect(&server_url(), "userhooks-tests")
            .await
            .expect("Postgres at 127.0.0.1:5432 (start it with pg_ctlcluster)");
        admin
            .batch_execute(&format!("create database {name}"))
            .await
            .expect("create test database");
        let url = with_database(&server_url(), &name);
        TestDb { name, url }
    }

    pub async fn client(&self) -> tokio_postgres::Client {
        userhooks::db::connect(&self.url, "userhooks-tests")
            .await
            .expect("connect to test database")
    }

    /// Insert a request; returns its id.
    pub async fn insert(&self, action: &str, user: &str, url: Option<&str>, options: Value) -> i64 {
        self.client()
            .await
            .query_one(
                "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
                 values ($1, $2, $3, $4) returning id",
                &[&action, &user, &url, &options],
            )
            .await
            .expect("insert request")
            .get(0)
    }

    pub async fn request(&self, id: i64) -> RequestRow {
        let row = self
            .client()
            .await
            .query_one(
                "select status, attempts, last_error, result, locked_by
                   from userhooks.subscription_requests where id = $1",
                &[&id],
            )
            .await
            .expect("request row");
        RequestRow {
            status: row.get(0),
            attempts: row.get(1),
            last_error: row.get(2),
            result: row.get(3),
            locked_by: row.get(4),
        }
    }

    /// Wait until a request is terminal (succeeded/failed/cancelled).
    pub async fn finished(&self, id: i64, timeout: Duration) -> RequestRow {
        let deadline = Instant::now() + timeout;
        loop {
            let row = self.request(id).await;
            if matches!(row.status.as_str(), "succeeded" | "failed" | "cancelled") {
                return row;
            }
            assert!(
                Instant::now() < deadline,
                "request {id} still {} after {timeout:?} (attempts {}, last_error {:?})",
                row.status,
                row.attempts,
                row.last_error
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        self.client()
            .await
            .query_one(sql, &[])
            .await
            .expect(sql)
            .get(0)
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        admin_sql_blocking(format!(
            "drop database if exists {} with (force)",
            self.name
        ));
    }
}

/// Run one statement on the server's admin database from outside async context (a `Drop`):
/// a private runtime on a plain thread. Failures are ignored (best-effort cleanup).
pub fn admin_sql_blocking(sql: String) {
    let _ = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async move {
            if let Ok(admin) = userhooks::db::connect(&server_url(), "userhooks-tests").await {
                let _ = admin.batch_execute(&sql).await;
            }
        });
    })
    .join();
}

#[derive(Debug)]
pub struct RequestRow {
    pub status: String,
    pub attempts: i32,
    pub last_error: Option<String>,
    pub result: Option<Value>,
    pub locked_by: Option<String>,
}

/// The emulated account the tests use: [`TOKEN`], [`SEQUIN_DB`], `public.notifications`.
pub fn emulator_config() -> EmulatorConfig {
    EmulatorConfig {
        token: TOKEN.to_string(),
        database: SEQUIN_DB.to_string(),
        tables: vec!["public.notifications".to_string()],
        ..EmulatorConfig::default()
    }
}

/// Webhook delivery from `database_url`, with test-sized polling and retry delays.
pub fn test_delivery(database_url: &str) -> emulator::DeliveryConfig {
    let mut delivery = emulator::DeliveryConfig::new(database_url);
    delivery.poll_interval = Duration::from_millis(30);
    delivery.retry_initial = Duration::from_millis(50);
    delivery.retry_max = Duration::from_millis(200);
    delivery.request_timeout = Duration::from_secs(5);
    delivery
}

pub async fn start_emulator() -> EmulatorHandle {
    start_emulator_with(emulator_config()).await
}

pub async fn start_emulator_with(config: EmulatorConfig) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind emulator");
    emulator::start(config, listener).await
}

pub fn config(db: &TestDb, emulator: &EmulatorHandle) -> Config {
    let mut config = Config::for_local(&db.url, &emulator.api_url(), TOKEN, SEQUIN_DB);
    config.concurrency = 8;
    // Tests that measure pacing set their own rate.
    config.sequin_max_writes_per_second = userhooks::sequin::WriteRate::Unlimited;
    config.poll_interval = Duration::from_millis(200);
    config.lease = Duration::from_secs(30);
    config.http_timeout = Duration::from_secs(2);
    config.shutdown_grace = Duration::from_secs(5);
    config.worker_id = format!("test-{}", uuid::Uuid::new_v4().simple());
    config
}

/// A worker running in this process, stopped by `stop`.
pub struct RunningWorker {
    stop: Option<oneshot::Sender<()>>,
    handle: tokio::task::JoinHandle<()>,
    pub metrics: std::sync::Arc<userhooks::metrics::Metrics>,
    pub metrics_addr: Option<std::net::SocketAddr>,
}

impl RunningWorker {
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        tokio::time::timeout(Duration::from_secs(30), &mut self.handle)
            .await
            .expect("worker stops within 30s")
            .expect("worker task did not panic");
    }
}

pub async fn start_worker(config: Config) -> RunningWorker {
    start_worker_with_resolver(config, userhooks::webhook_url::Resolver::default()).await
}

/// [`start_worker`] with webhook URL hosts looked up by `resolver` (DNS faults).
pub async fn start_worker_with_resolver(
    config: Config,
    resolver: userhooks::webhook_url::Resolver,
) -> RunningWorker {
    let app = userhooks::worker::build_with_resolver(config, resolver)
        .await
        .expect("build worker");
    let metrics = app.metrics();
    let metrics_addr = app.metrics_addr();
    let (tx, rx) = oneshot::channel::<()>();
    let handle = tokio::spawn(async move {
        app.run(async {
            let _ = rx.await;
        })
        .await
        .expect("worker run");
    });
    RunningWorker {
        stop: Some(tx),
        handle,
        metrics,
        metrics_addr,
    }
}

/// Poll `check` until it returns true or the timeout passes.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !check().await {
        assert!(
            Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// Calls recorded by the emulator for one operation.
pub fn count_calls(emulator: &EmulatorHandle, operation: &str) -> usize {
    emulator
        .calls()
        .iter()
        .filter(|c| c.operation == operation)
        .count()
}

pub mod app;
#[allow(unused_imports)] // not every test file uses the harness
pub use app::*;

// Helpers of the fault suite (tests/faults.rs).
pub mod binary;
pub mod certs;
pub mod cluster;
pub mod invariants;
pub mod proxy;

/// LISTEN on `channel` over a connection of the test's own; yields (channel, payload).
pub async fn listen(
    db: &TestDb,
    channel: &str,
) -> tokio::sync::mpsc::UnboundedReceiver<(String, String)> {
    use futures_util::StreamExt;
    let config: tokio_postgres::Config = db.url.parse().expect("database url");
    let (client, mut connection) = config
        .connect(tokio_postgres::NoTls)
        .await
        .expect("connect for LISTEN");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut stream = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = stream.next().await {
            if let tokio_postgres::AsyncMessage::Notification(n) = message {
                let _ = tx.send((n.channel().to_string(), n.payload().to_string()));
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {channel}"))
        .await
        .expect("LISTEN");
    // The connection lives as long as the test: keep its client.
    std::mem::forget(client);
    rx
}

/// A request's stored `options`, read through `client` (whatever role it connects as).
pub async fn request_options(client: &tokio_postgres::Client, id: i64) -> Value {
    client
        .query_one(
            "select options from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0)
}
