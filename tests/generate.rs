//! `userhooks generate-notifications`: the seed's generator, against a real database.

mod common;

use std::time::Duration;

use common::TestDb;
use userhooks::dev::generate::{self, GenerateError};

#[tokio::test]
async fn generator_inserts_at_the_rate_for_existing_users_only() {
    let db = TestDb::new().await;
    userhooks::db::create_example_app(&db.url).await.unwrap();
    let client = db.client().await;
    let err = generate::run(
        &client,
        100.0,
        Some(Duration::from_millis(200)),
        std::future::pending(),
        |_, _| {},
    )
    .await
    .unwrap_err();
    assert!(matches!(err, GenerateError::NoUsers), "{err}");
    client
        .batch_execute("insert into users (name) values ('a'), ('b'), ('c')")
        .await
        .unwrap();
    let mut last = 0;
    let total = generate::run(
        &client,
        200.0,
        Some(Duration::from_millis(600)),
        std::future::pending(),
        |sent, _| last = sent,
    )
    .await
    .unwrap();
    assert_eq!(total, 120, "rate × duration");
    assert_eq!(last, total);
    assert_eq!(
        db.scalar_i64("select count(*) from notifications").await,
        120
    );
    assert_eq!(
        db.scalar_i64(
            "select count(*) from notifications where user_id not in (select id from users)"
        )
        .await,
        0
    );
    // Random users: with 120 draws over 3 users, each is picked.
    assert_eq!(
        db.scalar_i64("select count(distinct user_id) from notifications")
            .await,
        3
    );
    assert!(
        generate::run(&client, 0.0, None, std::future::pending(), |_, _| {})
            .await
            .is_err()
    );
}

#[tokio::test]
async fn on_a_database_without_the_example_tables_it_says_to_migrate() {
    let db = TestDb::unmigrated().await;
    let out = common::binary::run_userhooks(
        &["generate-notifications", "--duration", "1s"],
        &[("DATABASE_URL", &db.url), ("RUST_BACKTRACE", "1")],
    )
    .await;
    assert_eq!(out.code, Some(1), "{out:?}");
    assert_eq!(
        out.error_line(),
        "error: the example application's tables (users, notifications) are missing in this database: run `userhooks migrate --example-app` first"
    );
}
