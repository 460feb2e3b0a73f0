//! The batcher: an item that makes its shared transaction fail is retried alone, so it
//! cannot fail the others.

mod common;

use common::*;
use deadpool_postgres::Transaction;
use tokio_postgres::error::SqlState;
use userhooks::batch::{BatchOp, Batcher};
use userhooks::db::{self, DbError};

/// Fails the item `13`, and so the whole batch it is in.
struct FailsThirteen;

impl BatchOp for FailsThirteen {
    type Item = u32;
    type Output = u32;

    async fn run<'a>(&'a self, tx: &'a Transaction<'a>, item: &'a u32) -> Result<u32, DbError> {
        let sql = if *item == 13 {
            "select 1/0"
        } else {
            "select 1"
        };
        tx.batch_execute(sql).await?;
        Ok(*item)
    }
}

#[tokio::test]
async fn an_item_that_fails_its_batch_fails_alone() {
    let db = TestDb::new().await;
    let pool = db::pool(&db.url, 4).unwrap();
    let (batcher, _task) = Batcher::spawn(pool, FailsThirteen);
    let results = futures_util::future::join_all((10..17).map(|i| {
        let batcher = batcher.clone();
        async move { batcher.run(i).await.expect("a result") }
    }))
    .await;
    for done in results {
        match done.item {
            13 => match done.output.expect_err("13 fails") {
                DbError::Postgres(e) => {
                    assert_eq!(e.code(), Some(&SqlState::DIVISION_BY_ZERO), "{e:?}")
                }
                other => panic!("unexpected error: {other:?}"),
            },
            i => assert_eq!(done.output.unwrap(), i),
        }
    }
}
