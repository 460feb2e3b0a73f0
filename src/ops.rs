//! Operator tools: `userhooks status` and `userhooks retry`.

use std::fmt::Write as _;
use std::time::Duration;

use crate::db::{self, DbError};

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

    let subs = client
        .query(
            "select status, count(*) from userhooks.webhook_subscriptions group by status order by status",
            &[],
        )
        .await?;
    let _ = writeln!(out, "\nSubscriptions");
    if subs.is_empty() {
        let _ = writeln!(out, "  (none)");
    }
    for row in &subs {
        let _ = writeln!(
            out,
            "  {:<13} {:>8}",
            row.get::<_, String>(0),
            row.get::<_, i64>(1)
        );
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

/// Which failed requests to re-queue.
pub enum RetrySelection {
    One(i64),
    /// Every failed request, optionally only those that finished within `since`.
    Failed {
        since: Option<Duration>,
    },
}

/// Re-queue failed requests (fresh attempt budget). Returns the ids re-queued.
pub async fn retry(database_url: &str, selection: RetrySelection) -> Result<Vec<i64>, DbError> {
    let client = db::connect(database_url, "userhooks-cli").await?;
    db::require_schema(&client).await?;
    let rows = match selection {
        RetrySelection::One(id) => {
            client
                .query("select $1::bigint where userhooks.retry($1)", &[&id])
                .await?
        }
        RetrySelection::Failed { since } => {
            let since = since.map(|d| d.as_secs_f64());
            client
                .query(
                    "select id from userhooks.subscription_requests
                      where status = 'failed'
                        and ($1::float8 is null or finished_at >= now() - make_interval(secs => $1))
                        and userhooks.retry(id)",
                    &[&since],
                )
                .await?
        }
    };
    Ok(rows.iter().map(|r| r.get(0)).collect())
}
