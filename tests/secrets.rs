//! Secrets after a real run of the binary: the Sequin token comes from a file, subscriptions
//! carry per-subscription secrets, logging is at `debug`. Afterwards no secret is in the logs,
//! in any table of the schema, or in `/metrics`; each secret went to Sequin only inside
//! `encrypted_headers`; and the `config/apply` answer (with a database password) was dropped.

mod common;

use std::process::Stdio;
use std::time::Duration;

use common::binary::free_port;
use common::*;
use serde_json::json;
use tokio::io::AsyncReadExt;

const TOKEN_FILE_TOKEN: &str = "tok-from-file-5b1e9c2d";
/// What the emulator's `config/apply` answer carries as the database password.
const DB_PASSWORD: &str = "emulator-secret-password";

/// Every row of every table in schema userhooks, as JSON text.
async fn dump_schema(db: &TestDb) -> String {
    let client = db.client().await;
    let tables: Vec<String> = client
        .query(
            "select quote_ident(table_name) from information_schema.tables
              where table_schema = 'userhooks'",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect();
    assert!(tables.len() >= 4, "{tables:?}");
    let mut dump = String::new();
    for table in tables {
        let rows = client
            .query(
                &format!("select to_jsonb(t)::text from userhooks.{table} t"),
                &[],
            )
            .await
            .unwrap();
        for row in rows {
            dump.push_str(&row.get::<_, String>(0));
            dump.push('\n');
        }
    }
    dump
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_secret_in_logs_tables_or_metrics_after_a_run() {
    let app = TestApp::builder()
        .emulator(|e| e.token = TOKEN_FILE_TOKEN.to_string())
        .without_worker()
        .spawn()
        .await;
    let token_file =
        std::env::temp_dir().join(format!("userhooks-token-{}", uuid::Uuid::new_v4().simple()));
    std::fs::write(&token_file, format!("{TOKEN_FILE_TOKEN}\n")).unwrap();
    let metrics_addr = format!("127.0.0.1:{}", free_port());

    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"))
        .arg("run")
        .env_clear()
        .env("DATABASE_URL", &app.db.url)
        .env("SEQUIN_API_URL", app.emulator.api_url())
        .env("SEQUIN_API_TOKEN_FILE", &token_file)
        .env("SEQUIN_DATABASE", SEQUIN_DB)
        .env("USERHOOKS_METRICS_ADDR", &metrics_addr)
        .env("USERHOOKS_ALLOW_PRIVATE_URLS", "true")
        .env("USERHOOKS_LOG", "debug")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn worker");
    // Drain the pipes while the worker runs, so debug logging never blocks it.
    let mut stderr = child.stderr.take().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let logs = tokio::spawn(async move {
        let mut text = String::new();
        stderr.read_to_string(&mut text).await.expect("read stderr");
        stdout.read_to_string(&mut text).await.expect("read stdout");
        text
    });

    let ok_secret = "s3cret-succeeds-8d1f";
    let bad_url_secret = "s3cret-bad-url-41aa";
    let bad_option_secret = "s3cret-bad-option-77c0";
    let ok = app
        .subscribe(
            "42",
            "https://hooks.example.com/42",
            json!({ "secret": ok_secret, "headers": { "X-Plain": "visible" } }),
        )
        .await;
    let bad_url = app
        .subscribe(
            "43",
            "ftp://hooks.example.com/43",
            json!({ "secret": bad_url_secret }),
        )
        .await;
    let bad_option = app
        .subscribe(
            "44",
            "https://hooks.example.com/44",
            json!({ "secret": bad_option_secret, "colour": "red" }),
        )
        .await;
    assert_eq!(app.finished(ok).await.status, "succeeded");
    assert_eq!(app.finished(bad_url).await.status, "failed");
    assert_eq!(app.finished(bad_option).await.status, "failed");

    let metrics = reqwest::get(format!("http://{metrics_addr}/metrics"))
        .await
        .expect("metrics endpoint")
        .text()
        .await
        .unwrap();
    assert!(metrics.contains("userhooks_requests_total"), "{metrics}");

    let status = std::process::Command::new("kill")
        .args(["-TERM", &child.id().unwrap().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
    let exit = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("worker exits")
        .unwrap();
    assert!(exit.success(), "{exit:?}");
    let logs = logs.await.unwrap();
    let _ = std::fs::remove_file(&token_file);
    assert!(logs.contains("DEBUG"), "debug logging was on");
    let dump = dump_schema(&app.db).await;

    for secret in [
        TOKEN_FILE_TOKEN,
        ok_secret,
        bad_url_secret,
        bad_option_secret,
        DB_PASSWORD,
    ] {
        assert!(!logs.contains(secret), "{secret} in the logs:\n{logs}");
        assert!(!dump.contains(secret), "{secret} in the tables:\n{dump}");
        assert!(!metrics.contains(secret), "{secret} in /metrics");
    }

    // The secret went to Sequin once, inside encrypted_headers only.
    let calls = app.emulator.calls();
    let with_secret: Vec<_> = calls
        .iter()
        .filter(|c| {
            c.body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(ok_secret))
        })
        .collect();
    assert_eq!(with_secret.len(), 1, "{with_secret:?}");
    let body = with_secret[0].body.clone().unwrap();
    assert_eq!(with_secret[0].operation, "create_endpoint");
    assert_eq!(
        body["encrypted_headers"],
        json!({ "Authorization": format!("Bearer {ok_secret}") })
    );
    assert_eq!(body["headers"], json!({ "X-Plain": "visible" }));
    for secret in [bad_url_secret, bad_option_secret] {
        assert!(
            !calls.iter().any(|c| c
                .body
                .as_ref()
                .is_some_and(|b| b.to_string().contains(secret))),
            "a failed request sent its secret"
        );
    }

    // In the tables: a redaction marker with the same SHA-256 as the subscription's hash.
    let client = app.client().await;
    for (id, secret) in [
        (ok, ok_secret),
        (bad_url, bad_url_secret),
        (bad_option, bad_option_secret),
    ] {
        let options = request_options(&client, id).await;
        assert_eq!(
            options["secret"],
            json!({ "redacted": true, "sha256": userhooks::provision::secret_hash(secret) }),
            "{options}"
        );
    }
    let hash: Option<String> = client
        .query_one(
            "select secret_hash from userhooks.webhook_subscriptions where user_id = '42'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        hash.as_deref(),
        Some(userhooks::provision::secret_hash(ok_secret).as_str())
    );
    // A failed request whose secret was erased cannot be retried: the secret is gone.
    let err = client
        .query_one("select userhooks.retry($1)", &[&bad_option])
        .await
        .expect_err("retry refuses a scrubbed request");
    assert!(
        err.as_db_error()
            .is_some_and(|e| e.message().contains("insert a new request with the secret")),
        "{err:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secret_stays_while_a_request_can_still_run_and_goes_when_it_finishes() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let id = db
        .insert(
            "subscribe",
            "1",
            Some("https://a.example/"),
            json!({ "secret": "keep-me", "backfill": true }),
        )
        .await;
    // pending -> running -> pending (a durable retry): the worker still needs it.
    for status in ["running", "pending"] {
        client
            .execute(
                "update userhooks.subscription_requests set status = $2 where id = $1",
                &[&id, &status],
            )
            .await
            .unwrap();
        assert_eq!(
            request_options(&client, id).await["secret"],
            "keep-me",
            "{status}"
        );
    }
    client
        .execute(
            "update userhooks.subscription_requests set status = 'cancelled' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let options = request_options(&client, id).await;
    assert_eq!(options["secret"]["redacted"], true, "{options}");
    assert_eq!(options["backfill"], true, "other options are kept");
    // Updating a finished row again keeps the marker as it is.
    client
        .execute(
            "update userhooks.subscription_requests set last_error = 'x' where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(request_options(&client, id).await, options);
    // A row inserted already finished is scrubbed too.
    let done: serde_json::Value = client
        .query_one(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, options, status)
             values ('subscribe', '2', 'https://a.example/', '{\"secret\": 7}', 'failed')
             returning options",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(done, json!({ "secret": { "redacted": true } }));
}
