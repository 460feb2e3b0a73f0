//! The worker's set-based statements keep their plans on a large queue whose statistics are
//! stale (never analysed here, as on a busy table between autovacuum runs): rows are found
//! by primary key, never by reading the whole table once per batch or per row.

mod common;

use common::*;
use userhooks::queue::{CLAIM_SQL, WRITE_BACK_SQL};
use userhooks::subscriptions::ACTIVATE_SQL;

/// 20,000 open requests, the first `running` of them leased by worker `w`; no ANALYZE.
async fn large_unanalysed_queue(db: &TestDb, running: i64) -> tokio_postgres::Client {
    let client = db.client().await;
    client
        .batch_execute(&format!(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', 'u' || g, 'https://hooks.example.com/' || g
               from generate_series(1, 20000) g;
             update userhooks.subscription_requests
                set status = 'running', attempts = 1, locked_by = 'w',
                    locked_until = now() + interval '1 minute'
              where id <= {running};
             insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table)
             select 'u' || g, 'https://hooks.example.com/' || g, 'public.orders'
               from generate_series(1, 20000) g;"
        ))
        .await
        .unwrap();
    client
}

/// The plan for these parameters, then the generic plan a long-lived prepared statement
/// may switch to (the worker prepares each statement once per connection).
async fn plan(
    client: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> String {
    let lines = |rows: Vec<tokio_postgres::Row>| {
        rows.iter()
            .map(|row| row.get::<_, String>(0))
            .collect::<Vec<_>>()
            .join("\n")
    };
    let custom = lines(
        client
            .query(&format!("explain (costs off) {sql}"), params)
            .await
            .unwrap(),
    );
    let nulls = vec!["null"; params.len()].join(", ");
    client
        .batch_execute(&format!(
            "prepare planned as {sql}; set plan_cache_mode = force_generic_plan"
        ))
        .await
        .unwrap();
    let generic = lines(
        client
            .query(
                &format!("explain (costs off) execute planned({nulls})"),
                &[],
            )
            .await
            .unwrap(),
    );
    client
        .batch_execute("deallocate planned; reset plan_cache_mode")
        .await
        .unwrap();
    format!("{custom}\n-- generic plan --\n{generic}")
}

#[tokio::test]
async fn write_back_finds_the_batch_by_primary_key_on_a_large_unanalysed_queue() {
    let db = TestDb::new().await;
    let client = large_unanalysed_queue(&db, 200).await;
    let ids: Vec<i64> = (1..=200).collect();
    let attempts = vec![1i32; 200];
    let statuses = vec!["succeeded"; 200];
    let results = vec![Some(serde_json::json!({"ok": true})); 200];
    let errors: Vec<Option<String>> = vec![None; 200];
    let delays = vec![0f64; 200];
    let uncounts = vec![0i32; 200];
    let plan = plan(
        &client,
        WRITE_BACK_SQL,
        &[
            &ids, &attempts, &statuses, &results, &errors, &delays, &uncounts, &"w",
        ],
    )
    .await;
    assert!(plan.contains("subscription_requests_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!plan.contains("Nested Loop"), "{plan}");
}

#[tokio::test]
async fn claim_reads_the_queue_in_order_and_updates_by_primary_key_on_a_large_unanalysed_queue() {
    let db = TestDb::new().await;
    let client = large_unanalysed_queue(&db, 0).await;
    let plan = plan(&client, CLAIM_SQL, &[&256i64, &"w", &60f64]).await;
    assert!(
        plan.matches(
            "Index Scan using subscription_requests_claimable_idx on subscription_requests r\n"
        )
        .count()
            == 2,
        "{plan}"
    );
    assert!(!plan.contains("Sort"), "{plan}");
    assert!(!plan.contains("Hash Anti Join"), "{plan}");
    assert!(plan.contains("subscription_requests_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
}

#[tokio::test]
async fn activation_finds_subscriptions_by_primary_key_on_a_large_unanalysed_table() {
    let db = TestDb::new().await;
    let client = large_unanalysed_queue(&db, 0).await;
    let ids: Vec<i64> = (1..=200).collect();
    let (uuids, endpoint_names, sink_names) = activation_columns(&ids);
    let plan = plan(
        &client,
        ACTIVATE_SQL,
        &[&ids, &uuids, &uuids, &endpoint_names, &sink_names],
    )
    .await;
    assert!(plan.contains("webhook_subscriptions_pkey"), "{plan}");
    assert!(!plan.contains("Seq Scan"), "{plan}");
    assert!(!plan.contains("Nested Loop"), "{plan}");
}

#[tokio::test]
async fn worker_pool_connections_carry_the_planner_settings() {
    let db = TestDb::new().await;
    let pool = userhooks::db::pool(&db.url, 2).unwrap();
    let client = pool.get().await.unwrap();
    let row = client
        .query_one(
            "select current_setting('random_page_cost'), current_setting('plan_cache_mode')",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "1.1");
    assert_eq!(row.get::<_, String>(1), "force_generic_plan");
}

/// As the open batch writes them: 200 new `provisioning` subscriptions in one statement.
const INSERT_200_SUBSCRIPTIONS: &str = "
    insert into userhooks.webhook_subscriptions (user_id, endpoint, source_table)
    select 'user-' || g, 'https://hooks.example.com/users/' || g, 'public.orders'
      from generate_series(1, 200) g";

/// Subscriptions that exist when migration 0007 runs also activate in place: the rewrite that
/// adds `live` already leaves half of each page free.
#[tokio::test]
async fn subscriptions_from_before_migration_0007_activate_in_place() {
    let db = TestDb::unmigrated().await;
    let mut client = db.client().await;
    let (before, from_0007) = userhooks::db::MIGRATIONS.split_at(6);
    assert_eq!(from_0007[0].0, 7);
    for (_, _, sql) in before {
        client.batch_execute(sql).await.unwrap();
    }
    client
        .batch_execute(INSERT_200_SUBSCRIPTIONS)
        .await
        .unwrap();
    client.batch_execute(from_0007[0].2).await.unwrap();
    let in_place = activate_all(&mut client).await;
    assert!(in_place >= 150, "{in_place} of 200 activations in place");
}

/// The Sequin columns [`ACTIVATE_SQL`] sets for `ids`: one UUID for both ids, and the names.
fn activation_columns(ids: &[i64]) -> (Vec<&'static str>, Vec<String>, Vec<String>) {
    let uuids = vec!["7f0c2a4e-5b1d-4c3e-9a8f-0123456789ab"; ids.len()];
    let endpoint_names = ids.iter().map(|i| format!("uh-{i}-endpoint")).collect();
    let sink_names = ids.iter().map(|i| format!("uh-{i}-sink")).collect();
    (uuids, endpoint_names, sink_names)
}

/// Activate every `provisioning` subscription with [`ACTIVATE_SQL`] in one transaction, as
/// a write-back batch does; returns how many rows were updated in place (HOT).
async fn activate_all(client: &mut tokio_postgres::Client) -> i64 {
    let ids: Vec<i64> = client
        .query(
            "select id from userhooks.webhook_subscriptions where status = 'provisioning' order by id",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|row| row.get(0))
        .collect();
    let (uuids, endpoint_names, sink_names) = activation_columns(&ids);
    let tx = client.transaction().await.unwrap();
    let activated = tx
        .execute(
            ACTIVATE_SQL,
            &[&ids, &uuids, &uuids, &endpoint_names, &sink_names],
        )
        .await
        .unwrap();
    assert_eq!(activated as usize, ids.len());
    let in_place: i64 = tx
        .query_one(
            "select pg_stat_get_xact_tuples_hot_updated('userhooks.webhook_subscriptions'::regclass)",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    tx.commit().await.unwrap();
    in_place
}

/// Activation changes `status` but no indexed column, so most activated rows get a new
/// version on their own page and no new index entries (a HOT update; migration 0007). Those
/// that do not fit are the ones whose page filled up within the same batch.
#[tokio::test]
async fn activation_updates_most_subscriptions_in_place() {
    let db = TestDb::new().await;
    let mut client = db.client().await;
    client
        .batch_execute(INSERT_200_SUBSCRIPTIONS)
        .await
        .unwrap();
    let in_place = activate_all(&mut client).await;
    assert!(in_place >= 150, "{in_place} of 200 activations in place");
}
