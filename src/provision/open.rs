//! Opening a subscription: the `webhook_subscriptions` row is written (as `provisioning`)
//! before anything is created in Sequin, so nothing there is ever unaccounted for. The
//! inserts of concurrent subscribes share one transaction (see [`crate::batch`]).

use deadpool_postgres::Transaction;

use crate::batch::{BatchOp, Batcher};
use crate::db::DbError;
use crate::subscriptions::{self, OpenRequest, OpenSubscription};

pub struct OpenOp;

impl BatchOp for OpenOp {
    type Item = OpenRequest;
    /// `None`: the live row vanished between the insert's conflict and the read (a
    /// concurrent unsubscribe); the caller retries.
    type Output = Option<OpenSubscription>;

    async fn run<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        request: &'a OpenRequest,
    ) -> Result<Self::Output, DbError> {
        Ok(subscriptions::open(tx, request).await?)
    }

    async fn run_all<'a>(
        &'a self,
        tx: &'a Transaction<'a>,
        items: &'a [&'a OpenRequest],
    ) -> Result<Vec<Self::Output>, DbError> {
        Ok(subscriptions::open_many(tx, items).await?)
    }
}

pub type Opener = Batcher<OpenOp>;
