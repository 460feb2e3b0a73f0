//! `userhooks bench` must not rot: each mode runs end to end with tiny sizes and reports
//! the fields the README's performance table is made of. (Speeds are not asserted: they are
//! measured by the benchmark, not by tests. The idle worker's quiet is a promise, not a
//! speed, and has a generous bound.)

mod common;

use serde_json::Value;

fn bench(args: &[&str]) -> Value {
    let output = std::process::Command::new(env!("CARGO_BIN_EXE_userhooks"))
        .arg("bench")
        .args(args)
        .arg("--json")
        .env("DATABASE_URL", common::server_url())
        .output()
        .expect("run userhooks bench");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "bench {args:?} failed: {}\n{stdout}",
        String::from_utf8_lossy(&output.stderr)
    );
    serde_json::from_str(stdout.lines().last().unwrap_or_default())
        .unwrap_or_else(|e| panic!("bench {args:?} printed no JSON line ({e}): {stdout}"))
}

fn number(result: &Value, key: &str) -> f64 {
    result[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {result}"))
}

#[test]
fn burn_down_reports_throughput_waits_calls_memory_and_connections() {
    let result = bench(&["burn-down", "--requests", "60", "--latency-ms", "1"]);
    assert_eq!(result["succeeded"], 60);
    assert!(number(&result, "subscribes_per_second") > 0.0);
    // The rate counts first claim to last finish; the wall time also holds start-up.
    let busy = number(&result, "seconds");
    assert!(
        busy > 0.0 && busy <= number(&result, "wall_seconds"),
        "{result}"
    );
    // POST endpoint + POST sink per subscribe (+ one shared config_apply).
    let calls = number(&result, "sequin_calls_per_request");
    assert!((2.0..2.1).contains(&calls), "{calls}");
    assert!(number(&result, "queue_wait_p99_ms") >= number(&result, "queue_wait_p50_ms"));
    assert!(number(&result, "worker_peak_rss_mib") > 1.0);
    let connections = number(&result, "worker_peak_db_connections");
    assert!((1.0..=8.0).contains(&connections), "{connections}");
}

#[test]
fn pickup_reports_commit_to_claim_latency_for_every_request() {
    let result = bench(&["pickup", "--rate", "40", "--count", "20"]);
    assert_eq!(result["claimed"], 20);
    assert!(number(&result, "pickup_p50_ms") > 0.0);
    assert!(number(&result, "pickup_max_ms") >= number(&result, "pickup_p99_ms"));
}

#[test]
fn claim_mode_times_claims_over_a_table_of_finished_rows() {
    let result = bench(&["claim", "--finished", "2000", "--claims", "30"]);
    assert_eq!(result["claims"], 30);
    assert!(number(&result, "claim_p99_ms") > 0.0);
}

/// An idle worker sends under one query per second (it polls every other interval while
/// its listener is up). The bound is ten times that, for statistics that backends report
/// late into the window; a worker polling at the shortest interval allowed (10 ms) sends
/// about fifty.
#[test]
fn idle_mode_counts_queries_per_second_and_an_idle_worker_stays_quiet() {
    let result = bench(&["idle", "--seconds", "1"]);
    let seconds = number(&result, "seconds");
    assert!(seconds >= 1.0, "{result}");
    let transactions = result["transactions"]
        .as_i64()
        .unwrap_or_else(|| panic!("transactions missing in {result}"));
    let rate = number(&result, "queries_per_second");
    assert!(
        (rate - transactions as f64 / seconds).abs() < 1e-9,
        "the rate is transactions per second: {result}"
    );
    assert!(
        (0.0..=10.0).contains(&rate),
        "an idle worker is not idle: {result}"
    );
}
