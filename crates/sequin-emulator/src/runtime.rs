//! Sequin's replication runtime, as far as it shows through webhooks: which sinks the slot
//! routes changes to, what restarts replication, where messages wait, and when the slot stalls.
//! Read from Sequin v0.14.6:
//!
//! - **Routing context.** The slot processor routes each change to the sinks of its message
//!   handler context: the slot's `not_disabled_sink_consumers` (`active` and `paused`) as loaded
//!   when the context was built (`lib/sequin/runtime/message_handler.ex`, `context/1`;
//!   `lib/sequin/replication/postgres_replication_slot.ex`). A change is routed to a sink when
//!   its table is in the sink's source and its action in the sink's `actions`
//!   (`lib/sequin/consumers/consumers.ex`, `matches_message?/2`). The filter function is *not*
//!   part of routing: it runs in the sink's pipeline at delivery
//!   (`lib/sequin/runtime/sink_pipeline.ex`, `filter_message/2`), so every routed change costs a
//!   store write and a filter run per sink (`ingested` here).
//! - **Lifecycle events** (`lib/sequin/runtime/consumer_lifecycle_event_worker.ex`):
//!   sink `create` and `delete` only refresh the context (a new snapshot of the not-disabled
//!   sinks); a sink `update` to any status but `disabled` — a resume, or any field change,
//!   even one that changes nothing, since `Consumers.update_sink_consumer` always enqueues the
//!   event — restarts replication for the whole slot (`RuntimeSupervisor.restart_replication`:
//!   every store and the slot processor restart, and the context is rebuilt). An update *to*
//!   `disabled` neither restarts nor refreshes: the sink stays routed until the next refresh or
//!   restart, and its store keeps the status it started with, so a sink disabled while `active`
//!   keeps delivering what it is routed. An http endpoint `update` restarts the store and
//!   pipeline of each of its sinks (`restart_for_sink_consumer`); stopping a store the slot
//!   processor monitors makes it raise (`lib/sequin/runtime/slot_processor_server.ex`,
//!   `handle_info({:DOWN, ...})`), and its `one_for_all` supervisor restarts the whole slot
//!   pipeline with a fresh context (`lib/sequin/runtime/slot_producer/supervisor.ex`): one
//!   replication restart per endpoint update that has a sink with a store, counted per event
//!   (the other sinks' stores keep running). A function `update` stops and
//!   restarts replication on each slot with a sink using the function; `POST /api/config/apply`
//!   updates every function it names that exists, changed or not (`lib/sequin/yaml_loader.ex`,
//!   `upsert_function/2` → `Consumers.update_function/3`, which always enqueues the event), so
//!   re-applying an identical function restarts replication too.
//! - **Stores.** Each sink's store (`lib/sequin/runtime/slot_message_store.ex`) loads the sink at
//!   start and produces messages only while that copy is `active`
//!   (`lib/sequin/runtime/slot_message_store_state.ex`, `produce_messages/2`): a paused sink
//!   buffers every routed change, other users' included, since the filter has not run. A store
//!   refuses messages past `setting_max_messages` (50,000) or its memory limit (80 % of
//!   `max_memory_mb`, 128 MB by default: 107,374,182 bytes) with `payload_size_limit_exceeded`
//!   (`validate_put_messages/3`). The message handler retries, then fails the batch
//!   (`lib/sequin/runtime/message_handler.ex`, `put_messages/3`), and the reorder buffer retries
//!   that same batch until it fits (`lib/sequin/runtime/slot_producer/reorder_buffer.ex`): the
//!   slot stops advancing and no sink on it receives anything newer.
//!
//! The emulator's simplifications: a refused change is routed to no sink (Sequin may already have
//! put it into the stores it called before the full one); a restart keeps the stores' buffers
//! instead of replaying them from the slot (the outcome is the same: nothing buffered is lost,
//! nothing is ingested twice); message size is the JSON body's length, not the Erlang term size;
//! one partition per store.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};
use serde_json::Value;
use tokio::sync::Notify;
use uuid::Uuid;

use super::changelog::Change;
use super::state::{Db, Sink, Source};

/// Sequin's `@default_setting_max_messages` (`slot_message_store_state.ex`).
pub const DEFAULT_STORE_MAX_MESSAGES: usize = 50_000;
/// `round(Sequin.Size.mb(128) * 0.8)`: a sink's default `max_memory_mb`, as the store applies it
/// (`Consumers.max_memory_bytes_for_consumer/1`).
pub const DEFAULT_STORE_MAX_BYTES: u64 = 107_374_182;

/// Restarts kept in the recent list.
const RECENT: usize = 100;
/// Sink names kept per restart record.
const NAMES_PER_RECORD: usize = 50;

/// When a sink's store refuses new messages.
#[derive(Clone, Copy, Debug)]
pub(crate) struct StoreLimits {
    pub max_messages: usize,
    pub max_bytes: u64,
}

/// A message waiting in a sink's store.
#[derive(Clone, Debug)]
pub(crate) struct Msg {
    pub body: Value,
    pub backfill: Option<Uuid>,
    pub bytes: u64,
}

/// The sink as a store and its pipeline loaded it when they started.
#[derive(Clone, Debug)]
pub(crate) struct StoreView {
    pub name: String,
    pub status: String,
    pub has_filter: bool,
}

impl StoreView {
    fn of(s: &Sink) -> Self {
        StoreView {
            name: s.name.clone(),
            status: s.status.clone(),
            has_filter: s.filter.is_some(),
        }
    }
}

#[derive(Default)]
struct Buffer {
    queue: VecDeque<Msg>,
    bytes: u64,
}

/// One sink's message store, with its counters.
pub(crate) struct Store {
    pub sink_id: Uuid,
    view: Mutex<StoreView>,
    buffer: Mutex<Buffer>,
    /// Woken when messages arrive, the view changes or the store is dropped.
    pub notify: Notify,
    pub ingested: AtomicU64,
    pub delivered: AtomicU64,
    pub filtered: AtomicU64,
    pub failed: AtomicU64,
    dropped: AtomicBool,
}

impl Store {
    fn new(sink: &Sink) -> Arc<Self> {
        Arc::new(Store {
            sink_id: sink.id,
            view: Mutex::new(StoreView::of(sink)),
            buffer: Mutex::new(Buffer::default()),
            notify: Notify::new(),
            ingested: AtomicU64::new(0),
            delivered: AtomicU64::new(0),
            filtered: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            dropped: AtomicBool::new(false),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Buffer> {
        self.buffer.lock().expect("store buffer mutex poisoned")
    }

    pub fn view(&self) -> StoreView {
        self.view.lock().expect("store view mutex poisoned").clone()
    }

    fn restart(&self, sink: &Sink) {
        *self.view.lock().expect("store view mutex poisoned") = StoreView::of(sink);
        self.notify.notify_one();
    }

    /// Messages and bytes waiting.
    pub fn buffered(&self) -> (usize, u64) {
        let b = self.lock();
        (b.queue.len(), b.bytes)
    }

    fn refuses(&self, bytes: u64, limits: StoreLimits) -> Option<String> {
        let b = self.lock();
        if b.bytes + bytes > limits.max_bytes {
            return Some(format!(
                "payload size limit exceeded ({} bytes buffered, limit {})",
                b.bytes, limits.max_bytes
            ));
        }
        if b.queue.len() + 1 > limits.max_messages {
            return Some(format!(
                "message count limit exceeded ({} messages buffered, limit {})",
                b.queue.len(),
                limits.max_messages
            ));
        }
        None
    }

    /// Add a message (backfill batches skip the limit check, as Sequin's table reader does).
    pub fn push(&self, msg: Msg) {
        {
            let mut b = self.lock();
            b.bytes += msg.bytes;
            b.queue.push_back(msg);
        }
        self.notify.notify_one();
    }

    /// Up to `n` messages from the front, left in place.
    pub fn peek(&self, n: usize) -> Vec<Msg> {
        self.lock().queue.iter().take(n).cloned().collect()
    }

    /// Remove up to `n` messages from the front.
    pub fn pop(&self, n: usize) -> Vec<Msg> {
        let mut b = self.lock();
        let n = n.min(b.queue.len());
        let out: Vec<Msg> = b.queue.drain(..n).collect();
        b.bytes -= out.iter().map(|m| m.bytes).sum::<u64>();
        out
    }

    pub fn is_dropped(&self) -> bool {
        self.dropped.load(Ordering::SeqCst)
    }

    fn drop_store(&self) {
        self.dropped.store(true, Ordering::SeqCst);
        let mut b = self.lock();
        b.queue.clear();
        b.bytes = 0;
        drop(b);
        self.notify.notify_one();
    }
}

/// A sink as the routing context holds it.
#[derive(Clone, Debug)]
pub(crate) struct RoutedSink {
    pub id: Uuid,
    pub name: String,
    pub source: Source,
    pub actions: Vec<String>,
    pub annotations: Value,
    /// Changes at or below this log position predate the sink.
    pub start_lsn: i64,
}

impl RoutedSink {
    fn of(s: &Sink) -> Self {
        RoutedSink {
            id: s.id,
            name: s.name.clone(),
            source: s.source.clone(),
            actions: s.actions.clone(),
            annotations: s.annotations.clone(),
            start_lsn: s.start_lsn.unwrap_or(0),
        }
    }

    fn matches(&self, change: &Change) -> bool {
        change.id > self.start_lsn
            && self.actions.contains(&change.action)
            && super::routes::table_in_source(&self.source, &change.table)
    }
}

/// One replication restart, as `GET /_emulator/runtime` lists it.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RestartRecord {
    /// 1 for the first restart of this emulator, and so on.
    pub seq: u64,
    /// `sink_update`, `http_endpoint_update` or `function_update`.
    pub cause: String,
    /// What happened, naming the resource.
    pub reason: String,
    /// Sinks whose change stream restarted: every sink in the rebuilt routing context.
    pub sinks_affected: usize,
    /// Their names, sorted (the first 50).
    pub sinks: Vec<String>,
}

/// One sink's part of the runtime.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SinkRuntime {
    pub id: String,
    pub name: String,
    /// In the routing context: receives the slot's changes.
    pub routed: bool,
    /// Status the sink's store started with (`None`: no store).
    pub store_status: Option<String>,
    /// Changes routed to the sink (each a store write and, at delivery, a filter run).
    pub ingested: u64,
    /// Messages waiting in its store.
    pub buffered: u64,
    pub buffered_bytes: u64,
    /// Messages acknowledged by the endpoint.
    pub delivered: u64,
    /// Messages dropped by the sink's filter at delivery.
    pub filtered: u64,
    /// Messages given up after `max_retry_count` failed attempts.
    pub failed: u64,
}

/// The emulated runtime (`GET /_emulator/runtime`, `EmulatorHandle::runtime`).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct RuntimeReport {
    pub replication_restarts: u64,
    /// The latest restarts, oldest first (at most 100).
    pub recent_restarts: Vec<RestartRecord>,
    /// Names of the sinks in the routing context, sorted.
    pub routing_context: Vec<String>,
    /// Every sink with a store or a place in the routing context, sorted by name.
    pub sinks: Vec<SinkRuntime>,
    /// The slot has stopped advancing: no sink receives new changes.
    pub stalled: bool,
    pub stall_reason: Option<String>,
    pub store_max_messages: usize,
    pub store_max_bytes: u64,
}

impl RuntimeReport {
    /// The sink with this name.
    pub fn sink(&self, name: &str) -> Option<&SinkRuntime> {
        self.sinks.iter().find(|s| s.name == name)
    }
}

/// Which stores a restart restarts.
enum Scope<'a> {
    /// The whole slot supervisor: every store; disabled sinks lose theirs.
    All,
    /// Only these sinks' stores (the rest keep running).
    Only(&'a [Uuid]),
}

pub(crate) struct Runtime {
    limits: StoreLimits,
    routing: HashMap<Uuid, RoutedSink>,
    /// Routed sinks disabled since the context was built.
    lingering: HashSet<Uuid>,
    stores: HashMap<Uuid, Arc<Store>>,
    restarts: u64,
    recent: VecDeque<RestartRecord>,
    stall: Option<String>,
}

fn sink_by_id<'a>(db: &'a Db, id: Uuid, name: Option<&str>) -> Option<&'a Sink> {
    // The name index first: scanning every sink on each create would be quadratic at scale.
    if let Some(&i) = name.and_then(|n| db.sink_names.get(n)) {
        if db.sinks[i].id == id {
            return Some(&db.sinks[i]);
        }
    }
    db.sinks.iter().find(|s| s.id == id)
}

impl Runtime {
    pub fn new(limits: StoreLimits) -> Self {
        Runtime {
            limits,
            routing: HashMap::new(),
            lingering: HashSet::new(),
            stores: HashMap::new(),
            restarts: 0,
            recent: VecDeque::new(),
            stall: None,
        }
    }

    /// `refresh_message_handler_ctx`: the context becomes the not-disabled sinks again. Only
    /// sinks disabled since the last build differ from what the context holds.
    fn refresh(&mut self) {
        for id in self.lingering.drain() {
            if let Some(r) = self.routing.remove(&id) {
                tracing::info!(sink = %r.name, "emulator runtime: disabled sink leaves the routing context (refresh)");
            }
        }
    }

    /// Sink `create`: its store starts, then the context is refreshed.
    pub fn sink_created(&mut self, db: &Db, id: Uuid, name: Option<&str>) {
        let Some(sink) = sink_by_id(db, id, name) else {
            return;
        };
        if let Some(old) = self.stores.insert(id, Store::new(sink)) {
            old.drop_store();
        }
        self.refresh();
        if sink.status != "disabled" {
            self.routing.insert(id, RoutedSink::of(sink));
        }
    }

    /// Sink `update`.
    pub fn sink_updated(&mut self, db: &Db, id: Uuid, name: Option<&str>) {
        let Some(sink) = sink_by_id(db, id, name) else {
            return;
        };
        if sink.status == "disabled" {
            if self.routing.contains_key(&id) {
                self.lingering.insert(id);
                tracing::info!(sink = %sink.name, "emulator runtime: sink disabled; it stays in the routing context until the next refresh or restart");
            }
            return;
        }
        let reason = format!(
            "sink {} updated (status {}): replication restarts for every sink on the slot",
            sink.name, sink.status
        );
        self.restart(db, "sink_update", reason, Scope::All);
    }

    /// Sink `delete`: the context is refreshed and the sink's store stops (its buffer is gone).
    pub fn sink_deleted(&mut self, id: Uuid) {
        self.routing.remove(&id);
        self.lingering.remove(&id);
        self.refresh();
        if let Some(store) = self.stores.remove(&id) {
            store.drop_store();
        }
    }

    /// Http endpoint `update`: the stores of its sinks restart; the slot processor, which
    /// monitors them, goes down with the first and replication restarts.
    pub fn endpoint_updated(&mut self, db: &Db, endpoint_id: Uuid) {
        let sinks: Vec<&Sink> = db
            .sinks
            .iter()
            .filter(|s| s.endpoint_id == endpoint_id)
            .collect();
        let monitored = sinks.iter().any(|s| self.stores.contains_key(&s.id));
        let ids: Vec<Uuid> = sinks.iter().map(|s| s.id).collect();
        if !monitored {
            for s in sinks {
                self.stores.insert(s.id, Store::new(s));
            }
            return;
        }
        let name = db
            .endpoint_by_id(endpoint_id)
            .map(|e| e.name.clone())
            .unwrap_or_default();
        let reason = format!(
            "http endpoint {name} updated: the stores of its {} sink(s) restart, the slot processor monitoring them goes down and the slot pipeline restarts",
            ids.len()
        );
        self.restart(db, "http_endpoint_update", reason, Scope::Only(&ids));
    }

    /// Function `update`: replication restarts on the slot if any sink uses the function.
    pub fn function_updated(&mut self, db: &Db, function_id: Uuid) {
        let users = db
            .sinks
            .iter()
            .filter(|s| {
                [s.filter, s.transform, s.routing, s.enrichment].contains(&Some(function_id))
            })
            .count();
        if users == 0 {
            return;
        }
        let name = db
            .functions
            .iter()
            .find(|f| f.id == function_id)
            .map(|f| f.name.clone())
            .unwrap_or_default();
        let reason = format!(
            "function {name} updated ({users} sink(s) use it): replication stops and restarts"
        );
        self.restart(db, "function_update", reason, Scope::All);
    }

    fn restart(&mut self, db: &Db, cause: &str, reason: String, scope: Scope<'_>) {
        self.lingering.clear();
        self.routing = db
            .sinks
            .iter()
            .filter(|s| s.status != "disabled")
            .map(|s| (s.id, RoutedSink::of(s)))
            .collect();
        match scope {
            Scope::All => {
                let mut stores = HashMap::with_capacity(self.routing.len());
                for s in db.sinks.iter().filter(|s| s.status != "disabled") {
                    let store = match self.stores.remove(&s.id) {
                        Some(store) => {
                            store.restart(s);
                            store
                        }
                        None => Store::new(s),
                    };
                    stores.insert(s.id, store);
                }
                for (_, old) in self.stores.drain() {
                    old.drop_store();
                }
                self.stores = stores;
            }
            Scope::Only(ids) => {
                for s in db.sinks.iter().filter(|s| ids.contains(&s.id)) {
                    match self.stores.get(&s.id) {
                        Some(store) => store.restart(s),
                        None => {
                            self.stores.insert(s.id, Store::new(s));
                        }
                    }
                }
            }
        }
        self.restarts += 1;
        let mut names: Vec<String> = self.routing.values().map(|r| r.name.clone()).collect();
        names.sort();
        let affected = names.len();
        names.truncate(NAMES_PER_RECORD);
        tracing::info!(
            restarts = self.restarts,
            cause,
            sinks_affected = affected,
            "emulator runtime: replication restart: {reason}"
        );
        self.recent.push_back(RestartRecord {
            seq: self.restarts,
            cause: cause.to_string(),
            reason,
            sinks_affected: affected,
            sinks: names,
        });
        while self.recent.len() > RECENT {
            self.recent.pop_front();
        }
    }

    /// Route one change to the sinks of the context, building each sink's message with
    /// `build`. When a store refuses it, no sink gets it and the slot stalls until it fits.
    pub fn route(
        &mut self,
        change: &Change,
        mut build: impl FnMut(&RoutedSink) -> Msg,
    ) -> Result<usize, String> {
        let mut out: Vec<(Arc<Store>, Msg)> = Vec::new();
        for r in self.routing.values().filter(|r| r.matches(change)) {
            let Some(store) = self.stores.get(&r.id) else {
                continue;
            };
            let msg = build(r);
            if let Some(why) = store.refuses(msg.bytes, self.limits) {
                let reason = format!(
                    "the store of sink {} refuses change {} ({why}); the slot stops advancing",
                    r.name, change.id
                );
                if self.stall.as_deref() != Some(reason.as_str()) {
                    tracing::warn!("emulator runtime: slot stalled: {reason}");
                }
                self.stall = Some(reason.clone());
                return Err(reason);
            }
            out.push((store.clone(), msg));
        }
        if self.stall.take().is_some() {
            tracing::info!(change = change.id, "emulator runtime: slot advancing again");
        }
        let n = out.len();
        for (store, msg) in out {
            store.ingested.fetch_add(1, Ordering::Relaxed);
            store.push(msg);
        }
        Ok(n)
    }

    /// The store of this sink, if it has one.
    pub fn store(&self, id: Uuid) -> Option<Arc<Store>> {
        self.stores.get(&id).cloned()
    }

    pub fn stores(&self) -> Vec<Arc<Store>> {
        self.stores.values().cloned().collect()
    }

    pub fn report(&self) -> RuntimeReport {
        let mut routing: Vec<String> = self.routing.values().map(|r| r.name.clone()).collect();
        routing.sort();
        let ids: HashSet<Uuid> = self
            .stores
            .keys()
            .chain(self.routing.keys())
            .copied()
            .collect();
        let mut sinks: Vec<SinkRuntime> = ids
            .into_iter()
            .map(|id| {
                let store = self.stores.get(&id);
                let view = store.map(|s| s.view());
                let (buffered, bytes) = store.map(|s| s.buffered()).unwrap_or((0, 0));
                let count =
                    |f: fn(&Store) -> &AtomicU64| store.map_or(0, |s| f(s).load(Ordering::Relaxed));
                SinkRuntime {
                    id: id.to_string(),
                    name: view
                        .as_ref()
                        .map(|v| v.name.clone())
                        .or_else(|| self.routing.get(&id).map(|r| r.name.clone()))
                        .unwrap_or_default(),
                    routed: self.routing.contains_key(&id),
                    store_status: view.map(|v| v.status),
                    ingested: count(|s| &s.ingested),
                    buffered: buffered as u64,
                    buffered_bytes: bytes,
                    delivered: count(|s| &s.delivered),
                    filtered: count(|s| &s.filtered),
                    failed: count(|s| &s.failed),
                }
            })
            .collect();
        sinks.sort_by(|a, b| a.name.cmp(&b.name));
        RuntimeReport {
            replication_restarts: self.restarts,
            recent_restarts: self.recent.iter().cloned().collect(),
            routing_context: routing,
            sinks,
            stalled: self.stall.is_some(),
            stall_reason: self.stall.clone(),
            store_max_messages: self.limits.max_messages,
            store_max_bytes: self.limits.max_bytes,
        }
    }
}
