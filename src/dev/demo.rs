//! `userhooks demo`: the whole flow on one machine, with nothing but a local Postgres.
//!
//! It creates its own database, migrates, starts the Sequin emulator (with webhook delivery)
//! and a webhook receiver in-process, runs the worker, subscribes users with plain SQL,
//! generates notifications, backfills one user, unsubscribes another, and checks that every
//! user received exactly their own rows.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::local::{self, Inbox};
use super::progress::{self, Progress};
use super::DemoArgs;
use crate::db::{self, DbError};

/// The demo's users; the last one never subscribes.
const USERS: [&str; 4] = ["Paul", "Ada", "Linus", "Grace"];
/// Notifications each user has before anyone subscribes (what a backfill replays).
const HISTORY_PER_USER: usize = 40;
/// Notifications per user written after one user unsubscribed.
const AFTER_UNSUBSCRIBE: usize = 10;

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("could not start the worker: {0}")]
    Build(#[from] crate::worker::BuildError),
    #[error(transparent)]
    Generate(#[from] super::generate::GenerateError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("demo check failed: {0}")]
    Check(String),
}

pub fn database_url_for(server_url: &str, name: &str) -> String {
    match url::Url::parse(server_url) {
        Ok(mut url) => {
            url.set_path(&format!("/{name}"));
            url.to_string()
        }
        // key=value connection strings: append dbname (the last one wins).
        Err(_) => format!("{server_url} dbname={name}"),
    }
}

fn inbox_snapshot(inbox: &Inbox) -> BTreeMap<String, Vec<Value>> {
    inbox.lock().unwrap_or_else(|e| e.into_inner()).clone()
}

/// What one user should have received, and what they did receive.
#[derive(Clone, Debug, Default)]
pub struct UserCheck {
    pub user: String,
    /// Ids of the rows that must arrive as `insert` messages (exactly these).
    pub expected_live: BTreeSet<i64>,
    /// Ids of the rows a backfill must deliver as `read` messages, when one ran.
    pub expected_read: Option<BTreeSet<i64>>,
    /// Every message posted to this user's URL.
    pub received: Vec<Value>,
}

/// Per-user tally of received messages.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Tally {
    pub inserts: BTreeSet<i64>,
    pub reads: BTreeSet<i64>,
    /// Messages carrying another user's row: (row id, its user).
    pub foreign: Vec<(i64, String)>,
    /// Messages without a readable record or action.
    pub malformed: usize,
}

fn as_text(v: Option<&Value>) -> Option<String> {
    match v? {
        Value::Null => None,
        Value::String(s) => Some(s.clone()),
        other => Some(other.to_string()),
    }
}

pub fn tally(user: &str, received: &[Value]) -> Tally {
    let mut t = Tally::default();
    for m in received {
        let record = m.get("record");
        let id = record.and_then(|r| r.get("id")).and_then(Value::as_i64);
        let owner = as_text(record.and_then(|r| r.get("user_id")));
        let (Some(id), Some(owner)) = (id, owner) else {
            t.malformed += 1;
            continue;
        };
        if owner != user {
            t.foreign.push((id, owner));
            continue;
        }
        match m.get("action").and_then(Value::as_str) {
            Some("insert") => {
                t.inserts.insert(id);
            }
            Some("read") => {
                t.reads.insert(id);
            }
            _ => t.malformed += 1,
        }
    }
    t
}

fn describe(ids: &BTreeSet<i64>) -> String {
    let shown: Vec<String> = ids.iter().take(5).map(i64::to_string).collect();
    let more = if ids.len() > 5 {
        format!(" and {} more", ids.len() - 5)
    } else {
        String::new()
    };
    format!("{}{more}", shown.join(", "))
}

/// The demo's check: nobody received another user's rows, every subscribed user received
/// exactly the rows written for them while subscribed, and a backfill replayed exactly the
/// user's history. Returns one line per problem.
pub fn check(users: &[UserCheck]) -> Vec<String> {
    let mut problems = Vec::new();
    for u in users {
        let t = tally(&u.user, &u.received);
        for (id, owner) in &t.foreign {
            problems.push(format!(
                "user {} received row {id}, which belongs to user {owner}",
                u.user
            ));
        }
        if t.malformed > 0 {
            problems.push(format!(
                "user {} received {} messages that are not Sequin-shaped",
                u.user, t.malformed
            ));
        }
        let missing: BTreeSet<i64> = u.expected_live.difference(&t.inserts).copied().collect();
        if !missing.is_empty() {
            problems.push(format!(
                "user {} did not receive {} of their rows: {}",
                u.user,
                missing.len(),
                describe(&missing)
            ));
        }
        let extra: BTreeSet<i64> = t.inserts.difference(&u.expected_live).copied().collect();
        if !extra.is_empty() {
            problems.push(format!(
                "user {} received {} rows they should not have (not subscribed then): {}",
                u.user,
                extra.len(),
                describe(&extra)
            ));
        }
        match &u.expected_read {
            Some(expected) if *expected != t.reads => problems.push(format!(
                "backfill for user {} delivered {} rows, expected {}",
                u.user,
                t.reads.len(),
                expected.len()
            )),
            None if !t.reads.is_empty() => problems.push(format!(
                "user {} received {} backfill rows without a backfill",
                u.user,
                t.reads.len()
            )),
            _ => {}
        }
    }
    problems
}

/// Outcome of one request: status, last_error, result.
struct Finished {
    status: String,
    last_error: Option<String>,
    result: Option<Value>,
}

/// `select userhooks.<helper>(user_id)`, then wait for the request to succeed.
async fn enqueue_and_wait(
    client: &tokio_postgres::Client,
    helper: &str,
    user_id: i32,
) -> Result<Finished, DemoError> {
    // `helper` is one of our own SQL helper names, never user input.
    let request: i64 = client
        .query_one(
            &format!("select userhooks.{helper}($1)"),
            &[&user_id.to_string()],
        )
        .await?
        .get(0);
    let finished = wait_requests(client, &[request], Duration::from_secs(30))
        .await?
        .remove(0);
    if finished.status != "succeeded" {
        return Err(DemoError::Check(format!(
            "{helper} request {}: {}",
            finished.status,
            finished.last_error.unwrap_or_default()
        )));
    }
    Ok(finished)
}

async fn wait_requests(
    client: &tokio_postgres::Client,
    ids: &[i64],
    timeout: Duration,
) -> Result<Vec<Finished>, DemoError> {
    let deadline = Instant::now() + timeout;
    loop {
        let rows = client
            .query(
                "select status, last_error, result from userhooks.subscription_requests
                  where id = any($1) order by id",
                &[&ids],
            )
            .await?;
        let done = rows
            .iter()
            .all(|r| !matches!(r.get::<_, &str>(0), "pending" | "running"));
        if done {
            return Ok(rows
                .iter()
                .map(|r| Finished {
                    status: r.get(0),
                    last_error: r.get(1),
                    result: r.get(2),
                })
                .collect());
        }
        if Instant::now() > deadline {
            return Err(DemoError::Check(format!(
                "requests {ids:?} did not finish within {}s",
                timeout.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Notification ids by user (as text), for ids in `(after, upto]`.
async fn written(
    client: &tokio_postgres::Client,
    after: i64,
    upto: i64,
) -> Result<BTreeMap<String, BTreeSet<i64>>, DemoError> {
    let rows = client
        .query(
            "select id::bigint, user_id::text from notifications
              where id > $1::bigint and id <= $2::bigint",
            &[&after, &upto],
        )
        .await?;
    let mut out: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
    for r in rows {
        out.entry(r.get(1)).or_default().insert(r.get(0));
    }
    Ok(out)
}

async fn max_id(client: &tokio_postgres::Client) -> Result<i64, DemoError> {
    Ok(client
        .query_one(
            "select coalesce(max(id), 0)::bigint from notifications",
            &[],
        )
        .await?
        .get(0))
}

/// Wait until every user's expected live rows have arrived (or the timeout passes).
async fn settle(inbox: &Inbox, expected: &BTreeMap<String, BTreeSet<i64>>, timeout: Duration) {
    let total: usize = expected.values().map(BTreeSet::len).sum();
    let mut pb = Progress::spinner("waiting for webhooks");
    let deadline = Instant::now() + timeout;
    loop {
        let got = inbox_snapshot(inbox);
        let arrived: usize = expected
            .iter()
            .map(|(u, ids)| {
                let t = tally(u, got.get(u).map(Vec::as_slice).unwrap_or(&[]));
                ids.intersection(&t.inserts).count()
            })
            .sum();
        pb.message(format!("({arrived} of {total} delivered)"));
        if arrived >= total || Instant::now() > deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    pb.finish();
}

/// Step 1: a database of our own (dropped and recreated), migrated, with the tutorial's
/// tables, the demo's users and their history. Returns its URL and the users.
async fn create_database(args: &DemoArgs) -> Result<(String, Vec<(i32, String)>), DemoError> {
    let name = &args.demo_database;
    if !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return Err(DemoError::Check(format!(
            "demo database name `{name}` must be [A-Za-z0-9_]"
        )));
    }
    let admin = db::connect(&args.database_url, "userhooks-demo").await?;
    // Two statements: DROP/CREATE DATABASE cannot share an implicit transaction.
    admin
        .batch_execute(&format!("drop database if exists {name} with (force)"))
        .await?;
    admin
        .batch_execute(&format!("create database {name}"))
        .await?;
    let url = database_url_for(&args.database_url, name);
    local::prepare_database(&url).await?;
    let client = db::connect(&url, "userhooks-demo").await?;
    for n in USERS {
        client
            .execute("insert into users (name) values ($1)", &[&n])
            .await?;
    }
    let users: Vec<(i32, String)> = client
        .query("select id, name from users order by id", &[])
        .await?
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect();
    let mut counter = 0;
    for (id, _) in &users {
        super::generate::insert_batch(&client, &[*id], HISTORY_PER_USER, &mut counter).await?;
    }
    println!(
        "[1/7] database `{name}`: userhooks schema migrated, tables users and notifications, \
         {} users with {HISTORY_PER_USER} old notifications each",
        users.len()
    );
    Ok((url, users))
}

pub async fn run(args: DemoArgs) -> Result<(), DemoError> {
    let started = Instant::now();
    println!("userhooks demo");
    println!("==============");

    let (url, users) = create_database(&args).await?;
    let client = db::connect(&url, "userhooks-demo").await?;

    // 2. Sequin emulator with webhook delivery, and a webhook receiver, both in-process.
    let token = format!("demo-{}", uuid::Uuid::new_v4().simple());
    let emulator = local::start_emulator(
        &url,
        &token,
        tokio::net::TcpListener::bind("127.0.0.1:0").await?,
    )
    .await;
    let receiver =
        local::start_receiver(tokio::net::TcpListener::bind("127.0.0.1:0").await?, false)?;
    let receiver_addr = receiver.addr;
    println!(
        "[2/7] Sequin emulator at {} (delivering webhooks), receiver at http://{receiver_addr}/hooks/<user>",
        emulator.api_url()
    );

    // 3. The worker.
    let mut config = local::worker_config(&url, &emulator.api_url(), &token);
    config.metrics_addr = Some(if args.keep_running {
        "127.0.0.1:9610".parse().expect("valid address")
    } else {
        "127.0.0.1:0".parse().expect("valid address")
    });
    let worker = local::start_worker(config).await?;
    match worker.metrics_addr {
        Some(addr) => println!("[3/7] worker running, metrics at http://{addr}/metrics"),
        None => println!("[3/7] worker running"),
    }

    let outcome = story(&args, &client, &users, &receiver.inbox, receiver_addr).await;

    let succeeded: u64 = crate::metrics::ACTIONS
        .iter()
        .map(|a| {
            worker
                .metrics
                .requests_total
                .with_label_values(&[a, "succeeded"])
                .get()
        })
        .sum();
    let (delivered, failed_posts) = emulator.delivery_counts();
    println!(
        "\n  Sequin: {} endpoints, {} sinks, {} API calls; {delivered} webhook messages delivered, {failed_posts} failed POSTs",
        emulator.endpoints().len(),
        emulator.sinks().len(),
        emulator.calls().len(),
    );
    println!("  userhooks_requests_total{{outcome=\"succeeded\"}} = {succeeded}");

    let name = &args.demo_database;
    let flags = local::psql_flags(&args.database_url);
    if args.keep_running && outcome.is_ok() {
        println!(
            "\nRunning until Ctrl-C. Try: psql {flags} -d {name} -c \"insert into notifications (user_id, message) values (1, 'hi')\""
        );
        let _ = tokio::signal::ctrl_c().await;
    }
    worker.stop().await;
    emulator.shutdown().await;
    outcome?;
    println!(
        "\nDemo passed in {:.1}s: every user received exactly their own rows.",
        started.elapsed().as_secs_f64()
    );
    println!(
        "The database `{name}` stays for you to look at; drop it with `dropdb {flags} {name}` \
         (or psql {flags} -c 'drop database {name}')."
    );
    println!(
        "Next: `userhooks dev-stack` runs the same pieces until Ctrl-C, with the tutorial's HTTP API \
         on 127.0.0.1:3333 and a receiver that prints every webhook (see README.md, \"Local stack\")."
    );
    Ok(())
}

/// Steps 4 to 7, and the check.
async fn story(
    args: &DemoArgs,
    client: &tokio_postgres::Client,
    users: &[(i32, String)],
    inbox: &Inbox,
    receiver_addr: std::net::SocketAddr,
) -> Result<(), DemoError> {
    let story = Story {
        client,
        users,
        inbox,
        subscribed: users.iter().take(3).collect(),
    };
    story.subscribe(receiver_addr).await?;
    let mut expected_live = story.generate(args).await?;
    let backfilled = story.subscribed[0];
    let expected_read = story.backfill(backfilled).await?;
    let unsubscribed = story.subscribed[2];
    let end_mark = story.unsubscribe(unsubscribed, &mut expected_live).await?;
    let outcome = Outcome {
        expected_live,
        backfilled: (backfilled.0, expected_read),
        unsubscribed: unsubscribed.0.to_string(),
        end_mark,
    };
    story.check(&outcome).await
}

/// What the demo's story works with: the users, and the three of them it subscribes.
struct Story<'a> {
    client: &'a tokio_postgres::Client,
    users: &'a [(i32, String)],
    inbox: &'a Inbox,
    subscribed: Vec<&'a (i32, String)>,
}

/// What the story did, for the check: the live rows each user should have received, the
/// backfilled user and their history, the unsubscribed user, the last row written.
struct Outcome {
    expected_live: BTreeMap<String, BTreeSet<i64>>,
    backfilled: (i32, BTreeSet<i64>),
    unsubscribed: String,
    end_mark: i64,
}

fn names(users: &[&(i32, String)]) -> String {
    users
        .iter()
        .map(|(_, n)| n.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

impl Story<'_> {
    /// Step 4: subscribe with plain SQL, as any application would.
    async fn subscribe(&self, receiver_addr: std::net::SocketAddr) -> Result<(), DemoError> {
        let t = Instant::now();
        let pb = Progress::spinner("subscribing");
        let mut request_ids = Vec::new();
        for (id, _) in &self.subscribed {
            let hook = format!("http://{receiver_addr}/hooks/{id}");
            let row = self
                .client
                .query_one(
                    "select userhooks.subscribe($1, $2)",
                    &[&id.to_string(), &hook],
                )
                .await?;
            request_ids.push(row.get::<_, i64>(0));
        }
        let results = wait_requests(self.client, &request_ids, Duration::from_secs(30)).await?;
        pb.finish();
        for (r, (_, n)) in results.iter().zip(&self.subscribed) {
            if r.status != "succeeded" {
                return Err(DemoError::Check(format!(
                    "subscribing {n} {}: {}",
                    r.status,
                    r.last_error.clone().unwrap_or_default()
                )));
            }
        }
        let others: Vec<&(i32, String)> = self.users.iter().skip(3).collect();
        println!(
            "[4/7] `select userhooks.subscribe(user_id, url)` for {}: all active in {:.1}s ({} not subscribed)",
            names(&self.subscribed),
            t.elapsed().as_secs_f64(),
            names(&others)
        );
        Ok(())
    }

    /// Step 5: generate notifications for random users; the rows each subscribed user should
    /// receive live.
    async fn generate(
        &self,
        args: &DemoArgs,
    ) -> Result<BTreeMap<String, BTreeSet<i64>>, DemoError> {
        let start_mark = max_id(self.client).await?;
        let total = (args.rate * args.generate_for.as_secs_f64()).floor() as u64;
        let mut pb = Progress::bar(total, "notifications inserted");
        let generated = super::generate::run(
            self.client,
            args.rate,
            Some(args.generate_for),
            std::future::pending(),
            |sent, elapsed| {
                let secs = elapsed.as_secs_f64().max(0.001);
                pb.message(format!("({})", progress::rate(sent as f64 / secs)));
                pb.set_position(sent);
            },
        )
        .await?;
        pb.finish();
        let gen_mark = max_id(self.client).await?;
        let mut expected_live: BTreeMap<String, BTreeSet<i64>> = BTreeMap::new();
        let live = written(self.client, start_mark, gen_mark).await?;
        for (id, _) in &self.subscribed {
            let u = id.to_string();
            expected_live.insert(u.clone(), live.get(&u).cloned().unwrap_or_default());
        }
        settle(self.inbox, &expected_live, Duration::from_secs(30)).await;
        println!(
            "[5/7] generated {generated} notifications for random users at {}; webhooks delivered",
            progress::rate(args.rate)
        );
        Ok(expected_live)
    }

    /// Step 6: backfill one user's history, with live progress; the rows it should replay.
    async fn backfill(
        &self,
        &(bf_id, ref bf_name): &(i32, String),
    ) -> Result<BTreeSet<i64>, DemoError> {
        let bf_mark = max_id(self.client).await?;
        let finished = enqueue_and_wait(self.client, "backfill", bf_id).await?;
        let result = finished.result.unwrap_or(Value::Null);
        let backfill_id = result.get("backfill_id").and_then(Value::as_i64);
        let history = written(self.client, 0, bf_mark).await?;
        let expected = history.get(&bf_id.to_string()).cloned().unwrap_or_default();
        let state = self.follow_backfill(backfill_id, expected.len()).await?;
        if state != "completed" {
            return Err(DemoError::Check(format!(
                "backfill for {bf_name} ended as `{state}`"
            )));
        }
        println!(
            "[6/7] `select userhooks.backfill('{bf_id}')`: {bf_name}'s {} notifications replayed as `read` messages, backfill completed",
            expected.len()
        );
        Ok(expected)
    }

    /// Show a backfill's progress until it ends (or a minute passed); its last state.
    async fn follow_backfill(
        &self,
        backfill_id: Option<i64>,
        expected: usize,
    ) -> Result<String, DemoError> {
        let mut pb = Progress::bar(expected as u64, "rows replayed");
        let deadline = Instant::now() + Duration::from_secs(60);
        let state = loop {
            let row = self
                .client
                .query_opt(
                    "select state, rows_initial_count, rows_processed_count
                       from userhooks.backfills where id = $1",
                    &[&backfill_id],
                )
                .await?;
            let (state, initial, processed) = match &row {
                Some(r) => (
                    r.get::<_, String>(0),
                    r.get::<_, Option<i64>>(1),
                    r.get::<_, i64>(2),
                ),
                None => ("unknown".to_string(), None, 0),
            };
            if let Some(n) = initial {
                pb.set_length(n.max(0) as u64);
            }
            pb.message(format!("({state})"));
            pb.set_position(processed.max(0) as u64);
            if matches!(state.as_str(), "completed" | "cancelled" | "failed")
                || Instant::now() > deadline
            {
                break state;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        };
        pb.finish();
        Ok(state)
    }

    /// Step 7: unsubscribe one user; their deliveries stop, the others' go on. Adds the others'
    /// new rows to `expected_live`; returns the last row id written.
    async fn unsubscribe(
        &self,
        &(un_id, ref un_name): &(i32, String),
        expected_live: &mut BTreeMap<String, BTreeSet<i64>>,
    ) -> Result<i64, DemoError> {
        enqueue_and_wait(self.client, "unsubscribe", un_id).await?;
        let unsubscribed = un_id.to_string();
        let un_mark = max_id(self.client).await?;
        let mut counter = 1_000_000;
        for (id, _) in self.users {
            super::generate::insert_batch(self.client, &[*id], AFTER_UNSUBSCRIBE, &mut counter)
                .await?;
        }
        let end_mark = max_id(self.client).await?;
        let after = written(self.client, un_mark, end_mark).await?;
        for (id, _) in &self.subscribed {
            let u = id.to_string();
            if u == unsubscribed {
                continue;
            }
            if let Some(ids) = after.get(&u) {
                expected_live.entry(u).or_default().extend(ids);
            }
        }
        settle(self.inbox, expected_live, Duration::from_secs(30)).await;
        // Give a wrong delivery every chance to show up.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        let got = tally(
            &unsubscribed,
            inbox_snapshot(self.inbox)
                .get(&unsubscribed)
                .map(Vec::as_slice)
                .unwrap_or(&[]),
        );
        let late = got.inserts.iter().filter(|id| **id > un_mark).count();
        println!(
            "[7/7] `select userhooks.unsubscribe('{unsubscribed}')`: {AFTER_UNSUBSCRIBE} more notifications each; {un_name} received {late} of theirs, the others all of theirs"
        );
        Ok(end_mark)
    }

    /// The table of what each user was written and received, and the check.
    async fn check(&self, outcome: &Outcome) -> Result<(), DemoError> {
        let got = inbox_snapshot(self.inbox);
        let written_all = written(self.client, 0, outcome.end_mark).await?;
        let (bf_id, expected_read) = &outcome.backfilled;
        let mut checks = Vec::new();
        println!();
        println!(
            "  {:<5} {:<7} {:<13} {:>8} {:>17} {:>9} {:>9} {:>10}",
            "user",
            "name",
            "subscription",
            "written",
            "while subscribed",
            "received",
            "backfill",
            "not theirs"
        );
        for (id, name) in self.users {
            let u = id.to_string();
            let received = got.get(&u).cloned().unwrap_or_default();
            let t = tally(&u, &received);
            let state = if u == outcome.unsubscribed {
                "unsubscribed"
            } else if self.subscribed.iter().any(|(i, _)| *i == *id) {
                "active"
            } else {
                "none"
            };
            let n_written = written_all.get(&u).map(BTreeSet::len).unwrap_or(0);
            let expected_live = outcome.expected_live.get(&u).cloned().unwrap_or_default();
            println!(
                "  {:<5} {:<7} {:<13} {:>8} {:>17} {:>9} {:>9} {:>10}",
                u,
                name,
                state,
                n_written,
                expected_live.len(),
                t.inserts.len(),
                t.reads.len(),
                t.foreign.len()
            );
            checks.push(UserCheck {
                expected_live,
                expected_read: (id == bf_id).then(|| expected_read.clone()),
                user: u,
                received,
            });
        }
        println!(
            "  written: all of the user's notifications ({HISTORY_PER_USER} from before anyone subscribed); \
             received: live `insert` webhooks; backfill: `read` webhooks; not theirs: rows of other users"
        );
        println!(
            "  backfill differs from written: a backfill replays the user's rows that exist at that moment, \
             history from before subscribing included; rows written after it arrive only as live webhooks"
        );
        let problems = check(&checks);
        if problems.is_empty() {
            let bf_name = self
                .users
                .iter()
                .find(|(id, _)| id == bf_id)
                .map(|(_, n)| n.as_str())
                .unwrap_or_default();
            println!(
                "\n  Check passed: every subscribed user received exactly the rows written for them while subscribed, \
                 nobody received another user's rows, and {bf_name}'s backfill replayed exactly their history."
            );
            Ok(())
        } else {
            println!("\n  Check FAILED:");
            for p in &problems {
                println!("   - {p}");
            }
            Err(DemoError::Check(problems.join("; ")))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn msg(action: &str, id: i64, user: Value) -> Value {
        json!({"record": {"id": id, "user_id": user, "message": "m"}, "changes": null,
               "action": action, "metadata": {"table_name": "notifications"}})
    }

    fn ids(list: &[i64]) -> BTreeSet<i64> {
        list.iter().copied().collect()
    }

    #[test]
    fn check_passes_when_each_user_got_exactly_their_rows() {
        let users = vec![
            UserCheck {
                user: "1".into(),
                expected_live: ids(&[1, 3]),
                expected_read: Some(ids(&[1, 3])),
                received: vec![
                    msg("insert", 1, json!(1)),
                    msg("insert", 3, json!(1)),
                    msg("read", 1, json!(1)),
                    msg("read", 3, json!(1)),
                ],
            },
            UserCheck {
                user: "2".into(),
                expected_live: ids(&[2]),
                expected_read: None,
                received: vec![msg("insert", 2, json!("2"))],
            },
        ];
        assert_eq!(check(&users), Vec::<String>::new());
    }

    #[test]
    fn check_fails_when_a_user_received_another_users_row() {
        let users = vec![UserCheck {
            user: "1".into(),
            expected_live: ids(&[1]),
            expected_read: None,
            received: vec![msg("insert", 1, json!(1)), msg("insert", 2, json!(2))],
        }];
        let problems = check(&users);
        assert_eq!(problems.len(), 1, "{problems:?}");
        assert!(problems[0].contains("row 2, which belongs to user 2"));
    }

    #[test]
    fn check_fails_when_rows_are_missing_or_arrive_after_unsubscribing() {
        let missing = vec![UserCheck {
            user: "1".into(),
            expected_live: ids(&[1, 2]),
            expected_read: None,
            received: vec![msg("insert", 1, json!(1))],
        }];
        assert!(check(&missing)[0].contains("did not receive 1"));
        let late = vec![UserCheck {
            user: "3".into(),
            expected_live: ids(&[5]),
            expected_read: None,
            received: vec![msg("insert", 5, json!(3)), msg("insert", 9, json!(3))],
        }];
        assert!(check(&late)[0].contains("should not have"));
    }

    #[test]
    fn check_fails_when_a_backfill_is_incomplete_or_unexpected() {
        let short = vec![UserCheck {
            user: "1".into(),
            expected_live: BTreeSet::new(),
            expected_read: Some(ids(&[1, 2])),
            received: vec![msg("read", 1, json!(1))],
        }];
        assert!(check(&short)[0].contains("backfill"));
        let unexpected = vec![UserCheck {
            user: "2".into(),
            expected_live: BTreeSet::new(),
            expected_read: None,
            received: vec![msg("read", 1, json!(2))],
        }];
        assert!(check(&unexpected)[0].contains("without a backfill"));
    }

    #[test]
    fn check_fails_on_messages_that_are_not_sequin_shaped() {
        let users = vec![UserCheck {
            user: "1".into(),
            expected_live: BTreeSet::new(),
            expected_read: None,
            received: vec![json!({"message": "transformed"})],
        }];
        assert!(check(&users)[0].contains("not Sequin-shaped"));
    }
}
