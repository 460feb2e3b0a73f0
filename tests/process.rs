//! The real binary as operators run it: signals and exit codes.

mod common;

use std::process::Stdio;
use std::time::{Duration, Instant};

use common::*;
use sequin_emulator::{Faults, RouteFaults};

fn worker_command(db: &TestDb, api_url: &str) -> tokio::process::Command {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"));
    cmd.arg("run")
        .env_clear()
        .env("DATABASE_URL", &db.url)
        .env("SEQUIN_API_URL", api_url)
        .env("SEQUIN_API_TOKEN", TOKEN)
        .env("SEQUIN_DATABASE", SEQUIN_DB)
        .env("USERHOOKS_METRICS_ADDR", "off")
        .env("USERHOOKS_ALLOW_PRIVATE_URLS", "true")
        .env("USERHOOKS_CONCURRENCY", "16")
        .env("USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND", "unlimited")
        .env("USERHOOKS_SHUTDOWN_GRACE", "10s")
        .env("USERHOOKS_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    cmd
}

fn signal(pid: u32, sig: &str) {
    let status = std::process::Command::new("kill")
        .args([sig, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_requests_in_flight_exits_zero_and_leaves_nothing_running() {
    let db = TestDb::new().await;
    let emulator = start_emulator().await;
    emulator.set_faults(Faults {
        all: RouteFaults {
            latency_ms: 300,
            ..RouteFaults::default()
        },
        ..Faults::default()
    });
    let mut child = worker_command(&db, &emulator.api_url())
        .spawn()
        .expect("spawn worker");
    db.client()
        .await
        .batch_execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', g::text, 'https://hooks.example.com/' || g from generate_series(1, 40) g",
        )
        .await
        .unwrap();
    eventually(Duration::from_secs(15), "requests in flight", || async {
        db.scalar_i64(
            "select count(*) from userhooks.subscription_requests where status = 'running'",
        )
        .await
            > 0
    })
    .await;
    let started = Instant::now();
    signal(child.id().expect("pid"), "-TERM");
    let status = tokio::time::timeout(Duration::from_secs(20), child.wait())
        .await
        .expect("exits within the grace period")
        .unwrap();
    assert!(status.success(), "exit status {status:?}");
    assert!(started.elapsed() < Duration::from_secs(12));
    assert_eq!(
        db.scalar_i64(
            "select count(*) from userhooks.subscription_requests where status = 'running'"
        )
        .await,
        0
    );
    // What was not finished is pending and completes on the next start.
    let mut again = worker_command(&db, &emulator.api_url()).spawn().unwrap();
    emulator.set_faults(Faults::default());
    eventually(Duration::from_secs(30), "all requests done", || async {
        db.scalar_i64(
            "select count(*) from userhooks.subscription_requests where status <> 'succeeded'",
        )
        .await
            == 0
    })
    .await;
    assert_eq!(emulator.sinks().len(), 40);
    signal(again.id().unwrap(), "-TERM");
    assert!(again.wait().await.unwrap().success());
}

#[tokio::test]
async fn run_without_sequin_settings_explains_every_problem() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"))
        .arg("run")
        .env_clear()
        .env("USERHOOKS_CONCURRENCY", "0")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let stderr = String::from_utf8_lossy(&output.stderr);
    for needle in [
        "SEQUIN_API_URL",
        "SEQUIN_API_TOKEN",
        "SEQUIN_DATABASE",
        "USERHOOKS_CONCURRENCY",
    ] {
        assert!(stderr.contains(needle), "missing {needle} in: {stderr}");
    }
}

#[tokio::test]
async fn token_is_never_printed_in_errors() {
    let output = tokio::process::Command::new(env!("CARGO_BIN_EXE_userhooks"))
        .arg("run")
        .env_clear()
        .env("SEQUIN_API_TOKEN", "super-secret-token-value")
        .env("SEQUIN_API_URL", "not a url")
        .output()
        .await
        .unwrap();
    assert!(!output.status.success());
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!all.contains("super-secret-token-value"), "{all}");
}
