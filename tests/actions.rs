//! Every action after subscribe: unsubscribe, backfill, update, pause/resume, transforms,
//! per-user ordering, retention, SQL helpers.

mod common;

use std::time::Duration;

use common::*;
use sequin_emulator::{Faults, RouteFaults};
use serde_json::{json, Value};

const WAIT: Duration = Duration::from_secs(15);

async fn apply_transform(app: &TestApp, name: &str) {
    let yaml = format!(
        "functions:\n  - name: \"{name}\"\n    type: \"transform\"\n    code: |-\n      def transform(action, record, changes, metadata) do\n        %{{message: record[\"message\"]}}\n      end\n"
    );
    let response = reqwest::Client::new()
        .post(format!("{}/config/apply", app.emulator.api_url()))
        .bearer_auth(TOKEN)
        .header("accept", "application/json")
        .json(&json!({ "yaml": yaml }))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200, "{}", response.text().await.unwrap());
}

fn sink_named<'a>(sinks: &'a [Value], name: &str) -> &'a Value {
    sinks
        .iter()
        .find(|s| s["name"] == name)
        .expect("sink exists")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_deletes_the_sink_then_the_endpoint() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    app.emulator.clear_calls();

    let row = app
        .run(
            "unsubscribe",
            "u1",
            Some("https://hooks.example.com/a"),
            json!({}),
        )
        .await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(
        row.result.unwrap(),
        json!({"removed": 1, "subscription_ids": [sub["subscription_id"]]})
    );
    assert!(app.sinks().is_empty());
    assert!(app.endpoints().is_empty());
    let order: Vec<String> = app
        .emulator
        .calls()
        .into_iter()
        .map(|c| c.operation)
        .filter(|op| op.starts_with("delete_"))
        .collect();
    assert_eq!(order, ["delete_sink", "delete_endpoint"]);
    assert_eq!(
        app.scalar("select count(*) from userhooks.webhook_subscriptions where status = 'deleted' and deleted_at is not null")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_twice_succeeds_with_nothing_removed() {
    let app = TestApp::spawn().await;
    app.subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    app.run(
        "unsubscribe",
        "u1",
        Some("https://hooks.example.com/a"),
        json!({}),
    )
    .await;
    let again = app
        .run(
            "unsubscribe",
            "u1",
            Some("https://hooks.example.com/a"),
            json!({}),
        )
        .await;
    assert_eq!(again.status, "succeeded");
    assert_eq!(again.attempts, 1, "no retries for nothing to do");
    assert_eq!(again.result.unwrap()["removed"], 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_without_url_removes_every_url_of_that_user_only() {
    let app = TestApp::spawn().await;
    app.subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    app.subscribed("u1", "https://hooks.example.com/b", json!({}))
        .await;
    let other = app
        .subscribed("u2", "https://hooks.example.com/c", json!({}))
        .await;

    let row = app.run("unsubscribe", "u1", None, json!({})).await;
    assert_eq!(row.result.unwrap()["removed"], 2);
    let sinks = app.sinks();
    assert_eq!(sinks.len(), 1);
    assert_eq!(sinks[0]["id"], other["sink_id"]);
    assert_eq!(app.endpoints().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_by_subscription_id_of_another_user_is_not_found() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    let sub_id = sub["subscription_id"].as_i64().unwrap();
    let client = app.client().await;
    let id: i64 = client
        .query_one(
            "insert into userhooks.subscription_requests (action, user_id, subscription_id)
             values ('unsubscribe', 'intruder', $1) returning id",
            &[&sub_id],
        )
        .await
        .unwrap()
        .get(0);
    let row = app.finished(id).await;
    assert_eq!(row.status, "failed");
    assert!(row.last_error.unwrap().contains("no live subscription"));
    assert_eq!(app.sinks().len(), 1, "another user's sink is untouched");

    let id: i64 = client
        .query_one(
            "insert into userhooks.subscription_requests (action, user_id, subscription_id)
             values ('unsubscribe', 'u1', $1) returning id",
            &[&sub_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(app.finished(id).await.status, "succeeded");
    assert!(app.sinks().is_empty());
    app.stop().await;
}

/// An app whose emulator's backfills find `rows` rows and process `per_sec` a second.
fn slow_backfills(rows: u64, per_sec: u64) -> TestAppBuilder {
    TestApp::builder().emulator(|e| {
        e.backfill_rows = rows;
        e.backfill_rows_per_sec = per_sec;
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_progress_is_tracked_to_completed_and_announced() {
    let app = slow_backfills(60, 40)
        .config(|c| c.backfill_poll_interval = Duration::from_millis(200))
        .spawn()
        .await;
    let mut done = listen(&app.db, "userhooks_backfill_done").await;
    let sub = app
        .subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;

    let row = app.run("backfill", "u1", None, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let result = row.result.unwrap();
    assert_eq!(result["subscription_id"], sub["subscription_id"]);
    let backfill_id = result["backfill_id"].as_i64().unwrap();

    // Progress is visible before the end.
    eventually(WAIT, "partial progress recorded", || async {
        let n = app
            .scalar(&format!(
                "select coalesce(rows_processed_count, 0) from userhooks.backfills where id = {backfill_id}"
            ))
            .await;
        n > 0 && n < 60
    })
    .await;
    let (_, payload) = tokio::time::timeout(WAIT, done.recv())
        .await
        .unwrap()
        .unwrap();
    let payload: Value = serde_json::from_str(&payload).unwrap();
    assert_eq!(
        payload,
        json!({"id": backfill_id, "subscription_id": sub["subscription_id"], "state": "completed"})
    );
    let row = app
        .client()
        .await
        .query_one(
            "select state, rows_initial_count, rows_processed_count, completed_at is not null
               from userhooks.backfills where id = $1",
            &[&backfill_id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    let emulated = &app.emulator.backfills()[0];
    assert_eq!(
        Some(row.get::<_, i64>(1)),
        emulated["rows_initial_count"].as_i64()
    );
    assert_eq!(
        Some(row.get::<_, i64>(2)),
        emulated["rows_processed_count"].as_i64()
    );
    assert!(row.get::<_, bool>(3));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn second_backfill_while_one_runs_reports_the_running_one() {
    let app = slow_backfills(1000, 1).spawn().await;
    app.subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    let first = app
        .run("backfill", "u1", None, json!({}))
        .await
        .result
        .unwrap();
    let second = app.run("backfill", "u1", None, json!({})).await;
    assert_eq!(second.status, "succeeded");
    let second = second.result.unwrap();
    assert_eq!(second["already_running"], true);
    assert_eq!(second["backfill_id"], first["backfill_id"]);
    assert_eq!(app.calls("create_backfill"), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_tracking_resumes_after_a_worker_restart() {
    let mut app = slow_backfills(40, 20)
        .config(|c| c.backfill_poll_interval = Duration::from_millis(200))
        .spawn()
        .await;
    app.subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    app.run("backfill", "u1", None, json!({})).await;
    app.stop_worker().await;
    assert_eq!(
        app.scalar("select count(*) from userhooks.backfills where state = 'active'")
            .await,
        1
    );
    app.start_worker().await;
    eventually(WAIT, "backfill completed after restart", || async {
        app.scalar("select count(*) from userhooks.backfills where state = 'completed' and rows_processed_count = 40")
            .await
            == 1
    })
    .await;
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_for_a_user_without_subscription_fails_clearly() {
    let app = TestApp::spawn().await;
    let row = app.run("backfill", "nobody", None, json!({})).await;
    assert_eq!(row.status, "failed");
    assert_eq!(row.attempts, 1);
    assert!(row.last_error.unwrap().contains("has no live subscription"));
    assert_eq!(app.calls("create_backfill"), 0);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_backfill_option_starts_one() {
    let app = TestApp::spawn().await;
    let result = app
        .subscribed(
            "u1",
            "https://hooks.example.com/a",
            json!({"backfill": true}),
        )
        .await;
    assert!(result["backfill_id"].as_i64().is_some(), "{result}");
    let backfills = app.emulator.backfills();
    assert_eq!(backfills.len(), 1);
    assert_eq!(backfills[0]["id"], result["sequin_backfill_id"]);
    assert_eq!(backfills[0]["sink_consumer"], result["sink_name"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_transform_attaches_it_to_the_sink() {
    let app = TestApp::spawn().await;
    apply_transform(&app, "webhook_transform").await;
    let result = app
        .subscribed(
            "u1",
            "https://hooks.example.com/a",
            json!({"transform": "webhook_transform"}),
        )
        .await;
    let sinks = app.sinks();
    assert_eq!(
        sink_named(&sinks, result["sink_name"].as_str().unwrap())["transform"],
        "webhook_transform"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_with_unknown_transform_fails_with_sequins_message_and_leaves_nothing() {
    let app = TestApp::spawn().await;
    let row = app
        .run(
            "subscribe",
            "u1",
            Some("https://hooks.example.com/a"),
            json!({"transform": "nope"}),
        )
        .await;
    assert_eq!(row.status, "failed");
    assert!(row
        .last_error
        .unwrap()
        .contains("Function 'nope' not found."));
    assert!(app.sinks().is_empty());
    assert!(app.endpoints().is_empty(), "compensated");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_of_the_url_changes_the_endpoint() {
    let app = TestApp::spawn().await;
    app.subscribed("u1", "https://hooks.example.com/old", json!({}))
        .await;
    let row = app
        .run(
            "update",
            "u1",
            None,
            json!({"webhook_url": "https://hooks.example.com/new"}),
        )
        .await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(row.result.unwrap()["changed"], json!(["webhook_url"]));
    assert_eq!(app.endpoints()[0]["url"], "https://hooks.example.com/new");
    assert_eq!(app.calls("update_sink"), 0);
    assert_eq!(
        app.scalar("select count(*) from userhooks.webhook_subscriptions where endpoint = 'https://hooks.example.com/new' and status = 'active'")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn update_that_changes_nothing_makes_no_sequin_update_call() {
    let app = TestApp::spawn().await;
    apply_transform(&app, "webhook_transform").await;
    app.subscribed(
        "u1",
        "https://hooks.example.com/a",
        json!({"transform": "webhook_transform", "actions": ["insert"]}),
    )
    .await;
    app.emulator.clear_calls();
    let row = app.run("update",
        "u1",
        Some("https://hooks.example.com/a"),
        json!({"webhook_url": "https://hooks.example.com:443/a", "transform": "webhook_transform", "actions": ["insert"]}),
    )
    .await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(row.result.unwrap()["changed"], json!([]));
    assert_eq!(app.calls("update_sink"), 0);
    assert_eq!(app.calls("update_endpoint"), 0);

    // A real change is sent, and only the changed field.
    let row = app
        .run("update", "u1", None, json!({"transform": "none"}))
        .await;
    assert_eq!(row.result.unwrap()["changed"], json!(["transform"]));
    let updates: Vec<_> = app
        .emulator
        .calls()
        .into_iter()
        .filter(|c| c.operation == "update_sink")
        .collect();
    assert_eq!(updates.len(), 1);
    assert_eq!(updates[0].body, Some(json!({"transform": "none"})));
    assert_eq!(app.sinks()[0]["transform"], "none");
    app.stop().await;
}

/// The subscription's status and sink id.
async fn subscription_row(app: &TestApp, id: &Value) -> (String, Option<String>) {
    let sub = app.subscription(id).await;
    (sub.status, sub.sink_id)
}

/// Sinks with this name in the emulator.
fn sinks_named(app: &TestApp, name: &str) -> Vec<Value> {
    app.sinks()
        .into_iter()
        .filter(|s| s["name"] == name)
        .collect()
}

/// No PUT or PATCH of a sink: each one (but to `disabled`) restarts Sequin's replication.
fn assert_no_sink_update(app: &TestApp) {
    let updates: Vec<String> = app
        .emulator
        .calls()
        .iter()
        .filter(|c| (c.method == "PUT" || c.method == "PATCH") && c.path.starts_with("/api/sinks"))
        .map(|c| format!("{} {}", c.method, c.path))
        .collect();
    assert!(updates.is_empty(), "sink updates: {updates:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pause_deletes_the_sink_and_resume_creates_it_again_without_a_sink_update() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribed(
            "u1",
            "https://hooks.example.com/a",
            json!({"actions": ["insert"]}),
        )
        .await;
    let name = sub["sink_name"].as_str().unwrap().to_string();
    let endpoints = app.endpoints().len();
    app.emulator.clear_calls();

    let row = app.run("pause", "u1", None, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(row.result.unwrap()["changed"], json!(["status"]));
    // No sink at all: not `paused` (routed and buffering), not `disabled`.
    assert!(sinks_named(&app, &name).is_empty(), "{:?}", app.sinks());
    assert!(app.sinks().iter().all(|s| s["status"] != "paused"));
    assert_eq!(app.endpoints().len(), endpoints, "the endpoint stays");
    assert_eq!(
        subscription_row(&app, &sub["subscription_id"]).await,
        ("paused".to_string(), None)
    );

    let row = app.run("resume", "u1", None, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let result = row.result.unwrap();
    let sinks = sinks_named(&app, &name);
    assert_eq!(sinks.len(), 1, "{sinks:?}");
    assert_eq!(sinks[0]["status"], "active");
    assert_eq!(sinks[0]["annotations"], json!({"user_id": "u1"}));
    assert_eq!(
        sinks[0]["actions"],
        json!(["insert"]),
        "recorded fields are kept"
    );
    assert_ne!(sinks[0]["id"], sub["sink_id"], "a new sink");
    assert_eq!(result["sink_id"], sinks[0]["id"]);
    assert_eq!(
        subscription_row(&app, &sub["subscription_id"]).await,
        (
            "active".to_string(),
            sinks[0]["id"].as_str().map(String::from)
        )
    );
    assert!(result.get("backfill_id").is_none(), "{result}");
    assert_no_sink_update(&app);

    // Resuming what runs is a no-op without a Sequin call.
    app.emulator.clear_calls();
    let row = app.run("resume", "u1", None, json!({})).await;
    assert_eq!(row.result.unwrap()["changed"], json!([]));
    assert_eq!(app.emulator.call_count(), 0, "{:?}", app.emulator.calls());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_with_replay_starts_a_backfill_of_the_new_sink() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    let name = sub["sink_name"].as_str().unwrap().to_string();
    assert_eq!(
        app.run("pause", "u1", None, json!({})).await.status,
        "succeeded"
    );
    // A paused subscription has no sink to backfill: say what to do instead.
    let row = app.run("backfill", "u1", None, json!({})).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(row.last_error.unwrap().contains("\"replay\": true"));

    let row = app.run("resume", "u1", None, json!({"replay": true})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let result = row.result.unwrap();
    let backfills = app.emulator.backfills();
    assert_eq!(backfills.len(), 1, "{backfills:?}");
    assert_eq!(result["sequin_backfill_id"], backfills[0]["id"]);
    let sink = &sinks_named(&app, &name)[0];
    assert_eq!(backfills[0]["sink_consumer"], sink["name"], "{backfills:?}");
    let recorded = app
        .scalar(&format!(
            "select id from userhooks.backfills where sequin_backfill_id = '{}'",
            backfills[0]["id"].as_str().unwrap()
        ))
        .await;
    assert_eq!(result["backfill_id"], json!(recorded));
    assert_no_sink_update(&app);

    // A replay option that is not a boolean fails the request, and leaves it paused.
    assert_eq!(
        app.run("pause", "u1", None, json!({})).await.status,
        "succeeded"
    );
    let row = app
        .run("resume", "u1", None, json!({"replay": "yes"}))
        .await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert!(sinks_named(&app, &name).is_empty());
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_subscription_can_be_updated_and_unsubscribed() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    let name = sub["sink_name"].as_str().unwrap().to_string();
    assert_eq!(
        app.run("pause", "u1", None, json!({})).await.status,
        "succeeded"
    );
    // Update while paused: recorded, and used when the sink is created again.
    app.emulator.clear_calls();
    let row = app
        .run(
            "update",
            "u1",
            None,
            json!({"actions": ["insert", "update"]}),
        )
        .await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(app.calls("update_sink"), 0);
    assert!(sinks_named(&app, &name).is_empty());
    assert_eq!(
        app.run("resume", "u1", None, json!({})).await.status,
        "succeeded"
    );
    assert_eq!(
        sinks_named(&app, &name)[0]["actions"],
        json!(["insert", "update"])
    );

    assert_eq!(
        app.run("pause", "u1", None, json!({})).await.status,
        "succeeded"
    );
    app.emulator.clear_calls();
    let row = app.run("unsubscribe", "u1", None, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(row.result.unwrap()["removed"], 1);
    // The sink was already gone: its DELETE answered 404, which counts as gone.
    let deletes: Vec<(String, u16)> = app
        .emulator
        .calls()
        .iter()
        .filter(|c| c.method == "DELETE")
        .map(|c| (c.operation.clone(), c.status))
        .collect();
    assert_eq!(
        deletes,
        [
            ("delete_sink".to_string(), 404),
            ("delete_endpoint".to_string(), 200)
        ]
    );
    assert!(app.endpoints().is_empty() && app.sinks().is_empty());
    assert_eq!(
        subscription_row(&app, &sub["subscription_id"]).await.0,
        "deleted"
    );
    app.stop().await;
}

/// A subscription paused by an older userhooks has a sink in Sequin's `paused` status:
/// pausing again removes it, and resume replaces such a sink instead of updating it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sinks_left_paused_in_sequin_are_removed_or_replaced_not_updated() {
    let app = TestApp::spawn().await;
    let sub = app
        .subscribed("u1", "https://hooks.example.com/a", json!({}))
        .await;
    let name = sub["sink_name"].as_str().unwrap().to_string();
    let legacy_pause = || async {
        let response = reqwest::Client::new()
            .patch(format!("{}/sinks/{name}", app.emulator.api_url()))
            .bearer_auth(TOKEN)
            .header("accept", "application/json")
            .json(&json!({"status": "paused"}))
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        app.client()
            .await
            .execute(
                "update userhooks.webhook_subscriptions set status = 'paused'",
                &[],
            )
            .await
            .unwrap();
    };
    legacy_pause().await;
    app.emulator.clear_calls();
    let row = app.run("pause", "u1", None, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert!(sinks_named(&app, &name).is_empty(), "{:?}", app.sinks());

    assert_eq!(
        app.run("resume", "u1", None, json!({})).await.status,
        "succeeded"
    );
    legacy_pause().await;
    app.emulator.clear_calls();
    let row = app.run("resume", "u1", None, json!({})).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let sinks = sinks_named(&app, &name);
    assert_eq!(sinks.len(), 1);
    assert_eq!(sinks[0]["status"], "active");
    assert_eq!(row.result.unwrap()["sink_id"], sinks[0]["id"]);
    assert_no_sink_update(&app);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_users_requests_run_in_order_while_other_users_run_concurrently() {
    let app = TestApp::builder()
        .faults(Faults {
            all: RouteFaults {
                latency_ms: 100,
                ..RouteFaults::default()
            },
            ..Faults::default()
        })
        .spawn()
        .await;
    app.client()
        .await
        .batch_execute(
            "begin;
             insert into userhooks.subscription_requests (action, user_id, webhook_url)
                  values ('subscribe', 'u1', 'https://hooks.example.com/1');
             insert into userhooks.subscription_requests (action, user_id)
                  values ('unsubscribe', 'u1');
             insert into userhooks.subscription_requests (action, user_id, webhook_url)
                  values ('subscribe', 'u1', 'https://hooks.example.com/2');
             insert into userhooks.subscription_requests (action, user_id, webhook_url)
                  select 'subscribe', 'other' || g, 'https://hooks.example.com/o' || g
                    from generate_series(1, 6) g;
             commit;",
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "all requests finished", || async {
        app.scalar("select count(*) from userhooks.subscription_requests where status not in ('succeeded')")
            .await
            == 0
    })
    .await;
    let live: Vec<String> = app
        .subscriptions()
        .await
        .into_iter()
        .filter(|s| {
            s.user_id == "u1" && ["provisioning", "active", "paused"].contains(&s.status.as_str())
        })
        .map(|s| s.endpoint)
        .collect();
    assert_eq!(live, ["https://hooks.example.com/2"]);
    // u1's chain finished in insertion order...
    let ordered = app
        .scalar(
            "select count(*) from (select id, finished_at, lag(finished_at) over (order by id) prev
                                     from userhooks.subscription_requests where user_id = 'u1') t
              where prev is null or finished_at >= prev",
        )
        .await;
    assert_eq!(ordered, 3);
    // ...while the other users did not wait behind it.
    let others_done_before_u1_last = app
        .scalar(
            "select count(*) from userhooks.subscription_requests o
              where o.user_id like 'other%'
                and o.finished_at < (select max(finished_at) from userhooks.subscription_requests where user_id = 'u1')",
        )
        .await;
    assert_eq!(others_done_before_u1_last, 6);
    assert_eq!(app.sinks().len(), 7);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retention_deletes_only_old_terminal_rows() {
    let mut app = TestApp::builder()
        .config(|c| c.retention = Duration::from_secs(3600))
        .without_worker()
        .spawn()
        .await;
    let client = app.client().await;
    client
        .batch_execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, status, finished_at, created_at)
             values ('subscribe', 'old-ok', 'https://x.example', 'succeeded', now() - interval '3 hours', now() - interval '3 hours'),
                    ('subscribe', 'old-failed', 'https://x.example', 'failed', now() - interval '3 hours', now() - interval '3 hours'),
                    ('subscribe', 'old-cancelled', 'https://x.example', 'cancelled', now() - interval '3 hours', now() - interval '3 hours'),
                    ('subscribe', 'recent-ok', 'https://x.example', 'succeeded', now() - interval '10 minutes', now() - interval '3 hours');
             insert into userhooks.subscription_requests (action, user_id, webhook_url, status, created_at, run_at)
             values ('subscribe', 'old-pending', 'https://x.example', 'pending', now() - interval '3 hours', now() + interval '1 day');",
        )
        .await
        .unwrap();
    app.start_worker().await;
    eventually(WAIT, "old terminal rows deleted", || async {
        app.scalar("select count(*) from userhooks.subscription_requests where user_id like 'old-%' and status <> 'pending'")
            .await
            == 0
    })
    .await;
    let left: Vec<String> = client
        .query(
            "select user_id from userhooks.subscription_requests order by user_id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert_eq!(left, ["old-pending", "recent-ok"]);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_helpers_enqueue_and_retry_and_the_summary_counts() {
    let app = TestApp::builder()
        .config(|c| c.allow_private_urls = false)
        .spawn()
        .await;
    let client = app.client().await;
    let sub: i64 = client
        .query_one("select userhooks.subscribe('u1', 'https://8.8.8.8/a')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app.finished(sub).await.status, "succeeded");
    let backfill: i64 = client
        .query_one("select userhooks.backfill('u1')", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(app.finished(backfill).await.status, "succeeded");
    let unsub: i64 = client
        .query_one(
            "select userhooks.unsubscribe('u1', 'https://8.8.8.8/a')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(app.finished(unsub).await.status, "succeeded");
    assert!(app.sinks().is_empty());

    // retry: only failed requests, with a fresh attempt budget.
    let bad: i64 = client
        .query_one(
            "select userhooks.subscribe('u2', 'http://127.0.0.1/hook', '{}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(app.finished(bad).await.status, "failed");
    let not_failed: bool = client
        .query_one("select userhooks.retry($1)", &[&sub])
        .await
        .unwrap()
        .get(0);
    assert!(!not_failed);
    let retried: bool = client
        .query_one("select userhooks.retry($1)", &[&bad])
        .await
        .unwrap()
        .get(0);
    assert!(retried);
    let again = app.finished(bad).await;
    assert_eq!(again.status, "failed", "still a private URL");
    assert_eq!(again.attempts, 1, "attempts were reset");

    let summary: Vec<(String, String, i64)> = client
        .query(
            "select action, status, requests from userhooks.queue_summary order by 1, 2",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(
        summary,
        [
            ("backfill".to_string(), "succeeded".to_string(), 1),
            ("subscribe".to_string(), "failed".to_string(), 1),
            ("subscribe".to_string(), "succeeded".to_string(), 1),
            ("unsubscribe".to_string(), "succeeded".to_string(), 1),
        ]
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_retry_commands_work_as_an_operator_uses_them() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, status, finished_at, last_error)
             values ('subscribe', 'u1', 'https://x.example', 'failed', now(), 'boom'),
                    ('subscribe', 'u2', 'https://x.example', 'failed', now() - interval '2 hours', 'boom');",
        )
        .await
        .unwrap();
    let bin = env!("CARGO_BIN_EXE_userhooks");
    let out = std::process::Command::new(bin)
        .args(["status"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("subscribe") && text.contains("failed"),
        "{text}"
    );
    assert!(text.contains("Open backfills"), "{text}");

    let out = std::process::Command::new(bin)
        .args(["retry", "--failed", "--since", "1h"])
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains("re-queued 1"));
    assert_eq!(
        db.scalar_i64("select count(*) from userhooks.subscription_requests where status = 'pending' and user_id = 'u1'")
            .await,
        1
    );
    assert_eq!(
        db.scalar_i64("select count(*) from userhooks.subscription_requests where status = 'failed' and user_id = 'u2'")
            .await,
        1
    );
}

/// Insert a request row as it would be after the worker finished it (or while it waits).
async fn history_row(
    client: &tokio_postgres::Client,
    user: &str,
    action: &str,
    status: &str,
) -> i64 {
    let finished = matches!(status, "succeeded" | "failed" | "cancelled");
    client
        .query_one(
            "insert into userhooks.subscription_requests
                    (action, user_id, webhook_url, status, finished_at, last_error)
             values ($1, $2, 'https://hooks.example.com/h', $3,
                     case when $4 then now() end, case when $3 = 'failed' then 'boom' end)
             returning id",
            &[&action, &user, &status, &finished],
        )
        .await
        .unwrap()
        .get(0)
}

/// `userhooks.retry(id)`: its refusal (SQLSTATE 55000) and message, or whether it re-queued.
async fn sql_retry(client: &tokio_postgres::Client, id: i64) -> Result<bool, String> {
    match client.query_one("select userhooks.retry($1)", &[&id]).await {
        Ok(row) => Ok(row.get(0)),
        Err(err) => {
            let db_err = err.as_db_error().expect("a database error");
            assert_eq!(
                db_err.code(),
                &tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE,
                "{db_err}"
            );
            Err(db_err.message().to_string())
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sql_retry_refuses_a_request_that_a_later_request_of_the_user_supersedes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    // The history: subscribed (failed during an outage), then unsubscribed.
    let subscribe = history_row(&client, "1", "subscribe", "failed").await;
    let unsubscribe = history_row(&client, "1", "unsubscribe", "succeeded").await;
    assert_eq!(
        sql_retry(&client, subscribe).await,
        Err(format!(
            "request {subscribe} not re-queued: user \"1\" has a later request {unsubscribe} \
             (unsubscribe, succeeded); insert a new request instead"
        ))
    );
    assert_eq!(
        db.request(subscribe).await.status,
        "failed",
        "left as it was"
    );

    // A later request that is still to run (or running) counts too.
    for later_status in ["pending", "running"] {
        let user = format!("waiting-{later_status}");
        let failed = history_row(&client, &user, "subscribe", "failed").await;
        let later = history_row(&client, &user, "backfill", later_status).await;
        let refused = sql_retry(&client, failed).await.unwrap_err();
        assert!(
            refused.contains(&format!("later request {later} (backfill, {later_status})")),
            "{refused}"
        );
    }

    // Later requests that failed or were cancelled had no effect: retrying is safe. So are
    // requests of other users, and earlier requests of the same user.
    let failed = history_row(&client, "2", "subscribe", "failed").await;
    history_row(&client, "2", "unsubscribe", "failed").await;
    history_row(&client, "2", "pause", "cancelled").await;
    history_row(&client, "3", "unsubscribe", "succeeded").await;
    assert_eq!(sql_retry(&client, failed).await, Ok(true));
    let row = db.request(failed).await;
    assert_eq!((row.status.as_str(), row.attempts), ("pending", 0));

    // Not failed, or no such request: false, as before.
    assert_eq!(sql_retry(&client, unsubscribe).await, Ok(false));
    assert_eq!(sql_retry(&client, 99_999).await, Ok(false));
}

fn userhooks_cli(db: &TestDb, args: &[&str]) -> std::process::Output {
    std::process::Command::new(env!("CARGO_BIN_EXE_userhooks"))
        .args(args)
        .env("DATABASE_URL", &db.url)
        .output()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_failed_skips_superseded_requests_and_says_why_and_keeps_each_users_order() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let subscribe = history_row(&client, "1", "subscribe", "failed").await;
    let unsubscribe = history_row(&client, "1", "unsubscribe", "succeeded").await;
    // User 2 failed twice in a row: both go back, and in their order (judged newest first,
    // the older one would find the newer one pending and be refused).
    let first = history_row(&client, "2", "subscribe", "failed").await;
    let second = history_row(&client, "2", "unsubscribe", "failed").await;

    let out = userhooks_cli(&db, &["retry", "--failed", "--since", "1h"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("re-queued 2 request(s): [{first}, {second}]")),
        "{stdout}"
    );
    assert!(
        stdout.contains(&format!(
            "request {subscribe} not re-queued: user \"1\" has a later request {unsubscribe} \
             (unsubscribe, succeeded); insert a new request instead\n"
        )),
        "{stdout}"
    );
    assert_eq!(db.request(subscribe).await.status, "failed");
    assert_eq!(db.request(first).await.status, "pending");
    assert_eq!(db.request(second).await.status, "pending");

    // One id: the refusal is the command's error.
    let out = userhooks_cli(&db, &["retry", &subscribe.to_string()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!("request {subscribe} not re-queued: user \"1\"")),
        "{stderr}"
    );
    let out = userhooks_cli(&db, &["retry", &unsubscribe.to_string()]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("it is succeeded; only failed requests"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_of_an_unknown_id_or_without_arguments_fails_with_a_clear_line() {
    let db = TestDb::new().await;
    let out = userhooks_cli(&db, &["retry", "99999"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no such request 99999"), "{stderr}");

    let out = userhooks_cli(&db, &["retry"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    let usage = stderr
        .lines()
        .find(|l| l.starts_with("Usage: userhooks retry"));
    assert!(
        usage.is_some_and(|line| line.ends_with("<ID|--failed>")),
        "{stderr}"
    );
}
