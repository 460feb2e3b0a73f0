//! A strict stand-in for the Sequin Management API (v0.14.6), with fault injection.
//!
//! It follows Sequin's source: same routes, status codes and error bodies as real Sequin.
//! Where the emulator guesses, it says so in a comment.
//!
//! Request pipeline (mirrors Phoenix): body parsing (400 on bad JSON) → routing (404) →
//! `accepts ["json"]` (406) → `VerifyApiToken` (401) → `VerifyContentType` (400) → controller.
//! Injected faults run before all of that. Control routes live under `/_emulator/`.
//!
//! Behind the API, [`runtime`] models Sequin's replication runtime (routing context,
//! replication restarts, per-sink stores and the slot stall), and with delivery on,
//! [`changelog`] and [`delivery`] feed it real changes and send real webhooks.

mod changelog;
pub mod cli;
mod delivery;
mod faults;
mod pg;
mod routes;
mod runtime;
mod state;

pub use delivery::DeliveryConfig;
pub use faults::{Faults, InjectedResponse, RouteFaults};
pub use runtime::{
    RestartRecord, RuntimeReport, SinkRuntime, DEFAULT_STORE_MAX_BYTES, DEFAULT_STORE_MAX_MESSAGES,
};

use axum::extract::{Request, State};
use axum::http::{header, HeaderMap, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use serde::{Deserialize, Serialize};
use serde_json::{json, Map, Value};
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{oneshot, watch};

/// Configuration of one emulated Sequin account.
#[derive(Clone, Debug)]
pub struct EmulatorConfig {
    /// The one valid API token.
    pub token: String,
    /// Sequin's name of the source database.
    pub database: String,
    /// Tables known in that database (`schema.table`, or `table` for `public.table`).
    pub tables: Vec<String>,
    /// Initial faults.
    pub faults: Faults,
    /// `rows_initial_count` a backfill discovers.
    pub backfill_rows: u64,
    /// Backfill progress speed, rows per second.
    pub backfill_rows_per_sec: u64,
    /// Deliver webhooks from this source database (off by default). With delivery on,
    /// backfills report the rows really delivered instead of `backfill_rows`.
    pub delivery: Option<DeliveryConfig>,
    /// Whether the account has Sequin's `function_transforms` feature (self-hosted Sequin
    /// does; a Sequin Cloud account may not). Without it, config apply and plan refuse
    /// every function with Sequin's changeset error.
    pub functions_enabled: bool,
    /// A sink's store refuses new messages past this many (Sequin: 50,000); the slot stalls.
    pub store_max_messages: usize,
    /// ... or past this many bytes of messages (Sequin: 80 % of 128 MB).
    pub store_max_bytes: u64,
}

impl Default for EmulatorConfig {
    fn default() -> Self {
        EmulatorConfig {
            token: "emulator-token".to_string(),
            database: "app".to_string(),
            tables: vec!["public.notifications".to_string()],
            faults: Faults::default(),
            backfill_rows: 100,
            backfill_rows_per_sec: 200,
            delivery: None,
            functions_enabled: true,
            store_max_messages: DEFAULT_STORE_MAX_MESSAGES,
            store_max_bytes: DEFAULT_STORE_MAX_BYTES,
        }
    }
}

/// One recorded API call. `status` is 0 while the call has not been answered (e.g. `hang`).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Call {
    pub method: String,
    pub path: String,
    pub operation: String,
    pub status: u16,
    pub body: Option<Value>,
    /// When the call arrived (tests check the pacing of writes with it).
    #[serde(skip)]
    pub at: Option<std::time::Instant>,
}

struct Shared {
    token: String,
    db: Mutex<state::Db>,
    faults: Mutex<Faults>,
    calls: Mutex<Vec<Recorded>>,
    seq: AtomicU64,
    stop: watch::Sender<bool>,
    delivery: Option<DeliveryConfig>,
    /// Connection used by the API routes to read the change log's position and tables'
    /// `max(id)` when delivery is on.
    route_pg: tokio::sync::Mutex<Option<delivery::RouteConn>>,
    delivery_stats: delivery::DeliveryStats,
    /// Taken after `db` when both are needed, never the other way round.
    runtime: Mutex<runtime::Runtime>,
}

impl Shared {
    fn new(config: EmulatorConfig) -> Arc<Self> {
        let (stop, _) = watch::channel(false);
        let mut db = state::Db::new(
            config.database,
            &config.tables,
            config.backfill_rows,
            config.backfill_rows_per_sec,
        );
        db.delivery = config.delivery.is_some();
        db.functions_enabled = config.functions_enabled;
        let limits = runtime::StoreLimits {
            max_messages: config.store_max_messages,
            max_bytes: config.store_max_bytes,
        };
        Arc::new(Shared {
            token: config.token,
            db: Mutex::new(db),
            faults: Mutex::new(config.faults),
            calls: Mutex::new(Vec::new()),
            seq: AtomicU64::new(0),
            stop,
            delivery: config.delivery,
            route_pg: tokio::sync::Mutex::new(None),
            delivery_stats: delivery::DeliveryStats::default(),
            runtime: Mutex::new(runtime::Runtime::new(limits)),
        })
    }

    fn runtime(&self) -> std::sync::MutexGuard<'_, runtime::Runtime> {
        self.runtime
            .lock()
            .expect("emulator runtime mutex poisoned")
    }

    fn db(&self) -> std::sync::MutexGuard<'_, state::Db> {
        self.db.lock().expect("emulator state mutex poisoned")
    }

    fn faults_lock(&self) -> std::sync::MutexGuard<'_, Faults> {
        self.faults.lock().expect("emulator faults mutex poisoned")
    }

    fn calls_lock(&self) -> std::sync::MutexGuard<'_, Vec<Recorded>> {
        self.calls.lock().expect("emulator calls mutex poisoned")
    }

    /// The call log as [`Call`]s (bodies decoded now, not on the request path).
    fn calls(&self) -> Vec<Call> {
        self.calls_lock().iter().map(Recorded::to_call).collect()
    }

    fn state_json(&self) -> Value {
        let mut db = self.db();
        db.tick();
        json!({
            "endpoints": db.endpoints.iter().map(|e| db.render_endpoint(e)).collect::<Vec<_>>(),
            "sinks": db.sinks.iter().map(|s| db.render_sink(s, false)).collect::<Vec<_>>(),
            "functions": db.functions.iter().map(state::Db::render_function).collect::<Vec<_>>(),
            "backfills": db.backfills.iter().map(|b| db.render_backfill(b)).collect::<Vec<_>>(),
        })
    }
}

/// A call as the request path records it: cheap to keep (the body stays the bytes that
/// arrived, shared, not a copy of the parsed document).
struct Recorded {
    seq: u64,
    method: Method,
    path: String,
    operation: &'static str,
    status: u16,
    /// The raw body when it parsed as JSON.
    body: Option<axum::body::Bytes>,
    at: std::time::Instant,
}

impl Recorded {
    fn to_call(&self) -> Call {
        Call {
            method: self.method.to_string(),
            path: self.path.clone(),
            operation: self.operation.to_string(),
            status: self.status,
            body: self
                .body
                .as_ref()
                .and_then(|b| serde_json::from_slice(b).ok()),
            at: Some(self.at),
        }
    }
}

/// Handle to a running emulator. Dropping it does not stop the server.
pub struct EmulatorHandle {
    shared: Arc<Shared>,
    addr: SocketAddr,
    stop_tx: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl EmulatorHandle {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://127.0.0.1:PORT/api`.
    pub fn api_url(&self) -> String {
        let ip = if self.addr.ip().is_unspecified() {
            "127.0.0.1".to_string()
        } else {
            self.addr.ip().to_string()
        };
        let host = if ip.contains(':') {
            format!("[{ip}]")
        } else {
            ip
        };
        format!("http://{}:{}/api", host, self.addr.port())
    }

    pub fn set_faults(&self, faults: Faults) {
        *self.shared.faults_lock() = faults;
    }

    pub fn faults(&self) -> Faults {
        self.shared.faults_lock().clone()
    }

    /// Every API call, in arrival order.
    pub fn calls(&self) -> Vec<Call> {
        self.shared.calls()
    }

    /// How many API calls arrived (without copying the log).
    pub fn call_count(&self) -> usize {
        self.shared.calls_lock().len()
    }

    pub fn clear_calls(&self) {
        self.shared.calls_lock().clear();
    }

    pub fn endpoints(&self) -> Vec<Value> {
        list_of(self.shared.state_json(), "endpoints")
    }

    pub fn sinks(&self) -> Vec<Value> {
        list_of(self.shared.state_json(), "sinks")
    }

    pub fn functions(&self) -> Vec<Value> {
        list_of(self.shared.state_json(), "functions")
    }

    pub fn backfills(&self) -> Vec<Value> {
        list_of(self.shared.state_json(), "backfills")
    }

    /// Webhook POSTs acknowledged (messages) and failed (attempts), when delivery is on.
    pub fn delivery_counts(&self) -> (u64, u64) {
        let s = &self.shared.delivery_stats;
        (
            s.delivered.load(Ordering::Relaxed),
            s.failed.load(Ordering::Relaxed),
        )
    }

    /// The emulated replication runtime: restarts, routing context, per-sink stores, stall.
    pub fn runtime(&self) -> RuntimeReport {
        self.shared.runtime().report()
    }

    /// Stop listening (graceful). Requests stuck in `hang` are released.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.stop_tx.take() {
            let _ = tx.send(());
        }
        let _ = self.shared.stop.send(true);
        if tokio::time::timeout(Duration::from_secs(5), &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}

fn list_of(mut v: Value, key: &str) -> Vec<Value> {
    match v.get_mut(key).map(Value::take) {
        Some(Value::Array(a)) => a,
        _ => Vec::new(),
    }
}

/// Start the emulator on `listener` in a background task.
pub async fn start(config: EmulatorConfig, listener: tokio::net::TcpListener) -> EmulatorHandle {
    if let Some(delivery) = &config.delivery {
        delivery::prepare(delivery, &config.tables).await;
    }
    let shared = Shared::new(config);
    let addr = listener
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)));
    let (stop_tx, stop_rx) = oneshot::channel::<()>();
    let shutdown = async move {
        // A dropped handle must not stop the server.
        if stop_rx.await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let task = tokio::spawn(serve_shared(shared.clone(), listener, shutdown));
    EmulatorHandle {
        shared,
        addr,
        stop_tx: Some(stop_tx),
        task,
    }
}

/// Run until `shutdown` resolves (used by the `userhooks emulator` CLI).
pub async fn serve(
    config: EmulatorConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(delivery) = &config.delivery {
        delivery::prepare(delivery, &config.tables).await;
    }
    serve_shared(Shared::new(config), listener, shutdown).await
}

async fn serve_shared(
    shared: Arc<Shared>,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Some(config) = shared.delivery.clone() {
        tokio::spawn(delivery::run(shared.clone(), config));
    }
    let app = Router::new().fallback(handle).with_state(shared.clone());
    let stop = shared.stop.clone();
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            // Release requests that are hanging on purpose, so the graceful stop completes.
            let _ = stop.send(true);
        })
        .await
}

/// A response before it is turned into HTTP.
#[derive(Debug)]
pub(crate) struct Resp {
    pub status: u16,
    pub body: Value,
    /// Render as an HTML page (Phoenix picks HTML for pre-router errors without a JSON Accept).
    pub html: bool,
    pub retry_after: Option<u64>,
}

impl Resp {
    pub fn json(status: u16, body: Value) -> Self {
        Resp {
            status,
            body,
            html: false,
            retry_after: None,
        }
    }
    pub fn ok(body: Value) -> Self {
        Resp::json(200, body)
    }
    pub fn summary(status: u16, msg: impl Into<String>) -> Self {
        Resp::json(status, json!({"summary": msg.into()}))
    }
    /// Parser (Transforms) error.
    pub fn parser(msg: impl Into<String>) -> Self {
        Resp::json(
            422,
            json!({"summary": msg.into(), "validation_errors": {}, "code": null}),
        )
    }
    /// Changeset error.
    pub fn validation(errors: Value) -> Self {
        Resp::json(
            422,
            json!({"summary": "Validation failed", "validation_errors": errors}),
        )
    }
    pub fn not_found(entity: &str) -> Self {
        Resp::summary(
            404,
            format!("Not found: No `{entity}` found matching the provided ID or name"),
        )
    }
    pub fn detail(status: u16, detail: &str) -> Self {
        Resp::json(status, json!({"errors": {"detail": detail}}))
    }
    pub fn crash() -> Self {
        Resp::detail(500, "Internal Server Error")
    }

    fn into_http(self) -> Response {
        let status = StatusCode::from_u16(self.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let mut resp = if self.html {
            let text = self
                .body
                .pointer("/errors/detail")
                .and_then(Value::as_str)
                .unwrap_or("Error")
                .to_string();
            let page = format!(
                "<!DOCTYPE html>\n<html><head><title>{text}</title></head><body><h1>{text}</h1></body></html>\n"
            );
            (
                status,
                [(header::CONTENT_TYPE, "text/html; charset=utf-8")],
                page,
            )
                .into_response()
        } else {
            (
                status,
                [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
                // to_vec, not to_string: Display goes through fmt::Write, which is slower here.
                serde_json::to_vec(&self.body).unwrap_or_default(),
            )
                .into_response()
        };
        if let Some(n) = self.retry_after {
            if let Ok(v) = header::HeaderValue::from_str(&n.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        resp
    }
}

const TOKEN_INSTRUCTIONS: &str = "API tokens are generated in the Sequin console (console.sequin.io) and should be included in the Authorization header of your request. For example:\n\nAuthorization: Bearer <your-api-token>\n";

fn unauthorized_invalid() -> Resp {
    Resp::summary(401, "The API token you provided is invalid or has expired. Your token may have been revoked or deleted in the Sequin console.\n")
}

fn check_auth(shared: &Shared, headers: &HeaderMap) -> Result<(), Resp> {
    let values: Vec<_> = headers.get_all(header::AUTHORIZATION).iter().collect();
    match values.as_slice() {
        [] => Err(Resp::summary(
            401,
            format!("Please provide a valid API token in the Authorization header.\n\n{TOKEN_INSTRUCTIONS}\n"),
        )),
        [one] => {
            let v = one.to_str().unwrap_or("");
            match v.strip_prefix("Bearer ") {
                Some(token) if token == shared.token => Ok(()),
                Some(_) => Err(unauthorized_invalid()),
                None => Err(Resp::summary(
                    401,
                    format!("Please provide a valid API token in the Authorization header. Ensure your Authorization value is prefixed with \"Bearer\".\n\n{TOKEN_INSTRUCTIONS}\n"),
                )),
            }
        }
        [_, _] => Err(Resp::summary(
            401,
            format!("Please provide exactly one Authorization header in your request.\n\n{TOKEN_INSTRUCTIONS}\n"),
        )),
        // Three or more headers match no clause of VerifyApiToken's `else`: a crash.
        _ => Err(Resp::crash()),
    }
}

fn media_types(headers: &HeaderMap, name: header::HeaderName) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|part| {
            part.split(';')
                .next()
                .unwrap_or("")
                .trim()
                .to_ascii_lowercase()
        })
        .filter(|s| !s.is_empty())
        .collect()
}

fn is_json_content_type(headers: &HeaderMap) -> bool {
    let types = media_types(headers, header::CONTENT_TYPE);
    types.len() == 1 && types[0] == "application/json"
}

/// `plug :accepts, ["json"]`: no Accept header, `*/*`, `application/*` or `application/json`.
fn accepts_json(headers: &HeaderMap) -> bool {
    let types = media_types(headers, header::ACCEPT);
    types.is_empty()
        || types
            .iter()
            .any(|t| t == "*/*" || t == "application/*" || t == "application/json")
}

/// Pre-router errors are rendered as JSON only when the client asked for JSON explicitly.
fn prefers_json(headers: &HeaderMap) -> bool {
    media_types(headers, header::ACCEPT)
        .iter()
        .any(|t| t == "application/json")
}

fn percent_decode(s: &str) -> String {
    fn hex(b: u8) -> Option<u8> {
        (b as char).to_digit(16).map(|d| d as u8)
    }
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2])) {
                out.push(h * 16 + l);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

async fn handle(State(shared): State<Arc<Shared>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let axum::http::request::Parts {
        method,
        uri,
        headers,
        ..
    } = parts;
    let bytes = match axum::body::to_bytes(body, 16 * 1024 * 1024).await {
        Ok(b) => b,
        Err(_) => return Resp::summary(413, "Request body too large").into_http(),
    };
    let path = uri.path().to_string();
    if path == "/_emulator" || path.starts_with("/_emulator/") {
        return control(&shared, &method, &path, &bytes).into_http();
    }

    let segs: Vec<String> = path
        .split('/')
        .filter(|s| !s.is_empty())
        .map(percent_decode)
        .collect();
    let route_method = if method == Method::HEAD {
        Method::GET
    } else {
        method.clone()
    };
    let route = routes::match_route(&route_method, &segs);
    let operation = route.as_ref().map(|r| r.operation()).unwrap_or("other");

    // Plug.Parsers: JSON bodies are parsed only with a JSON content type.
    let parsed: Result<Option<Value>, ()> = if is_json_content_type(&headers) && !bytes.is_empty() {
        serde_json::from_slice::<Value>(&bytes)
            .map(Some)
            .map_err(|_| ())
    } else {
        Ok(None)
    };

    let seq = shared.seq.fetch_add(1, Ordering::SeqCst);
    // A copy, not `bytes.clone()`: the request's bytes share hyper's whole read buffer,
    // and keeping them pinned that buffer for good (the bench's emulator grew to 215 MB).
    let recorded_body =
        matches!(parsed, Ok(Some(_))).then(|| axum::body::Bytes::copy_from_slice(&bytes));
    shared.calls_lock().push(Recorded {
        seq,
        method: method.clone(),
        path: path.clone(),
        operation,
        status: 0,
        body: recorded_body,
        at: std::time::Instant::now(),
    });

    let resp = run(
        &shared,
        operation,
        &route_method,
        route,
        &uri,
        &headers,
        parsed,
    )
    .await;

    // Search from the end: the call being answered is almost always among the newest.
    if let Some(c) = shared.calls_lock().iter_mut().rev().find(|c| c.seq == seq) {
        c.status = resp.status;
    }
    resp.into_http()
}

#[allow(clippy::too_many_arguments)]
async fn run(
    shared: &Shared,
    operation: &str,
    method: &Method,
    route: Option<routes::Route>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    parsed: Result<Option<Value>, ()>,
) -> Resp {
    // --- injected faults ---
    let (force_401, rf) = {
        let faults = shared.faults_lock();
        (faults.force_401, faults.for_operation(operation).clone())
    };
    if force_401 {
        return unauthorized_invalid();
    }
    if rf.hang {
        let mut stop = shared.stop.subscribe();
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_secs(3600)) => {}
            _ = stop.wait_for(|v| *v) => {}
        }
        return Resp::summary(503, "Service unavailable (injected hang ended)");
    }
    if rf.latency_ms > 0 {
        tokio::time::sleep(Duration::from_millis(rf.latency_ms)).await;
    }
    let fail_next = {
        let mut faults = shared.faults_lock();
        let rf = faults.for_operation_mut(operation);
        (!rf.fail_next.is_empty()).then(|| rf.fail_next.remove(0))
    };
    if let Some(inj) = fail_next {
        return Resp::json(inj.status, inj.body);
    }
    if let Some(n) = rf.rate_limit_retry_after {
        let mut r = Resp::summary(429, "Too many requests (injected)");
        r.retry_after = Some(n);
        return r;
    }
    if rf.error_rate > 0.0 && rand::random::<f64>() < rf.error_rate {
        return Resp::summary(503, "Service unavailable (injected)");
    }
    // Consumed only by a request that actually reaches the operation.
    let fail_after = {
        let mut faults = shared.faults_lock();
        let rf = faults.for_operation_mut(operation);
        (!rf.fail_after_next.is_empty()).then(|| rf.fail_after_next.remove(0))
    };

    // With delivery on, a new sink starts after the changes made so far, and a new backfill
    // ends with the rows that exist now: read where they are before the state changes.
    let before = match (operation, shared.delivery.is_some()) {
        ("create_sink", true) => Before::LogPosition(delivery::log_position(shared).await),
        ("create_backfill", true) => Before::TableEnds(delivery::table_max_ids(shared).await),
        _ => Before::Nothing,
    };
    let resp = pipeline(shared, method, route, uri, headers, parsed, before);
    match fail_after {
        Some(inj) => Resp::json(inj.status, inj.body),
        None => resp,
    }
}

/// What delivery read from the source database before an operation.
enum Before {
    Nothing,
    LogPosition(Option<i64>),
    TableEnds(Option<std::collections::BTreeMap<String, i64>>),
}

fn pipeline(
    shared: &Shared,
    method: &Method,
    route: Option<routes::Route>,
    uri: &axum::http::Uri,
    headers: &HeaderMap,
    parsed: Result<Option<Value>, ()>,
    before: Before,
) -> Resp {
    let html = !prefers_json(headers);
    let body = match parsed {
        Ok(b) => b,
        Err(()) => {
            let mut r = Resp::detail(400, "Bad Request");
            r.html = html;
            return r;
        }
    };
    let Some(route) = route else {
        let mut r = Resp::detail(404, "Not Found");
        r.html = html;
        return r;
    };
    if !accepts_json(headers) {
        // Phoenix.NotAcceptableError; the client refused JSON, so the page is HTML.
        let mut r = Resp::detail(406, "Not Acceptable");
        r.html = true;
        return r;
    }
    if let Err(r) = check_auth(shared, headers) {
        return r;
    }
    let writes = *method == Method::POST || *method == Method::PUT || *method == Method::PATCH;
    if writes && !is_json_content_type(headers) {
        return Resp::summary(400, "Content-Type: application/json is required");
    }
    // Phoenix params: query string merged with the body (body wins).
    let mut params = Map::new();
    if let Some(q) = uri.query() {
        for (k, v) in url::form_urlencoded::parse(q.as_bytes()) {
            params.insert(k.into_owned(), Value::String(v.into_owned()));
        }
    }
    match body {
        Some(Value::Object(m)) => params.extend(m),
        Some(other) => {
            params.insert("_json".to_string(), other);
        }
        None => {}
    }
    let mut db = shared.db();
    db.tick();
    let operation = route.operation();
    let resp = routes::dispatch(&mut db, route, params);
    let function_updates = std::mem::take(&mut db.function_updates);
    if resp.status != 200 {
        return resp;
    }
    let id = resp.body.get("id").and_then(Value::as_str);
    let id = id.and_then(|s| uuid::Uuid::parse_str(s).ok());
    match before {
        Before::LogPosition(Some(pos)) => {
            if let Some(s) = db.sinks.iter_mut().rev().find(|s| Some(s.id) == id) {
                s.start_lsn = Some(pos);
            }
        }
        Before::TableEnds(Some(ends)) => {
            if let Some(b) = db.backfills.iter_mut().find(|b| Some(b.id) == id) {
                let upper = ends.get(&b.table).copied();
                if let Some(p) = b.progress.as_mut() {
                    p.upper_id = upper;
                }
            }
        }
        _ => {}
    }
    lifecycle(shared, &db, operation, id, &resp.body, &function_updates);
    resp
}

/// The lifecycle event Sequin's API enqueues for a successful write, applied to the runtime.
// Sequin: lib/sequin/consumers/consumers.ex (every create/update/delete enqueues one) and
// lib/sequin/runtime/consumer_lifecycle_event_worker.ex (what each one does).
fn lifecycle(
    shared: &Shared,
    db: &state::Db,
    operation: &str,
    id: Option<uuid::Uuid>,
    body: &Value,
    function_updates: &[uuid::Uuid],
) {
    let name = body.get("name").and_then(Value::as_str);
    match (operation, id) {
        ("create_sink", Some(id)) => shared.runtime().sink_created(db, id, name),
        ("update_sink", Some(id)) => shared.runtime().sink_updated(db, id, name),
        ("delete_sink", Some(id)) => shared.runtime().sink_deleted(id),
        ("update_endpoint", Some(id)) => shared.runtime().endpoint_updated(db, id),
        ("config_apply", _) => {
            let mut rt = shared.runtime();
            for f in function_updates {
                rt.function_updated(db, *f);
            }
        }
        _ => {}
    }
}

fn control(shared: &Shared, method: &Method, path: &str, bytes: &[u8]) -> Resp {
    let path = path.trim_end_matches('/');
    match (method.as_str(), path) {
        ("GET", "/_emulator/faults") => Resp::ok(json!(shared.faults_lock().clone())),
        ("PUT", "/_emulator/faults") => match Faults::parse(bytes) {
            Ok(f) => {
                *shared.faults_lock() = f.clone();
                Resp::ok(json!(f))
            }
            Err(e) => Resp::summary(400, format!("invalid faults: {e}")),
        },
        ("GET", "/_emulator/calls") => Resp::ok(json!(shared.calls())),
        ("DELETE", "/_emulator/calls") => {
            shared.calls_lock().clear();
            Resp::ok(json!({"cleared": true}))
        }
        ("GET", "/_emulator/state") => Resp::ok(shared.state_json()),
        ("GET", "/_emulator/runtime") => Resp::ok(json!(shared.runtime().report())),
        _ => Resp::detail(404, "Not Found"),
    }
}
