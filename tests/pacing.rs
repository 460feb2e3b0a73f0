//! Sequin writes are paced by a real worker: the emulator's arrival times of the writes
//! never exceed the limit plus the burst in any one-second window. An upper bound: a slow
//! machine only spreads the calls further apart. (The limiter's exact timing is tested on
//! tokio's paused clock in `src/sequin/pacing.rs`.)

mod common;

use std::time::Duration;

use common::*;
use userhooks::sequin::WriteRate;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_keeps_its_sequin_writes_under_the_limit() {
    const RATE: usize = 10;
    const USERS: usize = 30;
    let mut app = TestApp::builder()
        .config(|c| {
            c.concurrency = 16;
            c.sequin_max_writes_per_second = WriteRate::PerSecond(RATE as f64);
        })
        .spawn()
        .await;
    app.client()
        .await
        .batch_execute(&format!(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', g::text, 'https://hooks.example.com/' || g
               from generate_series(1, {USERS}) g"
        ))
        .await
        .unwrap();
    eventually(Duration::from_secs(60), "every subscribe done", || async {
        app.scalar(
            "select count(*) from userhooks.subscription_requests where status = 'succeeded'",
        )
        .await
            == USERS as i64
    })
    .await;
    app.stop_worker().await;

    let mut writes: Vec<std::time::Instant> = app
        .emulator
        .calls()
        .iter()
        .filter(|c| c.method != "GET")
        .map(|c| c.at.expect("arrival time"))
        .collect();
    writes.sort();
    // The filter function, then an endpoint and a sink per user.
    assert!(writes.len() > 2 * USERS, "{} writes", writes.len());
    let burst = RATE;
    let mut first = 0;
    let mut busiest = 0;
    for (last, at) in writes.iter().enumerate() {
        while writes[first] + Duration::from_secs(1) <= *at {
            first += 1;
        }
        busiest = busiest.max(last - first + 1);
    }
    assert!(
        busiest <= RATE + burst,
        "{busiest} writes within one second (limit {RATE}/s, burst {burst})"
    );
}
