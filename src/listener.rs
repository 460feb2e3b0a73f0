//! The dedicated LISTEN connection (outside the pool). NOTIFY is only a hint: the worker
//! also polls, and claims right after every (re)connect, so a lost notification costs at
//! most one poll interval.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use tokio::sync::{watch, Notify};
use tokio_postgres::AsyncMessage;

use crate::db;
use crate::health::Health;
use crate::retry::RetryPolicy;

pub const REQUESTS_CHANNEL: &str = "userhooks_requests";

const PING_TIMEOUT: Duration = Duration::from_secs(5);

const RECONNECT: RetryPolicy = RetryPolicy {
    base: Duration::from_millis(200),
    max_delay: Duration::from_secs(10),
    retry_after_cap: Duration::ZERO,
};

/// Keep a LISTEN connection up until `shutdown` flips to true; `wake` is notified on every
/// notification and after every (re)connect.
pub async fn run(
    database_url: String,
    ping_interval: Duration,
    wake: Arc<Notify>,
    health: Arc<Health>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut failures: u32 = 0;
    loop {
        if *shutdown.borrow() {
            break;
        }
        match listen_once(&database_url, ping_interval, &wake, &health, &mut shutdown).await {
            Ok(()) => break, // shutdown requested
            Err(err) => {
                if health.set_listener_connected(false) {
                    failures = 0; // it was up: this is a fresh loss, not a streak
                }
                if failures == 0 || failures.is_multiple_of(20) {
                    tracing::warn!(error = %crate::telemetry::error_chain(&err), failures, "LISTEN connection lost; reconnecting (polling meanwhile)");
                }
                // Claim now: whatever was notified while we were down is in the table.
                wake.notify_one();
                let delay = RECONNECT
                    .delay_now(failures.min(10), None)
                    .max(Duration::from_millis(50));
                failures = failures.saturating_add(1);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => {}
                }
            }
        }
    }
    health.set_listener_connected(false);
}

#[derive(Debug, thiserror::Error)]
enum ListenError {
    #[error(transparent)]
    Db(#[from] db::DbError),
    #[error(transparent)]
    Postgres(#[from] tokio_postgres::Error),
    #[error("the connection closed")]
    Closed,
    #[error("the connection did not answer a ping within {0:?}")]
    PingTimeout(Duration),
}

async fn listen_once(
    database_url: &str,
    ping_interval: Duration,
    wake: &Arc<Notify>,
    health: &Health,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<(), ListenError> {
    let (client, mut connection) = db::connect_raw(database_url, "userhooks-listener").await?;
    // Drive the connection on its own task and forward notifications.
    // The driver wakes the worker itself: one task hop less between NOTIFY and the claim.
    let driver_wake = wake.clone();
    let mut driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                // A burst of notifications coalesces into one stored permit.
                Ok(AsyncMessage::Notification(_)) => driver_wake.notify_one(),
                Ok(_) => {}
                Err(err) => {
                    tracing::debug!(error = %err, "LISTEN connection error");
                    break;
                }
            }
        }
    });
    let result = async {
        client
            .batch_execute(&format!("LISTEN {REQUESTS_CHANNEL}"))
            .await?;
        health.set_listener_connected(true);
        tracing::debug!("LISTEN connection established");
        wake.notify_one();
        let mut ping = tokio::time::interval(ping_interval);
        ping.tick().await;
        loop {
            tokio::select! {
                _ = &mut driver => return Err(ListenError::Closed),
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_TIMEOUT, client.simple_query("")).await {
                        Ok(Ok(_)) => {}
                        Ok(Err(err)) => return Err(err.into()),
                        Err(_) => return Err(ListenError::PingTimeout(PING_TIMEOUT)),
                    }
                }
                _ = shutdown.changed() => return Ok(()),
            }
        }
    }
    .await;
    driver.abort();
    result
}
