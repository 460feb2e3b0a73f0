//! The Sequin client's HTTP/1.1 connections to one origin: hyper's connection API
//! (`hyper::client::conn::http1`) over a stack of idle keep-alive sockets of our own, one
//! request at a time on each.
//!
//! Why not hyper-util's pooled client: it spawns a task per connection and keeps a pool
//! entry, a request channel and two buffers for each for as long as the connection lives,
//! and every call crosses from the caller's task to the connection's and back. Here a call
//! takes an idle socket, sets up hyper's state for it (a handshake that does no I/O), and
//! polls hyper's side of the connection itself, in its own task, until the answer is read
//! whole; then the socket goes back on the stack and hyper's state is freed. So an idle
//! connection costs only its socket, and hyper's buffers (~25 KiB) exist only for calls in
//! flight. See `docs/decisions.md` ("The Sequin HTTP client").
//!
//! Redirects are returned to the caller, never followed; answer bodies are read whole, up
//! to a limit.

use std::future::{poll_fn, Future};
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::stream::{FuturesUnordered, StreamExt};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Body as _;
use hyper::client::conn::http1;
use hyper_util::rt::TokioIo;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// A connection idle longer than this is closed: servers and load balancers commonly drop
/// idle connections after 60 s, and until it is closed our side holds the socket (in
/// CLOSE_WAIT once the server gave up on it).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// When an address has not connected after this long, the next one is tried alongside it
/// (RFC 8305's recommended connection attempt delay).
const ATTEMPT_DELAY: Duration = Duration::from_millis(250);

/// Why an exchange failed; the message is what the operator reads after "could not reach
/// Sequin: ".
#[derive(Debug, thiserror::Error)]
pub enum HttpError {
    #[error("cannot connect to {target}: {reason}")]
    Connect { target: String, reason: String },
    #[error("connection to {target} timed out after {after:?}")]
    ConnectTimeout { target: String, after: Duration },
    #[error("TLS handshake with {target} failed: {reason}")]
    Tls { target: String, reason: String },
    #[error("connection failed: {0}")]
    Io(String),
    #[error("the connection closed before the whole answer arrived")]
    Truncated,
    #[error("malformed HTTP answer: {0}")]
    Malformed(String),
    #[error("answer larger than {0} bytes")]
    TooLarge(usize),
}

/// One answer, read whole.
#[derive(Debug)]
pub struct Answer {
    pub status: http::StatusCode,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

type Body = Full<Bytes>;
type Io = TokioIo<Stream>;
type Driver = http1::Connection<Io, Body>;

/// One connection in use: where the request goes in, and hyper's side that reads and
/// writes the socket (only while someone polls it).
struct Conn {
    sender: http1::SendRequest<Body>,
    /// `None` once it finished (closed or failed); dropping it hands any request it never
    /// began to write back to its caller.
    driver: Option<Driver>,
}

/// An idle connection is only its socket: hyper's state for it (buffers, the request
/// channel) is made for each exchange and freed after it, so memory follows the calls in
/// flight, not the connections open. Keeping that state with idle connections measured
/// lower peaks in a burst but held ~25 KiB per idle connection until it closed.
struct Idle {
    io: Io,
    since: Instant,
}

struct Stack {
    /// Least recently used first: calls take the warmest connection from the end, and the
    /// coldest ones age out at the front, so `since` never decreases along it.
    idle: Vec<Idle>,
    /// Is a sweep task running for this stack?
    reaper: bool,
}

/// Connections to one origin (`scheme://host:port`).
pub struct Connections {
    /// `host:port` to connect to (IPv6 literals keep their brackets).
    target: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    idle_timeout: Duration,
    max_body: usize,
    http: http1::Builder,
    stack: Arc<Mutex<Stack>>,
}

/// How a request on one connection ended.
enum Outcome {
    /// The answer, and the connection if it can carry another request.
    Answered(Answer, Option<Io>),
    /// The connection closed before hyper began writing the request: it can go elsewhere.
    NotSent(Box<http::Request<Body>>, hyper::Error),
    Failed(HttpError),
}

impl Connections {
    /// `host` as in a URL (`[::1]` for IPv6); `tls` for `https://` origins.
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
        idle_timeout: Duration,
        max_body: usize,
    ) -> Result<Self, String> {
        let tls = match tls {
            None => None,
            Some(config) => {
                let name = host.trim_start_matches('[').trim_end_matches(']');
                let name = ServerName::try_from(name.to_string())
                    .map_err(|e| format!("{host:?} is not a valid TLS server name: {e}"))?;
                Some((TlsConnector::from(config), name))
            }
        };
        Ok(Connections {
            target: format!("{host}:{port}"),
            tls,
            connect_timeout,
            idle_timeout,
            max_body,
            http: {
                let mut http = http1::Builder::new();
                // One buffer and a plain `send` instead of `writev` of head and body: the
                // bodies are small, and the kernel's vectored path cost more than the copy.
                http.writev(false);
                http
            },
            stack: Arc::new(Mutex::new(Stack {
                idle: Vec::new(),
                reaper: false,
            })),
        })
    }

    /// Send one request and read the whole answer. The request needs its `Host` header;
    /// its target is written as given (origin-form).
    ///
    /// A request that a reused connection never began to send (the server had closed it)
    /// is sent again at once, on a new connection; one that may have reached the server is
    /// never sent twice. Dropping the future mid-exchange drops its connection.
    pub async fn exchange(&self, request: http::Request<Bytes>) -> Result<Answer, HttpError> {
        let request = request.map(Full::new);
        let (io, reused) = match self.take_idle() {
            Some(io) => (io, true),
            None => (self.connect().await?, false),
        };
        let outcome = match self.send(io, request).await {
            Outcome::NotSent(request, _) if reused => {
                let io = self.connect().await?;
                self.send(io, *request).await
            }
            outcome => outcome,
        };
        match outcome {
            Outcome::Answered(answer, reusable) => {
                if let Some(io) = reusable {
                    self.put_idle(io);
                }
                Ok(answer)
            }
            Outcome::NotSent(_, error) => Err(from_hyper(&error)),
            Outcome::Failed(error) => Err(error),
        }
    }

    /// One request on one connection, driving the connection in this task meanwhile.
    async fn send(&self, io: Io, request: http::Request<Body>) -> Outcome {
        // hyper's HTTP/1 handshake only sets up its state; it does no I/O and cannot fail.
        let (sender, driver) = match self.http.handshake(io).await {
            Ok(parts) => parts,
            Err(error) => return Outcome::Failed(HttpError::Io(describe(&error))),
        };
        let mut conn = Conn {
            sender,
            driver: Some(driver),
        };
        let response = conn.sender.try_send_request(request);
        let max_body = self.max_body;
        let answer = conn
            .drive(async move {
                match response.await {
                    Ok(response) => read_answer(response, max_body).await,
                    Err(mut error) => match error.take_message() {
                        Some(request) => {
                            Err(Outcome::NotSent(Box::new(request), error.into_error()))
                        }
                        None => Err(Outcome::Failed(from_hyper(error.error()))),
                    },
                }
            })
            .await;
        match answer {
            Ok(answer) => Outcome::Answered(answer, conn.settle().await),
            Err(outcome) => outcome,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Stack> {
        lock(&self.stack)
    }

    /// The most recently used idle connection, unless it has been idle too long (then
    /// all of them have; they are closed). Sockets are closed after the lock is released.
    fn take_idle(&self) -> Option<Io> {
        let mut stack = self.lock();
        let newest = stack.idle.pop()?;
        if newest.since.elapsed() <= self.idle_timeout {
            return Some(newest.io);
        }
        let expired = std::mem::take(&mut stack.idle);
        drop(stack);
        drop((newest, expired));
        None
    }

    fn put_idle(&self, io: Io) {
        let mut stack = self.lock();
        stack.idle.push(Idle {
            io,
            since: Instant::now(),
        });
        if !stack.reaper {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                stack.reaper = true;
                runtime.spawn(reap(Arc::downgrade(&self.stack), self.idle_timeout));
            }
        }
    }

    async fn connect(&self) -> Result<Io, HttpError> {
        let target = &self.target;
        let timed_out = || HttpError::ConnectTimeout {
            target: target.clone(),
            after: self.connect_timeout,
        };
        let deadline = tokio::time::Instant::now() + self.connect_timeout;
        let tcp = tokio::time::timeout_at(deadline, async {
            let addrs = tokio::net::lookup_host(target.as_str()).await?;
            connect_any(interleave(addrs.collect()), ATTEMPT_DELAY).await
        })
        .await
        .map_err(|_| timed_out())?
        .map_err(|e| HttpError::Connect {
            target: target.clone(),
            reason: e.to_string(),
        })?;
        // Requests go out in one write; waiting to coalesce them only adds latency.
        tcp.set_nodelay(true)
            .map_err(|e| HttpError::Io(e.to_string()))?;
        let stream = match &self.tls {
            None => Stream::Plain(tcp),
            Some((connector, name)) => {
                let handshake = connector.connect(name.clone(), tcp);
                match tokio::time::timeout_at(deadline, handshake).await {
                    Err(_) => return Err(timed_out()),
                    Ok(Err(e)) => {
                        return Err(HttpError::Tls {
                            target: target.clone(),
                            reason: e.to_string(),
                        })
                    }
                    Ok(Ok(tls)) => Stream::Tls(Box::new(tls)),
                }
            }
        };
        Ok(TokioIo::new(stream))
    }
}

fn lock(stack: &Mutex<Stack>) -> std::sync::MutexGuard<'_, Stack> {
    // The stack holds plain data; a panic elsewhere cannot leave it inconsistent.
    stack.lock().unwrap_or_else(|e| e.into_inner())
}

/// Close connections idle longer than `idle_timeout`, sweeping every half of it, so a
/// quiet worker does not hold sockets the server has long given up on. Ends when the
/// stack is empty (the next idle connection starts another) or its `Connections` is gone.
async fn reap(stack: Weak<Mutex<Stack>>, idle_timeout: Duration) {
    /// Marks the stack as unswept if this task ends early (runtime shutdown).
    struct Running(Option<Weak<Mutex<Stack>>>);
    impl Drop for Running {
        fn drop(&mut self) {
            if let Some(stack) = self.0.take().and_then(|stack| stack.upgrade()) {
                lock(&stack).reaper = false;
            }
        }
    }
    let mut running = Running(Some(stack.clone()));
    let period = (idle_timeout / 2).max(Duration::from_millis(10));
    loop {
        tokio::time::sleep(period).await;
        let Some(stack) = stack.upgrade() else { return };
        let mut locked = lock(&stack);
        let now = Instant::now();
        let fresh = locked
            .idle
            .partition_point(|entry| now.duration_since(entry.since) > idle_timeout);
        let expired: Vec<Idle> = locked.idle.drain(..fresh).collect();
        let done = locked.idle.is_empty();
        if done {
            // Cleared under the same lock that saw the stack empty: the next `put_idle`
            // starts a new sweep.
            locked.reaper = false;
            running.0 = None;
        }
        drop(locked);
        // Closed outside the lock: each is a syscall or two.
        drop(expired);
        if done {
            return;
        }
    }
}

impl Conn {
    /// Run `work` while polling hyper's side of this connection in the same task.
    async fn drive<F: Future>(&mut self, work: F) -> F::Output {
        let mut work = pin!(work);
        poll_fn(|cx| {
            self.poll_driver(cx);
            work.as_mut().poll(cx)
        })
        .await
    }

    fn poll_driver(&mut self, cx: &mut Context<'_>) {
        if let Some(driver) = &mut self.driver {
            // Its error, if any, already went to the request it concerned.
            if Pin::new(driver).poll(cx).is_ready() {
                self.driver = None;
            }
        }
    }

    /// After an answer was read whole: let hyper finish the exchange (it asks for the next
    /// request, or closes on `Connection: close`), then hand back the socket if it is open,
    /// ready for another request, and holds no bytes past the answer.
    async fn settle(mut self) -> Option<Io> {
        poll_fn(|cx| {
            self.poll_driver(cx);
            Poll::Ready(())
        })
        .await;
        if !self.sender.is_ready() {
            return None;
        }
        let parts = self.driver?.into_parts();
        parts.read_buf.is_empty().then_some(parts.io)
    }
}

/// Read the answer's body whole.
async fn read_answer(
    response: http::Response<hyper::body::Incoming>,
    max_body: usize,
) -> Result<Answer, Outcome> {
    let (head, body) = response.into_parts();
    // An announced length over the cap is refused before anything is read; `Limited` stops
    // a body that grows past it, and nothing is reserved on the server's word.
    if body.size_hint().lower() > max_body as u64 {
        return Err(Outcome::Failed(HttpError::TooLarge(max_body)));
    }
    let bytes = Limited::new(body, max_body)
        .collect()
        .await
        .map_err(|err| {
            Outcome::Failed(match err.downcast::<hyper::Error>() {
                Ok(err) => from_hyper(&err),
                Err(_) => HttpError::TooLarge(max_body),
            })
        })?
        .to_bytes()
        .to_vec();
    let retry_after = head
        .headers
        .get(http::header::RETRY_AFTER)
        .and_then(|value| value.to_str().ok())
        .and_then(|text| text.trim().parse::<u64>().ok())
        .map(Duration::from_secs);
    Ok(Answer {
        status: head.status,
        retry_after,
        body: bytes,
    })
}

/// What a hyper error means to the operator.
fn from_hyper(error: &hyper::Error) -> HttpError {
    if error.is_parse() || error.is_parse_status() || error.is_parse_too_large() {
        return HttpError::Malformed(describe(error));
    }
    if error.is_incomplete_message() {
        return HttpError::Truncated;
    }
    // Body errors carry the decoder's I/O error: an early end, or bad chunked framing.
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        if let Some(io) = cause.downcast_ref::<io::Error>() {
            match io.kind() {
                io::ErrorKind::UnexpectedEof => return HttpError::Truncated,
                io::ErrorKind::InvalidData | io::ErrorKind::InvalidInput => {
                    return HttpError::Malformed(io.to_string())
                }
                _ => break,
            }
        }
        source = cause.source();
    }
    HttpError::Io(describe(error))
}

/// An error and its causes on one line (hyper's own message names only the kind).
fn describe(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Addresses in the order to try them: alternating families, starting with the family
/// the resolver put first (RFC 8305 §4), so one unreachable family costs one attempt delay.
fn interleave(addrs: Vec<SocketAddr>) -> Vec<SocketAddr> {
    let Some(first) = addrs.first() else {
        return addrs;
    };
    let first_is_v6 = first.is_ipv6();
    let (mut preferred, mut other): (Vec<_>, Vec<_>) = addrs
        .into_iter()
        .partition(|addr| addr.is_ipv6() == first_is_v6);
    let mut ordered = Vec::with_capacity(preferred.len() + other.len());
    preferred.reverse();
    other.reverse();
    loop {
        match (preferred.pop(), other.pop()) {
            (None, None) => return ordered,
            (a, b) => ordered.extend(a.into_iter().chain(b)),
        }
    }
}

/// Connect to the first address that answers. Each address gets its own attempt, started
/// when the previous one failed or `delay` after it started, whichever comes first, and
/// attempts run side by side until one connects (a simple Happy Eyeballs, RFC 8305): an
/// address that drops packets costs `delay`, not the whole connect timeout.
async fn connect_any(addrs: Vec<SocketAddr>, delay: Duration) -> io::Result<TcpStream> {
    let mut waiting = addrs.into_iter();
    let mut attempts = FuturesUnordered::new();
    let mut last_error = None;
    loop {
        if attempts.is_empty() {
            match waiting.next() {
                Some(addr) => attempts.push(TcpStream::connect(addr)),
                None => {
                    return Err(last_error.unwrap_or_else(|| {
                        io::Error::new(io::ErrorKind::NotFound, "the name has no addresses")
                    }))
                }
            }
        }
        let more = waiting.len() > 0;
        tokio::select! {
            Some(result) = attempts.next() => match result {
                Ok(tcp) => return Ok(tcp),
                Err(error) => last_error = Some(error),
            },
            () = tokio::time::sleep(delay), if more => {
                if let Some(addr) = waiting.next() {
                    attempts.push(TcpStream::connect(addr));
                }
            }
        }
    }
}

/// A plain or TLS socket.
enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl AsyncRead for Stream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_read(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Stream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write(cx, buf),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_write_vectored(cx, bufs),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_write_vectored(cx, bufs),
        }
    }

    fn is_write_vectored(&self) -> bool {
        match self {
            Stream::Plain(tcp) => tcp.is_write_vectored(),
            Stream::Tls(tls) => tls.is_write_vectored(),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_flush(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Stream::Plain(tcp) => Pin::new(tcp).poll_shutdown(cx),
            Stream::Tls(tls) => Pin::new(tls.as_mut()).poll_shutdown(cx),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpListener;

    /// A server that answers one request per connection and reports each connection the
    /// client closes.
    async fn server() -> (u16, tokio::sync::mpsc::UnboundedReceiver<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let (closed_tx, closed) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                let closed_tx = closed_tx.clone();
                tokio::spawn(async move {
                    let mut buf = Vec::new();
                    while !buf.windows(4).any(|w| w == b"\r\n\r\n") {
                        let mut chunk = [0u8; 1024];
                        match socket.read(&mut chunk).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => buf.extend_from_slice(&chunk[..n]),
                        }
                    }
                    let answer = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\n{}";
                    socket.write_all(answer).await.unwrap();
                    // Kept open until the client closes it.
                    let mut rest = [0u8; 64];
                    while matches!(socket.read(&mut rest).await, Ok(n) if n > 0) {}
                    let _ = closed_tx.send(());
                });
            }
        });
        (port, closed)
    }

    fn get(port: u16) -> http::Request<Bytes> {
        http::Request::builder()
            .uri("/x")
            .header(http::header::HOST, format!("127.0.0.1:{port}"))
            .body(Bytes::new())
            .unwrap()
    }

    /// A quiet client still closes its idle connections: the server sees the end of each
    /// one although no further call comes, and the sweep starts again for the next.
    #[tokio::test]
    async fn idle_connections_are_closed_without_another_call() {
        let (port, mut closed) = server().await;
        let idle_timeout = Duration::from_millis(100);
        let connections = Connections::new(
            "127.0.0.1",
            port,
            None,
            Duration::from_secs(5),
            idle_timeout,
            1 << 20,
        )
        .unwrap();

        for round in 0..2 {
            let answer = connections.exchange(get(port)).await.unwrap();
            assert_eq!(answer.body, b"{}");
            assert_eq!(connections.lock().idle.len(), 1, "round {round}: kept idle");

            tokio::time::timeout(Duration::from_secs(10), closed.recv())
                .await
                .unwrap_or_else(|_| panic!("round {round}: the idle connection stayed open"));
            assert!(connections.lock().idle.is_empty());
        }
    }

    #[test]
    fn addresses_alternate_families_starting_with_the_first() {
        let addr = |text: &str| text.parse::<SocketAddr>().unwrap();
        let resolved = vec![
            addr("[::1]:1"),
            addr("[::2]:1"),
            addr("10.0.0.1:1"),
            addr("10.0.0.2:1"),
            addr("10.0.0.3:1"),
        ];
        assert_eq!(
            interleave(resolved),
            vec![
                addr("[::1]:1"),
                addr("10.0.0.1:1"),
                addr("[::2]:1"),
                addr("10.0.0.2:1"),
                addr("10.0.0.3:1"),
            ]
        );
    }

    /// An address that refuses is left at once; one that drops the handshake (here a
    /// listener whose accept queue is full, so the kernel ignores further SYNs) costs one
    /// attempt delay while the next address is tried, not the whole connect timeout.
    #[tokio::test]
    async fn an_address_that_never_answers_does_not_hold_up_the_next() {
        let refused = TcpListener::bind("127.0.0.1:0")
            .await
            .unwrap()
            .local_addr()
            .unwrap();
        let silent = tokio::net::TcpSocket::new_v4().unwrap();
        silent.bind("127.0.0.1:0".parse().unwrap()).unwrap();
        let silent = silent.listen(0).unwrap();
        let silent_addr = silent.local_addr().unwrap();
        // Fills the accept queue (never accepted): the next SYN is dropped.
        let _queued = TcpStream::connect(silent_addr).await.unwrap();
        let (good, _) = server().await;
        let good = SocketAddr::from(([127, 0, 0, 1], good));

        let tcp = tokio::time::timeout(
            Duration::from_secs(20),
            connect_any(vec![refused, silent_addr, good], ATTEMPT_DELAY),
        )
        .await
        .expect("a silent address held up the others")
        .unwrap();

        assert_eq!(tcp.peer_addr().unwrap(), good);
    }
}
