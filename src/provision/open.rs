//! Opening a subscription: the `webhook_subscriptions` row is written (as `provisioning`)
//! before anything is created in Sequin, so nothing there is ever unaccounted for. The
//! inserts of concurrent subscribes share one transaction (see [`crate::batch`]).

use deadpool_postgres::Transaction;

use crate::batch::{BatchOp, Batcher};
use crate::db::DbError;

/// The live subscription of (user, URL), or a new `provisioning` one.
const OPEN_SQL: &str = "
with inserted as (
    insert into userhooks.webhook_subscriptions
           (user_id, endpoint, source_table, transform, actions, secret_hash)
    values ($1, $2, $3, $4, $5, $6)
    on conflict (user_id, endpoint) where live
    do nothing
    returning id, status, sequin_endpoint_id::text, sequin_sink_id::text
)
select * from inserted
union all
select id, status, sequin_endpoint_id::text, sequin_sink_id::text
  from userhooks.webhook_subscriptions
 where user_id = $1 and endpoint = $2
   and live
   and not exists (select 1 from inserted)";

pub struct OpenRequest {
    pub user_id: String,
    pub endpoint: String,
    pub source_table: String,
    pub transform: Option<String>,
    pub actions: Vec<String>,
    pub secret_hash: Option<String>,
}

/// A subscription row as the subscribe path needs it.
#[derive(Debug, Clone)]
pub struct OpenSubscription {
    pub id: i64,
    pub status: String,
    pub sequin_endpoint_id: Option<String>,
    pub sequin_sink_id: Option<String>,
}

pub struct OpenOp;

impl BatchOp for OpenOp {
    type Item = OpenRequest;
    /// `None`: the live row vanished between the insert's conflict and the read (a
    /// concurrent unsubscribe); the caller retries.
    type Output = Option<OpenSubscription>;

    async fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        r: &'a OpenRequest,
    ) -> Result<Self::Output, DbError> {
        {
            let statement = tx.prepare_cached(OPEN_SQL).await?;
            let row = tx
                .query_opt(
                    &statement,
                    &[
                        &r.user_id,
                        &r.endpoint,
                        &r.source_table,
                        &r.transform,
                        &r.actions,
                        &r.secret_hash,
                    ],
                )
                .await?;
            Ok(row.map(|row| OpenSubscription {
                id: row.get(0),
                status: row.get(1),
                sequin_endpoint_id: row.get(2),
                sequin_sink_id: row.get(3),
            }))
        }
    }

    async fn run_all<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        items: &'a [&'a OpenRequest],
    ) -> Result<Vec<Self::Output>, DbError> {
        let column = |f: fn(&OpenRequest) -> Option<String>| -> Vec<Option<String>> {
            items.iter().map(|r| f(r)).collect()
        };
        let statement = tx.prepare_cached(OPEN_MANY_SQL).await?;
        let rows = tx
            .query(
                &statement,
                &[
                    &column(|r| Some(r.user_id.clone())),
                    &column(|r| Some(r.endpoint.clone())),
                    &column(|r| Some(r.source_table.clone())),
                    &column(|r| r.transform.clone()),
                    // Actions are insert/update/delete: safe to join with commas.
                    &column(|r| Some(r.actions.join(","))),
                    &column(|r| r.secret_hash.clone()),
                ],
            )
            .await?;
        let found: std::collections::HashMap<(String, String), OpenSubscription> = rows
            .iter()
            .map(|row| {
                (
                    (row.get::<_, String>(1), row.get::<_, String>(2)),
                    OpenSubscription {
                        id: row.get(0),
                        status: row.get(3),
                        sequin_endpoint_id: row.get(4),
                        sequin_sink_id: row.get(5),
                    },
                )
            })
            .collect();
        Ok(items
            .iter()
            .map(|r| found.get(&(r.user_id.clone(), r.endpoint.clone())).cloned())
            .collect())
    }
}

/// The set-based form of [`OPEN_SQL`] for a whole batch: one insert for all rows, then the
/// live rows that already existed. Results are matched back by (user, URL).
const OPEN_MANY_SQL: &str = "
with input as (
    select * from unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::text[], $6::text[])
           as u(user_id, endpoint, source_table, transform, actions, secret_hash)
), inserted as (
    insert into userhooks.webhook_subscriptions
           (user_id, endpoint, source_table, transform, actions, secret_hash)
    select user_id, endpoint, source_table, transform, string_to_array(actions, ','), secret_hash
      from input
    on conflict (user_id, endpoint) where live
    do nothing
    returning id, user_id, endpoint, status, sequin_endpoint_id::text, sequin_sink_id::text
)
select * from inserted
union all
select w.id, w.user_id, w.endpoint, w.status, w.sequin_endpoint_id::text, w.sequin_sink_id::text
  from userhooks.webhook_subscriptions w
  join input i on w.user_id = i.user_id and w.endpoint = i.endpoint
 where w.live
   and not exists (select 1 from inserted x
                    where x.user_id = i.user_id and x.endpoint = i.endpoint)";

pub type Opener = Batcher<OpenOp>;
