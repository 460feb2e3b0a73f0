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
