//! The Sequin client's HTTP/1.1 connections: one origin, a stack of idle keep-alive
//! connections, one request at a time on each.
//!
//! Why not hyper's pooled client: it keeps a connection task, a request channel and two
//! buffers for every connection, so the worker's memory grew with every Sequin call in
//! flight (the heap profile is in docs/performance.md). Every call also crossed two tasks
//! (the caller's and the connection's). Here a call
//! writes its request and reads the answer in the caller's own task, and an idle
//! connection is only its socket.
//!
//! What it speaks: requests with a `Content-Length` body; answers framed by
//! `Content-Length`, `Transfer-Encoding: chunked` or the end of the connection; `1xx`
//! interim answers are skipped. Redirects are returned to the caller, never followed.

use std::collections::VecDeque;
use std::io;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures_util::FutureExt;
use rustls::pki_types::ServerName;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

/// The largest answer head we read; Sequin's are well under 1 KiB.
const MAX_HEAD_BYTES: usize = 64 << 10;
/// How many header lines an answer head may have.
const MAX_HEADERS: usize = 64;
/// A connection idle longer than this is closed instead of reused: servers and load
/// balancers commonly drop idle connections after 60 s, and a request written into a
/// connection the other side is closing fails.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

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
    Io(#[from] io::Error),
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
    pub status: u16,
    /// `Retry-After` in seconds, when given as a number.
    pub retry_after: Option<Duration>,
    pub body: Vec<u8>,
}

enum Stream {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

struct Idle {
    stream: Stream,
    since: Instant,
}

/// Connections to one origin (`scheme://host:port`).
pub struct Connections {
    /// `host:port` to connect to (IPv6 literals keep their brackets).
    target: String,
    tls: Option<(TlsConnector, ServerName<'static>)>,
    connect_timeout: Duration,
    max_body: usize,
    /// Most recently used last: calls take the warmest connection, and the coldest ones
    /// age out at the front.
    idle: Mutex<VecDeque<Idle>>,
}

impl Connections {
    /// `host` as in a URL (`[::1]` for IPv6); `tls` for `https://` origins.
    pub fn new(
        host: &str,
        port: u16,
        tls: Option<Arc<rustls::ClientConfig>>,
        connect_timeout: Duration,
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
            max_body,
            idle: Mutex::new(VecDeque::new()),
        })
    }

    /// Send one request (a whole HTTP/1.1 message: head and body) and read the answer.
    ///
    /// A connection is reused only when the answer was framed and the server did not ask
    /// to close it. Dropping the future mid-exchange drops its connection.
    pub async fn exchange(&self, request: &[u8]) -> Result<Answer, HttpError> {
        let mut stream = match self.take_idle() {
            Some(stream) => stream,
            None => self.connect().await?,
        };
        stream.write_all(request).await?;
        let (answer, reusable) = read_answer(&mut stream, self.max_body).await?;
        if reusable {
            self.lock().push_back(Idle {
                stream,
                since: Instant::now(),
            });
        }
        Ok(answer)
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Idle>> {
        // The queue holds plain data; a panic elsewhere cannot leave it inconsistent.
        self.idle.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The most recently used idle connection that is still open, closing expired ones.
    fn take_idle(&self) -> Option<Stream> {
        let mut idle = self.lock();
        let now = Instant::now();
        while idle
            .front()
            .is_some_and(|c| now.duration_since(c.since) > IDLE_TIMEOUT)
        {
            idle.pop_front();
        }
        while let Some(mut candidate) = idle.pop_back() {
            if candidate.stream.is_open() {
                return Some(candidate.stream);
            }
        }
        None
    }

    async fn connect(&self) -> Result<Stream, HttpError> {
        let target = &self.target;
        let tcp = match tokio::time::timeout(self.connect_timeout, TcpStream::connect(target)).await
        {
            Err(_) => {
                return Err(HttpError::ConnectTimeout {
                    target: target.clone(),
                    after: self.connect_timeout,
                })
            }
            Ok(Err(e)) => {
                return Err(HttpError::Connect {
                    target: target.clone(),
                    reason: e.to_string(),
                })
            }
            Ok(Ok(tcp)) => tcp,
        };
        // Requests go out in one write; waiting to coalesce them only adds latency.
        tcp.set_nodelay(true)?;
        let Some((connector, name)) = &self.tls else {
            return Ok(Stream::Plain(tcp));
        };
        let handshake = connector.connect(name.clone(), tcp);
        match tokio::time::timeout(self.connect_timeout, handshake).await {
            Err(_) => Err(HttpError::ConnectTimeout {
                target: target.clone(),
                after: self.connect_timeout,
            }),
            Ok(Err(e)) => Err(HttpError::Tls {
                target: target.clone(),
                reason: e.to_string(),
            }),
            Ok(Ok(tls)) => Ok(Stream::Tls(Box::new(tls))),
        }
    }
}

impl Stream {
    /// Has the server not closed this idle connection (nor sent anything on it)? Checked
    /// without waiting: a pending read means open.
    fn is_open(&mut self) -> bool {
        let mut probe = [0u8; 1];
        self.read(&mut probe).now_or_never().is_none()
    }

    async fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Stream::Plain(tcp) => tcp.write_all(bytes).await,
            Stream::Tls(tls) => {
                tls.write_all(bytes).await?;
                tls.flush().await
            }
        }
    }

    async fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Stream::Plain(tcp) => tcp.read(buf).await,
            Stream::Tls(tls) => tls.read(buf).await,
        }
    }
}

/// Read more bytes onto the end of `buf` (into its spare room, never zero-filled); 0 means
/// the connection closed.
async fn fill(stream: &mut Stream, buf: &mut Vec<u8>) -> io::Result<usize> {
    if buf.capacity() - buf.len() < 1024 {
        buf.reserve(4096);
    }
    match stream {
        Stream::Plain(tcp) => tcp.read_buf(buf).await,
        Stream::Tls(tls) => tls.read_buf(buf).await,
    }
}

/// How the body of an answer ends.
enum Framing {
    Length(usize),
    Chunked,
    UntilClose,
}

struct Head {
    status: u16,
    retry_after: Option<Duration>,
    framing: Framing,
    keep_alive: bool,
    len: usize,
}

/// Parse one answer head at the start of `buf`, if it is all there.
fn parse_head(buf: &[u8]) -> Result<Option<Head>, HttpError> {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut response = httparse::Response::new(&mut headers);
    let len = match response.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) if buf.len() >= MAX_HEAD_BYTES => {
            return Err(HttpError::Malformed(format!(
                "answer head longer than {MAX_HEAD_BYTES} bytes"
            )))
        }
        Ok(httparse::Status::Partial) => return Ok(None),
        Err(e) => return Err(HttpError::Malformed(e.to_string())),
    };
    let status = response.code.unwrap_or_default();
    let mut keep_alive = response.version == Some(1);
    let mut length: Option<usize> = None;
    let mut chunked = false;
    let mut other_coding = false;
    let mut retry_after = None;
    for header in response.headers.iter() {
        let value = std::str::from_utf8(header.value).unwrap_or("").trim();
        if header.name.eq_ignore_ascii_case("content-length") {
            let parsed = value
                .parse::<usize>()
                .map_err(|_| HttpError::Malformed(format!("Content-Length {value:?}")))?;
            if length.is_some_and(|seen| seen != parsed) {
                return Err(HttpError::Malformed("conflicting Content-Length".into()));
            }
            length = Some(parsed);
        } else if header.name.eq_ignore_ascii_case("transfer-encoding") {
            // Only the last coding frames the body; `chunked` must be it.
            let last = value.rsplit(',').next().unwrap_or("").trim();
            chunked = last.eq_ignore_ascii_case("chunked");
            other_coding = !chunked;
        } else if header.name.eq_ignore_ascii_case("connection") {
            if value
                .split(',')
                .any(|token| token.trim().eq_ignore_ascii_case("close"))
            {
                keep_alive = false;
            }
        } else if header.name.eq_ignore_ascii_case("retry-after") {
            retry_after = value.parse::<u64>().ok().map(Duration::from_secs);
        }
    }
    let framing = if (100..200).contains(&status) || status == 204 || status == 304 {
        Framing::Length(0)
    } else if chunked {
        // Transfer-Encoding wins over Content-Length (RFC 9112 §6.3).
        Framing::Chunked
    } else if other_coding {
        Framing::UntilClose
    } else {
        length.map_or(Framing::UntilClose, Framing::Length)
    };
    if matches!(framing, Framing::UntilClose) {
        keep_alive = false;
    }
    Ok(Some(Head {
        status,
        retry_after,
        framing,
        keep_alive,
        len,
    }))
}

/// Read one whole answer; also says whether the connection can carry another request.
async fn read_answer(stream: &mut Stream, max_body: usize) -> Result<(Answer, bool), HttpError> {
    let mut buf = Vec::with_capacity(4096);
    let head = loop {
        match parse_head(&buf)? {
            // Interim answers (`100 Continue`, `103 Early Hints`) precede the real one.
            Some(head) if (100..200).contains(&head.status) && head.status != 101 => {
                buf.drain(..head.len);
            }
            Some(head) if head.status == 101 => {
                return Err(HttpError::Malformed("unexpected protocol switch".into()))
            }
            Some(head) => break head,
            None => {
                if fill(stream, &mut buf).await? == 0 {
                    return Err(HttpError::Truncated);
                }
            }
        }
    };
    buf.drain(..head.len);
    let body = match head.framing {
        Framing::Length(len) => {
            if len > max_body {
                return Err(HttpError::TooLarge(max_body));
            }
            while buf.len() < len {
                if fill(stream, &mut buf).await? == 0 {
                    return Err(HttpError::Truncated);
                }
            }
            if buf.len() > len {
                // Bytes after the answer: the connection is out of step, never reuse it.
                buf.truncate(len);
                return Ok((answer(&head, buf), false));
            }
            buf
        }
        Framing::Chunked => {
            let (body, clean_end) = read_chunked(stream, buf, max_body).await?;
            return Ok((answer(&head, body), head.keep_alive && clean_end));
        }
        Framing::UntilClose => {
            while fill(stream, &mut buf).await? > 0 {
                if buf.len() > max_body {
                    return Err(HttpError::TooLarge(max_body));
                }
            }
            buf
        }
    };
    let keep_alive = head.keep_alive;
    Ok((answer(&head, body), keep_alive))
}

fn answer(head: &Head, body: Vec<u8>) -> Answer {
    Answer {
        status: head.status,
        retry_after: head.retry_after,
        body,
    }
}

/// Decode a chunked body, `buf` holding what already arrived after the head. The decoded
/// bytes are moved to the front of the same buffer. Also says whether the answer ended
/// exactly where the bytes read did (else the connection is out of step).
async fn read_chunked(
    stream: &mut Stream,
    mut buf: Vec<u8>,
    max_body: usize,
) -> Result<(Vec<u8>, bool), HttpError> {
    let mut body_len = 0; // decoded bytes at the front of buf
    let mut pos = 0; // next undecoded byte
    loop {
        // The chunk-size line: hex size, optional `;extensions`, CRLF.
        let line_end = loop {
            if let Some(at) = find_crlf(&buf[pos..]) {
                break pos + at;
            }
            if buf.len() - pos > 1024 {
                return Err(HttpError::Malformed("chunk size line too long".into()));
            }
            if fill(stream, &mut buf).await? == 0 {
                return Err(HttpError::Truncated);
            }
        };
        let line = std::str::from_utf8(&buf[pos..line_end]).unwrap_or("");
        let size_text = line.split(';').next().unwrap_or("").trim();
        let size = Some(size_text)
            .filter(|t| !t.is_empty() && t.bytes().all(|b| b.is_ascii_hexdigit()))
            .and_then(|t| usize::from_str_radix(t, 16).ok())
            .ok_or_else(|| {
                let shown: String = size_text.chars().take(40).collect();
                HttpError::Malformed(format!("chunk size {shown:?}"))
            })?;
        pos = line_end + 2;
        if size == 0 {
            // Trailer fields, if any, then an empty line.
            loop {
                match find_crlf(&buf[pos..]) {
                    Some(0) => {
                        let clean_end = buf.len() == pos + 2;
                        buf.truncate(body_len);
                        return Ok((buf, clean_end));
                    }
                    Some(at) => pos += at + 2,
                    None => {
                        if buf.len() - pos > MAX_HEAD_BYTES {
                            return Err(HttpError::Malformed("trailer too long".into()));
                        }
                        if fill(stream, &mut buf).await? == 0 {
                            return Err(HttpError::Truncated);
                        }
                    }
                }
            }
        }
        // Compared without adding: a hostile size near usize::MAX must not wrap around.
        if size > max_body - body_len {
            return Err(HttpError::TooLarge(max_body));
        }
        while buf.len() < pos + size + 2 {
            if fill(stream, &mut buf).await? == 0 {
                return Err(HttpError::Truncated);
            }
        }
        if &buf[pos + size..pos + size + 2] != b"\r\n" {
            return Err(HttpError::Malformed("chunk not followed by CRLF".into()));
        }
        buf.copy_within(pos..pos + size, body_len);
        body_len += size;
        pos += size + 2;
    }
}

fn find_crlf(bytes: &[u8]) -> Option<usize> {
    bytes.windows(2).position(|w| w == b"\r\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        parse_head(text.as_bytes()).unwrap().expect("complete head")
    }

    #[test]
    fn content_length_frames_the_body_and_keeps_the_connection() {
        let head = head("HTTP/1.1 201 Created\r\ncontent-length: 12\r\n\r\n");
        assert_eq!(head.status, 201);
        assert!(matches!(head.framing, Framing::Length(12)));
        assert!(head.keep_alive);
    }

    #[test]
    fn chunked_wins_over_content_length() {
        let head = head(
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nTransfer-Encoding: gzip, chunked\r\n\r\n",
        );
        assert!(matches!(head.framing, Framing::Chunked));
    }

    #[test]
    fn connection_close_and_http_1_0_are_not_kept() {
        assert!(
            !head("HTTP/1.1 200 OK\r\nConnection: Close\r\nContent-Length: 0\r\n\r\n").keep_alive
        );
        assert!(!head("HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n").keep_alive);
    }

    #[test]
    fn a_body_without_framing_runs_to_the_close() {
        let head = head("HTTP/1.1 200 OK\r\n\r\n");
        assert!(matches!(head.framing, Framing::UntilClose));
        assert!(!head.keep_alive);
    }

    #[test]
    fn no_content_has_no_body_whatever_it_says() {
        assert!(matches!(
            head("HTTP/1.1 204 No Content\r\n\r\n").framing,
            Framing::Length(0)
        ));
    }

    #[test]
    fn retry_after_seconds_are_read() {
        let head =
            head("HTTP/1.1 429 Too Many Requests\r\nRetry-After: 7\r\nContent-Length: 0\r\n\r\n");
        assert_eq!(head.retry_after, Some(Duration::from_secs(7)));
    }

    #[test]
    fn malformed_heads_are_errors_not_guesses() {
        for text in [
            "HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
            "HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
            "SMTP ready\r\n\r\n",
        ] {
            assert!(parse_head(text.as_bytes()).is_err(), "{text:?}");
        }
        let huge = format!("HTTP/1.1 200 OK\r\nX: {}\r\n", "a".repeat(MAX_HEAD_BYTES));
        assert!(parse_head(huge.as_bytes()).is_err());
    }

    #[test]
    fn a_partial_head_waits_for_more() {
        assert!(parse_head(b"HTTP/1.1 200 OK\r\nContent-Le")
            .unwrap()
            .is_none());
    }
}
