//! The `userhooks.webhook_subscriptions` table: every statement that reads or writes it.
//!
//! A subscription's row exists before anything is created in Sequin ([`open`]), so nothing
//! there is ever unaccounted for; the [`Change`]s an attempt decided are applied with the
//! request's fenced write-back, in its transaction ([`apply`]), so a lost lease changes
//! nothing at all. Statements that several concurrent tasks run are set-based: one statement
//! per kind for a whole batch (the batching itself is [`crate::batch`]'s).
//!
//! Statements that only join this table to read a backfill's sink (the backfill tracker,
//! `status`, `serve`'s backfill answers) belong to the backfills they are about.

use std::collections::HashMap;

use deadpool_postgres::Transaction;
use tokio_postgres::{Client, Error, Row};

use crate::model::Change;

const COLUMNS: &str = "id, user_id, endpoint, status, sink_name, endpoint_name, source_table,
       transform, actions, sequin_endpoint_id::text, sequin_sink_id::text,
       secret_hash is not null";

/// One subscription, as recorded.
#[derive(Clone, Debug)]
pub struct Subscription {
    pub id: i64,
    pub user_id: String,
    /// The webhook URL, normalized.
    pub endpoint: String,
    pub status: String,
    /// Recorded once provisioning finished; before that, derive them from the id.
    pub sink_name: Option<String>,
    pub endpoint_name: Option<String>,
    pub source_table: String,
    pub transform: Option<String>,
    pub actions: Vec<String>,
    pub sequin_endpoint_id: Option<String>,
    /// None while provisioning and while paused (pause deletes the sink).
    pub sequin_sink_id: Option<String>,
    /// Only the secret's hash is kept, never the secret.
    pub has_secret: bool,
}

impl Subscription {
    fn from_row(row: &Row) -> Self {
        Subscription {
            id: row.get(0),
            user_id: row.get(1),
            endpoint: row.get(2),
            status: row.get(3),
            sink_name: row.get(4),
            endpoint_name: row.get(5),
            source_table: row.get(6),
            transform: row.get(7),
            actions: row.get(8),
            sequin_endpoint_id: row.get(9),
            sequin_sink_id: row.get(10),
            has_secret: row.get(11),
        }
    }
}

fn all(rows: Vec<Row>) -> Vec<Subscription> {
    rows.iter().map(Subscription::from_row).collect()
}

/// Which of a user's subscriptions a request names.
#[derive(Clone, Copy, Debug)]
pub enum Selector<'a> {
    Id(i64),
    /// A normalized webhook URL.
    Url(&'a str),
    All,
}

/// The user's subscriptions that `which` names and whose status is one of `statuses`,
/// oldest first. Always scoped to the user.
pub async fn of_user(
    client: &Client,
    user_id: &str,
    which: Selector<'_>,
    statuses: &[&str],
) -> Result<Vec<Subscription>, Error> {
    let rows = match which {
        Selector::Id(id) => {
            let sql = format!(
                "select {COLUMNS} from userhooks.webhook_subscriptions
                  where id = $1 and user_id = $2 and status = any($3)"
            );
            client.query(&sql, &[&id, &user_id, &statuses]).await?
        }
        Selector::Url(url) => {
            let sql = format!(
                "select {COLUMNS} from userhooks.webhook_subscriptions
                  where user_id = $1 and endpoint = $2 and status = any($3) order by id"
            );
            client.query(&sql, &[&user_id, &url, &statuses]).await?
        }
        Selector::All => {
            let sql = format!(
                "select {COLUMNS} from userhooks.webhook_subscriptions
                  where user_id = $1 and status = any($2) order by id"
            );
            client.query(&sql, &[&user_id, &statuses]).await?
        }
    };
    Ok(all(rows))
}

/// Every subscription whose status is one of `statuses`, oldest first.
pub async fn with_status(client: &Client, statuses: &[&str]) -> Result<Vec<Subscription>, Error> {
    let sql = format!(
        "select {COLUMNS} from userhooks.webhook_subscriptions
          where status = any($1) order by id"
    );
    Ok(all(client.query(&sql, &[&statuses]).await?))
}

/// One subscription by id, whatever its status.
pub async fn by_id(client: &Client, id: i64) -> Result<Option<Subscription>, Error> {
    let sql = format!("select {COLUMNS} from userhooks.webhook_subscriptions where id = $1");
    Ok(client
        .query_opt(&sql, &[&id])
        .await?
        .as_ref()
        .map(Subscription::from_row))
}

/// The live subscriptions whose sink has this name (at most one, unless renamed by hand).
pub async fn live_by_sink_name(client: &Client, sink: &str) -> Result<Vec<Subscription>, Error> {
    let sql = format!(
        "select {COLUMNS} from userhooks.webhook_subscriptions where sink_name = $1 and live"
    );
    Ok(all(client.query(&sql, &[&sink]).await?))
}

/// The user's live subscriptions, oldest first.
pub async fn live_of_user(client: &Client, user_id: &str) -> Result<Vec<Subscription>, Error> {
    let sql = format!(
        "select {COLUMNS} from userhooks.webhook_subscriptions where user_id = $1 and live order by id"
    );
    Ok(all(client.query(&sql, &[&user_id]).await?))
}

/// Whether another live subscription of the user (not `except`) has this URL.
pub async fn url_taken(
    client: &Client,
    user_id: &str,
    url: &str,
    except: i64,
) -> Result<bool, Error> {
    let taken: i64 = client
        .query_one(
            "select count(*) from userhooks.webhook_subscriptions
              where user_id = $1 and endpoint = $2 and id <> $3 and live",
            &[&user_id, &url, &except],
        )
        .await?
        .get(0);
    Ok(taken > 0)
}

/// Whether the subscription existed before the request was made (a subscribe that found
/// it); false when either is missing.
pub async fn created_before_request(
    client: &Client,
    subscription_id: i64,
    request_id: i64,
) -> Result<bool, Error> {
    Ok(client
        .query_one(
            "select coalesce(s.created_at < r.created_at, false)
               from userhooks.subscription_requests r
               left join userhooks.webhook_subscriptions s on s.id = $2
              where r.id = $1",
            &[&request_id, &subscription_id],
        )
        .await?
        .get(0))
}

/// Mark subscriptions `deleting` while an unsubscribe works on them: visible, and no longer
/// live for a subscribe of the same URL.
pub async fn mark_deleting(client: &Client, ids: &[i64]) -> Result<(), Error> {
    client
        .execute(
            "update userhooks.webhook_subscriptions set status = 'deleting', updated_at = now()
              where id = any($1) and status <> 'deleting'",
            &[&ids],
        )
        .await?;
    Ok(())
}

/// Live subscriptions on one source table.
pub async fn live_on_table(client: &Client, source_table: &str) -> Result<i64, Error> {
    Ok(client
        .query_one(
            "select count(*) from userhooks.webhook_subscriptions where live and source_table = $1",
            &[&source_table],
        )
        .await?
        .get(0))
}

/// Subscriptions by status, in status order.
pub async fn count_by_status(client: &Client) -> Result<Vec<(String, i64)>, Error> {
    Ok(client
        .query(
            "select status, count(*) from userhooks.webhook_subscriptions group by status order by status",
            &[],
        )
        .await?
        .iter()
        .map(|row| (row.get(0), row.get(1)))
        .collect())
}

/// One group of [`counts`].
#[derive(Clone, Debug, PartialEq)]
pub struct Count {
    pub status: String,
    pub source_table: String,
    pub live: bool,
    pub count: f64,
}

/// Subscriptions by status and source table, in one pass over the table (for gauges).
pub async fn counts(client: &Client) -> Result<Vec<Count>, Error> {
    Ok(client
        .query(
            "select status, source_table, live, count(*)::float8
               from userhooks.webhook_subscriptions group by status, source_table, live",
            &[],
        )
        .await?
        .iter()
        .map(|row| Count {
            status: row.get(0),
            source_table: row.get(1),
            live: row.get(2),
            count: row.get(3),
        })
        .collect())
}

/// What a subscribe records before it creates anything in Sequin.
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

/// The live subscription of (user, URL), created as `provisioning` if there is none.
/// `None`: the live row vanished between the insert's conflict and the read (a concurrent
/// unsubscribe); the caller retries.
pub async fn open(
    tx: &Transaction<'_>,
    r: &OpenRequest,
) -> Result<Option<OpenSubscription>, Error> {
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

/// [`open`] for many requests in one statement; results in the order of `items`.
pub async fn open_many(
    tx: &Transaction<'_>,
    items: &[&OpenRequest],
) -> Result<Vec<Option<OpenSubscription>>, Error> {
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
    let found: HashMap<(String, String), OpenSubscription> = rows
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

/// Provisioning finished: record the Sequin ids and names, mark `active`.
pub const ACTIVATE_SQL: &str = "
update userhooks.webhook_subscriptions s
   set status = 'active', sequin_endpoint_id = u.endpoint_id::uuid, sequin_sink_id = u.sink_id::uuid,
       endpoint_name = u.endpoint_name, sink_name = u.sink_name, updated_at = now()
  from unnest($1::bigint[], $2::text[], $3::text[], $4::text[], $5::text[])
       as u(id, endpoint_id, sink_id, endpoint_name, sink_name)
 where s.id = any($1) and s.id = u.id";

/// A `paused` subscription has no sink in Sequin (pause deletes it), so its sink id is
/// cleared rather than left naming a deleted sink; resume records the new one (`Activate`).
const SET_STATUS_SQL: &str = "
update userhooks.webhook_subscriptions s
   set status = u.status, updated_at = now(),
       sequin_sink_id = case when u.status = 'paused' then null else s.sequin_sink_id end,
       deleted_at = case when u.status = 'deleted' then now() else s.deleted_at end
  from unnest($1::bigint[], $2::text[]) as u(id, status)
 where s.id = any($1) and s.id = u.id";

/// The fields an `update` changed.
const SET_FIELDS_SQL: &str = "
update userhooks.webhook_subscriptions
   set endpoint = coalesce($2, endpoint),
       transform = case when $3 then $4 else transform end,
       actions = coalesce($5, actions),
       updated_at = now()
 where id = $1";

/// Apply `changes` inside `tx`: one statement per kind of change, whatever their number
/// (per-statement work such as loading CHECK constraints and trigger conditions is paid
/// once), except field updates, which are rare.
pub async fn apply(tx: &Transaction<'_>, changes: &[&Change]) -> Result<(), Error> {
    let mut activate = ActivateColumns::default();
    let mut set_status: (Vec<i64>, Vec<&str>) = Default::default();
    let mut set_fields = Vec::new();
    for change in changes {
        match change {
            Change::Activate {
                subscription_id,
                endpoint_id,
                sink_id,
                endpoint_name,
                sink_name,
            } => {
                activate.ids.push(*subscription_id);
                activate.endpoint_ids.push(endpoint_id);
                activate.sink_ids.push(sink_id);
                activate.endpoint_names.push(endpoint_name);
                activate.sink_names.push(sink_name);
            }
            Change::SetStatus {
                subscription_id,
                status,
            } => {
                set_status.0.push(*subscription_id);
                set_status.1.push(status);
            }
            Change::SetFields { .. } => set_fields.push(*change),
        }
    }
    if !activate.ids.is_empty() {
        let st = tx.prepare_cached(ACTIVATE_SQL).await?;
        tx.execute(
            &st,
            &[
                &activate.ids,
                &activate.endpoint_ids,
                &activate.sink_ids,
                &activate.endpoint_names,
                &activate.sink_names,
            ],
        )
        .await?;
    }
    if !set_status.0.is_empty() {
        let st = tx.prepare_cached(SET_STATUS_SQL).await?;
        tx.execute(&st, &[&set_status.0, &set_status.1]).await?;
    }
    for change in set_fields {
        set_fields_of(tx, change).await?;
    }
    Ok(())
}

/// The parameters of [`ACTIVATE_SQL`], one array per column.
#[derive(Default)]
struct ActivateColumns<'a> {
    ids: Vec<i64>,
    endpoint_ids: Vec<&'a str>,
    sink_ids: Vec<&'a str>,
    endpoint_names: Vec<&'a str>,
    sink_names: Vec<&'a str>,
}

async fn set_fields_of(tx: &Transaction<'_>, change: &Change) -> Result<(), Error> {
    let Change::SetFields {
        subscription_id,
        endpoint,
        transform,
        actions,
    } = change
    else {
        return Ok(());
    };
    let st = tx.prepare_cached(SET_FIELDS_SQL).await?;
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
    Ok(())
}
