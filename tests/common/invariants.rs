//! The promises checked after every fault: zero lost, zero orphaned, zero duplicated.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use sequin_emulator::EmulatorHandle;
use serde_json::Value;

/// Insert `n` subscribe requests for distinct users `{tag}-1..n` in one statement.
pub async fn insert_subscribes(client: &tokio_postgres::Client, tag: &str, n: i64) -> Vec<i64> {
    insert_subscribes_from(client, tag, 1, n).await
}

/// Users `{tag}-{from}..{from+n-1}`.
pub async fn insert_subscribes_from(
    client: &tokio_postgres::Client,
    tag: &str,
    from: i64,
    n: i64,
) -> Vec<i64> {
    client
        .query(
            "insert into userhooks.subscription_requests (action, user_id, webhook_url)
             select 'subscribe', $1 || '-' || g, 'https://hooks.example.com/' || $1 || '/' || g
               from generate_series($2::bigint, $2::bigint + $3::bigint - 1) g
             returning id",
            &[&tag, &from, &n],
        )
        .await
        .expect("insert subscribe requests")
        .iter()
        .map(|r| r.get(0))
        .collect()
}

/// Count of requests by status.
pub async fn status_counts(client: &tokio_postgres::Client) -> BTreeMap<String, i64> {
    client
        .query(
            "select status, count(*) from userhooks.subscription_requests group by status",
            &[],
        )
        .await
        .expect("status counts")
        .iter()
        .map(|r| (r.get(0), r.get(1)))
        .collect()
}

pub async fn count(client: &tokio_postgres::Client, sql: &str) -> i64 {
    client.query_one(sql, &[]).await.expect(sql).get(0)
}

/// Wait until no request is `pending` or `running`; panics with the counts on timeout.
pub async fn wait_all_terminal(client: &tokio_postgres::Client, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    loop {
        let open = count(
            client,
            "select count(*) from userhooks.subscription_requests where status in ('pending', 'running')",
        )
        .await;
        if open == 0 {
            return;
        }
        if Instant::now() > deadline {
            let errors = client
                .query(
                    "select id, status, attempts, last_error from userhooks.subscription_requests
                      where status in ('pending', 'running') order by id limit 5",
                    &[],
                )
                .await
                .map(|rows| {
                    rows.iter()
                        .map(|r| {
                            format!(
                                "#{} {} attempts={} {:?}",
                                r.get::<_, i64>(0),
                                r.get::<_, String>(1),
                                r.get::<_, i32>(2),
                                r.get::<_, Option<String>>(3)
                            )
                        })
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default();
            panic!(
                "{open} requests still open after {timeout:?}: {:?}; e.g. {errors:#?}",
                status_counts(client).await
            );
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Every request succeeded, none took more attempts than allowed.
pub async fn assert_all_succeeded(client: &tokio_postgres::Client, expected: i64) {
    let counts = status_counts(client).await;
    assert_eq!(
        counts.get("succeeded").copied().unwrap_or(0),
        expected,
        "request statuses: {counts:?}"
    );
    assert_eq!(counts.values().sum::<i64>(), expected, "{counts:?}");
    assert_eq!(
        count(
            client,
            "select count(*) from userhooks.subscription_requests where attempts > max_attempts"
        )
        .await,
        0,
        "attempts are bounded by max_attempts"
    );
}

/// What the emulator holds matches `webhook_subscriptions` one to one:
/// - every `active` subscription has exactly one endpoint and one sink, with the ids and
///   names recorded in its row, the sink using that endpoint and annotated with the user;
/// - every endpoint and sink in the emulator belongs to an `active` subscription (no orphan);
/// - no name exists twice (no duplicate), no subscription is left `provisioning`.
///
/// Returns the number of active subscriptions.
pub async fn assert_sequin_matches_db(
    client: &tokio_postgres::Client,
    emulator: &EmulatorHandle,
) -> usize {
    let rows = client
        .query(
            "select id, user_id, status, endpoint_name, sink_name,
                    sequin_endpoint_id::text, sequin_sink_id::text
               from userhooks.webhook_subscriptions",
            &[],
        )
        .await
        .expect("subscriptions");
    let provisioning: Vec<i64> = rows
        .iter()
        .filter(|r| r.get::<_, String>(2) == "provisioning")
        .map(|r| r.get(0))
        .collect();
    assert!(
        provisioning.is_empty(),
        "subscriptions left provisioning: {provisioning:?}"
    );

    let endpoints = by_name(emulator.endpoints(), "endpoint");
    let sinks = by_name(emulator.sinks(), "sink");

    let mut owned_endpoints = BTreeSet::new();
    let mut owned_sinks = BTreeSet::new();
    let mut active = 0;
    for row in rows.iter().filter(|r| r.get::<_, String>(2) == "active") {
        active += 1;
        let id: i64 = row.get(0);
        let user: String = row.get(1);
        let endpoint_name: String = row
            .get::<_, Option<String>>(3)
            .unwrap_or_else(|| panic!("subscription {id} has no endpoint_name"));
        let sink_name: String = row
            .get::<_, Option<String>>(4)
            .unwrap_or_else(|| panic!("subscription {id} has no sink_name"));
        let endpoint = endpoints
            .get(&endpoint_name)
            .unwrap_or_else(|| panic!("endpoint {endpoint_name} of subscription {id} is missing"));
        let sink = sinks
            .get(&sink_name)
            .unwrap_or_else(|| panic!("sink {sink_name} of subscription {id} is missing"));
        assert_eq!(
            endpoint["id"].as_str(),
            row.get::<_, Option<String>>(5).as_deref(),
            "endpoint id of subscription {id}"
        );
        assert_eq!(
            sink["id"].as_str(),
            row.get::<_, Option<String>>(6).as_deref(),
            "sink id of subscription {id}"
        );
        assert_eq!(
            sink["destination"]["http_endpoint"].as_str(),
            Some(endpoint_name.as_str()),
            "sink {sink_name} uses its own endpoint"
        );
        assert_eq!(
            sink["annotations"]["user_id"].as_str(),
            Some(user.as_str()),
            "sink {sink_name} is filtered to its user"
        );
        owned_endpoints.insert(endpoint_name);
        owned_sinks.insert(sink_name);
    }
    let orphan_endpoints: Vec<&String> = endpoints
        .keys()
        .filter(|n| !owned_endpoints.contains(*n))
        .collect();
    let orphan_sinks: Vec<&String> = sinks.keys().filter(|n| !owned_sinks.contains(*n)).collect();
    assert!(
        orphan_endpoints.is_empty(),
        "orphan endpoints: {orphan_endpoints:?}"
    );
    assert!(orphan_sinks.is_empty(), "orphan sinks: {orphan_sinks:?}");
    active
}

/// Resources by name; panics on a duplicate name.
fn by_name(items: Vec<Value>, what: &str) -> BTreeMap<String, Value> {
    let mut map = BTreeMap::new();
    for item in items {
        let name = item["name"].as_str().expect("named resource").to_string();
        assert!(
            map.insert(name.clone(), item).is_none(),
            "duplicate {what} {name}"
        );
    }
    map
}

/// Recorded calls of one operation with the given status.
pub fn calls_with(emulator: &EmulatorHandle, operation: &str, status: u16) -> usize {
    emulator
        .calls()
        .iter()
        .filter(|c| c.operation == operation && c.status == status)
        .count()
}
