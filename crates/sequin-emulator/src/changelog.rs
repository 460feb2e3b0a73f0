//! The emulator's stand-in for a logical replication slot: a change log in the source database,
//! fed by row triggers the emulator installs on the tables it knows.
//!
//! Each change is stored the way Sequin decodes it from `pgoutput`, so what reaches a sink's
//! filter is what real Sequin would hand it:
//!
//! - `record` of an insert or update is the new row. `record` of a delete is the old tuple
//!   Postgres logs for it: the whole row only with `REPLICA IDENTITY FULL`; otherwise only the
//!   replica identity columns carry values (the primary key, or the `USING INDEX` columns) and
//!   every other column is null — so a delete's `user_id` is null and a user filter drops it.
//!   (Sequin: `lib/sequin/runtime/slot_producer/processor.ex`, `cast_message(%Delete{})` uses
//!   `old_tuple_data` or else `changed_key_tuple_data`.)
//! - `changes` of an update holds the old values of the columns that changed, computed from the
//!   old tuple; without `FULL` there is no old tuple unless the key changed, so `changes` is `{}`
//!   (Sequin: `lib/sequin/consumers/consumers.ex`, `message_changes/1`). Inserts and deletes
//!   carry `null`.
//! - The replica identity is read from `pg_class.relreplident` when the change happens, as the
//!   WAL records it then.
//!
//! Installation is idempotent and serialized by an advisory lock, so several emulators may share
//! one database; each keeps its own read position. Reading follows commit visibility: a change
//! is delivered once, when its transaction's commit makes it visible, even if a later `id` was
//! read first (see [`Reader`]). The log is never pruned by the emulator.

use std::collections::{BTreeSet, VecDeque};

use chrono::{DateTime, Utc};
use serde_json::Value;

/// Rows read per query.
pub(crate) const PAGE: i64 = 500;

/// Serializes installs across emulators sharing a database (an arbitrary constant).
const INSTALL_LOCK: i64 = 0x5E90_1EE4;

const SETUP: &str = r#"
create schema if not exists sequin_emulator;
create table if not exists sequin_emulator.changes (
    id bigserial primary key,
    xid xid8 not null default pg_current_xact_id(),
    table_schema text not null,
    table_name text not null,
    action text not null,
    record jsonb not null,
    changes jsonb,
    record_pks text[] not null,
    committed_at timestamptz not null default clock_timestamp()
);
create or replace function sequin_emulator.capture() returns trigger
language plpgsql security definer set search_path = pg_catalog, pg_temp as $fn$
declare
    ident "char";
    pk_cols text[];
    ident_cols text[];
    new_j jsonb;
    old_j jsonb;
    prev jsonb;
    rec jsonb;
    chg jsonb;
    pks text[];
begin
    select c.relreplident into ident from pg_class c where c.oid = TG_RELID;
    select coalesce(array_agg(a.attname::text order by a.attnum), '{}') into pk_cols
      from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
     where i.indrelid = TG_RELID and i.indisprimary;
    if ident = 'i' then
        select coalesce(array_agg(a.attname::text order by a.attnum), '{}') into ident_cols
          from pg_index i join pg_attribute a on a.attrelid = i.indrelid and a.attnum = any(i.indkey)
         where i.indrelid = TG_RELID and i.indisreplident;
    elsif ident = 'd' then
        ident_cols := pk_cols;
    else
        ident_cols := '{}';
    end if;
    if TG_OP <> 'DELETE' then new_j := to_jsonb(NEW); end if;
    if TG_OP <> 'INSERT' then old_j := to_jsonb(OLD); end if;
    if TG_OP = 'INSERT' then
        rec := new_j;
    elsif TG_OP = 'UPDATE' then
        rec := new_j;
        if ident = 'f' then
            prev := old_j;
        elsif exists (select 1 from unnest(ident_cols) k where old_j -> k is distinct from new_j -> k) then
            prev := (select jsonb_object_agg(e.key, case when e.key = any(ident_cols) then e.value else 'null'::jsonb end)
                       from jsonb_each(old_j) e);
        end if;
        if prev is null then
            chg := '{}'::jsonb;
        else
            chg := coalesce((select jsonb_object_agg(e.key, e.value) from jsonb_each(prev) e
                              where new_j -> e.key is distinct from e.value), '{}'::jsonb);
        end if;
    else
        if ident = 'f' then
            rec := old_j;
        else
            rec := (select jsonb_object_agg(e.key, case when e.key = any(ident_cols) then e.value else 'null'::jsonb end)
                      from jsonb_each(old_j) e);
        end if;
    end if;
    pks := (select array_agg(coalesce(rec ->> u.k, '') order by u.o) from unnest(pk_cols) with ordinality as u(k, o));
    insert into sequin_emulator.changes (table_schema, table_name, action, record, changes, record_pks)
    values (TG_TABLE_SCHEMA, TG_TABLE_NAME, lower(TG_OP), coalesce(rec, '{}'::jsonb), chg, coalesce(pks, '{}'));
    return null;
end
$fn$;
"#;

/// Failures of the change log.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ChangeLogError {
    #[error("change log query failed: {0}")]
    Query(#[from] tokio_postgres::Error),
    #[error("change log returned an unreadable transaction id: {0:?}")]
    BadXid(String),
}

/// One captured row change.
#[derive(Clone, Debug)]
pub(crate) struct Change {
    pub id: i64,
    /// `schema.table`.
    pub table: String,
    pub action: String,
    pub record: Value,
    pub changes: Option<Value>,
    pub record_pks: Vec<String>,
    pub committed_at: DateTime<Utc>,
}

/// `"schema.table"` → `"schema"."table"`.
pub(crate) fn quote_table(table: &str) -> String {
    let (schema, name) = table.split_once('.').unwrap_or(("public", table));
    format!("{}.{}", quote_ident(schema), quote_ident(name))
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

/// Those of `tables` that exist now.
pub(crate) async fn present(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<Vec<String>, ChangeLogError> {
    let quoted: Vec<String> = tables.iter().map(|t| quote_table(t)).collect();
    let rows = client
        .query(
            "select t from unnest($1::text[]) as t where to_regclass(t) is not null",
            &[&quoted],
        )
        .await?;
    let present: BTreeSet<String> = rows.iter().map(|r| r.get(0)).collect();
    Ok(tables
        .iter()
        .filter(|t| present.contains(&quote_table(t)))
        .cloned()
        .collect())
}

/// The publication the emulated database reports (`replication_slots[].publication_name`).
pub(crate) const PUBLICATION: &str = "sequin_pub";

/// Install the log and the capture trigger on `tables` (which must exist). Safe to run again
/// and from several emulators at once.
pub(crate) async fn install(
    client: &tokio_postgres::Client,
    tables: &[String],
) -> Result<(), ChangeLogError> {
    let mut sql = format!("select pg_advisory_xact_lock({INSTALL_LOCK});\n{SETUP}");
    for table in tables {
        sql.push_str(&format!(
            "create or replace trigger sequin_emulator_capture after insert or update or delete \
             on {} for each row execute function sequin_emulator.capture();\n",
            quote_table(table)
        ));
    }
    // A database connected to Sequin has the publication its slot reads (Sequin checks it
    // when the database is connected): the emulator, standing in for that setup, makes it.
    sql.push_str(&format!(
        "do $$ begin create publication {PUBLICATION}; \
         exception when duplicate_object then null; end $$;\n"
    ));
    for table in tables {
        sql.push_str(&format!(
            "do $$ begin alter publication {PUBLICATION} add table {}; \
             exception when duplicate_object then null; end $$;\n",
            quote_table(table)
        ));
    }
    // One simple-query batch runs as one transaction: the advisory lock covers it all.
    client.batch_execute(&sql).await?;
    Ok(())
}

/// The log's current end: every change with a higher `id` is yet to be made.
pub(crate) async fn position(client: &tokio_postgres::Client) -> Result<i64, ChangeLogError> {
    let row = client
        .query_one(
            "select case when is_called then last_value else last_value - 1 end
               from sequin_emulator.changes_id_seq",
            &[],
        )
        .await?;
    Ok(row.get(0))
}

fn parse_xid(s: String) -> Result<u64, ChangeLogError> {
    s.parse().map_err(|_| ChangeLogError::BadXid(s))
}

/// Reads the log in commit-visibility order, each change once.
///
/// `id`s are taken when a row changes, not when its transaction commits, so a change with a
/// lower `id` can become visible after a higher one was read. The reader remembers the ids it
/// skipped below the highest it has read (the gaps: transactions still running, or rolled
/// back) and asks for them again on every poll. A gap is forgotten once no transaction can
/// still fill it: a checkpoint pairs the log position with a transaction id taken after it;
/// when the oldest running transaction (`xmin`) is past that id, every change up to the
/// position is visible or rolled back. (One transaction id is spent per poll that finds the
/// log grown.)
#[derive(Debug)]
pub(crate) struct Reader {
    max_read: i64,
    gaps: BTreeSet<i64>,
    /// (log position, transaction id taken after reading it), positions increasing.
    checkpoints: VecDeque<(i64, u64)>,
    checkpointed: i64,
}

impl Reader {
    /// Start after `position`.
    pub fn new(position: i64) -> Self {
        Reader {
            max_read: position,
            gaps: BTreeSet::new(),
            checkpoints: VecDeque::new(),
            checkpointed: position,
        }
    }

    /// The next changes that became visible, in `id` order (at most [`PAGE`]).
    pub async fn poll(
        &mut self,
        client: &tokio_postgres::Client,
    ) -> Result<Vec<Change>, ChangeLogError> {
        let pos = position(client).await?;
        if pos > self.checkpointed {
            // A transaction id taken now is above that of every transaction that took a log
            // id up to `pos` (they wrote their row first). Not the snapshot's `xmax`: since
            // Postgres 14 that is the latest *completed* id + 1, and a running transaction
            // may be above it.
            let row = client
                .query_one("select pg_current_xact_id()::text", &[])
                .await?;
            self.checkpoints.push_back((pos, parse_xid(row.get(0))?));
            self.checkpointed = pos;
        }
        let row = client
            .query_one("select pg_snapshot_xmin(pg_current_snapshot())::text", &[])
            .await?;
        let xmin = parse_xid(row.get(0))?;
        let gaps: Vec<i64> = self.gaps.iter().copied().collect();
        let rows = client
            .query(
                &format!(
                    "select id, table_schema || '.' || table_name, action, record, changes,
                            record_pks, committed_at
                       from sequin_emulator.changes
                      where id > $1 or id = any($2::bigint[])
                      order by id limit {PAGE}"
                ),
                &[&self.max_read, &gaps],
            )
            .await?;
        let changes: Vec<Change> = rows
            .iter()
            .map(|r| Change {
                id: r.get(0),
                table: r.get(1),
                action: r.get(2),
                record: r.get(3),
                changes: r.get(4),
                record_pks: r.get(5),
                committed_at: r.get(6),
            })
            .collect();
        for c in &changes {
            self.saw(c.id);
        }
        // The rows were read in a snapshot taken after `xmin` was: the gaps of settled
        // checkpoints were not filled by then, so they never will be. Unless the page was
        // full: then some gap may be visible and unread.
        if (changes.len() as i64) < PAGE {
            self.settle(xmin);
        }
        Ok(changes)
    }

    fn saw(&mut self, id: i64) {
        if id > self.max_read {
            self.gaps.extend(self.max_read + 1..id);
            self.max_read = id;
        } else {
            self.gaps.remove(&id);
        }
    }

    fn settle(&mut self, xmin: u64) {
        let mut safe = None;
        while let Some(&(pos, bound)) = self.checkpoints.front() {
            if bound > xmin {
                break;
            }
            safe = Some(pos);
            self.checkpoints.pop_front();
        }
        if let Some(safe) = safe {
            self.gaps = self.gaps.split_off(&(safe + 1));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_quoted() {
        assert_eq!(
            quote_table("public.notifications"),
            "\"public\".\"notifications\""
        );
        assert_eq!(quote_table("we\"ird"), "\"public\".\"we\"\"ird\"");
    }

    #[test]
    fn skipped_ids_stay_wanted_until_settled() {
        let mut r = Reader::new(10);
        r.saw(11);
        r.saw(14);
        assert_eq!(r.gaps.iter().copied().collect::<Vec<_>>(), vec![12, 13]);
        r.saw(12);
        assert_eq!(r.gaps.iter().copied().collect::<Vec<_>>(), vec![13]);
        r.checkpoints.extend([(13, 100), (14, 105)]);
        r.settle(99);
        assert_eq!(r.gaps.len(), 1, "transaction 99 may still fill it");
        r.settle(100);
        assert!(r.gaps.is_empty(), "13 was rolled back");
        assert_eq!(r.checkpoints.len(), 1);
        assert_eq!(r.max_read, 14);
    }
}
