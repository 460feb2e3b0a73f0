//! Group small database operations from concurrent tasks into one transaction.
//!
//! Each commit costs a WAL flush (and, for statements that NOTIFY, a turn on Postgres'
//! global notify lock, which serializes those commits). Tasks hand their operation to a
//! batcher; it runs everything that is waiting in one transaction, pipelining the
//! statements on one connection. There is no artificial delay: while one batch commits,
//! the next accumulates. If a batch fails, each of its items is retried alone, so one bad
//! item cannot fail the others.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Pool, Transaction};
use tokio::sync::{mpsc, oneshot};

use crate::db::DbError;

/// One kind of batched operation.
pub trait BatchOp: Send + Sync + 'static {
    type Item: Send + Sync + 'static;
    type Output: Send + 'static;
    /// Run one item inside the shared transaction (must not commit or roll back).
    fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        item: &'a Self::Item,
    ) -> impl Future<Output = Result<Self::Output, DbError>> + Send + 'a;

    /// Run a whole batch; by default each item's statements, pipelined. Override with a
    /// set-based version when one statement can do all items.
    fn run_all<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        items: &'a [&'a Self::Item],
    ) -> impl Future<Output = Result<Vec<Self::Output>, DbError>> + Send + 'a {
        async move {
            futures_util::future::join_all(items.iter().map(|item| self.run(tx, item)))
                .await
                .into_iter()
                .collect()
        }
    }
}

/// Upper bound of one batch (keeps a transaction short).
const MAX_BATCH: usize = 256;
/// Attempts of one item alone after its batch failed.
const RETRIES: u32 = 5;

type Reply<I, O> = oneshot::Sender<Done<I, O>>;
/// What travels to the batching task: an item and where to send its result.
type Entry<Op> = (
    <Op as BatchOp>::Item,
    Reply<<Op as BatchOp>::Item, <Op as BatchOp>::Output>,
);

/// What came of one item: the item back, and its output or the last error.
pub struct Done<I, O> {
    pub item: I,
    pub output: Result<O, DbError>,
}

/// Handle to a batching task. Dropping every clone ends the task once it has run what it
/// was given.
pub struct Batcher<Op: BatchOp> {
    tx: mpsc::UnboundedSender<Entry<Op>>,
}

impl<Op: BatchOp> Clone for Batcher<Op> {
    fn clone(&self) -> Self {
        Batcher {
            tx: self.tx.clone(),
        }
    }
}

fn stopped() -> DbError {
    DbError::Pool("the batching task has stopped".to_string())
}

impl<Op: BatchOp> Batcher<Op> {
    pub fn spawn(pool: Pool, op: Op) -> (Self, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(pool, Arc::new(op), rx));
        (Batcher { tx }, handle)
    }

    /// Run `item` in the next batch and wait for it. `None` only if the batching task is
    /// gone and took the item with it (it panicked).
    pub async fn run(&self, item: Op::Item) -> Option<Done<Op::Item, Op::Output>> {
        let (reply, wait) = oneshot::channel();
        if let Err(mpsc::error::SendError((item, _))) = self.tx.send((item, reply)) {
            return Some(Done {
                item,
                output: Err(stopped()),
            });
        }
        wait.await.ok()
    }
}

async fn run<Op: BatchOp>(pool: Pool, op: Arc<Op>, mut rx: mpsc::UnboundedReceiver<Entry<Op>>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(entry) => batch.push(entry),
                Err(_) => break,
            }
        }
        let items: Vec<&Op::Item> = batch.iter().map(|(item, _)| item).collect();
        let outputs: Vec<Result<Op::Output, DbError>> = match run_batch(&pool, op.as_ref(), &items)
            .await
        {
            Ok(outputs) => outputs.into_iter().map(Ok).collect(),
            Err(err) => {
                if batch.len() > 1 {
                    tracing::debug!(error = %err, size = batch.len(), "batch failed; running its items one by one");
                }
                let mut outputs = Vec::with_capacity(batch.len());
                for item in &items {
                    outputs.push(run_alone(&pool, op.as_ref(), item).await);
                }
                outputs
            }
        };
        drop(items);
        for ((item, reply), output) in batch.into_iter().zip(outputs) {
            let _ = reply.send(Done { item, output });
        }
    }
}

async fn run_batch<Op: BatchOp>(
    pool: &Pool,
    op: &Op,
    items: &[&Op::Item],
) -> Result<Vec<Op::Output>, DbError> {
    let mut client = pool.get().await?;
    let tx = client.transaction().await?;
    let outputs = op.run_all(&tx, items).await?;
    tx.commit().await?;
    Ok(outputs)
}

async fn run_alone<Op: BatchOp>(
    pool: &Pool,
    op: &Op,
    item: &Op::Item,
) -> Result<Op::Output, DbError> {
    let mut retry = 0;
    loop {
        match run_batch(pool, op, &[item]).await {
            Ok(mut outputs) => return outputs.pop().ok_or_else(stopped),
            Err(err) if retry + 1 < RETRIES && is_transient(&err) => {
                tracing::warn!(error = %err, retry, "database operation failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(retry))).await;
                retry += 1;
            }
            Err(err) => return Err(err),
        }
    }
}

/// Connection trouble, restarts, serialization failures and resource shortages are worth
/// another try; any other SQL error would fail again the same way.
fn is_transient(err: &DbError) -> bool {
    match err {
        DbError::Postgres(e) => match e.code() {
            Some(code) => ["08", "40", "53", "57"]
                .iter()
                .any(|class| code.code().starts_with(class)),
            None => true,
        },
        _ => true,
    }
}
