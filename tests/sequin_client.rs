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

// --- The client's HTTP/1.1 connections, against a server that writes raw bytes -----------

/// What the scripted server does after writing an answer.
#[derive(Clone, Copy)]
enum Then {
    /// Wait for the next request on the same connection.
    KeepOpen,
    /// Close the connection.
    Close,
    /// Close the connection when the test calls [`Scripted::close_idle`].
    CloseWhenTold,
}

struct Scripted {
    base: String,
    /// Connections accepted.
    connections: Arc<AtomicUsize>,
    /// The raw requests read, each with the number of the connection it came on.
    requests: Arc<std::sync::Mutex<Vec<(usize, String)>>>,
    close: Arc<tokio::sync::Notify>,
    closed: tokio::sync::mpsc::UnboundedReceiver<()>,
}

impl Scripted {
    fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }

    /// How many requests arrived on each connection, in the order they were accepted.
    fn requests_per_connection(&self) -> Vec<usize> {
        let mut counts = vec![0; self.connections()];
        for (connection, _) in self.requests.lock().unwrap().iter() {
            counts[*connection] += 1;
        }
        counts
    }

    /// Have the connection waiting in `Then::CloseWhenTold` closed, and wait until it is.
    async fn close_idle(&mut self) {
        self.close.notify_one();
        tokio::time::timeout(Duration::from_secs(5), self.closed.recv())
            .await
            .expect("the server closes the connection when told")
            .unwrap();
    }
}

/// A server that answers the n-th request it reads (counted over all connections) with
/// `script(n)`, written in the given pieces.
async fn scripted(
    script: impl Fn(usize) -> (Vec<&'static [u8]>, Then) + Send + Sync + 'static,
) -> Scripted {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let requests = Arc::new(std::sync::Mutex::new(Vec::new()));
    let close = Arc::new(tokio::sync::Notify::new());
    let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
    let script = Arc::new(script);
    let (accepted, seen, told) = (connections.clone(), requests.clone(), close.clone());
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let connection = accepted.fetch_add(1, Ordering::SeqCst);
            let (script, seen, told, closed_tx) = (
                script.clone(),
                seen.clone(),
                told.clone(),
                closed_tx.clone(),
            );
            tokio::spawn(async move {
                let mut buf = Vec::new();
                loop {
                    // One request: a head, then as many body bytes as it announces.
                    let request_len = loop {
                        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                            let body = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length: "))
                                .map_or(0, |n| n.trim().parse::<usize>().unwrap());
                            if buf.len() >= end + 4 + body {
                                break end + 4 + body;
                            }
                        }
                        let mut chunk = [0u8; 4096];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    };
                    let request: Vec<u8> = buf.drain(..request_len).collect();
                    let n = {
                        let mut seen = seen.lock().unwrap();
                        seen.push((connection, String::from_utf8_lossy(&request).into_owned()));
                        seen.len() - 1
                    };
                    let (pieces, then) = script(n);
                    for piece in pieces {
                        if socket.write_all(piece).await.is_err() {
                            return;
                        }
                        // Separate writes arrive as separate reads more often than not.
                        tokio::time::sleep(Duration::from_millis(5)).await;
                    }
                    match then {
                        Then::KeepOpen => {}
                        Then::Close => return,
                        Then::CloseWhenTold => {
                            told.notified().await;
                            drop(socket);
                            let _ = closed_tx.send(());
                            return;
                        }
                    }
                }
            });
        }
    });
    Scripted {
        base: format!("http://{addr}/api"),
        connections,
        requests,
        close,
        closed,
    }
}

const DATABASES: &[u8] =
    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 26\r\n\r\n{\"data\":[{\"name\":\"app\"}]}\n";

#[tokio::test]
async fn a_kept_alive_connection_carries_the_next_call() {
    let server = scripted(|_| (vec![DATABASES], Then::KeepOpen)).await;
    let client = client(&server.base);

    for _ in 0..3 {
        assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);
    }

    assert_eq!(server.connections(), 1);
}

/// Servers close keep-alive connections that sit idle; the next call must not fail on one.
#[tokio::test]
async fn a_connection_the_server_closed_while_idle_is_not_reused() {
    let server = scripted(|_| (vec![DATABASES], Then::Close)).await;
    let client = client(&server.base);

    assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);

    assert_eq!(server.connections(), 2);
}

/// `Connection: close` on an answer retires the connection even if the server leaves it
/// open: a request written into it would never be answered.
#[tokio::test]
async fn connection_close_on_an_answer_retires_the_connection() {
    const CLOSING: &[u8] = b"HTTP/1.1 200 OK\r\nConnection: close\r\ncontent-length: 26\r\n\r\n{\"data\":[{\"name\":\"app\"}]}\n";
    let server = scripted(|n| match n {
        0 => (vec![CLOSING], Then::KeepOpen),
        _ => (vec![DATABASES], Then::KeepOpen),
    })
    .await;
    let client = client(&server.base);

    for _ in 0..2 {
        assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);
    }

    assert_eq!(server.connections(), 2);
}

/// Proxies in front of Sequin may re-frame answers as chunks; the body is the chunks
/// joined, and the connection stays usable.
#[tokio::test]
async fn a_chunked_answer_is_read_whole_across_reads() {
    let server = scripted(|_| {
        (
            vec![
                b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n",
                b"9;ext=1\r\n{\"data\":[\r\n",
                b"10\r\n{\"name\":\"app\"}]}\r",
                b"\n0\r\nx-trailer: y\r\n\r\n",
            ],
            Then::KeepOpen,
        )
    })
    .await;
    let client = client(&server.base);

    for _ in 0..2 {
        assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);
    }

    assert_eq!(server.connections(), 1);
}

#[tokio::test]
async fn an_answer_without_length_is_read_until_the_server_closes() {
    let server = scripted(|_| {
        (
            vec![
                b"HTTP/1.1 200 OK\r\n\r\n{\"data\":",
                b"[{\"name\":\"app\"}]}",
            ],
            Then::Close,
        )
    })
    .await;

    assert_eq!(
        client(&server.base).list_databases().await.unwrap(),
        vec!["app"]
    );
}

#[tokio::test]
async fn interim_answers_before_the_real_one_are_skipped() {
    let server = scripted(|_| {
        (
            vec![b"HTTP/1.1 100 Continue\r\n\r\n", DATABASES],
            Then::KeepOpen,
        )
    })
    .await;

    assert_eq!(
        client(&server.base).list_databases().await.unwrap(),
        vec!["app"]
    );
}

/// A server that dies mid-answer leaves the request's outcome unknown: a transport error,
/// retried later like any other, never a half-read body taken as the answer.
#[tokio::test]
async fn an_answer_cut_short_is_a_retryable_transport_error() {
    let server = scripted(|_| {
        (
            vec![b"HTTP/1.1 200 OK\r\ncontent-length: 100\r\n\r\n{\"data\":[]"],
            Then::Close,
        )
    })
    .await;

    let err = client(&server.base).list_databases().await.unwrap_err();

    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(
        err.to_string().contains(
            "could not reach Sequin: the connection closed before the whole answer arrived"
        ),
        "{err}"
    );
}

/// Sizes a hostile or broken server announces are never allocated up front nor added up:
/// a body announced past the limit is refused before it is read, a chunk of 2^64-1 bytes
/// is read only as far as it arrives, and a chunk size past 64 bits is malformed.
#[tokio::test]
async fn absurd_announced_sizes_fail_cleanly() {
    let cases: [(&'static [u8], &str); 3] = [
        (
            b"HTTP/1.1 200 OK\r\ncontent-length: 99999999999\r\n\r\n{}",
            "answer larger than 67108864 bytes",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\nffffffffffffffff\r\n{}",
            "the connection closed before the whole answer arrived",
        ),
        (
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\n{}\r\n1ffffffffffffffff\r\n",
            "malformed HTTP answer",
        ),
    ];
    for (answer, expected) in cases {
        let server = scripted(move |_| (vec![answer], Then::Close)).await;

        let err = client(&server.base).list_databases().await.unwrap_err();

        assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
        assert!(err.to_string().contains(expected), "{expected}: {err}");
    }
}

/// `Content-Length` is digits only: `+12` parses as a number in most languages, but a
/// server and a proxy reading it differently disagree on where the answer ends.
#[tokio::test]
async fn a_signed_content_length_is_refused() {
    let server = scripted(|_| {
        (
            vec![
                b"HTTP/1.1 200 OK\r\ncontent-length: +26\r\n\r\n{\"data\":[{\"name\":\"app\"}]}\n",
            ],
            Then::Close,
        )
    })
    .await;

    let err = client(&server.base).list_databases().await.unwrap_err();

    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(
        err.to_string()
            .contains("could not reach Sequin: malformed HTTP answer"),
        "{err}"
    );
}

/// A kept-alive connection the server closed while it sat idle: the next call's request
/// was never written to it, so it goes out at once on a new connection, once, and the call
/// succeeds instead of failing.
#[tokio::test]
async fn a_request_a_closed_idle_connection_never_sent_goes_out_on_a_new_one() {
    let mut server = scripted(|n| match n {
        0 => (vec![DATABASES], Then::CloseWhenTold),
        _ => (vec![DATABASES], Then::KeepOpen),
    })
    .await;
    let client = client(&server.base);
    assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);

    server.close_idle().await;
    assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);

    assert_eq!(server.requests_per_connection(), vec![1, 1]);
}

#[tokio::test]
async fn a_garbled_answer_is_a_transport_error_that_says_so() {
    let server = scripted(|_| (vec![b"SSH-2.0-OpenSSH_9.2\r\n\r\n"], Then::Close)).await;

    let err = client(&server.base).list_databases().await.unwrap_err();

    assert_eq!(err.class(), ErrorClass::Retryable, "{err}");
    assert!(err.to_string().contains("malformed HTTP answer"), "{err}");
}

/// The request on the wire: origin-form target under the base path, `Host` with the port,
/// the token, and a JSON body whose length is announced.
#[tokio::test]
async fn a_write_is_one_http_1_1_message_with_host_token_and_json_body() {
    const CREATED: &[u8] =
        b"HTTP/1.1 201 Created\r\ncontent-length: 24\r\n\r\n{\"id\":\"s-1\",\"name\":\"u1\"}";
    let server = scripted(|_| (vec![CREATED], Then::KeepOpen)).await;
    let port = server
        .base
        .rsplit(':')
        .next()
        .unwrap()
        .trim_end_matches("/api");

    let sink = client(&server.base)
        .create_sink(&json!({"name": "u1"}))
        .await
        .unwrap();

    assert_eq!(sink.id, "s-1");
    let request = server.requests.lock().unwrap()[0].1.clone();
    let (head, body) = request.split_once("\r\n\r\n").unwrap();
    let mut lines = head.lines();
    assert_eq!(lines.next(), Some("POST /api/sinks HTTP/1.1"));
    // Header names are case-insensitive; values are compared exactly.
    let headers: Vec<String> = lines
        .map(|line| match line.split_once(": ") {
            Some((name, value)) => format!("{}: {value}", name.to_lowercase()),
            None => line.to_string(),
        })
        .collect();
    for expected in [
        format!("host: 127.0.0.1:{port}"),
        "authorization: Bearer tok-123".to_string(),
        "content-type: application/json".to_string(),
        format!("content-length: {}", body.len()),
    ] {
        assert!(headers.contains(&expected), "{expected} in {headers:?}");
    }
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(body).unwrap(),
        json!({"name": "u1"})
    );
}
