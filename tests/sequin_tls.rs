//! The Sequin client over TLS, end to end: a local HTTPS server whose certificate the client
//! trusts through `SSL_CERT_FILE`, as a self-hosted Sequin with a private CA would be set up.
//! Its own test binary: the trusted roots are read once per process.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use userhooks::config::Secret;
use userhooks::metrics::Metrics;
use userhooks::sequin::SequinClient;

/// A self-signed certificate for `localhost`, made with the `openssl` command.
fn certificate(dir: &Path) -> (Vec<CertificateDer<'static>>, PrivateKeyDer<'static>) {
    let common::certs::Pem { cert, key } =
        common::certs::self_signed(dir, "localhost", "DNS:localhost");
    // The client reads its trusted roots from here (rustls-native-certs).
    std::env::set_var("SSL_CERT_FILE", &cert);
    let certs = CertificateDer::pem_file_iter(&cert)
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    (certs, PrivateKeyDer::from_pem_file(&key).unwrap())
}

/// An HTTPS server answering every request with one database; after `per_connection`
/// answers it ends the connection with a TLS close_notify. Counts connections.
async fn https_server(per_connection: usize, dir: &Path) -> (u16, Arc<AtomicUsize>) {
    let (certs, key) = certificate(dir);
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let connections = Arc::new(AtomicUsize::new(0));
    let accepted = connections.clone();
    tokio::spawn(async move {
        while let Ok((socket, _)) = listener.accept().await {
            accepted.fetch_add(1, Ordering::SeqCst);
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(socket).await else {
                    return;
                };
                let mut buf = Vec::new();
                for _ in 0..per_connection {
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match tls.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    buf.clear();
                    let body = br#"{"data":[{"name":"app"}]}"#;
                    let head = format!("HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n", body.len());
                    tls.write_all(head.as_bytes()).await.unwrap();
                    tls.write_all(body).await.unwrap();
                    tls.flush().await.unwrap();
                }
                let _ = tls.shutdown().await;
            });
        }
    });
    (port, connections)
}

#[tokio::test]
async fn calls_over_https_reuse_the_connection_until_the_server_closes_it() {
    let dir = std::env::temp_dir().join(format!("userhooks-tls-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (port, connections) = https_server(2, &dir).await;
    let client = SequinClient::new(
        &format!("https://localhost:{port}/api"),
        Secret::new("tok-123"),
        Duration::from_secs(5),
        Metrics::new(),
    )
    .with_in_process_retries(0);

    for call in 0..2 {
        let names = client.list_databases().await;
        assert_eq!(names.unwrap(), vec!["app"], "call {call}");
    }
    assert_eq!(
        connections.load(Ordering::SeqCst),
        1,
        "the second call reused the first connection"
    );

    // The server ended that connection after its second answer; the next call opens another.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(client.list_databases().await.unwrap(), vec!["app"]);
    assert_eq!(connections.load(Ordering::SeqCst), 2);
    std::fs::remove_dir_all(&dir).unwrap();
}
