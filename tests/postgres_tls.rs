//! Postgres over TLS with libpq's `sslmode` meanings: against the local server (SSL on with a
//! self-signed certificate), and against throwaway clusters whose certificates a test CA
//! made with the `openssl` command issues. `pg_stat_ssl` tells whether a connection is
//! really encrypted.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::binary::run_userhooks;
use common::certs::{self, Pem};
use common::cluster::{ServerTls, TempCluster};
use common::*;
use sequin_emulator::EmulatorConfig;
use serde_json::json;
use userhooks::db::{self, DbError, SslMode, TlsError};

/// `url` with one more query parameter.
fn with_params(url: &str, params: &str) -> String {
    let separator = if url.contains('?') { '&' } else { '?' };
    format!("{url}{separator}{params}")
}

fn rootcert(pem: &Pem) -> String {
    format!("sslrootcert={}", pem.cert.display())
}

/// Whether this connection is encrypted, as the server sees it.
async fn encrypted(client: &tokio_postgres::Client) -> bool {
    client
        .query_one(
            "select ssl from pg_stat_ssl where pid = pg_backend_pid()",
            &[],
        )
        .await
        .expect("read pg_stat_ssl")
        .get(0)
}

async fn connect(url: &str) -> Result<tokio_postgres::Client, DbError> {
    db::connect(url, "userhooks-tests").await
}

/// A temporary directory, removed on drop.
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> TempDir {
        let dir = std::env::temp_dir().join(format!(
            "userhooks-pgtls-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        ));
        std::fs::create_dir_all(&dir).expect("create a temporary directory");
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

async fn cluster(tls: Option<(&Pem, &[&str])>) -> TempCluster {
    let tls = tls.map(|(pem, settings)| {
        let settings: Vec<String> = settings.iter().map(|s| s.to_string()).collect();
        (pem.cert.clone(), pem.key.clone(), settings)
    });
    tokio::task::spawn_blocking(move || match tls {
        Some((cert, key, settings)) => TempCluster::start_with_tls(ServerTls {
            cert: &cert,
            key: &key,
            settings: &settings.iter().map(String::as_str).collect::<Vec<_>>(),
        }),
        None => TempCluster::start(),
    })
    .await
    .unwrap()
    .expect("Postgres binaries (initdb, pg_ctl) for a throwaway cluster")
}

/// The environment of a `userhooks` run whose system roots are `roots` alone (besides the
/// Mozilla roots compiled in): an empty certificate directory, and `roots` as the file.
fn system_roots_env<'a>(
    database_url: &'a str,
    roots: &'a Path,
    empty_dir: &'a Path,
) -> Vec<(&'a str, &'a str)> {
    vec![
        ("DATABASE_URL", database_url),
        ("SSL_CERT_FILE", roots.to_str().unwrap()),
        ("SSL_CERT_DIR", empty_dir.to_str().unwrap()),
    ]
}

fn stderr(output: &common::binary::Finished) -> String {
    output.stderr.clone()
}

#[tokio::test]
async fn require_encrypts_migrate_the_pool_and_direct_connections_and_disable_does_not() {
    let db = TestDb::unmigrated().await;
    let require = with_params(&db.url, "sslmode=require");

    let applied = db::migrate(&require)
        .await
        .expect("migrate over sslmode=require");
    assert_eq!(applied.len(), db::MIGRATIONS.len());
    assert!(encrypted(&connect(&require).await.unwrap()).await);
    let pool = db::pool(&require, 2).unwrap();
    assert!(encrypted(&pool.get().await.unwrap()).await, "pool");
    let (client, connection) = db::connect_raw(&require, "userhooks-tests").await.unwrap();
    tokio::spawn(connection);
    assert!(encrypted(&client).await, "LISTEN-style connection");

    // libpq's default, `prefer`: TLS whenever the server offers it.
    assert!(encrypted(&connect(&db.url).await.unwrap()).await, "prefer");

    let disable = with_params(&db.url, "sslmode=disable");
    assert!(!encrypted(&connect(&disable).await.unwrap()).await);
    let pool = db::pool(&disable, 1).unwrap();
    assert!(!encrypted(&pool.get().await.unwrap()).await, "pool");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_over_require_subscribes_with_every_connection_encrypted() {
    let db = TestDb::new().await;
    userhooks::db::create_example_app(&db.url)
        .await
        .expect("example app tables");
    let require = with_params(&db.url, "sslmode=require");
    let emulator = start_emulator_with(EmulatorConfig {
        delivery: Some(common::test_delivery(&require)),
        ..common::emulator_config()
    })
    .await;
    let mut config = config(&db, &emulator);
    config.database_url = require.clone();
    // No polling: only a NOTIFY, through the LISTEN connection, can bring the request below
    // to the worker once it has started.
    config.poll_interval = Duration::from_secs(3600);
    let worker = start_worker(config).await;
    eventually(
        Duration::from_secs(10),
        "the LISTEN connection is up",
        || async { worker.metrics.listener_connected.get() == 1 },
    )
    .await;

    let id = db
        .insert(
            "subscribe",
            "u1",
            Some("https://hooks.example.com/u1"),
            json!({}),
        )
        .await;
    let row = db.finished(id, Duration::from_secs(15)).await;
    assert_eq!(row.status, "succeeded", "{row:?}");

    let client = db.client().await;
    // The emulator stands in for Sequin, whose connection is not ours to configure.
    let ours = ["userhooks-worker", "userhooks-listener"];
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let seen = loop {
        let seen: Vec<(String, bool)> = client
            .query(
                "select a.application_name, s.ssl
                   from pg_stat_activity a join pg_stat_ssl s using (pid)
                  where a.datname = $1 and a.application_name = any($2)",
                &[&db.name, &&ours[..]],
            )
            .await
            .unwrap()
            .iter()
            .map(|r| (r.get(0), r.get(1)))
            .collect();
        if ours.iter().all(|name| seen.iter().any(|(n, _)| n == name)) {
            break seen;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "not all of {ours:?} connected: {seen:?}"
        );
        tokio::time::sleep(Duration::from_millis(25)).await;
    };
    assert!(seen.iter().all(|(_, ssl)| *ssl), "{seen:?}");
    worker.stop().await;
}

#[tokio::test]
async fn cli_migrate_and_status_work_over_require() {
    let db = TestDb::unmigrated().await;
    let require = with_params(&db.url, "sslmode=require");
    let env = [("DATABASE_URL", require.as_str())];

    let migrate = run_userhooks(&["migrate"], &env).await;
    assert!(migrate.success(), "{}", stderr(&migrate));
    assert!(migrate.stdout.contains("applied migrations"), "{migrate:?}");
    assert_eq!(
        db.scalar_i64("select count(*) from userhooks.schema_migrations")
            .await,
        db::MIGRATIONS.len() as i64
    );
    let status = run_userhooks(&["status"], &env).await;
    assert!(status.success(), "{}", stderr(&status));
    assert!(!status.stdout.is_empty());
}

#[tokio::test]
async fn verify_full_with_the_system_roots_refuses_a_self_signed_server_in_one_line() {
    let mut url = url::Url::parse(&server_url()).expect("test server URL");
    url.set_password(Some("s3cret-pw")).unwrap();
    url.query_pairs_mut().append_pair("sslmode", "verify-full");
    let host = url.host_str().unwrap().to_string();
    let dir = TempDir::new();
    let no_roots = dir.path().join("none.pem");
    std::fs::write(&no_roots, "").unwrap();

    let output = run_userhooks(
        &["status"],
        &system_roots_env(url.as_str(), &no_roots, dir.path()),
    )
    .await;
    assert!(!output.success());
    let text = stderr(&output);
    let expected = format!(
        "TLS: the server certificate for {host} is not signed by a CA in the system roots (sslmode=verify-full); set sslrootcert=<the CA certificate file> or fix the server certificate"
    );
    assert_eq!(output.error_line(), format!("error: {expected}"), "{text}");
    assert!(!text.contains("s3cret-pw"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_checked_as_libpq_does() {
    let dir = TempDir::new();
    let ca = certs::ca(dir.path(), "userhooks test CA");
    let other = certs::ca(dir.path(), "another CA");
    let server = certs::issued(dir.path(), &ca, "server", "DNS:localhost,IP:127.0.0.1");
    // `app` signs in with SCRAM, which over TLS binds the channel (SCRAM-SHA-256-PLUS).
    let hba = dir.path().join("pg_hba.conf");
    std::fs::write(
        &hba,
        "local all all trust\n\
         hostssl all app 127.0.0.1/32 scram-sha-256\n\
         hostssl all postgres 127.0.0.1/32 trust\n",
    )
    .unwrap();
    let cluster = cluster(Some((&server, &[&format!("hba_file={}", hba.display())]))).await;
    let base = cluster.url();
    let port = cluster.port;
    let verify_full = with_params(&base, &format!("sslmode=verify-full&{}", rootcert(&ca)));

    // verify-full with the CA that issued the certificate: by address, by name, and as a
    // key=value string.
    for url in [
        verify_full.clone(),
        format!(
            "postgres://postgres@localhost:{port}/postgres?sslmode=verify-full&{}",
            rootcert(&ca)
        ),
        format!(
            "host=127.0.0.1 port={port} user=postgres dbname=postgres sslmode=verify-full sslrootcert='{}'",
            ca.cert.display()
        ),
    ] {
        let client = connect(&url)
            .await
            .unwrap_or_else(|e| panic!("{url}: {e}"));
        assert!(encrypted(&client).await, "{url}");
    }
    let pool = db::pool(&verify_full, 1).unwrap();
    assert!(encrypted(&pool.get().await.unwrap()).await, "pool");

    connect(&verify_full)
        .await
        .unwrap()
        .batch_execute("create role app login password 'app-pw-81'")
        .await
        .unwrap();
    let app = format!(
        "postgres://app:app-pw-81@localhost:{port}/postgres?sslmode=verify-full&channel_binding=require&{}",
        rootcert(&ca)
    );
    let client = connect(&app)
        .await
        .expect("SCRAM with channel binding over verify-full");
    assert!(encrypted(&client).await);

    // Another CA: refused, by direct connections and by the pool alike, in one line.
    let wrong_ca = with_params(&base, &format!("sslmode=verify-full&{}", rootcert(&other)));
    let expected = format!(
        "TLS: the server certificate for 127.0.0.1 is not signed by a CA in sslrootcert={} (sslmode=verify-full); set sslrootcert=<the CA certificate file> or fix the server certificate",
        other.cert.display()
    );
    let err = connect(&wrong_ca).await.unwrap_err();
    assert_eq!(err.to_string(), expected);
    let pool = db::pool(&wrong_ca, 1).unwrap();
    let err = DbError::from(pool.get().await.unwrap_err());
    assert_eq!(err.to_string(), expected);

    // libpq: `require` with a root file checks the chain like `verify-ca`; alone, nothing.
    let err = connect(&with_params(
        &base,
        &format!("sslmode=require&{}", rootcert(&other)),
    ))
    .await
    .unwrap_err();
    assert!(
        matches!(
            &err,
            DbError::Tls(TlsError::Untrusted {
                mode: SslMode::VerifyCa,
                ..
            })
        ),
        "{err}"
    );
    let require = with_params(&base, "sslmode=require");
    assert!(encrypted(&connect(&require).await.unwrap()).await);

    // A host name the certificate does not list: verify-ca accepts, verify-full refuses.
    let misnamed = format!(
        "postgres://postgres@db.invalid:{port}/postgres?hostaddr=127.0.0.1&{}",
        rootcert(&ca)
    );
    let client = connect(&with_params(&misnamed, "sslmode=verify-ca"))
        .await
        .expect("verify-ca does not check the host name");
    assert!(encrypted(&client).await);
    let err = connect(&with_params(&misnamed, "sslmode=verify-full"))
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "TLS: the server certificate is not valid for the host name db.invalid (sslmode=verify-full); connect by a name the certificate lists, or use sslmode=verify-ca"
    );

    // An unreadable root file is named.
    let missing = dir.path().join("missing.pem");
    let err = connect(&with_params(
        &base,
        &format!("sslmode=verify-full&sslrootcert={}", missing.display()),
    ))
    .await
    .unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "sslrootcert={}: cannot read the file",
            missing.display()
        )),
        "{err}"
    );

    // Without sslrootcert the system roots are used: with the test CA among them (as
    // `SSL_CERT_FILE`), the CLI verifies the server; with another CA it refuses.
    let empty = TempDir::new();
    let system_full = with_params(&base, "sslmode=verify-full");
    let migrate = run_userhooks(
        &["migrate"],
        &system_roots_env(&system_full, &ca.cert, empty.path()),
    )
    .await;
    assert!(migrate.success(), "{}", stderr(&migrate));
    let by_name = with_params(&base, "sslrootcert=system");
    let status = run_userhooks(
        &["status"],
        &system_roots_env(&by_name, &ca.cert, empty.path()),
    )
    .await;
    assert!(status.success(), "{}", stderr(&status));
    let refused = run_userhooks(
        &["status"],
        &system_roots_env(&system_full, &other.cert, empty.path()),
    )
    .await;
    assert!(!refused.success());
    assert!(
        stderr(&refused).contains(
            "TLS: the server certificate for 127.0.0.1 is not signed by a CA in the system roots (sslmode=verify-full)"
        ),
        "{}",
        stderr(&refused)
    );

    // verify-ca checks no name: with the system roots, a certificate any public CA issued
    // for another host would pass. Refused before connecting, as libpq refuses it.
    let verify_ca_system = with_params(
        &format!("postgres://postgres@db.invalid:{port}/postgres?hostaddr=127.0.0.1"),
        "sslmode=verify-ca",
    );
    let refused = run_userhooks(
        &["status"],
        &system_roots_env(&verify_ca_system, &ca.cert, empty.path()),
    )
    .await;
    assert!(!refused.success(), "{}", stderr(&refused));
    assert_eq!(
        refused.error_line(),
        "error: sslmode=verify-ca needs sslrootcert=<the CA certificate file>: with the system roots any public certificate would pass; use verify-full for them"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_against_a_server_without_tls_says_so_and_prefer_connects_plain() {
    let cluster = cluster(None).await;
    let require = with_params(&cluster.url(), "sslmode=require");
    let err = connect(&require).await.unwrap_err();
    assert!(matches!(err, DbError::Tls(TlsError::NotOffered)), "{err:?}");
    let migrate = run_userhooks(&["migrate"], &[("DATABASE_URL", &require)]).await;
    assert!(!migrate.success());
    assert!(
        stderr(&migrate).contains("TLS: the server does not accept TLS connections"),
        "{}",
        stderr(&migrate)
    );

    let client = connect(&cluster.url()).await.expect("prefer");
    assert!(!encrypted(&client).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefer_connects_plain_when_the_tls_handshake_fails_and_require_does_not() {
    let dir = TempDir::new();
    let server = certs::self_signed(dir.path(), "server", "DNS:localhost,IP:127.0.0.1");
    // Only a CBC cipher suite over TLS 1.2 at most: rustls offers none of those.
    let cluster = cluster(Some((
        &server,
        &[
            "ssl_max_protocol_version=TLSv1.2",
            "ssl_ciphers=ECDHE-ECDSA-AES128-SHA",
        ],
    )))
    .await;

    let client = connect(&cluster.url())
        .await
        .expect("prefer falls back to a plain connection");
    assert!(!encrypted(&client).await);

    let err = connect(&with_params(&cluster.url(), "sslmode=require"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, DbError::Tls(TlsError::Handshake { host, mode: SslMode::Require, .. }) if host == "127.0.0.1"),
        "{err}"
    );
}
