//! What each action does in Sequin, and the outcome to write back.
//!
//! Idempotency: Sequin has no idempotency keys, but names are unique per account. Every
//! resource name is derived from our subscription id, so a retry after a crash finds (and
//! adopts) what an earlier attempt created instead of creating it twice.

use std::sync::Arc;

use deadpool_postgres::Pool;
use serde_json::{json, Value};
use tokio::sync::Mutex;

use crate::config::Config;
use crate::db::DbError;
use crate::model::{Action, Change, Outcome, Request};
use crate::retry::RetryPolicy;
use crate::sequin::{ErrorClass, ExportedFunction, Resource, SequinClient, SequinError};
use crate::subscriptions::{OpenRequest, OpenSubscription};
use crate::webhook_url::{self, Resolver, UrlError, UrlPolicy, WebhookUrl};

mod actions;
mod open;
mod options;
pub mod replica;

use open::{OpenOp, Opener};

pub use options::{
    expect_no_options, secret_hash, ResumeOptions, SubscribeOptions, UpdateOptions, CHANGE_ACTIONS,
};
pub use replica::ReplicaIdentity;

/// Why an attempt did not succeed, before it becomes an [`Outcome`].
#[derive(Debug, thiserror::Error)]
pub enum ProvisionError {
    /// The request itself is wrong (bad URL, unknown option...): fail, provision nothing.
    #[error("{0}")]
    Invalid(String),
    /// The request names something that does not exist (no such subscription).
    #[error("{0}")]
    NotFound(String),
    /// The subscription exists but is not ready for this (still provisioning): retry later.
    #[error("{0}")]
    NotReady(String),
    /// The webhook URL's host could not be resolved: DNS may answer on a later attempt (a
    /// resolver recovers, a new record propagates), so it is retried like any transient error.
    #[error(transparent)]
    Unresolved(UrlError),
    #[error(transparent)]
    Sequin(#[from] SequinError),
    #[error("database error: {0}")]
    Db(#[from] DbError),
}

impl From<tokio_postgres::Error> for ProvisionError {
    fn from(err: tokio_postgres::Error) -> Self {
        ProvisionError::Db(DbError::Postgres(err))
    }
}

impl From<deadpool_postgres::PoolError> for ProvisionError {
    fn from(err: deadpool_postgres::PoolError) -> Self {
        ProvisionError::Db(DbError::Checkout(err))
    }
}

impl ProvisionError {
    fn class(&self) -> ErrorClass {
        match self {
            ProvisionError::Invalid(_) | ProvisionError::NotFound(_) => ErrorClass::Permanent,
            ProvisionError::Sequin(err) => err.class(),
            ProvisionError::Db(_) | ProvisionError::NotReady(_) | ProvisionError::Unresolved(_) => {
                ErrorClass::Retryable
            }
        }
    }
}

/// Deterministic Sequin names of one subscription.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Names {
    pub endpoint: String,
    pub sink: String,
}

impl Names {
    /// `{prefix}-{id}-endpoint` / `{prefix}-{id}-sink`: never UUID-shaped (Sequin would look a
    /// UUID up as an id), only `[A-Za-z0-9_.-]`, and short, whatever the user id contains.
    pub fn new(prefix: &str, subscription_id: i64) -> Self {
        Names {
            endpoint: format!("{prefix}-{subscription_id}-endpoint"),
            sink: format!("{prefix}-{subscription_id}-sink"),
        }
    }
}

/// Carries out requests against Sequin.
pub struct Provisioner {
    config: Arc<Config>,
    pool: Pool,
    sequin: SequinClient,
    url_policy: UrlPolicy,
    /// Whether the shared filter function is known to be in place (checked once per process).
    filter_ready: Mutex<bool>,
    /// The source table's replica identity, re-read at most every 30 s.
    replica: replica::IdentityCache,
    opener: Opener,
    /// Set when this process starts a backfill, so the tracker looks at once.
    backfill_hint: std::sync::atomic::AtomicBool,
}

impl Provisioner {
    /// `resolver` looks up webhook URL hosts ([`Resolver::default`]: the system's).
    pub fn new(config: Arc<Config>, pool: Pool, sequin: SequinClient, resolver: Resolver) -> Self {
        // The opener task ends when the provisioner (its last handle) is dropped.
        let (opener, _task) = Opener::spawn(pool.clone(), OpenOp);
        let url_policy = UrlPolicy {
            allow_private: config.allow_private_urls,
            require_https: config.require_https,
            resolver,
        };
        Provisioner {
            config,
            pool,
            sequin,
            url_policy,
            filter_ready: Mutex::new(false),
            replica: replica::IdentityCache::default(),
            opener,
            backfill_hint: std::sync::atomic::AtomicBool::new(false),
        }
    }

    pub fn sequin(&self) -> &SequinClient {
        &self.sequin
    }

    /// Whether a backfill was started since the last call.
    pub fn take_backfill_hint(&self) -> bool {
        self.backfill_hint
            .swap(false, std::sync::atomic::Ordering::Relaxed)
    }

    /// Carry out one claimed request and decide its outcome. Never panics, never loses it.
    pub async fn handle(&self, request: &Request) -> Outcome {
        let action = match &request.action {
            Ok(action) => *action,
            Err(unknown) => {
                return Outcome::Failed {
                    kind: "invalid_request",
                    message: unknown.to_string(),
                    status: None,
                    details: None,
                    changes: Vec::new(),
                }
            }
        };
        let mut created = Created::default();
        let result = match action {
            Action::Subscribe => self.subscribe(request, &mut created).await,
            Action::Unsubscribe => self.unsubscribe(request).await,
            Action::Backfill => self.backfill(request).await,
            Action::Update => self.update(request, &mut created).await,
            Action::Pause => self.pause(request).await,
            Action::Resume => self.resume(request).await,
        };
        match result {
            Ok((result, changes)) => Outcome::Succeeded { result, changes },
            Err(err) => self.failure(request, err, created).await,
        }
    }

    /// Turn an error into an outcome, compensating what this subscription created when the
    /// failure is final (so the user can subscribe again).
    async fn failure(&self, request: &Request, err: ProvisionError, created: Created) -> Outcome {
        let class = err.class();
        if class == ErrorClass::Auth {
            return Outcome::AuthRejected {
                message: err.to_string(),
            };
        }
        if class == ErrorClass::Retryable && !request.is_last_attempt() {
            let retry_after = match &err {
                ProvisionError::Sequin(e) => e.retry_after(),
                _ => None,
            };
            let retry = u32::try_from(request.attempts.saturating_sub(1)).unwrap_or(0);
            return Outcome::Retry {
                message: format!(
                    "attempt {} of {}: {err}",
                    request.attempts, request.max_attempts
                ),
                delay: RetryPolicy::DURABLE.delay_now(retry, retry_after),
            };
        }
        let mut changes = Vec::new();
        if let Some(subscription_id) = created.subscription_id {
            self.compensate(&created).await;
            changes.push(Change::SetStatus {
                subscription_id,
                status: "failed",
            });
        }
        let gave_up = || {
            format!(
                "gave up after {} attempts; last error: {err}",
                request.attempts
            )
        };
        let (kind, status, details, message) = match &err {
            ProvisionError::Invalid(msg) => ("invalid_request", None, None, msg.clone()),
            // DNS kept answering that the name does not exist: the URL is what must change.
            ProvisionError::Unresolved(e) if e.host_does_not_exist() => {
                ("invalid_request", None, None, e.to_string())
            }
            ProvisionError::Unresolved(_) => ("exhausted", None, None, gave_up()),
            ProvisionError::NotFound(msg) => ("not_found", None, None, msg.clone()),
            ProvisionError::NotReady(msg) => ("not_ready", None, None, msg.clone()),
            _ if class == ErrorClass::Retryable => ("exhausted", err_status(&err), None, gave_up()),
            ProvisionError::Sequin(e) => (
                "sequin_rejected",
                e.status(),
                e.details().cloned(),
                e.to_string(),
            ),
            ProvisionError::Db(e) => ("database", None, None, e.to_string()),
        };
        Outcome::Failed {
            kind,
            message,
            status,
            details,
            changes,
        }
    }

    /// Best effort: delete the sink, then the endpoint (reverse order of creation). Whatever
    /// cannot be deleted now is left to `userhooks reconcile`, and logged.
    async fn compensate(&self, created: &Created) {
        if let Some(sink) = &created.sink {
            if let Err(err) = self.sequin.delete_sink(sink).await {
                tracing::warn!(sink = %sink, error = %err, "compensation: could not delete sink");
                return; // the endpoint cannot go while the sink uses it
            }
        }
        if let Some(endpoint) = &created.endpoint {
            if let Err(err) = self.sequin.delete_endpoint(endpoint).await {
                tracing::warn!(endpoint = %endpoint, error = %err, "compensation: could not delete endpoint");
            }
        }
    }

    async fn validate_url(&self, raw: Option<&str>) -> Result<WebhookUrl, ProvisionError> {
        let raw =
            raw.ok_or_else(|| ProvisionError::Invalid("webhook_url is required".to_string()))?;
        webhook_url::validate(raw, &self.url_policy)
            .await
            .map_err(|e| {
                if e.is_resolution_failure() {
                    ProvisionError::Unresolved(e)
                } else {
                    ProvisionError::Invalid(e.to_string())
                }
            })
    }

    async fn subscribe(
        &self,
        request: &Request,
        created: &mut Created,
    ) -> Result<(Value, Vec<Change>), ProvisionError> {
        let mut options = SubscribeOptions::parse(&request.options)?;
        let warning = self.deliverable_actions(&mut options.actions).await?;
        let url = self.validate_url(request.webhook_url.as_deref()).await?;
        let subscription = self
            .open_subscription(&request.user_id, &url, &options)
            .await?;
        let names = Names::new(&self.config.name_prefix, subscription.id);
        if subscription.status != "provisioning" {
            // Same user and URL as a live subscription: that subscription is the answer.
            let result = json!({
                "subscription_id": subscription.id,
                "sink_id": subscription.sequin_sink_id,
                "sink_name": names.sink,
                "endpoint_id": subscription.sequin_endpoint_id,
                "endpoint_name": names.endpoint,
                "existing": true,
            });
            return Ok((result, Vec::new()));
        }
        created.subscription_id = Some(subscription.id);
        self.ensure_filter().await?;

        created.endpoint = Some(names.endpoint.clone());
        let endpoint = self.ensure_endpoint(&names, &url, &options).await?;
        created.sink = Some(names.sink.clone());
        let sink = self.ensure_sink(&names, &request.user_id, &options).await?;

        let mut result = json!({
            "subscription_id": subscription.id,
            "sink_id": sink.id,
            "sink_name": names.sink,
            "endpoint_id": endpoint.id,
            "endpoint_name": names.endpoint,
        });
        if let Some(warning) = warning {
            result["warnings"] = json!([warning]);
        }
        if options.backfill {
            self.replay_into(subscription.id, &names.sink, &mut result)
                .await?;
        }
        let changes = vec![Change::Activate {
            subscription_id: subscription.id,
            endpoint_id: endpoint.id,
            sink_id: sink.id,
            endpoint_name: names.endpoint,
            sink_name: names.sink,
        }];
        Ok((result, changes))
    }

    /// The live subscription of (user, URL), created as `provisioning` if there is none. The
    /// row exists before anything is created in Sequin, so nothing in Sequin is ever
    /// unaccounted for.
    async fn open_subscription(
        &self,
        user_id: &str,
        url: &WebhookUrl,
        options: &SubscribeOptions,
    ) -> Result<OpenSubscription, ProvisionError> {
        let request = OpenRequest {
            user_id: user_id.to_string(),
            endpoint: url.as_str().to_string(),
            source_table: self.config.source_table.clone(),
            transform: options.transform.clone(),
            actions: options
                .actions
                .clone()
                .unwrap_or_else(|| CHANGE_ACTIONS.iter().map(|a| a.to_string()).collect()),
            secret_hash: options.secret.as_deref().map(secret_hash),
        };
        let done = self
            .opener
            .run(request)
            .await
            .ok_or_else(|| DbError::Pool("the subscription opener stopped".to_string()))?;
        done.output?.ok_or_else(|| {
            ProvisionError::Db(DbError::Pool(
                "subscription changed concurrently; will retry".to_string(),
            ))
        })
    }

    /// Put the shared filter function in place, once per process: read it back, and write
    /// it only when it is missing or differs. Sequin treats every apply as an update, and a
    /// function update restarts replication for every sink that uses it, so rewriting an
    /// unchanged function on each start would pause everyone's delivery.
    pub async fn ensure_filter(&self) -> Result<FilterFunctionState, SequinError> {
        let mut ready = self.filter_ready.lock().await;
        if *ready {
            return Ok(FilterFunctionState::Current);
        }
        let name = &self.config.filter_function;
        let state = match self.sequin.config_export().await {
            Ok(export) => FilterFunctionState::of(export.function(name), &self.config.user_column),
            // Readable but not understood: writing it is what the worker did before it could
            // read functions back, and is correct, only not free.
            Err(err @ SequinError::Protocol(_)) => {
                tracing::warn!(function = %name, error = %err, "could not read the filter function back; writing it");
                FilterFunctionState::Replaced
            }
            Err(err) => return Err(err),
        };
        if state != FilterFunctionState::Current {
            let yaml = filter_function_yaml(name, &self.config.user_column);
            self.sequin.config_apply(&yaml).await?;
            tracing::info!(function = %name, state = state.as_str(), "filter function written");
        }
        *ready = true;
        Ok(state)
    }

    /// Create the endpoint; if the name is taken (an earlier attempt made it), adopt it and
    /// bring its URL in line.
    async fn ensure_endpoint(
        &self,
        names: &Names,
        url: &WebhookUrl,
        options: &SubscribeOptions,
    ) -> Result<Resource, SequinError> {
        let mut body = json!({ "name": names.endpoint, "url": url.as_str() });
        if !options.headers.is_empty() {
            body["headers"] = Value::Object(options.headers.clone());
        }
        if let Some(secret) = &options.secret {
            body["encrypted_headers"] = json!({ "Authorization": format!("Bearer {secret}") });
        }
        match self.sequin.create_endpoint(&body).await {
            Ok(resource) => Ok(resource),
            Err(err) if err.is_name_taken() => {
                let existing = self
                    .sequin
                    .get_endpoint(&names.endpoint)
                    .await?
                    .ok_or_else(|| SequinError::Unavailable {
                        status: 404,
                        summary: format!("endpoint {} vanished after a name clash", names.endpoint),
                        retry_after: None,
                    })?;
                let same_url = existing
                    .str_field("url")
                    .as_deref()
                    .and_then(webhook_url::normalize)
                    .is_some_and(|u| u == url.as_str());
                if same_url && options.secret.is_none() {
                    Ok(existing)
                } else {
                    // The secret cannot be read back, so it is always re-sent on adoption.
                    let mut update = body.clone();
                    if let Some(map) = update.as_object_mut() {
                        map.remove("name");
                    }
                    self.sequin.update_endpoint(&names.endpoint, &update).await
                }
            }
            Err(err) => Err(err),
        }
    }

    fn sink_body(&self, names: &Names, user_id: &str, options: &SubscribeOptions) -> Value {
        let actions = options
            .actions
            .clone()
            .unwrap_or_else(|| CHANGE_ACTIONS.iter().map(|a| a.to_string()).collect());
        let mut body = json!({
            "name": names.sink,
            "database": self.config.sequin_database,
            "status": "active",
            "source": { "include_tables": [self.config.source_table] },
            "actions": actions,
            // One message per POST, unwrapped: what a user's webhook expects.
            "destination": { "type": "webhook", "http_endpoint": names.endpoint, "batch": false },
            "batch_size": 1,
            "filter": self.config.filter_function,
            "annotations": { "user_id": user_id },
        });
        if let Some(transform) = &options.transform {
            body["transform"] = json!(transform);
        }
        if let Some(count) = self.config.max_retry_count {
            body["max_retry_count"] = json!(count);
        }
        body
    }

    async fn ensure_sink(
        &self,
        names: &Names,
        user_id: &str,
        options: &SubscribeOptions,
    ) -> Result<Resource, SequinError> {
        let body = self.sink_body(names, user_id, options);
        match self.sequin.create_sink(&body).await {
            Ok(resource) => Ok(resource),
            Err(err) if err.is_name_taken() => {
                self.sequin
                    .get_sink(&names.sink)
                    .await?
                    .ok_or_else(|| SequinError::Unavailable {
                        status: 404,
                        summary: format!("sink {} vanished after a name clash", names.sink),
                        retry_after: None,
                    })
            }
            Err(err) if is_missing_function(&err, &self.config.filter_function) => {
                // Someone deleted the shared filter function: put it back, then try once more.
                *self.filter_ready.lock().await = false;
                self.ensure_filter().await?;
                self.sequin.create_sink(&body).await
            }
            Err(err) => Err(err),
        }
    }
}

fn is_missing_function(err: &SequinError, name: &str) -> bool {
    err.status() == Some(422) && err.summary() == format!("Function '{name}' not found.")
}

fn err_status(err: &ProvisionError) -> Option<u16> {
    match err {
        ProvisionError::Sequin(e) => e.status(),
        _ => None,
    }
}

/// What an attempt may have created in Sequin (by name), for compensation.
#[derive(Debug, Default)]
struct Created {
    subscription_id: Option<i64>,
    endpoint: Option<String>,
    sink: Option<String>,
}

/// What [`Provisioner::ensure_filter`] found in Sequin (and so did).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FilterFunctionState {
    /// Sequin has it as this worker would write it: nothing written.
    Current,
    /// It did not exist: created.
    Created,
    /// It existed with other code (or could not be read back): rewritten.
    Replaced,
}

impl FilterFunctionState {
    /// Compare Sequin's copy (if any) with what this worker writes for `user_column`.
    pub fn of(found: Option<&ExportedFunction>, user_column: &str) -> Self {
        match found {
            None => FilterFunctionState::Created,
            Some(found) if filter_function_is_current(found, user_column) => {
                FilterFunctionState::Current
            }
            Some(_) => FilterFunctionState::Replaced,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            FilterFunctionState::Current => "current",
            FilterFunctionState::Created => "created",
            FilterFunctionState::Replaced => "replaced",
        }
    }
}

/// The code of the shared filter function: a row passes when its user column equals the
/// sink's `user_id` annotation (both compared as strings, so INT ids work).
pub fn filter_function_code(user_column: &str) -> String {
    format!(
        "def filter(action, record, changes, metadata) do\n  to_string(record[\"{user_column}\"]) == to_string(metadata.consumer.annotations[\"user_id\"])\nend"
    )
}

/// The sequin.yaml text of the shared filter function. Name and column are checked at
/// start-up (`[A-Za-z0-9_.-]`, an identifier), so they need no quoting beyond this.
pub fn filter_function_yaml(name: &str, user_column: &str) -> String {
    let code: String = filter_function_code(user_column)
        .lines()
        .map(|line| format!("      {line}\n"))
        .collect();
    format!(
        "functions:\n  - name: \"{name}\"\n    type: \"filter\"\n    description: \"userhooks: deliver only rows whose {user_column} matches the sink's user_id annotation\"\n    code: |-\n{code}"
    )
}

/// Whether Sequin's copy of the function does what this worker's does: a filter with the
/// same code. Whitespace at line ends and a trailing newline are not compared (`code: |`
/// keeps a newline that `|-` strips, a console edit may leave spaces), nor is the
/// description, which changes nothing that runs.
pub fn filter_function_is_current(found: &ExportedFunction, user_column: &str) -> bool {
    fn normalise(code: &str) -> String {
        code.lines()
            .map(str::trim_end)
            .collect::<Vec<_>>()
            .join("\n")
            .trim_end()
            .to_string()
    }
    found.kind.as_deref() == Some("filter")
        && found
            .code
            .as_deref()
            .is_some_and(|code| normalise(code) == normalise(&filter_function_code(user_column)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_deterministic_and_sequin_safe() {
        let names = Names::new("userhooks", 42);
        assert_eq!(names.endpoint, "userhooks-42-endpoint");
        assert_eq!(names.sink, "userhooks-42-sink");
        assert_eq!(names, Names::new("userhooks", 42));
    }

    #[test]
    fn unknown_subscribe_option_is_rejected_by_name() {
        let err = SubscribeOptions::parse(&json!({"filters": []})).unwrap_err();
        assert!(
            err.to_string().contains("unknown option `filters`"),
            "{err}"
        );
    }

    #[test]
    fn subscribe_options_parse() {
        let parsed = SubscribeOptions::parse(&json!({
            "transform": "webhook_transform", "backfill": true,
            "actions": ["insert", "insert", "delete"], "headers": {"X-Source": "app"},
            "secret": "s3cret"
        }))
        .unwrap();
        assert_eq!(parsed.transform.as_deref(), Some("webhook_transform"));
        assert!(parsed.backfill);
        assert_eq!(parsed.actions, Some(vec!["insert".into(), "delete".into()]));
        assert_eq!(parsed.secret.as_deref(), Some("s3cret"));
    }

    #[test]
    fn bad_option_values_are_rejected() {
        for bad in [
            json!({"actions": []}),
            json!({"actions": ["read"]}),
            json!({"backfill": "yes"}),
            json!({"transform": ""}),
            json!({"headers": {"Authorization": "Bearer x"}}),
            json!({"headers": {"X": 1}}),
            json!({"secret": ""}),
        ] {
            assert!(SubscribeOptions::parse(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn headers_of_the_client_or_the_connection_are_refused_by_name_in_any_case() {
        for name in [
            "Host",
            "HOST",
            "Content-Length",
            "transfer-encoding",
            "Connection",
            "Keep-Alive",
            "Proxy-Authorization",
            "proxy-connection",
            "TE",
            "Trailer",
            "Upgrade",
            "authorization",
        ] {
            let err = SubscribeOptions::parse(&json!({"headers": {name: "v"}})).unwrap_err();
            let message = err.to_string();
            assert!(
                message.starts_with(&format!("option `headers` must not set {name}: ")),
                "{message}"
            );
        }
        // Headers that merely resemble them are the user's own.
        let parsed = SubscribeOptions::parse(&json!({"headers": {
            "X-Host": "a", "Hosting": "b", "Content-Type": "c", "Proxy": "d", "Tenant": "e"
        }}))
        .unwrap();
        assert_eq!(parsed.headers.len(), 5);
    }

    #[test]
    fn header_names_differing_only_in_case_are_refused() {
        let err = SubscribeOptions::parse(&json!({"headers": {"X-A": "1", "x-a": "2"}}))
            .unwrap_err()
            .to_string();
        assert!(err.contains("sets X-A and x-a"), "{err}");
    }

    #[test]
    fn secret_hash_is_not_the_secret() {
        let hash = secret_hash("s3cret");
        assert_eq!(hash.len(), 64);
        assert!(!hash.contains("s3cret"));
    }

    #[test]
    fn filter_yaml_compares_user_column_with_annotation() {
        let yaml = filter_function_yaml("f", "owner_id");
        assert!(yaml.contains("record[\"owner_id\"]"));
        assert!(yaml.contains("metadata.consumer.annotations[\"user_id\"]"));
        assert!(yaml.contains("type: \"filter\""));
    }

    #[test]
    fn filter_yaml_carries_exactly_the_code_that_is_compared() {
        // What Sequin stores is what the YAML parser reads out of `code: |-`.
        let yaml: serde_norway::Value =
            serde_norway::from_str(&filter_function_yaml("f", "owner_id")).unwrap();
        let function = &yaml["functions"][0];
        assert_eq!(function["name"].as_str(), Some("f"));
        assert_eq!(
            function["code"].as_str(),
            Some(filter_function_code("owner_id").as_str())
        );
    }

    #[test]
    fn a_function_is_current_only_with_the_same_type_and_code() {
        let code = filter_function_code("user_id");
        let found = |kind: &str, code: &str| ExportedFunction {
            name: "f".into(),
            kind: Some(kind.into()),
            description: Some("edited in the console".into()),
            code: Some(code.into()),
        };
        assert!(filter_function_is_current(
            &found("filter", &code),
            "user_id"
        ));
        // Whitespace at line ends and a final newline are not differences.
        let spaced = code.replace('\n', "  \n") + "\n";
        assert!(filter_function_is_current(
            &found("filter", &spaced),
            "user_id"
        ));
        assert!(!filter_function_is_current(
            &found("filter", &code),
            "owner_id"
        ));
        assert!(!filter_function_is_current(
            &found("transform", &code),
            "user_id"
        ));
        let indented = code.replace("  to_string", "    to_string");
        assert!(!filter_function_is_current(
            &found("filter", &indented),
            "user_id"
        ));
        let no_code = ExportedFunction {
            code: None,
            ..found("filter", "")
        };
        assert!(!filter_function_is_current(&no_code, "user_id"));
        assert_eq!(
            FilterFunctionState::of(None, "user_id"),
            FilterFunctionState::Created
        );
    }
}
