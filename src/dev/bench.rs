//! `userhooks bench`: the end-to-end benchmark (docs/architecture.md §10).
//!
//! The worker runs as a separate process (this binary's `run`), so its RSS and connections
//! are its own; the emulator runs in the bench process (or at `--sequin-url`). Everything
//! happens in a throwaway database that is dropped at the end.

use std::io::Write as _;
use std::process::Stdio;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::db::{self, DbError};
use sequin_emulator::{self as emulator, EmulatorConfig, EmulatorHandle, Faults, RouteFaults};

#[derive(Args, Debug)]
pub struct BenchArgs {
    #[command(subcommand)]
    pub mode: BenchMode,
    /// Postgres server; the bench creates and drops its own database there.
    #[arg(
        long,
        env = "DATABASE_URL",
        default_value = "postgres://postgres@127.0.0.1:5432/postgres",
        hide_env_values = true,
        global = true
    )]
    pub database_url: String,
    /// Print one JSON line instead of a table.
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum BenchMode {
    /// Pre-insert N subscribe requests, then measure how fast the worker burns them down.
    BurnDown {
        #[arg(long, default_value_t = 20_000)]
        requests: u32,
        /// Latency the emulator adds to every Sequin call.
        #[arg(long, default_value_t = 0)]
        latency_ms: u64,
        /// Requests the worker processes at once (its USERHOOKS_CONCURRENCY). At 1,024 both
        /// throughput targets hold on a 2-core machine, with a 20 ms Sequin too, within the
        /// footprint target (README).
        #[arg(long, default_value_t = 1024)]
        concurrency: usize,
        /// Use an emulator at this URL instead of an in-process one (token: --token).
        #[arg(long)]
        sequin_url: Option<String>,
        #[arg(long, default_value = "bench-token")]
        token: String,
    },
    /// Insert one request at a time at --rate per second; measure commit → claim.
    Pickup {
        #[arg(long, default_value_t = 50)]
        rate: u32,
        #[arg(long, default_value_t = 500)]
        count: u32,
    },
    /// Run an idle worker and count the queries it sends per second.
    Idle {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
    },
    /// Time the claim statement with a large table of finished requests.
    Claim {
        /// Finished rows to load first.
        #[arg(long, default_value_t = 1_000_000)]
        finished: i64,
        /// Claims to time.
        #[arg(long, default_value_t = 2_000)]
        claims: u32,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("bench failed: {0}")]
    Failed(String),
}

/// A database of the bench's own, dropped on `cleanup`.
struct BenchDb {
    admin_url: String,
    name: String,
    url: String,
}

impl BenchDb {
    async fn create(admin_url: &str) -> Result<Self, BenchError> {
        let name = format!("userhooks_bench_{}", std::process::id());
        let admin = db::connect(admin_url, "userhooks-bench").await?;
        admin
            .batch_execute(&format!("drop database if exists {name} with (force)"))
            .await?;
        admin
            .batch_execute(&format!("create database {name}"))
            .await?;
        let url = super::demo::database_url_for(admin_url, &name);
        db::migrate(&url).await?;
        Ok(BenchDb {
            admin_url: admin_url.to_string(),
            name,
            url,
        })
    }

    async fn cleanup(self) -> Result<(), BenchError> {
        let admin = db::connect(&self.admin_url, "userhooks-bench").await?;
        admin
            .batch_execute(&format!(
                "drop database if exists {} with (force)",
                self.name
            ))
            .await?;
        Ok(())
    }
}

async fn start_emulator(token: &str, latency_ms: u64) -> Result<EmulatorHandle, BenchError> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(emulator::start(
        EmulatorConfig {
            token: token.to_string(),
            database: "app".to_string(),
            tables: vec!["public.notifications".to_string()],
            faults: Faults {
                all: RouteFaults {
                    latency_ms,
                    ..RouteFaults::default()
                },
                ..Faults::default()
            },
            ..EmulatorConfig::default()
        },
        listener,
    )
    .await)
}

/// The worker under test, as its own process.
struct WorkerProcess {
    child: tokio::process::Child,
}

impl WorkerProcess {
    fn spawn(
        db_url: &str,
        api_url: &str,
        token: &str,
        concurrency: usize,
        metrics_port: Option<u16>,
    ) -> Result<Self, BenchError> {
        let exe = std::env::current_exe()?;
        let metrics_addr = metrics_port.map_or("off".to_string(), |p| format!("127.0.0.1:{p}"));
        let child = tokio::process::Command::new(exe)
            .arg("run")
            .env("DATABASE_URL", db_url)
            .env("SEQUIN_API_URL", api_url)
            .env("SEQUIN_API_TOKEN", token)
            .env("SEQUIN_DATABASE", "app")
            .env("USERHOOKS_CONCURRENCY", concurrency.to_string())
            // The bench measures the worker, not the pacing that protects a real Sequin.
            .env("USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND", "unlimited")
            .env("USERHOOKS_METRICS_ADDR", metrics_addr)
            .env("USERHOOKS_ALLOW_PRIVATE_URLS", "true")
            .env("USERHOOKS_LOG", "warn")
            .env_remove("SEQUIN_API_TOKEN_FILE")
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()?;
        Ok(WorkerProcess { child })
    }

    fn pid(&self) -> Option<u32> {
        self.child.id()
    }

    /// `Err` if the worker has exited (it never should before `stop`).
    fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait()? {
            None => Ok(()),
            Some(status) => Err(BenchError::Failed(format!(
                "the worker exited early with {status}"
            ))),
        }
    }

    /// Peak resident set (VmHWM) in MiB.
    fn peak_rss_mib(&self) -> Option<f64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
        let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
        Some(kib / 1024.0)
    }

    async fn stop(mut self) -> Result<(), BenchError> {
        if let Some(pid) = self.pid() {
            let _ = std::process::Command::new("kill")
                .args(["-TERM", &pid.to_string()])
                .status();
        }
        match tokio::time::timeout(Duration::from_secs(40), self.child.wait()).await {
            Ok(status) => {
                let status = status?;
                if !status.success() {
                    return Err(BenchError::Failed(format!("worker exited with {status}")));
                }
            }
            Err(_) => {
                let _ = self.child.kill().await;
            }
        }
        Ok(())
    }
}

fn progress(label: &str, done: i64, total: i64, started: Instant) {
    let rate = done as f64 / started.elapsed().as_secs_f64().max(1e-3);
    eprint!("\r  {label}: {done}/{total} ({rate:.0}/s)      ");
    let _ = std::io::stderr().flush();
}

pub async fn run(args: BenchArgs) -> Result<Value, BenchError> {
    let result = match args.mode {
        BenchMode::BurnDown {
            requests,
            latency_ms,
            concurrency,
            sequin_url,
            token,
        } => {
            burn_down(
                &args.database_url,
                requests,
                latency_ms,
                concurrency,
                sequin_url,
                &token,
            )
            .await?
        }
        BenchMode::Pickup { rate, count } => pickup(&args.database_url, rate, count).await?,
        BenchMode::Idle { seconds } => idle(&args.database_url, seconds).await?,
        BenchMode::Claim { finished, claims } => {
            claim_cost(&args.database_url, finished, claims).await?
        }
    };
    if args.json {
        println!("{result}");
    } else {
        print_table(&result);
    }
    Ok(result)
}

fn print_table(result: &Value) {
    println!();
    if let Some(map) = result.as_object() {
        for (key, value) in map {
            let shown = match value {
                Value::Number(n) => n
                    .as_f64()
                    .map(|f| {
                        if f.fract() == 0.0 {
                            format!("{f:.0}")
                        } else {
                            format!("{f:.3}")
                        }
                    })
                    .unwrap_or_else(|| n.to_string()),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            println!("  {key:<28} {shown}");
        }
    }
}

async fn connections(client: &tokio_postgres::Client, name: &str) -> Result<i64, BenchError> {
    Ok(client
        .query_one(
            "select count(*) from pg_stat_activity
              where datname = $1 and application_name like 'userhooks-%'
                and application_name <> 'userhooks-bench'",
            &[&name],
        )
        .await?
        .get(0))
}

/// A free loopback port (bound, then released for the worker to bind a moment later).
fn free_port() -> std::io::Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Requests the worker has finished (succeeded or failed), read from its `/metrics`; `None`
/// while it is not serving them yet.
async fn finished_requests(http: &reqwest::Client, url: &str) -> Option<i64> {
    let text = http.get(url).send().await.ok()?.text().await.ok()?;
    let finished: f64 = text
        .lines()
        .filter(|line| {
            line.starts_with("userhooks_requests_total{")
                && (line.contains("outcome=\"succeeded\"") || line.contains("outcome=\"failed\""))
        })
        .filter_map(|line| line.rsplit(' ').next()?.parse::<f64>().ok())
        .sum();
    Some(finished as i64)
}

async fn open_requests(client: &tokio_postgres::Client) -> Result<i64, BenchError> {
    Ok(client
        .query_one(
            "select count(*) from userhooks.subscription_requests where status in ('pending', 'running')",
            &[],
        )
        .await?
        .get(0))
}

async fn burn_down(
    admin_url: &str,
    requests: u32,
    latency_ms: u64,
    concurrency: usize,
    sequin_url: Option<String>,
    token: &str,
) -> Result<Value, BenchError> {
    let bench = BenchDb::create(admin_url).await?;
    let client = db::connect(&bench.url, "userhooks-bench").await?;
    let emulator = match &sequin_url {
        Some(_) => None,
        None => Some(start_emulator(token, latency_ms).await?),
    };
    let api_url = sequin_url
        .clone()
        .or_else(|| emulator.as_ref().map(|e| e.api_url()))
        .unwrap_or_default();
    let total = i64::from(requests);
    client
        .execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', 'bench-' || g, 'https://hooks.example.com/u/' || g
               from generate_series(1, $1::int) g",
            &[&(requests as i32)],
        )
        .await?;
    client
        .batch_execute("analyze userhooks.subscription_requests")
        .await?;
    eprintln!("  {requests} subscribe requests queued; starting the worker (concurrency {concurrency}, Sequin latency {latency_ms} ms)");
    let started = Instant::now();
    // Progress comes from the worker's own counters: counting open rows in SQL would cost
    // the database more the more requests are queued, and skew what is measured.
    let metrics_port = free_port()?;
    let mut worker =
        WorkerProcess::spawn(&bench.url, &api_url, token, concurrency, Some(metrics_port))?;
    let metrics_url = format!("http://127.0.0.1:{metrics_port}/metrics");
    let http = reqwest::Client::new();
    let mut peak_connections = 0;
    let mut peak_rss = 0.0f64;
    let mut finished = 0;
    loop {
        worker.check_alive()?;
        finished = finished_requests(&http, &metrics_url)
            .await
            .unwrap_or(finished);
        peak_connections = peak_connections.max(connections(&client, &bench.name).await?);
        peak_rss = peak_rss.max(worker.peak_rss_mib().unwrap_or(0.0));
        progress("done", finished.min(total), total, started);
        // The counters say all are done; the table confirms it.
        if finished >= total && open_requests(&client).await? == 0 {
            break;
        }
        if started.elapsed() > Duration::from_secs(600) {
            return Err(BenchError::Failed(
                "not finished after 10 minutes".to_string(),
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    eprintln!();
    peak_rss = peak_rss.max(worker.peak_rss_mib().unwrap_or(0.0));
    worker.stop().await?;
    let stats = client
        .query_one(
            "select count(*) filter (where status = 'succeeded'),
                    percentile_cont(0.5) within group (order by extract(epoch from claimed_at - created_at)),
                    percentile_cont(0.99) within group (order by extract(epoch from claimed_at - created_at)),
                    sum(attempts),
                    extract(epoch from max(finished_at) - min(claimed_at))::float8
               from userhooks.subscription_requests",
            &[],
        )
        .await?;
    let succeeded: i64 = stats.get(0);
    // The rate is taken from the rows' own timestamps, first claim to last finish: the
    // wall time also holds the worker's start-up and up to one progress poll (200 ms)
    // after the last request, neither of which is throughput.
    let busy: f64 = stats
        .get::<_, Option<f64>>(4)
        .filter(|s| *s > 0.0)
        .unwrap_or(elapsed);
    let calls = emulator.as_ref().map(|e| e.call_count());
    let result = json!({
        "mode": "burn-down",
        "requests": requests,
        "succeeded": succeeded,
        "latency_ms": latency_ms,
        "concurrency": concurrency,
        "seconds": busy,
        "wall_seconds": elapsed,
        "subscribes_per_second": succeeded as f64 / busy,
        "sequin_calls_per_request": calls.map(|c| c as f64 / f64::from(requests.max(1))),
        "queue_wait_p50_ms": stats.get::<_, Option<f64>>(1).map(|s| s * 1000.0),
        "queue_wait_p99_ms": stats.get::<_, Option<f64>>(2).map(|s| s * 1000.0),
        "attempts_total": stats.get::<_, Option<i64>>(3),
        "worker_peak_rss_mib": peak_rss,
        "worker_peak_db_connections": peak_connections,
    });
    drop(client);
    if let Some(emulator) = emulator {
        emulator.shutdown().await;
    }
    bench.cleanup().await?;
    if succeeded != total {
        return Err(BenchError::Failed(format!(
            "only {succeeded} of {total} requests succeeded: {result}"
        )));
    }
    Ok(result)
}

async fn pickup(admin_url: &str, rate: u32, count: u32) -> Result<Value, BenchError> {
    let bench = BenchDb::create(admin_url).await?;
    let client = db::connect(&bench.url, "userhooks-bench").await?;
    let token = "bench-token";
    let emulator = start_emulator(token, 0).await?;
    let worker = WorkerProcess::spawn(&bench.url, &emulator.api_url(), token, 64, None)?;
    // Let the worker connect and settle.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let insert = client
        .prepare(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             values ('subscribe', $1, 'https://hooks.example.com/p') returning id",
        )
        .await?;
    // When each INSERT's commit was acknowledged, on the machine's clock (the same clock
    // Postgres stamps claimed_at with: the bench runs next to the server).
    let mut committed: Vec<(i64, f64)> = Vec::with_capacity(count as usize);
    let period = Duration::from_secs_f64(1.0 / f64::from(rate.max(1)));
    let mut tick = tokio::time::interval(period);
    let started = Instant::now();
    for i in 0..count {
        tick.tick().await;
        let row = client.query_one(&insert, &[&format!("p-{i}")]).await?;
        let at = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_secs_f64();
        committed.push((row.get(0), at));
        if i % 50 == 0 {
            progress("inserted", i64::from(i), i64::from(count), started);
        }
    }
    eprintln!();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let open: i64 = client
            .query_one(
                "select count(*) from userhooks.subscription_requests where status in ('pending', 'running')",
                &[],
            )
            .await?
            .get(0);
        if open == 0 || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    worker.stop().await?;
    // Commit acknowledged (client clock) → claim transaction start (server clock, same
    // machine). The first claim of each request; the insert's own work is not counted.
    let claimed: std::collections::HashMap<i64, f64> = client
        .query(
            "select id, extract(epoch from claimed_at)::float8
               from userhooks.subscription_requests where claimed_at is not null",
            &[],
        )
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut waits: Vec<f64> = committed
        .iter()
        .filter_map(|(id, at)| claimed.get(id).map(|c| ((c - at) * 1000.0).max(0.0)))
        .collect();
    waits.sort_by(f64::total_cmp);
    let result = json!({
        "mode": "pickup",
        "rate_per_second": rate,
        "requests": count,
        "claimed": waits.len(),
        "pickup_p50_ms": percentile(&waits, 0.5),
        "pickup_p99_ms": percentile(&waits, 0.99),
        "pickup_max_ms": waits.last().copied(),
    });
    drop(client);
    emulator.shutdown().await;
    bench.cleanup().await?;
    Ok(result)
}

async fn idle(admin_url: &str, seconds: u64) -> Result<Value, BenchError> {
    let bench = BenchDb::create(admin_url).await?;
    let token = "bench-token";
    let emulator = start_emulator(token, 0).await?;
    let worker = WorkerProcess::spawn(&bench.url, &emulator.api_url(), token, 64, None)?;
    let admin = db::connect(admin_url, "userhooks-bench").await?;
    // Let start-up work (filter function, first gauges, retention) pass and its statistics
    // reach pg_stat_database (backends report them with a delay of up to a few seconds).
    tokio::time::sleep(Duration::from_secs(12)).await;
    let counter = "select xact_commit + xact_rollback from pg_stat_database where datname = $1";
    // pg_stat_database is refreshed when backends report; force our view to re-read.
    admin
        .batch_execute("select pg_stat_clear_snapshot()")
        .await?;
    let before: i64 = admin.query_one(counter, &[&bench.name]).await?.get(0);
    let started = Instant::now();
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    admin
        .batch_execute("select pg_stat_clear_snapshot()")
        .await?;
    let after: i64 = admin.query_one(counter, &[&bench.name]).await?.get(0);
    let elapsed = started.elapsed().as_secs_f64();
    worker.stop().await?;
    emulator.shutdown().await;
    let result = json!({
        "mode": "idle",
        "seconds": elapsed,
        "transactions": after - before,
        "queries_per_second": (after - before) as f64 / elapsed,
    });
    drop(admin);
    bench.cleanup().await?;
    Ok(result)
}

async fn claim_cost(admin_url: &str, finished: i64, claims: u32) -> Result<Value, BenchError> {
    let bench = BenchDb::create(admin_url).await?;
    let client = db::connect(&bench.url, "userhooks-bench").await?;
    eprintln!("  loading {finished} finished requests...");
    client
        .execute(
            "insert into userhooks.subscription_requests
                    (action, user_id, webhook_url, status, attempts, finished_at, result)
             select 'subscribe', 'done-' || g, 'https://hooks.example.com/' || g, 'succeeded', 1, now(), '{}'
               from generate_series(1, $1::bigint) g",
            &[&finished],
        )
        .await?;
    client
        .batch_execute("vacuum analyze userhooks.subscription_requests")
        .await?;
    let pool = db::pool(&bench.url, 2)?;
    let insert = client
        .prepare(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             values ('subscribe', $1, 'https://hooks.example.com/c')",
        )
        .await?;
    let mut samples = Vec::with_capacity(claims as usize);
    let started = Instant::now();
    for i in 0..claims {
        client.execute(&insert, &[&format!("c-{i}")]).await?;
        let t = Instant::now();
        let claimed = crate::queue::claim(&pool, 64, "bench", Duration::from_secs(60)).await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
        for request in &claimed.requests {
            let outcome = crate::model::Outcome::Succeeded {
                result: json!({}),
                changes: vec![],
            };
            crate::queue::write_back(&pool, "bench", request, &outcome).await?;
        }
        if i % 100 == 0 {
            progress("claims", i64::from(i), i64::from(claims), started);
        }
    }
    eprintln!();
    let first_half = percentile(&samples[..samples.len() / 2], 0.99);
    let second_half = percentile(&samples[samples.len() / 2..], 0.99);
    samples.sort_by(f64::total_cmp);
    let result = json!({
        "mode": "claim",
        "finished_rows": finished,
        "claims": claims,
        "claim_p50_ms": percentile(&samples, 0.5),
        "claim_p99_ms": percentile(&samples, 0.99),
        "claim_max_ms": samples.last().copied(),
        "claim_p99_first_half_ms": first_half,
        "claim_p99_second_half_ms": second_half,
    });
    drop(client);
    drop(pool);
    bench.cleanup().await?;
    Ok(result)
}

fn percentile(samples: &[f64], q: f64) -> Option<f64> {
    if samples.is_empty() {
        return None;
    }
    let mut sorted = samples.to_vec();
    sorted.sort_by(f64::total_cmp);
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted.get(index).copied()
}
