//! `TestApp`: what a test of the worker stands on, as one value. A fresh migrated database,
//! the emulator over real HTTP and a worker running in this process, with methods named
//! after what the test does (`subscribe`, `finished`, `sinks`), so that a test reads as the
//! behaviour it specifies:
//!
//! ```ignore
//! let app = TestApp::spawn().await;
//! let id = app.subscribe("42", "https://hooks.example.com/u42", json!({})).await;
//! assert_eq!(app.finished(id).await.status, "succeeded");
//! assert_eq!(app.sinks().len(), 1);
//! app.stop().await;
//! ```
//!
//! The few variations tests need go through [`TestApp::builder`].

use std::time::Duration;

use sequin_emulator::{DeliveryConfig, EmulatorConfig, EmulatorHandle, Faults};
use serde_json::{json, Value};
use userhooks::webhook_url::Resolver;
use userhooks::Config;

use super::{
    config, count_calls, start_emulator_with, start_worker_with_resolver, RequestRow,
    RunningWorker, TestDb,
};

/// The id of a row of `userhooks.subscription_requests`.
pub type RequestId = i64;

/// How long [`TestApp::finished`] waits: generous, for a loaded machine. A test that means
/// a shorter bound says so with [`TestApp::finished_within`].
pub const FINISH_WITHIN: Duration = Duration::from_secs(20);

/// A row of `userhooks.webhook_subscriptions`.
#[derive(Clone, Debug, PartialEq)]
pub struct SubscriptionRow {
    pub id: i64,
    pub user_id: String,
    pub endpoint: String,
    pub status: String,
    pub sink_id: Option<String>,
    pub endpoint_id: Option<String>,
    pub sink_name: Option<String>,
    pub endpoint_name: Option<String>,
}

const SUBSCRIPTION_COLUMNS: &str = "id, user_id, endpoint, status, sequin_sink_id::text,
    sequin_endpoint_id::text, sink_name, endpoint_name";

impl SubscriptionRow {
    fn from_row(row: &tokio_postgres::Row) -> SubscriptionRow {
        SubscriptionRow {
            id: row.get(0),
            user_id: row.get(1),
            endpoint: row.get(2),
            status: row.get(3),
            sink_id: row.get(4),
            endpoint_id: row.get(5),
            sink_name: row.get(6),
            endpoint_name: row.get(7),
        }
    }
}

type ConfigTweak = Box<dyn FnOnce(&mut Config) + Send>;
type DeliveryTweak = Box<dyn FnOnce(&mut DeliveryConfig) + Send>;

/// Options of a [`TestApp`]; [`TestAppBuilder::spawn`] starts it.
pub struct TestAppBuilder {
    emulator: EmulatorConfig,
    delivery: Option<DeliveryTweak>,
    tweaks: Vec<ConfigTweak>,
    resolver: Resolver,
    setup_sql: Vec<String>,
    worker: bool,
}

impl TestAppBuilder {
    /// Change the emulator's settings (tables, backfill speed, token...). The defaults:
    /// the test token, database `app`, table `public.notifications`.
    pub fn emulator(mut self, change: impl FnOnce(&mut EmulatorConfig)) -> Self {
        change(&mut self.emulator);
        self
    }

    /// The emulator starts with these faults.
    pub fn faults(mut self, faults: Faults) -> Self {
        self.emulator.faults = faults;
        self
    }

    /// The emulator delivers webhooks from the test's database, which gets the example
    /// app's tables; `change` tunes delivery (it starts with short test intervals).
    pub fn delivery(mut self, change: impl FnOnce(&mut DeliveryConfig) + Send + 'static) -> Self {
        self.delivery = Some(Box::new(change));
        self
    }

    /// Change the worker's configuration (the defaults are [`super::config`]'s).
    pub fn config(mut self, change: impl FnOnce(&mut Config) + Send + 'static) -> Self {
        self.tweaks.push(Box::new(change));
        self
    }

    /// The worker serves `/metrics`, `/healthz` and `/readyz` on a free port
    /// (`app.worker().metrics_addr`).
    pub fn metrics(self) -> Self {
        self.config(|c| c.metrics_addr = Some("127.0.0.1:0".parse().unwrap()))
    }

    /// The worker looks webhook URL hosts up with `resolver` (DNS faults).
    pub fn resolver(mut self, resolver: Resolver) -> Self {
        self.resolver = resolver;
        self
    }

    /// Run `sql` on the fresh database before the emulator and the worker start (with
    /// [`TestAppBuilder::delivery`], after the example app's tables exist).
    pub fn setup_sql(mut self, sql: impl Into<String>) -> Self {
        self.setup_sql.push(sql.into());
        self
    }

    /// Start no worker: the test starts it later ([`TestApp::start_worker`]) or runs the
    /// binary instead.
    pub fn without_worker(mut self) -> Self {
        self.worker = false;
        self
    }

    pub async fn spawn(self) -> TestApp {
        let db = TestDb::new().await;
        let mut emulator_config = self.emulator;
        if let Some(change) = self.delivery {
            userhooks::db::create_example_app(&db.url)
                .await
                .expect("example app tables");
            let mut delivery = super::test_delivery(&db.url);
            change(&mut delivery);
            emulator_config.delivery = Some(delivery);
        }
        for sql in &self.setup_sql {
            db.client().await.batch_execute(sql).await.expect(sql);
        }
        let emulator = start_emulator_with(emulator_config).await;
        let mut worker_config = config(&db, &emulator);
        for tweak in self.tweaks {
            tweak(&mut worker_config);
        }
        let mut app = TestApp {
            worker: None,
            db,
            emulator,
            config: worker_config,
            resolver: self.resolver,
        };
        if self.worker {
            app.start_worker().await;
        }
        app
    }
}

/// A fresh database, the emulator and (unless built without one) a running worker.
pub struct TestApp {
    // Declared first: dropped (its task detached) before the database goes.
    worker: Option<RunningWorker>,
    pub db: TestDb,
    pub emulator: EmulatorHandle,
    /// What the worker runs with; [`TestApp::start_worker`] starts another with it.
    pub config: Config,
    resolver: Resolver,
}

impl TestApp {
    /// A database, the emulator and a worker with the test defaults.
    pub async fn spawn() -> TestApp {
        TestApp::builder().spawn().await
    }

    pub fn builder() -> TestAppBuilder {
        TestAppBuilder {
            emulator: super::emulator_config(),
            delivery: None,
            tweaks: Vec::new(),
            resolver: Resolver::default(),
            setup_sql: Vec::new(),
            worker: true,
        }
    }

    // ------------------------------------------------------------------ the worker

    /// The running worker (its metrics and metrics address).
    pub fn worker(&self) -> &RunningWorker {
        self.worker.as_ref().expect("the app's worker is running")
    }

    /// Start the app's worker with [`TestApp::config`].
    pub async fn start_worker(&mut self) {
        assert!(self.worker.is_none(), "the app's worker is already running");
        self.worker = Some(self.another_worker().await);
    }

    /// Stop the app's worker; the database and the emulator stay.
    pub async fn stop_worker(&mut self) {
        self.worker
            .take()
            .expect("the app's worker is running")
            .stop()
            .await;
    }

    /// A second worker on the same database and emulator, with its own worker id.
    pub async fn another_worker(&self) -> RunningWorker {
        let mut config = self.config.clone();
        config.worker_id = format!("test-{}", uuid::Uuid::new_v4().simple());
        start_worker_with_resolver(config, self.resolver.clone()).await
    }

    /// Stop the worker (asserting it did not panic), then drop the database and the
    /// emulator.
    pub async fn stop(mut self) {
        if self.worker.is_some() {
            self.stop_worker().await;
        }
    }

    // ------------------------------------------------------------------ requests

    /// Insert a request; returns its id.
    pub async fn request(
        &self,
        action: &str,
        user: &str,
        url: Option<&str>,
        options: Value,
    ) -> RequestId {
        self.db.insert(action, user, url, options).await
    }

    pub async fn subscribe(&self, user: &str, url: &str, options: Value) -> RequestId {
        self.request("subscribe", user, Some(url), options).await
    }

    /// Unsubscribe `user` from `url`, or from every URL when `None`.
    pub async fn unsubscribe(&self, user: &str, url: Option<&str>) -> RequestId {
        self.request("unsubscribe", user, url, json!({})).await
    }

    /// Wait until the request is terminal (succeeded, failed or cancelled).
    pub async fn finished(&self, id: RequestId) -> RequestRow {
        self.finished_within(id, FINISH_WITHIN).await
    }

    pub async fn finished_within(&self, id: RequestId, timeout: Duration) -> RequestRow {
        self.db.finished(id, timeout).await
    }

    /// Insert a request and wait until it is terminal.
    pub async fn run(
        &self,
        action: &str,
        user: &str,
        url: Option<&str>,
        options: Value,
    ) -> RequestRow {
        let id = self.request(action, user, url, options).await;
        self.finished(id).await
    }

    /// Subscribe, wait, expect success; the request's result.
    pub async fn subscribed(&self, user: &str, url: &str, options: Value) -> Value {
        let row = self.run("subscribe", user, Some(url), options).await;
        assert_eq!(row.status, "succeeded", "{row:?}");
        row.result.expect("result")
    }

    /// The request as it is now.
    pub async fn request_row(&self, id: RequestId) -> RequestRow {
        self.db.request(id).await
    }

    // ------------------------------------------------------------------ what it made

    /// Every row of `userhooks.webhook_subscriptions`, by id.
    pub async fn subscriptions(&self) -> Vec<SubscriptionRow> {
        self.db
            .client()
            .await
            .query(
                &format!(
                    "select {SUBSCRIPTION_COLUMNS} from userhooks.webhook_subscriptions order by id"
                ),
                &[],
            )
            .await
            .expect("subscriptions")
            .iter()
            .map(SubscriptionRow::from_row)
            .collect()
    }

    /// One subscription, by the id a request's result names (`result["subscription_id"]`).
    pub async fn subscription(&self, id: &Value) -> SubscriptionRow {
        let id = id.as_i64().expect("a subscription id");
        let row = self
            .db
            .client()
            .await
            .query_one(
                &format!(
                    "select {SUBSCRIPTION_COLUMNS} from userhooks.webhook_subscriptions where id = $1"
                ),
                &[&id],
            )
            .await
            .expect("subscription row");
        SubscriptionRow::from_row(&row)
    }

    /// The emulator's sinks.
    pub fn sinks(&self) -> Vec<Value> {
        self.emulator.sinks()
    }

    /// The emulator's HTTP endpoints.
    pub fn endpoints(&self) -> Vec<Value> {
        self.emulator.endpoints()
    }

    /// How many calls of `operation` (`create_sink`...) the emulator answered.
    pub fn calls(&self, operation: &str) -> usize {
        count_calls(&self.emulator, operation)
    }

    pub fn set_faults(&self, faults: Faults) {
        self.emulator.set_faults(faults);
    }

    /// A connection to the test's database.
    pub async fn client(&self) -> tokio_postgres::Client {
        self.db.client().await
    }

    /// The one `bigint` that `sql` selects.
    pub async fn scalar(&self, sql: &str) -> i64 {
        self.db.scalar_i64(sql).await
    }
}
