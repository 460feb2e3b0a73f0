//! Routing and controllers of the emulated Sequin API.

use super::state::{normalize_table, Backfill, Db, Endpoint, Function, Sink, Source};
use super::Resp;
use axum::http::Method;
use regex::Regex;
use serde_json::{json, Map, Value};
use std::sync::OnceLock;
use std::time::Instant;
use uuid::Uuid;

#[derive(Debug, Clone)]
pub(crate) enum Route {
    ListEndpoints,
    CreateEndpoint,
    GetEndpoint(String),
    UpdateEndpoint(String),
    DeleteEndpoint(String),
    ListSinks,
    CreateSink,
    GetSink(String),
    UpdateSink(String),
    DeleteSink(String),
    ListBackfills(String),
    CreateBackfill(String),
    GetBackfill(String, String),
    UpdateBackfill(String, String),
    ConfigApply,
    ConfigPlan,
    ConfigExport,
    ListDatabases,
    GetDatabase(String),
    RefreshTables(String),
}

impl Route {
    pub fn operation(&self) -> &'static str {
        match self {
            Route::ListEndpoints => "list_endpoints",
            Route::CreateEndpoint => "create_endpoint",
            Route::GetEndpoint(_) => "get_endpoint",
            Route::UpdateEndpoint(_) => "update_endpoint",
            Route::DeleteEndpoint(_) => "delete_endpoint",
            Route::ListSinks => "list_sinks",
            Route::CreateSink => "create_sink",
            Route::GetSink(_) => "get_sink",
            Route::UpdateSink(_) => "update_sink",
            Route::DeleteSink(_) => "delete_sink",
            Route::ListBackfills(_) => "list_backfills",
            Route::CreateBackfill(_) => "create_backfill",
            Route::GetBackfill(..) => "get_backfill",
            Route::UpdateBackfill(..) => "update_backfill",
            Route::ConfigApply => "config_apply",
            Route::ConfigPlan => "config_plan",
            Route::ConfigExport => "config_export",
            Route::ListDatabases => "list_databases",
            Route::GetDatabase(_) | Route::RefreshTables(_) => "other",
        }
    }
}

/// The routes this emulator knows. Everything else is Phoenix's 404 (real Sequin has more
/// routes, e.g. other sink types and `/api/api_keys`; the emulator does not serve them).
pub(crate) fn match_route(method: &Method, segs: &[String]) -> Option<Route> {
    let s: Vec<&str> = segs.iter().map(String::as_str).collect();
    let m = method.as_str();
    let update = m == "PUT" || m == "PATCH";
    let r = match s.as_slice() {
        ["api", "destinations", "http_endpoints"] => match m {
            "GET" => Route::ListEndpoints,
            "POST" => Route::CreateEndpoint,
            _ => return None,
        },
        ["api", "destinations", "http_endpoints", id] => match m {
            "GET" => Route::GetEndpoint(id.to_string()),
            "DELETE" => Route::DeleteEndpoint(id.to_string()),
            _ if update => Route::UpdateEndpoint(id.to_string()),
            _ => return None,
        },
        ["api", "sinks"] => match m {
            "GET" => Route::ListSinks,
            "POST" => Route::CreateSink,
            _ => return None,
        },
        ["api", "sinks", id] => match m {
            "GET" => Route::GetSink(id.to_string()),
            "DELETE" => Route::DeleteSink(id.to_string()),
            _ if update => Route::UpdateSink(id.to_string()),
            _ => return None,
        },
        ["api", "sinks", sink, "backfills"] => match m {
            "GET" => Route::ListBackfills(sink.to_string()),
            "POST" => Route::CreateBackfill(sink.to_string()),
            _ => return None,
        },
        // No DELETE: `resources ..., except: [:new, :edit, :delete]`.
        ["api", "sinks", sink, "backfills", id] => match m {
            "GET" => Route::GetBackfill(sink.to_string(), id.to_string()),
            _ if update => Route::UpdateBackfill(sink.to_string(), id.to_string()),
            _ => return None,
        },
        ["api", "config", "apply"] if m == "POST" => Route::ConfigApply,
        ["api", "config", "plan"] if m == "POST" => Route::ConfigPlan,
        ["api", "config", "export"] if m == "GET" => Route::ConfigExport,
        ["api", "postgres_databases"] if m == "GET" => Route::ListDatabases,
        ["api", "postgres_databases", id] if m == "GET" => Route::GetDatabase(id.to_string()),
        ["api", "postgres_databases", id, "refresh_tables"] if m == "POST" => {
            Route::RefreshTables(id.to_string())
        }
        _ => return None,
    };
    Some(r)
}

pub(crate) fn dispatch(db: &mut Db, route: Route, params: Map<String, Value>) -> Resp {
    match route {
        Route::ListEndpoints => {
            let data: Vec<Value> = db.endpoints.iter().map(|e| db.render_endpoint(e)).collect();
            Resp::ok(json!({ "data": data }))
        }
        Route::CreateEndpoint => upsert_endpoint(db, &params, None),
        Route::GetEndpoint(id) => match find_endpoint(db, &id) {
            Some(i) => Resp::ok(db.render_endpoint(&db.endpoints[i])),
            None => Resp::not_found("http endpoint"),
        },
        Route::UpdateEndpoint(id) => match find_endpoint(db, &id) {
            Some(i) => upsert_endpoint(db, &params, Some(i)),
            None => Resp::not_found("http endpoint"),
        },
        Route::DeleteEndpoint(id) => delete_endpoint(db, &id),
        Route::ListSinks => {
            let data: Vec<Value> = db.sinks.iter().map(|s| db.render_sink(s, true)).collect();
            Resp::ok(json!({ "data": data }))
        }
        Route::CreateSink => upsert_sink(db, &params, None),
        Route::GetSink(id) => match find_sink(db, &id) {
            Some(i) => Resp::ok(db.render_sink(&db.sinks[i], true)),
            None => Resp::not_found("consumer"),
        },
        Route::UpdateSink(id) => match find_sink(db, &id) {
            Some(i) => upsert_sink(db, &params, Some(i)),
            None => Resp::not_found("consumer"),
        },
        Route::DeleteSink(id) => match find_sink(db, &id) {
            Some(i) => {
                let sink = db.sinks.remove(i);
                db.reindex_sinks();
                db.backfills.retain(|b| b.sink_id != sink.id);
                Resp::ok(json!({"id": sink.id, "deleted": true}))
            }
            None => Resp::not_found("consumer"),
        },
        Route::ListBackfills(sink) => match find_sink(db, &sink) {
            Some(i) => {
                let sink_id = db.sinks[i].id;
                let mut bfs: Vec<&Backfill> = db
                    .backfills
                    .iter()
                    .filter(|b| b.sink_id == sink_id)
                    .collect();
                bfs.sort_by_key(|b| std::cmp::Reverse(b.created));
                let data: Vec<Value> = bfs.iter().map(|b| db.render_backfill(b)).collect();
                Resp::ok(json!({ "data": data }))
            }
            None => Resp::not_found("consumer"),
        },
        Route::CreateBackfill(sink) => create_backfill(db, &sink, &params),
        Route::GetBackfill(sink, id) => {
            let Some(si) = find_sink(db, &sink) else {
                return Resp::not_found("consumer");
            };
            let Some(uuid) = ecto_uuid(&id) else {
                return Resp::detail(400, "Bad Request");
            };
            let sink_id = db.sinks[si].id;
            match db
                .backfills
                .iter()
                .find(|b| b.id == uuid && b.sink_id == sink_id)
            {
                Some(b) => Resp::ok(db.render_backfill(b)),
                None => Resp::not_found("backfill"),
            }
        }
        Route::UpdateBackfill(sink, id) => update_backfill(db, &sink, &id, &params),
        Route::ConfigApply => config_apply(db, &params, true),
        Route::ConfigPlan => config_apply(db, &params, false),
        Route::ConfigExport => config_export(db),
        Route::ListDatabases => Resp::ok(json!({"data": [db.render_database(false)]})),
        Route::GetDatabase(id) => {
            if matches_database(db, &id) {
                Resp::ok(db.render_database(false))
            } else {
                Resp::not_found("database")
            }
        }
        Route::RefreshTables(id) => {
            if matches_database(db, &id) {
                Resp::ok(json!({"success": true}))
            } else {
                Resp::not_found("database")
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// lookups

/// `Sequin.String.sequin_uuid?`: a v4 UUID in hyphenated, 32-hex or `urn:uuid:` form.
pub(crate) fn sequin_uuid(s: &str) -> Option<Uuid> {
    let core = s.strip_prefix("urn:uuid:").unwrap_or(s);
    let hex_only = |t: &str| t.chars().all(|c| c.is_ascii_hexdigit());
    let shape_ok = match core.len() {
        32 => hex_only(core),
        36 => core.char_indices().all(|(i, c)| {
            if [8, 13, 18, 23].contains(&i) {
                c == '-'
            } else {
                c.is_ascii_hexdigit()
            }
        }),
        _ => false,
    };
    if !shape_ok {
        return None;
    }
    let u = Uuid::try_parse(core).ok()?;
    (u.get_version_num() == 4).then_some(u)
}

/// `Ecto.UUID.cast` of a path id: the hyphenated form (any version).
fn ecto_uuid(s: &str) -> Option<Uuid> {
    if s.len() != 36 {
        return None;
    }
    let ok = s.char_indices().all(|(i, c)| {
        if [8, 13, 18, 23].contains(&i) {
            c == '-'
        } else {
            c.is_ascii_hexdigit()
        }
    });
    if !ok {
        return None;
    }
    Uuid::try_parse(s).ok()
}

fn find_endpoint(db: &Db, id_or_name: &str) -> Option<usize> {
    match sequin_uuid(id_or_name) {
        Some(u) => db.endpoint_ids.get(&u).copied(),
        None => db.endpoint_names.get(id_or_name).copied(),
    }
}

fn find_sink(db: &Db, id_or_name: &str) -> Option<usize> {
    match sequin_uuid(id_or_name) {
        Some(u) => db.sinks.iter().position(|s| s.id == u),
        None => db.sink_names.get(id_or_name).copied(),
    }
}

fn matches_database(db: &Db, id_or_name: &str) -> bool {
    match sequin_uuid(id_or_name) {
        Some(u) => u == db.database_id,
        None => id_or_name == db.database,
    }
}

fn name_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-zA-Z0-9_\-.]+$").expect("valid regex"))
}

fn host_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^[a-zA-Z0-9.-]+$").expect("valid regex"))
}

fn path_re() -> &'static Regex {
    static RE: OnceLock<Regex> = OnceLock::new();
    RE.get_or_init(|| Regex::new(r"^/[A-Za-z0-9\-._~!$&'()*+,;=:@%?/]*$").expect("valid regex"))
}

fn sorted_keys(params: &Map<String, Value>) -> Vec<String> {
    let mut keys: Vec<String> = params.keys().cloned().collect();
    keys.sort();
    keys
}

fn add_err(errors: &mut Map<String, Value>, field: &str, msg: &str) {
    let entry = errors
        .entry(field.to_string())
        .or_insert_with(|| Value::Array(Vec::new()));
    if let Value::Array(a) = entry {
        a.push(json!(msg));
    }
}

fn add_nested_err(errors: &mut Map<String, Value>, embed: &str, field: &str, msg: &str) {
    let entry = errors
        .entry(embed.to_string())
        .or_insert_with(|| Value::Object(Map::new()));
    if let Value::Object(m) = entry {
        add_err(m, field, msg);
    }
}

/// Name checks shared by endpoints and sinks (changeset).
fn check_name(errors: &mut Map<String, Value>, v: Option<&Value>, required: bool, format: bool) {
    match v {
        None if required => add_err(errors, "name", "can't be blank"),
        None => {}
        Some(Value::Null) => add_err(errors, "name", "can't be blank"),
        Some(Value::String(s)) if s.trim().is_empty() => add_err(errors, "name", "can't be blank"),
        Some(Value::String(s)) => {
            if format && !name_re().is_match(s) {
                add_err(
                    errors,
                    "name",
                    "Can only contain alphanumeric characters, underscores, hyphens, or dots",
                );
            }
            if s.chars().count() > 255 {
                add_err(errors, "name", "should be at most 255 character(s)");
            }
        }
        Some(_) => add_err(errors, "name", "is invalid"),
    }
}

// ---------------------------------------------------------------------------------------------
// HTTP endpoints

struct UrlParts {
    scheme: Option<String>,
    host: Option<String>,
    port: Option<Result<i64, ()>>,
    path: String,
    query: Option<String>,
    fragment: Option<String>,
}

/// Split like Elixir's `URI.parse` (no validation; scheme lowercased; userinfo kept apart).
fn parse_url(s: &str) -> UrlParts {
    let (rest, fragment) = match s.split_once('#') {
        Some((a, f)) => (a, Some(f.to_string())),
        None => (s, None),
    };
    let (rest, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q.to_string())),
        None => (rest, None),
    };
    let (scheme, rest) = match rest.split_once(':') {
        Some((sch, r))
            if !sch.is_empty()
                && sch.starts_with(|c: char| c.is_ascii_alphabetic())
                && sch
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "+.-".contains(c)) =>
        {
            (Some(sch.to_ascii_lowercase()), r)
        }
        _ => (None, rest),
    };
    let mut host = None;
    let mut port = None;
    let path;
    if let Some(after) = rest.strip_prefix("//") {
        let (authority, p) = match after.find('/') {
            Some(i) => (&after[..i], &after[i..]),
            None => (after, ""),
        };
        path = p.to_string();
        let hostport = match authority.rsplit_once('@') {
            Some((_userinfo, hp)) => hp,
            None => authority,
        };
        let (h, p) = if hostport.starts_with('[') {
            match hostport.find(']') {
                Some(i) => {
                    let tail = &hostport[i + 1..];
                    (&hostport[1..i], tail.strip_prefix(':'))
                }
                None => (hostport, None),
            }
        } else {
            match hostport.rsplit_once(':') {
                Some((h, p)) => (h, Some(p)),
                None => (hostport, None),
            }
        };
        host = Some(h.to_string());
        if let Some(p) = p.filter(|p| !p.is_empty()) {
            port = Some(p.parse::<i64>().map_err(|_| ()).and_then(|n| {
                if p.chars().all(|c| c.is_ascii_digit()) {
                    Ok(n)
                } else {
                    Err(())
                }
            }));
        }
    } else {
        path = rest.to_string();
    }
    UrlParts {
        scheme,
        host,
        port,
        path,
        query,
        fragment,
    }
}

fn default_port(scheme: &str) -> Option<i64> {
    match scheme {
        "http" => Some(80),
        "https" => Some(443),
        _ => None,
    }
}

/// `URI.to_string` of the stored parts: the scheme's default port is omitted.
fn url_to_string(u: &UrlParts) -> String {
    let scheme = u.scheme.clone().unwrap_or_default();
    let mut out = format!("{}://{}", scheme, u.host.clone().unwrap_or_default());
    if let Some(Ok(p)) = u.port {
        if Some(p) != default_port(&scheme) {
            out.push_str(&format!(":{p}"));
        }
    }
    out.push_str(&u.path);
    if let Some(q) = &u.query {
        out.push('?');
        out.push_str(q);
    }
    if let Some(f) = &u.fragment {
        out.push('#');
        out.push_str(f);
    }
    out
}

/// Headers as a map or a `[{"key","value"}]` list.
fn parse_headers(v: &Value) -> Result<Map<String, Value>, Resp> {
    match v {
        Value::Object(m) => Ok(m.clone()),
        Value::Array(items) => {
            let mut out = Map::new();
            for item in items {
                // A list item without key/value crashes real Sequin (KeyError).
                let (Some(k), Some(val)) =
                    (item.get("key").and_then(Value::as_str), item.get("value"))
                else {
                    return Err(Resp::crash());
                };
                out.insert(k.to_string(), val.clone());
            }
            Ok(out)
        }
        _ => Err(Resp::parser(
            "Invalid headers configuration. Must be a list of key-value pairs.",
        )),
    }
}

/// The fields of an endpoint create or update, parsed.
struct EndpointChange {
    url: Option<UrlParts>,
    headers: Option<Map<String, Value>>,
    encrypted: Option<Map<String, Value>>,
}

/// Parse the body's fields in Sequin's order; the first field Sequin's parser refuses (or
/// crashes on) is the answer.
fn parse_endpoint_params(params: &Map<String, Value>) -> Result<EndpointChange, Resp> {
    let mut change = EndpointChange {
        url: None,
        headers: None,
        encrypted: None,
    };
    for key in sorted_keys(params) {
        let v = &params[&key];
        match key.as_str() {
            "name" => {}
            "url" => match v {
                Value::String(s) => change.url = Some(parse_url(s)),
                // `"url": null` (or any non-string) crashes URI.parse.
                _ => return Err(Resp::crash()),
            },
            "headers" => change.headers = Some(parse_headers(v)?),
            "encrypted_headers" => change.encrypted = Some(parse_headers(v)?),
            "id" | "inserted_at" | "updated_at" | "account_id" => {}
            // Known to Sequin but out of scope for the emulator (guess: answer a parser error).
            "webhook.site" | "local" | "path" => {
                return Err(Resp::parser(format!(
                    "Emulator: `{key}` endpoints are not supported by the emulator"
                )))
            }
            _ => return Err(Resp::parser(format!("Unknown field: {key}"))),
        }
    }
    Ok(change)
}

/// The changeset errors of a URL's parts.
fn add_url_errors(errors: &mut Map<String, Value>, u: &UrlParts) {
    match u.scheme.as_deref() {
        None | Some("") => add_err(errors, "scheme", "can't be blank"),
        Some("http") | Some("https") => {}
        Some(_) => add_err(errors, "scheme", "is invalid"),
    }
    match u.host.as_deref() {
        None | Some("") => add_err(errors, "host", "can't be blank"),
        Some(h) if !host_re().is_match(h) => add_err(errors, "host", "must be a valid hostname"),
        Some(_) => {}
    }
    match u.port {
        Some(Err(())) => add_err(errors, "port", "is invalid"),
        Some(Ok(p)) if p < 1 => add_err(errors, "port", "must be greater than 0"),
        Some(Ok(p)) if p > 65535 => add_err(errors, "port", "must be less than 65536"),
        _ => {}
    }
}

/// The changeset errors of an endpoint create (`creating`) or update.
fn endpoint_errors(
    params: &Map<String, Value>,
    change: &EndpointChange,
    creating: bool,
) -> Map<String, Value> {
    let mut errors = Map::new();
    check_name(&mut errors, params.get("name"), creating, true);
    match &change.url {
        None if creating => {
            add_err(&mut errors, "scheme", "can't be blank");
            add_err(&mut errors, "host", "can't be blank");
        }
        None => {}
        Some(u) => add_url_errors(&mut errors, u),
    }
    for (field, map) in [
        ("headers", &change.headers),
        ("encrypted_headers", &change.encrypted),
    ] {
        if let Some(m) = map {
            if m.values().any(|v| !v.is_string()) {
                add_err(&mut errors, field, "is invalid");
            }
        }
    }
    errors
}

fn upsert_endpoint(db: &mut Db, params: &Map<String, Value>, existing: Option<usize>) -> Resp {
    let change = match parse_endpoint_params(params) {
        Ok(change) => change,
        Err(r) => return r,
    };
    let errors = endpoint_errors(params, &change, existing.is_none());
    if !errors.is_empty() {
        return Resp::validation(Value::Object(errors));
    }

    let name = params
        .get("name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let self_id = existing.map(|i| db.endpoints[i].id);
    if let Some(n) = &name {
        if db
            .endpoint_names
            .get(n)
            .is_some_and(|&i| Some(db.endpoints[i].id) != self_id)
        {
            return Resp::validation(json!({"name": ["has already been taken"]}));
        }
    }
    let idx = store_endpoint(db, existing, name, change);
    Resp::ok(db.render_endpoint(&db.endpoints[idx]))
}

/// Create the endpoint (`existing` is `None`) or change it; its index.
fn store_endpoint(
    db: &mut Db,
    existing: Option<usize>,
    name: Option<String>,
    change: EndpointChange,
) -> usize {
    let idx = match existing {
        Some(i) => i,
        None => {
            db.endpoints.push(Endpoint {
                id: Uuid::new_v4(),
                name: String::new(),
                url: String::new(),
                headers: Map::new(),
                encrypted_headers: Map::new(),
            });
            let idx = db.endpoints.len() - 1;
            db.endpoint_ids.insert(db.endpoints[idx].id, idx);
            idx
        }
    };
    let e = &mut db.endpoints[idx];
    if let Some(n) = name {
        if e.name != n {
            e.name = n;
            if existing.is_none() {
                db.endpoint_names
                    .insert(db.endpoints[idx].name.clone(), idx);
            } else {
                db.reindex_endpoints();
            }
        }
    }
    let e = &mut db.endpoints[idx];
    if let Some(u) = &change.url {
        e.url = url_to_string(u);
    }
    if let Some(h) = change.headers {
        e.headers = h;
    }
    if let Some(h) = change.encrypted {
        e.encrypted_headers = h;
    }
    idx
}

fn delete_endpoint(db: &mut Db, id_or_name: &str) -> Resp {
    let Some(i) = find_endpoint(db, id_or_name) else {
        return Resp::not_found("http endpoint");
    };
    let e = &db.endpoints[i];
    let users = db.sinks.iter().filter(|s| s.endpoint_id == e.id).count();
    if users > 0 {
        return Resp::summary(
            400,
            format!(
                "Cannot delete HTTP endpoint {} ({}), as it is in use by {} sink consumer(s)",
                e.name, e.id, users
            ),
        );
    }
    let e = db.endpoints.remove(i);
    db.reindex_endpoints();
    Resp::ok(json!({"id": e.id, "deleted": true}))
}

// ---------------------------------------------------------------------------------------------
// sinks

struct Dest {
    endpoint_id: Option<Uuid>,
    path: Value,
    batch: Value,
}

#[derive(Default)]
struct SinkPatch {
    database: bool,
    source: Option<Source>,
    source_errors: Map<String, Value>,
    tables: Option<Vec<Value>>,
    destination: Option<Dest>,
    batch_size: Option<u64>,
    max_retry_count: Option<u64>,
    functions: Vec<(&'static str, Option<Uuid>)>,
}

const FUNCTION_SLOTS: [&str; 4] = ["enrichment", "filter", "routing", "transform"];
const IGNORED_SINK_KEYS: [&str; 10] = [
    "id",
    "inserted_at",
    "updated_at",
    "account_id",
    "replication_slot_id",
    "sequence_id",
    "consumer_start",
    "active_backfill",
    "active_backfills",
    "message_kind",
];
/// Destination types real Sequin parses but the emulator does not emulate.
const OTHER_SINK_TYPES: [&str; 15] = [
    "sequin_stream",
    "kafka",
    "sqs",
    "sns",
    "kinesis",
    "s2",
    "redis_stream",
    "redis_string",
    "rabbitmq",
    "gcp_pubsub",
    "nats",
    "azure_event_hub",
    "typesense",
    "meilisearch",
    "elasticsearch",
];

fn require_database(db: &Db, params: &Map<String, Value>) -> Result<(), Resp> {
    match params.get("database").and_then(Value::as_str) {
        Some(d) if d == db.database => Ok(()),
        _ => Err(Resp::not_found("database")),
    }
}

fn check_table(db: &Db, t: &str) -> Result<String, Resp> {
    let n = normalize_table(t);
    if db.tables.contains(&n) {
        Ok(n)
    } else {
        Err(Resp::parser(format!(
            "Table '{}' not found in database '{}'",
            t, db.database
        )))
    }
}

fn string_list(v: &Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(str::to_string))
        .collect()
}

fn parse_source(db: &Db, v: &Value, errors: &mut Map<String, Value>) -> Result<Source, Resp> {
    let m = match v {
        Value::Null => return Ok(Source::default()),
        Value::Object(m) => m,
        _ => {
            return Err(Resp::parser(
                "Invalid source configuration. Must be an object.",
            ))
        }
    };
    let mut src = Source::default();
    for (k, val) in m {
        let list = match val {
            Value::Null => None,
            other => match string_list(other) {
                Some(l) => Some(l),
                None => {
                    return Err(Resp::parser(format!(
                        "Invalid source configuration: `{k}` must be a list of strings"
                    )))
                }
            },
        };
        let list = match (k.as_str(), list) {
            ("include_tables" | "exclude_tables", Some(l)) => {
                let mut out = Vec::new();
                for t in &l {
                    out.push(check_table(db, t)?);
                }
                Some(out)
            }
            (_, l) => l,
        };
        if let Some(l) = &list {
            if l.is_empty() {
                add_err(errors, k, "should have at least 1 item(s)");
            }
        }
        match k.as_str() {
            "include_schemas" => src.include_schemas = list,
            "exclude_schemas" => src.exclude_schemas = list,
            "include_tables" => src.include_tables = list,
            "exclude_tables" => src.exclude_tables = list,
            // Guess: the source parser rejects keys it does not know.
            _ => return Err(Resp::parser(format!("Unknown field: source.{k}"))),
        }
    }
    // Guessed messages: Sequin's source changeset forbids include+exclude of the same kind.
    if src.include_schemas.is_some() && src.exclude_schemas.is_some() {
        add_err(
            errors,
            "include_schemas",
            "cannot be set together with exclude_schemas",
        );
    }
    if src.include_tables.is_some() && src.exclude_tables.is_some() {
        add_err(
            errors,
            "include_tables",
            "cannot be set together with exclude_tables",
        );
    }
    Ok(src)
}

fn parse_destination(db: &Db, v: &Value) -> Result<Dest, Resp> {
    let Some(m) = v.as_object() else {
        return Err(Resp::crash());
    };
    match m.get("type").and_then(Value::as_str) {
        Some("webhook") => {}
        Some(t) if OTHER_SINK_TYPES.contains(&t) => {
            return Err(Resp::parser(format!(
                "Emulator: destination type '{t}' is not emulated (only webhook)"
            )))
        }
        // No parser clause for an unknown or missing type: a crash.
        _ => return Err(Resp::crash()),
    }
    let mut dest = Dest {
        endpoint_id: None,
        path: Value::Null,
        batch: json!(true),
    };
    for (k, val) in m {
        match k.as_str() {
            "type" => {}
            "http_endpoint" => {
                // Looked up by name only.
                let found = val
                    .as_str()
                    .and_then(|n| db.endpoint_names.get(n))
                    .map(|&i| &db.endpoints[i]);
                match found {
                    Some(e) => dest.endpoint_id = Some(e.id),
                    None => return Err(Resp::not_found("http endpoint")),
                }
            }
            "http_endpoint_path" => dest.path = val.clone(),
            "batch" => dest.batch = val.clone(),
            // Guess: unknown destination keys are rejected like top-level ones.
            _ => return Err(Resp::parser(format!("Unknown field: {k}"))),
        }
    }
    Ok(dest)
}

/// The legacy `tables` list: names checked, grouping columns as given.
fn parse_tables(db: &Db, v: &Value) -> Result<Vec<Value>, Resp> {
    let items = v
        .as_array()
        .ok_or_else(|| Resp::parser("Failed to parse tables: expected a list"))?;
    let mut out = Vec::new();
    for item in items {
        let name = item
            .get("name")
            .and_then(Value::as_str)
            .ok_or_else(|| Resp::parser("Failed to parse tables: each table needs a name"))?;
        let name = check_table(db, name)?;
        let cols = match item.get("group_column_names") {
            None | Some(Value::Null) => Value::Null,
            Some(c) => match string_list(c) {
                Some(l) => json!(l),
                None => {
                    return Err(Resp::parser(
                        "Failed to parse tables: group_column_names must be a list of strings",
                    ))
                }
            },
        };
        out.push(json!({"name": name, "group_column_names": cols}));
    }
    Ok(out)
}

/// A function slot (`filter`, `transform`, ...) and the function it names (`None` for
/// `"none"` or null).
fn parse_function_ref(db: &Db, key: &str, v: &Value) -> Result<(&'static str, Option<Uuid>), Resp> {
    let slot = FUNCTION_SLOTS
        .iter()
        .copied()
        .find(|s| *s == key)
        .unwrap_or("filter");
    match v {
        Value::Null => Ok((slot, None)),
        Value::String(s) if s == "none" => Ok((slot, None)),
        Value::String(s) => match db.functions.iter().find(|f| &f.name == s) {
            Some(f) => Ok((slot, Some(f.id))),
            None => Err(Resp::parser(format!("Function '{s}' not found."))),
        },
        other => Err(Resp::parser(format!("Function '{other}' not found."))),
    }
}

fn parse_sink(db: &Db, params: &Map<String, Value>) -> Result<SinkPatch, Resp> {
    let mut p = SinkPatch::default();
    for key in sorted_keys(params) {
        let v = &params[&key];
        match key.as_str() {
            "name"
            | "status"
            | "actions"
            | "load_shedding_policy"
            | "timestamp_format"
            | "message_grouping"
            | "annotations" => {}
            "database" => {
                require_database(db, params)?;
                p.database = true;
            }
            "source" => {
                require_database(db, params)?;
                let mut errs = Map::new();
                p.source = Some(parse_source(db, v, &mut errs)?);
                p.source_errors = errs;
            }
            "schema" => {
                let s = v
                    .as_str()
                    .ok_or_else(|| Resp::parser("Invalid schema. Must be a string."))?;
                p.source = Some(Source {
                    include_schemas: Some(vec![s.to_string()]),
                    ..Source::default()
                });
            }
            "table" => {
                require_database(db, params)?;
                let t = v
                    .as_str()
                    .ok_or_else(|| Resp::parser("Invalid table. Must be a string."))?;
                let t = check_table(db, t)?;
                p.source = Some(Source {
                    include_tables: Some(vec![t]),
                    ..Source::default()
                });
                p.source_errors = Map::new();
            }
            "tables" => {
                require_database(db, params)?;
                p.tables = Some(parse_tables(db, v)?);
            }
            "destination" => p.destination = Some(parse_destination(db, v)?),
            "batch_size" => match v.as_u64() {
                Some(n) if (1..=1000).contains(&n) => p.batch_size = Some(n),
                _ => {
                    return Err(Resp::parser(
                        "batch_size must be a positive integer <= 1000",
                    ))
                }
            },
            "max_retry_count" => match v {
                Value::Null => {}
                _ => match v.as_u64() {
                    Some(n) => p.max_retry_count = Some(n),
                    None => {
                        return Err(Resp::parser(
                            "max_retry_count must be a non-negative integer",
                        ))
                    }
                },
            },
            "filter" | "transform" | "routing" | "enrichment" => {
                p.functions.push(parse_function_ref(db, &key, v)?)
            }
            "initial_backfill" => match v {
                // Parsed, then ignored by REST create.
                Value::Bool(_) | Value::Array(_) | Value::Null => {}
                _ => return Err(Resp::parser("Invalid initial_backfill configuration")),
            },
            k if IGNORED_SINK_KEYS.contains(&k) => {}
            _ => return Err(Resp::parser(format!("Unknown field: {key}"))),
        }
    }
    Ok(p)
}

fn default_sink() -> Sink {
    Sink {
        id: Uuid::new_v4(),
        name: String::new(),
        status: "active".to_string(),
        actions: vec!["insert".into(), "update".into(), "delete".into()],
        source: Source::default(),
        tables: Vec::new(),
        endpoint_id: Uuid::nil(),
        endpoint_path: None,
        batch: true,
        batch_size: 1,
        filter: None,
        transform: None,
        routing: None,
        enrichment: None,
        timestamp_format: "iso8601".to_string(),
        max_retry_count: None,
        load_shedding_policy: "pause_on_full".to_string(),
        message_grouping: true,
        annotations: json!({}),
        start_lsn: None,
    }
}

fn one_of(
    errors: &mut Map<String, Value>,
    params: &Map<String, Value>,
    key: &str,
    allowed: &[&str],
    target: &mut String,
) {
    if let Some(v) = params.get(key) {
        match v.as_str() {
            Some(s) if allowed.contains(&s) => *target = s.to_string(),
            _ => add_err(errors, key, "is invalid"),
        }
    }
}

fn upsert_sink(db: &mut Db, params: &Map<String, Value>, existing: Option<usize>) -> Resp {
    let patch = match parse_sink(db, params) {
        Ok(p) => p,
        Err(r) => return r,
    };
    let creating = existing.is_none();
    let mut s = match existing {
        Some(i) => db.sinks[i].clone(),
        None => default_sink(),
    };
    let mut errors = Map::new();

    // name: update skips the format check.
    check_name(&mut errors, params.get("name"), creating, creating);
    if let Some(n) = params.get("name").and_then(Value::as_str) {
        s.name = n.to_string();
    }
    if creating && !patch.database {
        add_err(&mut errors, "replication_slot_id", "can't be blank");
    }
    match &patch.destination {
        None if creating => add_err(&mut errors, "sink", "can't be blank"),
        None => {}
        Some(d) => cast_destination(&mut s, d, &mut errors),
    }
    cast_sink_fields(&mut s, params, &mut errors);
    apply_sink_patch(&mut s, patch, &mut errors);
    add_sink_rule_errors(&s, &mut errors);
    if !errors.is_empty() {
        return Resp::validation(Value::Object(errors));
    }
    if let Err(r) = check_sink_constraints(db, &s, creating) {
        return r;
    }
    store_sink(db, s, existing)
}

/// The destination's endpoint, path and batch flag, or their changeset errors.
fn cast_destination(s: &mut Sink, d: &Dest, errors: &mut Map<String, Value>) {
    match d.endpoint_id {
        Some(id) => s.endpoint_id = id,
        None => add_nested_err(errors, "sink", "http_endpoint_id", "can't be blank"),
    }
    match &d.path {
        Value::Null => s.endpoint_path = None,
        Value::String(p) if p.is_empty() => s.endpoint_path = None,
        Value::String(p) if p.len() <= 2000 && path_re().is_match(p) => {
            s.endpoint_path = Some(p.clone())
        }
        _ => add_nested_err(
            errors,
            "sink",
            "http_endpoint_path",
            "must be a valid URL path or empty",
        ),
    }
    match &d.batch {
        Value::Bool(b) => s.batch = *b,
        Value::String(b) if b == "true" || b == "false" => s.batch = b == "true",
        _ => add_nested_err(errors, "sink", "batch", "is invalid"),
    }
}

/// The plain fields the changeset casts from the body: enums, actions, message grouping,
/// annotations.
fn cast_sink_fields(s: &mut Sink, params: &Map<String, Value>, errors: &mut Map<String, Value>) {
    one_of(
        errors,
        params,
        "status",
        &["active", "paused", "disabled"],
        &mut s.status,
    );
    one_of(
        errors,
        params,
        "load_shedding_policy",
        &["pause_on_full", "discard_on_full"],
        &mut s.load_shedding_policy,
    );
    one_of(
        errors,
        params,
        "timestamp_format",
        &["iso8601", "unix_microsecond"],
        &mut s.timestamp_format,
    );
    if let Some(v) = params.get("actions") {
        match string_list(v) {
            Some(l)
                if l.iter()
                    .all(|a| ["insert", "update", "delete"].contains(&a.as_str())) =>
            {
                s.actions = l
            }
            _ => add_err(errors, "actions", "is invalid"),
        }
    }
    if let Some(v) = params.get("message_grouping") {
        match v {
            Value::Bool(b) => s.message_grouping = *b,
            Value::String(b) if b == "true" || b == "false" => s.message_grouping = b == "true",
            _ => add_err(errors, "message_grouping", "is invalid"),
        }
    }
    if let Some(v) = params.get("annotations") {
        match v {
            Value::Object(_) => s.annotations = v.clone(),
            _ => add_err(errors, "annotations", "is invalid"),
        }
    }
}

/// What [`parse_sink`] parsed: batch size, retries, source, tables, function references.
fn apply_sink_patch(s: &mut Sink, patch: SinkPatch, errors: &mut Map<String, Value>) {
    if let Some(n) = patch.batch_size {
        s.batch_size = n;
    }
    if let Some(n) = patch.max_retry_count {
        if n == 0 {
            add_err(errors, "max_retry_count", "must be greater than 0");
        }
        s.max_retry_count = Some(n);
    }
    if let Some(src) = patch.source {
        s.source = src;
    }
    if !patch.source_errors.is_empty() {
        errors.insert("source".to_string(), Value::Object(patch.source_errors));
    }
    if let Some(t) = patch.tables {
        s.tables = t;
    }
    for (slot, f) in &patch.functions {
        match *slot {
            "filter" => s.filter = *f,
            "transform" => s.transform = *f,
            "routing" => s.routing = *f,
            _ => s.enrichment = *f,
        }
    }
}

/// Rules across fields of the changed sink.
fn add_sink_rule_errors(s: &Sink, errors: &mut Map<String, Value>) {
    // Guessed message: grouping columns need message grouping.
    if !s.message_grouping
        && s.tables.iter().any(|t| {
            !t.get("group_column_names")
                .unwrap_or(&Value::Null)
                .is_null()
        })
    {
        add_err(
            errors,
            "tables",
            "group_column_names cannot be set when message_grouping is false",
        );
    }
    // Guessed message: enrichment needs exactly one included table.
    if s.enrichment.is_some() && s.source.include_tables.as_ref().map(Vec::len) != Some(1) {
        add_err(
            errors,
            "enrichment_id",
            "enrichment functions require exactly one table in source.include_tables",
        );
    }
}

/// The database level: the function-type trigger, check constraints, the unique index.
fn check_sink_constraints(db: &Db, s: &Sink, creating: bool) -> Result<(), Resp> {
    for (slot, id) in [
        ("filter", s.filter),
        ("transform", s.transform),
        ("routing", s.routing),
        ("enrichment", s.enrichment),
    ] {
        if let Some(id) = id {
            let kind = db
                .functions
                .iter()
                .find(|f| f.id == id)
                .map(|f| f.kind.as_str());
            if kind != Some(slot) {
                // The function-type trigger raises; Ecto does not map it: a crash.
                return Err(Resp::crash());
            }
        }
    }
    if serde_json::to_vec(&s.annotations).map_or(0, |v| v.len()) > 8192 {
        return Err(Resp::validation(
            json!({"annotations": ["annotations size limit exceeded (8192 bytes)"]}),
        ));
    }
    if !s.batch && s.batch_size != 1 {
        return Err(Resp::validation(
            json!({"batch_size": ["batch_size must be 1 when batch is false for webhook sinks"]}),
        ));
    }
    if db
        .sink_names
        .get(&s.name)
        .is_some_and(|&i| db.sinks[i].id != s.id)
    {
        if creating {
            return Err(Resp::validation(
                json!({"name": ["has already been taken"]}),
            ));
        }
        // Update has no unique_constraint: the constraint error is raised.
        return Err(Resp::crash());
    }
    Ok(())
}

/// Store the created (`existing` is `None`) or changed sink; its rendering.
fn store_sink(db: &mut Db, s: Sink, existing: Option<usize>) -> Resp {
    match existing {
        Some(i) => {
            let renamed = db.sinks[i].name != s.name;
            db.sinks[i] = s;
            if renamed {
                db.reindex_sinks();
            }
            Resp::ok(db.render_sink(&db.sinks[i], false))
        }
        None => {
            db.sinks.push(s);
            let last = db.sinks.len() - 1;
            db.sink_names.insert(db.sinks[last].name.clone(), last);
            Resp::ok(db.render_sink(&db.sinks[last], false))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// backfills

const BACKFILL_STATES: [&str; 5] = ["active", "paused", "completed", "cancelled", "failed"];

fn valid_transitions(from: &str) -> &'static [&'static str] {
    match from {
        "active" => &["paused", "completed", "failed", "cancelled"],
        "paused" => &["active", "cancelled"],
        _ => &[],
    }
}

pub(crate) fn table_in_source(src: &Source, table: &str) -> bool {
    let schema = table.split('.').next().unwrap_or("");
    if let Some(l) = &src.include_tables {
        return l.iter().any(|t| t == table);
    }
    if let Some(l) = &src.exclude_tables {
        if l.iter().any(|t| t == table) {
            return false;
        }
    }
    if let Some(l) = &src.include_schemas {
        return l.iter().any(|s| s == schema);
    }
    if let Some(l) = &src.exclude_schemas {
        return !l.iter().any(|s| s == schema);
    }
    true
}

fn create_backfill(db: &mut Db, sink: &str, params: &Map<String, Value>) -> Resp {
    let Some(si) = find_sink(db, sink) else {
        return Resp::not_found("consumer");
    };
    let mut table: Option<String> = None;
    let mut state = "active".to_string();
    for key in sorted_keys(params) {
        let v = &params[&key];
        match key.as_str() {
            "table" => match v.as_str() {
                Some(t) => table = Some(t.to_string()),
                None => return Resp::parser("Table reference is required"),
            },
            "state" => match v.as_str() {
                Some(st @ ("active" | "paused")) => state = st.to_string(),
                _ => return Resp::validation(json!({"state": ["is invalid"]})),
            },
            _ => return Resp::parser(format!("Unknown field: {key}")),
        }
    }
    let sink = &db.sinks[si];
    let table = match table {
        Some(t) => {
            let n = normalize_table(&t);
            if !db.tables.contains(&n) {
                return Resp::parser(format!("Table {t} not found"));
            }
            if !table_in_source(&sink.source, &n) {
                return Resp::parser(format!("Table {t} not in sink's source configuration"));
            }
            n
        }
        None => match sink.source.include_tables.as_deref() {
            Some([only]) => only.clone(),
            _ => return Resp::parser("Table reference is required"),
        },
    };
    let sink_id = sink.id;
    if db.backfills.iter().any(|b| {
        b.sink_id == sink_id && b.table == table && (b.state == "active" || b.state == "paused")
    }) {
        return Resp::validation(json!({"sink_consumer_id": ["already has an active backfill"]}));
    }
    let mut b = Backfill::new(
        sink_id,
        table,
        &state,
        db.backfill_rows,
        db.backfill_rows_per_sec,
    );
    if db.delivery {
        b.progress = Some(Default::default());
    }
    let out = db.render_backfill(&b);
    db.backfills.push(b);
    Resp::ok(out)
}

fn update_backfill(db: &mut Db, sink: &str, id: &str, params: &Map<String, Value>) -> Resp {
    let Some(si) = find_sink(db, sink) else {
        return Resp::not_found("consumer");
    };
    let Some(uuid) = ecto_uuid(id) else {
        return Resp::detail(400, "Bad Request");
    };
    let sink_id = db.sinks[si].id;
    let Some(bi) = db.backfills.iter().position(|b| b.id == uuid) else {
        return Resp::not_found("backfill");
    };
    if db.backfills[bi].sink_id != sink_id {
        // The controller's `true <- ...` guard hands `false` to the fallback plug: a crash.
        return Resp::crash();
    }
    let mut new_state: Option<String> = None;
    for key in sorted_keys(params) {
        match key.as_str() {
            "state" => match params[&key].as_str() {
                Some(s) if BACKFILL_STATES.contains(&s) => new_state = Some(s.to_string()),
                _ => return Resp::validation(json!({"state": ["is invalid"]})),
            },
            _ => return Resp::parser(format!("Unknown field: {key}")),
        }
    }
    if let Some(to) = new_state {
        let from = db.backfills[bi].state.clone();
        if to != from {
            let valid = valid_transitions(&from);
            if !valid.contains(&to.as_str()) {
                let list = if valid.is_empty() {
                    "none".to_string()
                } else {
                    valid.join(", ")
                };
                return Resp::validation(json!({"state": [format!(
                    "Invalid state transition from {from} to {to}. Valid transitions: {list}"
                )]}));
            }
            db.backfills[bi].set_state(&to, Instant::now());
        }
    }
    Resp::ok(db.render_backfill(&db.backfills[bi]))
}

// ---------------------------------------------------------------------------------------------
// config apply / plan (functions only)

fn yaml_str(m: &serde_norway::Mapping, key: &str) -> Option<Result<String, ()>> {
    m.get(serde_norway::Value::String(key.to_string()))
        .map(|v| match v {
            serde_norway::Value::String(s) => Ok(s.clone()),
            serde_norway::Value::Null => Err(()),
            _ => Err(()),
        })
}

fn config_apply(db: &mut Db, params: &Map<String, Value>, apply: bool) -> Resp {
    let parsed = match parse_config_functions(db, params) {
        Ok(parsed) => parsed,
        Err(r) => return r,
    };
    let changes = store_functions(db, parsed, apply);
    if !apply {
        // Guessed shape for the dry run.
        return Resp::ok(json!({ "changes": changes }));
    }
    let mut resources = vec![db.render_database(true)];
    resources.extend(db.functions.iter().map(Db::render_function));
    resources.extend(db.endpoints.iter().map(|e| db.render_endpoint(e)));
    resources.extend(db.sinks.iter().map(|s| db.render_sink(s, false)));
    Resp::ok(json!({ "resources": resources }))
}

/// The functions of a config apply or plan body (`{"yaml": ...}`), or Sequin's refusal.
fn parse_config_functions(db: &Db, params: &Map<String, Value>) -> Result<Vec<Function>, Resp> {
    // `def apply(conn, %{"yaml" => yaml})`: no other clause → Phoenix.ActionClauseError (400).
    let Some(yaml) = params.get("yaml").and_then(Value::as_str) else {
        return Err(Resp::detail(400, "Bad Request"));
    };
    let doc: serde_norway::Value = serde_norway::from_str(yaml)
        .map_err(|e| Resp::summary(400, format!("Invalid YAML: {e}")))?;
    let top = match doc {
        serde_norway::Value::Null => serde_norway::Mapping::new(),
        serde_norway::Value::Mapping(m) => m,
        _ => {
            return Err(Resp::summary(
                400,
                "Invalid YAML: expected a map at the top level",
            ))
        }
    };
    let has = |k: &str| top.contains_key(serde_norway::Value::String(k.to_string()));
    if has("functions") && has("transforms") {
        return Err(Resp::crash());
    }
    for k in top.keys() {
        let k = k.as_str().unwrap_or("");
        if k != "functions" {
            // The emulator only models the `functions:` section.
            return Err(Resp::parser(format!(
                "Emulator: config section `{k}` is not supported by the emulator (only `functions:`)"
            )));
        }
    }
    let items = match top.get(serde_norway::Value::String("functions".into())) {
        None | Some(serde_norway::Value::Null) => Vec::new(),
        Some(serde_norway::Value::Sequence(s)) => s.clone(),
        Some(_) => {
            return Err(Resp::summary(
                400,
                "Error creating functions: `functions` must be a list",
            ))
        }
    };
    items.iter().map(|item| parse_function(db, item)).collect()
}

/// One entry of the `functions:` list.
fn parse_function(db: &Db, item: &serde_norway::Value) -> Result<Function, Resp> {
    let Some(m) = item.as_mapping() else {
        return Err(Resp::summary(
            400,
            "Error creating function: each function must be a map",
        ));
    };
    let name = match yaml_str(m, "name") {
        Some(Ok(n)) if !n.is_empty() => n,
        _ => {
            return Err(Resp::summary(
                400,
                "Error creating function: name is required",
            ))
        }
    };
    let err = |msg: &str| Resp::summary(400, format!("Error creating function '{name}': {msg}"));
    for k in m.keys() {
        let k = k.as_str().unwrap_or("");
        if !["name", "type", "description", "code", "sink_type", "id"].contains(&k) {
            return Err(err(&format!("unknown key '{k}'")));
        }
    }
    let kind = match yaml_str(m, "type") {
        Some(Ok(t)) if ["filter", "transform", "routing", "enrichment"].contains(&t.as_str()) => t,
        _ => {
            return Err(err(
                "type must be one of filter, transform, routing, enrichment",
            ))
        }
    };
    if !db.functions_enabled {
        return Err(functions_disabled(db, &name, &kind));
    }
    let description = match yaml_str(m, "description") {
        None => None,
        Some(Ok(d)) => Some(d),
        Some(Err(())) => return Err(err("description must be a string")),
    };
    let code = match yaml_str(m, "code") {
        Some(Ok(c)) if !c.trim().is_empty() => c,
        _ => return Err(err("code is required")),
    };
    let def = match kind.as_str() {
        "filter" => Some("def filter("),
        "transform" => Some("def transform("),
        "routing" => Some("def route("),
        _ => None,
    };
    if let Some(def) = def {
        if !code.contains(def) {
            return Err(err(&format!(
                "code must define `{})`",
                def.trim_end_matches('(')
            )));
        }
    }
    Ok(Function {
        id: Uuid::new_v4(),
        name,
        kind,
        description,
        code,
    })
}

/// Create or update `parsed` (only when `apply`); the change each one is (or would be).
fn store_functions(db: &mut Db, parsed: Vec<Function>, apply: bool) -> Vec<Value> {
    let mut changes = Vec::new();
    for f in parsed {
        match db.functions.iter().position(|g| g.name == f.name) {
            Some(i) => {
                let g = &db.functions[i];
                let same = g.kind == f.kind && g.code == f.code && g.description == f.description;
                changes.push(json!({
                    "resource_type": "function",
                    "name": f.name,
                    "action": if same { "none" } else { "update" }
                }));
                if apply {
                    let id = db.functions[i].id;
                    db.functions[i] = Function { id, ..f };
                    // Sequin updates (and restarts for) every existing function it applies.
                    db.function_updates.push(id);
                }
            }
            None => {
                changes
                    .push(json!({"resource_type": "function", "name": f.name, "action": "create"}));
                if apply {
                    db.functions.push(f);
                }
            }
        }
    }
    changes
}

/// An account without the `function_transforms` feature: the function's changeset gets an
/// error on `type`, which `YamlLoader` reports as a 400 with the pretty-printed errors map.
/// Apply and plan both go through it, so both refuse; nothing is stored.
// Sequin: lib/sequin/consumers/filter_function.ex (and transform_, routing_,
// enrichment_function.ex), lib/sequin/yaml_loader.ex (create_function/update_function)
fn functions_disabled(db: &Db, name: &str, kind: &str) -> Resp {
    let message = match kind {
        "filter" => "Filter functions",
        "transform" => "Transform functions",
        "enrichment" => "Enrichment functions",
        _ => "Functions",
    };
    let verb = if db.functions.iter().any(|f| f.name == name) {
        "updating"
    } else {
        "creating"
    };
    // `inspect(errors, pretty: true)`: the maps break over lines, the one-string list
    // does not (the layout is the emulator's reading of Inspect, the words are Sequin's).
    Resp::summary(
        400,
        format!(
            "Error {verb} function '{name}': %{{\n  function: %{{\n    type: [\"{message} are not enabled. Talk to the Sequin team to enable them.\"]\n  }}\n}}"
        ),
    )
}

/// `GET /api/config/export` (`YamlController.export`): every resource of the account as
/// sequin.yaml in `{"yaml": ...}`, grouped by type (`databases`, `functions`,
/// `http_endpoints`, `sinks`; a type without resources is absent), each resource as
/// `Transforms.to_external` renders it, without `id`. Secrets are obfuscated: real Sequin
/// shows them only for `?show-sensitive=true`, which the emulator ignores, so the database
/// password is never in this answer. Rendered with serde_norway, not Ymlr: the same
/// document, not the same text (key order, quoting). Left out because the emulator does
/// not model them: change retentions, a database's `primary`, a routing function's
/// `sink_type`.
// Sequin: lib/sequin_web/controllers/yaml_controller.ex, lib/sequin/transforms/transforms.ex
fn config_export(db: &Db) -> Resp {
    fn without_id(mut resource: Value) -> Value {
        if let Some(map) = resource.as_object_mut() {
            map.remove("id");
        }
        resource
    }
    let database = db.render_database(false);
    let slot = &database["replication_slots"][0];
    let mut sections = Map::new();
    sections.insert(
        "databases".to_string(),
        json!([{
            "name": database["name"],
            "username": database["username"],
            "password": database["password"],
            "hostname": database["hostname"],
            "database": database["database"],
            "slot": { "name": slot["slot_name"] },
            "publication": { "name": slot["publication_name"] },
            "port": database["port"],
            "pool_size": database["pool_size"],
            "ssl": database["ssl"],
            "ipv6": database["ipv6"],
            "use_local_tunnel": database["use_local_tunnel"],
        }]),
    );
    let functions: Vec<Value> = db
        .functions
        .iter()
        .map(|f| json!({"name": f.name, "description": f.description, "type": f.kind, "code": f.code}))
        .collect();
    let endpoints: Vec<Value> = db
        .endpoints
        .iter()
        .map(|e| without_id(db.render_endpoint(e)))
        .collect();
    let sinks: Vec<Value> = db
        .sinks
        .iter()
        .map(|s| without_id(db.render_sink(s, false)))
        .collect();
    for (section, resources) in [
        ("functions", functions),
        ("http_endpoints", endpoints),
        ("sinks", sinks),
    ] {
        if !resources.is_empty() {
            sections.insert(section.to_string(), Value::Array(resources));
        }
    }
    match serde_norway::to_string(&Value::Object(sections)) {
        Ok(yaml) => Resp::ok(json!({ "yaml": yaml })),
        Err(_) => Resp::crash(),
    }
}
