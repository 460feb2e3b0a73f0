//! In-memory model of one Sequin account: HTTP endpoints, sinks, functions, backfills.

use chrono::{DateTime, SecondsFormat, Utc};
use serde_json::{json, Map, Value};
use std::collections::HashMap;
use std::time::{Duration, Instant};
use uuid::Uuid;

/// Delay before a backfill's `rows_initial_count` is known (Sequin's `InitBackfillStatsWorker`).
pub(crate) const BACKFILL_STATS_DELAY_MS: f64 = 100.0;

#[derive(Clone, Debug)]
pub(crate) struct Endpoint {
    pub id: Uuid,
    pub name: String,
    /// Normalized URL, as `URI.to_string` would print it.
    pub url: String,
    pub headers: Map<String, Value>,
    /// Plain values; only ever rendered obfuscated.
    pub encrypted_headers: Map<String, Value>,
}

#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Source {
    pub include_schemas: Option<Vec<String>>,
    pub exclude_schemas: Option<Vec<String>>,
    pub include_tables: Option<Vec<String>>,
    pub exclude_tables: Option<Vec<String>>,
}

#[derive(Clone, Debug)]
pub(crate) struct Sink {
    pub id: Uuid,
    pub name: String,
    pub status: String,
    pub actions: Vec<String>,
    pub source: Source,
    pub tables: Vec<Value>,
    pub endpoint_id: Uuid,
    pub endpoint_path: Option<String>,
    pub batch: bool,
    pub batch_size: u64,
    pub filter: Option<Uuid>,
    pub transform: Option<Uuid>,
    pub routing: Option<Uuid>,
    pub enrichment: Option<Uuid>,
    pub timestamp_format: String,
    pub max_retry_count: Option<u64>,
    pub load_shedding_policy: String,
    pub message_grouping: bool,
    pub annotations: Value,
    /// With delivery on: the change log's position when the sink was created. The sink
    /// receives the changes after it.
    pub start_lsn: Option<i64>,
}

#[derive(Clone, Debug)]
pub(crate) struct Function {
    pub id: Uuid,
    pub name: String,
    pub kind: String,
    pub description: Option<String>,
    pub code: String,
}

#[derive(Clone, Debug)]
pub(crate) struct Backfill {
    pub id: Uuid,
    pub sink_id: Uuid,
    pub table: String,
    pub state: String,
    /// Precise creation time (wall clock); `inserted_at` renders it with seconds precision.
    pub created_wall: DateTime<Utc>,
    pub created: Instant,
    pub updated_at: DateTime<Utc>,
    pub completed_at: Option<DateTime<Utc>>,
    pub canceled_at: Option<DateTime<Utc>>,
    /// Milliseconds spent in `active` before `active_since`.
    pub active_ms: f64,
    /// Start of the current `active` period.
    pub active_since: Option<Instant>,
    pub total_rows: u64,
    pub rows_per_sec: u64,
    /// With delivery on, progress comes from rows really read and delivered instead of the
    /// time model above.
    pub progress: Option<DeliveredProgress>,
}

/// Progress of a backfill whose rows are really delivered (emulator delivery on).
#[derive(Clone, Debug, Default)]
pub(crate) struct DeliveredProgress {
    /// Rows of the table (up to `upper_id`) that pass the sink's filter; `None` until counted.
    pub initial: Option<u64>,
    /// Rows read and queued for delivery.
    pub ingested: u64,
    /// Rows delivered (acknowledged by the endpoint, or given up after `max_retry_count`).
    pub processed: u64,
    /// Every row up to `upper_id` has been read.
    pub read_done: bool,
    /// The table's highest primary key when the backfill was created.
    pub upper_id: Option<i64>,
}

impl Backfill {
    pub fn new(sink_id: Uuid, table: String, state: &str, rows: u64, rate: u64) -> Self {
        let now = Instant::now();
        let wall = Utc::now();
        Backfill {
            id: Uuid::new_v4(),
            sink_id,
            table,
            state: state.to_string(),
            created_wall: wall,
            created: now,
            updated_at: wall,
            completed_at: None,
            canceled_at: None,
            active_ms: 0.0,
            active_since: (state == "active").then_some(now),
            total_rows: rows,
            rows_per_sec: rate,
            progress: None,
        }
    }

    fn wall_at(&self, at: Instant) -> DateTime<Utc> {
        let d = at.saturating_duration_since(self.created);
        self.created_wall + chrono::Duration::from_std(d).unwrap_or_default()
    }

    fn active_elapsed_ms(&self, now: Instant) -> f64 {
        self.active_ms
            + self
                .active_since
                .map(|s| now.saturating_duration_since(s).as_secs_f64() * 1000.0)
                .unwrap_or(0.0)
    }

    /// Milliseconds of active time needed to process every row, if it can ever finish.
    fn needed_ms(&self) -> Option<f64> {
        if self.rows_per_sec == 0 {
            if self.total_rows == 0 {
                return Some(BACKFILL_STATS_DELAY_MS);
            }
            return None;
        }
        Some(BACKFILL_STATS_DELAY_MS + self.total_rows as f64 * 1000.0 / self.rows_per_sec as f64)
    }

    fn processed(&self, now: Instant) -> u64 {
        if let Some(p) = &self.progress {
            return p.processed;
        }
        if self.state == "completed" {
            return self.total_rows;
        }
        let ms = (self.active_elapsed_ms(now) - BACKFILL_STATS_DELAY_MS).max(0.0);
        let rows = (ms * self.rows_per_sec as f64 / 1000.0).floor() as u64;
        rows.min(self.total_rows)
    }

    fn initial_count(&self, now: Instant) -> Option<u64> {
        if let Some(p) = &self.progress {
            return p.initial;
        }
        let since = now.saturating_duration_since(self.created).as_secs_f64() * 1000.0;
        (since >= BACKFILL_STATS_DELAY_MS || self.state == "completed").then_some(self.total_rows)
    }

    /// Lazily advance: an active backfill whose rows are all processed becomes `completed`.
    pub fn tick(&mut self, now: Instant) {
        if self.state != "active" || self.progress.is_some() {
            return;
        }
        let (Some(needed), Some(since)) = (self.needed_ms(), self.active_since) else {
            return;
        };
        if self.active_elapsed_ms(now) >= needed {
            let remaining = (needed - self.active_ms).max(0.0);
            let at = Duration::try_from_secs_f64(remaining / 1000.0)
                .ok()
                .and_then(|d| since.checked_add(d))
                .unwrap_or(now)
                .min(now);
            let wall = self.wall_at(at);
            self.active_ms = needed;
            self.active_since = None;
            self.state = "completed".to_string();
            self.completed_at = Some(wall);
            self.updated_at = wall;
        }
    }

    /// Change state (already validated), keeping progress accounting right.
    pub fn set_state(&mut self, state: &str, now: Instant) {
        if let Some(since) = self.active_since.take() {
            self.active_ms += now.saturating_duration_since(since).as_secs_f64() * 1000.0;
        }
        if state == "active" {
            self.active_since = Some(now);
        }
        let wall = Utc::now();
        match state {
            "completed" => self.completed_at = Some(wall),
            "cancelled" => self.canceled_at = Some(wall),
            _ => {}
        }
        self.state = state.to_string();
        self.updated_at = wall;
    }

    pub fn render(&self, sink_name: &str, now: Instant) -> Value {
        let processed = self.processed(now);
        let ingested = self.progress.as_ref().map_or(processed, |p| p.ingested);
        json!({
            "id": self.id,
            "sink_consumer": sink_name,
            "state": self.state,
            "table": self.table,
            "sort_column": null,
            "rows_initial_count": self.initial_count(now),
            "rows_processed_count": processed,
            "rows_ingested_count": ingested,
            "completed_at": self.completed_at.map(ts_micro),
            "canceled_at": self.canceled_at.map(ts_micro),
            "inserted_at": ts_secs(self.created_wall),
            "updated_at": ts_secs(self.updated_at),
        })
    }
}

pub(crate) fn ts_secs(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Secs, true)
}

pub(crate) fn ts_micro(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// `Sequin.String.obfuscate`: first 3 chars, up to 20 `*`, last char; ≤5 chars become all `*`.
pub(crate) fn obfuscate(s: &str) -> String {
    let chars: Vec<char> = s.chars().collect();
    let n = chars.len();
    if n <= 5 {
        return "*".repeat(n);
    }
    let stars = (n - 4).min(20);
    let mut out: String = chars[..3].iter().collect();
    out.push_str(&"*".repeat(stars));
    out.push(chars[n - 1]);
    out
}

/// The whole account.
pub(crate) struct Db {
    pub database_id: Uuid,
    pub database: String,
    /// Known tables, normalized to `schema.table`.
    pub tables: Vec<String>,
    pub backfill_rows: u64,
    pub backfill_rows_per_sec: u64,
    pub endpoints: Vec<Endpoint>,
    pub sinks: Vec<Sink>,
    pub functions: Vec<Function>,
    pub backfills: Vec<Backfill>,
    /// Webhook delivery is on: backfills report real progress.
    pub delivery: bool,
    /// The account may create and update functions (`function_transforms`).
    pub functions_enabled: bool,
    /// Name → position in `endpoints` / `sinks`, so lookups by name stay O(1) with tens of
    /// thousands of resources (the benchmark's scale). Kept in sync by `reindex_*`.
    pub endpoint_names: HashMap<String, usize>,
    pub sink_names: HashMap<String, usize>,
    /// Endpoint id → position (sinks refer to endpoints by id).
    pub endpoint_ids: HashMap<Uuid, usize>,
    /// Functions updated by the last `config/apply`, for the runtime's restart accounting.
    pub function_updates: Vec<Uuid>,
}

/// `"table"` means `public.table`.
pub(crate) fn normalize_table(t: &str) -> String {
    if t.contains('.') {
        t.to_string()
    } else {
        format!("public.{t}")
    }
}

impl Db {
    pub fn new(database: String, tables: &[String], rows: u64, rate: u64) -> Self {
        Db {
            database_id: Uuid::new_v4(),
            database,
            tables: tables.iter().map(|t| normalize_table(t)).collect(),
            backfill_rows: rows,
            backfill_rows_per_sec: rate,
            endpoints: Vec::new(),
            sinks: Vec::new(),
            functions: Vec::new(),
            backfills: Vec::new(),
            delivery: false,
            functions_enabled: true,
            endpoint_names: HashMap::new(),
            sink_names: HashMap::new(),
            endpoint_ids: HashMap::new(),
            function_updates: Vec::new(),
        }
    }

    /// Rebuild the endpoint indexes (after a removal or rename).
    pub fn reindex_endpoints(&mut self) {
        self.endpoint_names = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.name.clone(), i))
            .collect();
        self.endpoint_ids = self
            .endpoints
            .iter()
            .enumerate()
            .map(|(i, e)| (e.id, i))
            .collect();
    }

    /// The endpoint with this id.
    pub fn endpoint_by_id(&self, id: Uuid) -> Option<&Endpoint> {
        self.endpoint_ids.get(&id).map(|&i| &self.endpoints[i])
    }

    /// Rebuild the sink name index (after a removal or rename).
    pub fn reindex_sinks(&mut self) {
        self.sink_names = self
            .sinks
            .iter()
            .enumerate()
            .map(|(i, s)| (s.name.clone(), i))
            .collect();
    }

    pub fn tick(&mut self) {
        let now = Instant::now();
        for b in &mut self.backfills {
            b.tick(now);
        }
    }

    pub fn render_database(&self, with_password: bool) -> Value {
        let mut v = json!({
            "id": self.database_id,
            "name": self.database,
            "hostname": "localhost",
            "port": 5432,
            "database": self.database,
            "username": "postgres",
            "ssl": false,
            "ipv6": false,
            "use_local_tunnel": false,
            "pool_size": 10,
            "queue_interval": 1000,
            "queue_target": 50,
            "annotations": {},
            "replication_slots": [{
                "publication_name": crate::changelog::PUBLICATION,
                "slot_name": "sequin_slot",
                "status": "active"
            }]
        });
        if with_password {
            // Real Sequin's /api/config/apply answer carries the database password in plain text.
            v["password"] = json!("emulator-secret-password");
        } else {
            v["password"] = json!("********");
        }
        v
    }

    pub fn render_endpoint(&self, e: &Endpoint) -> Value {
        let enc: Map<String, Value> = e
            .encrypted_headers
            .iter()
            .map(|(k, v)| {
                let s = match v {
                    Value::String(s) => s.clone(),
                    other => other.to_string(),
                };
                (k.clone(), Value::String(obfuscate(&s)))
            })
            .collect();
        json!({
            "id": e.id,
            "name": e.name,
            "url": e.url,
            "headers": e.headers,
            "encrypted_headers": enc,
        })
    }

    pub fn function_name(&self, id: Option<Uuid>) -> Value {
        match id.and_then(|id| self.functions.iter().find(|f| f.id == id)) {
            Some(f) => json!(f.name),
            None => json!("none"),
        }
    }

    pub fn render_function(f: &Function) -> Value {
        json!({
            "id": f.id,
            "name": f.name,
            "type": f.kind,
            "description": f.description,
            "code": f.code,
        })
    }

    pub fn render_sink(&self, s: &Sink, with_health: bool) -> Value {
        let now = Instant::now();
        let endpoint_name = self.endpoint_by_id(s.endpoint_id).map(|e| e.name.clone());
        let mut active: Vec<&Backfill> = self
            .backfills
            .iter()
            .filter(|b| b.sink_id == s.id && (b.state == "active" || b.state == "paused"))
            .collect();
        active.sort_by_key(|b| std::cmp::Reverse(b.created));
        let active: Vec<Value> = active.iter().map(|b| b.render(&s.name, now)).collect();
        let mut v = json!({
            "id": s.id,
            "name": s.name,
            "database": self.database,
            "status": s.status,
            "actions": s.actions,
            "source": {
                "include_schemas": s.source.include_schemas,
                "exclude_schemas": s.source.exclude_schemas,
                "include_tables": s.source.include_tables,
                "exclude_tables": s.source.exclude_tables,
            },
            "tables": s.tables,
            "destination": {
                "type": "webhook",
                "http_endpoint": endpoint_name,
                "http_endpoint_path": s.endpoint_path,
                "batch": s.batch,
            },
            "batch_size": s.batch_size,
            "filter": self.function_name(s.filter),
            "transform": self.function_name(s.transform),
            "routing": self.function_name(s.routing),
            "enrichment": self.function_name(s.enrichment),
            "timestamp_format": s.timestamp_format,
            "active_backfills": active,
            "max_retry_count": s.max_retry_count,
            "load_shedding_policy": s.load_shedding_policy,
            "message_grouping": s.message_grouping,
            "annotations": s.annotations,
        });
        if with_health {
            let status = match s.status.as_str() {
                "active" => "healthy",
                _ => "paused",
            };
            v["health"] = json!({
                "name": "Consumer health",
                "status": status,
                "checks": [
                    {"name": "Sink configuration", "status": "healthy"},
                    {"name": "Message filtering", "status": "healthy"},
                    {"name": "Message ingestion", "status": "healthy"},
                    {"name": "Messages pending delivery", "status": "healthy"},
                    {"name": "Message delivery", "status": "healthy"}
                ]
            });
        }
        v
    }

    pub fn render_backfill(&self, b: &Backfill) -> Value {
        let sink_name = self
            .sinks
            .iter()
            .find(|s| s.id == b.sink_id)
            .map(|s| s.name.as_str())
            .unwrap_or("");
        b.render(sink_name, Instant::now())
    }
}
