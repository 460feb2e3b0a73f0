//! Prometheus metrics (DESIGN.md §6) and the `/metrics`, `/healthz`, `/readyz` server.
//!
//! Labels are bounded enums (action, outcome, status, operation): never a user id, URL or token.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::{
    Encoder, Gauge, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec,
    IntGauge, Opts, Registry, TextEncoder,
};

pub const ACTIONS: &[&str] = &[
    "subscribe",
    "unsubscribe",
    "backfill",
    "update",
    "pause",
    "resume",
];
pub const REQUEST_STATUSES: &[&str] = &["pending", "running", "succeeded", "failed", "cancelled"];
pub const SUBSCRIPTION_STATUSES: &[&str] = &[
    "provisioning",
    "active",
    "paused",
    "deleting",
    "deleted",
    "failed",
];
pub const BACKFILL_STATES: &[&str] = &["active", "paused", "completed", "cancelled", "failed"];
pub const OPERATIONS: &[&str] = &[
    "create_endpoint",
    "get_endpoint",
    "update_endpoint",
    "delete_endpoint",
    "create_sink",
    "get_sink",
    "update_sink",
    "delete_sink",
    "create_backfill",
    "get_backfill",
    "update_backfill",
    "config_apply",
    "config_plan",
    "config_export",
    "list_databases",
];

const LATENCY_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
];
const WAIT_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];

/// Every metric of the worker, registered in its own registry (so tests can run several
/// workers in one process).
pub struct Metrics {
    pub registry: Registry,
    pub requests_total: IntCounterVec,
    pub request_duration: HistogramVec,
    pub queue_wait: Histogram,
    pub queue_depth: GaugeVec,
    pub oldest_pending_age: Gauge,
    pub sequin_requests_total: IntCounterVec,
    pub sequin_request_duration: HistogramVec,
    /// Time a Sequin write waited for the pacer, by kind (`write`, `restarting`).
    pub sequin_write_wait: HistogramVec,
    pub subscriptions: GaugeVec,
    /// Live subscriptions by source table: each is a sink that Sequin stores and filters
    /// every change of that table for, so Sequin's cost per change grows with it.
    pub live_subscriptions: GaugeVec,
    pub backfills: GaugeVec,
    pub listener_connected: IntGauge,
    pub sequin_auth_ok: IntGauge,
    pub lease_lost_total: IntCounter,
    pub in_flight: IntGauge,
    /// Readiness inputs that are not metrics.
    pub database_ok: AtomicBool,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let r = &registry;
        let requests_total = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "userhooks_requests_total",
                    "Requests finished or rescheduled, by action and outcome",
                ),
                &["action", "outcome"],
            )
            .expect("valid metric"),
        );
        let request_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "userhooks_request_duration_seconds",
                    "Time from claim to finish of one attempt, by action",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["action"],
            )
            .expect("valid metric"),
        );
        let queue_wait = register(
            r,
            Histogram::with_opts(
                HistogramOpts::new(
                    "userhooks_queue_wait_seconds",
                    "Time from insert to first claim",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
            )
            .expect("valid metric"),
        );
        let queue_depth = register(
            r,
            GaugeVec::new(
                Opts::new("userhooks_queue_depth", "Requests in the table, by status"),
                &["status"],
            )
            .expect("valid metric"),
        );
        let oldest_pending_age = register(
            r,
            Gauge::new(
                "userhooks_oldest_pending_age_seconds",
                "Age of the oldest pending request that is due",
            )
            .expect("valid metric"),
        );
        let sequin_requests_total = register(
            r,
            IntCounterVec::new(
                Opts::new(
                    "userhooks_sequin_requests_total",
                    "Sequin Management API calls, by operation and HTTP status (or timeout/error)",
                ),
                &["operation", "status"],
            )
            .expect("valid metric"),
        );
        let sequin_request_duration = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "userhooks_sequin_request_duration_seconds",
                    "Latency of Sequin Management API calls, by operation",
                )
                .buckets(LATENCY_BUCKETS.to_vec()),
                &["operation"],
            )
            .expect("valid metric"),
        );
        let sequin_write_wait = register(
            r,
            HistogramVec::new(
                HistogramOpts::new(
                    "userhooks_sequin_write_wait_seconds",
                    "Time a Sequin write waited for USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND (and the restart spacing), by kind",
                )
                .buckets(WAIT_BUCKETS.to_vec()),
                &["kind"],
            )
            .expect("valid metric"),
        );
        let subscriptions = register(
            r,
            GaugeVec::new(
                Opts::new("userhooks_subscriptions", "Subscriptions by status"),
                &["status"],
            )
            .expect("valid metric"),
        );
        let live_subscriptions = register(
            r,
            GaugeVec::new(
                Opts::new(
                    "userhooks_live_subscriptions",
                    "Live subscriptions (provisioning, active or paused) by source table",
                ),
                &["source_table"],
            )
            .expect("valid metric"),
        );
        let backfills = register(
            r,
            GaugeVec::new(
                Opts::new("userhooks_backfills", "Backfills by state"),
                &["state"],
            )
            .expect("valid metric"),
        );
        let listener_connected = register(
            r,
            IntGauge::new(
                "userhooks_listener_connected",
                "1 when the LISTEN connection is up",
            )
            .expect("valid metric"),
        );
        let sequin_auth_ok = register(
            r,
            IntGauge::new(
                "userhooks_sequin_auth_ok",
                "1 when Sequin accepts our API token",
            )
            .expect("valid metric"),
        );
        let lease_lost_total = register(
            r,
            IntCounter::new(
                "userhooks_lease_lost_total",
                "Results dropped because the lease was lost before write-back",
            )
            .expect("valid metric"),
        );
        let in_flight = register(
            r,
            IntGauge::new("userhooks_in_flight", "Requests being processed now")
                .expect("valid metric"),
        );
        // Zero-fill every known label value, so dashboards and alerts see series from the start.
        for action in ACTIONS {
            request_duration.with_label_values(&[action]);
            for outcome in ["succeeded", "failed", "retried"] {
                requests_total.with_label_values(&[action, outcome]);
            }
        }
        for status in REQUEST_STATUSES {
            queue_depth.with_label_values(&[status]).set(0.0);
        }
        for status in SUBSCRIPTION_STATUSES {
            subscriptions.with_label_values(&[status]).set(0.0);
        }
        for state in BACKFILL_STATES {
            backfills.with_label_values(&[state]).set(0.0);
        }
        for operation in OPERATIONS {
            sequin_request_duration.with_label_values(&[operation]);
        }
        for kind in ["write", "restarting"] {
            sequin_write_wait.with_label_values(&[kind]);
        }
        sequin_auth_ok.set(1);
        Arc::new(Metrics {
            registry,
            requests_total,
            request_duration,
            queue_wait,
            queue_depth,
            oldest_pending_age,
            sequin_requests_total,
            sequin_request_duration,
            sequin_write_wait,
            subscriptions,
            live_subscriptions,
            backfills,
            listener_connected,
            sequin_auth_ok,
            lease_lost_total,
            in_flight,
            database_ok: AtomicBool::new(true),
        })
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }

    pub fn set_database_ok(&self, ok: bool) {
        self.database_ok.store(ok, Ordering::Relaxed);
    }

    /// Readiness checks: name → ok.
    pub fn readiness(&self) -> Vec<(&'static str, bool)> {
        vec![
            ("database", self.database_ok.load(Ordering::Relaxed)),
            ("listener", self.listener_connected.get() == 1),
            ("sequin_auth", self.sequin_auth_ok.get() == 1),
        ]
    }
}

async fn metrics_handler(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(metrics): State<Arc<Metrics>>) -> impl IntoResponse {
    let checks = metrics.readiness();
    let ready = checks.iter().all(|(_, ok)| *ok);
    let body = serde_json::json!({
        "ready": ready,
        "checks": checks
            .iter()
            .map(|(name, ok)| (name.to_string(), serde_json::Value::from(if *ok { "ok" } else { "failing" })))
            .collect::<serde_json::Map<_, _>>(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, Json(body))
}

pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(metrics)
}

/// Bind the metrics address (fails fast on a taken port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serve `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics))
        .with_graceful_shutdown(shutdown)
        .await
}
