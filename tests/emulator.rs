//! Real-HTTP tests of the Sequin API emulator: one test, or one case of a table, per rule of
//! Sequin's Management API that the emulator models.

use reqwest::{Client, Method, StatusCode};
use sequin_emulator::{
    start, EmulatorConfig, EmulatorHandle, Faults, InjectedResponse, RouteFaults,
};
use serde_json::{json, Value};
use std::time::Duration;

const TOKEN: &str = "test-token";

async fn emu_with(config: EmulatorConfig) -> EmulatorHandle {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    start(config, listener).await
}

fn config() -> EmulatorConfig {
    EmulatorConfig {
        token: TOKEN.to_string(),
        database: "app".to_string(),
        tables: vec!["public.notifications".into(), "public.users".into()],
        ..EmulatorConfig::default()
    }
}

async fn emu() -> EmulatorHandle {
    emu_with(config()).await
}

struct Api {
    base: String,
    http: Client,
}

impl Api {
    fn new(h: &EmulatorHandle) -> Self {
        Api {
            base: h.api_url(),
            http: Client::new(),
        }
    }

    async fn req(&self, method: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.base, path))
            .header("Authorization", format!("Bearer {TOKEN}"))
            .header("Accept", "application/json");
        if let Some(b) = body {
            rb = rb
                .header("Content-Type", "application/json")
                .body(b.to_string());
        }
        let resp = rb.send().await.expect("send");
        let status = resp.status();
        let text = resp.text().await.expect("body");
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }
    async fn get(&self, path: &str) -> (StatusCode, Value) {
        self.req(Method::GET, path, None).await
    }
    async fn post(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::POST, path, Some(body)).await
    }
    async fn put(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::PUT, path, Some(body)).await
    }
    async fn patch(&self, path: &str, body: Value) -> (StatusCode, Value) {
        self.req(Method::PATCH, path, Some(body)).await
    }
    async fn delete(&self, path: &str) -> (StatusCode, Value) {
        self.req(Method::DELETE, path, None).await
    }

    async fn endpoint(&self, name: &str) -> Value {
        let (s, b) = self
            .post(
                "/destinations/http_endpoints",
                json!({"name": name, "url": "https://hooks.example.com/in"}),
            )
            .await;
        assert_eq!(s, 200, "{b}");
        b
    }

    async fn sink(&self, name: &str, endpoint: &str) -> Value {
        let (s, b) = self.post("/sinks", sink_body(name, endpoint)).await;
        assert_eq!(s, 200, "{b}");
        b
    }

    async fn apply_filter(&self, name: &str) {
        let yaml = format!(
            "functions:\n  - name: \"{name}\"\n    type: \"filter\"\n    description: \"d\"\n    code: |-\n      def filter(action, record, changes, metadata) do\n        true\n      end\n"
        );
        let (s, b) = self.post("/config/apply", json!({ "yaml": yaml })).await;
        assert_eq!(s, 200, "{b}");
    }
}

fn sink_body(name: &str, endpoint: &str) -> Value {
    json!({
        "name": name,
        "database": "app",
        "source": {"include_tables": ["public.notifications"]},
        "destination": {"type": "webhook", "http_endpoint": endpoint, "batch": false},
        "batch_size": 1,
        "annotations": {"user_id": "42"}
    })
}

fn summary(b: &Value) -> &str {
    b["summary"].as_str().unwrap_or("")
}

fn unknown_field(b: &Value, field: &str) {
    assert_eq!(
        b,
        &json!({"summary": format!("Unknown field: {field}"), "validation_errors": {}, "code": null})
    );
}

// ---------------------------------------------------------------- auth and pipeline

/// What a refused request must get back, besides its status.
enum Answer {
    /// Exactly this JSON body.
    Body(Value),
    /// The value at this JSON pointer of the body, exactly.
    At(&'static str, Value),
    /// An array at this JSON pointer.
    ArrayAt(&'static str),
    /// An object at this JSON pointer.
    ObjectAt(&'static str),
    Summary(&'static str),
    SummaryStartsWith(&'static str),
    SummaryContains(&'static str),
    /// A body that is not JSON: only its content type is checked.
    ContentType(&'static str),
    /// Only the status.
    Status,
}

/// One request the emulator refuses, as Sequin does, and its answer.
struct Refusal {
    case: &'static str,
    method: Method,
    path: &'static str,
    /// Exactly the headers sent (none are added).
    headers: Vec<(&'static str, String)>,
    body: Option<String>,
    status: u16,
    answer: Answer,
}

fn bearer() -> (&'static str, String) {
    ("Authorization", format!("Bearer {TOKEN}"))
}

fn accept_json() -> (&'static str, String) {
    ("Accept", "application/json".to_string())
}

/// What a well-behaved client sends with a JSON body.
fn json_headers() -> Vec<(&'static str, String)> {
    vec![
        bearer(),
        accept_json(),
        ("Content-Type", "application/json".to_string()),
    ]
}

fn refusal(
    case: &'static str,
    method: Method,
    path: &'static str,
    headers: Vec<(&'static str, String)>,
    body: Option<Value>,
    status: u16,
    answer: Answer,
) -> Refusal {
    Refusal {
        case,
        method,
        path,
        headers,
        body: body.map(|b| b.to_string()),
        status,
        answer,
    }
}

/// Every refusal of the API pipeline (authentication, content negotiation, parsing, routing)
/// and of single requests (lookups, uniqueness, changesets). The emulator has endpoint `e1`
/// and sink `s1` when they are sent.
#[rustfmt::skip]
fn refusals() -> Vec<Refusal> {
    use Answer::*;
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    const DELETE: Method = Method::DELETE;
    let new_sink = |field: &str, value: Value| {
        let mut body = sink_body("s2", "e1");
        body[field] = value;
        Some(body)
    };
    let batched_sink = |size: Value| {
        let mut body = sink_body("s2", "e1");
        body["destination"]["batch"] = json!(true);
        body["batch_size"] = size;
        Some(body)
    };
    let new_endpoint = |name: Value| {
        Some(json!({"name": name, "url": "https://x.example.com"}))
    };
    let unknown = |field: &str| {
        Body(json!({"summary": format!("Unknown field: {field}"), "validation_errors": {}, "code": null}))
    };
    let batch_size = "batch_size must be a positive integer <= 1000";
    // (case, method, path, headers, body, status, answer)
    vec![
        // --- authentication
        refusal("no Authorization header", GET, "/sinks", vec![], None, 401,
            Summary("Please provide a valid API token in the Authorization header.\n\nAPI tokens are generated in the Sequin console (console.sequin.io) and should be included in the Authorization header of your request. For example:\n\nAuthorization: Bearer <your-api-token>\n\n")),
        refusal("a lower-case bearer prefix", GET, "/sinks",
            vec![("Authorization", format!("bearer {TOKEN}"))], None, 401,
            SummaryContains("Ensure your Authorization value is prefixed with \"Bearer\".")),
        refusal("two Authorization headers", GET, "/sinks", vec![bearer(), bearer()], None, 401,
            SummaryStartsWith("Please provide exactly one Authorization header")),
        refusal("an unknown token", GET, "/sinks",
            vec![("Authorization", "Bearer nope".to_string())], None, 401,
            Summary("The API token you provided is invalid or has expired. Your token may have been revoked or deleted in the Sequin console.\n")),
        // --- content negotiation and parsing
        refusal("a POST without a JSON content type, even with an empty body", POST,
            "/sinks/s1/backfills", vec![bearer()], None, 400,
            Body(json!({"summary": "Content-Type: application/json is required"}))),
        refusal("an Accept that excludes JSON", GET, "/sinks",
            vec![bearer(), ("Accept", "text/html".to_string())], None, 406, Status),
        refusal("a body that is not JSON", POST, "/sinks", json_headers(), None, 400,
            Body(json!({"errors": {"detail": "Bad Request"}})))
            .raw_body("{not json"),
        // --- routing
        refusal("an unrouted path", GET, "/nope", vec![bearer(), accept_json()], None, 404,
            Body(json!({"errors": {"detail": "Not Found"}}))),
        refusal("a method the path does not route", POST, "/postgres_databases",
            json_headers(), Some(json!({})), 404, Status),
        refusal("an unrouted path without a JSON Accept (rendered as HTML)", GET, "/nope",
            vec![bearer()], None, 404, ContentType("text/html")),
        refusal("query parameters on a POST (unknown fields)", POST,
            "/destinations/http_endpoints?force=true", json_headers(),
            Some(json!({"name": "e2", "url": "https://x.example.com"})), 422,
            unknown("force")),
        // --- lookups
        refusal("a missing endpoint", GET, "/destinations/http_endpoints/nope",
            vec![bearer(), accept_json()], None, 404,
            Body(json!({"summary": "Not found: No `http endpoint` found matching the provided ID or name"}))),
        refusal("a missing sink", GET, "/sinks/nope", vec![bearer(), accept_json()], None, 404,
            Summary("Not found: No `consumer` found matching the provided ID or name")),
        refusal("deleting a missing sink", DELETE, "/sinks/nope",
            vec![bearer(), accept_json()], None, 404, Status),
        refusal("a sink on an unknown database", POST, "/sinks", json_headers(),
            new_sink("database", json!("other")), 404,
            Summary("Not found: No `database` found matching the provided ID or name")),
        // --- single-request validation
        refusal("an endpoint with a null url (Sequin crashes)", POST,
            "/destinations/http_endpoints", json_headers(), Some(json!({"name": "e2", "url": null})), 500,
            Body(json!({"errors": {"detail": "Internal Server Error"}}))),
        refusal("an endpoint name that is taken", POST, "/destinations/http_endpoints",
            json_headers(), Some(json!({"name": "e1", "url": "https://other.example.com"})), 422,
            Body(json!({"summary": "Validation failed", "validation_errors": {"name": ["has already been taken"]}}))),
        refusal("a sink name that is taken", POST, "/sinks", json_headers(),
            Some(sink_body("s1", "e1")), 422,
            At("/validation_errors", json!({"name": ["has already been taken"]}))),
        refusal("a sink without database and destination", POST, "/sinks", json_headers(),
            Some(json!({"name": "s2"})), 422,
            Body(json!({"summary": "Validation failed", "validation_errors": {
                "replication_slot_id": ["can't be blank"], "sink": ["can't be blank"]}}))),
        refusal("batch false with a batch size other than 1", POST, "/sinks", json_headers(),
            new_sink("batch_size", json!(10)), 422,
            Body(json!({"summary": "Validation failed", "validation_errors": {
                "batch_size": ["batch_size must be 1 when batch is false for webhook sinks"]}}))),
        refusal("a batch size of 0", POST, "/sinks", json_headers(), batched_sink(json!(0)), 422,
            Summary(batch_size)),
        refusal("a batch size of 1001", POST, "/sinks", json_headers(), batched_sink(json!(1001)), 422,
            Summary(batch_size)),
        refusal("a batch size as a string", POST, "/sinks", json_headers(), batched_sink(json!("5")), 422,
            Summary(batch_size)),
        refusal("a fractional batch size", POST, "/sinks", json_headers(), batched_sink(json!(1.5)), 422,
            Summary(batch_size)),
        refusal("the legacy `filters` field", POST, "/sinks", json_headers(),
            new_sink("filters", json!([{"column_name": "user_id", "operator": "=", "comparison_value": "42"}])),
            422, unknown("filters")),
        refusal("a sink with `health`", POST, "/sinks", json_headers(), new_sink("health", json!(1)),
            422, unknown("health")),
        refusal("a sink with `ack_wait_ms`", POST, "/sinks", json_headers(),
            new_sink("ack_wait_ms", json!(1)), 422, unknown("ack_wait_ms")),
        refusal("a sink with `max_memory_mb`", POST, "/sinks", json_headers(),
            new_sink("max_memory_mb", json!(1)), 422, unknown("max_memory_mb")),
        refusal("annotations that are not an object", POST, "/sinks", json_headers(),
            new_sink("annotations", json!("x")), 422, Status),
        refusal("annotations over 8192 bytes", POST, "/sinks", json_headers(),
            new_sink("annotations", json!({"big": "x".repeat(9000)})), 422,
            ArrayAt("/validation_errors/annotations")),
        refusal("both include_tables and exclude_tables", POST, "/sinks", json_headers(),
            new_sink("source", json!({"include_tables": ["public.notifications"], "exclude_tables": ["public.users"]})),
            422, ObjectAt("/validation_errors/source")),
        refusal("an empty include_tables", POST, "/sinks", json_headers(),
            new_sink("source", json!({"include_tables": []})), 422,
            ArrayAt("/validation_errors/source/include_tables")),
        refusal("an endpoint name with spaces and punctuation", POST, "/destinations/http_endpoints",
            json_headers(), new_endpoint(json!("bad name!")), 422,
            At("/validation_errors/name/0", json!("Can only contain alphanumeric characters, underscores, hyphens, or dots"))),
        refusal("an endpoint name of 256 characters", POST, "/destinations/http_endpoints",
            json_headers(), new_endpoint(json!("a".repeat(256))), 422, Status),
        refusal("an endpoint without a name", POST, "/destinations/http_endpoints", json_headers(),
            Some(json!({"url": "https://x.example.com"})), 422,
            At("/validation_errors/name", json!(["can't be blank"]))),
    ]
}

impl Refusal {
    /// Send `body` as it is (not as JSON).
    fn raw_body(mut self, body: &str) -> Refusal {
        self.body = Some(body.to_string());
        self
    }
}

/// Send `refusal`; what is wrong with the answer, if anything.
async fn check_refusal(http: &Client, base: &str, refusal: &Refusal) -> Option<String> {
    let mut request = http.request(refusal.method.clone(), format!("{base}{}", refusal.path));
    for (name, value) in &refusal.headers {
        request = request.header(*name, value);
    }
    if let Some(body) = &refusal.body {
        request = request.body(body.clone());
    }
    let response = request.send().await.expect("send");
    let status = response.status().as_u16();
    let content_type = response
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string();
    let text = response.text().await.expect("body");
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::String(text));
    let answered = format!("answered {status} {content_type} {body}");
    if status != refusal.status {
        return Some(format!("expected status {}, {answered}", refusal.status));
    }
    let wrong = match &refusal.answer {
        Answer::Body(expected) => body != *expected,
        Answer::At(pointer, expected) => body.pointer(pointer) != Some(expected),
        Answer::ArrayAt(pointer) => !body.pointer(pointer).is_some_and(Value::is_array),
        Answer::ObjectAt(pointer) => !body.pointer(pointer).is_some_and(Value::is_object),
        Answer::Summary(expected) => summary(&body) != *expected,
        Answer::SummaryStartsWith(prefix) => !summary(&body).starts_with(prefix),
        Answer::SummaryContains(part) => !summary(&body).contains(part),
        Answer::ContentType(prefix) => !content_type.starts_with(prefix),
        Answer::Status => false,
    };
    wrong.then(|| match &refusal.answer {
        Answer::Body(expected) => format!("expected body {expected}, {answered}"),
        Answer::At(pointer, expected) => format!("expected {expected} at {pointer}, {answered}"),
        Answer::ArrayAt(pointer) => format!("expected an array at {pointer}, {answered}"),
        Answer::ObjectAt(pointer) => format!("expected an object at {pointer}, {answered}"),
        Answer::Summary(s) | Answer::SummaryStartsWith(s) | Answer::SummaryContains(s) => {
            format!("expected a summary like {s:?}, {answered}")
        }
        Answer::ContentType(prefix) => format!("expected content type {prefix}, {answered}"),
        Answer::Status => unreachable!("a status-only answer is right once its status is"),
    })
}

#[tokio::test]
async fn each_refused_request_gets_sequins_status_and_answer_and_changes_nothing() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let state = (h.endpoints(), h.sinks());

    let mut failures = Vec::new();
    for refusal in refusals() {
        if let Some(wrong) = check_refusal(&api.http, &api.base, &refusal).await {
            failures.push(format!(
                "{} ({} {}): {wrong}",
                refusal.case, refusal.method, refusal.path
            ));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
    // A refused request changes nothing: no endpoint, sink or backfill was made or altered.
    assert_eq!((h.endpoints(), h.sinks()), state);
    assert!(h.backfills().is_empty());
}

#[tokio::test]
async fn legacy_table_field_needs_database_and_sets_include_tables() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let mut body = sink_body("s1", "e1");
    body.as_object_mut().unwrap().remove("source");
    body["table"] = json!("users");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["source"]["include_tables"], json!(["public.users"]));
    let (s, _) = api
        .patch("/sinks/s1", json!({"table": "notifications"}))
        .await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn faults_before_the_operation_do_not_consume_fail_after_next() {
    let h = emu().await;
    let mut f = Faults::default();
    f.all.rate_limit_retry_after = Some(1);
    f.all.fail_after_next = vec![InjectedResponse {
        status: 502,
        body: json!({}),
    }];
    h.set_faults(f.clone());
    let api = Api::new(&h);
    assert_eq!(api.get("/sinks").await.0, 429);
    assert_eq!(h.faults().all.fail_after_next.len(), 1);
    f.all.rate_limit_retry_after = None;
    h.set_faults(f);
    assert_eq!(api.get("/sinks").await.0, 502);
    assert_eq!(api.get("/sinks").await.0, 200);
}

#[tokio::test]
async fn list_databases_returns_configured_name() {
    let h = emu().await;
    let api = Api::new(&h);
    let (s, b) = api.get("/postgres_databases").await;
    assert_eq!(s, 200);
    assert_eq!(b["data"][0]["name"], "app");
    assert!(b["data"][0]["id"].is_string());
}

// ---------------------------------------------------------------- endpoints

#[tokio::test]
async fn create_endpoint_is_200_and_obfuscates_encrypted_headers() {
    let h = emu().await;
    let api = Api::new(&h);
    let (s, b) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": "u-42-endpoint", "url": "https://hooks.example.com:443/sequin",
                   "headers": {"X-Source": "sequin"},
                   "encrypted_headers": {"Authorization": "Bearer 3c1f0000000000000000000000e9", "K": "short"}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["url"], "https://hooks.example.com/sequin");
    assert_eq!(b["headers"], json!({"X-Source": "sequin"}));
    assert_eq!(
        b["encrypted_headers"]["Authorization"],
        "Bea********************9"
    );
    assert_eq!(b["encrypted_headers"]["K"], "*****");
    assert!(uuid::Uuid::parse_str(b["id"].as_str().unwrap()).is_ok());
}

#[tokio::test]
async fn endpoint_url_rules() {
    let h = emu().await;
    let api = Api::new(&h);
    let cases = [
        (
            "hooks.example.com/x",
            json!({"scheme": ["can't be blank"], "host": ["can't be blank"]}),
        ),
        ("ftp://hooks.example.com", json!({"scheme": ["is invalid"]})),
        (
            "https://bad_host.example.com",
            json!({"host": ["must be a valid hostname"]}),
        ),
        (
            "https://h.example.com:70000",
            json!({"port": ["must be less than 65536"]}),
        ),
    ];
    for (i, (url, errs)) in cases.iter().enumerate() {
        let (s, b) = api
            .post(
                "/destinations/http_endpoints",
                json!({"name": format!("e{i}"), "url": url}),
            )
            .await;
        assert_eq!(s, 422, "{url}");
        assert_eq!(b["validation_errors"], *errs, "{url}");
    }
    // userinfo dropped, non-default port kept
    let (s, b) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": "ok", "url": "http://user:pw@h.example.com:8080/p?q=1"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["url"], "http://h.example.com:8080/p?q=1");
}

#[tokio::test]
async fn headers_as_list_or_map_and_string_is_422() {
    let h = emu().await;
    let api = Api::new(&h);
    let (s, b) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": "e1", "url": "https://x.example.com",
                   "headers": [{"key": "A", "value": "1"}]}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["headers"], json!({"A": "1"}));
    let (s, b) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": "e2", "url": "https://x.example.com", "headers": "A: 1"}),
        )
        .await;
    assert_eq!(s, 422);
    assert_eq!(
        summary(&b),
        "Invalid headers configuration. Must be a list of key-value pairs."
    );
}

#[tokio::test]
async fn endpoint_unknown_field_is_422_and_ignored_fields_are_ignored() {
    let h = emu().await;
    let api = Api::new(&h);
    let (s, b) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": "e1", "url": "https://x.example.com", "foo": 1}),
        )
        .await;
    assert_eq!(s, 422);
    unknown_field(&b, "foo");
    let (s, b) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": "e1", "url": "https://x.example.com", "account_id": 7,
                   "id": "x", "inserted_at": "y", "updated_at": "z"}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_ne!(b["id"], "x");
}

#[tokio::test]
async fn endpoint_update_replaces_headers_wholesale() {
    let h = emu().await;
    let api = Api::new(&h);
    api.post(
        "/destinations/http_endpoints",
        json!({"name": "e1", "url": "https://x.example.com", "headers": {"A": "1", "B": "2"}}),
    )
    .await;
    let (s, b) = api
        .patch(
            "/destinations/http_endpoints/e1",
            json!({"headers": {"C": "3"}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["headers"], json!({"C": "3"}));
    assert_eq!(b["url"], "https://x.example.com");
    let (s, b) = api
        .put(
            "/destinations/http_endpoints/e1",
            json!({"name": "e1-renamed"}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["name"], "e1-renamed");
    let (s, _) = api.get("/destinations/http_endpoints/e1").await;
    assert_eq!(s, 404);
}

#[tokio::test]
async fn deleting_endpoint_in_use_is_400() {
    let h = emu().await;
    let api = Api::new(&h);
    let e = api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (s, b) = api.delete("/destinations/http_endpoints/e1").await;
    assert_eq!(s, 400);
    assert_eq!(
        summary(&b),
        format!(
            "Cannot delete HTTP endpoint e1 ({}), as it is in use by 1 sink consumer(s)",
            e["id"].as_str().unwrap()
        )
    );
    assert_eq!(h.endpoints().len(), 1);
    let (s, _) = api.delete("/sinks/s1").await;
    assert_eq!(s, 200);
    let (s, b) = api.delete("/destinations/http_endpoints/e1").await;
    assert_eq!(s, 200);
    assert_eq!(b, json!({"id": e["id"], "deleted": true}));
}

#[tokio::test]
async fn uuid_looking_segment_is_treated_as_id() {
    let h = emu().await;
    let api = Api::new(&h);
    let e = api.endpoint("e1").await;
    let id = e["id"].as_str().unwrap().to_string();
    // by id: hyphenated, 32-hex and urn forms
    for seg in [id.clone(), id.replace('-', ""), format!("urn:uuid:{id}")] {
        let (s, b) = api
            .get(&format!("/destinations/http_endpoints/{seg}"))
            .await;
        assert_eq!(s, 200, "{seg}");
        assert_eq!(b["name"], "e1");
    }
    // a name that looks like a v4 UUID can be created but never fetched by name
    let fake = uuid::Uuid::new_v4().to_string();
    let (s, _) = api
        .post(
            "/destinations/http_endpoints",
            json!({"name": fake, "url": "https://x.example.com"}),
        )
        .await;
    assert_eq!(s, 200);
    let (s, _) = api
        .get(&format!("/destinations/http_endpoints/{fake}"))
        .await;
    assert_eq!(s, 404);
}

// ---------------------------------------------------------------- sinks

#[tokio::test]
async fn create_sink_shape_without_health_and_show_with_health() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.apply_filter("user-filter").await;
    let mut body = sink_body("s1", "e1");
    body["filter"] = json!("user-filter");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200, "{b}");
    assert!(b.get("health").is_none());
    assert_eq!(b["database"], "app");
    assert_eq!(b["status"], "active");
    assert_eq!(b["actions"], json!(["insert", "update", "delete"]));
    assert_eq!(
        b["source"],
        json!({"include_schemas": null, "exclude_schemas": null,
               "include_tables": ["public.notifications"], "exclude_tables": null})
    );
    assert_eq!(
        b["destination"],
        json!({"type": "webhook", "http_endpoint": "e1", "http_endpoint_path": null, "batch": false})
    );
    assert_eq!(b["filter"], "user-filter");
    assert_eq!(b["transform"], "none");
    assert_eq!(b["routing"], "none");
    assert_eq!(b["enrichment"], "none");
    assert_eq!(b["active_backfills"], json!([]));
    assert_eq!(b["max_retry_count"], Value::Null);
    assert_eq!(b["load_shedding_policy"], "pause_on_full");
    assert_eq!(b["timestamp_format"], "iso8601");
    assert_eq!(b["message_grouping"], true);
    assert_eq!(b["annotations"], json!({"user_id": "42"}));
    let (s, b) = api.get("/sinks/s1").await;
    assert_eq!(s, 200);
    assert_eq!(b["health"]["name"], "Consumer health");
    let (_, l) = api.get("/sinks").await;
    assert!(l["data"][0]["health"].is_object());
}

#[tokio::test]
async fn batch_defaults_to_true() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let mut body = sink_body("s1", "e1");
    body["destination"] = json!({"type": "webhook", "http_endpoint": "e1"});
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200);
    assert_eq!(b["destination"]["batch"], true);
    assert_eq!(b["batch_size"], 1);
}

#[tokio::test]
async fn http_endpoint_is_looked_up_by_name_only() {
    let h = emu().await;
    let api = Api::new(&h);
    let e = api.endpoint("e1").await;
    let (s, b) = api
        .post("/sinks", sink_body("s1", e["id"].as_str().unwrap()))
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        summary(&b),
        "Not found: No `http endpoint` found matching the provided ID or name"
    );
}

#[tokio::test]
async fn unknown_table_is_422_table_not_found() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let mut body = sink_body("s1", "e1");
    body["source"] = json!({"include_tables": ["public.nope"]});
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(
        summary(&b),
        "Table 'public.nope' not found in database 'app'"
    );
    // bare table name means public.<table>
    let mut body = sink_body("s1", "e1");
    body["source"] = json!({"include_tables": ["notifications"]});
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200);
    assert_eq!(
        b["source"]["include_tables"],
        json!(["public.notifications"])
    );
}

#[tokio::test]
async fn actions_must_be_subset() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let mut body = sink_body("s1", "e1");
    body["actions"] = json!(["insert", "read"]);
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(b["validation_errors"]["actions"], json!(["is invalid"]));
    let mut body = sink_body("s1", "e1");
    body["actions"] = json!(["insert"]);
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200);
    assert_eq!(b["actions"], json!(["insert"]));
}

#[tokio::test]
async fn max_retry_count_zero_is_422_and_null_is_ignored() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let mut body = sink_body("s1", "e1");
    body["max_retry_count"] = json!(0);
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(
        b["validation_errors"]["max_retry_count"],
        json!(["must be greater than 0"])
    );
    let mut body = sink_body("s1", "e1");
    body["max_retry_count"] = json!(-1);
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(
        summary(&b),
        "max_retry_count must be a non-negative integer"
    );
    let mut body = sink_body("s1", "e1");
    body["max_retry_count"] = json!(5);
    api.post("/sinks", body).await;
    let (s, b) = api
        .patch("/sinks/s1", json!({"max_retry_count": null}))
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["max_retry_count"], 5);
}

#[tokio::test]
async fn enum_fields_reject_unknown_values() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    for (k, v) in [
        ("status", "stopped"),
        ("load_shedding_policy", "drop"),
        ("timestamp_format", "rfc3339"),
    ] {
        let mut body = sink_body("s1", "e1");
        body[k] = json!(v);
        let (s, b) = api.post("/sinks", body).await;
        assert_eq!(s, 422, "{k}");
        assert_eq!(b["validation_errors"][k], json!(["is invalid"]));
    }
    let mut body = sink_body("s1", "e1");
    body["load_shedding_policy"] = json!("discard_on_full");
    body["status"] = json!("paused");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200);
    assert_eq!(b["load_shedding_policy"], "discard_on_full");
    assert_eq!(b["status"], "paused");
}

#[tokio::test]
async fn function_references_are_checked() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.apply_filter("user-filter").await;
    let mut body = sink_body("s1", "e1");
    body["filter"] = json!("");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(summary(&b), "Function '' not found.");
    let mut body = sink_body("s1", "e1");
    body["filter"] = json!("nope");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(summary(&b), "Function 'nope' not found.");
    // a filter function in the transform slot crashes
    let mut body = sink_body("s1", "e1");
    body["transform"] = json!("user-filter");
    let (s, _) = api.post("/sinks", body).await;
    assert_eq!(s, 500);
    let mut body = sink_body("s1", "e1");
    body["filter"] = json!("none");
    body["transform"] = Value::Null;
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200);
    assert_eq!(b["filter"], "none");
    assert!(h.sinks().len() == 1);
}

#[tokio::test]
async fn update_destination_without_known_type_is_500() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (s, _) = api
        .patch("/sinks/s1", json!({"destination": {"batch": true}}))
        .await;
    assert_eq!(s, 500);
    let (s, b) = api
        .patch(
            "/sinks/s1",
            json!({"destination": {"type": "webhook", "http_endpoint": "e1", "batch": true}, "batch_size": 50}),
        )
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["batch_size"], 50);
    assert_eq!(b["destination"]["batch"], true);
}

#[tokio::test]
async fn update_source_requires_database_in_body() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (s, b) = api
        .put(
            "/sinks/s1",
            json!({"source": {"include_tables": ["public.users"]}}),
        )
        .await;
    assert_eq!(s, 404);
    assert_eq!(
        summary(&b),
        "Not found: No `database` found matching the provided ID or name"
    );
    let (s, b) = api
        .put(
            "/sinks/s1",
            json!({"database": "app", "source": {"include_tables": ["public.users"]}}),
        )
        .await;
    assert_eq!(s, 200);
    assert_eq!(b["source"]["include_tables"], json!(["public.users"]));
    assert_eq!(b["annotations"], json!({"user_id": "42"}));
}

#[tokio::test]
async fn renaming_sink_to_taken_name_is_500() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    api.sink("s2", "e1").await;
    let (s, b) = api.patch("/sinks/s2", json!({"name": "s1"})).await;
    assert_eq!(s, 500);
    assert_eq!(b, json!({"errors": {"detail": "Internal Server Error"}}));
    let (s, b) = api.patch("/sinks/s2", json!({"name": "s3"})).await;
    assert_eq!(s, 200);
    assert_eq!(b["name"], "s3");
    assert!(b.get("health").is_none());
}

#[tokio::test]
async fn endpoint_path_is_validated_and_empty_is_null() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let mut body = sink_body("s1", "e1");
    body["destination"]["http_endpoint_path"] = json!("no-slash");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 422);
    assert_eq!(
        b["validation_errors"],
        json!({"sink": {"http_endpoint_path": ["must be a valid URL path or empty"]}})
    );
    let mut body = sink_body("s1", "e1");
    body["destination"]["http_endpoint_path"] = json!("");
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200);
    assert_eq!(b["destination"]["http_endpoint_path"], Value::Null);
}

#[tokio::test]
async fn sink_patch_is_partial_and_follows_endpoint_rename() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (s, b) = api.patch("/sinks/s1", json!({"status": "paused"})).await;
    assert_eq!(s, 200);
    assert_eq!(b["status"], "paused");
    assert_eq!(b["destination"]["batch"], false);
    assert_eq!(b["annotations"], json!({"user_id": "42"}));
    let (s, _) = api
        .patch("/destinations/http_endpoints/e1", json!({"name": "e1b"}))
        .await;
    assert_eq!(s, 200);
    let (_, b) = api.get("/sinks/s1").await;
    assert_eq!(b["destination"]["http_endpoint"], "e1b");
}

#[tokio::test]
async fn deleting_sink_cascades_backfills() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    let sink = api.sink("s1", "e1").await;
    let (s, _) = api.post("/sinks/s1/backfills", json!({})).await;
    assert_eq!(s, 200);
    assert_eq!(h.backfills().len(), 1);
    let (s, b) = api.delete("/sinks/s1").await;
    assert_eq!(s, 200);
    assert_eq!(b, json!({"id": sink["id"], "deleted": true}));
    assert!(h.backfills().is_empty());
}

// ---------------------------------------------------------------- functions

#[tokio::test]
async fn config_apply_upserts_functions_and_returns_password() {
    let h = emu().await;
    let api = Api::new(&h);
    let yaml = "functions:\n  - name: f1\n    type: filter\n    code: |-\n      def filter(action, record, changes, metadata) do\n        true\n      end\n";
    let (s, b) = api.post("/config/apply", json!({"yaml": yaml})).await;
    assert_eq!(s, 200);
    let resources = b["resources"].as_array().unwrap();
    assert!(resources.iter().any(|r| r.get("password").is_some()));
    assert_eq!(h.functions().len(), 1);
    assert_eq!(h.functions()[0]["type"], "filter");
    // upsert by name
    let yaml2 = yaml.replace("true\n", "false\n");
    let (s, _) = api.post("/config/apply", json!({"yaml": yaml2})).await;
    assert_eq!(s, 200);
    let fns = h.functions();
    assert_eq!(fns.len(), 1);
    assert!(fns[0]["code"].as_str().unwrap().contains("false"));
}

#[tokio::test]
async fn config_plan_does_not_change_state() {
    let h = emu().await;
    let api = Api::new(&h);
    let yaml = "functions:\n  - name: f1\n    type: filter\n    code: \"def filter(a, r, c, m), do: true\"\n";
    let (s, _) = api.post("/config/plan", json!({"yaml": yaml})).await;
    assert_eq!(s, 200);
    assert!(h.functions().is_empty());
}

#[tokio::test]
async fn config_with_functions_and_transforms_is_500() {
    let h = emu().await;
    let api = Api::new(&h);
    let yaml = "functions: []\ntransforms: []\n";
    let (s, _) = api.post("/config/apply", json!({"yaml": yaml})).await;
    assert_eq!(s, 500);
    let (s, _) = api
        .post(
            "/config/apply",
            json!({"yaml": "functions:\n  - name: f\n    type: bogus\n    code: x\n"}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(h.functions().is_empty());
}

#[tokio::test]
async fn config_export_renders_every_resource_without_ids_or_the_database_password() {
    let h = emu().await;
    let api = Api::new(&h);
    let yaml = "functions:\n  - name: f1\n    type: filter\n    description: keeps all\n    code: |-\n      def filter(action, record, changes, metadata) do\n        true\n      end\n";
    assert_eq!(
        api.post("/config/apply", json!({"yaml": yaml})).await.0,
        200
    );
    api.endpoint("e1").await;
    let (s, _) = api.post("/sinks", sink_body("s1", "e1")).await;
    assert_eq!(s, 200);

    let (s, b) = api.get("/config/export").await;
    assert_eq!(s, 200);
    let text = b["yaml"].as_str().expect("{\"yaml\": ...}");
    let doc: serde_norway::Value = serde_norway::from_str(text).expect("YAML");
    assert_eq!(
        doc["functions"][0],
        serde_norway::from_str::<serde_norway::Value>(
            "{name: f1, type: filter, description: keeps all, code: \"def filter(action, record, changes, metadata) do\\n  true\\nend\"}"
        )
        .unwrap(),
        "a function is exported with exactly the code that was applied"
    );
    assert_eq!(doc["http_endpoints"][0]["name"].as_str(), Some("e1"));
    assert_eq!(doc["sinks"][0]["name"].as_str(), Some("s1"));
    assert_eq!(doc["sinks"][0]["filter"].as_str(), Some("none"));
    let database = &doc["databases"][0];
    assert_eq!(database["name"].as_str(), Some("app"));
    assert_eq!(database["publication"]["name"].as_str(), Some("sequin_pub"));
    // `Map.delete(:id)` on every resource; secrets obfuscated, even when asked to show them.
    for section in ["databases", "functions", "http_endpoints", "sinks"] {
        assert!(doc[section][0].get("id").is_none(), "{section} has an id");
    }
    let (_, shown) = api.get("/config/export?show-sensitive=true").await;
    for body in [&b, &shown] {
        assert!(
            !body.to_string().contains("emulator-secret-password"),
            "{body}"
        );
    }
    // Read-only: nothing changed, and an empty section is left out.
    assert_eq!(h.functions().len(), 1);
    let empty = emu().await;
    let (_, b) = Api::new(&empty).get("/config/export").await;
    let doc: serde_norway::Value = serde_norway::from_str(b["yaml"].as_str().unwrap()).unwrap();
    assert!(
        doc.get("functions").is_none() && doc.get("sinks").is_none(),
        "{doc:?}"
    );
    assert_eq!(empty.calls()[0].operation, "config_export");
}

#[tokio::test]
async fn without_the_functions_feature_apply_and_plan_refuse_functions_like_sequin() {
    let h = emu_with(EmulatorConfig {
        functions_enabled: false,
        ..config()
    })
    .await;
    let api = Api::new(&h);
    let yaml = |kind: &str, def: &str| {
        format!("functions:\n  - name: f1\n    type: {kind}\n    code: |-\n      def {def}(action, record, changes, metadata) do\n        true\n      end\n")
    };
    for path in ["/config/apply", "/config/plan"] {
        let (s, b) = api
            .post(path, json!({"yaml": yaml("filter", "filter")}))
            .await;
        assert_eq!(s, 400, "{path}: {b}");
        let summary = b["summary"].as_str().unwrap();
        assert!(
            summary.starts_with("Error creating function 'f1': %{"),
            "{summary}"
        );
        assert!(
            summary.contains(
                "type: [\"Filter functions are not enabled. Talk to the Sequin team to enable them.\"]"
            ),
            "{summary}"
        );
    }
    let (s, b) = api
        .post(
            "/config/apply",
            json!({"yaml": yaml("transform", "transform")}),
        )
        .await;
    assert_eq!(s, 400);
    assert!(b["summary"]
        .as_str()
        .unwrap()
        .contains("Transform functions are not enabled."));
    assert!(h.functions().is_empty());
}

// ---------------------------------------------------------------- backfills

async fn sink_with_two_tables(api: &Api) {
    api.endpoint("e1").await;
    let mut body = sink_body("s2", "e1");
    body["source"] = json!({"include_tables": ["public.notifications", "public.users"]});
    let (s, b) = api.post("/sinks", body).await;
    assert_eq!(s, 200, "{b}");
}

#[tokio::test]
async fn backfill_create_empty_body_needs_single_table() {
    let h = emu().await;
    let api = Api::new(&h);
    sink_with_two_tables(&api).await;
    let (s, b) = api.post("/sinks/s2/backfills", json!({})).await;
    assert_eq!(s, 422);
    assert_eq!(summary(&b), "Table reference is required");
    let (s, b) = api
        .post("/sinks/s2/backfills", json!({"table": "public.users"}))
        .await;
    assert_eq!(s, 200, "{b}");
    assert_eq!(b["table"], "public.users");
    assert_eq!(b["state"], "active");
    assert_eq!(b["sink_consumer"], "s2");
    assert_eq!(b["rows_initial_count"], Value::Null);
    assert_eq!(b["canceled_at"], Value::Null);
    let (s, b) = api.post("/sinks/s2/backfills", json!({"foo": 1})).await;
    assert_eq!(s, 422);
    unknown_field(&b, "foo");
}

#[tokio::test]
async fn second_active_backfill_is_422() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (s, _) = api.post("/sinks/s1/backfills", json!({})).await;
    assert_eq!(s, 200);
    let (s, b) = api.post("/sinks/s1/backfills", json!({})).await;
    assert_eq!(s, 422);
    assert_eq!(
        b,
        json!({"summary": "Validation failed", "validation_errors": {"sink_consumer_id": ["already has an active backfill"]}})
    );
}

#[tokio::test]
async fn backfill_id_rules() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    api.sink("s3", "e1").await;
    let (_, b) = api.post("/sinks/s1/backfills", json!({})).await;
    let id = b["id"].as_str().unwrap().to_string();
    let (s, b) = api.get("/sinks/s1/backfills/abc").await;
    assert_eq!(s, 400);
    assert_eq!(b, json!({"errors": {"detail": "Bad Request"}}));
    let (s, b) = api.get(&format!("/sinks/s3/backfills/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(
        summary(&b),
        "Not found: No `backfill` found matching the provided ID or name"
    );
    let (s, _) = api
        .patch(
            &format!("/sinks/s3/backfills/{id}"),
            json!({"state": "cancelled"}),
        )
        .await;
    assert_eq!(s, 500);
    let (s, b) = api.delete(&format!("/sinks/s1/backfills/{id}")).await;
    assert_eq!(s, 404);
    assert_eq!(b, json!({"errors": {"detail": "Not Found"}}));
    let (s, b) = api.get(&format!("/sinks/s1/backfills/{id}")).await;
    assert_eq!(s, 200);
    assert_eq!(b["state"], "active");
}

#[tokio::test]
async fn backfill_state_machine() {
    let mut cfg = config();
    cfg.backfill_rows_per_sec = 1;
    cfg.backfill_rows = 1_000_000;
    let h = emu_with(cfg).await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (_, b) = api.post("/sinks/s1/backfills", json!({})).await;
    let path = format!("/sinks/s1/backfills/{}", b["id"].as_str().unwrap());
    let (s, b) = api.patch(&path, json!({"state": "canceled"})).await;
    assert_eq!(s, 422);
    assert_eq!(b["validation_errors"], json!({"state": ["is invalid"]}));
    let (s, b) = api.patch(&path, json!({"state": "paused"})).await;
    assert_eq!(s, 200);
    assert_eq!(b["state"], "paused");
    let (_, sink) = api.get("/sinks/s1").await;
    assert_eq!(sink["active_backfills"][0]["state"], "paused");
    let (s, b) = api.patch(&path, json!({"state": "completed"})).await;
    assert_eq!(s, 422);
    assert_eq!(
        b["validation_errors"]["state"][0],
        "Invalid state transition from paused to completed. Valid transitions: active, cancelled"
    );
    let (s, b) = api.put(&path, json!({"state": "cancelled"})).await;
    assert_eq!(s, 200);
    assert_eq!(b["state"], "cancelled");
    assert!(b["canceled_at"].is_string());
    let (s, b) = api.patch(&path, json!({"state": "active"})).await;
    assert_eq!(s, 422);
    assert_eq!(
        b,
        json!({"summary": "Validation failed", "validation_errors": {"state": [
            "Invalid state transition from cancelled to active. Valid transitions: none"]}})
    );
    let (_, sink) = api.get("/sinks/s1").await;
    assert_eq!(sink["active_backfills"], json!([]));
    // a new backfill may start once the old one is terminal
    let (s, _) = api.post("/sinks/s1/backfills", json!({})).await;
    assert_eq!(s, 200);
    let (_, l) = api.get("/sinks/s1/backfills").await;
    assert_eq!(l["data"].as_array().unwrap().len(), 2);
    assert_eq!(l["data"][0]["state"], "active"); // newest first
}

#[tokio::test]
async fn backfill_progress_advances_to_completed() {
    let mut cfg = config();
    cfg.backfill_rows = 100;
    cfg.backfill_rows_per_sec = 100;
    let h = emu_with(cfg).await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    let (_, b) = api.post("/sinks/s1/backfills", json!({})).await;
    assert_eq!(b["rows_initial_count"], Value::Null);
    assert_eq!(b["completed_at"], Value::Null);
    let path = format!("/sinks/s1/backfills/{}", b["id"].as_str().unwrap());
    // rows_initial_count appears after ~100 ms; 100 rows at 100 rows/s take ~1 s more.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, mid) = api.get(&path).await;
    assert_eq!(mid["rows_initial_count"], 100);
    let p = mid["rows_processed_count"].as_u64().unwrap();
    assert!(p > 0 && p < 100, "{mid}");
    assert_eq!(mid["state"], "active");
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let (_, done) = api.get(&path).await;
    assert_eq!(done["state"], "completed");
    assert_eq!(done["rows_processed_count"], 100);
    assert_eq!(done["rows_ingested_count"], 100);
    let at = done["completed_at"].as_str().unwrap();
    assert!(at.ends_with('Z') && at.contains('.'), "{at}");
    assert!(!done["inserted_at"].as_str().unwrap().contains('.'));
    // completed backfills are not active any more
    let (_, sink) = api.get("/sinks/s1").await;
    assert_eq!(sink["active_backfills"], json!([]));
}

// ---------------------------------------------------------------- faults and control

#[tokio::test]
async fn fault_force_401() {
    let mut cfg = config();
    cfg.faults.force_401 = true;
    let h = emu_with(cfg).await;
    let api = Api::new(&h);
    let (s, b) = api.get("/sinks").await;
    assert_eq!(s, 401);
    assert!(summary(&b).starts_with("The API token you provided is invalid or has expired."));
}

#[tokio::test]
async fn fault_429_has_retry_after() {
    let h = emu().await;
    let mut f = Faults::default();
    f.routes.insert(
        "list_sinks".into(),
        RouteFaults {
            rate_limit_retry_after: Some(7),
            ..RouteFaults::default()
        },
    );
    h.set_faults(f);
    let r = Client::new()
        .get(format!("{}/sinks", h.api_url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    assert_eq!(r.headers()["retry-after"], "7");
    let b: Value = r.json().await.unwrap();
    assert_eq!(b, json!({"summary": "Too many requests (injected)"}));
    // other operations are not affected
    let api = Api::new(&h);
    let (s, _) = api.get("/postgres_databases").await;
    assert_eq!(s, 200);
}

#[tokio::test]
async fn fault_error_rate_1_is_503() {
    let mut cfg = config();
    cfg.faults.all.error_rate = 1.0;
    let h = emu_with(cfg).await;
    let api = Api::new(&h);
    let (s, b) = api.endpoint_try("e1").await;
    assert_eq!(s, 503);
    assert_eq!(b, json!({"summary": "Service unavailable (injected)"}));
    assert!(h.endpoints().is_empty());
}

impl Api {
    async fn endpoint_try(&self, name: &str) -> (StatusCode, Value) {
        self.post(
            "/destinations/http_endpoints",
            json!({"name": name, "url": "https://hooks.example.com/in"}),
        )
        .await
    }
}

#[tokio::test]
async fn fault_fail_next_is_one_shot() {
    let h = emu().await;
    let mut f = Faults::default();
    f.routes.insert(
        "create_endpoint".into(),
        RouteFaults {
            fail_next: vec![
                InjectedResponse {
                    status: 502,
                    body: json!({"summary": "bad gateway"}),
                },
                InjectedResponse {
                    status: 504,
                    body: json!({"summary": "timeout"}),
                },
            ],
            ..RouteFaults::default()
        },
    );
    h.set_faults(f);
    let api = Api::new(&h);
    assert_eq!(api.endpoint_try("e1").await.0, 502);
    assert_eq!(api.endpoint_try("e1").await.0, 504);
    assert!(h.endpoints().is_empty());
    assert_eq!(api.endpoint_try("e1").await.0, 200);
    assert_eq!(h.endpoints().len(), 1);
    assert!(h.faults().routes["create_endpoint"].fail_next.is_empty());
}

#[tokio::test]
async fn fault_fail_after_next_changes_state_then_lies() {
    let h = emu().await;
    let mut f = Faults::default();
    f.all.fail_after_next = vec![InjectedResponse {
        status: 502,
        body: json!({"summary": "lost"}),
    }];
    h.set_faults(f);
    let api = Api::new(&h);
    let (s, b) = api.endpoint_try("e1").await;
    assert_eq!(s, 502);
    assert_eq!(b, json!({"summary": "lost"}));
    assert_eq!(h.endpoints().len(), 1);
    let (s, _) = api.endpoint_try("e1").await;
    assert_eq!(s, 422); // the retry sees the name taken
}

#[tokio::test]
async fn fault_latency_delays_answer() {
    let mut cfg = config();
    cfg.faults.all.latency_ms = 300;
    let h = emu_with(cfg).await;
    let api = Api::new(&h);
    let t = std::time::Instant::now();
    let (s, _) = api.get("/sinks").await;
    assert_eq!(s, 200);
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn fault_hang_requires_client_timeout() {
    let mut cfg = config();
    cfg.faults.routes.insert(
        "get_sink".into(),
        RouteFaults {
            hang: true,
            ..RouteFaults::default()
        },
    );
    let h = emu_with(cfg).await;
    let client = Client::builder()
        .timeout(Duration::from_millis(300))
        .build()
        .unwrap();
    let err = client
        .get(format!("{}/sinks/x", h.api_url()))
        .header("Authorization", format!("Bearer {TOKEN}"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout());
    let calls = h.calls();
    assert_eq!(calls[0].operation, "get_sink");
    h.shutdown().await;
}

#[tokio::test]
async fn control_route_changes_faults_at_run_time() {
    let h = emu().await;
    let api = Api::new(&h);
    let base = format!("http://{}", h.addr());
    let r = api
        .http
        .put(format!("{base}/_emulator/faults"))
        .json(&json!({"force_401": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    assert!(h.faults().force_401);
    assert_eq!(api.get("/sinks").await.0, 401);
    let got: Value = api
        .http
        .get(format!("{base}/_emulator/faults"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["force_401"], true);
    api.http
        .put(format!("{base}/_emulator/faults"))
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_eq!(api.get("/sinks").await.0, 200);

    // What cannot be meant is refused, naming the field, and changes nothing.
    let r = api
        .http
        .put(format!("{base}/_emulator/faults"))
        .json(&json!({"routes": {"create_sink": {"error_rate": 2}}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let body: Value = r.json().await.unwrap();
    assert!(
        body["summary"]
            .as_str()
            .unwrap()
            .contains("routes.create_sink.error_rate must be a probability between 0 and 1"),
        "{body}"
    );
    assert!(h.faults().routes.is_empty());
}

#[tokio::test]
async fn calls_are_recorded_with_operation_and_control_routes_are_not() {
    let h = emu().await;
    let api = Api::new(&h);
    api.endpoint("e1").await;
    api.sink("s1", "e1").await;
    api.post("/sinks/s1/backfills", json!({})).await;
    api.get("/sinks/s1").await;
    api.get("/nope").await;
    let base = format!("http://{}", h.addr());
    let calls: Value = api
        .http
        .get(format!("{base}/_emulator/calls"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let ops: Vec<&str> = calls
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["operation"].as_str().unwrap())
        .collect();
    assert_eq!(
        ops,
        [
            "create_endpoint",
            "create_sink",
            "create_backfill",
            "get_sink",
            "other"
        ]
    );
    let c = &h.calls()[0];
    assert_eq!(c.method, "POST");
    assert_eq!(c.path, "/api/destinations/http_endpoints");
    assert_eq!(c.status, 200);
    assert_eq!(c.body.as_ref().unwrap()["name"], "e1");
    let state: Value = api
        .http
        .get(format!("{base}/_emulator/state"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(state["sinks"][0]["name"], "s1");
    api.http
        .delete(format!("{base}/_emulator/calls"))
        .send()
        .await
        .unwrap();
    assert!(h.calls().is_empty());
}

#[tokio::test]
async fn shutdown_gives_connection_refused() {
    let h = emu().await;
    let url = h.api_url();
    h.shutdown().await;
    let err = Client::new()
        .get(format!("{url}/sinks"))
        .send()
        .await
        .unwrap_err();
    assert!(err.is_connect(), "{err}");
}
