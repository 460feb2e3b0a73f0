//! `userhooks serve`: the tutorial's HTTP API over the outbox. The seed README's curl
//! commands, sent as HTTP requests, against a real worker, the emulator and Postgres.

mod common;

use std::time::Duration;

use common::{config, start_emulator, start_worker, RunningWorker, TestDb};
use sequin_emulator::{EmulatorHandle, Faults};
use serde_json::{json, Value};
use userhooks::config::Secret;
use userhooks::metrics::Metrics;
use userhooks::sequin::SequinClient;
use userhooks::serve::{serve, ServeConfig};

struct Setup {
    db: TestDb,
    emulator: EmulatorHandle,
    worker: Option<RunningWorker>,
    base: String,
    http: reqwest::Client,
}

async fn setup(allow_private_urls: bool, with_worker: bool, wait: Duration) -> Setup {
    setup_with(allow_private_urls, with_worker, wait, false).await
}

async fn setup_with(
    allow_private_urls: bool,
    with_worker: bool,
    wait: Duration,
    serve_knows_sequin: bool,
) -> Setup {
    let db = TestDb::new().await;
    userhooks::db::create_example_app(&db.url).await.unwrap();
    db.client()
        .await
        .batch_execute("insert into users (name) values ('User 1'), ('User 2'), ('User 3')")
        .await
        .unwrap();
    let emulator = start_emulator().await;
    let worker = if with_worker {
        let mut c = config(&db, &emulator);
        c.allow_private_urls = allow_private_urls;
        Some(start_worker(c).await)
    } else {
        None
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = ServeConfig {
        database_url: db.url.clone(),
        wait,
        sequin: serve_knows_sequin.then(|| {
            SequinClient::new(
                &emulator.api_url(),
                Secret::new(common::TOKEN),
                Duration::from_secs(2),
                Metrics::new(),
            )
            .with_in_process_retries(0)
        }),
        token: None,
    };
    tokio::spawn(async move {
        serve(cfg, listener, std::future::pending()).await.unwrap();
    });
    Setup {
        db,
        emulator,
        worker,
        base,
        http: reqwest::Client::new(),
    }
}

impl Setup {
    /// `curl -X <method> <base><path> -H "Content-Type: application/json" -d '<body>'`
    async fn curl(
        &self,
        method: &str,
        path: &str,
        body: &str,
    ) -> (u16, Value, reqwest::header::HeaderMap) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
        let resp = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Content-Type", "application/json")
            .body(body.to_string())
            .send()
            .await
            .unwrap();
        let status = resp.status().as_u16();
        let headers = resp.headers().clone();
        let text = resp.text().await.unwrap();
        let v = serde_json::from_str(&text).unwrap_or_else(|_| panic!("not JSON: {text}"));
        (status, v, headers)
    }

    async fn stop_worker(&mut self) {
        if let Some(w) = self.worker.take() {
            w.stop().await;
        }
    }

    /// Stand in for the worker: finish the next pending request of `action` with `result`.
    fn stand_in(&self, action: &'static str, result: Value) -> tokio::task::JoinHandle<i64> {
        let url = self.db.url.clone();
        tokio::spawn(async move {
            let client = userhooks::db::connect(&url, "stand-in").await.unwrap();
            loop {
                let row = client
                    .query_opt(
                        "select id, subscription_id from userhooks.subscription_requests
                          where action = $1 and status = 'pending' order by id limit 1",
                        &[&action],
                    )
                    .await
                    .unwrap();
                if let Some(row) = row {
                    let id: i64 = row.get(0);
                    let sub: Option<i64> = row.get(1);
                    let mut result = result.clone();
                    if action == "backfill" {
                        let sub = sub.expect("serve names the subscription");
                        let bf: i64 = client
                            .query_one(
                                "insert into userhooks.backfills
                                   (subscription_id, sequin_backfill_id, state, rows_initial_count, rows_processed_count)
                                 values ($1, $2, 'active', 7, 3) returning id",
                                &[&sub, &uuid::Uuid::parse_str(result["sequin_backfill_id"].as_str().unwrap()).unwrap()],
                            )
                            .await
                            .unwrap()
                            .get(0);
                        result["backfill_id"] = json!(bf);
                        result["subscription_id"] = json!(sub);
                    }
                    client
                        .execute(
                            "update userhooks.subscription_requests
                                set status = 'succeeded', result = $2, finished_at = now()
                              where id = $1",
                            &[&id, &result],
                        )
                        .await
                        .unwrap();
                    return id;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

const SEED_SUBSCRIBE: &str = r#"{
    "userId": 1,
    "webhookUrl": "https://webhook.site/your-unique-url"
  }"#;

#[tokio::test]
async fn seed_subscribe_curl_creates_the_subscription_and_returns_its_sink_id() {
    let s = setup(true, true, Duration::from_secs(10)).await;
    let (status, body, _) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["message"], "Webhook subscription created");
    let sinks = s.emulator.sinks();
    assert_eq!(sinks.len(), 1);
    assert_eq!(body["sinkId"], sinks[0]["id"], "{body}");
    assert_eq!(body["sinkName"], sinks[0]["name"]);
    assert_eq!(body["userId"], "1");
    assert_eq!(body["webhookUrl"], "https://webhook.site/your-unique-url");
    assert_eq!(body["status"], "active");
    assert!(body["requestId"].as_i64().is_some());
}

#[tokio::test]
async fn duplicate_subscribe_returns_the_same_subscription_with_200() {
    let s = setup(true, true, Duration::from_secs(10)).await;
    let (first, a, _) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(first, 201, "{a}");
    // The same user as a string: the same subscription.
    let (second, b, _) = s
        .curl(
            "POST",
            "/subscribe",
            r#"{"userId": "1", "webhookUrl": "https://webhook.site/your-unique-url"}"#,
        )
        .await;
    assert_eq!(second, 200, "{b}");
    assert_eq!(b["message"], "Webhook subscription already exists");
    assert_eq!(a["sinkId"], b["sinkId"]);
    assert_eq!(a["subscriptionId"], b["subscriptionId"]);
    assert_eq!(s.emulator.sinks().len(), 1, "no second sink");
}

#[tokio::test]
async fn private_webhook_url_is_refused_with_422_and_the_reason() {
    let s = setup(false, true, Duration::from_secs(10)).await;
    let (status, body, _) = s
        .curl(
            "POST",
            "/subscribe",
            r#"{"userId": 2, "webhookUrl": "http://127.0.0.1:8080/hook"}"#,
        )
        .await;
    assert_eq!(status, 422, "{body}");
    let error = body["error"].as_str().unwrap();
    assert!(error.contains("loopback"), "{error}");
    assert_eq!(body["kind"], "invalid_request");
    assert!(s.emulator.sinks().is_empty());
    assert!(s.emulator.endpoints().is_empty());
}

#[tokio::test]
async fn missing_fields_and_bad_json_give_400_with_the_seeds_messages() {
    let s = setup(true, false, Duration::from_secs(1)).await;
    let (status, body, _) = s.curl("POST", "/subscribe", r#"{"userId": 1}"#).await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Missing userId or webhookUrl"}))
    );
    let (status, body, _) = s.curl("POST", "/backfill", "{}").await;
    assert_eq!(
        (status, body),
        (400, json!({"error": "Missing sinkName parameter"}))
    );
    let (status, body, _) = s.curl("POST", "/subscribe", "{not json").await;
    assert_eq!(status, 400, "{body}");
    let (status, body, _) = s
        .curl(
            "POST",
            "/subscribe",
            r#"{"userId": true, "webhookUrl": "https://a.example"}"#,
        )
        .await;
    assert_eq!(status, 400, "{body}");
    // What the database refuses at the door (a URL over 2,048 characters) is a 400 too.
    let long = format!(
        r#"{{"userId": 1, "webhookUrl": "https://a.example/{}"}}"#,
        "x".repeat(2100)
    );
    let (status, body, _) = s.curl("POST", "/subscribe", &long).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(
        s.db.scalar_i64("select count(*) from userhooks.subscription_requests")
            .await,
        0
    );
}

#[tokio::test]
async fn request_still_running_after_the_wait_gives_202_with_its_id() {
    // No worker: the request stays pending.
    let s = setup(true, false, Duration::from_millis(500)).await;
    let (status, body, headers) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(status, 202, "{body}");
    let id = body["requestId"].as_i64().unwrap();
    assert_eq!(headers["location"], format!("/requests/{id}"));
    let (status, req, _) = s.curl("GET", &format!("/requests/{id}"), "").await;
    assert_eq!(status, 200);
    assert_eq!(req["status"], "pending");
    assert_eq!(req["action"], "subscribe");
    assert_eq!(req["userId"], "1");
}

#[tokio::test]
async fn rejected_sequin_token_gives_503_and_the_request_stays_pending() {
    let s = setup_with(true, true, Duration::from_secs(2), true).await;
    s.emulator.set_faults(Faults {
        force_401: true,
        ..Faults::default()
    });
    let (status, body, headers) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(status, 503, "{body}");
    assert!(body["error"].as_str().unwrap().contains("token"), "{body}");
    assert!(headers.contains_key("retry-after"));
    let id = body["requestId"].as_i64().unwrap();
    assert_eq!(s.db.request(id).await.status, "pending");
}

#[tokio::test]
async fn seed_backfill_curl_starts_a_backfill_of_the_users_sink() {
    let mut s = setup(true, true, Duration::from_secs(10)).await;
    let (status, sub, _) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(status, 201, "{sub}");
    // The worker's `backfill` action is built elsewhere: stand in for it, so this test pins
    // down serve's side (finding the sink, the request it writes, the answer it gives).
    s.stop_worker().await;
    let sequin_id = uuid::Uuid::new_v4().to_string();
    let stand_in = s.stand_in("backfill", json!({"sequin_backfill_id": sequin_id}));
    let (status, body, _) = s
        .curl(
            "POST",
            "/backfill",
            r#"{"sinkName": "user-1-notifications"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Backfill started successfully");
    assert_eq!(body["backfillId"], sequin_id.as_str());
    assert_eq!(body["state"], "active");
    assert_eq!(body["subscriptionId"], sub["subscriptionId"]);
    let request = stand_in.await.unwrap();
    assert_eq!(body["requestId"], request);
    // Our own sink name works the same way.
    let id = body["id"].as_i64().unwrap();
    let (status, by_id, _) = s.curl("GET", &format!("/backfill/{id}"), "").await;
    assert_eq!(status, 200);
    assert_eq!(by_id["rowsInitialCount"], 7);
    assert_eq!(by_id["rowsProcessedCount"], 3);
    assert_eq!(by_id["sinkName"], sub["sinkName"]);
    let (status, by_uuid, _) = s.curl("GET", &format!("/backfill/{sequin_id}"), "").await;
    assert_eq!(status, 200);
    assert_eq!(by_uuid["id"], id);
    let (status, _, _) = s.curl("GET", "/backfill/999999", "").await;
    assert_eq!(status, 404);
    let (status, body, _) = s
        .curl(
            "POST",
            "/backfill",
            r#"{"sinkName": "user-2-notifications"}"#,
        )
        .await;
    assert_eq!(status, 404, "{body}");
}

#[tokio::test]
async fn delete_subscribe_reports_what_was_removed() {
    let mut s = setup(true, true, Duration::from_secs(10)).await;
    let (status, sub, _) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(status, 201, "{sub}");
    s.stop_worker().await;
    let stand_in = s.stand_in(
        "unsubscribe",
        json!({"removed": 1, "subscription_ids": [sub["subscriptionId"]]}),
    );
    let (status, body, _) = s.curl("DELETE", "/subscribe", r#"{"userId": 1}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], 1);
    assert_eq!(body["subscriptionIds"], json!([sub["subscriptionId"]]));
    assert_eq!(body["requestId"], stand_in.await.unwrap());
}

#[tokio::test]
async fn seed_backfill_and_unsubscribe_work_end_to_end_with_the_worker() {
    let s = setup(true, true, Duration::from_secs(10)).await;
    let (status, sub, _) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
    assert_eq!(status, 201, "{sub}");
    let (status, body, _) = s
        .curl(
            "POST",
            "/backfill",
            r#"{"sinkName": "user-1-notifications"}"#,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["message"], "Backfill started successfully");
    let backfills = s.emulator.backfills();
    assert_eq!(backfills.len(), 1);
    assert_eq!(body["backfillId"], backfills[0]["id"], "{body}");
    assert_eq!(body["sinkName"], sub["sinkName"]);
    let id = body["id"].as_i64().unwrap();
    let (status, got, _) = s.curl("GET", &format!("/backfill/{id}"), "").await;
    assert_eq!(status, 200, "{got}");
    assert_eq!(got["subscriptionId"], sub["subscriptionId"]);

    let (status, body, _) = s.curl("DELETE", "/subscribe", r#"{"userId": 1}"#).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["removed"], 1);
    assert_eq!(body["subscriptionIds"], json!([sub["subscriptionId"]]));
    assert!(s.emulator.sinks().is_empty());
    assert!(s.emulator.endpoints().is_empty());
    // Nothing left to remove: still a clear answer.
    let (status, body, _) = s.curl("DELETE", "/subscribe", r#"{"userId": 1}"#).await;
    assert_eq!((status, body["removed"].clone()), (200, json!(0)), "{body}");
    assert_eq!(body["message"], "Nothing to remove");
}

#[tokio::test]
async fn with_a_token_a_call_without_it_gets_401_and_enqueues_nothing() {
    let db = TestDb::new().await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    let cfg = ServeConfig {
        database_url: db.url.clone(),
        wait: Duration::from_millis(200),
        sequin: None,
        token: Some(Secret::new("serve-tok")),
    };
    tokio::spawn(async move {
        serve(cfg, listener, std::future::pending()).await.unwrap();
    });
    let http = reqwest::Client::new();
    for auth in [None, Some("Bearer wrong"), Some("serve-tok")] {
        let mut req = http
            .post(format!("{base}/subscribe"))
            .header("Content-Type", "application/json")
            .body(SEED_SUBSCRIBE);
        if let Some(auth) = auth {
            req = req.header("Authorization", auth);
        }
        let resp = req.send().await.unwrap();
        assert_eq!(resp.status(), 401, "{auth:?}");
        assert_eq!(
            resp.headers()["www-authenticate"].to_str().unwrap(),
            "Bearer"
        );
        let body: Value = resp.json().await.unwrap();
        assert!(body["error"]
            .as_str()
            .unwrap()
            .contains("USERHOOKS_SERVE_TOKEN"));
    }
    assert_eq!(
        db.scalar_i64("select count(*) from userhooks.subscription_requests")
            .await,
        0
    );
    // With the token the call goes through: the request is enqueued (no worker: 202).
    let resp = http
        .post(format!("{base}/subscribe"))
        .header("Content-Type", "application/json")
        .bearer_auth("serve-tok")
        .body(SEED_SUBSCRIBE)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 202);
    // The scheme's name in any case (RFC 9110 §11.1): past the check, the request is unknown.
    for auth in ["bearer serve-tok", "BEARER serve-tok"] {
        let resp = http
            .get(format!("{base}/requests/424242"))
            .header("Authorization", auth)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), 404, "{auth}");
    }
    let health = http.get(format!("{base}/healthz")).send().await.unwrap();
    assert_eq!(health.status(), 200);
}

#[tokio::test]
async fn a_database_outage_gives_503_without_the_database_error_text() {
    let s = setup(false, false, Duration::from_millis(200)).await;
    // Answered once serve has connected and checked the schema.
    let health = s.http.get(format!("{}/healthz", s.base)).send().await;
    assert_eq!(health.unwrap().status(), 200);
    // The database refuses new connections (naming itself), and serve's are cut.
    let admin = userhooks::db::connect(&common::server_url(), "userhooks-tests")
        .await
        .unwrap();
    admin
        .batch_execute(&format!(
            "alter database {} allow_connections false",
            s.db.name
        ))
        .await
        .unwrap();
    admin
        .execute(
            "select pg_terminate_backend(pid) from pg_stat_activity
              where datname = $1 and pid <> pg_backend_pid()",
            &[&s.db.name],
        )
        .await
        .unwrap();
    for _ in 0..2 {
        let (status, body, _) = s.curl("POST", "/subscribe", SEED_SUBSCRIBE).await;
        assert_eq!(status, 503, "{body}");
        assert_eq!(body, json!({"error": "database unavailable"}));
    }
}
