//! The worker: one `select!` loop that wakes on NOTIFY, a poll tick, the next due `run_at`
//! or a finished task; claims as many requests as it has free capacity; and on shutdown
//! finishes or puts back what it holds.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use tokio::sync::{oneshot, watch, Notify};
use tokio::task::JoinSet;

use crate::batch::Done;
use crate::config::Config;
use crate::db::{self, DbError};
use crate::doctor;
use crate::health::Health;
use crate::housekeeping;
use crate::listener;
use crate::metrics::{self, Metrics};
use crate::model::{Outcome, Request};
use crate::provision::Provisioner;
use crate::queue::{self, WriteBack};
use crate::sequin::{ErrorClass, Pacer, SequinClient};
use crate::webhook_url::Resolver;
use crate::writeback::{WriteBackOp, Writer};

/// At most one "request rescheduled" warning per interval (the rest go to debug).
static RETRY_LOG: crate::telemetry::RateLimit =
    crate::telemetry::RateLimit::new(Duration::from_secs(30));

/// Pool connections at most; with the LISTEN connection the worker stays within 8.
const POOL_MAX: usize = 7;

/// How often a rejected token is tried again.
const AUTH_PROBE_INTERVAL: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    #[error(transparent)]
    Db(#[from] DbError),
    /// A start-up check that the worker cannot work around, in `userhooks doctor`'s words.
    #[error(transparent)]
    Preflight(#[from] doctor::PreflightError),
    #[error("cannot listen on USERHOOKS_METRICS_ADDR {addr}: {source}")]
    MetricsAddr {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A built worker, ready to `run`.
pub struct App {
    config: Arc<Config>,
    pool: Pool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    provisioner: Arc<Provisioner>,
    metrics_listener: Option<tokio::net::TcpListener>,
}

/// Connect, run the start-up checks (see [`doctor`]), bind the metrics port. Fails fast with
/// a clear message.
pub async fn build(config: Config) -> Result<App, BuildError> {
    build_with_resolver(config, Resolver::default()).await
}

/// [`build`], with webhook URL hosts looked up by `resolver` instead of the system resolver
/// (tests inject DNS faults this way).
pub async fn build_with_resolver(config: Config, resolver: Resolver) -> Result<App, BuildError> {
    let config = Arc::new(config);
    // Sized to the work, not to the concurrency: tasks spend their time waiting on Sequin
    // and hold a connection only for short statements.
    let pool = db::pool(&config.database_url, (config.concurrency + 2).min(POOL_MAX))?;
    {
        let client = pool
            .get()
            .await
            .map_err(|e| DbError::from_checkout(&config.database_url, e))?;
        // The statements are written for the latest schema: on an older one every subscribe
        // would fail and be retried until exhausted, so refuse to start instead.
        db::require_schema(&client).await?;
    }
    let metrics = Metrics::new();
    let health = Health::new(
        metrics.listener_connected.clone(),
        metrics.sequin_auth_ok.clone(),
    );
    let sequin = SequinClient::new(
        &config.sequin_api_url,
        config.sequin_token.clone(),
        config.http_timeout,
        metrics.clone(),
    )
    .with_pacer(Pacer::new(
        config.sequin_max_writes_per_second,
        config.sequin_restart_spacing,
    ));
    let provisioner = Arc::new(Provisioner::new(
        config.clone(),
        pool.clone(),
        sequin,
        resolver,
    ));
    // Also puts the filter function in place (written only when missing or different).
    doctor::at_worker_start(&config, &pool, &provisioner, &health).await?;
    let metrics_listener = match config.metrics_addr {
        Some(addr) => Some(
            metrics::bind(addr)
                .await
                .map_err(|source| BuildError::MetricsAddr { addr, source })?,
        ),
        None => None,
    };
    Ok(App {
        config,
        pool,
        metrics,
        health,
        provisioner,
        metrics_listener,
    })
}

impl App {
    pub fn metrics(&self) -> Arc<Metrics> {
        self.metrics.clone()
    }

    /// What the worker knows about its connections and its Sequin token.
    pub fn health(&self) -> Arc<Health> {
        self.health.clone()
    }

    /// The bound metrics address (useful with port 0).
    pub fn metrics_addr(&self) -> Option<SocketAddr> {
        self.metrics_listener
            .as_ref()
            .and_then(|l| l.local_addr().ok())
    }

    /// Run until `shutdown` resolves, then drain within the grace period.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send) -> Result<(), DbError> {
        let App {
            config,
            pool,
            metrics,
            health,
            provisioner,
            metrics_listener,
        } = self;
        let metrics_addr = metrics_listener.as_ref().and_then(|l| l.local_addr().ok());
        let (stop_tx, stop_rx) = watch::channel(false);
        let wake = Arc::new(Notify::new());
        let mut background = JoinSet::new();
        background.spawn(listener::run(
            config.database_url.clone(),
            config.listener_ping,
            wake.clone(),
            health.clone(),
            stop_rx.clone(),
        ));
        if let Some(listener) = metrics_listener {
            let mut stop = stop_rx.clone();
            let metrics = metrics.clone();
            let health = health.clone();
            background.spawn(async move {
                let shutdown = async move {
                    let _ = stop.wait_for(|s| *s).await;
                };
                if let Err(err) = metrics::serve(listener, metrics, health, shutdown).await {
                    tracing::error!(error = %err, "metrics server stopped");
                }
            });
        }
        background.spawn(housekeeping::run(
            config.clone(),
            pool.clone(),
            provisioner.clone(),
            metrics.clone(),
            health.clone(),
            stop_rx.clone(),
        ));
        let leases = Leases::default();
        background.spawn(keep_leases(
            pool.clone(),
            config.clone(),
            leases.clone(),
            health.clone(),
            stop_rx.clone(),
        ));
        let (writer, writer_task) = Writer::spawn(
            pool.clone(),
            WriteBackOp {
                worker_id: config.worker_id.clone(),
            },
        );
        let mut state = Loop {
            config: config.clone(),
            pool: pool.clone(),
            metrics: metrics.clone(),
            health,
            provisioner,
            writer,
            tasks: JoinSet::new(),
            leases: leases.clone(),
            last_db_error_log: None,
        };
        log_ready(&config, metrics_addr);
        state.run(shutdown, &wake).await;
        state.drain().await;
        // The last writer handle goes with the loop; the task ends once it has written all.
        drop(state);
        let _ = writer_task.await;

        let _ = stop_tx.send(true);
        while background.join_next().await.is_some() {}
        tracing::info!("worker stopped");
        Ok(())
    }
}

/// One line with what an operator checks first: where the metrics are and the settings that
/// decide what the worker touches. Hosts and names only: no token, no password. Then, if
/// Postgres is elsewhere under `sslmode=prefer`, one warning that it may go without TLS.
fn log_ready(config: &Config, metrics_addr: Option<SocketAddr>) {
    let metrics = metrics_addr.map_or_else(|| "off".to_string(), |a| format!("http://{a}/metrics"));
    let sequin = url::Url::parse(&config.sequin_api_url)
        .ok()
        .and_then(|u| {
            let host = u.host_str()?.to_string();
            Some(match u.port_or_known_default() {
                Some(port) => format!("{host}:{port}"),
                None => host,
            })
        })
        .unwrap_or_default();
    let database = db::pg_config(&config.database_url, "userhooks-worker")
        .map(|c| db::describe_target(&c))
        .unwrap_or_default();
    tracing::info!(
        metrics = %metrics,
        source_table = %config.source_table,
        sequin = %sequin,
        postgres = %database,
        concurrency = config.concurrency,
        lease = ?config.lease,
        name_prefix = %config.name_prefix,
        "worker ready"
    );
    // Once per start, here rather than in every CLI command.
    if let Some(warning) = db::plaintext_fallback_warning(&config.database_url) {
        tracing::warn!("{warning}");
    }
}

struct Loop {
    config: Arc<Config>,
    pool: Pool,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    provisioner: Arc<Provisioner>,
    writer: Writer,
    tasks: JoinSet<(i64, bool)>,
    /// Claimed and not yet written back: id → attempts (the fence).
    /// Claimed and not yet written back, shared with the keeper that renews the leases.
    leases: Leases,
    last_db_error_log: Option<Instant>,
}

impl Loop {
    fn auth_ok(&self) -> bool {
        self.health.sequin_auth_ok()
    }

    fn capacity(&self) -> usize {
        self.config.concurrency.saturating_sub(self.leases.len())
    }

    async fn run(&mut self, shutdown: impl Future<Output = ()>, wake: &Notify) {
        tokio::pin!(shutdown);
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut auth_probe = tokio::time::interval(AUTH_PROBE_INTERVAL);
        auth_probe.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut next_due: Option<tokio::time::Instant> = None;
        let mut claim_now = true;
        let mut polls: u32 = 0;
        // Claiming in batches: after a completion, wait until a sixteenth of the capacity is
        // free (or nothing runs) before the next claim, instead of one query per completion.
        // A larger share leaves slots idle while they wait for it (docs/performance.md).
        let batch_threshold = (self.config.concurrency / 16).max(1);
        loop {
            if claim_now && self.auth_ok() && self.capacity() > 0 {
                next_due = self.claim().await;
            }
            claim_now = false;
            let due = async {
                match next_due {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = &mut shutdown => break,
                _ = wake.notified() => claim_now = true,
                _ = poll.tick() => {
                    // NOTIFY covers new requests while the listener is up, so the fallback
                    // poll (for expired leases and lost notifications) runs every other
                    // tick then: an idle worker stays under one query per second.
                    polls = polls.wrapping_add(1);
                    claim_now = !self.health.listener_connected() || polls.is_multiple_of(2);
                }
                _ = due => { next_due = None; claim_now = true; }
                Some(joined) = self.tasks.join_next(), if !self.tasks.is_empty() => {
                    self.finished(joined);
                    while let Some(joined) = self.tasks.try_join_next() {
                        self.finished(joined);
                    }
                    claim_now = self.leases.is_empty() || self.capacity() >= batch_threshold;
                }
                _ = auth_probe.tick(), if !self.auth_ok() => {
                    if self.probe_auth().await {
                        claim_now = true;
                    }
                }
            }
        }
    }

    fn finished(&mut self, joined: Result<(i64, bool), tokio::task::JoinError>) {
        match joined {
            Ok((id, auth_rejected)) => {
                self.leases.finish(id);
                if auth_rejected && self.health.set_sequin_auth_ok(false) {
                    tracing::error!("Sequin rejects the API token; claiming paused, requests stay pending; re-checking every {AUTH_PROBE_INTERVAL:?}");
                }
            }
            Err(err) => {
                // A panic in a task is a bug; the row's lease expires and it is retried.
                tracing::error!(error = %err, "request task failed");
            }
        }
        self.metrics.in_flight.set(self.leases.len() as i64);
    }

    /// Claim up to the free capacity; returns when the next pending request becomes due.
    async fn claim(&mut self) -> Option<tokio::time::Instant> {
        let limit = self.capacity();
        let claimed = match queue::claim(
            &self.pool,
            limit,
            &self.config.worker_id,
            self.config.lease,
        )
        .await
        {
            Ok(claimed) => {
                self.health.set_database_ok(true);
                claimed
            }
            Err(err) => {
                self.health.set_database_ok(false);
                let now = Instant::now();
                if self
                    .last_db_error_log
                    .is_none_or(|at| now.duration_since(at) > Duration::from_secs(30))
                {
                    self.last_db_error_log = Some(now);
                    tracing::error!(error = %err, "cannot claim requests; retrying at the next poll");
                }
                return None;
            }
        };
        for request in claimed.requests {
            if request.attempts == 1 {
                self.metrics.queue_wait.observe(request.waited);
            }
            let lease_lost = self.leases.hold(request.id, request.attempts);
            let provisioner = self.provisioner.clone();
            let writer = self.writer.clone();
            let metrics = self.metrics.clone();
            self.tasks.spawn(async move {
                let id = request.id;
                let auth_rejected =
                    process(&provisioner, &writer, &metrics, request, lease_lost).await;
                (id, auth_rejected)
            });
        }
        self.metrics.in_flight.set(self.leases.len() as i64);
        claimed.next_due_in.map(|d| tokio::time::Instant::now() + d)
    }

    /// Is the token accepted again?
    async fn probe_auth(&mut self) -> bool {
        match self.provisioner.sequin().list_databases().await {
            Ok(_) => {
                self.health.set_sequin_auth_ok(true);
                tracing::info!("Sequin accepts the API token again; resuming");
                true
            }
            Err(err) if err.class() == ErrorClass::Auth => {
                tracing::error!(error = %err, "Sequin still rejects the API token; requests stay pending");
                false
            }
            Err(err) => {
                tracing::warn!(error = %err, "could not check the API token");
                false
            }
        }
    }

    /// Shutdown: stop claiming, let in-flight requests finish within the grace period, put
    /// back the rest.
    async fn drain(&mut self) {
        if !self.tasks.is_empty() {
            tracing::info!(in_flight = self.leases.len(), grace = ?self.config.shutdown_grace, "shutting down: finishing in-flight requests");
        }
        let deadline = tokio::time::sleep(self.config.shutdown_grace);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                joined = self.tasks.join_next() => match joined {
                    Some(joined) => self.finished(joined),
                    None => break,
                },
                _ = &mut deadline => break,
            }
        }
        self.tasks.abort_all();
        while self.tasks.join_next().await.is_some() {}
        let unfinished = self.leases.take_all();
        for (id, attempts) in &unfinished {
            match queue::release(&self.pool, &self.config.worker_id, *id, *attempts).await {
                Ok(_) => {}
                Err(err) => {
                    tracing::warn!(request_id = id, error = %err, "could not put a request back; its lease will expire")
                }
            }
        }
        if !unfinished.is_empty() {
            tracing::info!(
                count = unfinished.len(),
                "put unfinished requests back in the queue"
            );
        }
        self.metrics.in_flight.set(0);
    }
}

/// Carry out one request and write the outcome back. Returns whether Sequin rejected our token.
async fn process(
    provisioner: &Provisioner,
    writer: &Writer,
    metrics: &Metrics,
    request: Request,
    lease_lost: oneshot::Receiver<()>,
) -> bool {
    let started = Instant::now();
    let outcome = tokio::select! {
        outcome = provisioner.handle(&request) => outcome,
        Ok(()) = lease_lost => {
            // Another worker owns the request now: stop here, as if crashed; the owner adopts
            // or undoes whatever this attempt created.
            metrics.lease_lost_total.inc();
            tracing::warn!(request_id = request.id, attempts = request.attempts, "lease lost while working; attempt abandoned");
            return false;
        }
    };
    let Some(Done {
        item: (request, outcome),
        output,
    }) = writer.run((request, outcome)).await
    else {
        tracing::error!(
            "the write-back task stopped; the request will be retried when its lease expires"
        );
        return false;
    };
    let written = match output {
        Ok(written) => Some(written),
        Err(err) => {
            tracing::error!(request_id = request.id, error = %err, "write-back failed");
            None
        }
    };
    let action = request.action_label();
    let elapsed = started.elapsed();
    metrics
        .request_duration
        .with_label_values(&[action])
        .observe(elapsed.as_secs_f64());
    match written {
        Some(WriteBack::Applied) => {
            metrics
                .requests_total
                .with_label_values(&[action, outcome.label()])
                .inc();
            log_outcome(&request, &outcome, elapsed);
        }
        Some(WriteBack::LeaseLost) => {
            metrics.lease_lost_total.inc();
            tracing::warn!(
                request_id = request.id,
                action,
                attempts = request.attempts,
                "lease lost before write-back; result dropped (another worker owns the request)"
            );
        }
        None => {
            tracing::error!(request_id = request.id, action, "could not write the result back; the request will be retried when its lease expires");
        }
    }
    matches!(outcome, Outcome::AuthRejected { .. })
}

fn log_outcome(request: &Request, outcome: &Outcome, elapsed: Duration) {
    let duration_ms = elapsed.as_millis() as u64;
    let action = request.action_label();
    tracing::debug!(request_id = request.id, user_id = %request.user_id, "request user");
    match outcome {
        Outcome::Succeeded { .. } => tracing::info!(
            request_id = request.id,
            action,
            outcome = "succeeded",
            attempts = request.attempts,
            duration_ms,
            "request finished"
        ),
        Outcome::Failed { kind, message, .. } => tracing::warn!(
            request_id = request.id, action, outcome = "failed", kind, attempts = request.attempts, duration_ms,
            error = %message, "request failed"
        ),
        Outcome::Retry { message, delay } => {
            // When Sequin is down every request lands here: one warning per interval, the
            // per-request detail at debug.
            tracing::debug!(
                request_id = request.id, action, outcome = "retried", attempts = request.attempts, duration_ms,
                retry_in_ms = delay.as_millis() as u64, error = %message, "request rescheduled"
            );
            if let Some(suppressed) = RETRY_LOG.check() {
                tracing::warn!(
                    request_id = request.id, action, attempts = request.attempts,
                    retry_in_ms = delay.as_millis() as u64, similar_since_last = suppressed,
                    error = %message, "requests are being rescheduled (showing one per 30s)"
                );
            }
        }
        Outcome::AuthRejected { .. } => tracing::debug!(
            request_id = request.id,
            action,
            "put back: Sequin rejects the token"
        ),
    }
}

/// The requests this worker holds: claimed and not yet written back, each with its lease.
/// The loop counts them for its capacity; one keeper task renews all their leases with one
/// statement every lease/3, so an attempt that makes several slow Sequin calls keeps its
/// request (without renewal, another worker would take it over mid-flight and fence off
/// every attempt's write-back: a livelock).
#[derive(Clone, Default)]
struct Leases(Arc<std::sync::Mutex<HashMap<i64, Lease>>>);

struct Lease {
    /// The claim's attempt count: the fence of renewal, write-back and release.
    attempts: i32,
    /// Tells the task its lease was lost. Taken when that happens: the request is no longer
    /// renewed, but stays held until its task has stopped.
    lost: Option<oneshot::Sender<()>>,
}

impl Leases {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<i64, Lease>> {
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Hold a claimed request; the receiver fires if its lease is found lost.
    fn hold(&self, id: i64, attempts: i32) -> oneshot::Receiver<()> {
        let (lost, receiver) = oneshot::channel();
        self.lock().insert(
            id,
            Lease {
                attempts,
                lost: Some(lost),
            },
        );
        receiver
    }

    /// Its task has ended (written back, or abandoned).
    fn finish(&self, id: i64) {
        self.lock().remove(&id);
    }

    fn len(&self) -> usize {
        self.lock().len()
    }

    fn is_empty(&self) -> bool {
        self.lock().is_empty()
    }

    /// (id, attempts) of the leases still to renew.
    fn renewable(&self) -> Vec<(i64, i32)> {
        self.lock()
            .iter()
            .filter(|(_, lease)| lease.lost.is_some())
            .map(|(id, lease)| (*id, lease.attempts))
            .collect()
    }

    /// Another worker owns these claims now: tell their tasks. A claim is named with its
    /// attempts, so a later claim of the same request is not mistaken for it.
    fn lost(&self, claims: impl IntoIterator<Item = (i64, i32)>) {
        let mut held = self.lock();
        for (id, attempts) in claims {
            let signal = held
                .get_mut(&id)
                .filter(|lease| lease.attempts == attempts)
                .and_then(|lease| lease.lost.take());
            if let Some(signal) = signal {
                let _ = signal.send(());
            }
        }
    }

    /// Stop holding everything (shutdown): (id, attempts) of each, to put back.
    fn take_all(&self) -> Vec<(i64, i32)> {
        self.lock()
            .drain()
            .map(|(id, lease)| (id, lease.attempts))
            .collect()
    }
}

/// Renew held leases until `stop`. A failed renewal is retried at the next tick (the lease
/// is three ticks long); a lost lease abandons that request's attempt.
async fn keep_leases(
    pool: Pool,
    config: Arc<Config>,
    leases: Leases,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let mut tick = tokio::time::interval(config.lease / 3);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tick.tick().await;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = tick.tick() => {}
        }
        let held = leases.renewable();
        match queue::extend_leases(&pool, &config.worker_id, &held, config.lease).await {
            Ok(lost) => leases.lost(held.into_iter().filter(|(id, _)| lost.contains(id))),
            Err(err) => {
                health.set_database_ok(false);
                tracing::warn!(error = %err, "could not renew leases; will retry");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lost_lease_stops_renewal_but_stays_held_until_its_task_ends() {
        let leases = Leases::default();
        let mut first = leases.hold(1, 3);
        let _second = leases.hold(2, 1);
        assert_eq!(leases.renewable().len(), 2);
        // A loss reported for another claim of the request (other attempts) is not this one's.
        leases.lost([(1, 2)]);
        assert!(first.try_recv().is_err());
        leases.lost([(1, 3)]);
        assert_eq!(first.try_recv(), Ok(()));
        assert_eq!(leases.renewable(), [(2, 1)]);
        assert_eq!(leases.len(), 2, "still held: counts against the capacity");
        leases.finish(1);
        assert_eq!(leases.take_all(), [(2, 1)]);
        assert!(leases.is_empty());
    }
}
