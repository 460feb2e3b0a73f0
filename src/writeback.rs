//! Batched write-backs: the outcomes of requests that finish together are written in one
//! transaction (see [`crate::batch`]), each still fenced on its own lease.

use deadpool_postgres::Transaction;

use crate::batch::{BatchOp, Batcher};
use crate::db::DbError;
use crate::queue::{self, Outcome, Request, WriteBack};

pub struct WriteBackOp {
    pub worker_id: String,
}

impl BatchOp for WriteBackOp {
    type Item = (Request, Outcome);
    type Output = WriteBack;

    fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        (request, outcome): &'a Self::Item,
    ) -> impl std::future::Future<Output = Result<WriteBack, DbError>> + Send + 'a {
        queue::write_one(tx, &self.worker_id, request, outcome)
    }
}

pub type Writer = Batcher<WriteBackOp>;
