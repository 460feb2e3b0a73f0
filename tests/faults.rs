//! Crash, fault and scale-out suite (issue 5): zero lost, zero orphaned, zero duplicated.
//!
//! Every test runs the real `userhooks run` binary against a real Postgres database and the
//! Sequin emulator over HTTP, injects one kind of fault, and then checks the same promises:
//! every request reaches its expected end state, the emulator holds exactly one endpoint and
//! one sink per active subscription and nothing else, and no process panicked.
//!
//! The tests that load the machine (hundreds of requests, timing) take `HEAVY` so they run
//! one at a time; timing assertions have wide margins (2-core machine, other builds running).
//! Set `USERHOOKS_TEST_ECHO=1` to see the workers' logs.

mod common;

use std::time::{Duration, Instant};

use common::binary::{send_signal, WorkerProcess};
use common::cluster::TempCluster;
use common::invariants::*;
use common::proxy::TcpProxy;
use common::*;
use sequin_emulator::{Faults, InjectedResponse, RouteFaults};
use serde_json::json;

/// One heavy test at a time (a tokio mutex works across the tests' runtimes).
static HEAVY: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn latency(ms: u64) -> Faults {
    Faults {
        all: RouteFaults {
            latency_ms: ms,
            ..RouteFaults::default()
        },
        ..Faults::default()
    }
}

fn route(faults: &mut Faults, operation: &str, f: RouteFaults) {
    faults.routes.insert(operation.to_string(), f);
}

fn status_503() -> InjectedResponse {
    InjectedResponse {
        status: 503,
        body: json!({"summary": "Service unavailable (injected)"}),
    }
}

/// Seconds between `since` (a database timestamp) and the last `finished_at`.
async fn last_finish_after(
    client: &tokio_postgres::Client,
    since: chrono::DateTime<chrono::Utc>,
) -> f64 {
    client
        .query_one(
            "select extract(epoch from max(finished_at) - $1)::float8 from userhooks.subscription_requests",
            &[&since],
        )
        .await
        .unwrap()
        .get(0)
}

async fn db_now(client: &tokio_postgres::Client) -> chrono::DateTime<chrono::Utc> {
    client
        .query_one("select clock_timestamp()", &[])
        .await
        .unwrap()
        .get(0)
}

/// Wait until `sql` (a count) reaches at least `n`.
async fn wait_count(client: &tokio_postgres::Client, sql: &str, n: i64, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let c = count(client, sql).await;
        if c >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out waiting for {sql} >= {n} (is {c})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

const RUNNING: &str =
    "select count(*) from userhooks.subscription_requests where status = 'running'";
const SUCCEEDED: &str =
    "select count(*) from userhooks.subscription_requests where status = 'succeeded'";

// --- 1. SIGKILL -----------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_with_hundreds_in_flight_loses_and_duplicates_nothing() {
    let _heavy = HEAVY.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    emulator.set_faults(latency(200));
    let env = [
        ("USERHOOKS_CONCURRENCY", "256"),
        ("USERHOOKS_LEASE", "3s"),
        ("USERHOOKS_HTTP_TIMEOUT", "2s"),
        ("USERHOOKS_POLL_INTERVAL", "200ms"),
    ];
    let mut first = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
    let n = 400;
    insert_subscribes(&client, "kill", n).await;
    // Kill in the middle: many requests claimed, some endpoints created, few sinks yet.
    wait_count(&client, RUNNING, 200, Duration::from_secs(30)).await;
    let deadline = Instant::now() + Duration::from_secs(30);
    while emulator.endpoints().len() < 50 {
        assert!(Instant::now() < deadline, "no endpoint was created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().await;
    let killed_at = db_now(&client).await;
    let killed = Instant::now();
    let running = count(&client, RUNNING).await;
    let unanswered = emulator.calls().iter().filter(|c| c.status == 0).count();
    eprintln!(
        "SIGKILL: {running} requests running, {} succeeded, {unanswered} Sequin calls in flight, {} endpoints / {} sinks existed",
        count(&client, SUCCEEDED).await,
        emulator.endpoints().len(),
        emulator.sinks().len()
    );
    assert!(running >= 100, "only {running} in flight at the kill");

    let second = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
    wait_all_terminal(&client, Duration::from_secs(90)).await;
    let wall = killed.elapsed();
    let recovery = last_finish_after(&client, killed_at).await;
    eprintln!(
        "SIGKILL recovery: last completion {recovery:.2}s after the kill (lease 3s; observed {:.2}s)",
        wall.as_secs_f64()
    );
    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    assert_eq!(emulator.endpoints().len(), n as usize);
    assert_eq!(emulator.sinks().len(), n as usize);
    eprintln!(
        "SIGKILL: adopted after a name clash: {} endpoints, {} sinks",
        calls_with(&emulator, "create_endpoint", 422),
        calls_with(&emulator, "create_sink", 422)
    );
    second.stop_cleanly().await;
}

// --- 2. SIGTERM under load -----------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_under_load_exits_zero_and_puts_back_what_it_could_not_finish() {
    let _heavy = HEAVY.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    // Sink creation is slow: a 1s grace period cannot finish every in-flight request.
    let mut faults = latency(100);
    route(
        &mut faults,
        "create_sink",
        RouteFaults {
            latency_ms: 2500,
            ..RouteFaults::default()
        },
    );
    emulator.set_faults(faults);
    let env = [
        ("USERHOOKS_CONCURRENCY", "128"),
        ("USERHOOKS_SHUTDOWN_GRACE", "1s"),
        ("USERHOOKS_HTTP_TIMEOUT", "5s"),
    ];
    let mut worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
    let n = 300;
    insert_subscribes(&client, "term", n).await;
    wait_count(&client, RUNNING, 100, Duration::from_secs(30)).await;
    // Let some reach the slow sink creation.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (status, took) = worker.terminate(Duration::from_secs(30)).await;
    eprintln!(
        "SIGTERM under load: exited {status:?} after {:.2}s (grace 1s)",
        took.as_secs_f64()
    );
    assert!(status.success(), "exit {status:?}:\n{}", worker.stderr());
    assert!(
        took < Duration::from_secs(8),
        "exit took {took:?} with a 1s grace"
    );
    worker.assert_no_panic();
    assert_eq!(count(&client, RUNNING).await, 0, "no row is left running");
    let put_back = count(
        &client,
        "select count(*) from userhooks.subscription_requests
          where status = 'pending' and locked_by is null and attempts = 0 and claimed_at is not null",
    )
    .await;
    eprintln!(
        "SIGTERM under load: {put_back} interrupted requests put back, {:?}",
        status_counts(&client).await
    );
    assert!(put_back > 0, "some requests were interrupted and put back");

    emulator.set_faults(Faults::default());
    let again = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
    wait_all_terminal(&client, Duration::from_secs(60)).await;
    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    again.stop_cleanly().await;
}

// --- 3. Scale-out ----------------------------------------------------------------------------

/// Records every claim of a request (who took it, with which attempt number) in a table of
/// the test's own: the worker clears `locked_by` when it writes the outcome back, so the
/// finished rows alone cannot say who ran them.
const RECORD_CLAIMS: &str = "
create table public.claims (request_id bigint not null, worker text not null, attempts int not null);
create function public.record_claim() returns trigger language plpgsql as $$
begin
  insert into public.claims values (new.id, new.locked_by, new.attempts);
  return new;
end $$;
create trigger record_claim after update on userhooks.subscription_requests
  for each row when (new.locked_by is not null and new.locked_by is distinct from old.locked_by)
  execute function public.record_claim();";

/// Start `workers` processes, insert `n` requests, wait; checks that the work was split
/// between every worker and that each request was claimed and run exactly once.
///
/// Why every worker gets work, whatever the machine's speed: each Sequin call is held for
/// 250 ms and a subscribe makes two, so a claimed request holds one of its worker's 8 slots
/// for at least 500 ms, and one worker alone finishes at most 16 requests a second. `n` is
/// 100 per worker: draining them alone would take one worker at least `n / 16` seconds
/// (12 s for two workers). Every worker is listening before the insert, gets its NOTIFY,
/// and polls every other second besides; a worker that claims nothing in that time is
/// broken, not slow. Nothing here compares speeds.
async fn run_fleet(workers: usize, n: i64) {
    let db = TestDb::new().await;
    let client = db.client().await;
    client.batch_execute(RECORD_CLAIMS).await.unwrap();
    let emulator = start_emulator().await;
    emulator.set_faults(latency(250));
    let env = [
        ("USERHOOKS_CONCURRENCY", "8"),
        ("USERHOOKS_LOG", "warn"),
        ("USERHOOKS_POLL_INTERVAL", "1s"),
    ];
    let fleet: Vec<WorkerProcess> = (0..workers)
        .map(|_| WorkerProcess::spawn(&db.url, &emulator.api_url(), &env))
        .collect();
    // Every worker is up (listening) before the load arrives.
    wait_count(
        &client,
        "select count(*) from pg_stat_activity
          where application_name = 'userhooks-listener' and datname = current_database()",
        workers as i64,
        Duration::from_secs(30),
    )
    .await;
    insert_subscribes(&client, "fleet", n).await;
    wait_all_terminal(&client, Duration::from_secs(120)).await;

    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    // Exactly once: one claim per request, its first attempt, and one create of each kind.
    assert_eq!(
        count(
            &client,
            "select count(*) from userhooks.subscription_requests where attempts <> 1"
        )
        .await,
        0,
        "a request was attempted more than once"
    );
    let claims: Vec<(i64, String, i32)> = client
        .query(
            "select request_id, worker, attempts from public.claims",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2)))
        .collect();
    assert_eq!(claims.len(), n as usize, "claims: {claims:?}");
    let claimed: std::collections::BTreeSet<i64> = claims.iter().map(|c| c.0).collect();
    assert_eq!(claimed.len(), n as usize, "a request was claimed twice");
    assert!(claims.iter().all(|c| c.2 == 1), "{claims:?}");
    for op in ["create_endpoint", "create_sink"] {
        assert_eq!(count_calls(&emulator, op), n as usize, "{op} calls");
        assert_eq!(calls_with(&emulator, op, 200), n as usize, "{op} 200s");
    }
    // The split: every worker of the fleet ran some of the requests, and no one else did.
    let mut per_worker: std::collections::BTreeMap<&str, usize> =
        fleet.iter().map(|w| (w.worker_id.as_str(), 0)).collect();
    for (_, worker, _) in &claims {
        *per_worker
            .get_mut(worker.as_str())
            .unwrap_or_else(|| panic!("claimed by {worker}, not a worker of the fleet")) += 1;
    }
    eprintln!("scale-out: {n} requests split as {per_worker:?}");
    assert!(
        per_worker.values().all(|&claimed| claimed > 0),
        "a worker ran nothing: {per_worker:?}"
    );
    for worker in fleet {
        worker.stop_cleanly().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_and_three_workers_split_the_work_and_do_each_request_exactly_once() {
    let _heavy = HEAVY.lock().await;
    run_fleet(2, 200).await;
    run_fleet(3, 300).await;
}

// --- 4. Listener loss ------------------------------------------------------------------------

/// Resumes a SIGSTOPped process when dropped (also when the test fails).
struct Continue(u32);

impl Drop for Continue {
    fn drop(&mut self) {
        send_signal(self.0, "-CONT");
    }
}

async fn listener_pid(client: &tokio_postgres::Client) -> Option<i32> {
    client
        .query_opt(
            "select pid from pg_stat_activity
              where application_name = 'userhooks-listener' and datname = current_database()
                and state is not null
              order by backend_start desc limit 1",
            &[],
        )
        .await
        .unwrap()
        .map(|r| r.get(0))
}

/// Insert one subscribe and return how long it took to finish.
async fn one_request(db: &TestDb, user: &str, timeout: Duration) -> Duration {
    let started = Instant::now();
    let id = db
        .insert(
            "subscribe",
            user,
            Some(&format!("https://hooks.example.com/{user}")),
            json!({}),
        )
        .await;
    let row = db.finished(id, timeout).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    started.elapsed()
}

/// Scrape `userhooks_listener_connected` until a new LISTEN backend (not `old`) is up and
/// the gauge says 1; returns the lowest value seen meanwhile.
async fn wait_listener_replaced(
    worker: &WorkerProcess,
    client: &tokio_postgres::Client,
    old: i32,
    timeout: Duration,
) -> f64 {
    let deadline = Instant::now() + timeout;
    let mut lowest = f64::MAX;
    loop {
        let value = worker.metric("userhooks_listener_connected").await;
        if let Some(v) = value {
            lowest = lowest.min(v);
        }
        let pid = listener_pid(client).await;
        if value == Some(1.0) && pid.is_some_and(|p| p != old) {
            return lowest;
        }
        assert!(
            Instant::now() < deadline,
            "the listener did not reconnect within {timeout:?} (gauge {value:?}, backend {pid:?})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listener_loss_is_covered_by_polling_and_repaired() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let poll = Duration::from_secs(2);
    let worker = WorkerProcess::spawn(
        &db.url,
        &emulator.api_url(),
        &[
            ("USERHOOKS_METRICS_ADDR", "auto"),
            ("USERHOOKS_POLL_INTERVAL", "2s"),
            ("USERHOOKS_LISTENER_PING", "1s"),
        ],
    );
    let margin = Duration::from_secs(4);
    eventually(Duration::from_secs(30), "listener connected", || async {
        worker.metric("userhooks_listener_connected").await == Some(1.0)
    })
    .await;
    let notified = one_request(&db, "baseline", poll + margin).await;
    eprintln!("listener: with NOTIFY a request took {notified:?}");

    // (a) The LISTEN backend is terminated: the connection errors out.
    let pid = listener_pid(&client).await.expect("listener backend");
    client
        .execute("select pg_terminate_backend($1)", &[&pid])
        .await
        .unwrap();
    let took = one_request(&db, "after-terminate", poll + margin).await;
    let lowest = wait_listener_replaced(&worker, &client, pid, Duration::from_secs(30)).await;
    eprintln!(
        "listener terminated: request done in {took:?}; gauge lowest {lowest} while reconnecting"
    );

    // (b) The LISTEN backend silently stops (SIGSTOP): the socket stays open, nothing is
    // delivered, only the ping can tell.
    let pid = listener_pid(&client).await.expect("listener backend");
    assert!(
        send_signal(pid as u32, "-STOP"),
        "SIGSTOP the listener backend"
    );
    let stopped = Continue(pid as u32);
    let took = one_request(&db, "while-stopped", poll + margin).await;
    let lowest = wait_listener_replaced(&worker, &client, pid, Duration::from_secs(30)).await;
    drop(stopped);
    eprintln!("listener stopped: request done in {took:?} by polling; gauge lowest {lowest} before the ping replaced it");
    let took = one_request(&db, "after-reconnect", poll + margin).await;
    eprintln!("listener replaced: request done in {took:?}");
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 4);
    worker.stop_cleanly().await;
}

// --- 5. Postgres restart ---------------------------------------------------------------------

/// Insert with a fresh connection, retrying while the server restarts.
async fn insert_through_restart(url: &str, tag: &str, from: i64, n: i64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(client) = userhooks::db::connect(url, "userhooks-tests").await {
            if client
                .query(
                    "insert into userhooks.subscription_requests (action, user_id, webhook_url)
                     select 'subscribe', $1 || '-' || g, 'https://hooks.example.com/' || $1 || '/' || g
                       from generate_series($2::bigint, $2::bigint + $3::bigint - 1) g",
                    &[&tag, &from, &n],
                )
                .await
                .is_ok()
            {
                return;
            }
        }
        assert!(Instant::now() < deadline, "cannot insert after the restart");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_restart_while_running_is_survived() {
    let _heavy = HEAVY.lock().await;
    let Some(cluster) = tokio::task::spawn_blocking(TempCluster::start)
        .await
        .unwrap()
    else {
        eprintln!("no Postgres binaries (initdb, pg_ctl) found: skipping");
        return;
    };
    let url = cluster.url();
    userhooks::db::migrate(&url)
        .await
        .expect("migrate the test cluster");
    let emulator = start_emulator().await;
    emulator.set_faults(latency(100));
    let worker = WorkerProcess::spawn(
        &url,
        &emulator.api_url(),
        &[
            ("USERHOOKS_LEASE", "5s"),
            ("USERHOOKS_HTTP_TIMEOUT", "2s"),
            ("USERHOOKS_CONCURRENCY", "16"),
            ("USERHOOKS_METRICS_ADDR", "auto"),
        ],
    );
    insert_through_restart(&url, "pg", 1, 150).await;
    {
        let client = userhooks::db::connect(&url, "userhooks-tests")
            .await
            .unwrap();
        wait_count(&client, SUCCEEDED, 20, Duration::from_secs(30)).await;
    }
    let started = Instant::now();
    tokio::task::block_in_place(|| cluster.restart_fast());
    eprintln!("postgres restarted in {:?}", started.elapsed());
    insert_through_restart(&url, "pg", 151, 150).await;

    let client = userhooks::db::connect(&url, "userhooks-tests")
        .await
        .unwrap();
    wait_all_terminal(&client, Duration::from_secs(90)).await;
    eprintln!(
        "postgres restart: everything finished {:.2}s after the restart began",
        started.elapsed().as_secs_f64()
    );
    assert_all_succeeded(&client, 300).await;
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 300);
    eventually(Duration::from_secs(30), "listener reconnected", || async {
        worker.metric("userhooks_listener_connected").await == Some(1.0)
    })
    .await;
    worker.stop_cleanly().await;
    drop(client);
    drop(cluster);
}

// --- 6. Sequin faults -----------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_percent_5xx_on_every_route_still_completes_everything() {
    let _heavy = HEAVY.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    emulator.set_faults(Faults {
        all: RouteFaults {
            error_rate: 0.2,
            latency_ms: 10,
            ..RouteFaults::default()
        },
        ..Faults::default()
    });
    let worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &[]);
    let n = 200;
    insert_subscribes(&client, "flaky", n).await;
    wait_all_terminal(&client, Duration::from_secs(90)).await;
    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    let injected = emulator.calls().iter().filter(|c| c.status == 503).count();
    let retried = count(
        &client,
        "select count(*) from userhooks.subscription_requests where attempts > 1",
    )
    .await;
    eprintln!("20% 5xx: {injected} injected 503s, {retried} requests needed a durable retry");
    assert!(injected > 0);
    worker.stop_cleanly().await;
}

/// Record when each call of `operation` arrives (by polling the emulator's log).
async fn arrivals(
    emulator: &sequin_emulator::EmulatorHandle,
    operation: &str,
    n: usize,
    timeout: Duration,
) -> Vec<Instant> {
    let deadline = Instant::now() + timeout;
    let mut seen = Vec::new();
    while seen.len() < n {
        let now = count_calls(emulator, operation);
        while seen.len() < now {
            seen.push(Instant::now());
        }
        assert!(
            Instant::now() < deadline,
            "only {} {operation} calls within {timeout:?}",
            seen.len()
        );
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_are_honoured_and_capped() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &[]);

    // Retry-After: 2 on sink creation: no call comes sooner than 2s after the previous one,
    // in-process or after the durable reschedule.
    let mut faults = Faults::default();
    route(
        &mut faults,
        "create_sink",
        RouteFaults {
            rate_limit_retry_after: Some(2),
            ..RouteFaults::default()
        },
    );
    emulator.set_faults(faults);
    let id = db
        .insert(
            "subscribe",
            "limited",
            Some("https://hooks.example.com/l"),
            json!({}),
        )
        .await;
    let times = arrivals(&emulator, "create_sink", 4, Duration::from_secs(30)).await;
    emulator.set_faults(Faults::default());
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!("429 Retry-After 2: gaps between sink creations {gaps:.2?}");
    for gap in &gaps {
        // Observed by polling: allow a little slack below the 2s the worker waits.
        assert!(
            *gap >= 1.8,
            "a call came {gap:.2}s after a 429 with Retry-After: 2"
        );
    }
    let row = db.finished(id, Duration::from_secs(30)).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert!(row.attempts >= 2, "the 429s cost a durable retry: {row:?}");

    // Retry-After: 3600 is capped: 5s in process, 300s for the durable reschedule.
    let mut faults = Faults::default();
    route(
        &mut faults,
        "create_endpoint",
        RouteFaults {
            rate_limit_retry_after: Some(3600),
            ..RouteFaults::default()
        },
    );
    emulator.set_faults(faults);
    emulator.clear_calls();
    let id = db
        .insert(
            "subscribe",
            "capped",
            Some("https://hooks.example.com/c"),
            json!({}),
        )
        .await;
    let times = arrivals(&emulator, "create_endpoint", 3, Duration::from_secs(30)).await;
    let gaps: Vec<f64> = times
        .windows(2)
        .map(|w| (w[1] - w[0]).as_secs_f64())
        .collect();
    eprintln!("429 Retry-After 3600: in-process gaps {gaps:.2?}");
    for gap in &gaps {
        assert!(
            (4.5..15.0).contains(gap),
            "in-process wait {gap:.2}s is not the 5s cap"
        );
    }
    eventually(Duration::from_secs(20), "durable reschedule", || async {
        db.request(id).await.status == "pending"
    })
    .await;
    let delay: f64 = client
        .query_one(
            "select extract(epoch from run_at - updated_at)::float8
               from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    eprintln!("429 Retry-After 3600: durable reschedule in {delay:.0}s");
    assert!(
        (250.0..=301.0).contains(&delay),
        "durable delay {delay}s is not the 300s cap"
    );
    // The operator (or the cap) ends the wait; the request then completes.
    emulator.set_faults(Faults::default());
    client
        .execute(
            "update userhooks.subscription_requests set run_at = now() where id = $1",
            &[&id],
        )
        .await
        .unwrap();
    let row = db.finished(id, Duration::from_secs(30)).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 2);
    worker.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hang_longer_than_the_http_timeout_is_cut_and_retried() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let mut faults = Faults::default();
    route(
        &mut faults,
        "create_sink",
        RouteFaults {
            hang: true,
            ..RouteFaults::default()
        },
    );
    emulator.set_faults(faults);
    let worker = WorkerProcess::spawn(
        &db.url,
        &emulator.api_url(),
        &[("USERHOOKS_HTTP_TIMEOUT", "1s"), ("USERHOOKS_LEASE", "20s")],
    );
    let n = 5;
    insert_subscribes(&client, "hang", n).await;
    wait_count(
        &client,
        "select count(*) from userhooks.subscription_requests
          where status = 'pending' and last_error like '%did not answer within%'",
        1,
        Duration::from_secs(30),
    )
    .await;
    let hung = count_calls(&emulator, "create_sink");
    eprintln!("hang: {hung} sink creations cut by the 1s timeout before the hang was lifted");
    emulator.set_faults(Faults::default());
    wait_all_terminal(&client, Duration::from_secs(60)).await;
    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    worker.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sequin_down_then_back_completes_everything() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    emulator.set_faults(latency(150));
    // The worker talks to Sequin through a proxy that can refuse connections; the emulator
    // behind it keeps its state, like a restarted Sequin.
    let proxy = TcpProxy::start(emulator.addr()).await;
    let worker = WorkerProcess::spawn(
        &db.url,
        &proxy.api_url(),
        &[("USERHOOKS_HTTP_TIMEOUT", "2s"), ("USERHOOKS_LEASE", "20s")],
    );
    let n = 60;
    insert_subscribes(&client, "down", n).await;
    // Down in the middle: some calls cut mid-flight (a create may have happened, its
    // response is lost), the rest refused.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_calls(&emulator, "create_endpoint") < 10 {
        assert!(Instant::now() < deadline, "no traffic");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    proxy.stop().await;
    wait_count(
        &client,
        "select count(*) from userhooks.subscription_requests
          where status = 'pending' and last_error like '%could not reach Sequin%'",
        5,
        Duration::from_secs(30),
    )
    .await;
    eprintln!("Sequin down: {:?}", status_counts(&client).await);
    proxy.resume().await;
    wait_all_terminal(&client, Duration::from_secs(90)).await;
    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    worker.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn durable_retries_are_jittered_bounded_and_compensated() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    // Endpoints can be created, sinks never: every request retries, then gives up.
    let mut faults = Faults::default();
    route(
        &mut faults,
        "create_sink",
        RouteFaults {
            error_rate: 1.0,
            ..RouteFaults::default()
        },
    );
    emulator.set_faults(faults);
    let worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &[]);
    let n = 40;
    client
        .execute(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url, max_attempts)
             select 'subscribe', 'jit-' || g, 'https://hooks.example.com/jit/' || g, 3
               from generate_series(1, $1::bigint) g",
            &[&n],
        )
        .await
        .unwrap();
    // Sample every durable reschedule (run_at - updated_at at write-back) until all give up:
    // the delays are spread (full jitter), not one synchronized wave.
    let mut delays = std::collections::BTreeMap::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rows = client
            .query(
                "select id, attempts, extract(epoch from run_at - updated_at)::float8
                   from userhooks.subscription_requests
                  where status = 'pending' and attempts >= 1",
                &[],
            )
            .await
            .unwrap();
        for row in rows {
            delays
                .entry((row.get::<_, i64>(0), row.get::<_, i32>(1)))
                .or_insert(row.get::<_, f64>(2));
        }
        let open = count(
            &client,
            "select count(*) from userhooks.subscription_requests where status in ('pending', 'running')",
        )
        .await;
        if open == 0 {
            break;
        }
        assert!(Instant::now() < deadline, "requests still open after 60s");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let values: Vec<f64> = delays.values().copied().collect();
    let distinct: std::collections::BTreeSet<i64> =
        values.iter().map(|d| (d * 1000.0).round() as i64).collect();
    let min = values.iter().copied().fold(f64::MAX, f64::min);
    let max = values.iter().copied().fold(f64::MIN, f64::max);
    eprintln!(
        "jitter: {} reschedules sampled, {} distinct delays, from {min:.3}s to {max:.3}s",
        values.len(),
        distinct.len()
    );
    assert!(values.len() as i64 >= n / 2, "too few reschedules observed");
    assert!(
        distinct.len() * 10 >= values.len() * 9,
        "delays repeat: not jittered"
    );
    assert!(max - min > 0.3, "delays spread over only {:.3}s", max - min);
    assert!(max <= 2.0 + 0.1, "the second delay is at most 2s");

    let exhausted = count(
        &client,
        "select count(*) from userhooks.subscription_requests
          where status = 'failed' and attempts = 3 and result->'error'->>'kind' = 'exhausted'",
    )
    .await;
    assert_eq!(exhausted, n, "{:?}", status_counts(&client).await);
    // Compensation: the endpoints created along the way are gone.
    assert!(
        emulator.endpoints().is_empty(),
        "orphans: {:?}",
        emulator.endpoints()
    );
    assert!(emulator.sinks().is_empty());
    assert_eq!(
        count(
            &client,
            "select count(*) from userhooks.webhook_subscriptions where status <> 'failed'"
        )
        .await,
        0
    );
    // Once Sequin works again, the same users can subscribe.
    emulator.set_faults(Faults::default());
    insert_subscribes(&client, "jit", n).await;
    wait_all_terminal(&client, Duration::from_secs(60)).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    worker.stop_cleanly().await;
}

// --- 7. Crash at every step of provisioning ---------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_create_responses_are_adopted_not_duplicated() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &[]);
    // Each create is performed, then answered 503, as if the response was lost.
    for (i, operation) in ["create_endpoint", "create_sink"].into_iter().enumerate() {
        let mut faults = Faults::default();
        route(
            &mut faults,
            operation,
            RouteFaults {
                fail_after_next: vec![status_503()],
                ..RouteFaults::default()
            },
        );
        emulator.set_faults(faults);
        emulator.clear_calls();
        let user = format!("lost-{i}");
        let took = one_request(&db, &user, Duration::from_secs(30)).await;
        let statuses: Vec<u16> = emulator
            .calls()
            .iter()
            .filter(|c| c.operation == operation)
            .map(|c| c.status)
            .collect();
        eprintln!("lost {operation} response: statuses {statuses:?}, done in {took:?}");
        assert_eq!(
            statuses,
            vec![503, 422],
            "created once, then found taken and adopted"
        );
    }
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 2);
    assert_eq!(emulator.endpoints().len(), 2);
    assert_eq!(emulator.sinks().len(), 2);
    worker.stop_cleanly().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_at_every_step_of_provisioning_is_finished_by_the_next_attempt() {
    let _heavy = HEAVY.lock().await;
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let env = [("USERHOOKS_LEASE", "3s"), ("USERHOOKS_HTTP_TIMEOUT", "2s")];
    let hang_on = |operation: &str| {
        let mut faults = latency(100);
        route(
            &mut faults,
            operation,
            RouteFaults {
                hang: true,
                ..RouteFaults::default()
            },
        );
        faults
    };
    let answered = |operation: &'static str, status: u16| {
        let calls = emulator.calls();
        calls
            .iter()
            .any(|c| c.operation == operation && c.status == status)
    };
    let started = |operation: &'static str| count_calls(&emulator, operation) > 0;

    // (a) After the subscription row, before anything exists in Sequin.
    // (b) After the endpoint was created, while the sink is being created.
    for (step, hang, user) in [
        ("before the endpoint", "create_endpoint", "step-a"),
        ("after the endpoint", "create_sink", "step-b"),
    ] {
        emulator.set_faults(hang_on(hang));
        emulator.clear_calls();
        let mut worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
        let id = db
            .insert(
                "subscribe",
                user,
                Some(&format!("https://hooks.example.com/{user}")),
                json!({}),
            )
            .await;
        let deadline = Instant::now() + Duration::from_secs(30);
        while !started(if hang == "create_endpoint" {
            "create_endpoint"
        } else {
            "create_sink"
        }) {
            assert!(Instant::now() < deadline, "{step}: the call never came");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        worker.kill().await;
        emulator.set_faults(Faults::default());
        let killed = Instant::now();
        let next = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
        let row = db.finished(id, Duration::from_secs(30)).await;
        assert_eq!(row.status, "succeeded", "{step}: {row:?}");
        eprintln!(
            "SIGKILL {step}: finished {:?} after the kill, attempt {}",
            killed.elapsed(),
            row.attempts
        );
        assert_eq!(row.attempts, 2, "{step}: finished by the second attempt");
        next.stop_cleanly().await;
    }
    assert_eq!(
        count(
            &client,
            "select count(*) from userhooks.webhook_subscriptions"
        )
        .await,
        2,
        "one subscription row per user, reused by the second attempt"
    );

    // (c) After the sink was created, before the write-back: the request row is locked by
    // the test, so the write-back waits, and the worker dies waiting.
    emulator.set_faults(latency(300));
    emulator.clear_calls();
    let mut worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
    let id = db
        .insert(
            "subscribe",
            "step-c",
            Some("https://hooks.example.com/step-c"),
            json!({}),
        )
        .await;
    eventually(Duration::from_secs(30), "claimed", || async {
        db.request(id).await.status == "running"
    })
    .await;
    let mut locker = db.client().await;
    let tx = locker.transaction().await.unwrap();
    tx.query_one(
        "select id from userhooks.subscription_requests where id = $1 for update",
        &[&id],
    )
    .await
    .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !answered("create_sink", 200) {
        assert!(Instant::now() < deadline, "the sink was never created");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    worker.kill().await;
    tx.rollback().await.unwrap();
    assert_eq!(
        db.request(id).await.status,
        "running",
        "the write-back never happened"
    );
    emulator.set_faults(Faults::default());
    let next = WorkerProcess::spawn(&db.url, &emulator.api_url(), &env);
    let row = db.finished(id, Duration::from_secs(30)).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    let creates: Vec<(String, u16)> = emulator
        .calls()
        .iter()
        .filter(|c| c.operation.starts_with("create_"))
        .map(|c| (c.operation.clone(), c.status))
        .collect();
    eprintln!("SIGKILL before the write-back: creates {creates:?}");
    assert_eq!(calls_with(&emulator, "create_sink", 200), 1);
    assert_eq!(
        calls_with(&emulator, "create_sink", 422),
        1,
        "second attempt found the sink"
    );

    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 3);
    assert_eq!(emulator.endpoints().len(), 3);
    assert_eq!(emulator.sinks().len(), 3);
    next.stop_cleanly().await;
}

// --- 8. Permanent failure midway --------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sink_rejected_after_the_endpoint_exists_is_compensated_and_resubscribable() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let mut faults = Faults::default();
    route(
        &mut faults,
        "create_sink",
        RouteFaults {
            fail_next: vec![InjectedResponse {
                status: 422,
                body: json!({"summary": "Validation failed",
                             "validation_errors": {"batch_size": ["must be less than or equal to 1000"]}}),
            }],
            ..RouteFaults::default()
        },
    );
    emulator.set_faults(faults);
    let worker = WorkerProcess::spawn(&db.url, &emulator.api_url(), &[]);
    let url = "https://hooks.example.com/midway";
    let first = db.insert("subscribe", "midway", Some(url), json!({})).await;
    let row = db.finished(first, Duration::from_secs(30)).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(row.attempts, 1, "a 422 is not retried");
    let error = &row.result.as_ref().unwrap()["error"];
    assert_eq!(error["kind"], "sequin_rejected", "{error}");
    assert!(
        row.last_error
            .as_deref()
            .unwrap_or("")
            .contains("batch_size"),
        "Sequin's reason reaches last_error: {row:?}"
    );
    assert_eq!(calls_with(&emulator, "create_endpoint", 200), 1);
    assert!(
        emulator.endpoints().is_empty(),
        "the endpoint was compensated"
    );
    assert_eq!(count_calls(&emulator, "delete_endpoint"), 1);
    assert_eq!(
        count(
            &client,
            "select count(*) from userhooks.webhook_subscriptions where status = 'failed'"
        )
        .await,
        1
    );
    // The user can subscribe again.
    let second = db.insert("subscribe", "midway", Some(url), json!({})).await;
    let row = db.finished(second, Duration::from_secs(30)).await;
    assert_eq!(row.status, "succeeded", "{row:?}");
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 1);

    // Same with an unknown transform, which Sequin refuses only at sink creation.
    let third = db
        .insert(
            "subscribe",
            "midway-2",
            Some(url),
            json!({"transform": "no-such-function"}),
        )
        .await;
    let row = db.finished(third, Duration::from_secs(30)).await;
    assert_eq!(row.status, "failed", "{row:?}");
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 1);
    worker.stop_cleanly().await;
}

// --- 9. Poison input ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poison_requests_never_block_the_user_or_anyone_else() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    let worker = WorkerProcess::spawn(
        &db.url,
        &emulator.api_url(),
        &[("USERHOOKS_ALLOW_PRIVATE_URLS", "false")],
    );
    let good = "https://93.184.215.14/hook";
    let mut poison = Vec::new();
    for (url, options) in [
        (good, json!({"filters": [{"column": "user_id"}]})),
        (good, json!({"actions": ["read"]})),
        (good, json!({"backfill": "yes"})),
        ("ftp://93.184.215.14/x", json!({})),
        ("not a url", json!({})),
        ("http://127.0.0.1:8080/internal", json!({})),
        ("http://169.254.169.254/latest/meta-data", json!({})),
        ("http://user:pw@93.184.215.14/", json!({})),
        (good, json!({"transform": "no-such-function"})),
    ] {
        poison.push(db.insert("subscribe", "victim", Some(url), options).await);
    }
    poison.push(db.insert("backfill", "victim", None, json!({})).await);
    let later = db
        .insert("subscribe", "victim", Some(good), json!({}))
        .await;
    let weird_user = "ユーザー 'quoted' \"double\" \\ ; drop table x; --".repeat(4);
    let others = [
        db.insert("subscribe", "bystander", Some(good), json!({}))
            .await,
        db.insert("subscribe", &weird_user, Some(good), json!({}))
            .await,
        db.insert(
            "subscribe",
            &"9".repeat(255),
            Some("https://93.184.215.14/a?b=c"),
            json!({}),
        )
        .await,
    ];
    for id in &poison {
        let row = db.finished(*id, Duration::from_secs(30)).await;
        assert_eq!(row.status, "failed", "request {id}: {row:?}");
        assert_eq!(row.attempts, 1, "poison is not retried: {row:?}");
        assert!(row.last_error.is_some());
    }
    for id in others.iter().chain([&later]) {
        let row = db.finished(*id, Duration::from_secs(30)).await;
        assert_eq!(row.status, "succeeded", "request {id}: {row:?}");
    }
    assert_eq!(assert_sequin_matches_db(&client, &emulator).await, 4);
    worker.stop_cleanly().await;
}

// --- Lease: a slow request is not taken over while its worker is alive ---------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_slower_than_its_lease_is_not_processed_twice() {
    let db = TestDb::new().await;
    let client = db.client().await;
    let emulator = start_emulator().await;
    // Each call takes 1.2s (under the 1.5s timeout); a subscribe makes two or three of them,
    // so every attempt outlives the 2s lease unless the worker keeps renewing it.
    emulator.set_faults(latency(1200));
    let env = [
        ("USERHOOKS_LEASE", "2s"),
        ("USERHOOKS_HTTP_TIMEOUT", "1500ms"),
        ("USERHOOKS_POLL_INTERVAL", "200ms"),
    ];
    let workers = [
        WorkerProcess::spawn(&db.url, &emulator.api_url(), &env),
        WorkerProcess::spawn(&db.url, &emulator.api_url(), &env),
    ];
    let n = 10;
    insert_subscribes(&client, "slow", n).await;
    wait_all_terminal(&client, Duration::from_secs(60)).await;
    assert_all_succeeded(&client, n).await;
    assert_eq!(
        assert_sequin_matches_db(&client, &emulator).await,
        n as usize
    );
    let creates = count_calls(&emulator, "create_endpoint");
    let retried = count(
        &client,
        "select count(*) from userhooks.subscription_requests where attempts > 1",
    )
    .await;
    eprintln!("slow requests: {creates} endpoint creations for {n} requests, {retried} taken over");
    assert_eq!(creates, n as usize, "each request was processed once");
    assert_eq!(
        retried, 0,
        "no request was claimed again while its worker was alive"
    );
    for worker in workers {
        worker.stop_cleanly().await;
    }
}
