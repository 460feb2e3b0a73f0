//! Errors that say what to fix: the real binary, as a person runs it, ends with one line
//! `error: ...` naming the problem and the fix, and a non-zero exit code. No backtrace, even
//! with RUST_BACKTRACE=1.

mod common;

use std::time::Duration;

use common::binary::{free_port, run_userhooks, Running};
use common::{TestDb, SEQUIN_DB, TOKEN};

#[tokio::test]
async fn status_and_reconcile_on_an_unmigrated_database_say_to_run_migrate() {
    let db = TestDb::unmigrated().await;
    let sequin = [
        ("SEQUIN_API_URL", "http://127.0.0.1:1/api"),
        ("SEQUIN_API_TOKEN", TOKEN),
        ("SEQUIN_DATABASE", SEQUIN_DB),
    ];
    for (args, extra) in [
        (&["status"][..], &[][..]),
        (&["reconcile"][..], &sequin[..]),
    ] {
        let mut env = vec![("DATABASE_URL", db.url.as_str()), ("RUST_BACKTRACE", "1")];
        env.extend_from_slice(extra);
        let out = run_userhooks(args, &env).await;
        assert_eq!(out.code, Some(1), "{args:?}: {out:?}");
        let line = out.error_line();
        assert!(line.starts_with("error: "), "{line}");
        assert!(line.contains("run `userhooks migrate` first"), "{line}");
        assert!(line.contains("schema is missing"), "{line}");
        assert!(!out.stderr.contains("acktrace"), "{}", out.stderr);
    }
}

#[tokio::test]
async fn an_unreachable_postgres_is_named_by_host_port_and_database_never_the_password() {
    let port = free_port();
    let url = format!("postgres://postgres:hunter2@127.0.0.1:{port}/orders");
    let out = run_userhooks(
        &["status"],
        &[("DATABASE_URL", &url), ("RUST_BACKTRACE", "1")],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    let line = out.error_line();
    assert!(
        line.starts_with(&format!(
            "error: cannot connect to Postgres at 127.0.0.1:{port}, database `orders`: "
        )),
        "{line}"
    );
    assert!(line.contains("Connection refused"), "{line}");
    assert!(!out.stderr.contains("hunter2"), "{}", out.stderr);
}

#[tokio::test]
async fn a_malformed_database_url_is_refused_without_printing_its_password() {
    let sequin = [
        ("SEQUIN_API_URL", "http://127.0.0.1:1/api"),
        ("SEQUIN_API_TOKEN", TOKEN),
        ("SEQUIN_DATABASE", SEQUIN_DB),
    ];
    for (url, said) in [
        (
            " postgres://u:hunter2@127.0.0.1/db?sslmode=require",
            "whitespace before postgres://",
        ),
        (
            "postgresql+psycopg://u:hunter2@127.0.0.1/db?sslmode=require",
            "must start with postgres:// or postgresql://",
        ),
        (
            "pg://u:hunter2@127.0.0.1/db?connect_timeout=3",
            "must start with postgres:// or postgresql://",
        ),
        // An `@` in the query: the user name would run up to it, password included.
        (
            "postgres://127.0.0.1/db?password=hunter2@127.0.0.1&sslmode=verify-full",
            "%40",
        ),
        ("postgres://u:hunter@2@127.0.0.1/db", "%40"),
    ] {
        for args in [
            &["status"][..],
            &["doctor"][..],
            &["doctor", "--json"][..],
            &["run"][..],
        ] {
            let mut env = vec![("DATABASE_URL", url)];
            env.extend_from_slice(&sequin);
            let out = run_userhooks(args, &env).await;
            assert_eq!(out.code, Some(1), "{args:?} {url}: {out:?}");
            let all = format!("{}{}", out.stdout, out.stderr);
            assert!(!all.contains("hunter"), "{args:?} {url}: {all}");
            assert!(all.contains(said), "{args:?} {url}: {all}");
        }
    }
}

#[tokio::test]
async fn serve_with_an_unreachable_postgres_fails_at_start() {
    let port = free_port();
    let url = format!("postgres://postgres@127.0.0.1:{port}/app");
    let mut serve = Running::spawn(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("DATABASE_URL", &url)],
    );
    let status = serve.exit(Duration::from_secs(20)).await;
    assert_eq!(status.code(), Some(1));
    let stderr = serve.stderr();
    assert!(
        stderr.contains(&format!(
            "error: cannot connect to Postgres at 127.0.0.1:{port}, database `app`"
        )),
        "{stderr}"
    );
    assert!(!stderr.contains("listening"), "{stderr}");
    assert!(!stderr.contains("LISTEN connection lost"), "{stderr}");
}

#[tokio::test]
async fn serve_on_an_unmigrated_database_says_to_run_migrate() {
    let db = TestDb::unmigrated().await;
    let out = run_userhooks(
        &["serve", "--listen", "127.0.0.1:0"],
        &[("DATABASE_URL", &db.url)],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert!(
        out.error_line().contains(
            "userhooks schema is missing in this database: run `userhooks migrate` first"
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn a_refused_environment_variable_is_named_as_the_variable_a_flag_as_the_flag() {
    let out = run_userhooks(&["run"], &[("USERHOOKS_CONCURRENCY", "lots")]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let line = out.error_line();
    assert!(
        line.starts_with("error: USERHOOKS_CONCURRENCY: invalid value 'lots': "),
        "{line}"
    );
    assert!(!line.contains("--concurrency"), "{line}");

    let out = run_userhooks(&["run", "--concurrency", "lots"], &[]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert!(
        out.error_line()
            .starts_with("error: --concurrency: invalid value 'lots': "),
        "{out:?}"
    );

    // A value outside a fixed list: the list.
    let out = run_userhooks(&["run"], &[("USERHOOKS_LOG_FORMAT", "yaml")]).await;
    assert_eq!(
        out.error_line(),
        "error: USERHOOKS_LOG_FORMAT: invalid value 'yaml': use one of text, json"
    );
}

#[tokio::test]
async fn a_bare_number_as_a_duration_is_refused_with_the_unit_to_add() {
    let out = run_userhooks(&["run"], &[("USERHOOKS_LEASE", "30")]).await;
    assert_eq!(out.code, Some(2), "{out:?}");
    let line = out.error_line();
    assert!(line.starts_with("error: USERHOOKS_LEASE: "), "{line}");
    assert!(line.contains("write 30s"), "{line}");
}

#[tokio::test]
async fn reconcile_help_lists_only_the_settings_reconcile_reads() {
    let out = run_userhooks(&["reconcile", "--help"], &[]).await;
    assert_eq!(out.code, Some(0), "{out:?}");
    for shown in [
        "--repair",
        "--json",
        "--parallel",
        "--database-url",
        "--sequin-api-url",
        "--sequin-api-token-file",
        "--sequin-database",
        "--source-table",
        "--name-prefix",
        "--http-timeout",
    ] {
        assert!(
            out.stdout.contains(shown),
            "{shown} missing:\n{}",
            out.stdout
        );
    }
    for hidden in [
        "--concurrency",
        "--lease",
        "--poll-interval",
        "--metrics-addr",
        "--allow-private-urls",
        "--shutdown-grace",
        "--retention",
        "--worker-id",
        "--listener-ping",
    ] {
        assert!(
            !out.stdout.contains(hidden),
            "{hidden} shown:\n{}",
            out.stdout
        );
    }
}

#[tokio::test]
async fn serve_listens_on_a_host_name_and_says_it_has_no_authentication() {
    let db = TestDb::new().await;
    let port = free_port();
    let listen = format!("localhost:{port}");
    let mut serve = Running::spawn(
        &["serve", "--listen", &listen],
        &[("DATABASE_URL", &db.url)],
    );
    serve
        .wait_for("listening on http://", Duration::from_secs(20))
        .await;
    let line = serve
        .stderr()
        .lines()
        .find(|l| l.contains("listening on"))
        .unwrap()
        .to_string();
    assert!(line.contains(&format!(":{port}")), "{line}");
    assert!(line.contains("no authentication"), "{line}");
    assert!(
        line.contains("a rejected Sequin token is seen only once the worker records it"),
        "{line}"
    );
    let health = reqwest::get(format!("http://localhost:{port}/healthz"))
        .await
        .expect("GET /healthz");
    assert_eq!(health.status(), 200);
    assert!(serve.terminate().await.success(), "{}", serve.stderr());
}

#[tokio::test]
async fn serve_refuses_a_token_no_client_can_send_before_connecting() {
    let dir = std::env::temp_dir().join(format!("uh-serve-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    // Saved by an editor that writes a byte-order mark: every call would get 401.
    let file = dir.join("token");
    std::fs::write(&file, "\u{feff}tok-from-file\n").unwrap();
    // Refused before Postgres is asked: none is listening here.
    let url = format!("postgres://postgres@127.0.0.1:{}/app", free_port());
    let out = run_userhooks(
        &["serve", "--listen", "127.0.0.1:0"],
        &[
            ("DATABASE_URL", &url),
            ("USERHOOKS_SERVE_TOKEN_FILE", file.to_str().unwrap()),
        ],
    )
    .await;
    let _ = std::fs::remove_dir_all(dir);
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.error_line(),
        "error: USERHOOKS_SERVE_TOKEN holds a byte-order mark (U+FEFF) at character 1: no client can send it in an Authorization header, so every call would get 401; use visible ASCII only (for example from `openssl rand -hex 32`)"
    );
    assert!(!out.stderr.contains("tok-from-file"), "{}", out.stderr);
}

#[tokio::test]
async fn serve_token_file_requires_the_bearer_token_but_healthz_stays_open() {
    let db = TestDb::new().await;
    let dir = std::env::temp_dir().join(format!("uh-serve-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("token");
    std::fs::write(&file, "tok-from-file\n").unwrap();
    let port = free_port();
    let mut serve = Running::spawn(
        &["serve", "--listen", &format!("127.0.0.1:{port}")],
        &[
            ("DATABASE_URL", &db.url),
            ("USERHOOKS_SERVE_TOKEN_FILE", file.to_str().unwrap()),
        ],
    );
    serve
        .wait_for("bearer token required", Duration::from_secs(20))
        .await;
    let http = reqwest::Client::new();
    let url = format!("http://127.0.0.1:{port}/requests/424242");
    let without = http.get(&url).send().await.unwrap();
    assert_eq!(without.status(), 401);
    let body: serde_json::Value = without.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    let with = http
        .get(&url)
        .bearer_auth("tok-from-file")
        .send()
        .await
        .unwrap();
    assert_eq!(
        with.status(),
        404,
        "the token passed: the request is unknown"
    );
    let health = http
        .get(format!("http://127.0.0.1:{port}/healthz"))
        .send()
        .await
        .unwrap();
    assert_eq!(health.status(), 200);
    assert!(serve.terminate().await.success());
    assert!(!serve.stderr().contains("tok-from-file"));
    let _ = std::fs::remove_dir_all(dir);
}
