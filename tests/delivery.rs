//! Webhook delivery by the emulator: driven over its HTTP API, with a real Postgres source
//! database (the example app's tables) and a real HTTP receiver. No worker involved.

mod common;

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use common::{eventually, start_emulator_with, TestDb, SEQUIN_DB, TOKEN};
use serde_json::{json, Value};
use userhooks::emulator::{DeliveryConfig, EmulatorConfig, EmulatorHandle};

const FILTER_YAML: &str = r#"functions:
  - name: "userhooks-user-filter"
    type: "filter"
    code: |-
      def filter(action, record, changes, metadata) do
        to_string(record["user_id"]) == to_string(metadata.consumer.annotations["user_id"])
      end
"#;

#[derive(Clone, Debug)]
struct Received {
    user: String,
    headers: HeaderMap,
    body: Value,
}

#[derive(Clone, Default)]
struct Receiver {
    got: Arc<Mutex<Vec<Received>>>,
    /// Answer 500 to this many POSTs before acking.
    fail_next: Arc<AtomicU32>,
    attempts: Arc<AtomicU32>,
}

impl Receiver {
    fn for_user(&self, user: &str) -> Vec<Received> {
        self.got
            .lock()
            .unwrap()
            .iter()
            .filter(|r| r.user == user)
            .cloned()
            .collect()
    }
    fn total(&self) -> usize {
        self.got.lock().unwrap().len()
    }
}

async fn receive(
    State(rx): State<Receiver>,
    Path(user): Path<String>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> StatusCode {
    rx.attempts.fetch_add(1, Ordering::SeqCst);
    if rx
        .fail_next
        .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
        .is_ok()
    {
        return StatusCode::INTERNAL_SERVER_ERROR;
    }
    rx.got.lock().unwrap().push(Received {
        user,
        headers,
        body,
    });
    StatusCode::OK
}

struct Setup {
    db: TestDb,
    emulator: EmulatorHandle,
    receiver: Receiver,
    receiver_base: String,
    http: reqwest::Client,
}

impl Setup {
    async fn new() -> Setup {
        Setup::with_tables(&["public.notifications"]).await
    }

    async fn with_tables(tables: &[&str]) -> Setup {
        let db = TestDb::new().await;
        userhooks::demo::create_example_app(&db.url)
            .await
            .expect("example app tables");
        db.client()
            .await
            .batch_execute(
                "insert into users (name) values ('A'), ('B'), ('C');
                 create table public.no_id (k text primary key, v text)",
            )
            .await
            .unwrap();
        let mut delivery = DeliveryConfig::new(db.url.clone());
        delivery.poll_interval = Duration::from_millis(30);
        delivery.retry_initial = Duration::from_millis(50);
        delivery.retry_max = Duration::from_millis(200);
        delivery.request_timeout = Duration::from_secs(5);
        let emulator = start_emulator_with(EmulatorConfig {
            token: TOKEN.to_string(),
            database: SEQUIN_DB.to_string(),
            tables: tables.iter().map(|t| t.to_string()).collect(),
            delivery: Some(delivery),
            ..EmulatorConfig::default()
        })
        .await;
        let receiver = Receiver::default();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let receiver_base = format!("http://{}", listener.local_addr().unwrap());
        let app = Router::new()
            .route("/hooks/{user}", post(receive))
            .with_state(receiver.clone());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        let setup = Setup {
            db,
            emulator,
            receiver,
            receiver_base,
            http: reqwest::Client::new(),
        };
        let (status, body) = setup
            .api("POST", "/config/apply", Some(json!({"yaml": FILTER_YAML})))
            .await;
        assert_eq!(status, 200, "{body}");
        setup
    }

    async fn api(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.emulator.api_url(), path))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Accept", "application/json");
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = rb.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (status, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    /// An endpoint and a filtered sink for `user`, as the worker provisions them.
    async fn subscribe(&self, user: &str, batch: bool) -> String {
        let (status, body) = self
            .api(
                "POST",
                "/destinations/http_endpoints",
                Some(json!({
                    "name": format!("u-{user}-endpoint"),
                    "url": format!("{}/hooks", self.receiver_base),
                    "headers": {"X-Plain": "visible"},
                    "encrypted_headers": {"Authorization": format!("Bearer secret-of-{user}")},
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let sink = format!("u-{user}-sink");
        let (status, body) = self
            .api(
                "POST",
                "/sinks",
                Some(json!({
                    "name": sink,
                    "database": SEQUIN_DB,
                    "source": {"include_tables": ["public.notifications"]},
                    "actions": ["insert", "update", "delete"],
                    "destination": {"type": "webhook", "http_endpoint": format!("u-{user}-endpoint"),
                                    "http_endpoint_path": format!("/{user}"), "batch": batch},
                    "batch_size": 1,
                    "filter": "userhooks-user-filter",
                    "annotations": {"user_id": user},
                })),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        sink
    }

    async fn notify(&self, user: i32, message: &str) -> i32 {
        self.db
            .client()
            .await
            .query_one(
                "insert into notifications (user_id, message) values ($1, $2) returning id",
                &[&user, &message],
            )
            .await
            .unwrap()
            .get(0)
    }

    async fn wait_for(&self, user: &str, n: usize) {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while self.receiver.for_user(user).len() < n {
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for {n} webhooks for user {user}; runtime: {:#?}",
                self.emulator.runtime()
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }
}

#[tokio::test]
async fn insert_for_one_user_reaches_only_that_users_endpoint_in_sequin_shape() {
    let s = Setup::new().await;
    let before = s.notify(1, "written before the sink existed").await;
    let sink_a = s.subscribe("1", false).await;
    s.subscribe("2", false).await;
    let id = s.notify(1, "Hello from Sequin").await;
    s.wait_for("1", 1).await;
    // Give a wrong delivery time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        s.receiver.for_user("2").is_empty(),
        "user 2 received user 1's row: {:?}",
        s.receiver.for_user("2")
    );
    let got = s.receiver.for_user("1");
    assert_eq!(
        got.len(),
        1,
        "exactly one message, not the row from before: {got:?}"
    );
    assert_ne!(got[0].body["record"]["id"], json!(before));
    let m = &got[0].body;
    assert_eq!(m["action"], "insert");
    assert_eq!(m["changes"], Value::Null);
    assert_eq!(m["record"]["id"], json!(id));
    assert_eq!(m["record"]["user_id"], json!(1));
    assert_eq!(m["record"]["message"], "Hello from Sequin");
    assert!(m["record"]["created_at"].as_str().unwrap().ends_with('Z'));
    let md = &m["metadata"];
    assert_eq!(md["table_schema"], "public");
    assert_eq!(md["table_name"], "notifications");
    assert!(md["commit_timestamp"].as_str().unwrap().ends_with('Z'));
    assert!(md["idempotency_key"]
        .as_str()
        .is_some_and(|k| !k.is_empty()));
    assert_eq!(md["record_pks"], json!([id.to_string()]));
    assert_eq!(md["consumer"]["name"], sink_a);
    assert_eq!(md["consumer"]["annotations"], json!({"user_id": "1"}));
    assert!(md["consumer"]["id"].as_str().is_some());
    assert_eq!(md["database"]["name"], SEQUIN_DB);
    assert_eq!(md["database"]["database"], s.db.name);
    assert_eq!(md["database_name"], SEQUIN_DB);
    // Plain headers and the real (not obfuscated) encrypted headers.
    assert_eq!(got[0].headers["authorization"], "Bearer secret-of-1");
    assert_eq!(got[0].headers["x-plain"], "visible");
}

#[tokio::test]
async fn batch_sink_wraps_messages_in_data() {
    let s = Setup::new().await;
    s.subscribe("3", true).await;
    s.notify(3, "batched").await;
    s.wait_for("3", 1).await;
    let got = s.receiver.for_user("3");
    let data = got[0].body["data"].as_array().expect("{\"data\": [...]}");
    assert_eq!(data.len(), 1);
    assert_eq!(data[0]["record"]["message"], "batched");
    assert_eq!(data[0]["action"], "insert");
}

#[tokio::test]
async fn backfill_delivers_the_users_history_as_read_messages_and_completes() {
    let s = Setup::new().await;
    let mut mine = Vec::new();
    for i in 0..5 {
        mine.push(s.notify(1, &format!("old {i}")).await);
        s.notify(2, &format!("not yours {i}")).await;
    }
    let sink = s.subscribe("1", false).await;
    let (status, b) = s
        .api("POST", &format!("/sinks/{sink}/backfills"), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{b}");
    let id = b["id"].as_str().unwrap().to_string();
    let path = format!("/sinks/{sink}/backfills/{id}");
    let mut last = Value::Null;
    for _ in 0..200 {
        let (_, b) = s.api("GET", &path, None).await;
        last = b;
        if last["state"] == "completed" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(last["state"], "completed", "{last}");
    assert_eq!(last["rows_initial_count"], 5, "{last}");
    assert_eq!(last["rows_processed_count"], 5, "{last}");
    assert_eq!(last["rows_ingested_count"], 5, "{last}");
    let got = s.receiver.for_user("1");
    let ids: Vec<i64> = got
        .iter()
        .map(|r| {
            assert_eq!(r.body["action"], "read");
            assert_eq!(r.body["record"]["user_id"], json!(1));
            r.body["record"]["id"].as_i64().unwrap()
        })
        .collect();
    assert_eq!(
        ids,
        mine.iter().map(|&i| i64::from(i)).collect::<Vec<_>>(),
        "user 1's history, in order, and nothing of user 2"
    );
}

#[tokio::test]
async fn paused_sink_buffers_and_delivers_on_resume() {
    let s = Setup::new().await;
    let sink = s.subscribe("1", false).await;
    let (status, _) = s
        .api(
            "PATCH",
            &format!("/sinks/{sink}"),
            Some(json!({"status": "paused"})),
        )
        .await;
    assert_eq!(status, 200);
    let a = s.notify(1, "while paused 1").await;
    let b = s.notify(1, "while paused 2").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(s.receiver.total(), 0, "a paused sink delivers nothing");
    let (status, _) = s
        .api(
            "PATCH",
            &format!("/sinks/{sink}"),
            Some(json!({"status": "active"})),
        )
        .await;
    assert_eq!(status, 200);
    s.wait_for("1", 2).await;
    let ids: Vec<Value> = s
        .receiver
        .for_user("1")
        .iter()
        .map(|r| r.body["record"]["id"].clone())
        .collect();
    assert_eq!(ids, vec![json!(a), json!(b)]);
}

#[tokio::test]
async fn deleted_sink_stops_delivery() {
    let s = Setup::new().await;
    let sink = s.subscribe("1", false).await;
    s.notify(1, "first").await;
    s.wait_for("1", 1).await;
    let (status, body) = s.api("DELETE", &format!("/sinks/{sink}"), None).await;
    assert_eq!(status, 200, "{body}");
    s.notify(1, "after delete").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        s.receiver.for_user("1").len(),
        1,
        "nothing after the delete"
    );
}

#[tokio::test]
async fn failed_posts_are_retried_until_acked_with_the_same_idempotency_key() {
    let s = Setup::new().await;
    s.subscribe("1", false).await;
    s.receiver.fail_next.store(2, Ordering::SeqCst);
    s.notify(1, "flaky").await;
    s.wait_for("1", 1).await;
    assert_eq!(s.receiver.attempts.load(Ordering::SeqCst), 3);
    assert_eq!(s.receiver.for_user("1").len(), 1);
    // The receiver records the message before the emulator has read its 200: the counts
    // catch up a moment later.
    common::eventually(
        Duration::from_secs(5),
        "delivery counts 1 delivered, 2 failed",
        || async { s.emulator.delivery_counts() == (1, 2) },
    )
    .await;
    assert_eq!(s.emulator.delivery_counts(), (1, 2));
}

#[tokio::test]
async fn sink_without_filter_gets_every_row_and_a_table_without_id_does_not_stop_it() {
    let s = Setup::with_tables(&["public.notifications", "public.no_id"]).await;
    let (status, body) = s
        .api(
            "POST",
            "/destinations/http_endpoints",
            Some(json!({"name": "all-endpoint", "url": format!("{}/hooks/all", s.receiver_base)})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    // No source (every table, including one delivery cannot follow) and no filter.
    let (status, body) = s
        .api(
            "POST",
            "/sinks",
            Some(json!({"name": "all-sink", "database": SEQUIN_DB,
                        "destination": {"type": "webhook", "http_endpoint": "all-endpoint", "batch": false}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    s.notify(1, "for one").await;
    s.notify(2, "for two").await;
    s.wait_for("all", 2).await;
    let users: Vec<Value> = s
        .receiver
        .for_user("all")
        .iter()
        .map(|r| r.body["record"]["user_id"].clone())
        .collect();
    assert_eq!(users, vec![json!(1), json!(2)]);
}
