//! The outbox table: claiming requests and writing their outcome back, fenced by the lease.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;

use crate::db::DbError;
use crate::model::{Action, Change, Outcome, Request};
use crate::subscriptions;

/// Result of one claim round trip.
pub struct Claimed {
    pub requests: Vec<Request>,
    /// Earliest future `run_at` of a pending request, as a delay from now.
    pub next_due_in: Option<Duration>,
}

/// Claim up to `limit` due requests in one statement.
///
/// - `pending` rows whose `run_at` has come, and `running` rows whose lease expired (their
///   worker died), are claimable.
/// - A request waits while an earlier request of the same user is unfinished: per-user order.
/// - `MATERIALIZED` keeps the planner from folding the locking subquery into the UPDATE,
///   so `LIMIT` and `SKIP LOCKED` apply before the update (no over-claiming).
/// - `offset 0` keeps the per-user check a per-row probe of `user_open_idx`. Without it the
///   planner may turn it into a hash anti-join, which reads and sorts every open request on
///   each claim.
/// - The update finds its rows by `id = any(array(...))`, not by joining `due`: a join is
///   planned from table statistics, and on a large or never-analysed table it became a hash
///   join over a sequential scan of every row. An id list always probes the primary key.
/// - The last column piggybacks the next wake-up time on the same round trip.
pub const CLAIM_SQL: &str = "
with due as materialized (
    select r.id
      from userhooks.subscription_requests r
     where r.status in ('pending', 'running')
       and case r.status when 'pending' then r.run_at <= now()
                         else r.locked_until < now() end
       and not exists (
             select 1
               from userhooks.subscription_requests earlier
              where earlier.user_id = r.user_id
                and earlier.id < r.id
                and earlier.status in ('pending', 'running')
             offset 0)
     order by r.run_at, r.id
     limit $1
       for update skip locked
), claimed as (
    update userhooks.subscription_requests r
       set status = 'running',
           attempts = r.attempts + 1,
           locked_by = $2,
           locked_until = now() + make_interval(secs => $3),
           claimed_at = now(),
           updated_at = now()
     where r.id = any(array(select id from due))
    returning r.id, r.action, r.user_id, r.webhook_url, r.subscription_id, r.options,
              r.attempts, r.max_attempts,
              extract(epoch from now() - r.created_at)::float8 as waited
)
select c.id, c.action, c.user_id, c.webhook_url, c.subscription_id, c.options,
       c.attempts, c.max_attempts, c.waited,
       extract(epoch from (select min(p.run_at)
                             from userhooks.subscription_requests p
                            where p.status = 'pending' and p.run_at > now()) - now())::float8
           as next_due_in
  from (select 1) as one
  left join claimed c on true";

pub async fn claim(
    pool: &Pool,
    limit: usize,
    worker_id: &str,
    lease: Duration,
) -> Result<Claimed, DbError> {
    let client = pool.get().await?;
    let statement = client.prepare_cached(CLAIM_SQL).await?;
    let limit = limit as i64;
    let lease = lease.as_secs_f64();
    let rows = client
        .query(&statement, &[&limit, &worker_id, &lease])
        .await?;
    let mut next_due_in = None;
    let mut requests = Vec::with_capacity(rows.len());
    for row in rows {
        if let Some(secs) = row.get::<_, Option<f64>>("next_due_in") {
            next_due_in = Some(Duration::from_secs_f64(secs.max(0.0)));
        }
        let Some(id) = row.get::<_, Option<i64>>("id") else {
            continue;
        };
        // The CHECK constraint makes an unknown action impossible at the INSERT; a row that
        // has one anyway (a newer schema, a dropped constraint) is failed by the provisioner.
        requests.push(Request {
            id,
            action: Action::parse(row.get("action")),
            user_id: row.get("user_id"),
            webhook_url: row.get("webhook_url"),
            subscription_id: row.get("subscription_id"),
            // jsonb that the JSON library cannot represent (the schema's input limits refuse
            // it, but rows from before those limits may exist) must not crash the worker:
            // `null` options fail the request with a clear message instead.
            options: row.try_get("options").unwrap_or(Value::Null),
            attempts: row.get("attempts"),
            max_attempts: row.get("max_attempts"),
            waited: row.get::<_, Option<f64>>("waited").unwrap_or_default(),
        });
    }
    Ok(Claimed {
        requests,
        next_due_in,
    })
}

/// Whether the write-back took effect.
#[derive(Debug, PartialEq, Eq)]
pub enum WriteBack {
    Applied,
    /// Another worker owns the row now (our lease expired): nothing was written.
    LeaseLost,
}

const FENCE: &str = "where id = $1 and attempts = $2 and locked_by = $3 and status = 'running'";

/// Write one outcome back in its own transaction.
pub async fn write_back(
    pool: &Pool,
    worker_id: &str,
    request: &Request,
    outcome: &Outcome,
) -> Result<WriteBack, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let written = write_back_many(&tx, worker_id, &[(request, outcome)]).await?;
    tx.commit().await?;
    Ok(written.into_iter().next().unwrap_or(WriteBack::LeaseLost))
}

/// The fenced update of many requests in one statement; only where the fence holds.
/// `uncount` gives back the attempt of an auth rejection (not the request's fault);
/// a `pending` outcome keeps the previous result and is due after `delay`.
///
/// The plan is fenced, because the planner misjudged this statement badly (the numbers are
/// in docs/performance.md). It took the lease check (`locked_by = $8 and status = 'running'`) to
/// match about one row, since statistics of a hot queue table are always stale, and so
/// joined in a nested loop that reads the whole batch once per row. Now:
/// - `r.id = any($1)`, redundant with the join, lets it fetch the rows by primary key;
/// - the lease check sits inside `coalesce`, an expression the planner has no statistics
///   for, so it is taken to keep half the rows, and the join is hashed.
///
/// The subscription updates of the same write-back ([`subscriptions::apply`]) carry the
/// same `id = any($1)`.
///
/// It also sends `userhooks_request_done` for each request it finishes, the payload the row
/// trigger would send: from the statement this skips the trigger's per-row machinery
/// (migration 0006), and [`NOTIFIES_DONE_SQL`] turns the trigger off for the transaction.
pub const WRITE_BACK_SQL: &str = "
update userhooks.subscription_requests r
   set status = u.status,
       result = case when u.status = 'pending' then r.result else u.result end,
       last_error = u.last_error,
       run_at = case when u.status = 'pending' then now() + make_interval(secs => u.delay)
                     else r.run_at end,
       attempts = r.attempts - u.uncount,
       locked_by = null,
       locked_until = null,
       finished_at = case when u.status = 'pending' then null else now() end,
       updated_at = now()
  from unnest($1::bigint[], $2::int[], $3::text[], $4::jsonb[], $5::text[], $6::float8[], $7::int[])
       as u(id, attempts, status, result, last_error, delay, uncount)
 where r.id = any($1) and r.id = u.id and r.attempts = u.attempts
   and coalesce(r.locked_by = $8 and r.status = 'running', false)
returning r.id,
          case when r.status in ('succeeded', 'failed', 'cancelled')
               then pg_notify('userhooks_request_done',
                              json_build_object('id', r.id, 'status', r.status)::text)
          end";

/// Tells the `subscription_requests_done` trigger that this transaction's write-backs send
/// their own notifications (see [`WRITE_BACK_SQL`]).
pub const NOTIFIES_DONE_SQL: &str =
    "select pg_catalog.set_config('userhooks.notifies_request_done', 'on', true)";

/// Write many outcomes back inside `tx`, set-based: one statement for all request rows and
/// one per kind of subscription change ([`subscriptions::apply`]), whatever the batch size
/// (per-statement work such as loading CHECK constraints and trigger conditions is paid
/// once). Each request is fenced on its own lease; a request whose lease was lost changes
/// nothing, its subscription changes included.
pub async fn write_back_many(
    tx: &deadpool_postgres::Transaction<'_>,
    worker_id: &str,
    items: &[(&Request, &Outcome)],
) -> Result<Vec<WriteBack>, DbError> {
    let n = items.len();
    let mut ids = Vec::with_capacity(n);
    let mut attempts = Vec::with_capacity(n);
    let mut statuses = Vec::with_capacity(n);
    let mut results: Vec<Option<Value>> = Vec::with_capacity(n);
    let mut errors: Vec<Option<String>> = Vec::with_capacity(n);
    let mut delays = Vec::with_capacity(n);
    let mut uncounts = Vec::with_capacity(n);
    for (request, outcome) in items {
        ids.push(request.id);
        attempts.push(request.attempts);
        let (status, result, error, delay, uncount) = match outcome {
            Outcome::Succeeded { result, .. } => ("succeeded", Some(result.clone()), None, 0.0, 0),
            Outcome::Failed {
                kind,
                message,
                status,
                details,
                ..
            } => {
                let mut error = serde_json::json!({"kind": kind, "summary": message});
                if let Some(status) = status {
                    error["status"] = (*status).into();
                }
                if let Some(details) = details {
                    error["details"] = details.clone();
                }
                let result = serde_json::json!({ "error": error });
                ("failed", Some(result), Some(message.clone()), 0.0, 0)
            }
            Outcome::Retry { message, delay } => (
                "pending",
                None,
                Some(message.clone()),
                delay.as_secs_f64(),
                0,
            ),
            Outcome::AuthRejected { message } => ("pending", None, Some(message.clone()), 0.0, 1),
        };
        statuses.push(status);
        results.push(result);
        errors.push(error);
        delays.push(delay);
        uncounts.push(uncount);
    }
    let notifies = tx.prepare_cached(NOTIFIES_DONE_SQL).await?;
    let statement = tx.prepare_cached(WRITE_BACK_SQL).await?;
    // Pipelined: tokio-postgres sends requests in the order they are first polled, so the
    // mark reaches Postgres before the write-back without a round trip of its own.
    let params: [&(dyn tokio_postgres::types::ToSql + Sync); 8] = [
        &ids, &attempts, &statuses, &results, &errors, &delays, &uncounts, &worker_id,
    ];
    let (_, rows) =
        futures_util::try_join!(tx.execute(&notifies, &[]), tx.query(&statement, &params))?;
    let applied: std::collections::HashSet<i64> = rows.iter().map(|row| row.get(0)).collect();

    let changes: Vec<&Change> = items
        .iter()
        .filter(|(request, _)| applied.contains(&request.id))
        .flat_map(|(_, outcome)| match outcome {
            Outcome::Succeeded { changes, .. } | Outcome::Failed { changes, .. } => {
                changes.as_slice()
            }
            _ => &[],
        })
        .collect();
    if !changes.is_empty() {
        subscriptions::apply(tx, &changes).await?;
    }
    Ok(items
        .iter()
        .map(|(request, _)| {
            if applied.contains(&request.id) {
                WriteBack::Applied
            } else {
                WriteBack::LeaseLost
            }
        })
        .collect())
}

/// Renew the leases of every request this worker is working on, in one statement.
/// Returns the ids whose lease was lost (another worker owns them now), so their attempts
/// can be abandoned.
pub async fn extend_leases(
    pool: &Pool,
    worker_id: &str,
    held: &[(i64, i32)],
    lease: Duration,
) -> Result<Vec<i64>, DbError> {
    if held.is_empty() {
        return Ok(Vec::new());
    }
    let ids: Vec<i64> = held.iter().map(|(id, _)| *id).collect();
    let attempts: Vec<i32> = held.iter().map(|(_, a)| *a).collect();
    let client = pool.get().await?;
    let st = client
        .prepare_cached(
            "update userhooks.subscription_requests r
                set locked_until = now() + make_interval(secs => $4)
               from unnest($1::bigint[], $2::int[]) as held(id, attempts)
              where r.id = any($1) and r.id = held.id and r.attempts = held.attempts
                and coalesce(r.locked_by = $3 and r.status = 'running', false)
             returning r.id",
        )
        .await?;
    let renewed: std::collections::HashSet<i64> = client
        .query(&st, &[&ids, &attempts, &worker_id, &lease.as_secs_f64()])
        .await?
        .iter()
        .map(|row| row.get(0))
        .collect();
    Ok(ids.into_iter().filter(|id| !renewed.contains(id)).collect())
}

/// Put a request we claimed back in the queue (shutdown): `pending`, due now, the interrupted
/// attempt not counted. Fenced like a write-back.
pub async fn release(
    pool: &Pool,
    worker_id: &str,
    id: i64,
    attempts: i32,
) -> Result<bool, DbError> {
    let client = pool.get().await?;
    let sql = format!(
        "update userhooks.subscription_requests
            set status = 'pending', run_at = now(), attempts = greatest(attempts - 1, 0),
                locked_by = null, locked_until = null, updated_at = now() {FENCE}"
    );
    let n = client.execute(&sql, &[&id, &attempts, &worker_id]).await?;
    Ok(n == 1)
}

/// Delete terminal requests finished before `older_than` ago, at most `batch` rows.
pub async fn delete_expired(pool: &Pool, older_than: Duration, batch: i64) -> Result<u64, DbError> {
    let client = pool.get().await?;
    let secs = older_than.as_secs_f64();
    let n = client
        .execute(
            "delete from userhooks.subscription_requests
              where id in (select id from userhooks.subscription_requests
                            where status in ('succeeded', 'failed', 'cancelled')
                              and finished_at < now() - make_interval(secs => $1)
                            limit $2)",
            &[&secs, &batch],
        )
        .await?;
    Ok(n)
}
