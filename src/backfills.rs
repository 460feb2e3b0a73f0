//! Backfill progress tracking: keeps `userhooks.backfills` current by polling Sequin until
//! each backfill is terminal. The state lives in the table, so tracking resumes after a
//! restart, and each open backfill costs one Sequin call per interval across all workers.

use std::time::Duration;

use deadpool_postgres::Pool;
use futures_util::StreamExt;
use serde_json::Value;

use crate::db::DbError;
use crate::sequin::{SequinClient, SequinError};

/// Backfills polled at once.
const CONCURRENCY: usize = 16;

/// Take the open backfills that are due (not polled within the last half interval) and
/// stamp them, so concurrent workers split them instead of polling each twice.
const TAKE_DUE_SQL: &str = "
update userhooks.backfills b
   set updated_at = now()
  from userhooks.webhook_subscriptions s
 where b.id in (select id from userhooks.backfills
                 where state in ('active', 'paused')
                   and updated_at <= now() - make_interval(secs => $1)
                   for update skip locked)
   and s.id = b.subscription_id
returning b.id, b.sequin_backfill_id::text, s.sink_name, s.id";

const UPDATE_SQL: &str = "
update userhooks.backfills
   set state = $2,
       rows_initial_count = $3,
       rows_processed_count = coalesce($4, rows_processed_count),
       rows_ingested_count = coalesce($5, rows_ingested_count),
       completed_at = case when $2 in ('completed', 'cancelled', 'failed')
                           then coalesce($6::text::timestamptz, now()) end,
       updated_at = now()
 where id = $1 and state in ('active', 'paused')";

/// Poll every due backfill once. Returns whether any backfill is still open.
pub async fn poll_due(
    pool: &Pool,
    sequin: &SequinClient,
    name_prefix: &str,
    interval: Duration,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let half = interval.as_secs_f64() / 2.0;
    let due = client.query(TAKE_DUE_SQL, &[&half]).await?;
    if due.is_empty() {
        // None due right now (just started, or another worker polls them): still open?
        return Ok(client
            .query_one(
                "select exists (select 1 from userhooks.backfills where state in ('active', 'paused'))",
                &[],
            )
            .await?
            .get(0));
    }
    drop(client);
    let results: Vec<Result<(), DbError>> = futures_util::stream::iter(due)
        .map(|row| async move {
            let id: i64 = row.get(0);
            let sequin_id: String = row.get(1);
            let subscription_id: i64 = row.get(3);
            let sink = row
                .get::<_, Option<String>>(2)
                .unwrap_or_else(|| crate::provision::Names::new(name_prefix, subscription_id).sink);
            match sequin.get_backfill(&sink, &sequin_id).await {
                Ok(Some(backfill)) => record(pool, id, &backfill.body()).await,
                // The sink is gone (unsubscribed), and its backfills with it.
                Ok(None) => record(pool, id, &serde_json::json!({"state": "cancelled"})).await,
                Err(err) => {
                    log_poll_error(&err);
                    Ok(())
                }
            }
        })
        .buffer_unordered(CONCURRENCY)
        .collect()
        .await;
    for result in results {
        result?;
    }
    Ok(true)
}

fn log_poll_error(err: &SequinError) {
    tracing::debug!(error = %err, "could not poll backfill progress; will try next interval");
}

async fn record(pool: &Pool, id: i64, backfill: &Value) -> Result<(), DbError> {
    let state = match backfill["state"].as_str() {
        Some(s @ ("active" | "paused" | "completed" | "cancelled" | "failed")) => s,
        _ => return Ok(()),
    };
    let count = |key: &str| backfill[key].as_i64();
    let finished_at = backfill["completed_at"]
        .as_str()
        .or_else(|| backfill["canceled_at"].as_str())
        .map(String::from);
    let client = pool.get().await?;
    let st = client.prepare_cached(UPDATE_SQL).await?;
    client
        .execute(
            &st,
            &[
                &id,
                &state,
                &count("rows_initial_count"),
                &count("rows_processed_count"),
                &count("rows_ingested_count"),
                &finished_at,
            ],
        )
        .await?;
    Ok(())
}
