//! Client of Sequin's Management API (v0.14.6; what the worker relies on is in
//! docs/architecture.md, section 5).
//!
//! Every call sends `Authorization: Bearer`, `Accept: application/json` and, on writes,
//! `Content-Type: application/json`; errors are parsed in both of Sequin's shapes and
//! classified once into retryable / permanent / auth.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, StatusCode};
use serde_json::{json, Value};

use crate::config::Secret;
use crate::metrics::Metrics;
use crate::retry::RetryPolicy;

mod connections;
mod export;
mod pacing;

use self::connections::{Connections, IDLE_TIMEOUT};
pub use self::export::{ConfigExport, ExportedFunction};
pub use self::pacing::{CallKind, Pacer, WriteRate, DEFAULT_RESTART_SPACING};

/// Sequin's refusal of functions on an account without the `function_transforms` feature
/// (Sequin Cloud; self-hosted builds have it). Each function type words it a little
/// differently ("Filter functions are not enabled. ..."); this part is common to all.
// Sequin: lib/sequin/consumers/filter_function.ex
const FUNCTIONS_DISABLED: &str = "are not enabled. Talk to the Sequin team to enable them.";

/// How an error should be handled: decided here, once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Try again later (transport, timeout, 408, 429, 5xx).
    Retryable,
    /// Retrying cannot help (other 4xx): fail the request with Sequin's reason.
    Permanent,
    /// Sequin rejects our token (401/403): stop claiming until it works again.
    Auth,
}

#[derive(Debug, thiserror::Error)]
pub enum SequinError {
    #[error("Sequin rejected the API token (HTTP {status}): {summary}")]
    Auth { status: u16, summary: String },
    #[error("Sequin refused the request (HTTP {status}): {summary}{}", format_details(.details))]
    Rejected {
        status: u16,
        summary: String,
        details: Option<Value>,
    },
    #[error("Sequin is unavailable (HTTP {status}): {summary}")]
    Unavailable {
        status: u16,
        summary: String,
        retry_after: Option<Duration>,
    },
    #[error("Sequin did not answer within {0:?}")]
    Timeout(Duration),
    #[error("could not reach Sequin: {0}")]
    Transport(String),
    #[error("unexpected answer from Sequin: {0}")]
    Protocol(String),
}

fn format_details(details: &Option<Value>) -> String {
    match details {
        Some(Value::Object(map)) if !map.is_empty() => format!(" {}", Value::Object(map.clone())),
        _ => String::new(),
    }
}

impl SequinError {
    pub fn class(&self) -> ErrorClass {
        match self {
            SequinError::Auth { .. } => ErrorClass::Auth,
            SequinError::Rejected { .. } => ErrorClass::Permanent,
            SequinError::Unavailable { .. }
            | SequinError::Timeout(_)
            | SequinError::Transport(_)
            | SequinError::Protocol(_) => ErrorClass::Retryable,
        }
    }

    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            SequinError::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    pub fn status(&self) -> Option<u16> {
        match self {
            SequinError::Auth { status, .. }
            | SequinError::Rejected { status, .. }
            | SequinError::Unavailable { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// Sequin's one-line summary (without validation details).
    pub fn summary(&self) -> String {
        match self {
            SequinError::Auth { summary, .. }
            | SequinError::Rejected { summary, .. }
            | SequinError::Unavailable { summary, .. } => summary.clone(),
            other => other.to_string(),
        }
    }

    pub fn details(&self) -> Option<&Value> {
        match self {
            SequinError::Rejected { details, .. } => details.as_ref(),
            _ => None,
        }
    }

    /// 422 with `validation_errors.name: ["has already been taken"]`: lost a create race or
    /// an earlier attempt already created it (there is no 409 in Sequin).
    pub fn is_name_taken(&self) -> bool {
        match self {
            SequinError::Rejected {
                status: 422,
                details: Some(details),
                ..
            } => details
                .get("name")
                .and_then(Value::as_array)
                .is_some_and(|msgs| {
                    msgs.iter()
                        .any(|m| m.as_str().is_some_and(|s| s.contains("already been taken")))
                }),
            _ => false,
        }
    }

    pub fn is_not_found(&self) -> bool {
        matches!(self, SequinError::Rejected { status: 404, .. })
    }

    /// `config/apply` or `config/plan` refused a function because functions are not enabled
    /// for the account: nothing userhooks can fix by retrying.
    pub fn is_functions_disabled(&self) -> bool {
        matches!(self, SequinError::Rejected { status: 400, summary, .. } if summary.contains(FUNCTIONS_DISABLED))
    }
}

/// Parse an error body: `{"summary", "validation_errors"?}` first, then Phoenix's
/// `{"errors": {"detail"}}`, then the raw text (bounded).
fn parse_error_body(body: &str) -> (String, Option<Value>) {
    if let Ok(value) = serde_json::from_str::<Value>(body) {
        if let Some(summary) = value.get("summary").and_then(Value::as_str) {
            let details = value
                .get("validation_errors")
                .filter(|v| v.as_object().is_some_and(|m| !m.is_empty()))
                .cloned();
            return (summary.trim().to_string(), details);
        }
        if let Some(detail) = value.pointer("/errors/detail").and_then(Value::as_str) {
            return (detail.to_string(), None);
        }
    }
    let text: String = body.chars().take(300).collect();
    (
        if text.trim().is_empty() {
            "(empty body)".to_string()
        } else {
            text
        },
        None,
    )
}

/// A created or fetched Sequin resource: its id, and the response it came in.
///
/// The subscribe path needs only the id, so only the id is decoded eagerly; building a full
/// `Value` of every sink response was a visible share of the worker's CPU. The whole body is
/// decoded when asked for ([`Resource::body`]).
#[derive(Clone, Debug)]
pub struct Resource {
    pub id: String,
    text: String,
}

impl Resource {
    fn from_text(text: String) -> Result<Self, SequinError> {
        #[derive(serde::Deserialize)]
        struct IdOnly {
            id: Option<String>,
        }
        let id = serde_json::from_str::<IdOnly>(&text)
            .ok()
            .and_then(|parsed| parsed.id)
            .ok_or_else(|| SequinError::Protocol("response has no `id`".to_string()))?;
        Ok(Resource { id, text })
    }

    /// The whole response as JSON.
    pub fn body(&self) -> Value {
        decode(&self.text)
    }

    pub fn str_field(&self, key: &str) -> Option<String> {
        self.body()
            .get(key)
            .and_then(Value::as_str)
            .map(String::from)
    }
}

/// Largest response body read; anything bigger is a broken or hostile server, not Sequin.
const MAX_RESPONSE_BYTES: usize = 64 << 20;

/// Trusted roots for `https://` bases: [`crate::tls::system_roots`]. Built once per process.
fn tls_config() -> Arc<rustls::ClientConfig> {
    static CONFIG: OnceLock<Arc<rustls::ClientConfig>> = OnceLock::new();
    CONFIG
        .get_or_init(|| {
            let config = rustls::ClientConfig::builder_with_provider(crate::tls::provider())
                .with_safe_default_protocol_versions()
                .map(|builder| {
                    builder
                        .with_root_certificates(crate::tls::system_roots())
                        .with_no_client_auth()
                })
                .expect("ring supports the default TLS versions");
            Arc::new(config)
        })
        .clone()
}

#[derive(Clone)]
pub struct SequinClient {
    /// Where calls go, or why the configured base URL cannot be used (reported on each call).
    origin: Result<Arc<Origin>, Arc<str>>,
    /// `Bearer <token>`, built once; `None` if the token cannot be sent in a header.
    authorization: Option<HeaderValue>,
    metrics: Arc<Metrics>,
    timeout: Duration,
    /// Timeout of the calls that list every resource of the account (see [`LIST_TIMEOUT`]).
    list_timeout: Duration,
    /// In-process retries of one call before giving up to the caller.
    in_process_retries: u32,
    /// Shared by every clone of this client: build one per process (the worker does).
    pacer: Pacer,
}

/// Default timeout of `GET /api/sinks` and `GET /api/destinations/http_endpoints`: Sequin
/// looks up the health of every sink while rendering the list, so with thousands of sinks
/// it takes far longer than a call by name.
pub const LIST_TIMEOUT: Duration = Duration::from_secs(300);

/// The configured base URL, checked and taken apart once, so a call only appends its path.
///
/// Not reqwest, nor hyper-util's pooled client: see `connections.rs` for why the idle
/// connections are kept by us.
struct Origin {
    connections: Connections,
    /// The `Host` header: the URL's host, and its port unless it is the scheme's default.
    host: HeaderValue,
    /// The base URL's path without the trailing slash (`/api`); a call appends its own.
    path: String,
}

impl Origin {
    fn new(base: &str, connect_timeout: Duration) -> Result<Self, String> {
        let url = url::Url::parse(base).map_err(|e| format!("SEQUIN_API_URL {base:?}: {e}"))?;
        let tls = match url.scheme() {
            "http" => None,
            "https" => Some(tls_config()),
            _ => return Err(format!("SEQUIN_API_URL {base:?} is not an http(s) URL")),
        };
        let (Some(host), Some(port)) = (url.host_str(), url.port_or_known_default()) else {
            return Err(format!("SEQUIN_API_URL {base:?} is not an http(s) URL"));
        };
        if url.query().is_some() || url.fragment().is_some() {
            return Err(format!(
                "SEQUIN_API_URL {base:?} must not have a query or fragment"
            ));
        }
        let connections = Connections::new(
            host,
            port,
            tls,
            connect_timeout,
            IDLE_TIMEOUT,
            MAX_RESPONSE_BYTES,
        )
        .map_err(|e| format!("SEQUIN_API_URL: {e}"))?;
        let host = match url.port() {
            Some(port) => format!("{host}:{port}"),
            None => host.to_string(),
        };
        Ok(Origin {
            connections,
            // A parsed URL's host is always a valid header value.
            host: HeaderValue::from_str(&host)
                .map_err(|_| format!("SEQUIN_API_URL {base:?}: bad host {host:?}"))?,
            path: url.path().trim_end_matches('/').to_string(),
        })
    }
}

impl SequinClient {
    pub fn new(base: &str, token: Secret, timeout: Duration, metrics: Arc<Metrics>) -> Self {
        // The same rule as any HTTP library: visible ASCII, spaces and tabs only.
        let authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose()))
            .ok()
            .map(|mut value| {
                value.set_sensitive(true);
                value
            });
        SequinClient {
            origin: Origin::new(base, timeout.min(Duration::from_secs(5)))
                .map(Arc::new)
                .map_err(Arc::from),
            authorization,
            metrics,
            timeout,
            list_timeout: LIST_TIMEOUT.max(timeout),
            in_process_retries: 2,
            pacer: Pacer::default(),
        }
    }

    /// Pace writes with `pacer` instead of the default budget ([`WriteRate::DEFAULT`]).
    /// Clones share it; build one per process.
    pub fn with_pacer(mut self, pacer: Pacer) -> Self {
        self.pacer = pacer;
        self
    }

    /// Disable in-process retries (tests, probes).
    pub fn with_in_process_retries(mut self, retries: u32) -> Self {
        self.in_process_retries = retries;
        self
    }

    /// The request: origin-form target under the base path, `Host`, the token, and on
    /// writes a JSON body (hyper adds its `Content-Length`).
    fn request(
        &self,
        origin: &Origin,
        method: &Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Request<Bytes>, SequinError> {
        // Our paths are fixed text and percent-encoded names; anything that could break
        // the request line is refused, not sent.
        if path.bytes().any(|b| b <= b' ' || b == 0x7f) {
            return Err(SequinError::Transport(format!("bad request path {path:?}")));
        }
        let Some(authorization) = &self.authorization else {
            return Err(SequinError::Transport(
                "the API token has characters an HTTP header cannot carry".to_string(),
            ));
        };
        let target = format!("{}{path}", origin.path);
        let bad_path = |_| SequinError::Transport(format!("bad request path {path:?}"));
        let uri = http::Uri::try_from(target).map_err(bad_path)?;
        let mut request = Request::new(Bytes::new());
        *request.method_mut() = method.clone();
        *request.uri_mut() = uri;
        let headers = request.headers_mut();
        headers.insert(header::HOST, origin.host.clone());
        headers.insert(header::ACCEPT, HeaderValue::from_static("application/json"));
        headers.insert(header::AUTHORIZATION, authorization.clone());
        // Sequin requires the JSON content type on every write, even with an empty body.
        if method != Method::GET && method != Method::DELETE {
            let body = serde_json::to_vec(body.unwrap_or(&json!({}))).unwrap_or_default();
            headers.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            );
            *request.body_mut() = Bytes::from(body);
        }
        Ok(request)
    }

    /// Send one request and read the whole answer.
    async fn exchange(
        &self,
        origin: &Origin,
        request: Request<Bytes>,
    ) -> Result<(StatusCode, Option<Duration>, String), SequinError> {
        let answer = origin
            .connections
            .exchange(request)
            .await
            .map_err(|err| SequinError::Transport(err.to_string()))?;
        let text = String::from_utf8(answer.body)
            .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
        Ok((answer.status, answer.retry_after, text))
    }

    /// One HTTP exchange, paced, measured and classified.
    async fn send_once(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, SequinError> {
        let kind = call_kind(operation, &method, body);
        if kind != CallKind::Read {
            let waited = self.pacer.wait(kind).await;
            self.metrics
                .sequin_write_wait
                .with_label_values(&[kind.label()])
                .observe(waited.as_secs_f64());
        }
        let timeout = if operation_lists(&method, path) {
            self.list_timeout
        } else {
            self.timeout
        };
        let started = Instant::now();
        // A request that cannot be built (bad base URL) is counted as an `error` like a
        // transport failure, not skipped by the metrics.
        let request = match &self.origin {
            Ok(origin) => self
                .request(origin, &method, path, body)
                .map(|request| (origin, request)),
            Err(reason) => Err(SequinError::Transport(reason.to_string())),
        };
        let exchanged = match request {
            Ok((origin, request)) => {
                tokio::time::timeout(timeout, self.exchange(origin, request)).await
            }
            Err(err) => Ok(Err(err)),
        };
        let result = match exchanged {
            Err(_elapsed) => Err(SequinError::Timeout(timeout)),
            Ok(Err(err)) => Err(err),
            Ok(Ok((status, retry_after, text))) => {
                self.metrics
                    .sequin_requests_total
                    .with_label_values(&[operation, status.as_str()])
                    .inc();
                classify(status, text, retry_after)
            }
        };
        self.metrics
            .sequin_request_duration
            .with_label_values(&[operation])
            .observe(started.elapsed().as_secs_f64());
        match &result {
            Err(SequinError::Timeout(_)) => self
                .metrics
                .sequin_requests_total
                .with_label_values(&[operation, "timeout"])
                .inc(),
            Err(SequinError::Transport(_)) => self
                .metrics
                .sequin_requests_total
                .with_label_values(&[operation, "error"])
                .inc(),
            _ => {}
        }
        result
    }

    /// [`Self::send`], the response decoded as JSON.
    async fn send_json(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, SequinError> {
        Ok(decode(&self.send(operation, method, path, body).await?))
    }

    /// `send_once` with a few quick in-process retries for retryable errors. On success,
    /// the response body, checked to be JSON.
    async fn send(
        &self,
        operation: &'static str,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<String, SequinError> {
        let mut retry = 0;
        loop {
            match self.send_once(operation, method.clone(), path, body).await {
                Err(err)
                    if err.class() == ErrorClass::Retryable && retry < self.in_process_retries =>
                {
                    let delay = RetryPolicy::IN_PROCESS.delay_now(retry, err.retry_after());
                    tracing::debug!(operation, retry, ?delay, error = %err, "retrying Sequin call");
                    tokio::time::sleep(delay).await;
                    retry += 1;
                }
                other => return other,
            }
        }
    }

    // --- HTTP endpoints -------------------------------------------------------------------

    pub async fn create_endpoint(&self, body: &Value) -> Result<Resource, SequinError> {
        let value = self
            .send(
                "create_endpoint",
                Method::POST,
                "/destinations/http_endpoints",
                Some(body),
            )
            .await?;
        Resource::from_text(value)
    }

    /// GET by name; `None` when it does not exist.
    pub async fn get_endpoint(&self, name: &str) -> Result<Option<Resource>, SequinError> {
        let path = format!("/destinations/http_endpoints/{}", segment(name));
        optional(self.send("get_endpoint", Method::GET, &path, None).await)
    }

    pub async fn update_endpoint(&self, name: &str, body: &Value) -> Result<Resource, SequinError> {
        let path = format!("/destinations/http_endpoints/{}", segment(name));
        let value = self
            .send("update_endpoint", Method::PATCH, &path, Some(body))
            .await?;
        Resource::from_text(value)
    }

    /// DELETE by name; `false` when it was already gone.
    pub async fn delete_endpoint(&self, name: &str) -> Result<bool, SequinError> {
        let path = format!("/destinations/http_endpoints/{}", segment(name));
        Ok(optional(
            self.send("delete_endpoint", Method::DELETE, &path, None)
                .await,
        )?
        .is_some())
    }

    // --- Sinks ----------------------------------------------------------------------------

    pub async fn create_sink(&self, body: &Value) -> Result<Resource, SequinError> {
        let value = self
            .send("create_sink", Method::POST, "/sinks", Some(body))
            .await?;
        Resource::from_text(value)
    }

    pub async fn get_sink(&self, name: &str) -> Result<Option<Resource>, SequinError> {
        let path = format!("/sinks/{}", segment(name));
        optional(self.send("get_sink", Method::GET, &path, None).await)
    }

    pub async fn update_sink(&self, name: &str, body: &Value) -> Result<Resource, SequinError> {
        let path = format!("/sinks/{}", segment(name));
        let value = self
            .send("update_sink", Method::PATCH, &path, Some(body))
            .await?;
        Resource::from_text(value)
    }

    pub async fn delete_sink(&self, name: &str) -> Result<bool, SequinError> {
        let path = format!("/sinks/{}", segment(name));
        Ok(optional(self.send("delete_sink", Method::DELETE, &path, None).await)?.is_some())
    }

    // --- Backfills ------------------------------------------------------------------------

    pub async fn create_backfill(&self, sink: &str) -> Result<Resource, SequinError> {
        let path = format!("/sinks/{}/backfills", segment(sink));
        let value = self
            .send("create_backfill", Method::POST, &path, Some(&json!({})))
            .await?;
        Resource::from_text(value)
    }

    pub async fn get_backfill(
        &self,
        sink: &str,
        id: &str,
    ) -> Result<Option<Resource>, SequinError> {
        let path = format!("/sinks/{}/backfills/{}", segment(sink), segment(id));
        optional(self.send("get_backfill", Method::GET, &path, None).await)
    }

    /// Backfills of a sink, newest first. Counted as `get_backfill` in metrics (the
    /// operation label set is fixed by the metrics contract).
    pub async fn list_backfills(&self, sink: &str) -> Result<Vec<Value>, SequinError> {
        let path = format!("/sinks/{}/backfills", segment(sink));
        let value = self
            .send_json("get_backfill", Method::GET, &path, None)
            .await?;
        Ok(value
            .get("data")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default())
    }

    pub async fn update_backfill(
        &self,
        sink: &str,
        id: &str,
        body: &Value,
    ) -> Result<Resource, SequinError> {
        let path = format!("/sinks/{}/backfills/{}", segment(sink), segment(id));
        let value = self
            .send("update_backfill", Method::PATCH, &path, Some(body))
            .await?;
        Resource::from_text(value)
    }

    // --- Account --------------------------------------------------------------------------

    /// Upsert resources from sequin.yaml text. The response lists every resource of the
    /// account *including database passwords*: it is dropped here, never logged or returned.
    pub async fn config_apply(&self, yaml: &str) -> Result<(), SequinError> {
        self.send(
            "config_apply",
            Method::POST,
            "/config/apply",
            Some(&json!({ "yaml": yaml })),
        )
        .await
        .map(drop)
    }

    /// Dry run of sequin.yaml text: Sequin applies it in a transaction that it rolls back,
    /// so it refuses what `config_apply` would refuse and changes nothing. The answer is
    /// dropped (it lists every resource of the account).
    pub async fn config_plan(&self, yaml: &str) -> Result<(), SequinError> {
        self.send(
            "config_plan",
            Method::POST,
            "/config/plan",
            Some(&json!({ "yaml": yaml })),
        )
        .await
        .map(drop)
    }

    /// The account as sequin.yaml, of which only the functions are kept. Sequin loads
    /// every resource to render it, so its cost grows with the number of sinks: call it
    /// once per process, not per request.
    pub async fn config_export(&self) -> Result<ConfigExport, SequinError> {
        let text = self
            .send("config_export", Method::GET, "/config/export", None)
            .await?;
        ConfigExport::from_response(&text)
    }

    /// Every HTTP endpoint of the account (reconcile's orphan scan; one call, no paging).
    /// Counted as `get_endpoint`: the `operation` label values are fixed by the metrics
    /// contract (docs/architecture.md, section 8).
    pub async fn list_endpoints(&self) -> Result<Vec<Value>, SequinError> {
        let value = self
            .send_json(
                "get_endpoint",
                Method::GET,
                "/destinations/http_endpoints",
                None,
            )
            .await?;
        Ok(data_list(value))
    }

    /// Every sink of the account. Sequin silently leaves out sinks it cannot render, so this
    /// is only good for finding extra resources, never for proving one is missing.
    /// Counted as `get_sink` (see `list_endpoints`).
    pub async fn list_sinks(&self) -> Result<Vec<Value>, SequinError> {
        let value = self
            .send_json("get_sink", Method::GET, "/sinks", None)
            .await?;
        Ok(data_list(value))
    }

    /// Names of the databases Sequin knows. Also the cheapest way to probe the token.
    pub async fn list_databases(&self) -> Result<Vec<String>, SequinError> {
        Ok(self
            .databases()
            .await?
            .iter()
            .filter_map(|item| item.get("name").and_then(Value::as_str).map(String::from))
            .collect())
    }

    /// The databases Sequin knows, as it renders them (name, replication slot, publication;
    /// passwords obfuscated). One attempt, no in-process retry.
    pub async fn databases(&self) -> Result<Vec<Value>, SequinError> {
        let text = self
            .send_once("list_databases", Method::GET, "/postgres_databases", None)
            .await?;
        Ok(data_list(decode(&text)))
    }
}

/// How a call weighs on Sequin (see [`CallKind`]).
fn call_kind(operation: &str, method: &Method, body: Option<&Value>) -> CallKind {
    if method == Method::GET {
        return CallKind::Read;
    }
    match operation {
        // Sequin: lib/sequin/runtime/consumer_lifecycle_event_worker.ex skips the
        // replication restart only for an update to `disabled`.
        "update_sink" => {
            let status = body.and_then(|b| b.get("status")).and_then(Value::as_str);
            if status == Some("disabled") {
                CallKind::Write
            } else {
                CallKind::Restarting
            }
        }
        "update_endpoint" | "config_apply" => CallKind::Restarting,
        _ => CallKind::Write,
    }
}

/// The calls that list every sink or endpoint of the account.
fn operation_lists(method: &Method, path: &str) -> bool {
    method == Method::GET && (path == "/sinks" || path == "/destinations/http_endpoints")
}

/// A success body as JSON. [`classify`] let it through only if it is JSON, so the
/// `Null` fallback is never taken.
fn decode(text: &str) -> Value {
    serde_json::from_str(text).unwrap_or(Value::Null)
}

fn data_list(mut value: Value) -> Vec<Value> {
    match value.get_mut("data").map(Value::take) {
        Some(Value::Array(items)) => items,
        _ => Vec::new(),
    }
}

/// Our names are `[A-Za-z0-9_.-]`, which need no escaping; ids are UUIDs. Anything else is
/// percent-encoded defensively.
fn segment(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

fn optional(result: Result<String, SequinError>) -> Result<Option<Resource>, SequinError> {
    match result {
        Ok(text) => Resource::from_text(text).map(Some),
        Err(err) if err.is_not_found() => Ok(None),
        Err(err) => Err(err),
    }
}

fn classify(
    status: StatusCode,
    text: String,
    retry_after: Option<Duration>,
) -> Result<String, SequinError> {
    let code = status.as_u16();
    if status.is_success() {
        // Checked without building it: most callers need a field or two.
        return match serde_json::from_str::<serde::de::IgnoredAny>(&text) {
            Ok(_) => Ok(text),
            Err(e) => Err(SequinError::Protocol(format!(
                "HTTP {code} with a body that is not JSON: {e}"
            ))),
        };
    }
    let (summary, details) = parse_error_body(&text);
    Err(match code {
        401 | 403 => SequinError::Auth {
            status: code,
            summary,
        },
        408 | 429 | 500..=599 => SequinError::Unavailable {
            status: code,
            summary,
            retry_after,
        },
        _ => SequinError::Rejected {
            status: code,
            summary,
            details,
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_shape_is_parsed_with_validation_errors() {
        let body = r#"{"summary":"Validation failed","validation_errors":{"name":["has already been taken"]}}"#;
        let err = classify(StatusCode::UNPROCESSABLE_ENTITY, body.to_string(), None).unwrap_err();
        assert!(err.is_name_taken());
        assert_eq!(err.class(), ErrorClass::Permanent);
        assert!(err.to_string().contains("has already been taken"));
    }

    #[test]
    fn phoenix_shape_is_parsed() {
        let err = classify(
            StatusCode::INTERNAL_SERVER_ERROR,
            r#"{"errors":{"detail":"Internal Server Error"}}"#.to_string(),
            None,
        )
        .unwrap_err();
        assert_eq!(err.summary(), "Internal Server Error");
        assert_eq!(err.class(), ErrorClass::Retryable);
    }

    #[test]
    fn html_bodies_are_kept_short() {
        let body = "<html>".repeat(200);
        let err = classify(StatusCode::BAD_GATEWAY, body.clone(), None).unwrap_err();
        assert!(err.summary().len() <= 300);
    }

    #[test]
    fn statuses_are_classified_once() {
        let class = |code: u16| {
            classify(StatusCode::from_u16(code).unwrap(), "{}".to_string(), None)
                .unwrap_err()
                .class()
        };
        assert_eq!(class(401), ErrorClass::Auth);
        assert_eq!(class(403), ErrorClass::Auth);
        assert_eq!(class(400), ErrorClass::Permanent);
        assert_eq!(class(404), ErrorClass::Permanent);
        assert_eq!(class(422), ErrorClass::Permanent);
        assert_eq!(class(408), ErrorClass::Retryable);
        assert_eq!(class(429), ErrorClass::Retryable);
        assert_eq!(class(503), ErrorClass::Retryable);
    }

    #[test]
    fn retry_after_is_kept_on_429() {
        let err = classify(
            StatusCode::TOO_MANY_REQUESTS,
            r#"{"summary":"slow down"}"#.to_string(),
            Some(Duration::from_secs(7)),
        )
        .unwrap_err();
        assert_eq!(err.retry_after(), Some(Duration::from_secs(7)));
    }

    #[test]
    fn other_422s_are_not_name_taken() {
        let body = r#"{"summary":"Unknown field: filters","validation_errors":{},"code":null}"#;
        let err = classify(StatusCode::UNPROCESSABLE_ENTITY, body.to_string(), None).unwrap_err();
        assert!(!err.is_name_taken());
        assert_eq!(err.summary(), "Unknown field: filters");
        assert!(err.details().is_none());
    }

    #[test]
    fn a_success_that_is_not_json_is_a_protocol_error() {
        let err = classify(StatusCode::OK, "<html>proxy</html>".to_string(), None).unwrap_err();
        assert!(matches!(err, SequinError::Protocol(_)), "{err:?}");
        assert!(err
            .to_string()
            .contains("HTTP 200 with a body that is not JSON"));
    }

    #[test]
    fn a_resource_keeps_its_whole_body_and_decodes_it_on_demand() {
        let text = r#"{"id":"e-1","name":"uh-e-1","url":"https://x.example/h","headers":{}}"#;
        let resource = Resource::from_text(text.to_string()).unwrap();
        assert_eq!(resource.id, "e-1");
        assert_eq!(
            resource.str_field("url").as_deref(),
            Some("https://x.example/h")
        );
        assert_eq!(resource.body()["name"], "uh-e-1");
    }

    #[tokio::test]
    async fn a_base_that_is_not_an_http_url_fails_each_call_clearly() {
        for base in [
            "not a url",
            "ftp://sequin.example/api",
            "http://sequin/api?x=1",
        ] {
            let client = SequinClient::new(
                base,
                Secret::new("t".to_string()),
                Duration::from_secs(1),
                Metrics::new(),
            );
            let err = client.list_databases().await.unwrap_err();
            assert!(matches!(err, SequinError::Transport(_)), "{base}: {err:?}");
            assert!(err.to_string().contains("SEQUIN_API_URL"), "{base}: {err}");
        }
    }

    #[test]
    fn calls_are_classified_for_pacing() {
        let active = json!({"status": "active"});
        let disabled = json!({"status": "disabled"});
        let patch = json!({"actions": ["insert"]});
        for (operation, method, body, kind) in [
            ("get_sink", Method::GET, None, CallKind::Read),
            ("list_databases", Method::GET, None, CallKind::Read),
            ("create_sink", Method::POST, Some(&patch), CallKind::Write),
            ("delete_sink", Method::DELETE, None, CallKind::Write),
            ("create_endpoint", Method::POST, None, CallKind::Write),
            ("create_backfill", Method::POST, None, CallKind::Write),
            (
                "update_sink",
                Method::PATCH,
                Some(&active),
                CallKind::Restarting,
            ),
            (
                "update_sink",
                Method::PATCH,
                Some(&patch),
                CallKind::Restarting,
            ),
            (
                "update_sink",
                Method::PATCH,
                Some(&disabled),
                CallKind::Write,
            ),
            ("update_endpoint", Method::PATCH, None, CallKind::Restarting),
            ("config_apply", Method::POST, None, CallKind::Restarting),
        ] {
            assert_eq!(call_kind(operation, &method, body), kind, "{operation}");
        }
        assert!(operation_lists(&Method::GET, "/sinks"));
        assert!(!operation_lists(&Method::GET, "/sinks/x"));
        assert!(operation_lists(
            &Method::GET,
            "/destinations/http_endpoints"
        ));
    }

    #[test]
    fn a_resource_without_an_id_is_a_protocol_error() {
        for text in [r#"{"name":"x"}"#, r#"{"id":42}"#, "[]"] {
            let err = Resource::from_text(text.to_string()).unwrap_err();
            assert!(
                err.to_string().contains("response has no `id`"),
                "{text}: {err}"
            );
        }
    }
}
