//! Webhook delivery (opt-in): Sequin's replication and sink pipelines, fed by the emulator's
//! change log (see [`super::changelog`]) and routed by its runtime model (see
//! [`super::runtime`]).
//!
//! - The engine installs capture triggers on the tables the emulator knows and reads the change
//!   log in commit-visibility order. Each change (insert, update or delete) is routed to the
//!   sinks of the routing context whose source holds its table and whose `actions` hold its
//!   action, and who were created before it. Routing puts a message into each sink's store; a
//!   full store stalls the whole slot.
//! - Each store's delivery loop sends only while the store's copy of the sink is `active`. It
//!   runs the filter first: a sink with a filter function attached keeps the messages whose
//!   user column, as text, equals the message's `metadata.consumer.annotations.user_id` as
//!   text — what the shared `userhooks` filter function does in real Sequin (the function's
//!   code is not run). A sink without a filter gets every message.
//! - Messages have Sequin's shape (`docs/architecture.md`), one per POST when
//!   `destination.batch` is false, `{"data": [...]}` with up to `batch_size` messages when it
//!   is true. No transform. `commit_lsn` is the change's log id, `commit_idx` 0.
//! - POST to the endpoint URL (+ `http_endpoint_path`) with the endpoint's headers and its real
//!   `encrypted_headers`. Any 2xx acks; anything else is retried with exponential backoff
//!   (`retry_initial` doubling up to `retry_max`) until `max_retry_count`, or forever.
//! - Backfills read the table in `id` order (it must have an integer `id` column) up to its
//!   highest `id` at creation, keep the rows that pass the filter and put them into the sink's
//!   store as `read` messages (without the store's limit check, like Sequin's table reader),
//!   advancing `rows_initial_count` / `rows_ingested_count` / `rows_processed_count`, then
//!   complete.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Map, Value};
use tokio::sync::watch;
use uuid::Uuid;

use super::changelog::{self, quote_table, Change, ChangeLogError, Reader, PAGE};
use super::runtime::{Msg, RoutedSink, Store};
use super::state::{ts_micro, Db};
use super::Shared;

/// Where delivered rows come from and how hard to retry.
#[derive(Clone, Debug)]
pub struct DeliveryConfig {
    /// The source database (the one Sequin would replicate).
    pub database_url: String,
    /// Column compared with the sink's `annotations.user_id`.
    pub user_column: String,
    /// How often the change log is polled.
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

/// Elixir's `to_string/1` of a JSON value, as the shared filter function sees it.
pub(crate) fn elixir_to_string(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    }
}

/// Does the shared user filter keep this record for a sink annotated with `user`?
pub(crate) fn keeps(filter_user: Option<&str>, record: &Value, user_column: &str) -> bool {
    match filter_user {
        None => true,
        Some(user) => elixir_to_string(record.get(user_column)) == user,
    }
}

/// The filter as a sink's pipeline runs it on a stored message: the record's user column
/// against the annotations the message was built with.
fn passes(has_filter: bool, body: &Value, user_column: &str) -> bool {
    if !has_filter {
        return true;
    }
    let user = elixir_to_string(body.pointer("/metadata/consumer/annotations/user_id"));
    keeps(
        Some(&user),
        body.get("record").unwrap_or(&Value::Null),
        user_column,
    )
}

/// Postgres renders timestamptz as `…+00:00` (or the session's offset); Sequin as `…Z` with
/// microseconds.
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

/// What a backfill needs to know about its sink, copied out of the state lock.
#[derive(Clone, Debug)]
struct BackfillSink {
    id: Uuid,
    name: String,
    /// `Some(user)` when a filter function is attached.
    filter_user: Option<String>,
    annotations: Value,
}

fn backfill_sinks(db: &Db) -> HashMap<Uuid, BackfillSink> {
    db.sinks
        .iter()
        .map(|s| {
            let view = BackfillSink {
                id: s.id,
                name: s.name.clone(),
                filter_user: s
                    .filter
                    .map(|_| elixir_to_string(s.annotations.get("user_id"))),
                annotations: s.annotations.clone(),
            };
            (s.id, view)
        })
        .collect()
}

struct BackfillRun {
    cursor: i64,
    upper: i64,
}

/// Static parts of every message's `metadata`.
struct DbInfo {
    id: Uuid,
    name: String,
    database: String,
    hostname: String,
}

impl DbInfo {
    fn metadata(&self, table: &str, consumer: Value) -> Value {
        let (schema, name) = table.split_once('.').unwrap_or(("public", table));
        json!({
            "table_schema": schema,
            "table_name": name,
            "database_name": self.name,
            "transaction_annotations": null,
            "enrichment": null,
            "consumer": consumer,
            "database": {
                "id": self.id,
                "name": self.name,
                "annotations": {},
                "database": self.database,
                "hostname": self.hostname,
            },
        })
    }
}

fn msg(body: Value, backfill: Option<Uuid>) -> Msg {
    let bytes = serde_json::to_vec(&body).map_or(0, |v| v.len() as u64);
    Msg {
        body,
        backfill,
        bytes,
    }
}

/// A change's message for one routed sink.
fn change_message(info: &DbInfo, change: &Change, sink: &RoutedSink) -> Msg {
    let consumer = json!({"id": sink.id, "name": sink.name, "annotations": sink.annotations});
    let mut metadata = info.metadata(&change.table, consumer);
    metadata["commit_timestamp"] = json!(ts_micro(change.committed_at));
    metadata["commit_lsn"] = json!(change.id);
    metadata["commit_idx"] = json!(0);
    metadata["idempotency_key"] = json!(hex::encode(format!("{}:0", change.id)));
    metadata["record_pks"] = json!(change.record_pks);
    let body = json!({
        "record": normalize_record(change.record.clone()),
        "changes": change.changes.clone().map(normalize_record),
        "action": change.action,
        "metadata": metadata,
    });
    msg(body, None)
}

/// A backfill row's `read` message.
fn read_message(info: &DbInfo, table: &str, record: Value, sink: &BackfillSink, b: Uuid) -> Msg {
    let pk = elixir_to_string(record.get("id"));
    let consumer = json!({"id": sink.id, "name": sink.name, "annotations": sink.annotations});
    let mut metadata = info.metadata(table, consumer);
    metadata["commit_timestamp"] = json!(ts_micro(Utc::now()));
    metadata["commit_lsn"] = json!(0);
    metadata["commit_idx"] = json!(0);
    metadata["idempotency_key"] = json!(hex::encode(format!("{table}:{pk}:read:{b}")));
    metadata["record_pks"] = json!([pk]);
    let body = json!({
        "record": normalize_record(record),
        "changes": null,
        "action": "read",
        "metadata": metadata,
    });
    msg(body, Some(b))
}

/// The API routes' own connection to the source database.
pub(crate) struct RouteConn {
    client: tokio_postgres::Client,
    /// The change log and the triggers exist.
    log_ready: bool,
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

/// The route connection, opened on first use and again after it broke.
async fn route_conn<'a>(
    shared: &Shared,
    guard: &'a mut Option<RouteConn>,
) -> Option<&'a mut RouteConn> {
    let config = shared.delivery.as_ref()?;
    if guard.as_ref().is_none_or(|c| c.client.is_closed()) {
        *guard = connect(&config.database_url).await.map(|client| RouteConn {
            client,
            log_ready: false,
        });
    }
    guard.as_mut()
}

/// Install the change log (and the publication) on the tables that exist now, before the
/// emulator answers its first call: a worker's preflight may look for the publication at once.
/// Tables created later are picked up by the engine.
pub(crate) async fn prepare(config: &DeliveryConfig, tables: &[String]) {
    let result = async {
        let client = crate::pg::connect(&config.database_url).await?;
        let present = changelog::present(&client, tables).await?;
        changelog::install(&client, &present).await
    }
    .await;
    if let Err(err) = result {
        tracing::warn!(error = %err, "emulator delivery: cannot install the change log yet");
    }
}

/// The change log's position when a sink is created: it receives the changes after it.
/// Makes sure the triggers exist first, so no later change escapes them.
pub(crate) async fn log_position(shared: &Shared) -> Option<i64> {
    let tables = shared.db().tables.clone();
    let mut guard = shared.route_pg.lock().await;
    let conn = route_conn(shared, &mut guard).await?;
    if !conn.log_ready {
        let result = async {
            let present = changelog::present(&conn.client, &tables).await?;
            changelog::install(&conn.client, &present).await
        }
        .await;
        match result {
            Ok(()) => conn.log_ready = true,
            Err(err) => {
                tracing::warn!(error = %err, "emulator delivery: cannot install the change log");
                return None;
            }
        }
    }
    match changelog::position(&conn.client).await {
        Ok(p) => Some(p),
        Err(err) => {
            tracing::warn!(error = %err, "emulator delivery: cannot read the change log position");
            None
        }
    }
}

/// The highest `id` of every known table (taken when a backfill is created).
pub(crate) async fn table_max_ids(shared: &Shared) -> Option<BTreeMap<String, i64>> {
    let tables = shared.db().tables.clone();
    let mut guard = shared.route_pg.lock().await;
    let conn = route_conn(shared, &mut guard).await?;
    let mut out = BTreeMap::new();
    for t in tables {
        match max_id(&conn.client, &t).await {
            Ok(id) => {
                out.insert(t, id);
            }
            Err(err) => {
                // That table's backfill reads up to its end when it starts.
                tracing::debug!(table = %t, error = %err, "emulator delivery: cannot read max(id)");
                if conn.client.is_closed() {
                    *guard = None;
                    return None;
                }
            }
        }
    }
    Some(out)
}

#[derive(Debug, thiserror::Error)]
enum TickError {
    #[error(transparent)]
    Log(#[from] ChangeLogError),
    #[error("backfill query failed: {0}")]
    Backfill(#[from] tokio_postgres::Error),
}

struct Engine {
    shared: Arc<Shared>,
    config: DeliveryConfig,
    http: reqwest::Client,
    stop: watch::Receiver<bool>,
    client: Option<tokio_postgres::Client>,
    /// One delivery loop per store.
    tasks: HashMap<Uuid, (Arc<Store>, tokio::task::JoinHandle<()>)>,
    backfills: HashMap<Uuid, BackfillRun>,
    info: DbInfo,
    reader: Option<Reader>,
    /// Tables with the capture trigger.
    installed: HashSet<String>,
    /// Changes read and not yet routed (the slot is stalled while this is not empty).
    pending: VecDeque<Change>,
}

fn db_info(shared: &Shared, config: &DeliveryConfig) -> DbInfo {
    let pg = crate::pg::config(&config.database_url).ok();
    let (id, name) = {
        let db = shared.db();
        (db.database_id, db.database.clone())
    };
    DbInfo {
        id,
        name,
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
    }
}

/// Run the delivery engine until the emulator stops.
pub(crate) async fn run(shared: Arc<Shared>, config: DeliveryConfig) {
    let stop = shared.stop.subscribe();
    let info = db_info(&shared, &config);
    let mut engine = Engine {
        shared,
        http: reqwest::Client::builder()
            .timeout(config.request_timeout)
            .build()
            .unwrap_or_default(),
        config,
        stop,
        client: None,
        tasks: HashMap::new(),
        backfills: HashMap::new(),
        info,
        reader: None,
        installed: HashSet::new(),
        pending: VecDeque::new(),
    };
    let mut last_error: Option<String> = None;
    loop {
        if *engine.stop.borrow() {
            break;
        }
        engine.sync_tasks();
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
    for (_, (_, task)) in engine.tasks.drain() {
        task.abort();
    }
}

impl Engine {
    /// One delivery loop per store: new stores get one, dropped stores lose theirs.
    fn sync_tasks(&mut self) {
        let stores: HashMap<Uuid, Arc<Store>> = self
            .shared
            .runtime()
            .stores()
            .into_iter()
            .map(|s| (s.sink_id, s))
            .collect();
        self.tasks.retain(|id, (store, task)| {
            let keep = stores.get(id).is_some_and(|s| Arc::ptr_eq(s, store));
            if !keep {
                task.abort();
            }
            keep
        });
        for (id, store) in stores {
            if self.tasks.contains_key(&id) {
                continue;
            }
            let task = tokio::spawn(deliver(
                self.shared.clone(),
                store.clone(),
                self.config.clone(),
                self.http.clone(),
            ));
            self.tasks.insert(id, (store, task));
        }
    }

    async fn tick(&mut self) -> Result<(), TickError> {
        self.install().await?;
        self.route_pending();
        while self.pending.is_empty() {
            let (Some(client), Some(reader)) = (self.client.as_ref(), self.reader.as_mut()) else {
                break;
            };
            let changes = reader.poll(client).await?;
            let n = changes.len() as i64;
            self.pending.extend(changes);
            self.route_pending();
            if n < PAGE {
                break;
            }
        }
        self.backfills_tick().await?;
        Ok(())
    }

    /// Capture triggers on the known tables that exist, and the reader's start.
    async fn install(&mut self) -> Result<(), ChangeLogError> {
        let client = self.client.as_ref().expect("connected");
        let tables = self.shared.db().tables.clone();
        if self.reader.is_some() && tables.iter().all(|t| self.installed.contains(t)) {
            return Ok(());
        }
        let present = changelog::present(client, &tables).await?;
        let missing: Vec<String> = present
            .into_iter()
            .filter(|t| !self.installed.contains(t))
            .collect();
        if !missing.is_empty() || self.reader.is_none() {
            changelog::install(client, &missing).await?;
            self.installed.extend(missing);
        }
        if self.reader.is_none() {
            // Start at the end of the log, but not after a sink created before this engine
            // connected: its changes are owed.
            let pos = changelog::position(client).await?;
            let first_sink = self
                .shared
                .db()
                .sinks
                .iter()
                .filter_map(|s| s.start_lsn)
                .min();
            let start = first_sink.map_or(pos, |s| s.min(pos));
            self.reader = Some(Reader::new(start));
        }
        Ok(())
    }

    /// Route read changes in order until one does not fit (the slot stalls on it).
    fn route_pending(&mut self) {
        while let Some(change) = self.pending.front() {
            let routed = self
                .shared
                .runtime()
                .route(change, |sink| change_message(&self.info, change, sink));
            if routed.is_err() {
                return;
            }
            self.pending.pop_front();
        }
    }

    async fn backfills_tick(&mut self) -> Result<(), tokio_postgres::Error> {
        let (active, sinks) = {
            let db = self.shared.db();
            let active: Vec<(Uuid, Uuid, String, Option<i64>, bool)> = db
                .backfills
                .iter()
                .filter(|b| b.state == "active")
                .filter_map(|b| {
                    let p = b.progress.as_ref()?;
                    Some((b.id, b.sink_id, b.table.clone(), p.upper_id, p.read_done))
                })
                .collect();
            let sinks = if active.is_empty() {
                HashMap::new()
            } else {
                backfill_sinks(&db)
            };
            (active, sinks)
        };
        let present: HashSet<Uuid> = active.iter().map(|a| a.0).collect();
        self.backfills.retain(|id, _| present.contains(id));
        for (id, sink_id, table, upper_id, read_done) in active {
            let Some(sink) = sinks.get(&sink_id) else {
                continue;
            };
            if !read_done {
                self.backfill_page(id, sink, &table, upper_id).await?;
            }
            complete_if_done(&mut self.shared.db(), id);
        }
        Ok(())
    }

    /// Read and store the next page of one backfill.
    async fn backfill_page(
        &mut self,
        id: Uuid,
        sink: &BackfillSink,
        table: &str,
        upper_id: Option<i64>,
    ) -> Result<(), tokio_postgres::Error> {
        let client = self.client.as_ref().expect("connected");
        let user_col = self.config.user_column.clone();
        if !self.backfills.contains_key(&id) {
            let upper = match upper_id {
                Some(u) => u,
                None => max_id(client, table).await?,
            };
            let count: i64 = client
                .query_one(
                    &format!(
                        "select count(*) from {} t where id <= $1::bigint
                           and ($2::text is null or coalesce(to_jsonb(t)->>$3, '') = $2)",
                        quote_table(table)
                    ),
                    &[&upper, &sink.filter_user, &user_col],
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
                    quote_table(table)
                ),
                &[&cursor, &upper, &sink.filter_user, &user_col],
            )
            .await?;
        let Some(store) = self.shared.runtime().store(sink.id) else {
            return Ok(());
        };
        let mut last = cursor;
        for row in &rows {
            last = row.get(0);
            let record: Value = row.get(1);
            store.push(read_message(&self.info, table, record, sink, id));
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

/// Backfill rows done with (delivered, filtered or given up) count as processed.
fn processed(shared: &Shared, msgs: &[Msg]) {
    if msgs.iter().all(|m| m.backfill.is_none()) {
        return;
    }
    let mut db = shared.db();
    for b in msgs.iter().filter_map(|m| m.backfill) {
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

/// Where and how one sink delivers, read fresh before every attempt.
struct Target {
    url: String,
    headers: Vec<(String, String)>,
    batch: bool,
    batch_size: usize,
    max_retry_count: Option<u64>,
}

fn target(db: &Db, sink_id: Uuid) -> Option<Target> {
    let sink = db.sinks.iter().find(|s| s.id == sink_id)?;
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
    Some(Target {
        url,
        headers: merged
            .iter()
            .map(|(k, v)| (k.clone(), as_text(v)))
            .collect(),
        batch: sink.batch,
        batch_size: sink.batch_size.max(1) as usize,
        max_retry_count: sink.max_retry_count,
    })
}

/// The next messages to send: filtered-out ones at the front are dropped (and counted), then
/// up to `n` that pass, in order.
fn next_batch(shared: &Shared, store: &Store, has_filter: bool, n: usize, col: &str) -> Vec<Msg> {
    loop {
        let batch = store.peek(n);
        let keep = batch
            .iter()
            .take_while(|m| passes(has_filter, &m.body, col))
            .count();
        if keep > 0 || batch.is_empty() {
            return batch.into_iter().take(keep).collect();
        }
        let dropped = store.pop(1);
        store
            .filtered
            .fetch_add(dropped.len() as u64, Ordering::Relaxed);
        processed(shared, &dropped);
    }
}

/// One store's delivery loop: in order, with redelivery backoff.
async fn deliver(
    shared: Arc<Shared>,
    store: Arc<Store>,
    config: DeliveryConfig,
    http: reqwest::Client,
) {
    let mut stop = shared.stop.subscribe();
    let mut failures: u32 = 0;
    loop {
        if *stop.borrow() || store.is_dropped() {
            return;
        }
        let view = store.view();
        let target = target(&shared.db(), store.sink_id);
        // Sequin's store produces nothing unless its copy of the sink is active.
        let Some(target) = target.filter(|_| view.status == "active") else {
            tokio::select! {
                _ = store.notify.notified() => {}
                _ = tokio::time::sleep(config.poll_interval) => {}
                _ = stop.wait_for(|v| *v) => return,
            }
            continue;
        };
        let n = if target.batch { target.batch_size } else { 1 };
        let batch = next_batch(&shared, &store, view.has_filter, n, &config.user_column);
        if batch.is_empty() {
            tokio::select! {
                _ = store.notify.notified() => {}
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
        if store.is_dropped() {
            return;
        }
        let give_up = !ok
            && target
                .max_retry_count
                .is_some_and(|max| u64::from(failures) + 1 >= max);
        if ok || give_up {
            let done = store.pop(batch.len());
            let k = done.len() as u64;
            if ok {
                shared
                    .delivery_stats
                    .delivered
                    .fetch_add(k, Ordering::Relaxed);
                store.delivered.fetch_add(k, Ordering::Relaxed);
            } else {
                shared.delivery_stats.failed.fetch_add(1, Ordering::Relaxed);
                store.failed.fetch_add(k, Ordering::Relaxed);
            }
            processed(&shared, &done);
            failures = 0;
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
    fn stored_messages_are_filtered_against_their_own_annotations() {
        let body = |user: Value, annotated: &str| {
            json!({"record": {"id": 1, "user_id": user},
                   "metadata": {"consumer": {"annotations": {"user_id": annotated}}}})
        };
        assert!(passes(true, &body(json!(7), "7"), "user_id"));
        assert!(!passes(true, &body(json!(8), "7"), "user_id"));
        // A delete without REPLICA IDENTITY FULL: the user column is null.
        assert!(!passes(true, &body(Value::Null, "7"), "user_id"));
        assert!(passes(false, &body(Value::Null, "7"), "user_id"));
    }

    #[test]
    fn timestamps_render_like_sequin() {
        let rec = normalize_record(
            json!({"created_at": "2025-04-22T00:26:11.975318+00:00", "message": "hi"}),
        );
        assert_eq!(rec["created_at"], "2025-04-22T00:26:11.975318Z");
        assert_eq!(rec["message"], "hi");
    }
}
