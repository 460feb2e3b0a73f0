//! Batched write-backs: the outcomes of requests that finish together are written in one
//! transaction (see [`crate::batch`]), each still fenced on its own lease.

use deadpool_postgres::Transaction;

use crate::batch::{BatchOp, Batcher};
use crate::db::DbError;
use crate::model::{Outcome, Request};
use crate::queue::{self, WriteBack};

pub struct WriteBackOp {
    pub worker_id: String,
}

impl BatchOp for WriteBackOp {
    type Item = (Request, Outcome);
    type Output = WriteBack;

    async fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        (request, outcome): &'a Self::Item,
    ) -> Result<WriteBack, DbError> {
        let mut written =
            queue::write_back_many(tx, &self.worker_id, &[(request, outcome)]).await?;
        Ok(written.pop().unwrap_or(WriteBack::LeaseLost))
    }

    async fn run_all<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        items: &'a [&'a Self::Item],
    ) -> Result<Vec<WriteBack>, DbError> {
        let pairs: Vec<(&Request, &Outcome)> = items.iter().map(|(r, o)| (r, o)).collect();
        queue::write_back_many(tx, &self.worker_id, &pairs).await
    }
}

pub type Writer = Batcher<WriteBackOp>;
