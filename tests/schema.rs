//! The schema as a contract: what SQL refuses at the door, migrations, notifications.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;

async fn insert_err(db: &TestDb, sql: &str) -> String {
    let err = db
        .client()
        .await
        .batch_execute(sql)
        .await
        .expect_err("insert must be refused");
    err.as_db_error()
        .map(|e| e.message().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn unknown_action_is_refused() {
    let db = TestDb::new().await;
    let msg = insert_err(
        &db,
        "insert into userhooks.subscription_requests (action, user_id) values ('explode', 'u')",
    )
    .await;
    assert!(msg.contains("subscription_requests_action_check"), "{msg}");
}

#[tokio::test]
async fn subscribe_without_url_is_refused() {
    let db = TestDb::new().await;
    let msg = insert_err(
        &db,
        "insert into userhooks.subscription_requests (action, user_id) values ('subscribe', 'u')",
    )
    .await;
    assert!(msg.contains("subscribe_needs_url"), "{msg}");
}

#[tokio::test]
async fn oversized_user_id_and_url_are_refused() {
    let db = TestDb::new().await;
    let msg = insert_err(
        &db,
        "insert into userhooks.subscription_requests (action, user_id, webhook_url)
         values ('subscribe', repeat('u', 256), 'https://x.example')",
    )
    .await;
    assert!(msg.contains("user_id_check"), "{msg}");
    let msg = insert_err(
        &db,
        "insert into userhooks.subscription_requests (action, user_id, webhook_url)
         values ('subscribe', 'u', 'https://x.example/' || repeat('a', 2048))",
    )
    .await;
    assert!(msg.contains("webhook_url_length_check"), "{msg}");
}

#[tokio::test]
async fn options_must_be_a_small_object() {
    let db = TestDb::new().await;
    let msg = insert_err(
        &db,
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
         values ('subscribe', 'u', 'https://x.example', '[1,2]')",
    )
    .await;
    assert!(msg.contains("options_check"), "{msg}");
    let msg = insert_err(
        &db,
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
         values ('subscribe', 'u', 'https://x.example', jsonb_build_object('headers', jsonb_build_object('x', repeat('a', 20000))))",
    )
    .await;
    assert!(msg.contains("options_check"), "{msg}");
}

/// The size, depth and number limits run on a write of `options` (a trigger, so that the
/// worker's claims and write-backs, which never set `options`, do not pay for them): an
/// UPDATE that sets `options` past a limit is refused like an INSERT, with the same SQLSTATE
/// and constraint name.
#[tokio::test]
async fn updating_options_past_a_limit_is_refused_like_an_insert() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let id = db
        .insert("subscribe", "u", Some("https://x.example"), json!({}))
        .await;
    for (options, constraint) in [
        (
            "jsonb_build_object('headers', jsonb_build_object('x', repeat('a', 20000)))",
            "subscription_requests_options_check",
        ),
        (
            "(repeat('{\"a\":', 40) || '1' || repeat('}', 40))::jsonb",
            "subscription_requests_options_depth_check",
        ),
        (
            "'{\"backfill\": 1e400}'::jsonb",
            "subscription_requests_options_numbers_check",
        ),
    ] {
        let err = client
            .execute(
                &format!(
                    "update userhooks.subscription_requests set options = {options} where id = $1"
                ),
                &[&id],
            )
            .await
            .expect_err("the update must be refused");
        let db_err = err.as_db_error().expect("a database error");
        assert_eq!(
            db_err.code(),
            &tokio_postgres::error::SqlState::CHECK_VIOLATION
        );
        assert_eq!(db_err.constraint(), Some(constraint), "{db_err}");
    }
    let options = request_options(&client, id).await;
    assert_eq!(options, json!({}));
}

#[tokio::test]
async fn a_valid_insert_gets_the_documented_defaults() {
    let db = TestDb::new().await;
    let id = db
        .insert("subscribe", "u", Some("https://x.example"), json!({}))
        .await;
    let row = db
        .client()
        .await
        .query_one(
            "select status, attempts, max_attempts, run_at <= now(), options
               from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, i32>(1), 0);
    assert_eq!(row.get::<_, i32>(2), 12);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, serde_json::Value>(4), json!({}));
}

#[tokio::test]
async fn migrate_twice_and_concurrently_is_safe() {
    let db = TestDb::new().await; // already migrated once
    let (a, b) = tokio::join!(
        userhooks::db::migrate(&db.url),
        userhooks::db::migrate(&db.url)
    );
    assert!(a.unwrap().is_empty());
    assert!(b.unwrap().is_empty());
    let versions = db
        .scalar_i64("select count(*) from userhooks.schema_migrations")
        .await;
    assert_eq!(versions as usize, userhooks::db::MIGRATIONS.len());
}

#[tokio::test]
async fn fresh_database_migrates_concurrently() {
    let db = TestDb::unmigrated().await;
    let (a, b) = tokio::join!(
        userhooks::db::migrate(&db.url),
        userhooks::db::migrate(&db.url)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    // Exactly one of the two applied everything.
    assert_eq!(a.len() + b.len(), userhooks::db::MIGRATIONS.len());
}

#[tokio::test]
async fn bulk_insert_sends_one_requests_notification() {
    let db = TestDb::new().await;
    let mut rx = listen(&db, "userhooks_requests").await;
    db.client()
        .await
        .batch_execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', g::text, 'https://x.example' from generate_series(1, 50) g",
        )
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .unwrap();
    assert_eq!(first.unwrap().0, "userhooks_requests");
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(rx.try_recv().is_err(), "one statement, one notification");
}

/// A DBA's way of finishing a request by hand.
const FAIL_REQUEST: &str =
    "update userhooks.subscription_requests set status = 'failed' where id = $1";

/// The next `userhooks_request_done` payload, parsed.
async fn next_done(
    rx: &mut tokio::sync::mpsc::UnboundedReceiver<(String, String)>,
) -> serde_json::Value {
    let (_, payload) = tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("a request_done notification")
        .unwrap();
    serde_json::from_str(&payload).unwrap()
}

#[tokio::test]
async fn terminal_status_sends_request_done_with_id_and_status() {
    let db = TestDb::new().await;
    let mut rx = listen(&db, "userhooks_request_done").await;
    let id = db.insert("unsubscribe", "u", None, json!({})).await;
    db.client()
        .await
        .execute(FAIL_REQUEST, &[&id])
        .await
        .unwrap();
    assert_eq!(
        next_done(&mut rx).await,
        json!({"id": id, "status": "failed"})
    );
}

#[tokio::test]
async fn trigger_leaves_request_done_to_a_transaction_that_sends_its_own() {
    let db = TestDb::new().await;
    let mut rx = listen(&db, "userhooks_request_done").await;
    let skipped = db.insert("unsubscribe", "u1", None, json!({})).await;
    let notified = db.insert("unsubscribe", "u2", None, json!({})).await;
    let mut client = db.client().await;
    // The mark the worker's write-back sets, without the write-back's own pg_notify.
    let tx = client.transaction().await.unwrap();
    tx.execute(userhooks::queue::NOTIFIES_DONE_SQL, &[])
        .await
        .unwrap();
    tx.execute(FAIL_REQUEST, &[&skipped]).await.unwrap();
    tx.commit().await.unwrap();
    // The mark ends with its transaction: the next update notifies through the trigger.
    client.execute(FAIL_REQUEST, &[&notified]).await.unwrap();
    assert_eq!(
        next_done(&mut rx).await,
        json!({"id": notified, "status": "failed"})
    );
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        rx.try_recv().is_err(),
        "the marked transaction sent nothing"
    );
}

#[tokio::test]
async fn claim_uses_the_partial_index_even_on_an_analysed_empty_table() {
    let db = TestDb::new().await;
    let client = db.client().await;
    client
        .batch_execute(
            "analyze userhooks.subscription_requests;
             insert into userhooks.subscription_requests (action, user_id, webhook_url, status, finished_at)
             select 'subscribe', g::text, 'https://x.example', 'succeeded', now()
               from generate_series(1, 20000) g;
             analyze userhooks.subscription_requests;",
        )
        .await
        .unwrap();
    let plan: Vec<String> = client
        .query(
            "explain select id from userhooks.subscription_requests
              where status in ('pending', 'running') order by run_at, id limit 10",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    let plan = plan.join("\n");
    assert!(
        plan.contains("subscription_requests_claimable_idx"),
        "{plan}"
    );
}

#[tokio::test]
async fn worker_refuses_to_start_on_a_schema_older_than_it_needs() {
    let db = TestDb::new().await;
    let emulator = start_emulator().await;
    let latest = userhooks::db::MIGRATIONS.last().unwrap().0;
    // As if the last migration had not been applied yet (its record is what the worker reads).
    db.client()
        .await
        .execute(
            "delete from userhooks.schema_migrations where version = $1",
            &[&latest],
        )
        .await
        .unwrap();
    let err = match userhooks::build(config(&db, &emulator)).await {
        Ok(_) => panic!("a worker started on an outdated schema"),
        Err(err) => err.to_string(),
    };
    assert!(err.contains("run `userhooks migrate` first"), "{err}");
    assert!(
        err.contains(&format!("this userhooks needs {latest}")),
        "{err}"
    );

    // With the record back (the migration's DDL never left), the worker starts.
    db.client()
        .await
        .execute(
            "insert into userhooks.schema_migrations (version, name) values ($1, 'again')",
            &[&latest],
        )
        .await
        .unwrap();
    let worker = start_worker(config(&db, &emulator)).await;
    worker.stop().await;
}
