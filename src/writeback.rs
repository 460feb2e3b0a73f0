//! Batched write-backs: outcomes of concurrently finishing requests are written in one
//! transaction, so a burst of N results costs one commit instead of N.
//!
//! There is no artificial flush delay: while one batch commits, the next one accumulates.

use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::{mpsc, oneshot};

use crate::queue::{self, Outcome, Request, WriteBack};

/// Upper bound of one batch (keeps a transaction short).
const MAX_BATCH: usize = 256;
/// Retries of one write-back when its batch failed (Postgres restarting, say).
const RETRIES: u32 = 5;

struct Item {
    request: Request,
    outcome: Outcome,
    done: oneshot::Sender<Written>,
}

/// What came of a write-back: the request and outcome back, and whether it was written
/// (`None`: it could not be written; the lease will expire and the request be retried).
pub struct Written {
    pub request: Request,
    pub outcome: Outcome,
    pub result: Option<WriteBack>,
}

/// Handle to the write-back task. Dropping every clone ends the task after it has written
/// what it was given.
#[derive(Clone)]
pub struct Writer {
    tx: mpsc::UnboundedSender<Item>,
}

impl Writer {
    pub fn spawn(pool: Pool, worker_id: String) -> (Writer, tokio::task::JoinHandle<()>) {
        let (tx, rx) = mpsc::unbounded_channel();
        let handle = tokio::spawn(run(pool, worker_id, rx));
        (Writer { tx }, handle)
    }

    pub async fn write(&self, request: Request, outcome: Outcome) -> Written {
        let (done, wait) = oneshot::channel();
        if let Err(mpsc::error::SendError(item)) = self.tx.send(Item {
            request,
            outcome,
            done,
        }) {
            return Written {
                request: item.request,
                outcome: item.outcome,
                result: None,
            };
        }
        match wait.await {
            Ok(written) => written,
            // The task is gone (runtime shutting down): nothing more can be done here.
            Err(_) => unreachable_written(),
        }
    }
}

fn unreachable_written() -> Written {
    // Only reachable if the writer task panicked; the request's lease covers it.
    tracing::error!("write-back task ended unexpectedly");
    Written {
        request: Request {
            id: 0,
            action: crate::queue::Action::Subscribe,
            user_id: String::new(),
            webhook_url: None,
            subscription_id: None,
            options: serde_json::Value::Null,
            attempts: 0,
            max_attempts: 0,
            waited: 0.0,
        },
        outcome: Outcome::Retry {
            message: String::new(),
            delay: Duration::ZERO,
        },
        result: None,
    }
}

async fn run(pool: Pool, worker_id: String, mut rx: mpsc::UnboundedReceiver<Item>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(item) => batch.push(item),
                Err(_) => break,
            }
        }
        let pairs: Vec<(&Request, &Outcome)> =
            batch.iter().map(|i| (&i.request, &i.outcome)).collect();
        let results = match queue::write_back_batch(&pool, &worker_id, &pairs).await {
            Ok(results) => results.into_iter().map(Some).collect(),
            Err(err) => {
                tracing::warn!(error = %err, size = batch.len(), "batched write-back failed; writing one by one");
                let mut results = Vec::with_capacity(batch.len());
                for item in &batch {
                    results.push(write_with_retries(&pool, &worker_id, item).await);
                }
                results
            }
        };
        for (item, result) in batch.into_iter().zip(results) {
            let _ = item.done.send(Written {
                request: item.request,
                outcome: item.outcome,
                result,
            });
        }
    }
}

async fn write_with_retries(pool: &Pool, worker_id: &str, item: &Item) -> Option<WriteBack> {
    for retry in 0..RETRIES {
        match queue::write_back(pool, worker_id, &item.request, &item.outcome).await {
            Ok(result) => return Some(result),
            Err(err) => {
                tracing::warn!(request_id = item.request.id, error = %err, "write-back failed; retrying");
                tokio::time::sleep(Duration::from_millis(200 * 2u64.pow(retry))).await;
            }
        }
    }
    None
}
