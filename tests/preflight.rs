//! What the worker checks before it works, and what it leaves alone: the filter function is
//! written only when missing or different, deletes are asked for only when the table can
//! deliver them, and `userhooks doctor` (and the worker's start) name what to fix.

mod common;

use std::time::Duration;

use common::binary::run_to_end;
use common::*;
use sequin_emulator::{EmulatorConfig, EmulatorHandle, Faults};
use serde_json::{json, Value};
use userhooks::config::Secret;
use userhooks::doctor::{self, Status};
use userhooks::metrics::Metrics;
use userhooks::provision::{filter_function_code, filter_function_yaml};
use userhooks::sequin::SequinClient;

const FUNCTION: &str = "userhooks-user-filter";

fn sequin(emulator: &EmulatorHandle) -> SequinClient {
    SequinClient::new(
        &emulator.api_url(),
        Secret::new(TOKEN),
        Duration::from_secs(5),
        Metrics::new(),
    )
}

/// Sequin calls that change something (everything but GET).
fn writes(emulator: &EmulatorHandle) -> Vec<String> {
    emulator
        .calls()
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| format!("{} {}", c.method, c.path))
        .collect()
}

fn stored_code(emulator: &EmulatorHandle) -> String {
    let functions = emulator.functions();
    assert_eq!(functions.len(), 1, "{functions:?}");
    functions[0]["code"].as_str().unwrap().to_string()
}

async fn subscribe(app: &TestApp, user: &str, options: Value) -> RequestRow {
    let url = format!("https://hooks.example.com/{user}");
    app.finished(app.subscribe(user, &url, options).await).await
}

// ------------------------------------------------------------------ the filter function

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workers_leave_an_identical_filter_function_alone() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    sequin(&app.emulator)
        .config_apply(&filter_function_yaml(FUNCTION, "user_id"))
        .await
        .unwrap();
    app.emulator.clear_calls();

    app.start_worker().await;
    assert_eq!(writes(&app.emulator), Vec::<String>::new());
    assert_eq!(app.calls("config_export"), 1, "read back once");
    // Scale-out: a second worker while the first runs.
    let second = app.another_worker().await;
    assert_eq!(writes(&app.emulator), Vec::<String>::new());
    assert_eq!(app.calls("config_export"), 2);
    // Requests do not write it either.
    let row = subscribe(&app, "u1", json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(app.calls("config_apply"), 0);
    assert_eq!(app.calls("config_export"), 2, "cached per process");
    second.stop().await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_different_filter_function_is_rewritten_exactly_once() {
    let mut app = TestApp::builder().without_worker().spawn().await;
    sequin(&app.emulator)
        .config_apply(&filter_function_yaml(FUNCTION, "owner_id"))
        .await
        .unwrap();
    app.emulator.clear_calls();

    app.start_worker().await;
    assert_eq!(app.calls("config_apply"), 1);
    assert_eq!(stored_code(&app.emulator), filter_function_code("user_id"));
    for user in ["u1", "u2"] {
        assert_eq!(subscribe(&app, user, json!({})).await.status, "succeeded");
    }
    // A worker started after it finds the function current.
    let later = app.another_worker().await;
    assert_eq!(app.calls("config_apply"), 1);
    app.stop().await;
    later.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_filter_function_is_created_once() {
    let app = TestApp::spawn().await;
    assert_eq!(app.calls("config_apply"), 1);
    assert_eq!(stored_code(&app.emulator), filter_function_code("user_id"));
    for user in ["u1", "u2"] {
        assert_eq!(subscribe(&app, user, json!({})).await.status, "succeeded");
    }
    assert_eq!(app.calls("config_apply"), 1);
    app.stop().await;
}

// ------------------------------------------------------------------ replica identity

async fn example_app(db: &TestDb) {
    userhooks::db::create_example_app(&db.url)
        .await
        .expect("example tables");
}

async fn stored_actions(app: &TestApp, user: &str) -> Vec<String> {
    app.client()
        .await
        .query_one(
            "select actions from userhooks.webhook_subscriptions where user_id = $1",
            &[&user],
        )
        .await
        .unwrap()
        .get(0)
}

fn sink_actions(emulator: &EmulatorHandle, user: &str) -> Value {
    let sinks = emulator.sinks();
    let sink = sinks
        .iter()
        .find(|s| s["annotations"]["user_id"] == user)
        .unwrap_or_else(|| panic!("no sink for {user}"));
    sink["actions"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deletes_are_asked_for_only_while_the_table_has_replica_identity_full() {
    const FIX: &str = "ALTER TABLE public.notifications REPLICA IDENTITY FULL";
    let mut app = TestApp::builder().without_worker().spawn().await;
    example_app(&app.db).await;
    app.client()
        .await
        .batch_execute("alter table public.notifications replica identity default")
        .await
        .unwrap();
    app.start_worker().await;
    let emulator = &app.emulator;

    // No actions named: insert and update only, and the result says why and what to do.
    let row = subscribe(&app, "u1", json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(sink_actions(emulator, "u1"), json!(["insert", "update"]));
    assert_eq!(stored_actions(&app, "u1").await, ["insert", "update"]);
    let warnings = row.result.unwrap()["warnings"].clone();
    assert_eq!(warnings.as_array().map(Vec::len), Some(1), "{warnings}");
    let warning = warnings[0].as_str().unwrap();
    assert!(warning.contains(FIX), "{warning}");
    assert!(warning.contains("REPLICA IDENTITY DEFAULT"), "{warning}");

    // Asking for delete explicitly fails, on subscribe and on update; nothing is created.
    let sinks_before = emulator.sinks().len();
    let row = subscribe(&app, "u2", json!({"actions": ["insert", "delete"]})).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(
        row.result.as_ref().unwrap()["error"]["kind"],
        "invalid_request"
    );
    assert!(row.last_error.as_deref().unwrap().contains(FIX), "{row:?}");
    assert_eq!(emulator.sinks().len(), sinks_before);
    let row = app
        .run(
            "update",
            "u1",
            None,
            json!({"actions": ["insert", "update", "delete"]}),
        )
        .await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(row.last_error.as_deref().unwrap().contains(FIX), "{row:?}");
    assert_eq!(sink_actions(emulator, "u1"), json!(["insert", "update"]));
    // Named actions without delete are taken as they are, without a warning.
    let row = subscribe(&app, "u3", json!({"actions": ["insert"]})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert!(row.result.unwrap().get("warnings").is_none());
    app.stop_worker().await;

    // With the table FULL, a default subscribe asks for deletes too.
    app.client()
        .await
        .batch_execute(&format!("{FIX};"))
        .await
        .unwrap();
    app.start_worker().await;
    let emulator = &app.emulator;
    let row = subscribe(&app, "u4", json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert!(row.result.unwrap().get("warnings").is_none());
    assert_eq!(
        sink_actions(emulator, "u4"),
        json!(["insert", "update", "delete"])
    );
    assert_eq!(
        stored_actions(&app, "u4").await,
        ["insert", "update", "delete"]
    );
    app.stop().await;
}

// ------------------------------------------------------------------ doctor and start-up

/// A database where every check passes: example tables (REPLICA IDENTITY FULL) in the
/// publication the emulator's database reports.
async fn healthy_db() -> TestDb {
    let db = TestDb::new().await;
    example_app(&db).await;
    db.client()
        .await
        .batch_execute("create publication sequin_pub for table public.notifications")
        .await
        .unwrap();
    db
}

fn line_of<'a>(stdout: &'a str, prefix: &str) -> &'a str {
    stdout
        .lines()
        .find(|l| l.starts_with(prefix))
        .unwrap_or_else(|| panic!("no line starting {prefix:?} in:\n{stdout}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_when_all_is_well_and_names_a_wrong_sequin_database_like_the_worker() {
    let db = healthy_db().await;
    let emulator = start_emulator().await;
    let api = emulator.api_url();

    let good = run_to_end(&["doctor"], &db.url, &api, &[]).await;
    assert!(good.success(), "{good:?}");
    assert!(
        good.stdout
            .lines()
            .all(|l| l.starts_with("ok   ") || l.starts_with("warn ")),
        "{}",
        good.stdout
    );
    line_of(&good.stdout, "ok   SEQUIN_DATABASE `app`");
    line_of(
        &good.stdout,
        "ok   source table public.notifications is in Sequin's publication `sequin_pub`",
    );
    line_of(
        &good.stdout,
        "ok   live subscriptions on public.notifications: 0",
    );
    assert_eq!(
        writes(&emulator),
        ["POST /api/config/plan"],
        "doctor only dry-runs"
    );

    let wrong = [("SEQUIN_DATABASE", "nope")];
    let bad = run_to_end(&["doctor"], &db.url, &api, &wrong).await;
    assert!(!bad.success(), "{bad:?}");
    let line = line_of(&bad.stdout, "FAIL SEQUIN_DATABASE `nope`");
    assert!(line.ends_with("Sequin has: app"), "{line}");

    let json = run_to_end(&["doctor", "--json"], &db.url, &api, &wrong).await;
    assert!(!json.success());
    let report: Value = serde_json::from_str(&json.stdout).expect("one JSON document");
    assert_eq!(report["ok"], false);
    let check = report["checks"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["check"] == "sequin_database")
        .expect("a sequin_database check");
    assert_eq!(check["status"], "fail");
    let good_json = run_to_end(&["doctor", "--json"], &db.url, &api, &[]).await;
    assert!(good_json.success());
    let report: Value = serde_json::from_str(&good_json.stdout).expect("JSON");
    assert_eq!(report["ok"], true);

    // The worker refuses to start, in the same words.
    let worker = run_to_end(&["run"], &db.url, &api, &wrong).await;
    assert!(!worker.success(), "{worker:?}");
    let words = line.trim_start_matches("FAIL ");
    assert!(
        worker.stderr.contains(words),
        "{words}\nnot in:\n{}",
        worker.stderr
    );
    assert_eq!(count_calls(&emulator, "create_sink"), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_functions_doctor_fails_and_the_worker_refuses_to_start_in_the_same_words() {
    let db = healthy_db().await;
    let emulator = start_emulator_with(EmulatorConfig {
        token: TOKEN.to_string(),
        database: SEQUIN_DB.to_string(),
        functions_enabled: false,
        ..EmulatorConfig::default()
    })
    .await;
    let config = config(&db, &emulator);
    let report = doctor::run(&config).await;
    assert!(!report.ok);
    let check = report
        .checks
        .iter()
        .find(|c| c.check == "functions")
        .unwrap();
    assert_eq!(check.status, Status::Fail, "{check:?}");
    assert!(
        check.message().contains("Filter functions are not enabled"),
        "{check:?}"
    );
    let err = match userhooks::build(config).await {
        Ok(_) => panic!("a worker started without functions"),
        Err(err) => err.to_string(),
    };
    assert_eq!(err, check.message());
    assert!(emulator.functions().is_empty());
}

fn status_of(report: &doctor::Report, check: &str) -> (Status, String) {
    let found = report
        .checks
        .iter()
        .find(|c| c.check == check)
        .unwrap_or_else(|| panic!("no {check} in {report:?}"));
    (found.status, found.line())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_names_the_fix_of_each_problem() {
    let emulator = start_emulator().await;

    // Unmigrated: the schema fails with the command to run; the rest that needs it is skipped.
    let empty = TestDb::unmigrated().await;
    let report = doctor::run(&config(&empty, &emulator)).await;
    let (status, line) = status_of(&report, "schema");
    assert_eq!(status, Status::Fail);
    assert!(line.contains("run `userhooks migrate` first"), "{line}");
    assert_eq!(status_of(&report, "live_subscriptions").0, Status::Skip);

    // Table not in Sequin's publication; replica identity DEFAULT is only a warning.
    let db = TestDb::new().await;
    example_app(&db).await;
    db.client()
        .await
        .batch_execute(
            "create publication sequin_pub for table public.users;
             alter table public.notifications replica identity default",
        )
        .await
        .unwrap();
    let report = doctor::run(&config(&db, &emulator)).await;
    let (status, line) = status_of(&report, "source_table");
    assert_eq!(status, Status::Fail);
    assert!(
        line.ends_with("run ALTER PUBLICATION sequin_pub ADD TABLE public.notifications"),
        "{line}"
    );
    let (status, line) = status_of(&report, "replica_identity");
    assert_eq!(status, Status::Warn);
    assert!(
        line.ends_with("run ALTER TABLE public.notifications REPLICA IDENTITY FULL"),
        "{line}"
    );
    assert_eq!(report.failed(), 1, "{}", report.render());

    // Capacity: a warning above 1,000 live subscriptions on the table, not at 1,000.
    let client = db.client().await;
    client
        .batch_execute(
            "insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table, status)
             select g::text, 'https://h.example/' || g, 'public.notifications', 'active'
               from generate_series(1, 1000) g;
             insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table, status)
             values ('gone', 'https://h.example/gone', 'public.notifications', 'deleted'),
                    ('other', 'https://h.example/other', 'public.other', 'active')",
        )
        .await
        .unwrap();
    let report = doctor::run(&config(&db, &emulator)).await;
    let (status, line) = status_of(&report, "live_subscriptions");
    assert_eq!(
        (status, line.as_str()),
        (
            Status::Ok,
            "ok   live subscriptions on public.notifications: 1000"
        )
    );
    client
        .batch_execute(
            "insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table, status)
             values ('one-more', 'https://h.example/1001', 'public.notifications', 'paused')",
        )
        .await
        .unwrap();
    let report = doctor::run(&config(&db, &emulator)).await;
    let (status, line) = status_of(&report, "live_subscriptions");
    assert_eq!(status, Status::Warn);
    assert!(
        line.starts_with("warn live subscriptions on public.notifications: 1001"),
        "{line}"
    );
    assert!(line.contains("relay mode"), "{line}");

    // A rejected token, and an unreachable Sequin, fail doctor...
    emulator.set_faults(Faults {
        force_401: true,
        ..Faults::default()
    });
    let report = doctor::run(&config(&db, &emulator)).await;
    assert_eq!(status_of(&report, "sequin").0, Status::Ok);
    let (status, line) = status_of(&report, "token");
    assert_eq!(status, Status::Fail);
    assert!(line.contains("SEQUIN_API_TOKEN"), "{line}");
    // ...but do not keep the worker from starting: it waits them out.
    let app = userhooks::build(config(&db, &emulator))
        .await
        .expect("a worker starts while Sequin rejects the token");
    assert_eq!(app.metrics().sequin_auth_ok.get(), 0);
    emulator.set_faults(Faults::default());

    let mut down = config(&db, &emulator);
    down.sequin_api_url = format!("http://127.0.0.1:{}/api", binary::free_port());
    let report = doctor::run(&down).await;
    let (status, line) = status_of(&report, "sequin");
    assert_eq!(status, Status::Fail);
    assert!(line.contains("SEQUIN_API_URL"), "{line}");
    assert_eq!(status_of(&report, "sequin_database").0, Status::Skip);
    userhooks::build(down)
        .await
        .expect("a worker starts while Sequin is down");
}
