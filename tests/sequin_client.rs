//! The Sequin client over real HTTP, against small servers that answer in ways the emulator
//! never does.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, StatusCode};
use axum::routing::get;
use axum::Router;
use serde_json::json;
use userhooks::config::Secret;
use userhooks::metrics::Metrics;
use userhooks::sequin::{ErrorClass, SequinClient};

async fn serve(app: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    format!("http://{addr}")
}

fn client(base: &str) -> SequinClient {
    SequinClient::new(
        base,
        Secret::new("tok-123"),
        Duration::from_secs(2),
        Metrics::new(),
    )
    .with_in_process_retries(0)
}

#[tokio::test]
async fn a_redirect_is_refused_not_followed_so_the_token_goes_nowhere_else() {
    let followed = Arc::new(AtomicUsize::new(0));
    let hits = followed.clone();
    let app = Router::new()
        .route(
            "/api/postgres_databases",
            get(|| async {
                (
                    StatusCode::TEMPORARY_REDIRECT,
                    [(header::LOCATION, "/elsewhere")],
                    "",
                )
            }),
        )
        .route(
            "/elsewhere",
            get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                async { axum::Json(json!({"data": []})) }
            }),
        );
    let base = serve(app).await;

    let err = client(&format!("{base}/api"))
        .list_databases()
        .await
        .unwrap_err();

    assert_eq!(err.status(), Some(307), "{err}");
    assert_eq!(err.class(), ErrorClass::Permanent);
    assert_eq!(
        followed.load(Ordering::SeqCst),
        0,
        "the redirect was followed"
    );
}

#[tokio::test]
async fn the_base_url_path_and_token_are_sent_on_every_call() {
    let app = Router::new().route(
        "/sequin/api/postgres_databases",
        get(|headers: axum::http::HeaderMap| async move {
            let auth = headers.get(header::AUTHORIZATION).cloned();
            if auth.as_ref().and_then(|v| v.to_str().ok()) == Some("Bearer tok-123") {
                (
                    StatusCode::OK,
                    axum::Json(json!({"data": [{"name": "app"}]})),
                )
            } else {
                (
                    StatusCode::UNAUTHORIZED,
                    axum::Json(json!({"summary": "bad token"})),
                )
            }
        }),
    );
    let base = serve(app).await;
    // A trailing slash on the configured URL changes nothing.
    let client = client(&format!("{base}/sequin/api/"));

    for _ in 0..2 {
        assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);
    }
}

/// Sequin Cloud and most self-hosted installs sit behind HTTPS: an `https://` base must be
/// spoken to in TLS (here the server sees a ClientHello), never refused as an unknown scheme.
#[tokio::test]
async fn an_https_base_is_spoken_to_in_tls() {
    use tokio::io::AsyncReadExt;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let first_bytes = tokio::spawn(async move {
        let read = async {
            let (mut socket, _) = listener.accept().await.ok()?;
            let mut head = [0u8; 3];
            socket.read_exact(&mut head).await.ok()?;
            Some(head)
            // Dropping the socket ends the handshake: the client sees a transport error.
        };
        tokio::time::timeout(Duration::from_secs(5), read)
            .await
            .ok()
            .flatten()
    });

    let err = client(&format!("https://localhost:{}/api", addr.port()))
        .list_databases()
        .await
        .unwrap_err();

    let head = first_bytes
        .await
        .unwrap()
        .unwrap_or_else(|| panic!("the client never connected: {err}"));
    assert_eq!(head[0], 0x16, "a TLS handshake record, got {head:?}");
    assert_eq!(head[1], 0x03, "TLS major version, got {head:?}");
    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
}
