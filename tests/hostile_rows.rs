//! Hostile rows in the outbox, with a real worker running against the emulator: each is
//! refused at the INSERT, or fails with a clear reason, or succeeds correctly — and a good
//! request of another user inserted alongside always succeeds, and the worker never crashes
//! (`app.stop()` asserts the worker's task did not panic).
//!
//! Two kinds of "strange strings" cannot be stored at all, so need no worker behaviour:
//! Postgres `text` cannot hold NUL (U+0000), and `jsonb` refuses `\u0000` and lone UTF-16
//! surrogates (Rust `String`s cannot hold a surrogate either). The tests check that they are
//! refused at the INSERT.

mod common;

use common::*;
use serde_json::{json, Value};
use tokio_postgres::error::SqlState;

/// Insert a good subscribe for a fresh user and return its id.
async fn good_row(app: &TestApp, tag: &str) -> RequestId {
    app.subscribe(
        &format!("good-{tag}"),
        &format!("https://hooks.example.com/good/{tag}"),
        json!({}),
    )
    .await
}

fn nested(depth: usize, leaf: Value) -> Value {
    (0..depth).fold(leaf, |inner, _| json!([inner]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_sql_can_refuse_is_refused_at_the_insert() {
    let app = TestApp::spawn().await;
    let client = app.client().await;

    let insert =
        "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
                  values ($1, $2, $3, $4::text::jsonb)";
    let url = "https://hooks.example.com/x";
    let huge = json!({ "headers": { "X-Big": "a".repeat(17_000) } }).to_string();
    let deep = json!({ "headers": nested(40, json!(1)) }).to_string();
    let cases: Vec<(&str, String, String, SqlState)> = vec![
        (
            "options over 16 KiB",
            "u1".into(),
            huge,
            SqlState::CHECK_VIOLATION,
        ),
        (
            "options nested 40 levels",
            "u2".into(),
            deep,
            SqlState::CHECK_VIOLATION,
        ),
        (
            "a number beyond f64",
            "u3".into(),
            r#"{"backfill": 1e400}"#.into(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "a negative number beyond f64",
            "u3".into(),
            r#"{"x": [-1e309]}"#.into(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "options that are an array",
            "u4".into(),
            "[]".into(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "options that are a string",
            "u4".into(),
            r#""{}""#.into(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "user_id of 256 characters",
            "é".repeat(256),
            "{}".into(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "empty user_id",
            String::new(),
            "{}".into(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "NUL in user_id (Postgres text cannot hold it)",
            "a\0b".into(),
            "{}".into(),
            SqlState::CHARACTER_NOT_IN_REPERTOIRE,
        ),
        (
            "\\u0000 in options (jsonb cannot hold it)",
            "u5".into(),
            r#"{"secret": "a\u0000b"}"#.into(),
            SqlState::UNTRANSLATABLE_CHARACTER,
        ),
        (
            "a lone surrogate in options",
            "u6".into(),
            r#"{"secret": "\ud800"}"#.into(),
            SqlState::INVALID_TEXT_REPRESENTATION,
        ),
    ];
    for (what, user, options, code) in cases {
        let err = client
            .execute(insert, &[&"subscribe", &user, &url, &options])
            .await
            .expect_err(what);
        assert_eq!(err.code(), Some(&code), "{what}: {err:?}");
    }
    for (what, sql, code) in [
        (
            "webhook_url over 2,048 characters",
            format!(
                "insert into userhooks.subscription_requests (action, user_id, webhook_url)
                 values ('subscribe', 'u7', 'https://a.example/{}')",
                "a".repeat(2048)
            ),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "run_at = infinity (it would stall every claim)",
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, run_at)
             values ('subscribe', 'u8', 'https://a.example/', 'infinity')"
                .to_string(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "SQL-ish action",
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             values ('subscribe''; drop table userhooks.backfills; --', 'u9', 'https://a.example/')"
                .to_string(),
            SqlState::CHECK_VIOLATION,
        ),
        (
            "options = null",
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, options)
             values ('subscribe', 'u10', 'https://a.example/', null)"
                .to_string(),
            SqlState::NOT_NULL_VIOLATION,
        ),
    ] {
        let err = client.batch_execute(&sql).await.expect_err(what);
        assert_eq!(err.code(), Some(&code), "{what}: {err:?}");
    }
    assert_eq!(
        app.scalar("select count(*) from userhooks.subscription_requests")
            .await,
        0
    );
    // The boundary: 32 levels are accepted at the INSERT (and fail in the worker, below).
    let at_limit = json!({ "headers": nested(31, json!(1)) });
    client
        .execute(insert, &[&"subscribe", &"u11", &url, &at_limit.to_string()])
        .await
        .expect("32 levels are allowed");

    let good = good_row(&app, "insert").await;
    assert_eq!(app.finished(good).await.status, "succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_options_fail_with_a_reason_and_never_block_other_rows() {
    let app = TestApp::spawn().await;

    let sqlish = "'; drop table userhooks.subscription_requests; --";
    let cases: Vec<(Value, &str)> = vec![
        (
            json!({ "headers": nested(31, json!("x")) }),
            "option `headers`",
        ),
        (
            json!({ "backfill": nested(31, json!(true)) }),
            "option `backfill` must be true or false",
        ),
        (json!({ "colour": "red" }), "unknown option `colour`"),
        (json!({ sqlish: 1 }), "unknown option `'; drop table"),
        (json!({ "k".repeat(10_000): 1 }), "unknown option `kkkk"),
        (json!({ "\u{202e}evil\u{1}\u{7f}😀": 1 }), "unknown option"),
        (
            json!({ "transform": sqlish }),
            "option `transform` must be the name",
        ),
        (
            json!({ "transform": "../../etc/passwd" }),
            "option `transform` must be the name",
        ),
        (json!({ "actions": ["insert", sqlish] }), "option `actions`"),
        (json!({ "actions": "insert" }), "option `actions`"),
        (
            json!({ "backfill": 1e308 }),
            "option `backfill` must be true or false",
        ),
        // Header injection: CR/LF and other controls are refused in header values.
        (
            json!({ "headers": { "X-A": "v\r\nX-Injected: 1" } }),
            "invalid header `X-A`",
        ),
        (json!({ "headers": { "X A": "v" } }), "invalid header `X A`"),
        (json!({ "headers": { sqlish: "v" } }), "invalid header"),
        (
            json!({ "headers": { "Authorization": "Bearer x" } }),
            "must not set Authorization: use option `secret`",
        ),
        // Headers that belong to the HTTP client or to one connection, in any case.
        (
            json!({ "headers": { "Host": "internal.example" } }),
            "must not set Host: the HTTP client sets it from webhook_url",
        ),
        (
            json!({ "headers": { "content-length": "0" } }),
            "must not set content-length: the HTTP client frames the body",
        ),
        (
            json!({ "headers": { "Transfer-Encoding": "chunked" } }),
            "must not set Transfer-Encoding: the HTTP client frames the body",
        ),
        (
            json!({ "headers": { "CONNECTION": "close" } }),
            "must not set CONNECTION: it is a hop-by-hop header",
        ),
        (
            json!({ "headers": { "Keep-Alive": "timeout=5" } }),
            "must not set Keep-Alive: it is a hop-by-hop header",
        ),
        (
            json!({ "headers": { "Proxy-Authorization": "Basic x" } }),
            "must not set Proxy-Authorization: it is a hop-by-hop header",
        ),
        (
            json!({ "headers": { "te": "trailers" } }),
            "must not set te: it is a hop-by-hop header",
        ),
        (
            json!({ "headers": { "Trailer": "X-A" } }),
            "must not set Trailer: it is a hop-by-hop header",
        ),
        (
            json!({ "headers": { "Upgrade": "websocket" } }),
            "must not set Upgrade: it is a hop-by-hop header",
        ),
        (
            json!({ "headers": { "X-Tenant": "a", "x-tenant": "b" } }),
            "sets X-Tenant and x-tenant: header names ignore case",
        ),
        (
            json!({ "secret": "bell\u{7}" }),
            "option `secret` must be a string",
        ),
        (
            json!({ "secret": 12345 }),
            "option `secret` must be a string",
        ),
        (
            json!({ "secret": "s".repeat(1025) }),
            "option `secret` must be a string",
        ),
    ];
    let mut ids = Vec::new();
    for (n, (options, _)) in cases.iter().enumerate() {
        let user = format!("hostile-{n}");
        let url = format!("https://hooks.example.com/hostile/{n}");
        ids.push(app.subscribe(&user, &url, options.clone()).await);
    }
    let good = good_row(&app, "options").await;

    for (id, (options, expected)) in ids.into_iter().zip(&cases) {
        let row = app.finished(id).await;
        assert_eq!(row.status, "failed", "{options}: {row:?}");
        let last_error = row.last_error.clone().unwrap_or_default();
        assert!(
            last_error.contains(expected),
            "{options}: expected {expected:?} in {last_error:?}"
        );
        assert!(last_error.len() < 1024, "short reason: {last_error}");
        let result = row.result.expect("failure result");
        assert_eq!(result["error"]["kind"], "invalid_request", "{result}");
        assert_eq!(row.attempts, 1, "invalid input is not retried");
    }
    assert_eq!(app.finished(good).await.status, "succeeded");
    // Nothing was provisioned for the hostile rows; the tables are all still here.
    assert_eq!(app.endpoints().len(), 1);
    assert_eq!(app.sinks().len(), 1);
    assert_eq!(
        app.scalar("select count(*) from userhooks.webhook_subscriptions where status <> 'failed'")
            .await,
        1
    );
    app.stop().await;
}

/// An action this worker does not know (a newer schema's, or one past a dropped CHECK) fails
/// the request with a reason, instead of running as another action.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_action_fails_naming_the_actions_this_worker_knows() {
    let app = TestApp::builder()
        .setup_sql(
            "alter table userhooks.subscription_requests
               drop constraint subscription_requests_action_check",
        )
        .spawn()
        .await;
    let unknown = app
        .db
        .insert(
            "frobnicate",
            "unknown-action",
            Some("https://hooks.example.com/unknown-action"),
            json!({}),
        )
        .await;
    let good = good_row(&app, "unknown-action").await;

    let row = app.finished(unknown).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(
        row.last_error.as_deref(),
        Some(
            "unknown action \"frobnicate\": this worker knows subscribe, unsubscribe, backfill, \
             update, pause, resume (upgrade the worker?)"
        )
    );
    let result = row.result.expect("failure result");
    assert_eq!(result["error"]["kind"], "invalid_request", "{result}");
    assert_eq!(row.attempts, 1, "not retried");
    assert_eq!(app.finished(good).await.status, "succeeded");
    // Nothing was provisioned for it: only the good row has an endpoint, a sink and a row.
    assert_eq!(app.endpoints().len(), 1);
    assert_eq!(app.sinks().len(), 1);
    assert_eq!(
        app.scalar("select count(*) from userhooks.webhook_subscriptions")
            .await,
        1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn strange_user_ids_keep_sequin_names_valid_and_reach_the_annotation_verbatim() {
    let app = TestApp::spawn().await;

    let users: Vec<String> = vec![
        "user with spaces".into(),
        "a/b/c".into(),
        "../../etc/passwd".into(),
        "%2e%2e%2f".into(),
        "O'Brien \"the quote\" `tick`".into(),
        "'; drop table userhooks.webhook_subscriptions; --".into(),
        "😀👍🏽".into(),
        "\u{202e}txt.exe".into(),
        "tab\there\nnewline\r\u{1}\u{7f}".into(),
        "x".repeat(255),
        "字".repeat(255),
        "null".into(),
        " ".into(),
        "userhooks-1-sink".into(),
    ];
    let mut ids = Vec::new();
    for (n, user) in users.iter().enumerate() {
        let url = format!("https://hooks.example.com/strange/{n}");
        ids.push(app.subscribe(user, &url, json!({})).await);
    }
    let good = good_row(&app, "users").await;

    let mut rows = Vec::new();
    for id in ids {
        rows.push(app.finished(id).await);
    }
    let name_ok = regex::Regex::new(r"^[A-Za-z0-9_.-]{1,255}$").unwrap();
    let mut names = std::collections::HashSet::new();
    // Read once every request finished: a sink made after the read would be missing.
    let sinks = app.sinks();
    for (row, user) in rows.into_iter().zip(&users) {
        assert_eq!(row.status, "succeeded", "{user:?}: {row:?}");
        let result = row.result.unwrap();
        let sink_name = result["sink_name"].as_str().unwrap().to_string();
        let endpoint_name = result["endpoint_name"].as_str().unwrap().to_string();
        for name in [&sink_name, &endpoint_name] {
            assert!(name_ok.is_match(name), "{user:?}: {name}");
            assert!(names.insert(name.clone()), "{name} is unique");
        }
        let sink = sinks
            .iter()
            .find(|s| s["name"] == sink_name.as_str())
            .expect("sink exists in Sequin");
        assert_eq!(sink["annotations"]["user_id"], user.as_str(), "{user:?}");
        let stored = app.subscription(&result["subscription_id"]).await.user_id;
        assert_eq!(&stored, user);
    }
    assert_eq!(app.finished(good).await.status, "succeeded");
    // The SQL-ish user id was data, nothing more.
    assert_eq!(
        app.scalar("select count(*) from userhooks.webhook_subscriptions")
            .await as usize,
        users.len() + 1
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlish_and_strange_webhook_urls_fail_clearly_or_are_encoded() {
    let app = TestApp::spawn().await;

    let failing = [
        (
            "'; drop table userhooks.subscription_requests; --",
            "not a valid URL",
        ),
        ("javascript:alert(1)", "must use http or https"),
        ("https://hooks.example.com/a#'; drop", "fragment"),
        ("https://evil\u{202e}.example/", "webhook_url"),
        ("https://a_b.example/", "webhook_url host"),
        (
            "https://user:pw@hooks.example.com/",
            "user name or password",
        ),
    ];
    let mut ids = Vec::new();
    for (n, (url, _)) in failing.iter().enumerate() {
        ids.push(app.subscribe(&format!("url-{n}"), url, json!({})).await);
    }
    // Quotes and SQL in the path or query are just characters of a URL: percent-encoded.
    let odd_but_valid = app
        .subscribe(
            "url-ok",
            "https://hooks.example.com/x'; drop table t; --?q=\"1\" or 1=1",
            json!({}),
        )
        .await;
    let good = good_row(&app, "urls").await;

    for (id, (url, expected)) in ids.into_iter().zip(failing) {
        let row = app.finished(id).await;
        assert_eq!(row.status, "failed", "{url:?}: {row:?}");
        let last_error = row.last_error.unwrap_or_default();
        assert!(
            last_error.contains(expected),
            "{url:?}: expected {expected:?} in {last_error:?}"
        );
    }
    let row = app.finished(odd_but_valid).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let endpoint = app
        .endpoints()
        .into_iter()
        .find(|e| e["name"] == row.result.as_ref().unwrap()["endpoint_name"])
        .unwrap();
    let sent = endpoint["url"].as_str().unwrap();
    assert!(
        !sent.contains(' ') && !sent.contains('"'),
        "encoded: {sent}"
    );
    assert_eq!(app.finished(good).await.status, "succeeded");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_https_fails_http_urls_end_to_end() {
    let app = TestApp::builder()
        .config(|c| c.require_https = true)
        .spawn()
        .await;

    let http = app
        .subscribe("plain", "http://hooks.example.com/plain", json!({}))
        .await;
    let https = good_row(&app, "https").await;
    let row = app.finished(http).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(
        row.last_error.as_deref(),
        Some("webhook_url must use https, not http")
    );
    assert_eq!(row.result.unwrap()["error"]["kind"], "invalid_request");
    assert_eq!(app.finished(https).await.status, "succeeded");
    assert_eq!(app.endpoints().len(), 1, "nothing provisioned for http");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_and_metadata_urls_fail_end_to_end_without_allow_private() {
    let app = TestApp::builder()
        .config(|c| c.allow_private_urls = false)
        .spawn()
        .await;

    let refused = [
        ("http://169.254.169.254/latest/meta-data/", "link-local"),
        ("http://0xa9fea9fe/", "link-local"),
        ("http://localhost:5432/", "localhost name"),
        ("http://2130706433/", "loopback"),
        ("http://10.0.0.1/admin", "private address"),
    ];
    let mut ids = Vec::new();
    for (n, (url, _)) in refused.iter().enumerate() {
        ids.push(app.subscribe(&format!("ssrf-{n}"), url, json!({})).await);
    }
    // A public address literal needs no DNS in the test sandbox.
    let public = app
        .subscribe("public", "https://93.184.215.14/hook", json!({}))
        .await;
    for (id, (url, expected)) in ids.into_iter().zip(refused) {
        let row = app.finished(id).await;
        assert_eq!(row.status, "failed", "{url}: {row:?}");
        let last_error = row.last_error.unwrap_or_default();
        assert!(last_error.contains(expected), "{url}: {last_error}");
        assert!(
            last_error.contains("USERHOOKS_ALLOW_PRIVATE_URLS"),
            "{last_error}"
        );
    }
    assert_eq!(app.finished(public).await.status, "succeeded");
    assert_eq!(app.endpoints().len(), 1);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_at_more_than_30_days_ahead_is_refused_saying_it_would_block_the_user() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let insert_at = |ahead: &'static str| {
        format!(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, run_at)
             values ('subscribe', 'u1', 'https://a.example/', now() + interval '{ahead}')
             returning id"
        )
    };
    let err = client
        .query_one(&insert_at("31 days"), &[])
        .await
        .expect_err("31 days ahead is refused");
    let db_err = err.as_db_error().expect("a database error");
    assert_eq!(db_err.code(), &SqlState::CHECK_VIOLATION);
    assert_eq!(
        db_err.constraint(),
        Some("subscription_requests_run_at_horizon_check")
    );
    assert!(
        db_err.message().contains("is more than 30 days ahead: the request would hold back every later request of user \"u1\" until then"),
        "{}",
        db_err.message()
    );
    let id: i64 = client
        .query_one(&insert_at("29 days"), &[])
        .await
        .expect("29 days ahead is accepted")
        .get(0);

    // Moving a request too far ahead later is refused the same way.
    let err = client
        .execute(
            "update userhooks.subscription_requests set run_at = now() + interval '1 year' where id = $1",
            &[&id],
        )
        .await
        .expect_err("moving run_at a year ahead is refused");
    assert_eq!(err.code(), Some(&SqlState::CHECK_VIOLATION));

    // A row stored before the limit existed still takes every other update.
    client
        .batch_execute(
            "set session_replication_role = replica;
             insert into userhooks.subscription_requests (action, user_id, webhook_url, run_at)
             values ('subscribe', 'u2', 'https://a.example/', now() + interval '1 year');
             set session_replication_role = origin;
             update userhooks.subscription_requests set run_at = run_at, status = 'cancelled'
              where user_id = 'u2';",
        )
        .await
        .expect("an old far-ahead row can still be updated");
    assert_eq!(
        db.scalar_i64(
            "select count(*) from userhooks.subscription_requests where status = 'cancelled'"
        )
        .await,
        1
    );
}
