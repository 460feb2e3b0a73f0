//! The pieces the demo and the dev stack share: a database with the example application,
//! the Sequin emulator delivering webhooks from it, a webhook receiver and the worker, all in
//! this process.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::State;
use axum::http::Uri;
use axum::{Json, Router};
use serde_json::Value;

use crate::config::Config;
use crate::db::{self, DbError};
use sequin_emulator::{self as emulator, DeliveryConfig, EmulatorConfig, EmulatorHandle};

/// Sequin's name of the source database, in the emulator.
pub const SEQUIN_DATABASE: &str = "app";
/// The table the emulator follows and the worker subscribes users to.
pub const SOURCE_TABLE: &str = "public.notifications";

/// Migrate `database_url` and create the example application's tables.
pub async fn prepare_database(database_url: &str) -> Result<(), DbError> {
    db::migrate(database_url).await?;
    db::create_example_app(database_url).await
}

/// The emulator with webhook delivery from `database_url`, polling fast enough that a
/// webhook follows an INSERT within a fraction of a second.
pub async fn start_emulator(
    database_url: &str,
    token: &str,
    listener: tokio::net::TcpListener,
) -> EmulatorHandle {
    let mut delivery = DeliveryConfig::new(database_url.to_string());
    delivery.poll_interval = Duration::from_millis(100);
    delivery.retry_initial = Duration::from_millis(200);
    delivery.retry_max = Duration::from_secs(5);
    emulator::start(
        EmulatorConfig {
            token: token.to_string(),
            database: SEQUIN_DATABASE.to_string(),
            tables: vec![SOURCE_TABLE.to_string()],
            delivery: Some(delivery),
            ..EmulatorConfig::default()
        },
        listener,
    )
    .await
}

/// Received webhook messages, by the last segment of the path they were posted to (the
/// demo posts user `7`'s webhooks to `/hooks/7`).
pub type Inbox = Arc<Mutex<BTreeMap<String, Vec<Value>>>>;

#[derive(Clone)]
struct ReceiverState {
    inbox: Inbox,
    print: bool,
}

/// A webhook receiver on `addr`, keeping every message in `inbox`.
pub struct Receiver {
    pub addr: SocketAddr,
    pub inbox: Inbox,
}

/// One line for one message: whose row, what happened, which row.
pub fn describe_message(message: &Value) -> String {
    let record = message.get("record");
    let field = |name: &str| match record.and_then(|r| r.get(name)) {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => "?".to_string(),
        Some(other) => other.to_string(),
    };
    let action = message.get("action").and_then(Value::as_str).unwrap_or("?");
    let table = message
        .pointer("/metadata/table_name")
        .and_then(Value::as_str)
        .unwrap_or("?");
    format!(
        "webhook: user={} action={action} id={} ({table})",
        field("user_id"),
        field("id")
    )
}

async fn receive(State(state): State<ReceiverState>, uri: Uri, Json(body): Json<Value>) {
    // `{"data": [...]}` when the sink batches, a single message otherwise.
    let messages = match body.get("data").and_then(Value::as_array) {
        Some(list) => list.clone(),
        None => vec![body],
    };
    if state.print {
        for message in &messages {
            println!("{}", describe_message(message));
        }
    }
    let key = uri
        .path()
        .rsplit('/')
        .next()
        .unwrap_or_default()
        .to_string();
    state
        .inbox
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .entry(key)
        .or_default()
        .extend(messages);
}

/// Serve a receiver on `listener`; with `print`, one line per message on stdout.
pub fn start_receiver(listener: tokio::net::TcpListener, print: bool) -> std::io::Result<Receiver> {
    let addr = listener.local_addr()?;
    let inbox: Inbox = Arc::default();
    // Any path: each subscription may post to a URL of its own.
    let app = Router::new().fallback(receive).with_state(ReceiverState {
        inbox: inbox.clone(),
        print,
    });
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    Ok(Receiver { addr, inbox })
}

/// The worker running in this process until `stop`.
pub struct LocalWorker {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<Result<(), DbError>>,
    pub metrics: Arc<crate::metrics::Metrics>,
    pub metrics_addr: Option<SocketAddr>,
}

/// A worker configuration for the emulator at `api_url`: private URLs allowed (the receiver
/// is on this machine), short polls so a person sees results at once.
pub fn worker_config(database_url: &str, api_url: &str, token: &str) -> Config {
    let mut config = Config::for_local(database_url, api_url, token, SEQUIN_DATABASE);
    config.allow_private_urls = true;
    config.poll_interval = Duration::from_millis(500);
    config.backfill_poll_interval = Duration::from_millis(200);
    config
}

pub async fn start_worker(config: Config) -> Result<LocalWorker, crate::worker::BuildError> {
    let worker = crate::build(config).await?;
    let metrics = worker.metrics();
    let metrics_addr = worker.metrics_addr();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let task = tokio::spawn(worker.run(async {
        let _ = stopped.await;
    }));
    Ok(LocalWorker {
        stop,
        task,
        metrics,
        metrics_addr,
    })
}

impl LocalWorker {
    /// Finish what is in flight and stop.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

/// `-h host -p port -U user` for psql and dropdb, from a connection string (no password).
pub fn psql_flags(database_url: &str) -> String {
    let Ok(config) = db::pg_config(database_url, "userhooks") else {
        return String::new();
    };
    let mut flags = Vec::new();
    if let Some(tokio_postgres::config::Host::Tcp(host)) = config.get_hosts().first() {
        flags.push(format!("-h {host}"));
    }
    if let Some(port) = config.get_ports().first() {
        flags.push(format!("-p {port}"));
    }
    if let Some(user) = config.get_user() {
        flags.push(format!("-U {user}"));
    }
    flags.join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn a_message_is_one_line_with_user_action_and_row() {
        let message = json!({"record": {"id": 41, "user_id": 1, "message": "hi"},
                             "action": "insert", "metadata": {"table_name": "notifications"}});
        assert_eq!(
            describe_message(&message),
            "webhook: user=1 action=insert id=41 (notifications)"
        );
    }

    #[test]
    fn psql_flags_never_carry_the_password() {
        assert_eq!(
            psql_flags("postgres://me:hunter2@db.local:6543/app"),
            "-h db.local -p 6543 -U me"
        );
    }
}
