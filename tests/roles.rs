//! `sql/roles.sql`: connect as a login member of `userhooks_app` / `userhooks_worker` and prove
//! what each may do and what is refused.
//!
//! Roles are cluster-wide while every test has its own database: each test makes login roles
//! with random names (dropped at the end), and `roles.sql` copes with parallel runs.

mod common;

use std::time::Duration;

use common::*;
use serde_json::json;
use tokio_postgres::error::SqlState;

const WAIT: Duration = Duration::from_secs(15);

/// A login role that is a member of `group` (or of nothing), dropped when the test ends.
struct TestRole {
    name: String,
    url: String,
}

impl TestRole {
    async fn new(db: &TestDb, group: Option<&str>) -> TestRole {
        let name = format!("uh_role_{}", uuid::Uuid::new_v4().simple());
        let password = uuid::Uuid::new_v4().simple().to_string();
        let member = group.map(|g| format!(" in role {g}")).unwrap_or_default();
        db.client()
            .await
            .batch_execute(&format!(
                "create role {name} login password '{password}'{member}"
            ))
            .await
            .expect("create login role");
        let mut url = url::Url::parse(&db.url).expect("test database url");
        url.set_username(&name).unwrap();
        url.set_password(Some(&password)).unwrap();
        TestRole {
            name,
            url: url.to_string(),
        }
    }

    async fn client(&self) -> tokio_postgres::Client {
        userhooks::db::connect(&self.url, "userhooks-role-test")
            .await
            .expect("connect as the test role")
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        common::admin_sql_blocking(format!("drop role if exists {}", self.name));
    }
}

async fn db_with_roles() -> TestDb {
    let db = TestDb::new().await;
    userhooks::db::apply_roles(&db.url)
        .await
        .expect("apply roles.sql");
    db
}

/// Run `sql` and expect Postgres to refuse it for lack of privilege (42501).
async fn refused(client: &tokio_postgres::Client, sql: &str) {
    let err = client
        .batch_execute(sql)
        .await
        .expect_err(&format!("should be refused: {sql}"));
    assert_eq!(
        err.code(),
        Some(&SqlState::INSUFFICIENT_PRIVILEGE),
        "{sql}: {err:?}"
    );
}

async fn allowed(client: &tokio_postgres::Client, sql: &str) {
    client
        .batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("should be allowed: {sql}: {e:?}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn roles_sql_is_safe_to_run_twice_and_concurrently() {
    let db = db_with_roles().await;
    let other = TestDb::new().await;
    // Again on the same database, and on another database at the same time (roles are shared).
    let (a, b, c) = tokio::join!(
        userhooks::db::apply_roles(&db.url),
        userhooks::db::apply_roles(&db.url),
        userhooks::db::apply_roles(&other.url),
    );
    a.expect("second run");
    b.expect("concurrent run");
    c.expect("run on another database");
    let nologin = db
        .scalar_i64(
            "select count(*) from pg_roles
              where rolname in ('userhooks_app', 'userhooks_worker') and not rolcanlogin
                and not rolsuper and not rolcreaterole and not rolcreatedb",
        )
        .await;
    assert_eq!(
        nologin, 2,
        "both roles exist, NOLOGIN, without special powers"
    );
    let owned = db
        .scalar_i64(
            "select count(*) from pg_namespace n join pg_roles r on r.oid = n.nspowner
              where n.nspname = 'userhooks' and r.rolname in ('userhooks_app', 'userhooks_worker')",
        )
        .await;
    assert_eq!(owned, 0, "neither role owns the schema");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_can_enqueue_call_the_helpers_and_read_results() {
    let db = db_with_roles().await;
    let role = TestRole::new(&db, Some("userhooks_app")).await;
    let app = role.client().await;

    let id: i64 = app
        .query_one(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
             values ('subscribe', '42', 'https://hooks.example.com/42', '{\"backfill\": true}')
             returning id",
            &[],
        )
        .await
        .expect("app inserts a request")
        .get(0);
    for sql in [
        "select userhooks.subscribe('43', 'https://hooks.example.com/43')",
        "select userhooks.subscribe('44', 'https://hooks.example.com/44', '{\"secret\": \"s\"}')",
        "select userhooks.unsubscribe('43')",
        "select userhooks.backfill('42', 'https://hooks.example.com/42')",
    ] {
        let new_id: i64 = app.query_one(sql, &[]).await.expect(sql).get(0);
        assert!(new_id > id, "{sql}");
    }
    // Scheduling later and a smaller attempt budget are part of a request.
    allowed(
        &app,
        "insert into userhooks.subscription_requests (action, user_id, run_at, max_attempts)
         values ('unsubscribe', '45', now() + interval '1 hour', 3)",
    )
    .await;

    let row = app
        .query_one(
            "select status, user_id, result from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await
        .expect("app reads its request");
    assert_eq!(row.get::<_, String>(0), "pending");
    assert_eq!(row.get::<_, String>(1), "42");
    let pending: i64 = app
        .query_one(
            "select sum(requests)::bigint from userhooks.queue_summary where status = 'pending'",
            &[],
        )
        .await
        .expect("app reads queue_summary")
        .get(0);
    assert_eq!(pending, 6);

    // retry: re-queues a failed request (made failed here by the owner). User 45's, the only
    // one of its user: a failed request with later requests of its user is not re-queued.
    let id = db
        .scalar_i64("select id from userhooks.subscription_requests where user_id = '45'")
        .await;
    db.client()
        .await
        .execute(
            "update userhooks.subscription_requests set status = 'failed' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let requeued: bool = app
        .query_one("select userhooks.retry($1)", &[&id])
        .await
        .expect("app calls retry")
        .get(0);
    assert!(requeued);
    let again: bool = app
        .query_one("select userhooks.retry($1)", &[&id])
        .await
        .unwrap()
        .get(0);
    assert!(!again, "a pending request is not re-queued");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_cannot_change_requests_touch_other_tables_or_run_ddl() {
    let db = db_with_roles().await;
    let id = db
        .insert(
            "subscribe",
            "42",
            Some("https://hooks.example.com/42"),
            json!({}),
        )
        .await;
    db.client()
        .await
        .batch_execute(
            "insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table)
             values ('42', 'https://hooks.example.com/42', 'public.notifications')",
        )
        .await
        .unwrap();
    let role = TestRole::new(&db, Some("userhooks_app")).await;
    let app = role.client().await;

    for sql in [
        // Requests are the worker's once inserted.
        &format!("update userhooks.subscription_requests set status = 'succeeded' where id = {id}") as &str,
        &format!("update userhooks.subscription_requests set options = '{{}}' where id = {id}"),
        &format!("delete from userhooks.subscription_requests where id = {id}"),
        "truncate userhooks.subscription_requests",
        // Columns the worker owns cannot be forged at insert.
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, status)
         values ('subscribe', '1', 'https://a.example/', 'succeeded')",
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, locked_by, locked_until)
         values ('subscribe', '1', 'https://a.example/', 'me', 'infinity')",
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, result)
         values ('subscribe', '1', 'https://a.example/', '{}')",
        // No access to the subscriptions, the backfills or the migration log.
        "select * from userhooks.webhook_subscriptions",
        "select count(*) from userhooks.webhook_subscriptions",
        "insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table)
         values ('1', 'https://a.example/', 'public.notifications')",
        "update userhooks.webhook_subscriptions set status = 'deleted'",
        "delete from userhooks.webhook_subscriptions",
        "select * from userhooks.backfills",
        "select * from userhooks.schema_migrations",
        // No DDL.
        "create table userhooks.mine (id int)",
        "create function userhooks.mine() returns int language sql as 'select 1'",
        "create view userhooks.mine as select 1",
        "drop table userhooks.subscription_requests",
        "alter table userhooks.subscription_requests add column x int",
        "alter table userhooks.subscription_requests disable trigger subscription_requests_notify",
        "drop function userhooks.subscribe(text, text, jsonb)",
        "create or replace function userhooks.retry(request_id bigint) returns boolean
         language sql as 'select true'",
    ] {
        refused(&app, sql).await;
    }
    // The request is untouched and the subscription is still there.
    assert_eq!(db.request(id).await.status, "pending");
    assert_eq!(
        db.scalar_i64("select count(*) from userhooks.webhook_subscriptions")
            .await,
        1
    );
}

/// The request table's options check calls a function; hardening that takes EXECUTE away from
/// PUBLIC must not stop the app from enqueueing, nor let bad options through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn app_role_enqueues_and_options_are_checked_without_public_execute() {
    let db = db_with_roles().await;
    db.client()
        .await
        .batch_execute("revoke execute on all functions in schema userhooks from public")
        .await
        .unwrap();
    let role = TestRole::new(&db, Some("userhooks_app")).await;
    let app = role.client().await;
    allowed(
        &app,
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
         values ('subscribe', '1', 'https://a.example/', '{\"actions\": [\"insert\"]}')",
    )
    .await;
    let err = app
        .batch_execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
             values ('subscribe', '2', 'https://a.example/', '{\"backfill\": 1e400}')",
        )
        .await
        .expect_err("options past a limit must be refused");
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(db_err.code(), &SqlState::CHECK_VIOLATION, "{db_err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_in_neither_group_cannot_enqueue_or_call_the_helpers() {
    let db = db_with_roles().await;
    let role = TestRole::new(&db, None).await;
    let other = role.client().await;
    for sql in [
        "select userhooks.subscribe('1', 'https://a.example/')",
        "select userhooks.retry(1)",
        "insert into userhooks.subscription_requests (action, user_id, webhook_url)
         values ('subscribe', '1', 'https://a.example/')",
        "select * from userhooks.queue_summary",
    ] {
        refused(&other, sql).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn worker_role_runs_a_subscribe_end_to_end_without_ddl_rights() {
    let db = db_with_roles().await;
    let app_role = TestRole::new(&db, Some("userhooks_app")).await;
    let worker_role = TestRole::new(&db, Some("userhooks_worker")).await;
    let emulator = start_emulator().await;
    let mut config = config(&db, &emulator);
    config.database_url = worker_role.url.clone();
    let worker = start_worker(config).await;

    let app = app_role.client().await;
    let id: i64 = app
        .query_one(
            "select userhooks.subscribe('42', 'https://hooks.example.com/42', '{\"secret\": \"role-test-secret\"}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let row = db.finished(id, WAIT).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let status: String = db
        .client()
        .await
        .query_one(
            "select status from userhooks.webhook_subscriptions where id = $1",
            &[&row.result.as_ref().unwrap()["subscription_id"]
                .as_i64()
                .unwrap()],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "active");
    // The app reads the outcome; the secret was scrubbed by the worker's own write-back.
    let options = request_options(&app, id).await;
    assert_eq!(options["secret"]["redacted"], true, "{options}");

    // A failing request goes through the worker role too (an invalid option).
    let bad: i64 = app
        .query_one(
            "select userhooks.subscribe('43', 'https://hooks.example.com/43', '{\"colour\": \"red\"}')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(db.finished(bad, WAIT).await.status, "failed");
    worker.stop().await;

    let as_worker = worker_role.client().await;
    // What the worker and the operator tools need.
    allowed(
        &as_worker,
        "select count(*) from userhooks.webhook_subscriptions;
         select count(*) from userhooks.backfills;
         select * from userhooks.queue_summary;
         select max(version) from userhooks.schema_migrations;
         listen userhooks_requests;",
    )
    .await;
    allowed(
        &as_worker,
        &format!("delete from userhooks.subscription_requests where id = {bad}"),
    )
    .await;
    // No DDL, no tampering with the migration log.
    for sql in [
        "drop table userhooks.subscription_requests",
        "drop table userhooks.webhook_subscriptions",
        "alter table userhooks.subscription_requests drop constraint subscription_requests_options_check",
        "alter table userhooks.webhook_subscriptions add column x int",
        "alter table userhooks.subscription_requests disable trigger subscription_requests_scrub_secret",
        "create table userhooks.mine (id int)",
        "create index mine on userhooks.subscription_requests (user_id)",
        "drop function userhooks.subscribe(text, text, jsonb)",
        "truncate userhooks.backfills",
        "delete from userhooks.schema_migrations",
        "insert into userhooks.schema_migrations (version, name) values (99, 'x')",
    ] {
        refused(&as_worker, sql).await;
    }
}
