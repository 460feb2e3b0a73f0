//! `userhooks reconcile`: compare `userhooks.webhook_subscriptions` with what exists in
//! Sequin, report drift, and with `--repair` fix it.
//!
//! Each live subscription (`active` or `paused`) is checked by name — `GET` of its endpoint
//! and its sink, with bounded concurrency — because Sequin's list calls are unreliable for
//! proving absence. A `paused` subscription has an endpoint and no sink (pause deletes it).
//! Orphans (our resources that no subscription owns) come from one list of endpoints and
//! one of sinks. `provisioning` and `deleting` subscriptions are in flight: their resources
//! are neither checked nor orphans.
//!
//! Ours means named exactly `{prefix}-{digits}-endpoint` or `{prefix}-{digits}-sink`, and, for
//! a sink, on this deployment's `SEQUIN_DATABASE` (for an endpoint, not used by a sink that
//! is not ours). Everything else in the account is reported as foreign and never touched:
//! `userhooks-staging-1-sink` belongs to someone else even though it starts with `userhooks-`.

use std::collections::HashSet;
use std::sync::Arc;

use futures_util::StreamExt;
use serde::Serialize;
use serde_json::{json, Value};

use crate::config::Config;
use crate::db::{self, DbError};
use crate::provision::Names;
use crate::sequin::{Pacer, Resource, SequinClient, SequinError};
use crate::subscriptions;

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("Sequin: {0}")]
    Sequin(#[from] SequinError),
}

/// How to run.
#[derive(Clone, Debug)]
pub struct Options {
    pub repair: bool,
    /// Sequin calls in flight at once.
    pub concurrency: usize,
}

/// One difference between the table and Sequin.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Drift {
    /// `missing_endpoint`, `missing_sink`, `url`, `status`, `filter`, `annotations`, `source`,
    /// `destination`, `paused_sink` (a paused subscription that still has a sink),
    /// `orphan_endpoint`, `orphan_sink`.
    pub kind: &'static str,
    pub subscription_id: Option<i64>,
    pub user_id: Option<String>,
    /// The Sequin resource's name.
    pub resource: String,
    pub expected: Value,
    pub actual: Value,
    /// With `--repair`: `"repaired"`, or why not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub repair: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    /// Live subscriptions checked.
    pub checked: usize,
    /// Subscriptions in flight (provisioning, deleting), not checked.
    pub in_flight: usize,
    pub drifts: Vec<Drift>,
    /// Subscriptions that could not be checked (Sequin errors), with the reason.
    pub errors: Vec<String>,
    /// Resources of the account that are not userhooks' (of this deployment): reported,
    /// never touched, not a difference.
    pub foreign: Vec<Foreign>,
}

/// A Sequin resource that is not ours.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Foreign {
    /// `endpoint` or `sink`.
    pub kind: &'static str,
    pub name: String,
    /// Why it is not ours.
    pub reason: String,
}

impl Report {
    /// Drift that is still there (not repaired).
    pub fn unresolved(&self) -> usize {
        self.drifts
            .iter()
            .filter(|d| d.repair.as_deref() != Some("repaired"))
            .count()
    }
}

#[derive(Clone, Debug)]
struct Sub {
    id: i64,
    user_id: String,
    url: String,
    status: String,
    names: Names,
    source_table: String,
    transform: Option<String>,
    actions: Vec<String>,
    has_secret: bool,
}

fn drift(
    kind: &'static str,
    sub: Option<&Sub>,
    resource: &str,
    expected: Value,
    actual: Value,
) -> Drift {
    Drift {
        kind,
        subscription_id: sub.map(|s| s.id),
        user_id: sub.map(|s| s.user_id.clone()),
        resource: resource.to_string(),
        expected,
        actual,
        repair: None,
    }
}

fn same_url(a: &str, b: &str) -> bool {
    let n = |u: &str| {
        crate::webhook_url::normalize(u)
            .unwrap_or_else(|| u.to_string())
            .trim_end_matches('/')
            .to_string()
    };
    n(a) == n(b)
}

/// `"public.t"` and `"t"` name the same table.
fn table_name(t: &str) -> String {
    if t.contains('.') {
        t.to_string()
    } else {
        format!("public.{t}")
    }
}

/// What the sink of `sub` should look like, as the fields we compare.
fn sink_body(config: &Config, sub: &Sub) -> Value {
    let mut body = json!({
        "name": sub.names.sink,
        "database": config.sequin_database,
        "status": sub.status,
        "source": { "include_tables": [sub.source_table] },
        "actions": sub.actions,
        "destination": { "type": "webhook", "http_endpoint": sub.names.endpoint, "batch": false },
        "batch_size": 1,
        "filter": config.filter_function,
        "annotations": { "user_id": sub.user_id },
    });
    if let Some(t) = &sub.transform {
        body["transform"] = json!(t);
    }
    if let Some(count) = config.max_retry_count {
        body["max_retry_count"] = json!(count);
    }
    body
}

/// Compare one subscription with its Sequin resources. Pure, for tests.
fn compare(
    config: &Config,
    sub: &Sub,
    endpoint: Option<&Value>,
    sink: Option<&Value>,
) -> Vec<Drift> {
    let mut out = Vec::new();
    match endpoint {
        None => out.push(drift(
            "missing_endpoint",
            Some(sub),
            &sub.names.endpoint,
            json!(sub.url),
            Value::Null,
        )),
        Some(e) => {
            let actual = e.get("url").and_then(Value::as_str).unwrap_or("");
            if !same_url(actual, &sub.url) {
                out.push(drift(
                    "url",
                    Some(sub),
                    &sub.names.endpoint,
                    json!(sub.url),
                    json!(actual),
                ));
            }
        }
    }
    if sub.status == "paused" {
        // Pause deletes the sink; one still there is routed every change and buffers it.
        if let Some(s) = sink {
            out.push(drift(
                "paused_sink",
                Some(sub),
                &sub.names.sink,
                Value::Null,
                s.get("status").cloned().unwrap_or(Value::Null),
            ));
        }
        return out;
    }
    let Some(s) = sink else {
        out.push(drift(
            "missing_sink",
            Some(sub),
            &sub.names.sink,
            json!(sub.names.sink),
            Value::Null,
        ));
        return out;
    };
    out.extend(compare_sink(config, sub, s));
    out
}

/// Compare an existing sink's fields with what `sub` asks for.
fn compare_sink(config: &Config, sub: &Sub, s: &Value) -> Vec<Drift> {
    let mut out = Vec::new();
    let name = &sub.names.sink;
    let status = s.get("status").cloned().unwrap_or(Value::Null);
    if status != json!(sub.status) {
        out.push(drift("status", Some(sub), name, json!(sub.status), status));
    }
    let filter = s.get("filter").cloned().unwrap_or(Value::Null);
    if filter != json!(config.filter_function) {
        out.push(drift(
            "filter",
            Some(sub),
            name,
            json!(config.filter_function),
            filter,
        ));
    }
    let annotations = s.get("annotations").cloned().unwrap_or(Value::Null);
    let user = annotations.get("user_id").and_then(Value::as_str);
    if user != Some(sub.user_id.as_str()) {
        out.push(drift(
            "annotations",
            Some(sub),
            name,
            json!({"user_id": sub.user_id}),
            annotations,
        ));
    }
    let source = s.get("source").cloned().unwrap_or(Value::Null);
    let tables: Option<Vec<String>> = source
        .get("include_tables")
        .and_then(Value::as_array)
        .map(|l| l.iter().filter_map(Value::as_str).map(table_name).collect());
    let only_ours = source
        .as_object()
        .map(|m| {
            ["include_schemas", "exclude_schemas", "exclude_tables"]
                .iter()
                .all(|k| m.get(*k).is_none_or(Value::is_null))
        })
        .unwrap_or(false);
    if tables != Some(vec![table_name(&sub.source_table)]) || !only_ours {
        out.push(drift(
            "source",
            Some(sub),
            name,
            json!({"include_tables": [sub.source_table]}),
            source,
        ));
    }
    let destination = s.get("destination").cloned().unwrap_or(Value::Null);
    let endpoint_ok = destination.get("http_endpoint").and_then(Value::as_str)
        == Some(sub.names.endpoint.as_str());
    let batch_ok = destination.get("batch") == Some(&json!(false));
    if !endpoint_ok || !batch_ok {
        out.push(drift(
            "destination",
            Some(sub),
            name,
            json!({"type": "webhook", "http_endpoint": sub.names.endpoint, "batch": false}),
            destination,
        ));
    }
    out
}

async fn load(config: &Config) -> Result<(Vec<Sub>, HashSet<String>, usize), ReconcileError> {
    let client = db::connect(&config.database_url, "userhooks-reconcile").await?;
    db::require_schema(&client).await?;
    let rows =
        subscriptions::with_status(&client, &["provisioning", "active", "paused", "deleting"])
            .await?;
    let mut subs = Vec::new();
    let mut known = HashSet::new();
    let mut in_flight = 0;
    for r in rows {
        let default = Names::new(&config.name_prefix, r.id);
        let names = Names {
            sink: r.sink_name.unwrap_or(default.sink),
            endpoint: r.endpoint_name.unwrap_or(default.endpoint),
        };
        known.insert(names.sink.clone());
        known.insert(names.endpoint.clone());
        if r.status == "provisioning" || r.status == "deleting" {
            in_flight += 1;
            continue;
        }
        subs.push(Sub {
            id: r.id,
            user_id: r.user_id,
            url: r.endpoint,
            status: r.status,
            names,
            source_table: r.source_table,
            transform: r.transform,
            actions: r.actions,
            has_secret: r.has_secret,
        });
    }
    Ok((subs, known, in_flight))
}

/// Apply the fixes for one subscription's drift; marks each drift with the outcome.
async fn repair_subscription(
    sequin: &SequinClient,
    config: &Config,
    sub: &Sub,
    drifts: &mut [Drift],
) {
    let mark = |drifts: &mut [Drift], kinds: &[&str], outcome: &str| {
        for d in drifts.iter_mut().filter(|d| kinds.contains(&d.kind)) {
            d.repair = Some(outcome.to_string());
        }
    };
    let kinds_found: HashSet<&'static str> = drifts.iter().map(|d| d.kind).collect();
    let has = |kind: &str| kinds_found.contains(kind);
    if has("missing_endpoint") {
        if sub.has_secret {
            // Only the secret's hash is kept: an endpoint without it would send the user
            // unauthenticated webhooks.
            mark(
                drifts,
                &["missing_endpoint", "missing_sink"],
                "not repaired: the subscription has a secret, which userhooks does not keep; subscribe the user again",
            );
            return;
        }
        let body = json!({"name": sub.names.endpoint, "url": sub.url});
        match sequin.create_endpoint(&body).await {
            Ok(_) => mark(drifts, &["missing_endpoint"], "repaired"),
            Err(e) => {
                mark(drifts, &["missing_endpoint"], &format!("not repaired: {e}"));
                return;
            }
        }
    } else if has("url") {
        let outcome = match sequin
            .update_endpoint(&sub.names.endpoint, &json!({"url": sub.url}))
            .await
        {
            Ok(_) => "repaired".to_string(),
            Err(e) => format!("not repaired: {e}"),
        };
        mark(drifts, &["url"], &outcome);
    }
    if has("paused_sink") {
        let outcome = match sequin.delete_sink(&sub.names.sink).await {
            Ok(_) => "repaired".to_string(),
            Err(e) => format!("not repaired: {e}"),
        };
        mark(drifts, &["paused_sink"], &outcome);
        return;
    }
    let desired = sink_body(config, sub);
    if has("missing_sink") {
        let outcome = match sequin.create_sink(&desired).await {
            Ok(_) => "repaired".to_string(),
            Err(e) => format!("not repaired: {e}"),
        };
        mark(drifts, &["missing_sink"], &outcome);
        return;
    }
    // One PATCH with every field that drifted: each sink update restarts replication.
    let mut patch = serde_json::Map::new();
    let mut kinds = Vec::new();
    for (kind, keys) in [
        ("status", &["status"][..]),
        ("filter", &["filter"][..]),
        ("annotations", &["annotations"][..]),
        ("source", &["source", "database"][..]),
        ("destination", &["destination", "batch_size"][..]),
    ] {
        if has(kind) {
            kinds.push(kind);
            for k in keys {
                patch.insert(k.to_string(), desired[*k].clone());
            }
        }
    }
    if patch.is_empty() {
        return;
    }
    let outcome = match sequin
        .update_sink(&sub.names.sink, &Value::Object(patch))
        .await
    {
        Ok(_) => "repaired".to_string(),
        Err(e) => format!("not repaired: {e}"),
    };
    mark(drifts, &kinds, &outcome);
}

/// Which resources of the account are ours.
struct Ownership {
    /// `^{prefix}-[0-9]+-(endpoint|sink)$`
    name: regex::Regex,
    database: String,
}

/// The account's resources, split.
#[derive(Debug, Default)]
struct Scan {
    /// (`orphan_sink` / `orphan_endpoint`, name, id), sinks first.
    ours: Vec<(&'static str, String, Value)>,
    foreign: Vec<Foreign>,
}

impl Ownership {
    fn new(config: &Config) -> Self {
        let pattern = format!(
            "^{}-[0-9]+-(endpoint|sink)$",
            regex::escape(&config.name_prefix)
        );
        Ownership {
            name: regex::Regex::new(&pattern).expect("an escaped prefix makes a valid regex"),
            database: config.sequin_database.clone(),
        }
    }

    fn named_ours(&self, name: &str, kind: &str) -> bool {
        self.name
            .captures(name)
            .is_some_and(|c| c.get(1).is_some_and(|k| k.as_str() == kind))
    }

    fn scan(&self, sinks: &[Value], endpoints: &[Value]) -> Scan {
        let mut scan = Scan::default();
        // Endpoints that a sink which is not ours sends to are not ours either.
        let mut used_by_foreign = HashSet::new();
        for sink in sinks {
            let name = sink.get("name").and_then(Value::as_str).unwrap_or("");
            let database = sink.get("database").and_then(Value::as_str).unwrap_or("");
            let reason = if !self.named_ours(name, "sink") {
                Some(format!("name is not {}", self.name.as_str()))
            } else if database != self.database {
                Some(format!(
                    "on database {database:?}, not SEQUIN_DATABASE {:?}",
                    self.database
                ))
            } else {
                None
            };
            match reason {
                None => scan
                    .ours
                    .push(("orphan_sink", name.to_string(), json!(sink.get("id")))),
                Some(reason) => {
                    if let Some(e) = sink
                        .pointer("/destination/http_endpoint")
                        .and_then(Value::as_str)
                    {
                        used_by_foreign.insert(e.to_string());
                    }
                    scan.foreign.push(Foreign {
                        kind: "sink",
                        name: name.to_string(),
                        reason,
                    });
                }
            }
        }
        for endpoint in endpoints {
            let name = endpoint.get("name").and_then(Value::as_str).unwrap_or("");
            let reason = if !self.named_ours(name, "endpoint") {
                Some(format!("name is not {}", self.name.as_str()))
            } else if used_by_foreign.contains(name) {
                Some("used by a sink that is not ours".to_string())
            } else {
                None
            };
            match reason {
                None => scan.ours.push((
                    "orphan_endpoint",
                    name.to_string(),
                    json!(endpoint.get("id")),
                )),
                Some(reason) => scan.foreign.push(Foreign {
                    kind: "endpoint",
                    name: name.to_string(),
                    reason,
                }),
            }
        }
        scan
    }
}

/// Compare (and with `repair`, fix). `progress` is called with (done, total) as
/// subscriptions are checked.
pub async fn reconcile(
    config: &Config,
    options: &Options,
    progress: impl Fn(u64, u64),
) -> Result<Report, ReconcileError> {
    let sequin = SequinClient::new(
        &config.sequin_api_url,
        config.sequin_token.clone(),
        config.http_timeout,
        crate::metrics::Metrics::new(),
    )
    // A repair can be a mass update: paced like the worker's writes.
    .with_pacer(Pacer::new(
        config.sequin_max_writes_per_second,
        config.sequin_restart_spacing,
    ));
    let (subs, known, in_flight) = load(config).await?;
    let mut report = Report {
        checked: subs.len(),
        in_flight,
        ..Report::default()
    };
    let total = subs.len() as u64;
    let config_arc = Arc::new(config.clone());
    let mut results = futures_util::stream::iter(subs.into_iter().map(|sub| {
        let sequin = sequin.clone();
        let config = config_arc.clone();
        let repair = options.repair;
        async move {
            let (endpoint, sink) = tokio::join!(
                sequin.get_endpoint(&sub.names.endpoint),
                sequin.get_sink(&sub.names.sink)
            );
            let (endpoint, sink) = match (endpoint, sink) {
                (Ok(e), Ok(s)) => (e, s),
                (Err(e), _) | (_, Err(e)) => {
                    return Err(format!("subscription {}: {e}", sub.id));
                }
            };
            let endpoint = endpoint.as_ref().map(Resource::body);
            let sink = sink.as_ref().map(Resource::body);
            let mut drifts = compare(&config, &sub, endpoint.as_ref(), sink.as_ref());
            if repair && !drifts.is_empty() {
                repair_subscription(&sequin, &config, &sub, &mut drifts).await;
            }
            Ok(drifts)
        }
    }))
    .buffer_unordered(options.concurrency.max(1));
    let mut done = 0;
    while let Some(result) = results.next().await {
        match result {
            Ok(d) => report.drifts.extend(d),
            Err(e) => report.errors.push(e),
        }
        done += 1;
        progress(done, total);
    }
    drop(results);

    // Orphans: ours, no subscription. Sinks first, so their endpoints can go too.
    let scan =
        Ownership::new(config).scan(&sequin.list_sinks().await?, &sequin.list_endpoints().await?);
    let mut orphans = Vec::new();
    for (kind, name, id) in scan.ours {
        if !known.contains(&name) {
            orphans.push(drift(kind, None, &name, Value::Null, id));
        }
    }
    report.foreign = scan.foreign;
    if options.repair {
        for o in &mut orphans {
            let result = if o.kind == "orphan_sink" {
                sequin.delete_sink(&o.resource).await
            } else {
                sequin.delete_endpoint(&o.resource).await
            };
            o.repair = Some(match result {
                Ok(_) => "repaired".to_string(),
                Err(e) => format!("not repaired: {e}"),
            });
        }
    }
    report.drifts.extend(orphans);
    report
        .drifts
        .sort_by(|a, b| (a.subscription_id, a.kind).cmp(&(b.subscription_id, b.kind)));
    Ok(report)
}

/// The report for a terminal.
pub fn render(report: &Report, repair: bool) -> String {
    let mut out = format!(
        "checked {} live subscriptions ({} in flight, not checked): {} differences{}\n",
        report.checked,
        report.in_flight,
        report.drifts.len(),
        if repair {
            format!(", {} left after repair", report.unresolved())
        } else {
            String::new()
        }
    );
    for d in &report.drifts {
        let who = match (d.subscription_id, &d.user_id) {
            (Some(id), Some(u)) => format!("subscription {id} (user {u})"),
            _ => "no subscription".to_string(),
        };
        out.push_str(&format!(
            "  {:<17} {:<28} {who}: expected {}, found {}",
            d.kind, d.resource, d.expected, d.actual
        ));
        if let Some(r) = &d.repair {
            out.push_str(&format!(" -> {r}"));
        }
        out.push('\n');
    }
    for e in &report.errors {
        out.push_str(&format!("  not checked: {e}\n"));
    }
    if !report.foreign.is_empty() {
        out.push_str(&format!(
            "{} resources in the account are not this deployment's (left alone):\n",
            report.foreign.len()
        ));
        for f in &report.foreign {
            out.push_str(&format!(
                "  foreign {:<8} {:<28} {}\n",
                f.kind, f.name, f.reason
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sub() -> Sub {
        Sub {
            id: 7,
            user_id: "42".into(),
            url: "https://hooks.example.com/a".into(),
            status: "active".into(),
            names: Names::new("userhooks", 7),
            source_table: "public.notifications".into(),
            transform: None,
            actions: vec!["insert".into()],
            has_secret: false,
        }
    }

    fn config() -> Config {
        Config::for_local("postgres://x/y", "http://s/api", "t", "app")
    }

    fn good_sink() -> Value {
        json!({
            "status": "active", "filter": "userhooks-user-filter",
            "annotations": {"user_id": "42"},
            "source": {"include_schemas": null, "exclude_schemas": null,
                       "include_tables": ["public.notifications"], "exclude_tables": null},
            "destination": {"type": "webhook", "http_endpoint": "userhooks-7-endpoint",
                            "http_endpoint_path": null, "batch": false},
        })
    }

    #[test]
    fn matching_resources_have_no_drift() {
        let e = json!({"url": "https://hooks.example.com/a"});
        assert_eq!(
            compare(&config(), &sub(), Some(&e), Some(&good_sink())),
            vec![]
        );
    }

    #[test]
    fn each_field_that_differs_is_its_own_drift() {
        let e = json!({"url": "https://evil.example.com/"});
        let mut s = good_sink();
        s["status"] = json!("paused");
        s["filter"] = json!("none");
        s["annotations"] = json!({"user_id": "43"});
        s["source"]["include_tables"] = json!(["public.users"]);
        s["destination"]["batch"] = json!(true);
        let kinds: Vec<&str> = compare(&config(), &sub(), Some(&e), Some(&s))
            .iter()
            .map(|d| d.kind)
            .collect();
        assert_eq!(
            kinds,
            [
                "url",
                "status",
                "filter",
                "annotations",
                "source",
                "destination"
            ]
        );
        let kinds: Vec<&str> = compare(&config(), &sub(), None, None)
            .iter()
            .map(|d| d.kind)
            .collect();
        assert_eq!(kinds, ["missing_endpoint", "missing_sink"]);
    }

    #[test]
    fn a_paused_subscription_expects_no_sink() {
        let paused = Sub {
            status: "paused".into(),
            ..sub()
        };
        let e = json!({"url": "https://hooks.example.com/a"});
        assert_eq!(compare(&config(), &paused, Some(&e), None), vec![]);
        let mut s = good_sink();
        s["status"] = json!("paused");
        let drifts = compare(&config(), &paused, Some(&e), Some(&s));
        assert_eq!(drifts.len(), 1, "{drifts:?}");
        assert_eq!(drifts[0].kind, "paused_sink");
        assert_eq!(drifts[0].actual, json!("paused"));
    }

    #[test]
    fn only_exact_names_on_our_database_are_ours() {
        let sink = |name: &str, database: &str, endpoint: &str| {
            json!({"id": name, "name": name, "database": database,
                   "destination": {"type": "webhook", "http_endpoint": endpoint}})
        };
        let endpoint = |name: &str| json!({"id": name, "name": name});
        let sinks = [
            sink("userhooks-1-sink", "app", "userhooks-1-endpoint"),
            sink(
                "userhooks-staging-1-sink",
                "app",
                "userhooks-staging-1-endpoint",
            ),
            sink("userhooks-5-sink", "other-db", "userhooks-5-endpoint"),
            sink("userhooks-2-sink-old", "app", "userhooks-2-endpoint"),
            sink("userhooks-3-endpoint", "app", "userhooks-3-endpoint"),
        ];
        let endpoints = [
            endpoint("userhooks-1-endpoint"),
            endpoint("userhooks-staging-1-endpoint"),
            endpoint("userhooks-5-endpoint"),
            endpoint("other-1-endpoint"),
            endpoint("xuserhooks-7-endpoint"),
            endpoint("userhooks-7-endpoint"),
        ];
        let mut config = config();
        config.name_prefix = "userhooks".into();
        let scan = Ownership::new(&config).scan(&sinks, &endpoints);
        let ours: Vec<&str> = scan.ours.iter().map(|(_, n, _)| n.as_str()).collect();
        assert_eq!(
            ours,
            [
                "userhooks-1-sink",
                "userhooks-1-endpoint",
                "userhooks-7-endpoint"
            ]
        );
        let foreign: Vec<(&str, &str)> = scan
            .foreign
            .iter()
            .map(|f| (f.kind, f.name.as_str()))
            .collect();
        assert_eq!(
            foreign,
            [
                ("sink", "userhooks-staging-1-sink"),
                ("sink", "userhooks-5-sink"),
                ("sink", "userhooks-2-sink-old"),
                ("sink", "userhooks-3-endpoint"),
                ("endpoint", "userhooks-staging-1-endpoint"),
                ("endpoint", "userhooks-5-endpoint"),
                ("endpoint", "other-1-endpoint"),
                ("endpoint", "xuserhooks-7-endpoint"),
            ]
        );
        assert!(
            scan.foreign[1].reason.contains("other-db"),
            "{:?}",
            scan.foreign[1]
        );
        assert!(
            scan.foreign[5].reason.contains("used by a sink"),
            "{:?}",
            scan.foreign[5]
        );
        // A prefix with regex characters is matched literally.
        config.name_prefix = "a.b".into();
        let scan = Ownership::new(&config).scan(
            &[],
            &[endpoint("axb-1-endpoint"), endpoint("a.b-1-endpoint")],
        );
        assert_eq!(scan.ours.len(), 1);
        assert_eq!(scan.ours[0].1, "a.b-1-endpoint");
    }
}
