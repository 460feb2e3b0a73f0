//! The source table's replica identity, which decides whether deletes can be delivered.
//!
//! Sequin builds a delete's `record` from the old tuple that Postgres logs. Unless the table
//! has `REPLICA IDENTITY FULL`, that tuple holds only the key, so `record["user_id"]` is nil
//! and the per-user filter drops the delete: the user never hears of it. While the table is
//! not FULL, the worker does not ask Sequin for deletes, and refuses a request that does.

use std::future::Future;
use std::time::{Duration, Instant};

use tokio::sync::Mutex;

use super::{ProvisionError, Provisioner};

/// How long a read of the replica identity is trusted: one query per interval at most, so
/// an `ALTER TABLE` is noticed within it without a query per request.
pub const REFRESH: Duration = Duration::from_secs(30);

/// `pg_class.relreplident` of the source table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReplicaIdentity {
    Full,
    Default,
    Index,
    Nothing,
    /// The table is not in DATABASE_URL's database, so nothing can be said about it.
    Unknown,
}

impl ReplicaIdentity {
    fn from_code(code: &str) -> Self {
        match code {
            "f" => ReplicaIdentity::Full,
            "d" => ReplicaIdentity::Default,
            "i" => ReplicaIdentity::Index,
            "n" => ReplicaIdentity::Nothing,
            _ => ReplicaIdentity::Unknown,
        }
    }

    /// Whether a delete reaches the filter with its user column. `Unknown` counts as yes:
    /// the worker does not restrict what it cannot see (Sequin refuses a table it does not
    /// know anyway).
    pub fn delivers_deletes(self) -> bool {
        matches!(self, ReplicaIdentity::Full | ReplicaIdentity::Unknown)
    }

    /// As `ALTER TABLE ... REPLICA IDENTITY` spells it.
    pub fn as_sql(self) -> &'static str {
        match self {
            ReplicaIdentity::Full => "FULL",
            ReplicaIdentity::Default => "DEFAULT",
            ReplicaIdentity::Index => "USING INDEX",
            ReplicaIdentity::Nothing => "NOTHING",
            ReplicaIdentity::Unknown => "unknown",
        }
    }
}

/// `schema.table` → (schema, table); a bare name is in `public`, as Sequin reads it.
pub fn split_table(table: &str) -> (&str, &str) {
    table.split_once('.').unwrap_or(("public", table))
}

/// Read the replica identity of `table` (an ordinary or partitioned table).
pub async fn read(
    client: &tokio_postgres::Client,
    table: &str,
) -> Result<ReplicaIdentity, tokio_postgres::Error> {
    let (schema, name) = split_table(table);
    let row = client
        .query_opt(
            "select c.relreplident::text from pg_class c
               join pg_namespace n on n.oid = c.relnamespace
              where n.nspname = $1 and c.relname = $2 and c.relkind in ('r', 'p')",
            &[&schema, &name],
        )
        .await?;
    Ok(row.map_or(ReplicaIdentity::Unknown, |row| {
        ReplicaIdentity::from_code(row.get(0))
    }))
}

/// The last read and when it was made.
#[derive(Default)]
pub(super) struct IdentityCache(Mutex<Option<(Instant, ReplicaIdentity)>>);

impl IdentityCache {
    /// Remember a read made elsewhere (the worker's start-up check).
    pub async fn set(&self, identity: ReplicaIdentity) {
        *self.0.lock().await = Some((Instant::now(), identity));
    }

    /// The cached value while it is fresh, else a new read. The lock is held across the
    /// read, so concurrent requests wait for one query instead of each making their own.
    /// A failed read falls back to the last value, if there is one.
    pub async fn get<F, Fut, E>(&self, read: F) -> Result<ReplicaIdentity, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ReplicaIdentity, E>>,
        E: std::fmt::Display,
    {
        self.get_at(Instant::now(), read).await
    }

    /// [`Self::get`] as of `now` (tests give the time).
    async fn get_at<F, Fut, E>(&self, now: Instant, read: F) -> Result<ReplicaIdentity, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<ReplicaIdentity, E>>,
        E: std::fmt::Display,
    {
        let mut cached = self.0.lock().await;
        if let Some((at, identity)) = *cached {
            if now.saturating_duration_since(at) < REFRESH {
                return Ok(identity);
            }
        }
        match read().await {
            Ok(identity) => {
                *cached = Some((now, identity));
                Ok(identity)
            }
            Err(err) => match *cached {
                Some((_, identity)) => {
                    tracing::debug!(error = %err, "could not re-read the replica identity; keeping the last value");
                    Ok(identity)
                }
                None => Err(err),
            },
        }
    }
}

impl Provisioner {
    /// The source table's replica identity, read at most once per [`REFRESH`].
    pub async fn replica_identity(&self) -> Result<ReplicaIdentity, ProvisionError> {
        self.replica
            .get(|| async {
                let client = self.pool.get().await?;
                Ok::<_, ProvisionError>(read(&client, &self.config.source_table).await?)
            })
            .await
    }

    /// Start from a value read elsewhere (the worker's start-up check).
    pub async fn remember_replica_identity(&self, identity: ReplicaIdentity) {
        self.replica.set(identity).await;
    }

    /// Fit the requested change actions to what the source table can deliver. While it is
    /// not FULL: no actions named → insert and update only, with a warning for the result;
    /// `delete` named → the request is refused with the statement that fixes it.
    pub(super) async fn deliverable_actions(
        &self,
        actions: &mut Option<Vec<String>>,
    ) -> Result<Option<String>, ProvisionError> {
        let identity = self.replica_identity().await?;
        if identity.delivers_deletes() {
            return Ok(None);
        }
        let table = &self.config.source_table;
        match actions {
            Some(named) if named.iter().any(|a| a == "delete") => {
                Err(ProvisionError::Invalid(format!(
                    "option `actions` asks for delete, but {table} has REPLICA IDENTITY {}, so a deleted row carries no {} for the filter and Sequin would never deliver it: run ALTER TABLE {table} REPLICA IDENTITY FULL, or leave delete out",
                    identity.as_sql(),
                    self.config.user_column
                )))
            }
            Some(_) => Ok(None),
            None => {
                *actions = Some(vec!["insert".to_string(), "update".to_string()]);
                Ok(Some(no_deletes_warning(table, identity)))
            }
        }
    }
}

/// The one sentence a result carries when deletes were left out.
fn no_deletes_warning(table: &str, identity: ReplicaIdentity) -> String {
    format!(
        "deletes were left out (actions insert and update only) because {table} has REPLICA IDENTITY {}; run ALTER TABLE {table} REPLICA IDENTITY FULL, then update the subscription with actions including delete to receive them",
        identity.as_sql()
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    #[test]
    fn only_full_and_unknown_deliver_deletes() {
        let read = |code| ReplicaIdentity::from_code(code);
        assert!(read("f").delivers_deletes());
        assert!(ReplicaIdentity::Unknown.delivers_deletes());
        for code in ["d", "i", "n"] {
            assert!(!read(code).delivers_deletes(), "{code}");
        }
        assert_eq!(read("d").as_sql(), "DEFAULT");
    }

    #[test]
    fn tables_split_like_sequin_names_them() {
        assert_eq!(
            split_table("public.notifications"),
            ("public", "notifications")
        );
        assert_eq!(split_table("notifications"), ("public", "notifications"));
        assert_eq!(split_table("app.events"), ("app", "events"));
    }

    #[tokio::test]
    async fn the_cache_reads_once_per_refresh_and_keeps_the_last_value_on_errors() {
        let cache = IdentityCache::default();
        let reads = AtomicUsize::new(0);
        let read = |result: Result<ReplicaIdentity, String>| {
            reads.fetch_add(1, Ordering::SeqCst);
            async move { result }
        };
        let start = Instant::now();
        let at = |secs: u64| start + Duration::from_secs(secs);
        let first = cache.get_at(at(0), || read(Ok(ReplicaIdentity::Default)));
        assert_eq!(first.await, Ok(ReplicaIdentity::Default));
        // Within the refresh interval: the cached value, no read.
        let cached = cache.get_at(at(29), || read(Ok(ReplicaIdentity::Full)));
        assert_eq!(cached.await, Ok(ReplicaIdentity::Default));
        assert_eq!(reads.load(Ordering::SeqCst), 1);
        // Past it: read again, and see the ALTER TABLE.
        let fresh = cache.get_at(at(31), || read(Ok(ReplicaIdentity::Full)));
        assert_eq!(fresh.await, Ok(ReplicaIdentity::Full));
        assert_eq!(reads.load(Ordering::SeqCst), 2);
        // A failed re-read keeps the last value; with none, the error comes through.
        let kept = cache.get_at(at(70), || read(Err("down".to_string())));
        assert_eq!(kept.await, Ok(ReplicaIdentity::Full));
        let failed = IdentityCache::default()
            .get_at(at(70), || read(Err("down".to_string())))
            .await;
        assert_eq!(failed, Err("down".to_string()));
        assert_eq!(reads.load(Ordering::SeqCst), 4);
    }
}
