//! `userhooks generate-notifications`: the seed's notification generator. Inserts
//! notifications for random existing users at a steady rate, one multi-row INSERT per tick.

use std::future::Future;
use std::time::{Duration, Instant};

use rand::RngExt;

/// How often a batch is inserted.
const TICK: Duration = Duration::from_millis(100);

#[derive(Debug, thiserror::Error)]
pub enum GenerateError {
    #[error(transparent)]
    Db(#[from] crate::db::DbError),
    #[error("database error: {0}")]
    Postgres(#[from] tokio_postgres::Error),
    #[error("there are no users: insert some first (insert into users (name) values ('Paul'))")]
    NoUsers,
    #[error("--rate must be a positive number of notifications per second")]
    BadRate,
    #[error("the example application's tables (users, notifications) are missing in this database: run `userhooks migrate --example-app` first")]
    NoTables,
}

/// Refuse to start without the tables the generator writes to (the bare "db error" of the
/// first INSERT would not say which).
pub async fn require_tables(client: &tokio_postgres::Client) -> Result<(), GenerateError> {
    let present: bool = client
        .query_one(
            "select to_regclass('users') is not null and to_regclass('notifications') is not null",
            &[],
        )
        .await?
        .get(0);
    if present {
        Ok(())
    } else {
        Err(GenerateError::NoTables)
    }
}

/// Ids of the existing users.
pub async fn user_ids(client: &tokio_postgres::Client) -> Result<Vec<i32>, GenerateError> {
    let ids: Vec<i32> = client
        .query("select id from users order by id", &[])
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if ids.is_empty() {
        return Err(GenerateError::NoUsers);
    }
    Ok(ids)
}

/// Insert `n` notifications, each for a user drawn from `users`. Returns the ids written.
pub async fn insert_batch(
    client: &tokio_postgres::Client,
    users: &[i32],
    n: usize,
    counter: &mut u64,
) -> Result<Vec<(i32, i32)>, GenerateError> {
    if n == 0 || users.is_empty() {
        return Ok(Vec::new());
    }
    let mut rng = rand::rng();
    let mut who = Vec::with_capacity(n);
    let mut messages = Vec::with_capacity(n);
    for _ in 0..n {
        let user = users[rng.random_range(0..users.len())];
        *counter += 1;
        who.push(user);
        messages.push(format!("Notification #{counter} for user {user}"));
    }
    let rows = client
        .query(
            "insert into notifications (user_id, message)
             select * from unnest($1::int4[], $2::text[])
             returning id, user_id",
            &[&who, &messages],
        )
        .await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Insert at `rate` per second until `duration` passes or `stop` resolves. `progress` is
/// called after every batch with the total so far. Returns the total inserted.
pub async fn run(
    client: &tokio_postgres::Client,
    rate: f64,
    duration: Option<Duration>,
    stop: impl Future<Output = ()>,
    mut progress: impl FnMut(u64, Duration),
) -> Result<u64, GenerateError> {
    if !(rate.is_finite() && rate > 0.0) {
        return Err(GenerateError::BadRate);
    }
    let mut users = user_ids(client).await?;
    let mut users_read = Instant::now();
    let started = Instant::now();
    let mut sent: u64 = 0;
    let mut counter: u64 = 0;
    let mut ticker = tokio::time::interval(TICK);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => break,
            _ = ticker.tick() => {}
        }
        let elapsed = started.elapsed();
        let elapsed = match duration {
            Some(d) if elapsed >= d => d,
            _ => elapsed,
        };
        // New users show up without a restart.
        if users_read.elapsed() > Duration::from_secs(5) {
            users = user_ids(client).await?;
            users_read = Instant::now();
        }
        let due = (rate * elapsed.as_secs_f64()).floor() as u64;
        let n = due.saturating_sub(sent) as usize;
        insert_batch(client, &users, n, &mut counter).await?;
        sent += n as u64;
        progress(sent, elapsed);
        if duration.is_some_and(|d| started.elapsed() >= d) {
            break;
        }
    }
    Ok(sent)
}
