//! What operators see: `/metrics` as docs/architecture.md §8 promises, `/readyz` that names
//! the failing check, and logs that never carry a secret.

mod common;
mod prom;

use std::process::Stdio;
use std::time::Duration;

use common::*;
use sequin_emulator::Faults;
use serde_json::{json, Value};
use tokio::io::AsyncReadExt;

/// Every metric of docs/architecture.md §8, as sample names (histograms by their `_count`).
const PROMISED_METRICS: &[&str] = &[
    "userhooks_requests_total",
    "userhooks_request_duration_seconds_count",
    "userhooks_queue_wait_seconds_count",
    "userhooks_queue_depth",
    "userhooks_oldest_pending_age_seconds",
    "userhooks_sequin_requests_total",
    "userhooks_sequin_request_duration_seconds_count",
    "userhooks_subscriptions",
    "userhooks_backfills",
    "userhooks_listener_connected",
    "userhooks_sequin_auth_ok",
    "userhooks_lease_lost_total",
    "userhooks_in_flight",
];

/// An app whose worker serves `/metrics`, `/healthz` and `/readyz`.
fn with_metrics() -> TestAppBuilder {
    TestApp::builder()
        .metrics()
        .config(|c| c.allow_private_urls = true)
}

async fn readyz(addr: std::net::SocketAddr) -> (u16, Value) {
    let (status, content_type, body) = prom::get(addr, "/readyz").await;
    assert!(
        content_type.starts_with("application/json"),
        "content type {content_type}"
    );
    (
        status,
        serde_json::from_str(&body).expect("/readyz body is JSON"),
    )
}

/// Poll `/readyz` until `want` holds for its answer; returns that answer.
async fn readyz_until(
    addr: std::net::SocketAddr,
    timeout: Duration,
    what: &str,
    want: impl Fn(u16, &Value) -> bool,
) -> (u16, Value) {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        let (status, body) = readyz(addr).await;
        if want(status, &body) {
            return (status, body);
        }
        assert!(
            std::time::Instant::now() < deadline,
            "timed out after {timeout:?} waiting for: {what} (last: {status} {body})"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scrape_after_subscribes_shows_every_design_metric_with_true_values_and_no_user_id() {
    let app = with_metrics().spawn().await;
    let addr = app.worker().metrics_addr.expect("metrics server bound");

    let users = [
        "uid-Qx7-alice-5531",
        "uid-Qx7-bob-5532",
        "uid-Qx7-carol-5533",
    ];
    let mut ids = Vec::new();
    for user in users {
        let url = format!("https://hooks.example.com/{user}");
        ids.push(app.subscribe(user, &url, json!({})).await);
    }
    for id in &ids {
        let row = app.finished(*id).await;
        assert_eq!(row.status, "succeeded", "{row:?}");
    }
    // Whole-table gauges are refreshed on a slow timer (30 s): wait for them to catch up.
    let mut scrape = prom::scrape(addr).await;
    for _ in 0..200 {
        if scrape.value("userhooks_queue_depth", &[("status", "succeeded")]) == Some(3.0)
            && scrape.value("userhooks_subscriptions", &[("status", "active")]) == Some(3.0)
            && scrape.value("userhooks_queue_depth", &[("status", "running")]) == Some(0.0)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
        scrape = prom::scrape(addr).await;
    }

    let names = scrape.names();
    for metric in PROMISED_METRICS {
        assert!(
            names.contains(*metric),
            "{metric} missing from:\n{}",
            scrape.text
        );
    }
    let v = |name: &str, labels: &[(&str, &str)]| {
        scrape
            .value(name, labels)
            .unwrap_or_else(|| panic!("no {name}{labels:?} in:\n{}", scrape.text))
    };
    // Requests by action and outcome, zero-filled for the rest.
    assert_eq!(
        v(
            "userhooks_requests_total",
            &[("action", "subscribe"), ("outcome", "succeeded")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "userhooks_requests_total",
            &[("action", "subscribe"), ("outcome", "failed")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "userhooks_requests_total",
            &[("action", "unsubscribe"), ("outcome", "retried")]
        ),
        0.0
    );
    assert_eq!(
        v(
            "userhooks_request_duration_seconds_count",
            &[("action", "subscribe")]
        ),
        3.0
    );
    assert_eq!(v("userhooks_queue_wait_seconds_count", &[]), 3.0);
    // Queue depth: every request status, zero-filled.
    assert_eq!(
        scrape.label_values("userhooks_queue_depth", "status"),
        ["cancelled", "failed", "pending", "running", "succeeded"]
            .into_iter()
            .map(String::from)
            .collect()
    );
    assert_eq!(v("userhooks_queue_depth", &[("status", "succeeded")]), 3.0);
    assert_eq!(v("userhooks_queue_depth", &[("status", "pending")]), 0.0);
    assert_eq!(v("userhooks_queue_depth", &[("status", "running")]), 0.0);
    assert_eq!(v("userhooks_oldest_pending_age_seconds", &[]), 0.0);
    // Sequin calls by operation and HTTP status.
    assert_eq!(
        v(
            "userhooks_sequin_requests_total",
            &[("operation", "create_endpoint"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "userhooks_sequin_requests_total",
            &[("operation", "create_sink"), ("status", "200")]
        ),
        3.0
    );
    assert_eq!(
        v(
            "userhooks_sequin_request_duration_seconds_count",
            &[("operation", "create_sink")]
        ),
        3.0
    );
    for status in scrape.label_values("userhooks_sequin_requests_total", "status") {
        assert!(
            status == "timeout" || status == "error" || status.parse::<u16>().is_ok(),
            "status label {status}"
        );
    }
    for operation in scrape.label_values("userhooks_sequin_requests_total", "operation") {
        assert!(
            userhooks::metrics::OPERATIONS.contains(&operation.as_str()),
            "operation {operation}"
        );
    }
    // Every write went through the pacer: an endpoint and a sink per subscribe, and the
    // filter function (a write that restarts replication when it changes a function).
    assert_eq!(
        v(
            "userhooks_sequin_write_wait_seconds_count",
            &[("kind", "write")]
        ),
        6.0
    );
    assert_eq!(
        v(
            "userhooks_sequin_write_wait_seconds_count",
            &[("kind", "restarting")]
        ),
        1.0
    );
    // Subscriptions and backfills, zero-filled.
    assert_eq!(v("userhooks_subscriptions", &[("status", "active")]), 3.0);
    assert_eq!(v("userhooks_subscriptions", &[("status", "failed")]), 0.0);
    assert_eq!(scrape.label_values("userhooks_backfills", "state").len(), 5);
    assert_eq!(v("userhooks_backfills", &[("state", "active")]), 0.0);
    // State gauges.
    assert_eq!(v("userhooks_listener_connected", &[]), 1.0);
    assert_eq!(v("userhooks_sequin_auth_ok", &[]), 1.0);
    assert_eq!(v("userhooks_lease_lost_total", &[]), 0.0);
    assert_eq!(v("userhooks_in_flight", &[]), 0.0);
    // Never a user id (nor part of one) anywhere in the exposition.
    assert!(
        !scrape.text.contains("uid-Qx7"),
        "a user id leaked:\n{}",
        scrape.text
    );
    for sample in &scrape.samples {
        for key in sample.labels.keys() {
            assert!(
                // source_table: the configured table(s), never user data.
                [
                    "action",
                    "outcome",
                    "status",
                    "operation",
                    "state",
                    "kind",
                    "le",
                    "source_table"
                ]
                .contains(&key.as_str()),
                "unexpected label {key} on {}",
                sample.name
            );
        }
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_subscriptions_are_counted_per_source_table() {
    let app = with_metrics()
        .setup_sql(
            "insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table, status)
             values ('a', 'https://h.example/a', 'public.notifications', 'active'),
                    ('b', 'https://h.example/b', 'public.notifications', 'paused'),
                    ('c', 'https://h.example/c', 'public.notifications', 'provisioning'),
                    ('d', 'https://h.example/d', 'public.notifications', 'deleted'),
                    ('e', 'https://h.example/e', 'public.notifications', 'failed'),
                    ('f', 'https://h.example/f', 'public.orders', 'active'),
                    ('g', 'https://h.example/g', 'public.gone', 'deleted')",
        )
        .spawn()
        .await;
    let addr = app.worker().metrics_addr.expect("metrics server bound");
    // The first refresh runs when the worker starts.
    let live = |scrape: &prom::Scrape, table: &str| {
        scrape.value("userhooks_live_subscriptions", &[("source_table", table)])
    };
    let mut scrape = prom::scrape(addr).await;
    for _ in 0..100 {
        if live(&scrape, "public.notifications").is_some() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        scrape = prom::scrape(addr).await;
    }
    assert_eq!(
        live(&scrape, "public.notifications"),
        Some(3.0),
        "{}",
        scrape.text
    );
    assert_eq!(live(&scrape, "public.orders"), Some(1.0));
    assert_eq!(live(&scrape, "public.gone"), Some(0.0));
    assert_eq!(
        scrape.value("userhooks_subscriptions", &[("status", "active")]),
        Some(2.0)
    );
    assert_eq!(
        scrape.value("userhooks_subscriptions", &[("status", "deleted")]),
        Some(2.0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_while_sequin_rejects_the_token_and_recovers_by_itself() {
    let app = with_metrics().spawn().await;
    let addr = app.worker().metrics_addr.expect("metrics server bound");

    let (status, _, body) = prom::get(addr, "/healthz").await;
    assert_eq!(status, 200, "{body}");
    let last = readyz_until(addr, Duration::from_secs(10), "ready at start", |s, _| {
        s == 200
    })
    .await;
    assert_eq!(last.1["ready"], json!(true));

    app.set_faults(Faults {
        force_401: true,
        ..Default::default()
    });
    let id = app
        .subscribe("u-401", "https://hooks.example.com/a", json!({}))
        .await;
    let last = readyz_until(
        addr,
        Duration::from_secs(10),
        "not ready while the token is rejected",
        |s, _| s == 503,
    )
    .await;
    assert_eq!(last.1["ready"], json!(false));
    assert_eq!(
        last.1["checks"]["sequin_auth"],
        json!("failing"),
        "{}",
        last.1
    );
    assert_eq!(last.1["checks"]["database"], json!("ok"), "{}", last.1);
    assert_eq!(last.1["checks"]["listener"], json!("ok"), "{}", last.1);
    assert_eq!(app.worker().metrics.sequin_auth_ok.get(), 0);
    // /healthz stays 200: the process is alive.
    assert_eq!(prom::get(addr, "/healthz").await.0, 200);
    assert_eq!(app.request_row(id).await.status, "pending");

    app.set_faults(Faults::default());
    // The worker re-probes the token every 10 s.
    let last = readyz_until(
        addr,
        Duration::from_secs(25),
        "ready again after the fault is lifted",
        |s, _| s == 200,
    )
    .await;
    assert_eq!(last.1["checks"]["sequin_auth"], json!("ok"));
    let row = app.finished(id).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readyz_fails_when_the_database_is_gone() {
    let app = with_metrics().spawn().await;
    let addr = app.worker().metrics_addr.expect("metrics server bound");
    eventually(Duration::from_secs(10), "ready at start", || async {
        readyz(addr).await.0 == 200
    })
    .await;

    // Kill every connection of the worker (pool and LISTEN) and make the database unreachable.
    let admin = userhooks::db::connect(&server_url(), "userhooks-tests")
        .await
        .expect("admin connection");
    admin
        .batch_execute(&format!("drop database {} with (force)", app.db.name))
        .await
        .expect("drop the worker's database");

    let last = readyz_until(
        addr,
        Duration::from_secs(20),
        "not ready without the database",
        |s, body| s == 503 && body["checks"]["database"] == json!("failing"),
    )
    .await;
    assert_eq!(last.1["ready"], json!(false));
    assert_eq!(last.1["checks"]["listener"], json!("failing"), "{}", last.1);
    let metrics = prom::scrape(addr).await;
    assert_eq!(
        metrics.value("userhooks_listener_connected", &[]),
        Some(0.0)
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_of_a_debug_run_never_contain_the_token_or_an_endpoint_secret() {
    const SECRET: &str = "whsec-Lq93-do-not-print-me";
    let app = TestApp::builder().without_worker().spawn().await;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"))
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", &app.db.url)
        .env("SEQUIN_API_URL", app.emulator.api_url())
        .env("SEQUIN_API_TOKEN", TOKEN)
        .env("SEQUIN_DATABASE", SEQUIN_DB)
        .env("USERHOOKS_METRICS_ADDR", "off")
        .env("USERHOOKS_ALLOW_PRIVATE_URLS", "true")
        .env("USERHOOKS_LOG", "debug")
        .env("USERHOOKS_LOG_FORMAT", "json")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker");
    let mut stderr = child.stderr.take().expect("stderr");
    let reader = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.expect("read stderr");
        text
    });

    let subscribed = app
        .subscribe(
            "u-logs",
            "https://hooks.example.com/logs",
            json!({"secret": SECRET, "headers": {"X-Tenant": "t1"}}),
        )
        .await;
    let row = app.finished(subscribed).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let unsubscribed = app
        .unsubscribe("u-logs", Some("https://hooks.example.com/logs"))
        .await;
    app.finished(unsubscribed).await;
    // An auth failure too: its error lines must not echo the token either.
    app.set_faults(Faults {
        force_401: true,
        ..Default::default()
    });
    app.subscribe(
        "u-logs",
        "https://hooks.example.com/logs2",
        json!({"secret": SECRET}),
    )
    .await;
    eventually(
        Duration::from_secs(10),
        "the token rejection is noticed",
        || async { app.emulator.calls().iter().any(|c| c.status == 401) },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().expect("pid").to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("worker exits")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let logs = reader.await.unwrap();

    assert!(
        !logs.contains(TOKEN),
        "the API token is in the logs:\n{logs}"
    );
    assert!(
        !logs.contains(SECRET),
        "the endpoint secret is in the logs:\n{logs}"
    );
    let lines: Vec<Value> = logs
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not a JSON line ({e}): {l}")))
        .collect();
    assert!(lines
        .iter()
        .all(|l| l["level"].is_string() && l["timestamp"].is_string()));
    // The run really logged at debug, and one line per finished request.
    assert!(
        lines.iter().any(|l| l["level"] == "DEBUG"),
        "no debug line:\n{logs}"
    );
    // Exactly one outcome line per finished request (the unsubscribe may succeed or fail,
    // depending on the worker version; either way it gets its one line).
    let outcome_lines = |id: i64| {
        lines
            .iter()
            .filter(|l| {
                l["request_id"] == json!(id)
                    && (l["message"] == "request finished" || l["message"] == "request failed")
            })
            .collect::<Vec<_>>()
    };
    let lines_of_subscribe = outcome_lines(subscribed);
    assert_eq!(lines_of_subscribe.len(), 1, "{logs}");
    assert_eq!(lines_of_subscribe[0]["outcome"], "succeeded");
    assert_eq!(lines_of_subscribe[0]["action"], "subscribe");
    assert!(lines_of_subscribe[0]["duration_ms"].is_u64());
    assert_eq!(lines_of_subscribe[0]["attempts"], 1);
    assert_eq!(outcome_lines(unsubscribed).len(), 1, "{logs}");
    // The Postgres driver stays quiet at USERHOOKS_LOG=debug (it would print parameters).
    assert!(
        !lines.iter().any(|l| l["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("tokio_postgres"))
            && l["level"] == "DEBUG"),
        "driver debug lines in the logs"
    );
    assert!(
        lines.iter().any(|l| l["level"] == "ERROR"
            && l["message"]
                .as_str()
                .unwrap_or("")
                .contains("rejects the API token")),
        "no error line for the rejected token:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_worker_logs_one_ready_line_with_its_settings_and_no_colour_codes_in_a_pipe() {
    let app = TestApp::builder().without_worker().spawn().await;
    // Trust authentication ignores the password: it is there to prove it is never printed.
    let url = app
        .db
        .url
        .replacen("postgres@", "postgres:pw-do-not-print@", 1);
    let worker = binary::WorkerProcess::spawn(
        &url,
        &app.emulator.api_url(),
        &[
            ("USERHOOKS_METRICS_ADDR", "auto"),
            ("USERHOOKS_LEASE", "45s"),
            ("USERHOOKS_NAME_PREFIX", "uhready"),
        ],
    );
    let addr = worker.metrics_addr.unwrap();
    let port = app.emulator.addr().port();
    let server = url::Url::parse(&app.db.url).unwrap();
    let server = format!(
        "{}:{}",
        server.host_str().unwrap(),
        server.port().unwrap_or(5432)
    );
    eventually(Duration::from_secs(20), "the ready line", || async {
        worker.stderr().contains("worker ready")
    })
    .await;
    let text = worker.stderr();
    let ready: Vec<&str> = text
        .lines()
        .filter(|l| l.contains("worker ready"))
        .collect();
    assert_eq!(ready.len(), 1, "{text}");
    for field in [
        format!("metrics=http://{addr}/metrics"),
        "source_table=public.notifications".to_string(),
        format!("sequin=127.0.0.1:{port}"),
        format!("database `{}`", app.db.name),
        format!("postgres={server}, database"),
        "concurrency=32".to_string(),
        "lease=45s".to_string(),
        "name_prefix=uhready".to_string(),
    ] {
        assert!(ready[0].contains(&field), "{field} missing: {}", ready[0]);
    }
    assert!(!text.contains('\u{1b}'), "colour codes in a pipe: {text:?}");
    assert!(!text.contains("pw-do-not-print"), "{text}");
    assert!(!text.contains(TOKEN), "{text}");
    worker.stop_cleanly().await;
}
