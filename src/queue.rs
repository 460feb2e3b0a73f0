//! The outbox table: claiming requests and writing their outcome back, fenced by the lease.

use std::time::Duration;

use deadpool_postgres::Pool;
use serde_json::Value;
use tokio_postgres::types::ToSql;

use crate::db::DbError;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Action {
    Subscribe,
    Unsubscribe,
    Backfill,
    Update,
    Pause,
    Resume,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        Some(match text {
            "subscribe" => Action::Subscribe,
            "unsubscribe" => Action::Unsubscribe,
            "backfill" => Action::Backfill,
            "update" => Action::Update,
            "pause" => Action::Pause,
            "resume" => Action::Resume,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Subscribe => "subscribe",
            Action::Unsubscribe => "unsubscribe",
            Action::Backfill => "backfill",
            Action::Update => "update",
            Action::Pause => "pause",
            Action::Resume => "resume",
        }
    }
}

/// A claimed request. `attempts` (after the claim's increment) and `locked_by` fence every
/// write-back: if another worker re-claimed the row meanwhile, ours changes nothing.
#[derive(Clone, Debug)]
pub struct Request {
    pub id: i64,
    pub action: Action,
    pub user_id: String,
    pub webhook_url: Option<String>,
    pub subscription_id: Option<i64>,
    pub options: Value,
    pub attempts: i32,
    pub max_attempts: i32,
    /// Seconds from insert to this claim.
    pub waited: f64,
}

impl Request {
    pub fn is_last_attempt(&self) -> bool {
        self.attempts >= self.max_attempts
    }
}

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
/// - The last column piggybacks the next wake-up time on the same round trip.
const CLAIM_SQL: &str = "
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
                and earlier.status in ('pending', 'running'))
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
      from due
     where r.id = due.id
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
        let action_text: String = row.get("action");
        // The CHECK constraint makes an unknown action impossible; a row that somehow has one
        // is failed by the worker rather than crashing it.
        let action = Action::parse(&action_text).unwrap_or(Action::Subscribe);
        requests.push(Request {
            id,
            action,
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

/// What the worker decided for one attempt.
#[derive(Debug)]
pub enum Outcome {
    Succeeded {
        result: Value,
        changes: Vec<Change>,
    },
    Failed {
        /// `invalid_request`, `sequin_rejected`, `exhausted`, `not_found`, ...
        kind: &'static str,
        message: String,
        status: Option<u16>,
        details: Option<Value>,
        changes: Vec<Change>,
    },
    /// Try again after `delay` (a durable reschedule through `run_at`).
    Retry {
        message: String,
        delay: Duration,
    },
    /// Sequin rejected the token: put the request back untouched (the attempt is not counted).
    AuthRejected {
        message: String,
    },
}

impl Outcome {
    pub fn label(&self) -> &'static str {
        match self {
            Outcome::Succeeded { .. } => "succeeded",
            Outcome::Failed { .. } => "failed",
            Outcome::Retry { .. } | Outcome::AuthRejected { .. } => "retried",
        }
    }
}

/// A change to subscription bookkeeping, applied in the same transaction as the fenced
/// request write-back, so a lost lease changes nothing at all.
#[derive(Debug, Clone)]
pub enum Change {
    /// Provisioning finished: record the Sequin ids and names, mark `active`.
    Activate {
        subscription_id: i64,
        endpoint_id: String,
        sink_id: String,
        endpoint_name: String,
        sink_name: String,
    },
    /// Set a subscription's status (`failed`, `deleted`, `paused`, `active`...).
    SetStatus {
        subscription_id: i64,
        status: &'static str,
    },
    /// Update the fields an `update` request changed.
    SetFields {
        subscription_id: i64,
        endpoint: Option<String>,
        transform: Option<Option<String>>,
        actions: Option<Vec<String>>,
    },
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
    let written = write_one(&tx, worker_id, request, outcome).await?;
    tx.commit().await?;
    Ok(written)
}

/// The fenced update of one request, then (only if the fence held) its subscription changes.
pub async fn write_one(
    tx: &deadpool_postgres::Transaction<'_>,
    worker_id: &str,
    request: &Request,
    outcome: &Outcome,
) -> Result<WriteBack, DbError> {
    let fence: [&(dyn ToSql + Sync); 3] = [&request.id, &request.attempts, &worker_id];
    let updated = match outcome {
        Outcome::Succeeded { result, .. } => {
            let sql = format!(
                "update userhooks.subscription_requests
                    set status = 'succeeded', result = $4, last_error = null,
                        locked_by = null, locked_until = null,
                        finished_at = now(), updated_at = now() {FENCE}"
            );
            let st = tx.prepare_cached(&sql).await?;
            tx.execute(&st, &[fence[0], fence[1], fence[2], result])
                .await?
        }
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
            let sql = format!(
                "update userhooks.subscription_requests
                    set status = 'failed', result = $4, last_error = $5,
                        locked_by = null, locked_until = null,
                        finished_at = now(), updated_at = now() {FENCE}"
            );
            let st = tx.prepare_cached(&sql).await?;
            tx.execute(&st, &[fence[0], fence[1], fence[2], &result, message])
                .await?
        }
        Outcome::Retry { message, delay } => {
            let sql = format!(
                "update userhooks.subscription_requests
                    set status = 'pending', last_error = $4,
                        run_at = now() + make_interval(secs => $5),
                        locked_by = null, locked_until = null, updated_at = now() {FENCE}"
            );
            let st = tx.prepare_cached(&sql).await?;
            let secs = delay.as_secs_f64();
            tx.execute(&st, &[fence[0], fence[1], fence[2], message, &secs])
                .await?
        }
        Outcome::AuthRejected { message } => {
            let sql = format!(
                "update userhooks.subscription_requests
                    set status = 'pending', last_error = $4, attempts = attempts - 1,
                        run_at = now(), locked_by = null, locked_until = null,
                        updated_at = now() {FENCE}"
            );
            let st = tx.prepare_cached(&sql).await?;
            tx.execute(&st, &[fence[0], fence[1], fence[2], message])
                .await?
        }
    };
    if updated == 0 {
        return Ok(WriteBack::LeaseLost);
    }
    let changes = match outcome {
        Outcome::Succeeded { changes, .. } | Outcome::Failed { changes, .. } => changes.as_slice(),
        _ => &[],
    };
    for change in changes {
        apply_change(tx, change).await?;
    }
    Ok(WriteBack::Applied)
}

async fn apply_change(
    tx: &deadpool_postgres::Transaction<'_>,
    change: &Change,
) -> Result<(), DbError> {
    match change {
        Change::Activate {
            subscription_id,
            endpoint_id,
            sink_id,
            endpoint_name,
            sink_name,
        } => {
            let st = tx
                .prepare_cached(
                    "update userhooks.webhook_subscriptions
                        set status = 'active', sequin_endpoint_id = $2::text::uuid,
                            sequin_sink_id = $3::text::uuid, endpoint_name = $4, sink_name = $5,
                            updated_at = now()
                      where id = $1",
                )
                .await?;
            tx.execute(
                &st,
                &[
                    subscription_id,
                    endpoint_id,
                    sink_id,
                    endpoint_name,
                    sink_name,
                ],
            )
            .await?;
        }
        Change::SetStatus {
            subscription_id,
            status,
        } => {
            let st = tx
                .prepare_cached(
                    "update userhooks.webhook_subscriptions
                        set status = $2, updated_at = now(),
                            deleted_at = case when $2 = 'deleted' then now() else deleted_at end
                      where id = $1",
                )
                .await?;
            tx.execute(&st, &[subscription_id, status]).await?;
        }
        Change::SetFields {
            subscription_id,
            endpoint,
            transform,
            actions,
        } => {
            let st = tx
                .prepare_cached(
                    "update userhooks.webhook_subscriptions
                        set endpoint = coalesce($2, endpoint),
                            transform = case when $3 then $4 else transform end,
                            actions = coalesce($5, actions),
                            updated_at = now()
                      where id = $1",
                )
                .await?;
            let set_transform = transform.is_some();
            let new_transform = transform.clone().flatten();
            tx.execute(
                &st,
                &[
                    subscription_id,
                    endpoint,
                    &set_transform,
                    &new_transform,
                    actions,
                ],
            )
            .await?;
        }
    }
    Ok(())
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
              where r.id = held.id and r.attempts = held.attempts
                and r.locked_by = $3 and r.status = 'running'
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
