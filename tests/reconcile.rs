//! `userhooks reconcile`: drift made by hand in the emulator is found, and `--repair` fixes it.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use common::{TestApp, TestDb, SEQUIN_DB, TOKEN};
use sequin_emulator::EmulatorHandle;
use serde_json::{json, Value};
use userhooks::reconcile::{reconcile, Options, Report};

async fn api(emulator: &EmulatorHandle, method: &str, path: &str, body: Option<Value>) -> u16 {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut rb = reqwest::Client::new()
        .request(method, format!("{}{}", emulator.api_url(), path))
        .header("Authorization", format!("Bearer {TOKEN}"));
    if let Some(b) = body {
        rb = rb
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let resp = rb.send().await.unwrap();
    let status = resp.status().as_u16();
    assert!(
        status < 300,
        "{path}: {status} {}",
        resp.text().await.unwrap()
    );
    status
}

/// `userhooks reconcile --json` as an operator runs it: exit code and report.
async fn run_cli(app: &TestApp) -> (Option<i32>, Value) {
    let bin = env!("CARGO_BIN_EXE_userhooks");
    let (url, api) = (app.db.url.clone(), app.emulator.api_url());
    let out = tokio::task::spawn_blocking(move || {
        std::process::Command::new(bin)
            .args(["reconcile", "--json"])
            .env("DATABASE_URL", url)
            .env("SEQUIN_API_URL", api)
            .env("SEQUIN_API_TOKEN", TOKEN)
            .env("SEQUIN_DATABASE", SEQUIN_DB)
            .env_remove("SEQUIN_API_TOKEN_FILE")
            .output()
            .expect("run userhooks reconcile")
    })
    .await
    .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let report = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {stdout}\n{}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code(), report)
}

/// Kinds of drift per subscription user ("-" for orphans, with the resource name).
fn kinds(report: &Report) -> BTreeMap<String, BTreeSet<&'static str>> {
    let mut out: BTreeMap<String, BTreeSet<&'static str>> = BTreeMap::new();
    for d in &report.drifts {
        let key = d
            .user_id
            .clone()
            .unwrap_or_else(|| format!("- {}", d.resource));
        out.entry(key).or_default().insert(d.kind);
    }
    out
}

#[tokio::test]
async fn each_kind_of_drift_is_found_and_repair_fixes_it() {
    let mut app = TestApp::builder()
        .emulator(|e| e.tables = vec!["public.notifications".into(), "public.users".into()])
        .config(|c| c.allow_private_urls = true)
        .spawn()
        .await;
    let mut ids = Vec::new();
    for u in 1..=5 {
        let url = format!("http://127.0.0.1:9/hooks/{u}");
        ids.push(app.subscribe(&u.to_string(), &url, json!({})).await);
    }
    for id in ids {
        let row = app.finished(id).await;
        assert_eq!(row.status, "succeeded", "{row:?}");
    }
    app.stop_worker().await;
    let cfg = app.config.clone();
    let emulator = &app.emulator;
    let names: BTreeMap<String, (String, String)> = app
        .subscriptions()
        .await
        .into_iter()
        .map(|s| (s.user_id, (s.sink_name.unwrap(), s.endpoint_name.unwrap())))
        .collect();
    let sink = |u: &str| names[u].0.clone();
    let endpoint = |u: &str| names[u].1.clone();

    let options = Options {
        repair: false,
        concurrency: 4,
    };
    let clean = reconcile(&cfg, &options, |_, _| {}).await.unwrap();
    assert_eq!(clean.checked, 5);
    assert!(clean.drifts.is_empty(), "{:?}", clean.drifts);

    // Drift, by hand. User 5 stays untouched.
    api(emulator, "DELETE", &format!("/sinks/{}", sink("1")), None).await;
    api(
        emulator,
        "PATCH",
        &format!("/sinks/{}", sink("2")),
        Some(json!({"status": "paused", "filter": "none", "annotations": {"user_id": "999"}})),
    )
    .await;
    api(
        emulator,
        "PATCH",
        &format!("/destinations/http_endpoints/{}", endpoint("3")),
        Some(json!({"url": "http://127.0.0.1:9/somewhere-else"})),
    )
    .await;
    api(
        emulator,
        "PATCH",
        &format!("/sinks/{}", sink("3")),
        Some(json!({"database": SEQUIN_DB, "source": {"include_tables": ["public.users"]},
                    "destination": {"type": "webhook", "http_endpoint": endpoint("3"), "batch": true}})),
    )
    .await;
    api(emulator, "DELETE", &format!("/sinks/{}", sink("4")), None).await;
    api(
        emulator,
        "DELETE",
        &format!("/destinations/http_endpoints/{}", endpoint("4")),
        None,
    )
    .await;
    for name in ["userhooks-999", "someone-else"] {
        api(
            emulator,
            "POST",
            "/destinations/http_endpoints",
            Some(json!({"name": format!("{name}-endpoint"), "url": "http://127.0.0.1:9/x"})),
        )
        .await;
        api(
            emulator,
            "POST",
            "/sinks",
            Some(json!({"name": format!("{name}-sink"), "database": SEQUIN_DB,
                        "source": {"include_tables": ["public.notifications"]},
                        "destination": {"type": "webhook", "http_endpoint": format!("{name}-endpoint")}})),
        )
        .await;
    }
    emulator.clear_calls();

    let report = reconcile(&cfg, &options, |_, _| {}).await.unwrap();
    let found = kinds(&report);
    let set = |l: &[&'static str]| l.iter().copied().collect::<BTreeSet<_>>();
    let mut expected = BTreeMap::new();
    expected.insert("1".to_string(), set(&["missing_sink"]));
    expected.insert("2".to_string(), set(&["status", "filter", "annotations"]));
    expected.insert("3".to_string(), set(&["url", "source", "destination"]));
    expected.insert("4".to_string(), set(&["missing_endpoint", "missing_sink"]));
    expected.insert("- userhooks-999-sink".to_string(), set(&["orphan_sink"]));
    expected.insert(
        "- userhooks-999-endpoint".to_string(),
        set(&["orphan_endpoint"]),
    );
    assert_eq!(
        found,
        expected,
        "{}",
        userhooks::reconcile::render(&report, false)
    );
    assert_eq!(report.unresolved(), report.drifts.len());
    // The command: the same report as JSON, and a failing exit code while drift remains.
    let (code, json_report) = run_cli(&app).await;
    assert_eq!(code, Some(1));
    assert_eq!(
        json_report["drifts"].as_array().map(Vec::len),
        Some(report.drifts.len()),
        "{json_report}"
    );
    // Without --repair nothing is written.
    assert!(
        emulator.calls().iter().all(|c| c.method == "GET"),
        "{:?}",
        emulator.calls()
    );

    let repair = Options {
        repair: true,
        concurrency: 4,
    };
    let repaired = reconcile(&cfg, &repair, |_, _| {}).await.unwrap();
    assert_eq!(
        repaired.unresolved(),
        0,
        "{}",
        userhooks::reconcile::render(&repaired, true)
    );
    let after = reconcile(&cfg, &options, |_, _| {}).await.unwrap();
    assert!(
        after.drifts.is_empty(),
        "{}",
        userhooks::reconcile::render(&after, false)
    );
    let (code, json_report) = run_cli(&app).await;
    assert_eq!(code, Some(0), "{json_report}");
    assert_eq!(json_report["drifts"], json!([]));
    assert_eq!(json_report["checked"], 5);
    // Other people's resources are left alone; ours are what the table says.
    let endpoints: Vec<String> = emulator
        .endpoints()
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    assert!(endpoints.contains(&"someone-else-endpoint".to_string()));
    assert!(!endpoints.contains(&"userhooks-999-endpoint".to_string()));
    let s1 = emulator
        .sinks()
        .into_iter()
        .find(|s| s["name"] == sink("1"))
        .expect("user 1's sink recreated");
    assert_eq!(s1["annotations"], json!({"user_id": "1"}));
    assert_eq!(s1["filter"], "userhooks-user-filter");
    assert_eq!(s1["destination"]["batch"], false);
}

fn foreign_names(report: &Report) -> BTreeSet<String> {
    report.foreign.iter().map(|f| f.name.clone()).collect()
}

fn names(items: Vec<Value>) -> BTreeSet<String> {
    items
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect()
}

async fn create_endpoint(emulator: &EmulatorHandle, name: &str) {
    api(
        emulator,
        "POST",
        "/destinations/http_endpoints",
        Some(json!({"name": name, "url": "http://127.0.0.1:9/x"})),
    )
    .await;
}

async fn create_sink(emulator: &EmulatorHandle, name: &str, endpoint: &str, status: &str) {
    api(
        emulator,
        "POST",
        "/sinks",
        Some(
            json!({"name": name, "database": SEQUIN_DB, "status": status,
                    "source": {"include_tables": ["public.notifications"]},
                    "destination": {"type": "webhook", "http_endpoint": endpoint}}),
        ),
    )
    .await;
}

async fn finish(app: &TestApp, action: &str, user: &str, url: Option<&str>) {
    let row = app.run(action, user, url, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repair_touches_only_this_deployments_resources_and_expects_no_sink_while_paused() {
    let mut app = TestApp::spawn().await;
    let cfg = app.config.clone();
    for u in ["1", "2"] {
        finish(
            &app,
            "subscribe",
            u,
            Some(&format!("http://127.0.0.1:9/hooks/{u}")),
        )
        .await;
    }
    let repair = Options {
        repair: true,
        concurrency: 4,
    };

    // Another deployment with the same prefix but its own Sequin database: our sinks are not
    // on its database, so they and their endpoints are foreign to it and left alone.
    let other_db = TestDb::new().await;
    let mut other = cfg.clone();
    other.database_url = other_db.url.clone();
    other.sequin_database = "app-staging".to_string();
    app.emulator.clear_calls();
    let report = reconcile(&other, &repair, |_, _| {}).await.unwrap();
    assert!(report.drifts.is_empty(), "{report:?}");
    let ours = [
        "userhooks-1-endpoint",
        "userhooks-1-sink",
        "userhooks-2-endpoint",
        "userhooks-2-sink",
    ];
    assert_eq!(
        foreign_names(&report),
        ours.iter().map(|n| n.to_string()).collect()
    );
    let sink_1 = report
        .foreign
        .iter()
        .find(|f| f.name == "userhooks-1-sink")
        .unwrap();
    assert!(sink_1.reason.contains("\"app\""), "{sink_1:?}");
    assert!(
        app.emulator.calls().iter().all(|c| c.method == "GET"),
        "{:?}",
        app.emulator.calls()
    );

    finish(&app, "pause", "2", None).await;
    app.stop_worker().await;
    let emulator = &app.emulator;
    // Look-alikes of ours that are not: another prefix that starts with ours, another name.
    create_endpoint(emulator, "userhooks-staging-1-endpoint").await;
    create_sink(
        emulator,
        "userhooks-staging-1-sink",
        "userhooks-staging-1-endpoint",
        "active",
    )
    .await;
    create_endpoint(emulator, "other-1-endpoint").await;
    // Ours, owned by no subscription.
    create_endpoint(emulator, "userhooks-999-endpoint").await;

    let report = reconcile(&cfg, &repair, |_, _| {}).await.unwrap();
    let render = userhooks::reconcile::render(&report, true);
    let kinds: Vec<(&str, &str)> = report
        .drifts
        .iter()
        .map(|d| (d.kind, d.resource.as_str()))
        .collect();
    // The paused subscription has no sink, and none is created for it.
    assert_eq!(
        kinds,
        [("orphan_endpoint", "userhooks-999-endpoint")],
        "{render}"
    );
    assert_eq!(report.unresolved(), 0, "{render}");
    let foreign = [
        "other-1-endpoint",
        "userhooks-staging-1-endpoint",
        "userhooks-staging-1-sink",
    ];
    assert_eq!(
        foreign_names(&report),
        foreign.iter().map(|n| n.to_string()).collect(),
        "{render}"
    );
    assert!(
        render.contains("foreign sink     userhooks-staging-1-sink"),
        "{render}"
    );
    let endpoints = names(emulator.endpoints());
    for name in [
        "userhooks-staging-1-endpoint",
        "other-1-endpoint",
        "userhooks-2-endpoint",
    ] {
        assert!(
            endpoints.contains(name),
            "{name} was deleted: {endpoints:?}"
        );
    }
    assert!(!endpoints.contains("userhooks-999-endpoint"));
    assert_eq!(
        names(emulator.sinks()),
        ["userhooks-1-sink", "userhooks-staging-1-sink"]
            .iter()
            .map(|n| n.to_string())
            .collect()
    );
    let (code, json_report) = run_cli(&app).await;
    assert_eq!(code, Some(0), "{json_report}");
    assert_eq!(json_report["foreign"].as_array().map(Vec::len), Some(3));

    // A sink left `paused` in Sequin for a paused subscription (an older userhooks did
    // that) is drift, and the repair deletes it.
    create_sink(
        emulator,
        "userhooks-2-sink",
        "userhooks-2-endpoint",
        "paused",
    )
    .await;
    let check = Options {
        repair: false,
        concurrency: 4,
    };
    let report = reconcile(&cfg, &check, |_, _| {}).await.unwrap();
    let kinds: Vec<(&str, &str)> = report
        .drifts
        .iter()
        .map(|d| (d.kind, d.resource.as_str()))
        .collect();
    assert_eq!(kinds, [("paused_sink", "userhooks-2-sink")]);
    let report = reconcile(&cfg, &repair, |_, _| {}).await.unwrap();
    assert_eq!(report.unresolved(), 0, "{report:?}");
    assert!(!names(emulator.sinks()).contains("userhooks-2-sink"));
}

/// `GET /api/sinks` renders the health of every sink: with thousands of sinks it outlasts
/// the per-call timeout, so list calls get a longer one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_list_of_sinks_does_not_time_out() {
    let mut faults = sequin_emulator::Faults::default();
    faults.routes.insert(
        "list_sinks".to_string(),
        sequin_emulator::RouteFaults {
            latency_ms: 1500,
            ..Default::default()
        },
    );
    let app = TestApp::builder()
        .config(|c| c.http_timeout = Duration::from_secs(1))
        .faults(faults)
        .without_worker()
        .spawn()
        .await;
    let cfg = &app.config;
    let options = Options {
        repair: false,
        concurrency: 4,
    };
    let report = reconcile(cfg, &options, |_, _| {}).await;
    assert!(report.is_ok(), "{:?}", report.err());
}
