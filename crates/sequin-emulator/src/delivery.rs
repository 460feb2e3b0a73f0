//! Webhook delivery (opt-in): what Sequin's replication and sink pipelines do, approximated by
//! polling the source tables.
//!
//! - Each sink follows the source tables of its `source` (only tables the emulator knows).
//!   Rows are found by primary key: the table must have an integer `id` column, and a sink
//!   receives the rows whose `id` is above the table's highest `id` when the sink was created.
//!   Only **inserts** are captured (no updates, no deletes); a transaction that commits a
//!   lower `id` after a higher one has been read is missed.
//! - A sink with a filter function attached keeps the rows whose user column, as text, equals
//!   `annotations.user_id` as text: what the shared `userhooks` filter function does in real
//!   Sequin. The function's code is not run. A sink without a filter gets every row.
//! - Messages have Sequin's shape (`sequin-api.md` §7), one per POST when `destination.batch`
//!   is false, `{"data": [...]}` with up to `batch_size` messages when it is true. No transform.
//! - POST to the endpoint URL (+ `http_endpoint_path`) with the endpoint's headers and its real
//!   `encrypted_headers`. Any 2xx acks; anything else is retried with exponential backoff
//!   (`retry_initial` doubling up to `retry_max`) until `max_retry_count`, or forever.
//! - `paused` sinks keep capturing and deliver on resume; `disabled` sinks capture nothing;
//!   deleted sinks stop at once.
//! - Backfills read the table in `id` order up to its highest `id` at creation, keep the rows
//!   that pass the filter and deliver them as `read` messages, advancing
//!   `rows_initial_count` / `rows_ingested_count` / `rows_processed_count`, then complete.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::{watch, Notify};
use uuid::Uuid;

use super::state::{ts_micro, Db};
use super::Shared;

/// Rows read per query.
const PAGE: i64 = 500;

/// Where delivered rows come from and how hard to retry.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The source database (the one Sequin would replicate).
    pub database_url: String,
    /// Column compared with the sink's `annotations.user_id`.
    pub user_column: String,
    /// How often the source tables are polled.
    pub poll_interval: Duration,
    /// First redelivery delay after a failed POST (Sequin: 1 s).
    pub retry_initial: Duration,
    /// Longest redelivery delay (Sequin: 10 min).
    pub retry_max: Duration,
    /// Timeout of one POST (Sequin's `ack_wait_ms`: 30 s).
    pub request_timeout: Duration,
}

impl DeliveryConfig {
    pub fn new(database_url: impl Into<String>) -> Self {
        DeliveryConfig {
            database_url: database_url.into(),
            user_column: "user_id".to_string(),
            poll_interval: Duration::from_millis(200),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(600),
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// Counters of delivery attempts (for tests and the demo).
#[derive(Debug, Default)]
pub(crate) struct DeliveryStats {
    pub delivered: AtomicU64,
    pub failed: AtomicU64,
}

/// `"schema.table"` → `"schema"."table"`.
fn quote_table(table: &str) -> String {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Elixir's `to_string/1` of a JSON value, as the shared filter function sees it.
pub(crate) fn elixir_to_string(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Does a sink with this filter setting keep this record?
pub(crate) fn keeps(filter_user: Option<&str>, record: &Value, user_column: &str) -> bool {
    match filter_user {
        None => true,
        Some(user) => elixir_to_string(record.get(user_column)) == user,
    }
}

/// Postgres renders timestamptz as `…+00:00`; Sequin as `…Z` with microseconds.
fn normalize_record(record: Value) -> Value {
    match record {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .map(|(k, v)| {
                    let v = match &v {
                        Value::String(s) if s.len() >= 20 && s.as_bytes()[10] == b'T' => {
                            match DateTime::parse_from_rfc3339(s) {
                                Ok(t) => Value::String(ts_micro(t.with_timezone(&Utc))),
                                Err(_) => v,
                            }
                        }
                        _ => v,
                    };
                    (k, v)
                })
                .collect(),
        ),
        other => other,
    }
}

/// What the engine needs to know about one sink, copied out of the state lock.
#[derive(Clone, Debug)]
struct SinkView {
    id: Uuid,
    name: String,
    status: String,
    tables: Vec<String>,
    start_cursors: Option<BTreeMap<String, i64>>,
    /// `Some(user)` when a filter function is attached.
    filter_user: Option<String>,
    annotations: Value,
    inserts: bool,
}

fn sink_views(db: &Db) -> Vec<SinkView> {
    db.sinks
        .iter()
        .map(|s| SinkView {
            id: s.id,
            name: s.name.clone(),
            status: s.status.clone(),
            tables: db
                .tables
                .iter()
                .filter(|t| super::routes::table_in_source(&s.source, t))
                .cloned()
                .collect(),
            start_cursors: s.start_cursors.clone(),
            filter_user: s
                .filter
                .map(|_| elixir_to_string(s.annotations.get("user_id"))),
            annotations: s.annotations.clone(),
            inserts: s.actions.iter().any(|a| a == "insert"),
        })
        .collect()
}

/// One message waiting for delivery.
#[derive(Clone, Debug)]
struct Msg {
    body: Value,
    backfill: Option<Uuid>,
}

#[derive(Default)]
struct Queue {
    items: Mutex<VecDeque<Msg>>,
    notify: Notify,
}

impl Queue {
    fn push(&self, msg: Msg) {
        self.items.lock().expect("delivery queue").push_back(msg);
        self.notify.notify_one();
    }
}

struct SinkRun {
    cursors: HashMap<String, i64>,
    queue: Arc<Queue>,
    task: tokio::task::JoinHandle<()>,
}

struct BackfillRun {
    cursor: i64,
    upper: i64,
}

/// Static parts of every message's `metadata.database`.
struct DbInfo {
    database: String,
    hostname: String,
}

struct Engine {
    shared: Arc<Shared>,
    config: DeliveryConfig,
    http: reqwest::Client,
    stop: watch::Receiver<bool>,
    client: Option<tokio_postgres::Client>,
    sinks: HashMap<Uuid, SinkRun>,
    backfills: HashMap<Uuid, BackfillRun>,
    lsn: AtomicU64,
    info: DbInfo,
}

/// Connect to the source database with a UTC session (timestamps render like Sequin's).
pub(crate) async fn connect(url: &str) -> Option<tokio_postgres::Client> {
    match crate::pg::connect(url).await {
        Ok(c) => match c.batch_execute("set timezone = 'UTC'").await {
            Ok(()) => Some(c),
            Err(err) => {
                tracing::warn!(error = %err, "emulator delivery: cannot set up connection");
                None
            }
        },
        Err(err) => {
            tracing::warn!(error = %err, "emulator delivery: cannot connect to the source database");
            None
        }
    }
}

async fn max_id(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<i64, tokio_postgres::Error> {
    let row = client
        .query_one(
            &format!(
                "select coalesce(max(id), 0)::bigint from {}",
                quote_table(table)
            ),
            &[],
        )
        .await?;
    Ok(row.get(0))
}

/// The highest `id` of every known table (taken when a sink or backfill is created).
pub(crate) async fn table_max_ids(shared: &Shared) -> Option<BTreeMap<String, i64>> {
    let config = shared.delivery.as_ref()?;
    let tables = shared.db().tables.clone();
    let mut guard = shared.route_pg.lock().await;
    if guard.is_none() {
        *guard = connect(&config.database_url).await;
    }
    let client = guard.as_ref()?;
    let mut out = BTreeMap::new();
    for t in tables {
        match max_id(client, &t).await {
            Ok(id) => {
                out.insert(t, id);
            }
            Err(err) => {
                // That table starts when delivery first follows it.
                tracing::debug!(table = %t, error = %err, "emulator delivery: cannot read max(id)");
                if client.is_closed() {
                    *guard = None;
                    return None;
                }
            }
        }
    }
    Some(out)
}

/// Run the delivery engine until the emulator stops.
pub(crate) async fn run(shared: Arc<Shared>, config: DeliveryConfig) {
    let stop = shared.stop.subscribe();
    let pg = crate::pg::config(&config.database_url).ok();
    let info = DbInfo {
        database: pg
            .as_ref()
            .and_then(|c| c.get_dbname().map(str::to_string))
            .unwrap_or_else(|| "postgres".to_string()),
        hostname: pg
            .as_ref()
            .and_then(|c| c.get_hosts().first().cloned())
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(h) => h,
                #[cfg(unix)]
                tokio_postgres::config::Host::Unix(p) => p.display().to_string(),
            })
            .unwrap_or_else(|| "localhost".to_string()),
    };
    let mut engine = Engine {
        shared,
        http: reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .unwrap_or_default(),
        config,
        stop,
        client: None,
        sinks: HashMap::new(),
        backfills: HashMap::new(),
        lsn: AtomicU64::new(1),
        info,
    };
    let mut last_error: Option<String> = None;
    loop {
        if *engine.stop.borrow() {
            break;
        }
        if engine.client.as_ref().is_none_or(|c| c.is_closed()) {
            engine.client = connect(&engine.config.database_url).await;
        }
        if engine.client.is_some() {
            match engine.tick().await {
                Ok(()) => last_error = None,
                Err(err) => {
                    // Once per distinct error, not once per poll.
                    let text = err.to_string();
                    if last_error.as_deref() != Some(text.as_str()) {
                        tracing::warn!(error = %text, "emulator delivery: polling failed");
                        last_error = Some(text);
                    }
                }
            }
        }
        let mut stop = engine.stop.clone();
        tokio::select! {
            _ = tokio::time::sleep(engine.config.poll_interval) => {}
            _ = stop.wait_for(|v| *v) => break,
        }
    }
    for (_, run) in engine.sinks.drain() {
        run.task.abort();
    }
}

impl Engine {
    fn message(
        &self,
        action: &str,
        table: &str,
        record: Value,
        sink: &SinkView,
        backfill: Option<Uuid>,
    ) -> Msg {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        let pk = match record.get("id") {
            Some(Value::String(s)) => s.clone(),
            Some(v) => v.to_string(),
            None => String::new(),
        };
        let lsn = self.lsn.fetch_add(1, Ordering::Relaxed);
        let key = match backfill {
            Some(b) => format!("{table}:{pk}:read:{b}"),
            None => format!("{table}:{pk}:{action}"),
        };
        let (database_id, database_name) = {
            let db = self.shared.db();
            (db.database_id, db.database.clone())
        };
        let body = json!({
            "record": normalize_record(record),
            "changes": null,
            "action": action,
            "metadata": {
                "table_schema": schema,
                "table_name": name,
                "commit_timestamp": ts_micro(Utc::now()),
                "commit_lsn": lsn,
                "commit_idx": 0,
                "database_name": database_name,
                "transaction_annotations": null,
                "idempotency_key": hex::encode(key),
                "record_pks": [pk],
                "enrichment": null,
                "consumer": {"id": sink.id, "name": sink.name, "annotations": sink.annotations},
                "database": {
                    "id": database_id,
                    "name": database_name,
                    "annotations": {},
                    "database": self.info.database,
                    "hostname": self.info.hostname,
                },
            },
        });
        Msg { body, backfill }
    }

    async fn tick(&mut self) -> Result<(), tokio_postgres::Error> {
        let views = sink_views(&self.shared.db());
        let live: HashSet<Uuid> = views.iter().map(|v| v.id).collect();
        // Deleted sinks stop at once.
        self.sinks.retain(|id, run| {
            let keep = live.contains(id);
            if !keep {
                run.task.abort();
            }
            keep
        });
        for v in &views {
            if self.sinks.contains_key(&v.id) {
                continue;
            }
            // Tables without a known start are set when first followed (below).
            let cursors: HashMap<String, i64> = v
                .tables
                .iter()
                .filter_map(|t| Some((t.clone(), *v.start_cursors.as_ref()?.get(t)?)))
                .collect();
            let queue = Arc::new(Queue::default());
            let task = tokio::spawn(deliver(
                self.shared.clone(),
                v.id,
                queue.clone(),
                self.config.clone(),
                self.http.clone(),
            ));
            self.sinks.insert(
                v.id,
                SinkRun {
                    cursors,
                    queue,
                    task,
                },
            );
        }

        // Live inserts, table by table; one table's trouble (no `id` column, dropped table)
        // does not stop the others.
        let tables: HashSet<&String> = views.iter().flat_map(|v| v.tables.iter()).collect();
        let mut first_error = None;
        for table in tables {
            if let Err(err) = self.follow_table(table, &views).await {
                first_error.get_or_insert(err);
            }
        }
        let backfills = self.backfills_tick(&views).await;
        match first_error {
            Some(err) => Err(err),
            None => backfills,
        }
    }

    async fn follow_table(
        &mut self,
        table: &String,
        views: &[SinkView],
    ) -> Result<(), tokio_postgres::Error> {
        let client = self.client.as_ref().expect("connected");
        {
            let following: Vec<&SinkView> =
                views.iter().filter(|v| v.tables.contains(table)).collect();
            // A table added to a sink's source later starts at the current end.
            for v in &following {
                let run = self.sinks.get_mut(&v.id).expect("run exists");
                if !run.cursors.contains_key(table) {
                    let c = max_id(client, table).await?;
                    run.cursors.insert(table.clone(), c);
                }
            }
            let mut from = following
                .iter()
                .map(|v| self.sinks[&v.id].cursors[table])
                .min()
                .unwrap_or(0);
            loop {
                let rows = client
                    .query(
                        &format!(
                            "select id::bigint, to_jsonb(t) from {} t where id > $1::bigint order by id limit {PAGE}",
                            quote_table(table)
                        ),
                        &[&from],
                    )
                    .await?;
                for row in &rows {
                    let id: i64 = row.get(0);
                    let record: Value = row.get(1);
                    for v in &following {
                        let cursor = self.sinks[&v.id].cursors[table];
                        if cursor >= id {
                            continue;
                        }
                        let wanted = v.status != "disabled"
                            && v.inserts
                            && keeps(v.filter_user.as_deref(), &record, &self.config.user_column);
                        let msg =
                            wanted.then(|| self.message("insert", table, record.clone(), v, None));
                        let run = self.sinks.get_mut(&v.id).expect("run exists");
                        run.cursors.insert(table.clone(), id);
                        if let Some(msg) = msg {
                            run.queue.push(msg);
                        }
                    }
                    from = id;
                }
                if (rows.len() as i64) < PAGE {
                    break;
                }
            }
        }
        Ok(())
    }

    async fn backfills_tick(&mut self, views: &[SinkView]) -> Result<(), tokio_postgres::Error> {
        let active: Vec<(Uuid, Uuid, String, Option<i64>, bool)> = {
            let db = self.shared.db();
            db.backfills
                .iter()
                .filter(|b| b.state == "active")
                .filter_map(|b| {
                    let p = b.progress.as_ref()?;
                    Some((b.id, b.sink_id, b.table.clone(), p.upper_id, p.read_done))
                })
                .collect()
        };
        let present: HashSet<Uuid> = active.iter().map(|a| a.0).collect();
        self.backfills.retain(|id, _| present.contains(id));
        let client = self.client.as_ref().expect("connected");
        let user_col = self.config.user_column.clone();
        for (id, sink_id, table, upper_id, read_done) in active {
            let Some(view) = views.iter().find(|v| v.id == sink_id) else {
                continue;
            };
            if !read_done {
                if !self.backfills.contains_key(&id) {
                    let upper = match upper_id {
                        Some(u) => u,
                        None => max_id(client, &table).await?,
                    };
                    let count: i64 = client
                        .query_one(
                            &format!(
                                "select count(*) from {} t where id <= $1::bigint
                                   and ($2::text is null or coalesce(to_jsonb(t)->>$3, '') = $2)",
                                quote_table(&table)
                            ),
                            &[&upper, &view.filter_user, &user_col],
                        )
                        .await?
                        .get(0);
                    self.set_progress(id, |p| p.initial = Some(count.max(0) as u64));
                    self.backfills.insert(id, BackfillRun { cursor: 0, upper });
                }
                let (cursor, upper) = {
                    let r = &self.backfills[&id];
                    (r.cursor, r.upper)
                };
                let rows = client
                    .query(
                        &format!(
                            "select id::bigint, to_jsonb(t) from {} t
                              where id > $1::bigint and id <= $2::bigint
                                and ($3::text is null or coalesce(to_jsonb(t)->>$4, '') = $3)
                              order by id limit {PAGE}",
                            quote_table(&table)
                        ),
                        &[&cursor, &upper, &view.filter_user, &user_col],
                    )
                    .await?;
                let Some(run) = self.sinks.get(&sink_id) else {
                    continue;
                };
                let queue = run.queue.clone();
                let mut last = cursor;
                for row in &rows {
                    last = row.get(0);
                    let record: Value = row.get(1);
                    queue.push(self.message("read", &table, record, view, Some(id)));
                }
                let n = rows.len() as u64;
                let done = (rows.len() as i64) < PAGE;
                if let Some(r) = self.backfills.get_mut(&id) {
                    r.cursor = last;
                }
                self.set_progress(id, |p| {
                    p.ingested += n;
                    p.read_done = done;
                });
            }
            complete_if_done(&mut self.shared.db(), id);
        }
        Ok(())
    }

    fn set_progress(&self, id: Uuid, f: impl FnOnce(&mut super::state::DeliveredProgress)) {
        let mut db = self.shared.db();
        if let Some(p) = db
            .backfills
            .iter_mut()
            .find(|b| b.id == id)
            .and_then(|b| b.progress.as_mut())
        {
            f(p);
        }
    }
}

/// An active backfill whose rows are all read and delivered becomes `completed`.
fn complete_if_done(db: &mut Db, id: Uuid) {
    if let Some(b) = db.backfills.iter_mut().find(|b| b.id == id) {
        let done = b
            .progress
            .as_ref()
            .is_some_and(|p| p.read_done && p.processed >= p.ingested);
        if done && b.state == "active" {
            b.set_state("completed", std::time::Instant::now());
        }
    }
}

/// Where and how one sink delivers, read fresh before every attempt.
struct Target {
    url: String,
    headers: Vec<(String, String)>,
    batch: bool,
    batch_size: usize,
    max_retry_count: Option<u64>,
}

fn target(db: &Db, sink_id: Uuid) -> Option<Option<Target>> {
    let sink = db.sinks.iter().find(|s| s.id == sink_id)?;
    if sink.status != "active" {
        return Some(None);
    }
    let endpoint = db.endpoint_by_id(sink.endpoint_id)?;
    let url = match &sink.endpoint_path {
        Some(p) => format!("{}{}", endpoint.url.trim_end_matches('/'), p),
        None => endpoint.url.clone(),
    };
    let as_text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    };
    let mut merged: Map<String, Value> = endpoint.headers.clone();
    merged.extend(endpoint.encrypted_headers.clone());
    Some(Some(Target {
        url,
        headers: merged
            .iter()
            .map(|(k, v)| (k.clone(), as_text(v)))
            .collect(),
        batch: sink.batch,
        batch_size: sink.batch_size.max(1) as usize,
        max_retry_count: sink.max_retry_count,
    }))
}

/// One sink's delivery loop: in order, with redelivery backoff.
async fn deliver(
    shared: Arc<Shared>,
    sink_id: Uuid,
    queue: Arc<Queue>,
    config: DeliveryConfig,
    http: reqwest::Client,
) {
    let mut stop = shared.stop.subscribe();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() {
            return;
        }
        let target = match target(&shared.db(), sink_id) {
            None => return, // deleted
            Some(t) => t,
        };
        let Some(target) = target else {
            // Paused or disabled: keep the buffer, look again later.
            tokio::select! {
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            continue;
        };
        let n = if target.batch { target.batch_size } else { 1 };
        let batch: Vec<Msg> = queue
            .items
            .lock()
            .expect("delivery queue")
            .iter()
            .take(n)
            .cloned()
            .collect();
        if batch.is_empty() {
            tokio::select! {
                _ = queue.notify.notified() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            continue;
        }
        let body = if target.batch {
            json!({"data": batch.iter().map(|m| m.body.clone()).collect::<Vec<_>>()})
        } else {
            batch[0].body.clone()
        };
        let mut request = http.post(&target.url).json(&body);
        for (k, v) in &target.headers {
            request = request.header(k.as_str(), v.as_str());
        }
        let ok = match request.send().await {
            Ok(resp) => resp.status().is_success(),
            Err(_) => false,
        };
        let give_up = !ok
            && target
                .max_retry_count
                .is_some_and(|max| u64::from(failures) + 1 >= max);
        if ok || give_up {
            if ok {
                shared
                    .delivery_stats
                    .delivered
                    .fetch_add(batch.len() as u64, Ordering::Relaxed);
            } else {
                shared.delivery_stats.failed.fetch_add(1, Ordering::Relaxed);
            }
            queue
                .items
                .lock()
                .expect("delivery queue")
                .drain(..batch.len());
            failures = 0;
            let mut db = shared.db();
            for m in &batch {
                if let Some(b) = m.backfill {
                    if let Some(p) = db
                        .backfills
                        .iter_mut()
                        .find(|x| x.id == b)
                        .and_then(|x| x.progress.as_mut())
                    {
                        p.processed += 1;
                    }
                    complete_if_done(&mut db, b);
                }
            }
            continue;
        }
        shared.delivery_stats.failed.fetch_add(1, Ordering::Relaxed);
        failures = failures.saturating_add(1);
        let exp = config
            .retry_initial
            .saturating_mul(2u32.saturating_pow(failures.saturating_sub(1).min(20)));
        let delay = exp.min(config.retry_max);
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|v| *v) => return,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn filter_compares_as_text_like_elixir_to_string() {
        let rec = json!({"id": 1, "user_id": 42});
        assert!(keeps(Some("42"), &rec, "user_id"));
        assert!(!keeps(Some("4"), &rec, "user_id"));
        assert!(keeps(None, &rec, "user_id"));
        let rec = json!({"id": 1, "user_id": "abc"});
        assert!(keeps(Some("abc"), &rec, "user_id"));
        assert!(!keeps(
            Some("42"),
            &json!({"id": 1, "user_id": null}),
            "user_id"
        ));
    }

    #[test]
    fn timestamps_render_like_sequin() {
        let rec = normalize_record(
            json!({"created_at": "2025-04-22T00:26:11.975318+00:00", "message": "hi"}),
        );
        assert_eq!(rec["created_at"], "2025-04-22T00:26:11.975318Z");
        assert_eq!(rec["message"], "hi");
    }

    #[test]
    fn tables_are_quoted() {
        assert_eq!(
            quote_table("public.notifications"),
            "\"public\".\"notifications\""
        );
        assert_eq!(quote_table("we\"ird"), "\"public\".\"we\"\"ird\"");
    }
}
