//! The subscribe path end to end: real Postgres, the emulator over real HTTP, a real worker.

mod common;

use std::time::Duration;

use common::*;
use sequin_emulator::{Faults, InjectedResponse, RouteFaults};
use serde_json::json;

const WAIT: Duration = Duration::from_secs(15);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_creates_endpoint_and_sink_filtered_to_the_user() {
    let app = TestApp::spawn().await;

    let id = app
        .subscribe("42", "https://hooks.example.com/u42", json!({}))
        .await;
    let row = app.finished(id).await;
    assert_eq!(row.status, "succeeded", "{row:?}");

    let endpoints = app.endpoints();
    assert_eq!(endpoints.len(), 1);
    assert_eq!(endpoints[0]["url"], "https://hooks.example.com/u42");
    let sinks = app.sinks();
    assert_eq!(sinks.len(), 1);
    let sink = &sinks[0];
    assert_eq!(sink["annotations"], json!({"user_id": "42"}));
    assert_eq!(sink["filter"], "userhooks-user-filter");
    assert_eq!(
        sink["source"]["include_tables"],
        json!(["public.notifications"])
    );
    assert_eq!(sink["destination"]["http_endpoint"], endpoints[0]["name"]);
    assert_eq!(sink["destination"]["batch"], false);
    assert_eq!(sink["batch_size"], 1);
    assert!(app
        .emulator
        .functions()
        .iter()
        .any(|f| f["name"] == "userhooks-user-filter" && f["type"] == "filter"));

    let result = row.result.expect("result");
    assert_eq!(result["sink_id"], sink["id"]);
    assert_eq!(result["endpoint_id"], endpoints[0]["id"]);
    let sub = app.subscription(&result["subscription_id"]).await;
    assert_eq!(sub.status, "active");
    assert_eq!(sub.sink_id.as_deref(), sink["id"].as_str());
    assert_eq!(sub.endpoint_id.as_deref(), endpoints[0]["id"].as_str());
    assert_eq!(sub.endpoint, "https://hooks.example.com/u42");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notify_wakes_the_worker_long_before_the_poll_interval() {
    let app = TestApp::builder()
        .config(|c| c.poll_interval = Duration::from_secs(30))
        .spawn()
        .await;
    eventually(WAIT, "listener connected", || async {
        app.worker().metrics.listener_connected.get() == 1
    })
    .await;
    // Let the start-up claim and first poll tick pass, so only NOTIFY can wake the worker.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let id = app
        .subscribe("7", "https://hooks.example.com/7", json!({}))
        .await;
    let row = app.finished_within(id, Duration::from_secs(5)).await;
    assert_eq!(row.status, "succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_finished_request_sends_exactly_one_request_done_notification() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let mut done = listen(&app.db, "userhooks_request_done").await;
    app.start_worker().await;

    // Written back together or apart, succeeded or failed: one notification each.
    let mut expected = Vec::new();
    for i in 0..20 {
        let url = format!("https://hooks.example.com/n{i}");
        let id = app.subscribe(&format!("n{i}"), &url, json!({})).await;
        expected.push(json!({"id": id, "status": "succeeded"}));
    }
    let bad = app.subscribe("bad", "not a url", json!({})).await;
    expected.push(json!({"id": bad, "status": "failed"}));
    for payload in &expected {
        let id = payload["id"].as_i64().unwrap();
        assert_eq!(app.finished(id).await.status, payload["status"]);
    }

    let mut received = Vec::new();
    while received.len() < expected.len() {
        let (_, payload) = tokio::time::timeout(WAIT, done.recv())
            .await
            .expect("a request_done notification")
            .unwrap();
        received.push(serde_json::from_str::<serde_json::Value>(&payload).unwrap());
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    while let Ok((_, payload)) = done.try_recv() {
        received.push(serde_json::from_str(&payload).unwrap());
    }
    let key = |v: &serde_json::Value| v["id"].as_i64().unwrap();
    received.sort_by_key(key);
    expected.sort_by_key(key);
    assert_eq!(received, expected);
    app.stop().await;
}

/// The point of migration 0006: the worker's write-back sends the notifications itself and the
/// per-row trigger does not run for it. (The test above cannot tell: Postgres folds the
/// trigger's identical notification into the write-back's.) Function call statistics count
/// the trigger function's calls.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_write_backs_do_not_run_the_request_done_trigger() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    app.client()
        .await
        .batch_execute(&format!(
            "alter database {} set track_functions = 'pl'",
            app.db.name
        ))
        .await
        .unwrap();
    app.start_worker().await;
    for i in 0..5 {
        let url = format!("https://hooks.example.com/t{i}");
        let id = app.subscribe(&format!("t{i}"), &url, json!({})).await;
        assert_eq!(app.finished(id).await.status, "succeeded");
    }
    // A backend reports its statistics when it exits at the latest: stop the worker's.
    app.stop_worker().await;

    // A control: finishing a request by hand runs the trigger once.
    let client = app.client().await;
    let manual = app.unsubscribe("by-hand", None).await;
    client
        .execute(
            "update userhooks.subscription_requests set status = 'cancelled' where id = $1",
            &[&manual],
        )
        .await
        .unwrap();
    drop(client);
    let calls = || async {
        app.scalar(
            "select coalesce(sum(calls), 0)::bigint from pg_stat_user_functions
              where schemaname = 'userhooks' and funcname = 'notify_request_done'",
        )
        .await
    };
    eventually(
        WAIT,
        "the manual update's trigger call is counted",
        || async { calls().await >= 1 },
    )
    .await;
    assert_eq!(calls().await, 1, "only the manual update ran the trigger");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poll_claims_requests_when_no_notify_arrives() {
    let app = TestApp::builder()
        .setup_sql(
            "alter table userhooks.subscription_requests disable trigger subscription_requests_notify",
        )
        .config(|c| c.poll_interval = Duration::from_millis(300))
        .spawn()
        .await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let id = app
        .subscribe("8", "https://hooks.example.com/8", json!({}))
        .await;
    assert_eq!(
        app.finished_within(id, Duration::from_secs(5)).await.status,
        "succeeded"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_terminated_by_postgres_still_leaves_polling_and_reconnects() {
    let app = TestApp::builder()
        .config(|c| c.poll_interval = Duration::from_millis(300))
        .spawn()
        .await;
    eventually(WAIT, "listener connected", || async {
        app.worker().metrics.listener_connected.get() == 1
    })
    .await;
    let killed = app
        .scalar(
            "select count(*) from (select pg_terminate_backend(pid) from pg_stat_activity
              where application_name = 'userhooks-listener' and datname = current_database()) t",
        )
        .await;
    assert_eq!(killed, 1);
    let id = app
        .subscribe("9", "https://hooks.example.com/9", json!({}))
        .await;
    assert_eq!(
        app.finished_within(id, Duration::from_secs(5)).await.status,
        "succeeded"
    );
    eventually(WAIT, "listener reconnected", || async {
        app.scalar(
            "select count(*) from pg_stat_activity
              where application_name = 'userhooks-listener' and datname = current_database()",
        )
        .await
            == 1
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_subscribe_returns_the_same_subscription() {
    let app = TestApp::spawn().await;

    let first = app
        .subscribe("1", "https://hooks.example.com/1", json!({}))
        .await;
    let first = app.finished(first).await;
    let second = app
        .subscribe("1", "https://hooks.example.com/1", json!({}))
        .await;
    let second = app.finished(second).await;
    assert_eq!(second.status, "succeeded");
    let (a, b) = (first.result.unwrap(), second.result.unwrap());
    assert_eq!(a["subscription_id"], b["subscription_id"]);
    assert_eq!(a["sink_id"], b["sink_id"]);
    assert_eq!(app.sinks().len(), 1);
    assert_eq!(app.calls("create_sink"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_subscribes_for_one_user_and_url_make_one_sink() {
    // Two workers racing over the same rows.
    let app = TestApp::spawn().await;
    let second_worker = app.another_worker().await;
    let ids: Vec<i64> = app
        .client()
        .await
        .query(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', 'u1', 'https://hooks.example.com/same' from generate_series(1, 5)
             returning id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    for id in &ids {
        assert_eq!(app.finished(*id).await.status, "succeeded");
    }
    assert_eq!(app.sinks().len(), 1);
    assert_eq!(app.endpoints().len(), 1);
    assert_eq!(app.subscriptions().await.len(), 1);
    second_worker.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_are_retried_until_success_without_orphans() {
    let unavailable = InjectedResponse {
        status: 503,
        body: json!({"summary": "Service unavailable (injected)"}),
    };
    let mut faults = Faults::default();
    faults.routes.insert(
        "create_sink".to_string(),
        RouteFaults {
            // More than the in-process retries, so a durable reschedule is needed.
            fail_next: vec![unavailable.clone(); 4],
            ..RouteFaults::default()
        },
    );
    let app = TestApp::builder().faults(faults).spawn().await;
    let id = app
        .subscribe("5", "https://hooks.example.com/5", json!({}))
        .await;
    let row = app.finished_within(id, Duration::from_secs(30)).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert!(
        row.attempts > 1,
        "expected a durable retry, attempts = {}",
        row.attempts
    );
    assert_eq!(app.endpoints().len(), 1, "no orphan endpoint");
    assert_eq!(app.sinks().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn permanent_rejection_fails_with_summary_and_removes_the_endpoint() {
    let mut faults = Faults::default();
    faults.routes.insert(
        "create_sink".to_string(),
        RouteFaults {
            fail_next: vec![InjectedResponse {
                status: 422,
                body: json!({"summary": "Validation failed",
                             "validation_errors": {"annotations": ["is too large"]}}),
            }],
            ..RouteFaults::default()
        },
    );
    let app = TestApp::builder().faults(faults).spawn().await;
    let id = app
        .subscribe("6", "https://hooks.example.com/6", json!({}))
        .await;
    let row = app.finished(id).await;
    assert_eq!(row.status, "failed");
    let error = row.last_error.unwrap();
    assert!(
        error.contains("Validation failed") && error.contains("is too large"),
        "{error}"
    );
    assert_eq!(row.result.unwrap()["error"]["kind"], "sequin_rejected");
    assert!(
        app.endpoints().is_empty(),
        "the endpoint made for it is deleted"
    );
    let failed = app.subscriptions().await;
    assert_eq!(failed.iter().filter(|s| s.status == "failed").count(), 1);

    // The user can subscribe again.
    let again = app
        .subscribe("6", "https://hooks.example.com/6", json!({}))
        .await;
    assert_eq!(app.finished(again).await.status, "succeeded");
    assert_eq!(app.sinks().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_token_keeps_requests_pending_until_it_works_again() {
    let app = TestApp::builder()
        .faults(Faults {
            force_401: true,
            ..Faults::default()
        })
        .spawn()
        .await;
    let id = app
        .subscribe("3", "https://hooks.example.com/3", json!({}))
        .await;
    eventually(WAIT, "auth marked failing", || async {
        app.worker().metrics.sequin_auth_ok.get() == 0
    })
    .await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let row = app.request_row(id).await;
    assert_eq!(row.status, "pending", "{row:?}");
    assert_eq!(
        row.attempts, 0,
        "an auth rejection does not use up attempts"
    );

    app.set_faults(Faults::default());
    let row = app.finished_within(id, Duration::from_secs(25)).await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(app.worker().metrics.sequin_auth_ok.get(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_url_fails_clearly_without_calling_sequin() {
    let app = TestApp::builder()
        .config(|c| c.allow_private_urls = false)
        .spawn()
        .await;
    let bad = app
        .subscribe("4", "ftp://hooks.example.com/4", json!({}))
        .await;
    let private = app
        .subscribe("4", "http://169.254.169.254/latest", json!({}))
        .await;
    let bad = app.finished(bad).await;
    let private = app.finished(private).await;
    assert_eq!(bad.status, "failed");
    assert!(bad.last_error.unwrap().contains("http or https"));
    assert_eq!(private.status, "failed");
    assert!(private.last_error.unwrap().contains("link-local"));
    assert_eq!(app.calls("create_endpoint"), 0);
    assert_eq!(app.calls("create_sink"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_option_fails_the_request_and_provisions_nothing() {
    let app = TestApp::spawn().await;
    let id = app
        .subscribe(
            "4",
            "https://hooks.example.com/4",
            json!({"filters": [{"column_name": "user_id"}]}),
        )
        .await;
    let row = app.finished(id).await;
    assert_eq!(row.status, "failed");
    assert!(row.last_error.unwrap().contains("unknown option `filters`"));
    assert_eq!(row.result.unwrap()["error"]["kind"], "invalid_request");
    assert!(app.endpoints().is_empty());
    app.stop().await;
}

/// Mark a request as claimed by `worker`, its lease ending `lease_ends` from now (an
/// interval; negative for a lease in the past).
async fn claimed_by(app: &TestApp, id: RequestId, worker: &str, lease_ends: &str) {
    app.client()
        .await
        .execute(
            "update userhooks.subscription_requests
                set status = 'running', attempts = 1, locked_by = $2,
                    locked_until = now() + $3::text::interval
              where id = $1",
            &[&id, &worker, &lease_ends],
        )
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_expired_lease_is_reclaimed_and_finished() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let id = app
        .subscribe("11", "https://hooks.example.com/11", json!({}))
        .await;
    // A worker claimed it and died: running, lease in the past.
    claimed_by(&app, id, "dead-worker", "-1 second").await;
    app.start_worker().await;
    let row = app.finished(id).await;
    assert_eq!(row.status, "succeeded");
    assert_eq!(row.attempts, 2);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_with_live_lease_is_not_taken() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    let id = app
        .subscribe("12", "https://hooks.example.com/12", json!({}))
        .await;
    claimed_by(&app, id, "other-worker", "1 hour").await;
    app.start_worker().await;
    tokio::time::sleep(Duration::from_millis(800)).await;
    let row = app.request_row(id).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.locked_by.as_deref(), Some("other-worker"));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn write_back_with_a_stale_attempt_is_refused() {
    use userhooks::model::Outcome;
    use userhooks::queue::{self, WriteBack};
    let db = TestDb::new().await;
    db.insert(
        "subscribe",
        "13",
        Some("https://hooks.example.com/13"),
        json!({}),
    )
    .await;
    let pool = userhooks::db::pool(&db.url, 2).unwrap();
    let claimed = queue::claim(&pool, 10, "worker-a", Duration::from_millis(1))
        .await
        .unwrap();
    let stale = claimed.requests[0].clone();
    tokio::time::sleep(Duration::from_millis(20)).await;
    // The lease expired; worker-b takes the request over.
    let reclaimed = queue::claim(&pool, 10, "worker-b", Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(reclaimed.requests.len(), 1);
    let outcome = Outcome::Succeeded {
        result: json!({"by": "a"}),
        changes: vec![],
    };
    let written = queue::write_back(&pool, "worker-a", &stale, &outcome)
        .await
        .unwrap();
    assert_eq!(written, WriteBack::LeaseLost);
    let row = db.request(stale.id).await;
    assert_eq!(row.status, "running");
    assert_eq!(row.locked_by.as_deref(), Some("worker-b"));
    // The owner's write-back works.
    let written = queue::write_back(&pool, "worker-b", &reclaimed.requests[0], &outcome)
        .await
        .unwrap();
    assert_eq!(written, WriteBack::Applied);
    assert_eq!(db.request(stale.id).await.status, "succeeded");
}

/// What the scripted resolver does when asked.
#[derive(Clone, Copy, Debug)]
enum Dns {
    /// Never answers: the lookup times out.
    Hang,
    /// Answers that the name does not exist (NXDOMAIN).
    NoSuchHost,
    /// Answers with a public address.
    Public,
}

/// A resolver whose answer the test changes, counting the lookups.
#[derive(Clone)]
struct ScriptedDns(std::sync::Arc<ScriptedState>);

struct ScriptedState {
    answer: std::sync::Mutex<Dns>,
    calls: std::sync::atomic::AtomicUsize,
    asked: tokio::sync::Notify,
}

impl ScriptedDns {
    fn new(answer: Dns) -> Self {
        ScriptedDns(std::sync::Arc::new(ScriptedState {
            answer: std::sync::Mutex::new(answer),
            calls: Default::default(),
            asked: tokio::sync::Notify::new(),
        }))
    }

    fn answer(&self, answer: Dns) {
        *self.0.answer.lock().unwrap() = answer;
    }

    fn calls(&self) -> usize {
        self.0.calls.load(std::sync::atomic::Ordering::SeqCst)
    }

    fn resolver(&self) -> userhooks::webhook_url::Resolver {
        userhooks::webhook_url::Resolver::new(self.clone()).with_timeout(DNS_TIMEOUT)
    }
}

const DNS_TIMEOUT: Duration = Duration::from_millis(200);

impl userhooks::webhook_url::Resolve for ScriptedDns {
    fn resolve(
        &self,
        _host: &str,
        _port: u16,
    ) -> impl std::future::Future<Output = std::io::Result<Vec<std::net::IpAddr>>> + Send {
        self.0
            .calls
            .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        self.0.asked.notify_one();
        let answer = *self.0.answer.lock().unwrap();
        async move {
            match answer {
                Dns::Hang => std::future::pending().await,
                Dns::NoSuchHost => Err(std::io::Error::new(
                    std::io::ErrorKind::NotFound,
                    "no such host (injected)",
                )),
                Dns::Public => Ok(vec!["93.184.215.14".parse().unwrap()]),
            }
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dns_timeout_is_retried_with_backoff_and_succeeds_once_dns_answers() {
    let dns = ScriptedDns::new(Dns::Hang);
    let mut app = TestApp::builder()
        .config(|c| c.allow_private_urls = false)
        .resolver(dns.resolver())
        .without_worker()
        .spawn()
        .await;
    let id = app
        .subscribe("u1", "https://hooks.example.com/u1", json!({}))
        .await;

    // A worker that shuts down as soon as it asks DNS: the attempt in flight still times out
    // and is written back, and no second attempt can start.
    let worker = userhooks::worker::build_with_resolver(app.config.clone(), dns.resolver())
        .await
        .expect("build worker");
    let asked = dns.clone();
    tokio::time::timeout(
        WAIT,
        worker.run(async move { asked.0.asked.notified().await }),
    )
    .await
    .expect("the worker stops")
    .expect("worker run");
    assert_eq!(dns.calls(), 1);

    let row = app
        .client()
        .await
        .query_one(
            "select status, attempts, last_error, result,
                    extract(epoch from run_at - updated_at)::float8
               from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending", "retried, not failed");
    assert_eq!(row.get::<_, i32>(1), 1);
    assert_eq!(
        row.get::<_, Option<String>>(2).as_deref(),
        Some(
            "attempt 1 of 12: webhook_url host hooks.example.com could not be resolved: \
             DNS timeout (no answer within 200 ms)"
        )
    );
    assert_eq!(row.get::<_, Option<serde_json::Value>>(3), None);
    // Rescheduled by the write-back with the durable backoff: the first retry waits at most 1s.
    let delay: f64 = row.get(4);
    assert!((0.0..=1.0).contains(&delay), "run_at is now + {delay}s");

    dns.answer(Dns::Public);
    app.start_worker().await;
    let row = app.finished(id).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(row.attempts, 2);
    assert_eq!(dns.calls(), 2);
    assert_eq!(app.endpoints().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_exist_fails_clearly_once_its_attempts_run_out() {
    let dns = ScriptedDns::new(Dns::NoSuchHost);
    let app = TestApp::builder()
        .config(|c| c.allow_private_urls = false)
        .resolver(dns.resolver())
        .spawn()
        .await;
    let id: i64 = app
        .client()
        .await
        .query_one(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, max_attempts)
             values ('subscribe', 'u1', 'https://nowhere.example.com/u1', 3) returning id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = app.finished(id).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(row.attempts, 3, "asked again before giving up");
    assert_eq!(dns.calls(), 3);
    assert_eq!(
        row.last_error.as_deref(),
        Some(
            "webhook_url host \"nowhere.example.com\" does not exist \
             (DNS: no such host (injected)); check the URL"
        )
    );
    assert_eq!(row.result.unwrap()["error"]["kind"], "invalid_request");
    assert!(app.endpoints().is_empty(), "nothing provisioned");
    assert!(app.subscriptions().await.is_empty());
    app.stop().await;
}
