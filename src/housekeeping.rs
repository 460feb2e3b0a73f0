//! Background chores of a running worker: gauges read from the database on a timer (not per
//! scrape), backfill progress, and retention of finished requests.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::watch;

use crate::config::Config;
use crate::db::DbError;
use crate::health::Health;
use crate::metrics::{Metrics, BACKFILL_STATES, REQUEST_STATUSES, SUBSCRIPTION_STATUSES};
use crate::provision::Provisioner;
use crate::queue;
use crate::subscriptions;

/// Open requests (pending/running) come from the small partial index, so this is cheap.
const GAUGE_INTERVAL: Duration = Duration::from_secs(10);
/// Whole-table counts (terminal requests, subscriptions, backfills) are refreshed less often.
const SLOW_GAUGE_EVERY: u32 = 3;
/// Backfill ticks between looks for backfills when none are known to be open.
const DISCOVER_EVERY: u32 = 15;
const RETENTION_INTERVAL: Duration = Duration::from_secs(60);
const RETENTION_BATCH: i64 = 1000;

pub async fn run(
    config: Arc<Config>,
    pool: Pool,
    provisioner: Arc<Provisioner>,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    mut stop: watch::Receiver<bool>,
) {
    let mut gauges = tokio::time::interval(GAUGE_INTERVAL);
    gauges.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut retention = tokio::time::interval(RETENTION_INTERVAL);
    retention.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut backfills = tokio::time::interval(config.backfill_poll_interval);
    backfills.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut tick: u32 = 0;
    let mut backfill_ticks: u32 = 0;
    let mut backfills_open = true;
    loop {
        tokio::select! {
            _ = stop.changed() => return,
            _ = gauges.tick() => {
                let slow = tick.is_multiple_of(SLOW_GAUGE_EVERY);
                tick = tick.wrapping_add(1);
                match refresh_gauges(&pool, &metrics, &config.source_table, slow).await {
                    Ok(()) => health.set_database_ok(true),
                    Err(err) => {
                        health.set_database_ok(false);
                        tracing::debug!(error = %err, "could not refresh gauges");
                    }
                }
            }
            _ = backfills.tick() => {
                // Without open backfills, look only every DISCOVER_EVERY ticks (to find those
                // another worker started), so an idle worker does not poll an empty table.
                backfill_ticks = backfill_ticks.wrapping_add(1);
                let due = backfills_open
                    || provisioner.take_backfill_hint()
                    || backfill_ticks.is_multiple_of(DISCOVER_EVERY);
                if due {
                    match crate::backfills::poll_due(
                        &pool,
                        provisioner.sequin(),
                        &config.name_prefix,
                        config.backfill_poll_interval,
                    )
                    .await
                    {
                        Ok(open) => backfills_open = open,
                        Err(err) => tracing::debug!(error = %err, "could not poll backfills"),
                    }
                }
            }
            _ = retention.tick() => {
                if let Err(err) = purge(&pool, config.retention, &mut stop).await {
                    tracing::warn!(error = %err, "retention: could not delete old requests");
                }
            }
        }
    }
}

async fn refresh_gauges(
    pool: &Pool,
    metrics: &Metrics,
    source_table: &str,
    slow: bool,
) -> Result<(), DbError> {
    let client = pool.get().await?;
    let open = client
        .prepare_cached(
            "select status, count(*)::float8,
                    extract(epoch from now() - min(run_at) filter (where status = 'pending' and run_at <= now()))::float8
               from userhooks.subscription_requests
              where status in ('pending', 'running')
              group by status",
        )
        .await?;
    let mut counts = HashMap::new();
    let mut oldest = 0.0;
    for row in client.query(&open, &[]).await? {
        let status: String = row.get(0);
        counts.insert(status, row.get::<_, f64>(1));
        if let Some(age) = row.get::<_, Option<f64>>(2) {
            oldest = age.max(0.0);
        }
    }
    for status in ["pending", "running"] {
        metrics
            .queue_depth
            .with_label_values(&[status])
            .set(counts.get(status).copied().unwrap_or(0.0));
    }
    metrics.oldest_pending_age.set(oldest);
    if !slow {
        return Ok(());
    }
    let grouped = |table: &str, column: &str| {
        format!("select {column}, count(*)::float8 from userhooks.{table} group by {column}")
    };
    let terminal = client
        .query(
            "select status, count(*)::float8 from userhooks.subscription_requests
              where status in ('succeeded', 'failed', 'cancelled') group by status",
            &[],
        )
        .await?;
    set_all(&metrics.queue_depth, &REQUEST_STATUSES[2..], &terminal);
    set_subscription_gauges(&client, metrics, source_table).await?;
    let backfills = client.query(&grouped("backfills", "state"), &[]).await?;
    set_all(&metrics.backfills, BACKFILL_STATES, &backfills);
    Ok(())
}

/// Subscriptions by status, and live ones by source table, from one pass over the table.
/// Every table that has had a subscription keeps its series (zero once none is live), and
/// this worker's table has one from the start.
async fn set_subscription_gauges(
    client: &deadpool_postgres::Client,
    metrics: &Metrics,
    source_table: &str,
) -> Result<(), DbError> {
    let rows = subscriptions::counts(client).await?;
    let mut by_status: HashMap<&str, f64> = HashMap::new();
    let mut live: HashMap<&str, f64> = HashMap::from([(source_table, 0.0)]);
    for row in &rows {
        *by_status.entry(&row.status).or_default() += row.count;
        let table = live.entry(&row.source_table).or_default();
        if row.live {
            *table += row.count;
        }
    }
    for status in SUBSCRIPTION_STATUSES {
        let count = by_status.get(status).copied().unwrap_or(0.0);
        metrics
            .subscriptions
            .with_label_values(&[status])
            .set(count);
    }
    for (table, count) in live {
        metrics
            .live_subscriptions
            .with_label_values(&[table])
            .set(count);
    }
    Ok(())
}

/// Set every known label (zero when absent from `rows`).
fn set_all(gauge: &prometheus::GaugeVec, labels: &[&str], rows: &[tokio_postgres::Row]) {
    for label in labels {
        let value = rows
            .iter()
            .find(|row| row.get::<_, &str>(0) == *label)
            .map(|row| row.get::<_, f64>(1))
            .unwrap_or(0.0);
        gauge.with_label_values(&[label]).set(value);
    }
}

/// Delete expired terminal requests in small batches, pausing between them so the purge
/// never competes with claims for long.
async fn purge(
    pool: &Pool,
    retention: Duration,
    stop: &mut watch::Receiver<bool>,
) -> Result<(), DbError> {
    let mut total = 0;
    loop {
        let deleted = queue::delete_expired(pool, retention, RETENTION_BATCH).await?;
        total += deleted;
        if deleted < RETENTION_BATCH as u64 || *stop.borrow() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    if total > 0 {
        tracing::info!(deleted = total, "retention: deleted finished requests");
    }
    Ok(())
}
