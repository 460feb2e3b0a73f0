//! `userhooks demo` as CI runs it: the real binary, its own database, exit code and check.

mod common;

use std::process::Command;

#[tokio::test]
async fn demo_runs_to_completion_and_its_check_passes() {
    let name = format!("uh_demo_{}", uuid::Uuid::new_v4().simple());
    let bin = env!("CARGO_BIN_EXE_userhooks");
    let output = tokio::task::spawn_blocking({
        let name = name.clone();
        move || {
            Command::new(bin)
                .args(["demo", "--demo-database", &name, "--generate-for", "2s"])
                .env("DATABASE_URL", common::server_url())
                .output()
                .expect("run userhooks demo")
        }
    })
    .await
    .unwrap();
    // Clean up before asserting, so a failure leaves nothing behind.
    if let Ok(admin) = userhooks::db::connect(&common::server_url(), "userhooks-tests").await {
        let _ = admin
            .batch_execute(&format!("drop database if exists {name} with (force)"))
            .await;
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "demo failed ({}):\n{stdout}\n{stderr}",
        output.status
    );
    assert!(stdout.contains("Check passed"), "{stdout}");
    // A newcomer's first run shows no warning: the demo's setup passes the worker's preflight.
    assert!(!stderr.contains("WARN"), "{stderr}");
    assert!(stdout.contains("Demo passed"), "{stdout}");
    assert!(stdout.contains("backfill completed"), "{stdout}");
    assert!(
        stdout.contains("and Paul's backfill replayed exactly their history"),
        "{stdout}"
    );
    let linus = stdout
        .lines()
        .find(|l| l.contains("Linus") && l.trim_start().starts_with(char::is_numeric))
        .unwrap_or_else(|| panic!("no row for Linus:\n{stdout}"));
    assert_eq!(
        linus.split_whitespace().nth(2),
        Some("unsubscribed"),
        "{linus}"
    );
    // The table lists every user, and the one without a subscription received nothing.
    let grace = stdout
        .lines()
        .find(|l| l.contains("Grace") && l.trim_start().starts_with(char::is_numeric))
        .unwrap_or_else(|| panic!("no row for Grace:\n{stdout}"));
    let cols: Vec<&str> = grace.split_whitespace().collect();
    assert_eq!(cols[2], "none", "{grace}");
    assert_eq!(cols[5], "0", "Grace received webhooks: {grace}");

    // Without a terminal the progress is plain lines, not bars that draw nothing.
    let progress = |label: &str| {
        stdout
            .lines()
            .filter(|l| l.starts_with("      ") && l.contains(label))
            .count()
    };
    assert!(progress("notifications inserted") >= 1, "{stdout}");
    assert!(progress("rows replayed") >= 1, "{stdout}");
    // Rates are rounded, and nothing prints empty parentheses.
    let unrounded = regex::Regex::new(r"\d\.\d{2,}/s").unwrap();
    assert!(!unrounded.is_match(&stdout), "{stdout}");
    assert!(!stdout.contains("()"), "{stdout}");
    assert!(
        stdout.contains("backfill differs from written: a backfill replays the user's rows that exist at that moment"),
        "{stdout}"
    );
    assert!(stdout.contains("dropdb "), "{stdout}");
    assert!(stdout.contains(&format!(" {name}`")), "{stdout}");
    assert!(stdout.contains("userhooks dev-stack"), "{stdout}");
}

#[tokio::test]
async fn a_rate_of_zero_is_refused_before_anything_is_created() {
    let name = format!("uh_demo_{}", uuid::Uuid::new_v4().simple());
    let out = common::binary::run_userhooks(
        &["demo", "--demo-database", &name, "--rate", "0"],
        &[("DATABASE_URL", &common::server_url())],
    )
    .await;
    assert_eq!(out.code, Some(2), "{out:?}");
    assert_eq!(
        out.error_line(),
        "error: --rate: invalid value '0': must be a number of notifications per second greater than 0"
    );
    assert!(!out.stdout.contains("[1/7]"), "{}", out.stdout);
    let admin = userhooks::db::connect(&common::server_url(), "userhooks-tests")
        .await
        .unwrap();
    let exists: bool = admin
        .query_one(
            "select exists (select 1 from pg_database where datname = $1)",
            &[&name],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !exists,
        "the demo created its database before refusing the rate"
    );
}
