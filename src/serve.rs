//! `userhooks serve`: the HTTP API of Sequin's user-webhooks tutorial (the Express app),
//! as a thin layer over the outbox, so the tutorial's clients work unchanged.
//!
//! Every call inserts a request into `userhooks.subscription_requests` and waits, bounded,
//! for `NOTIFY userhooks_request_done` (the table is re-read, so a lost notification costs
//! at most a second). The answer says what happened: 201/200 with the subscription, 202 with
//! the request id when it is still running, 4xx with the worker's reason, 503 when Sequin
//! rejects the worker's token — never a blanket 500.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use deadpool_postgres::Pool;
use futures_util::StreamExt;
use serde_json::{json, Value};
use tokio::sync::broadcast;
use tokio_postgres::AsyncMessage;

use crate::db;
use crate::subscriptions;

pub const DONE_CHANNEL: &str = "userhooks_request_done";

/// How `serve` runs.
#[derive(Clone)]
pub struct ServeConfig {
    pub database_url: String,
    /// Longest wait for a request to finish before answering 202.
    pub wait: Duration,
    /// Sequin's API and the worker's token, when known: used only to tell "still running"
    /// (202) from "Sequin rejects the token" (503) for a request that is still pending.
    pub sequin: Option<crate::sequin::SequinClient>,
    /// When set, every route but `/healthz` needs `Authorization: Bearer <token>`.
    pub token: Option<crate::config::Secret>,
}

struct AppState {
    pool: Pool,
    done: broadcast::Sender<i64>,
    wait: Duration,
    sequin: Option<crate::sequin::SequinClient>,
    /// Last token check: when, and whether Sequin rejected the token.
    token_check: tokio::sync::Mutex<Option<(Instant, bool)>>,
}

type Shared = Arc<AppState>;

/// An HTTP answer: status and JSON body (plus a header or two).
struct Reply {
    status: StatusCode,
    body: Value,
    location: Option<String>,
    retry_after: Option<u64>,
}

impl Reply {
    fn new(status: StatusCode, body: Value) -> Self {
        Reply {
            status,
            body,
            location: None,
            retry_after: None,
        }
    }
    fn error(status: StatusCode, message: impl Into<String>) -> Self {
        Reply::new(status, json!({"error": message.into()}))
    }
}

impl IntoResponse for Reply {
    fn into_response(self) -> Response {
        let mut resp = (self.status, axum::Json(self.body)).into_response();
        if let Some(l) = self.location.and_then(|l| HeaderValue::from_str(&l).ok()) {
            resp.headers_mut().insert(header::LOCATION, l);
        }
        if let Some(n) = self.retry_after {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(n));
        }
        resp
    }
}

impl From<tokio_postgres::Error> for Reply {
    fn from(err: tokio_postgres::Error) -> Self {
        if let Some(db) = err.as_db_error() {
            // What SQL refuses at the door (CHECK constraints) is the client's input.
            if db.code() == &tokio_postgres::error::SqlState::CHECK_VIOLATION {
                return Reply::error(
                    StatusCode::BAD_REQUEST,
                    format!("refused by the database: {}", db.message()),
                );
            }
        }
        tracing::warn!(error = %err, "serve: database error");
        database_unavailable()
    }
}

impl From<deadpool_postgres::PoolError> for Reply {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        tracing::warn!(error = %crate::telemetry::error_chain(&err), "serve: no database connection");
        database_unavailable()
    }
}

/// The 503 for a database error. The details (host, port, database, server messages) go to
/// the log only: without a serve token, any caller reads the answer.
fn database_unavailable() -> Reply {
    Reply::error(StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
}

type Result<T> = std::result::Result<T, Reply>;

/// Parse a JSON object body; anything else is the seed's 400.
fn json_body(bytes: &Bytes) -> Result<serde_json::Map<String, Value>> {
    if bytes.iter().all(u8::is_ascii_whitespace) {
        return Ok(serde_json::Map::new());
    }
    match serde_json::from_slice::<Value>(bytes) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "the body must be a JSON object",
        )),
        Err(e) => Err(Reply::error(
            StatusCode::BAD_REQUEST,
            format!("the body is not valid JSON: {e}"),
        )),
    }
}

/// `userId` may be a number (as in the tutorial) or a string.
fn user_id(v: Option<&Value>) -> Option<std::result::Result<String, Reply>> {
    match v? {
        Value::Null => None,
        Value::String(s) if s.is_empty() => None,
        Value::String(s) => Some(Ok(s.clone())),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(Ok(n.to_string())),
        _ => Some(Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "userId must be a string or an integer",
        ))),
    }
}

fn text(v: Option<&Value>) -> Option<String> {
    v.and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
}

/// A request row as the API reports it.
struct RequestRow {
    id: i64,
    status: String,
    last_error: Option<String>,
    result: Option<Value>,
}

async fn read_request(pool: &Pool, id: i64) -> Result<RequestRow> {
    let client = pool.get().await?;
    let row = client
        .query_one(
            "select status, last_error, result from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await?;
    Ok(RequestRow {
        id,
        status: row.get(0),
        last_error: row.get(1),
        result: row.get(2),
    })
}

fn terminal(status: &str) -> bool {
    matches!(status, "succeeded" | "failed" | "cancelled")
}

/// Insert a request with `sql` (returning its id), then wait for it to finish.
async fn submit(
    state: &AppState,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<RequestRow> {
    // Subscribe before inserting: the notification cannot slip by.
    let mut done = state.done.subscribe();
    let id: i64 = {
        let client = state.pool.get().await?;
        client.query_one(sql, params).await?.get(0)
    };
    let deadline = Instant::now() + state.wait;
    loop {
        let row = read_request(&state.pool, id).await?;
        if terminal(&row.status) {
            return Ok(row);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Ok(row);
        }
        // Wake on our id's notification, or re-read the table after a second anyway.
        let wake = async {
            loop {
                match done.recv().await {
                    Ok(n) if n == id => return,
                    Ok(_) => {}
                    Err(broadcast::error::RecvError::Lagged(_)) => return,
                    Err(broadcast::error::RecvError::Closed) => std::future::pending::<()>().await,
                }
            }
        };
        let _ = tokio::time::timeout(left.min(Duration::from_secs(1)), wake).await;
    }
}

/// The answer for a request that did not succeed (yet).
async fn not_succeeded(state: &AppState, row: RequestRow) -> Reply {
    let status_url = format!("/requests/{}", row.id);
    if !terminal(&row.status) {
        if token_rejected(state, &row).await {
            let mut r = Reply::new(
                StatusCode::SERVICE_UNAVAILABLE,
                json!({
                    "error": "Sequin rejects userhooks' API token; the request is kept (pending) and runs by itself once the token is fixed",
                    "requestId": row.id,
                    "status": row.status,
                    "statusUrl": status_url,
                }),
            );
            r.retry_after = Some(10);
            r.location = Some(status_url);
            return r;
        }
        let mut r = Reply::new(
            StatusCode::ACCEPTED,
            json!({
                "message": "Request accepted and still being processed",
                "requestId": row.id,
                "status": row.status,
                "lastError": row.last_error,
                "statusUrl": status_url,
            }),
        );
        r.location = Some(status_url);
        return r;
    }
    if row.status == "cancelled" {
        return Reply::new(
            StatusCode::CONFLICT,
            json!({"error": "the request was cancelled", "requestId": row.id}),
        );
    }
    let error = row
        .result
        .as_ref()
        .and_then(|r| r.get("error"))
        .cloned()
        .unwrap_or(Value::Null);
    let kind = error.get("kind").and_then(Value::as_str).unwrap_or("");
    let status = match kind {
        "not_found" => StatusCode::NOT_FOUND,
        // Sequin stayed unavailable through every retry.
        "exhausted" => StatusCode::BAD_GATEWAY,
        "database" => StatusCode::SERVICE_UNAVAILABLE,
        // invalid_request, sequin_rejected and anything newer: the request cannot succeed.
        _ => StatusCode::UNPROCESSABLE_ENTITY,
    };
    let mut body = json!({
        "error": row.last_error.clone().unwrap_or_else(|| "the request failed".to_string()),
        "kind": kind,
        "requestId": row.id,
    });
    if let Some(d) = error.get("details").filter(|d| !d.is_null()) {
        body["details"] = d.clone();
    }
    if let Some(s) = error.get("status").filter(|d| !d.is_null()) {
        body["sequinStatus"] = s.clone();
    }
    Reply::new(status, body)
}

/// Does Sequin reject the worker's token? The worker leaves the request it was handling
/// pending with that error and claims nothing more until the token works, so later requests
/// carry no error at all: ask Sequin when we can, else look for that error in the queue.
async fn token_rejected(state: &AppState, row: &RequestRow) -> bool {
    const PREFIX: &str = "Sequin rejected the API token";
    if row
        .last_error
        .as_deref()
        .is_some_and(|e| e.starts_with(PREFIX))
    {
        return true;
    }
    if let Some(sequin) = &state.sequin {
        let mut cached = state.token_check.lock().await;
        if let Some((at, rejected)) = *cached {
            if at.elapsed() < Duration::from_secs(5) {
                return rejected;
            }
        }
        let rejected = matches!(
            sequin.list_databases().await,
            Err(e) if e.class() == crate::sequin::ErrorClass::Auth
        );
        *cached = Some((Instant::now(), rejected));
        return rejected;
    }
    let Ok(client) = state.pool.get().await else {
        return false;
    };
    client
        .query_one(
            "select exists (select 1 from userhooks.subscription_requests
                             where status in ('pending', 'running') and starts_with(last_error, $1))",
            &[&PREFIX],
        )
        .await
        .map(|r| r.get::<_, bool>(0))
        .unwrap_or(false)
}

async fn subscription_json(state: &AppState, id: i64) -> Result<Value> {
    let client = state.pool.get().await?;
    Ok(match subscriptions::by_id(&client, id).await? {
        Some(s) => json!({
            "subscriptionId": id,
            "userId": s.user_id,
            "webhookUrl": s.endpoint,
            "sinkId": s.sequin_sink_id,
            "sinkName": s.sink_name,
            "endpointId": s.sequin_endpoint_id,
            "endpointName": s.endpoint_name,
            "status": s.status,
        }),
        None => json!({"subscriptionId": id}),
    })
}

async fn subscribe(State(state): State<Shared>, body: Bytes) -> Reply {
    match subscribe_inner(&state, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn subscribe_inner(state: &AppState, body: Bytes) -> Result<Reply> {
    let body = json_body(&body)?;
    let user = user_id(body.get("userId")).transpose()?;
    let url = text(body.get("webhookUrl"));
    let (Some(user), Some(url)) = (user, url) else {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "Missing userId or webhookUrl",
        ));
    };
    let options = match body.get("options") {
        None | Some(Value::Null) => json!({}),
        Some(v) => v.clone(),
    };
    let row = submit(
        state,
        "select userhooks.subscribe($1, $2, $3)",
        &[&user, &url, &options],
    )
    .await?;
    if row.status != "succeeded" {
        return Ok(not_succeeded(state, row).await);
    }
    let sub_id = row
        .result
        .as_ref()
        .and_then(|r| r.get("subscription_id"))
        .and_then(Value::as_i64)
        .unwrap_or(0);
    // A subscription older than this request existed already: the call was idempotent.
    let existed = {
        let client = state.pool.get().await?;
        subscriptions::created_before_request(&client, sub_id, row.id).await?
    };
    let mut out = subscription_json(state, sub_id).await?;
    out["message"] = json!(if existed {
        "Webhook subscription already exists"
    } else {
        "Webhook subscription created"
    });
    out["requestId"] = json!(row.id);
    if let Some(b) = row.result.as_ref().and_then(|r| r.get("backfill_id")) {
        out["backfillId"] = b.clone();
    }
    Ok(Reply::new(
        if existed {
            StatusCode::OK
        } else {
            StatusCode::CREATED
        },
        out,
    ))
}

async fn unsubscribe(State(state): State<Shared>, body: Bytes) -> Reply {
    match unsubscribe_inner(&state, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn unsubscribe_inner(state: &AppState, body: Bytes) -> Result<Reply> {
    let body = json_body(&body)?;
    let Some(user) = user_id(body.get("userId")).transpose()? else {
        return Err(Reply::error(StatusCode::BAD_REQUEST, "Missing userId"));
    };
    let url = text(body.get("webhookUrl"));
    let row = submit(
        state,
        "select userhooks.unsubscribe($1, $2)",
        &[&user, &url],
    )
    .await?;
    if row.status != "succeeded" {
        return Ok(not_succeeded(state, row).await);
    }
    let result = row.result.clone().unwrap_or(Value::Null);
    let removed = result.get("removed").and_then(Value::as_i64).unwrap_or(0);
    Ok(Reply::new(
        StatusCode::OK,
        json!({
            "message": if removed > 0 { "Webhook subscription removed" } else { "Nothing to remove" },
            "removed": removed,
            "subscriptionIds": result.get("subscription_ids").cloned().unwrap_or(json!([])),
            "requestId": row.id,
        }),
    ))
}

/// The tutorial named sinks `user-<userId>-notifications`.
fn seed_sink_user(name: &str) -> Option<&str> {
    name.strip_prefix("user-")?
        .strip_suffix("-notifications")
        .filter(|u| !u.is_empty())
}

async fn backfill(State(state): State<Shared>, body: Bytes) -> Reply {
    match backfill_inner(&state, body).await {
        Ok(r) | Err(r) => r,
    }
}

async fn backfill_inner(state: &AppState, body: Bytes) -> Result<Reply> {
    let body = json_body(&body)?;
    let Some(sink) = text(body.get("sinkName")) else {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "Missing sinkName parameter",
        ));
    };
    let (sub_id, user) = {
        let client = state.pool.get().await?;
        let mut rows = subscriptions::live_by_sink_name(&client, &sink).await?;
        if rows.is_empty() {
            if let Some(user) = seed_sink_user(&sink) {
                rows = subscriptions::live_of_user(&client, user).await?;
            }
        }
        match rows.as_slice() {
            [] => {
                return Err(Reply::error(
                    StatusCode::NOT_FOUND,
                    format!("no live subscription has the sink `{sink}`"),
                ))
            }
            [one] => (one.id, one.user_id.clone()),
            many => {
                let names: Vec<Option<String>> = many.iter().map(|s| s.sink_name.clone()).collect();
                return Err(Reply::new(
                    StatusCode::CONFLICT,
                    json!({
                        "error": format!("`{sink}` matches {} subscriptions; name one by its sink name", many.len()),
                        "sinkNames": names,
                    }),
                ));
            }
        }
    };
    let row = submit(
        state,
        "insert into userhooks.subscription_requests (action, user_id, subscription_id)
         values ('backfill', $1, $2) returning id",
        &[&user, &sub_id],
    )
    .await?;
    if row.status != "succeeded" {
        return Ok(not_succeeded(state, row).await);
    }
    let result = row.result.clone().unwrap_or(Value::Null);
    let id = result.get("backfill_id").and_then(Value::as_i64);
    let mut out = match id {
        Some(id) => backfill_json(state, &id.to_string())
            .await?
            .unwrap_or(json!({})),
        None => json!({}),
    };
    out["message"] = json!("Backfill started successfully");
    out["requestId"] = json!(row.id);
    if out.get("backfillId").is_none() {
        out["backfillId"] = result
            .get("sequin_backfill_id")
            .cloned()
            .unwrap_or(Value::Null);
    }
    if let Some(id) = id {
        out["statusUrl"] = json!(format!("/backfill/{id}"));
    }
    Ok(Reply::new(StatusCode::OK, out))
}

/// A backfill by userhooks id (a number) or Sequin id (a UUID).
async fn backfill_json(state: &AppState, id: &str) -> Result<Option<Value>> {
    let client = state.pool.get().await?;
    let select = "select b.id, b.sequin_backfill_id::text, b.subscription_id, b.state,
                         b.rows_initial_count, b.rows_processed_count, b.rows_ingested_count,
                         to_char(b.started_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                         to_char(b.completed_at at time zone 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"'),
                         s.sink_name, s.user_id
                    from userhooks.backfills b
                    join userhooks.webhook_subscriptions s on s.id = b.subscription_id";
    let row = if let Ok(n) = id.parse::<i64>() {
        client
            .query_opt(&format!("{select} where b.id = $1"), &[&n])
            .await?
    } else if let Ok(u) = uuid::Uuid::parse_str(id) {
        client
            .query_opt(&format!("{select} where b.sequin_backfill_id = $1"), &[&u])
            .await?
    } else {
        return Err(Reply::error(
            StatusCode::BAD_REQUEST,
            "a backfill id is a number or a UUID",
        ));
    };
    Ok(row.map(|r| {
        json!({
            "id": r.get::<_, i64>(0),
            "backfillId": r.get::<_, String>(1),
            "subscriptionId": r.get::<_, i64>(2),
            "state": r.get::<_, String>(3),
            "rowsInitialCount": r.get::<_, Option<i64>>(4),
            "rowsProcessedCount": r.get::<_, i64>(5),
            "rowsIngestedCount": r.get::<_, i64>(6),
            "startedAt": r.get::<_, Option<String>>(7),
            "completedAt": r.get::<_, Option<String>>(8),
            "sinkName": r.get::<_, Option<String>>(9),
            "userId": r.get::<_, String>(10),
        })
    }))
}

async fn get_backfill(State(state): State<Shared>, Path(id): Path<String>) -> Reply {
    match backfill_json(&state, &id).await {
        Ok(Some(v)) => Reply::new(StatusCode::OK, v),
        Ok(None) => Reply::error(StatusCode::NOT_FOUND, format!("no backfill {id}")),
        Err(r) => r,
    }
}

async fn get_request(State(state): State<Shared>, Path(id): Path<i64>) -> Reply {
    let client = match state.pool.get().await {
        Ok(c) => c,
        Err(e) => return e.into(),
    };
    let row = client
        .query_opt(
            "select action, user_id, webhook_url, status, attempts, last_error, result
               from userhooks.subscription_requests where id = $1",
            &[&id],
        )
        .await;
    match row {
        Ok(Some(r)) => Reply::new(
            StatusCode::OK,
            json!({
                "requestId": id,
                "action": r.get::<_, String>(0),
                "userId": r.get::<_, String>(1),
                "webhookUrl": r.get::<_, Option<String>>(2),
                "status": r.get::<_, String>(3),
                "attempts": r.get::<_, i32>(4),
                "lastError": r.get::<_, Option<String>>(5),
                "result": r.get::<_, Option<Value>>(6),
            }),
        ),
        Ok(None) => Reply::error(StatusCode::NOT_FOUND, format!("no request {id}")),
        Err(e) => e.into(),
    }
}

/// Does `headers` carry `Authorization: Bearer <expected>`? The digests are compared in
/// constant time, so neither the token's bytes nor its length leak through timing.
fn bearer_matches(headers: &axum::http::HeaderMap, expected: &crate::config::Secret) -> bool {
    use sha2::{Digest, Sha256};
    use subtle::ConstantTimeEq;
    // The scheme's name is case-insensitive (RFC 9110 §11.1).
    let Some((_, given)) = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
    else {
        return false;
    };
    let given = Sha256::digest(given.trim().as_bytes());
    let expected = Sha256::digest(expected.expose().as_bytes());
    given.ct_eq(&expected).into()
}

async fn require_token(
    State(token): State<Arc<crate::config::Secret>>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> Response {
    if bearer_matches(request.headers(), &token) {
        return next.run(request).await;
    }
    let mut resp = Reply::error(
        StatusCode::UNAUTHORIZED,
        "missing or wrong token: send `Authorization: Bearer <USERHOOKS_SERVE_TOKEN>`",
    )
    .into_response();
    resp.headers_mut()
        .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
    resp
}

/// The routes, for embedding and tests. `/healthz` stays open for load balancers.
fn router(state: Shared, token: Option<crate::config::Secret>) -> Router {
    let api = Router::new()
        .route("/subscribe", post(subscribe).delete(unsubscribe))
        .route("/backfill", post(backfill))
        .route("/backfill/{id}", get(get_backfill))
        .route("/requests/{id}", get(get_request))
        .with_state(state);
    let api = match token {
        Some(token) => api.layer(axum::middleware::from_fn_with_state(
            Arc::new(token),
            require_token,
        )),
        None => api,
    };
    api.route(
        "/healthz",
        get(|| async { axum::Json(json!({"ok": true})) }),
    )
}

/// Keep a LISTEN connection on `userhooks_request_done` and publish finished request ids.
async fn listen(database_url: String, done: broadcast::Sender<i64>) {
    loop {
        if let Err(err) = listen_once(&database_url, &done).await {
            tracing::warn!(error = %err, "serve: LISTEN connection lost; re-reading the table meanwhile");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn listen_once(
    database_url: &str,
    done: &broadcast::Sender<i64>,
) -> std::result::Result<(), db::DbError> {
    let (client, mut connection) =
        db::connect_raw(database_url, "userhooks-serve-listener").await?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<i64>();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(Ok(message)) = messages.next().await {
            if let AsyncMessage::Notification(n) = message {
                let id = serde_json::from_str::<Value>(n.payload())
                    .ok()
                    .and_then(|v| v.get("id").and_then(Value::as_i64));
                if let Some(id) = id {
                    if tx.send(id).is_err() {
                        break;
                    }
                }
            }
        }
    });
    client
        .batch_execute(&format!("LISTEN {DONE_CHANNEL}"))
        .await?;
    while let Some(id) = rx.recv().await {
        let _ = done.send(id);
    }
    driver.abort();
    Ok(())
}

/// A server whose database answered and has the userhooks schema, ready to `run`.
pub struct Server {
    state: Shared,
    database_url: String,
    token: Option<crate::config::Secret>,
}

/// Refuse a token no client can send: clients send, and [`bearer_matches`] reads, header
/// values of visible ASCII, so with a byte-order mark (an editor's), a control character, a
/// space or a non-ASCII letter in it every call would get 401 with no hint why. Says where,
/// never what.
fn check_token(token: &crate::config::Secret) -> std::result::Result<(), ServeError> {
    let token = token.expose();
    if token.is_empty() {
        return Err(ServeError::EmptyToken);
    }
    let Some((index, c)) = token
        .chars()
        .enumerate()
        .find(|(_, c)| !c.is_ascii_graphic())
    else {
        return Ok(());
    };
    let what = match c {
        '\u{feff}' => "a byte-order mark (U+FEFF)",
        c if c.is_whitespace() => "whitespace",
        c if c.is_control() => "a control character",
        _ => "a non-ASCII character",
    };
    Err(ServeError::UnusableToken {
        what,
        position: index + 1,
    })
}

/// Connect and check the schema: an unreachable server or an unmigrated database fails here,
/// naming the server, rather than as a 503 on every call. A token that can never match
/// fails first.
pub async fn prepare(config: ServeConfig) -> std::result::Result<Server, ServeError> {
    if let Some(token) = &config.token {
        check_token(token)?;
    }
    let pool = db::pool(&config.database_url, 16)?;
    {
        let client = pool
            .get()
            .await
            .map_err(|e| db::DbError::from_checkout(&config.database_url, e))?;
        db::require_schema(&client).await?;
    }
    let (done, _) = broadcast::channel(1024);
    let state = Arc::new(AppState {
        pool,
        done,
        wait: config.wait,
        sequin: config.sequin,
        token_check: tokio::sync::Mutex::new(None),
    });
    Ok(Server {
        state,
        database_url: config.database_url,
        token: config.token,
    })
}

impl Server {
    /// Serve on `listener` until `shutdown` resolves.
    pub async fn run(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::result::Result<(), ServeError> {
        let listen_task = tokio::spawn(listen(self.database_url, self.state.done.clone()));
        let result = axum::serve(listener, router(self.state, self.token))
            .with_graceful_shutdown(shutdown)
            .await;
        listen_task.abort();
        result.map_err(ServeError::Io)
    }
}

/// [`prepare`], then [`Server::run`].
pub async fn serve(
    config: ServeConfig,
    listener: tokio::net::TcpListener,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::result::Result<(), ServeError> {
    prepare(config).await?.run(listener, shutdown).await
}

#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error("USERHOOKS_SERVE_TOKEN is empty")]
    EmptyToken,
    #[error("USERHOOKS_SERVE_TOKEN holds {what} at character {position}: no client can send it in an Authorization header, so every call would get 401; use visible ASCII only (for example from `openssl rand -hex 32`)")]
    UnusableToken { what: &'static str, position: usize },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_ids_may_be_numbers_or_strings() {
        assert_eq!(
            user_id(Some(&json!(1))).unwrap().ok(),
            Some("1".to_string())
        );
        assert_eq!(
            user_id(Some(&json!("u-42"))).unwrap().ok(),
            Some("u-42".to_string())
        );
        assert!(user_id(Some(&json!(""))).is_none());
        assert!(user_id(None).is_none());
        assert!(user_id(Some(&json!(1.5))).unwrap().is_err());
        assert!(user_id(Some(&json!({"id": 1}))).unwrap().is_err());
    }

    #[test]
    fn only_the_exact_bearer_token_passes() {
        let token = crate::config::Secret::new("s3cret");
        let with = |value: &str| {
            let mut h = axum::http::HeaderMap::new();
            h.insert(header::AUTHORIZATION, HeaderValue::from_str(value).unwrap());
            h
        };
        assert!(bearer_matches(&with("Bearer s3cret"), &token));
        // The scheme is case-insensitive (RFC 9110 §11.1); the token is not.
        assert!(bearer_matches(&with("bearer s3cret"), &token));
        assert!(bearer_matches(&with("BEARER s3cret"), &token));
        assert!(!bearer_matches(&with("Bearer S3CRET"), &token));
        assert!(!bearer_matches(&with("Bearers3cret"), &token));
        assert!(!bearer_matches(&with("Bearer s3cre"), &token));
        assert!(!bearer_matches(&with("Bearer s3cret2"), &token));
        assert!(!bearer_matches(&with("Basic s3cret"), &token));
        assert!(!bearer_matches(&axum::http::HeaderMap::new(), &token));
    }

    #[test]
    fn a_token_no_client_can_send_is_refused_saying_where_not_what() {
        use crate::config::Secret;
        for ok in ["s3cret", "a-b_c.d~e+f/g==", "!#$%&'*"] {
            assert!(check_token(&Secret::new(ok)).is_ok(), "{ok}");
        }
        for (token, what, position) in [
            ("\u{feff}tok-7f3a", "a byte-order mark (U+FEFF)", 1),
            ("tok 7f3a", "whitespace", 4),
            ("tok\t7f3a", "whitespace", 4),
            ("tok\u{7}7f3a", "a control character", 4),
            ("tök7f3a", "a non-ASCII character", 2),
        ] {
            let err = check_token(&Secret::new(token)).unwrap_err();
            assert!(
                matches!(err, ServeError::UnusableToken { what: w, position: p } if w == what && p == position),
                "{token:?}: {err}"
            );
            let text = err.to_string();
            assert!(text.starts_with("USERHOOKS_SERVE_TOKEN holds "), "{text}");
            assert!(!text.contains("7f3a"), "{text}");
        }
        assert!(matches!(
            check_token(&Secret::new("")),
            Err(ServeError::EmptyToken)
        ));
    }

    #[test]
    fn the_tutorials_sink_names_name_a_user() {
        assert_eq!(seed_sink_user("user-1-notifications"), Some("1"));
        assert_eq!(seed_sink_user("user-ab-c-notifications"), Some("ab-c"));
        assert_eq!(seed_sink_user("user--notifications"), None);
        assert_eq!(seed_sink_user("userhooks-1-sink"), None);
    }
}
