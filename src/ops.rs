//! Operator tools: `userhooks status` and `userhooks retry`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::db::{self, DbError};
use crate::subscriptions;

/// A printable summary of the queue, subscriptions and open backfills.
pub async fn status(database_url: &str) -> Result<String, DbError> {
    let client = db::connect(database_url, "userhooks-cli").await?;
    db::require_schema(&client).await?;
    let mut out = String::new();
    let queue = client
        .query(
            "select action, status, requests, oldest_pending_age_seconds
               from userhooks.queue_summary order by action, status",
            &[],
        )
        .await?;
    let _ = writeln!(out, "Requests (userhooks.queue_summary)");
    if queue.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for row in &queue {
        let age: Option<f64> = row.get(3);
        let _ = writeln!(
            out,
            "  {:<12} {:<10} {:>8}{}",
            row.get::<_, String>(0),
            row.get::<_, String>(1),
            row.get::<_, i64>(2),
            age.map(|a| format!("   oldest pending {}", human_age(a)))
                .unwrap_or_default()
        );
    }
    let due: Option<f64> = client
        .query_one(
            "select extract(epoch from now() - min(run_at))::float8
               from userhooks.subscription_requests where status = 'pending' and run_at <= now()",
            &[],
        )
        .await?
        .get(0);
    let _ = writeln!(
        out,
        "  oldest due pending request: {}",
        due.map(human_age).unwrap_or_else(|| "none".to_string())
    );

    let subs = subscriptions::count_by_status(&client).await?;
    let _ = writeln!(out, "\nSubscriptions");
    if subs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for (status, count) in &subs {
        let _ = writeln!(out, "  {status:<13} {count:>8}");
    }

    let backfills = client
        .query(
            "select b.id, b.subscription_id, s.user_id, b.state, b.rows_processed_count, b.rows_initial_count
               from userhooks.backfills b join userhooks.webhook_subscriptions s on s.id = b.subscription_id
              where b.state in ('active', 'paused') order by b.id limit 50",
            &[],
        )
        .await?;
    let _ = writeln!(out, "\nOpen backfills");
    if backfills.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for row in &backfills {
        let processed: i64 = row.get(4);
        let initial: Option<i64> = row.get(5);
        let progress = match initial {
            Some(total) if total > 0 => format!(
                "{processed}/{total} rows ({:.0}%)",
                processed as f64 * 100.0 / total as f64
            ),
            _ => format!("{processed} rows (total not known yet)"),
        };
        let _ = writeln!(
            out,
            "  backfill {} of subscription {} (user {:?}): {} {}",
            row.get::<_, i64>(0),
            row.get::<_, i64>(1),
            row.get::<_, String>(2),
            row.get::<_, String>(3),
            progress
        );
    }
    Ok(out)
}

fn human_age(seconds: f64) -> String {
    let seconds = seconds.max(0.0);
    if seconds < 120.0 {
        format!("{seconds:.1}s")
    } else if seconds < 7200.0 {
        format!("{:.1}m", seconds / 60.0)
    } else {
        format!("{:.1}h", seconds / 3600.0)
    }
}

/// Why an operator command could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum OpsError {
    #[error(transparent)]
    Db(#[from] DbError),
    #[error("no such request {0}")]
    NoSuchRequest(i64),
}

impl From<tokio_postgres::Error> for OpsError {
    fn from(err: tokio_postgres::Error) -> Self {
        OpsError::Db(DbError::Postgres(err))
    }
}

/// Which failed requests to re-queue.
pub enum RetrySelection {
    One(i64),
    /// Every failed request, optionally only those that finished within `since`.
    Failed {
        since: Option<Duration>,
    },
}

/// What `retry` did.
#[derive(Debug, Default)]
pub struct RetryReport {
    /// Re-queued, oldest first.
    pub requeued: Vec<i64>,
    /// Left as they are, each with a one-line reason.
    pub skipped: Vec<Skipped>,
}

#[derive(Debug)]
pub struct Skipped {
    pub id: i64,
    pub reason: String,
}

/// Re-queue failed requests (fresh attempt budget) through `userhooks.retry(id)`, which
/// refuses a request that a later request of the same user supersedes (migration 0009).
///
/// One at a time, oldest first: a user's failed requests are re-queued in the order they
/// were made, so each one's later requests are still failed when it is judged, and the
/// worker runs them again in that order.
pub async fn retry(database_url: &str, selection: RetrySelection) -> Result<RetryReport, OpsError> {
    let client = db::connect(database_url, "userhooks-cli").await?;
    db::require_schema(&client).await?;
    let ids: Vec<i64> = match selection {
        RetrySelection::One(id) => {
            let status: String = client
                .query_opt(
                    "select status from userhooks.subscription_requests where id = $1",
                    &[&id],
                )
                .await?
                .ok_or(OpsError::NoSuchRequest(id))?
                .get(0);
            if status != "failed" {
                return Ok(RetryReport {
                    requeued: Vec::new(),
                    skipped: vec![Skipped {
                        id,
                        reason: format!(
                            "request {id} not re-queued: it is {status}; only failed requests can be retried"
                        ),
                    }],
                });
            }
            vec![id]
        }
        RetrySelection::Failed { since } => {
            let since = since.map(|d| d.as_secs_f64());
            client
                .query(
                    "select id from userhooks.subscription_requests
                      where status = 'failed'
                        and ($1::float8 is null or finished_at >= now() - make_interval(secs => $1))
                      order by id",
                    &[&since],
                )
                .await?
                .iter()
                .map(|row| row.get(0))
                .collect()
        }
    };
    let mut report = RetryReport::default();
    let statement = client.prepare("select userhooks.retry($1)").await?;
    for id in ids {
        match client.query_one(&statement, &[&id]).await {
            Ok(row) if row.get::<_, bool>(0) => report.requeued.push(id),
            // Changed since it was listed (another retry, a DBA, retention).
            Ok(_) => report.skipped.push(Skipped {
                id,
                reason: format!("request {id} not re-queued: it is no longer failed"),
            }),
            // The function's refusals (a later request of the user, an erased secret): the
            // message says what to do instead.
            Err(err)
                if err.code()
                    == Some(&tokio_postgres::error::SqlState::OBJECT_NOT_IN_PREREQUISITE_STATE) =>
            {
                let reason = err
                    .as_db_error()
                    .map(|e| e.message().to_string())
                    .unwrap_or_else(|| err.to_string());
                report.skipped.push(Skipped { id, reason });
            }
            Err(err) => return Err(err.into()),
        }
    }
    Ok(report)
}
