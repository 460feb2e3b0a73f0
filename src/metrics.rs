//! Prometheus metrics (docs/architecture.md, section 8) and the `/metrics`, `/healthz`,
//! `/readyz` server. `/readyz` answers from [`Health`].
//!
//! Labels are bounded enums (action, outcome, status, operation): never a user id, URL or token.

use std::net::SocketAddr;
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

use crate::health::Health;

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
    /// Mirrors of [`Health`]: set from it, never read to decide anything.
    pub listener_connected: IntGauge,
    pub sequin_auth_ok: IntGauge,
    pub lease_lost_total: IntCounter,
    pub in_flight: IntGauge,
}

fn register<T: prometheus::core::Collector + Clone + 'static>(registry: &Registry, metric: T) -> T {
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

/// Constructors that register as they build; names and labels are constants, so they are
/// valid.
struct Builder<'a>(&'a Registry);

impl Builder<'_> {
    fn counter(&self, name: &str, help: &str) -> IntCounter {
        register(self.0, IntCounter::new(name, help).expect("valid metric"))
    }

    fn counters(&self, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
        register(
            self.0,
            IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
        )
    }

    fn int_gauge(&self, name: &str, help: &str) -> IntGauge {
        register(self.0, IntGauge::new(name, help).expect("valid metric"))
    }

    fn gauge(&self, name: &str, help: &str) -> Gauge {
        register(self.0, Gauge::new(name, help).expect("valid metric"))
    }

    fn gauges(&self, name: &str, help: &str, labels: &[&str]) -> GaugeVec {
        register(
            self.0,
            GaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
        )
    }

    fn histogram(&self, name: &str, help: &str, buckets: &[f64]) -> Histogram {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        register(self.0, Histogram::with_opts(opts).expect("valid metric"))
    }

    fn histograms(&self, name: &str, help: &str, buckets: &[f64], labels: &[&str]) -> HistogramVec {
        let opts = HistogramOpts::new(name, help).buckets(buckets.to_vec());
        register(
            self.0,
            HistogramVec::new(opts, labels).expect("valid metric"),
        )
    }
}

impl Metrics {
    pub fn new() -> Arc<Self> {
        let registry = Registry::new();
        let b = Builder(&registry);
        // Requests and the queue.
        let requests_total = b.counters(
            "userhooks_requests_total",
            "Requests finished or rescheduled, by action and outcome",
            &["action", "outcome"],
        );
        let request_duration = b.histograms(
            "userhooks_request_duration_seconds",
            "Time from claim to finish of one attempt, by action",
            LATENCY_BUCKETS,
            &["action"],
        );
        let queue_wait = b.histogram(
            "userhooks_queue_wait_seconds",
            "Time from insert to first claim",
            WAIT_BUCKETS,
        );
        let queue_depth = b.gauges(
            "userhooks_queue_depth",
            "Requests in the table, by status",
            &["status"],
        );
        let oldest_pending_age = b.gauge(
            "userhooks_oldest_pending_age_seconds",
            "Age of the oldest pending request that is due",
        );
        // Sequin's Management API.
        let sequin_requests_total = b.counters(
            "userhooks_sequin_requests_total",
            "Sequin Management API calls, by operation and HTTP status (or timeout/error)",
            &["operation", "status"],
        );
        let sequin_request_duration = b.histograms(
            "userhooks_sequin_request_duration_seconds",
            "Latency of Sequin Management API calls, by operation",
            LATENCY_BUCKETS,
            &["operation"],
        );
        let sequin_write_wait = b.histograms(
            "userhooks_sequin_write_wait_seconds",
            "Time a Sequin write waited for USERHOOKS_SEQUIN_MAX_WRITES_PER_SECOND (and the restart spacing), by kind",
            WAIT_BUCKETS,
            &["kind"],
        );
        // What the worker has provisioned.
        let subscriptions = b.gauges(
            "userhooks_subscriptions",
            "Subscriptions by status",
            &["status"],
        );
        let live_subscriptions = b.gauges(
            "userhooks_live_subscriptions",
            "Live subscriptions (provisioning, active or paused) by source table",
            &["source_table"],
        );
        let backfills = b.gauges("userhooks_backfills", "Backfills by state", &["state"]);
        // The worker itself.
        let listener_connected = b.int_gauge(
            "userhooks_listener_connected",
            "1 when the LISTEN connection is up",
        );
        let sequin_auth_ok = b.int_gauge(
            "userhooks_sequin_auth_ok",
            "1 when Sequin accepts our API token",
        );
        let lease_lost_total = b.counter(
            "userhooks_lease_lost_total",
            "Results dropped because the lease was lost before write-back",
        );
        let in_flight = b.int_gauge("userhooks_in_flight", "Requests being processed now");
        let metrics = Metrics {
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
        };
        metrics.zero_fill();
        Arc::new(metrics)
    }

    /// Zero-fill every known label value, so dashboards and alerts see series from the start.
    fn zero_fill(&self) {
        for action in ACTIONS {
            self.request_duration.with_label_values(&[action]);
            for outcome in ["succeeded", "failed", "retried"] {
                self.requests_total.with_label_values(&[action, outcome]);
            }
        }
        for status in REQUEST_STATUSES {
            self.queue_depth.with_label_values(&[status]).set(0.0);
        }
        for status in SUBSCRIPTION_STATUSES {
            self.subscriptions.with_label_values(&[status]).set(0.0);
        }
        for state in BACKFILL_STATES {
            self.backfills.with_label_values(&[state]).set(0.0);
        }
        for operation in OPERATIONS {
            self.sequin_request_duration.with_label_values(&[operation]);
        }
        for kind in ["write", "restarting"] {
            self.sequin_write_wait.with_label_values(&[kind]);
        }
    }

    /// The Prometheus text exposition of every metric.
    pub fn render(&self) -> String {
        let mut buffer = Vec::new();
        if let Err(err) = TextEncoder::new().encode(&self.registry.gather(), &mut buffer) {
            tracing::error!(error = %err, "could not encode metrics");
        }
        String::from_utf8(buffer).unwrap_or_default()
    }
}

/// What the server answers from.
#[derive(Clone)]
struct Served {
    metrics: Arc<Metrics>,
    health: Arc<Health>,
}

async fn metrics_handler(State(served): State<Served>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        served.metrics.render(),
    )
}

async fn healthz() -> impl IntoResponse {
    Json(serde_json::json!({"status": "ok"}))
}

async fn readyz(State(served): State<Served>) -> impl IntoResponse {
    let checks = served.health.readiness();
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

pub fn router(metrics: Arc<Metrics>, health: Arc<Health>) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Served { metrics, health })
}

/// Bind the metrics address (fails fast on a taken port).
pub async fn bind(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    tokio::net::TcpListener::bind(addr).await
}

/// Serve `/metrics`, `/healthz` and `/readyz` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(metrics, health))
        .with_graceful_shutdown(shutdown)
        .await
}
