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
use common::{start_emulator_with, TestApp, TestDb, SEQUIN_DB, TOKEN};
use sequin_emulator::{EmulatorConfig, EmulatorHandle, RuntimeReport};
use serde_json::{json, Value};

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
        Setup::with(tables, EmulatorConfig::default()).await
    }

    /// Delivery from a fresh example app on `tables`; `base` gives the other settings.
    async fn with(tables: &[&str], base: EmulatorConfig) -> Setup {
        let tables: Vec<String> = tables.iter().map(|t| t.to_string()).collect();
        let TestApp { db, emulator, .. } = TestApp::builder()
            .emulator(move |e| {
                *e = EmulatorConfig {
                    token: TOKEN.to_string(),
                    database: SEQUIN_DB.to_string(),
                    tables,
                    ..base
                }
            })
            .delivery(|_| {})
            .setup_sql(
                "insert into users (name) values ('A'), ('B'), ('C');
                 create table public.no_id (k text primary key, v text)",
            )
            .without_worker()
            .spawn()
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

    async fn sql(&self, sql: &str) {
        self.db.client().await.batch_execute(sql).await.expect(sql);
    }

    async fn patch_sink(&self, sink: &str, body: Value) {
        let (status, body) = self
            .api("PATCH", &format!("/sinks/{sink}"), Some(body))
            .await;
        assert_eq!(status, 200, "{body}");
    }

    async fn delete_sink(&self, sink: &str) {
        let (status, body) = self.api("DELETE", &format!("/sinks/{sink}"), None).await;
        assert_eq!(status, 200, "{body}");
    }

    /// Wait until the emulator's runtime satisfies `check`; returns that report.
    async fn until(&self, what: &str, check: impl Fn(&RuntimeReport) -> bool) -> RuntimeReport {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let report = self.emulator.runtime();
            if check(&report) {
                return report;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "timed out waiting for: {what}; runtime: {report:#?}"
            );
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    }

    /// An endpoint at `/hooks/{name}` and a sink without a filter: it gets every change.
    async fn subscribe_all(&self, name: &str) -> String {
        let (status, body) = self
            .api(
                "POST",
                "/destinations/http_endpoints",
                Some(json!({"name": format!("{name}-endpoint"),
                            "url": format!("{}/hooks/{name}", self.receiver_base)})),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        let sink = format!("{name}-sink");
        let (status, body) = self
            .api(
                "POST",
                "/sinks",
                Some(json!({
                    "name": sink,
                    "database": SEQUIN_DB,
                    "source": {"include_tables": ["public.notifications"]},
                    "actions": ["insert", "update", "delete"],
                    "destination": {"type": "webhook", "http_endpoint": format!("{name}-endpoint"),
                                    "batch": false},
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

/// One request through the outbox, for user "1", to its end.
async fn request(s: &Setup, action: &str, url: Option<&str>, options: Value) -> common::RequestRow {
    let id = s.db.insert(action, "1", url, options).await;
    let row = s.db.finished(id, Duration::from_secs(15)).await;
    assert_eq!(row.status, "succeeded", "{action}: {row:?}");
    row
}

/// Messages user 1 received: (action, message).
fn received(s: &Setup) -> Vec<(String, String)> {
    s.receiver
        .for_user("1")
        .iter()
        .map(|r| {
            (
                r.body["action"].as_str().unwrap_or("").to_string(),
                r.body["record"]["message"]
                    .as_str()
                    .unwrap_or("")
                    .to_string(),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscription_misses_changes_and_resume_with_replay_delivers_them() {
    let s = Setup::new().await;
    let worker = common::start_worker(common::config(&s.db, &s.emulator)).await;
    let url = format!("{}/hooks/1", s.receiver_base);
    request(&s, "subscribe", Some(&url), json!({})).await;
    s.notify(1, "before").await;
    s.wait_for("1", 1).await;

    request(&s, "pause", None, json!({})).await;
    s.notify(1, "while paused").await;
    request(&s, "resume", None, json!({})).await;
    s.notify(1, "after").await;
    s.wait_for("1", 2).await;
    // Give a late delivery of the paused-time row time to show up.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let insert = |m: &str| ("insert".to_string(), m.to_string());
    assert_eq!(received(&s), [insert("before"), insert("after")]);
    // The resumed sink is the one the row points at.
    let sink_id: Option<String> =
        s.db.client()
            .await
            .query_one(
                "select sequin_sink_id::text from userhooks.webhook_subscriptions",
                &[],
            )
            .await
            .unwrap()
            .get(0);
    let last = s.receiver.for_user("1").pop().unwrap();
    assert_eq!(
        last.body["metadata"]["consumer"]["id"].as_str(),
        sink_id.as_deref()
    );

    request(&s, "pause", None, json!({})).await;
    s.notify(1, "while paused again").await;
    let row = request(&s, "resume", None, json!({"replay": true})).await;
    assert!(row.result.unwrap()["backfill_id"].is_i64());
    // The replay reads the user's rows as they are now: all four, the missed one included.
    s.wait_for("1", 6).await;
    let read = |m: &str| ("read".to_string(), m.to_string());
    assert_eq!(
        received(&s)[2..],
        [
            read("before"),
            read("while paused"),
            read("after"),
            read("while paused again")
        ]
    );
    worker.stop().await;
}

// --- Sequin's runtime (crates/sequin-emulator/src/runtime.rs) --------------------------------------------

fn actions(got: &[Received]) -> Vec<String> {
    got.iter()
        .map(|r| r.body["action"].as_str().unwrap_or("").to_string())
        .collect()
}

#[tokio::test]
async fn updates_and_deletes_arrive_as_sequin_decodes_them_and_deletes_need_replica_identity_full()
{
    let s = Setup::new().await;
    s.sql("alter table notifications replica identity default")
        .await;
    let sink = s.subscribe("1", false).await;
    let audit = s.subscribe_all("audit").await;
    let id = s.notify(1, "first").await;
    s.sql(&format!(
        "update notifications set message = 'edited' where id = {id}"
    ))
    .await;
    s.sql(&format!("delete from notifications where id = {id}"))
        .await;
    // All three reach the user's sink; its filter drops the delete, whose user_id is null.
    s.until("user 1's sink: 3 ingested, 2 delivered, 1 filtered", |r| {
        r.sink(&sink)
            .is_some_and(|k| k.ingested == 3 && k.delivered == 2 && k.filtered == 1)
    })
    .await;
    s.wait_for("audit", 3).await;
    let got = s.receiver.for_user("1");
    assert_eq!(actions(&got), ["insert", "update"]);
    assert_eq!(got[1].body["record"]["message"], "edited");
    assert_eq!(
        got[1].body["changes"],
        json!({}),
        "no old tuple without FULL"
    );
    let delete = &s.receiver.for_user("audit")[2].body;
    assert_eq!(delete["action"], "delete");
    assert_eq!(
        delete["record"],
        json!({"id": id, "user_id": null, "message": null, "created_at": null}),
        "only the key of the old row"
    );
    assert_eq!(delete["changes"], Value::Null);
    assert_eq!(delete["metadata"]["record_pks"], json!([id.to_string()]));
    assert_eq!(s.emulator.runtime().sink(&audit).unwrap().filtered, 0);

    // With REPLICA IDENTITY FULL the old row is whole: the user hears of the delete.
    s.sql("alter table notifications replica identity full")
        .await;
    let id = s.notify(1, "second").await;
    s.sql(&format!(
        "update notifications set message = 'edited again' where id = {id}"
    ))
    .await;
    s.sql(&format!("delete from notifications where id = {id}"))
        .await;
    s.wait_for("1", 5).await;
    let got = s.receiver.for_user("1");
    assert_eq!(
        actions(&got),
        ["insert", "update", "insert", "update", "delete"]
    );
    assert_eq!(got[3].body["changes"], json!({"message": "second"}));
    assert_eq!(got[4].body["record"]["user_id"], json!(1));
    assert_eq!(got[4].body["record"]["message"], "edited again");
    let r = s.emulator.runtime();
    assert_eq!(r.sink(&sink).unwrap().filtered, 1, "{r:#?}");
}

#[tokio::test]
async fn every_change_of_its_tables_is_ingested_by_every_routed_sink_before_the_filter() {
    let s = Setup::new().await;
    let sinks = [
        s.subscribe("1", false).await,
        s.subscribe("2", false).await,
        s.subscribe("3", false).await,
    ];
    for i in 0..5 {
        s.notify(1, &format!("for one {i}")).await;
    }
    let r = s
        .until("every sink ingested 5 and acted on them", |r| {
            sinks.iter().all(|n| {
                r.sink(n)
                    .is_some_and(|k| k.ingested == 5 && k.delivered + k.filtered == 5)
            })
        })
        .await;
    let one = r.sink(&sinks[0]).unwrap();
    assert_eq!((one.delivered, one.filtered), (5, 0));
    for other in &sinks[1..] {
        let k = r.sink(other).unwrap();
        assert_eq!((k.delivered, k.filtered), (0, 5), "{k:?}");
    }
    assert_eq!(s.receiver.for_user("1").len(), 5);
    assert_eq!(s.receiver.total(), 5);
}

/// A paused sink's store fills with everyone's changes; at the limit the slot stalls.
async fn stalled_by_a_paused_sink() -> (Setup, String, String, i32) {
    let s = Setup::with(
        &["public.notifications"],
        EmulatorConfig {
            store_max_messages: 20,
            ..EmulatorConfig::default()
        },
    )
    .await;
    let active = s.subscribe("1", false).await;
    let paused = s.subscribe("2", false).await;
    s.patch_sink(&paused, json!({"status": "paused"})).await;
    for i in 0..20 {
        s.notify(3, &format!("nobody's {i}")).await;
    }
    s.until(
        "the paused sink holds 20, the active one filtered 20",
        |r| {
            r.sink(&paused)
                .is_some_and(|k| k.ingested == 20 && k.buffered == 20)
                && r.sink(&active)
                    .is_some_and(|k| k.ingested == 20 && k.filtered == 20 && k.buffered == 0)
        },
    )
    .await;
    let mine = s.notify(1, "for user 1").await;
    let r = s.until("the slot stalls", |r| r.stalled).await;
    let reason = r.stall_reason.clone().unwrap_or_default();
    assert!(reason.contains(&paused), "{reason}");
    assert_eq!(
        r.sink(&active).unwrap().ingested,
        20,
        "the active sink gets nothing new: {r:#?}"
    );
    assert!(s.receiver.for_user("1").is_empty());
    (s, active, paused, mine)
}

#[tokio::test]
async fn a_paused_sink_past_its_store_limit_stalls_every_sink_until_it_is_deleted() {
    let (s, active, paused, mine) = stalled_by_a_paused_sink().await;
    s.delete_sink(&paused).await;
    s.wait_for("1", 1).await;
    assert_eq!(
        s.receiver.for_user("1")[0].body["record"]["id"],
        json!(mine)
    );
    let r = s.emulator.runtime();
    assert!(!r.stalled, "{r:#?}");
    assert!(r.sink(&paused).is_none(), "its buffer went with it");
    assert_eq!(r.sink(&active).unwrap().ingested, 21);
    assert_eq!(
        r.replication_restarts, 1,
        "the pause; the delete restarts nothing"
    );
}

#[tokio::test]
async fn a_stalled_slot_resumes_when_the_paused_sink_resumes_and_drains() {
    let (s, active, paused, mine) = stalled_by_a_paused_sink().await;
    s.patch_sink(&paused, json!({"status": "active"})).await;
    s.wait_for("1", 1).await;
    assert_eq!(
        s.receiver.for_user("1")[0].body["record"]["id"],
        json!(mine)
    );
    let r = s
        .until(
            "the resumed sink filtered its backlog and the new change",
            |r| {
                r.sink(&paused)
                    .is_some_and(|k| k.ingested == 21 && k.filtered == 21 && k.buffered == 0)
            },
        )
        .await;
    assert!(!r.stalled);
    assert_eq!(r.sink(&active).unwrap().delivered, 1);
    assert_eq!(r.replication_restarts, 2, "pause and resume: {r:#?}");
    assert!(s.receiver.for_user("2").is_empty());
}

#[tokio::test]
async fn sink_updates_restart_replication_while_creates_and_deletes_only_refresh_routing() {
    let s = Setup::new().await;
    let a = s.subscribe("1", false).await;
    let b = s.subscribe("2", false).await;
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 0);
    assert_eq!(r.routing_context, [a.clone(), b.clone()]);

    // Any update of a sink that is not disabled, even one that changes nothing.
    s.patch_sink(&a, json!({"annotations": {"user_id": "1"}}))
        .await;
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 1);
    let last = r.recent_restarts.last().unwrap();
    assert_eq!(last.cause, "sink_update");
    assert_eq!(last.sinks_affected, 2);
    assert_eq!(last.sinks, [a.clone(), b.clone()]);
    assert!(last.reason.contains(&a), "{}", last.reason);
    s.patch_sink(&a, json!({"status": "paused"})).await;
    s.patch_sink(&a, json!({"status": "active"})).await;
    assert_eq!(s.emulator.runtime().replication_restarts, 3);

    // Disabling restarts nothing and leaves the sink routed until the next refresh.
    s.patch_sink(&b, json!({"status": "disabled"})).await;
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 3);
    assert_eq!(r.routing_context, [a.clone(), b.clone()]);
    let c = s.subscribe("3", false).await;
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 3);
    assert_eq!(r.routing_context, [a.clone(), c.clone()]);
    s.delete_sink(&c).await;
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 3);
    assert_eq!(r.routing_context, vec![a.clone()]);

    // An endpoint update restarts its sinks' stores, and with them the slot.
    let (status, body) = s
        .api(
            "PATCH",
            "/destinations/http_endpoints/u-1-endpoint",
            Some(json!({"headers": {"X-Plain": "changed"}})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 4);
    assert_eq!(
        r.recent_restarts.last().unwrap().cause,
        "http_endpoint_update"
    );

    // Applying the filter every sink uses, unchanged, updates it all the same; a plan does not.
    let (status, body) = s
        .api("POST", "/config/plan", Some(json!({"yaml": FILTER_YAML})))
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(s.emulator.runtime().replication_restarts, 4);
    let (status, body) = s
        .api("POST", "/config/apply", Some(json!({"yaml": FILTER_YAML})))
        .await;
    assert_eq!(status, 200, "{body}");
    let r = s.emulator.runtime();
    assert_eq!(r.replication_restarts, 5);
    assert_eq!(r.recent_restarts.last().unwrap().cause, "function_update");

    // The control route shows the same.
    let url = format!("http://{}/_emulator/runtime", s.emulator.addr());
    let shown: RuntimeReport = s.http.get(url).send().await.unwrap().json().await.unwrap();
    assert_eq!(shown.replication_restarts, 5);
    assert_eq!(shown.routing_context, vec![a.clone()]);
    assert_eq!(shown.recent_restarts.len(), 5);
}

#[tokio::test]
async fn a_disabled_sink_keeps_receiving_until_the_routing_context_is_refreshed() {
    let s = Setup::new().await;
    let one = s.subscribe("1", false).await;
    s.patch_sink(&one, json!({"status": "disabled"})).await;
    // Sequin neither refreshes routing nor restarts the sink's store, which still runs with
    // the status it started with.
    s.notify(1, "after disabling").await;
    s.wait_for("1", 1).await;
    // A create refreshes the context: the disabled sink leaves it.
    let two = s.subscribe_all("witness").await;
    assert_eq!(s.emulator.runtime().routing_context, vec![two.clone()]);
    s.notify(1, "after the refresh").await;
    let r = s
        .until("the witness ingested the change", |r| {
            r.sink(&two).is_some_and(|k| k.ingested == 1)
        })
        .await;
    assert_eq!(r.sink(&one).unwrap().ingested, 1, "{r:#?}");
    assert_eq!(r.replication_restarts, 0);
    assert_eq!(s.receiver.for_user("1").len(), 1);
}

#[tokio::test]
async fn changes_committed_out_of_id_order_are_each_delivered_once() {
    let s = Setup::new().await;
    let all = s.subscribe_all("all").await;
    let mut writers = Vec::new();
    for w in 0..6 {
        let url = s.db.url.clone();
        writers.push(tokio::spawn(async move {
            let mut client = userhooks::db::connect(&url, "userhooks-tests")
                .await
                .unwrap();
            let mut ids = Vec::new();
            for i in 0..15 {
                let tx = client.transaction().await.unwrap();
                let id: i32 = tx
                    .query_one(
                        "insert into notifications (user_id, message) values (1, $1) returning id",
                        &[&format!("writer {w} row {i}")],
                    )
                    .await
                    .unwrap()
                    .get(0);
                // Hold some transactions open so later ids commit first.
                if (i + w) % 3 == 0 {
                    tx.batch_execute("select pg_sleep(0.03)").await.unwrap();
                }
                tx.commit().await.unwrap();
                ids.push(i64::from(id));
            }
            ids
        }));
    }
    let mut written = Vec::new();
    for w in writers {
        written.extend(w.await.unwrap());
    }
    written.sort();
    let n = written.len() as u64;
    s.until("every row delivered", |r| {
        r.sink(&all).is_some_and(|k| k.delivered >= n)
    })
    .await;
    let mut got: Vec<i64> = s
        .receiver
        .for_user("all")
        .iter()
        .map(|r| r.body["record"]["id"].as_i64().unwrap())
        .collect();
    got.sort();
    assert_eq!(got, written, "each row once");
}

#[tokio::test]
async fn two_emulators_on_one_database_share_the_change_log_and_each_read_it_all() {
    let s = Setup::new().await;
    let mine = s.subscribe_all("first").await;
    // A second emulator on the same source database installs the same log concurrently.
    let other = start_emulator_with(EmulatorConfig {
        delivery: Some(common::test_delivery(&s.db.url)),
        ..common::emulator_config()
    })
    .await;
    let call = |path: &str, body: Value| {
        s.http
            .post(format!("{}{path}", other.api_url()))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
    };
    let resp = call(
        "/destinations/http_endpoints",
        json!({"name": "second-endpoint", "url": format!("{}/hooks/second", s.receiver_base)}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    let resp = call(
        "/sinks",
        json!({"name": "second-sink", "database": SEQUIN_DB,
               "source": {"include_tables": ["public.notifications"]},
               "destination": {"type": "webhook", "http_endpoint": "second-endpoint", "batch": false}}),
    )
    .await
    .unwrap();
    assert_eq!(resp.status(), 200);
    for i in 0..3 {
        s.notify(2, &format!("shared {i}")).await;
    }
    s.wait_for("first", 3).await;
    s.wait_for("second", 3).await;
    assert_eq!(s.emulator.runtime().sink(&mine).unwrap().ingested, 3);
    assert_eq!(other.runtime().sink("second-sink").unwrap().ingested, 3);
    let count =
        s.db.scalar_i64("select count(*) from sequin_emulator.changes")
            .await;
    assert_eq!(count, 3, "one log, each change once");
    other.shutdown().await;
}

/// The worker's side of the stall above: a user's pause through the outbox leaves no sink
/// in Sequin's `paused` status, so however much the table changes while that user is
/// paused, every other user keeps receiving, and pausing and resuming restart nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pausing_a_user_through_the_worker_never_stalls_the_other_users() {
    let s = Setup::with(
        &["public.notifications"],
        EmulatorConfig {
            store_max_messages: 20,
            ..EmulatorConfig::default()
        },
    )
    .await;
    let worker = common::start_worker(common::config(&s.db, &s.emulator)).await;
    for user in ["1", "2"] {
        let url = format!("{}/hooks/{user}", s.receiver_base);
        let id = s.db.insert("subscribe", user, Some(&url), json!({})).await;
        let row = s.db.finished(id, Duration::from_secs(15)).await;
        assert_eq!(row.status, "succeeded", "{row:?}");
    }
    let id = s.db.insert("pause", "2", None, json!({})).await;
    assert_eq!(
        s.db.finished(id, Duration::from_secs(15)).await.status,
        "succeeded"
    );
    let restarts_before = s.emulator.runtime().replication_restarts;

    // Twice the store limit of changes while user 2 is paused.
    for i in 0..40 {
        s.notify(if i % 2 == 0 { 1 } else { 2 }, &format!("change {i}"))
            .await;
    }
    s.wait_for("1", 20).await;
    let r = s.emulator.runtime();
    assert!(!r.stalled, "{r:#?}");
    assert!(
        s.emulator
            .sinks()
            .iter()
            .all(|sink| sink["status"] != json!("paused")),
        "no sink is left paused in Sequin: {:#?}",
        s.emulator.sinks()
    );
    assert!(s.receiver.for_user("2").is_empty(), "user 2 is paused");

    let id = s.db.insert("resume", "2", None, json!({})).await;
    assert_eq!(
        s.db.finished(id, Duration::from_secs(15)).await.status,
        "succeeded"
    );
    s.notify(2, "after resume").await;
    s.wait_for("2", 1).await;
    assert_eq!(
        s.emulator.runtime().replication_restarts,
        restarts_before,
        "pause and resume only create and delete sinks"
    );
    worker.stop().await;
}
