//! Requests that wait: long-polls of the inbox and receipts (`GET /v1/inbox`,
//! `GET /v1/receipts`) and the event stream (`GET /v1/stream`), served without hyper's
//! per-connection buffers.
//!
//! A hospital holds tens of thousands of these open at once, one per patient's phone or
//! browser, and almost all of them wait with nothing to say. Under hyper each cost about
//! 22 KB: an 8 KB read buffer, an 8 KB header write buffer and the connection's state, kept for
//! the whole wait. Here the request head is read into a short-lived buffer and parsed with
//! `httparse`, the request goes to the same handlers and extractors as through the axum
//! [`Router`] (so authentication, validation, errors and metrics are those of every other
//! endpoint), and the response is written straight to the socket. While it waits, a connection holds only the socket, the handler's future and
//! a one-byte read that notices the peer leaving.
//!
//! Anything else (another method or path, a body, HTTP/1.0, a head `httparse` refuses or one
//! too large) is handed to hyper with the bytes read so far, so one keep-alive connection may
//! mix both, and hyper gives the malformed ones its usual answers.

use std::future::Future;
use std::io::Write as _;
use std::net::SocketAddr;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, FromRequestParts, Query};
use axum::http::{HeaderName, HeaderValue, Method, Request, Response, Version};
use axum::response::IntoResponse;
use axum::Router;
use http_body_util::BodyExt;
use medlink_broker::{Stop, Stream};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use super::auth::{Caller, PeerCertificate};
use super::inbox::{self, PollQuery};
use super::ApiState;

/// The paths served here (for `GET` only).
const PATHS: [&str; 3] = ["/v1/inbox", "/v1/receipts", "/v1/stream"];
/// A request head is read into a buffer of this size first, grown up to [`MAX_HEAD`].
const FIRST_READ: usize = 1024;
/// A larger head goes to hyper, which answers it (431) by its own limits.
const MAX_HEAD: usize = 16 * 1024;
/// Headers `httparse` is given room for; more goes to hyper.
const MAX_HEADERS: usize = 64;

/// What the connection does once [`serve`] returns.
pub(super) enum Handover {
    /// Serve the rest with hyper, starting with these bytes already read.
    Hyper(Vec<u8>),
    /// The connection is over (closed by the peer, timed out, failed, or the node stops).
    Done,
}

/// Who is at the other end of the connection.
pub(super) struct Peer {
    /// Its address, for the login throttle.
    pub addr: SocketAddr,
    /// The verified client certificate's name, over TLS.
    pub certificate: PeerCertificate,
}

/// Serves waiting requests on `io` until another kind of request comes (handed to hyper), or
/// the connection ends. `header_timeout` bounds both the wait for a request and reading its
/// head, as hyper's header timer does.
///
/// Every waiting connection holds this future, so it is kept small on purpose. Each step that
/// ends before a wait is boxed, and the functions a wait runs in return `async move` blocks
/// rather than being `async fn`s: an `async fn` keeps its arguments' room beside the locals it
/// moves them into, for its whole life (ARCHITECTURE.md, "Memory per connection").
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub(super) fn serve<'a, S>(
    io: &'a mut S,
    peer: &'a Peer,
    (app, api): (&'a Router, &'a Arc<ApiState>),
    header_timeout: Duration,
    stop: &'a Stop,
) -> impl Future<Output = Handover> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        let mut buf = Vec::new();
        loop {
            let reading = Box::pin(tokio::time::timeout(
                header_timeout,
                read_head(io, &mut buf),
            ));
            let head = tokio::select! {
                head = reading => head,
                () = stop.stopped() => return Handover::Done,
            };
            let (request, close) = match head {
                Ok(Ok(Head::Ours {
                    request,
                    len,
                    close,
                })) => {
                    buf.drain(..len);
                    (request, close)
                }
                Ok(Ok(Head::Other)) => return Handover::Hyper(buf),
                Ok(Ok(Head::Closed)) | Ok(Err(_)) | Err(_) => return Handover::Done,
            };
            // The head's buffer is not kept through the wait unless the peer pipelined more.
            if buf.is_empty() {
                buf = Vec::new();
            }
            let answer = answer(request, peer, app, api);
            let response = tokio::select! {
                response = answer => response,
                () = peer_gone(io, &mut buf) => return Handover::Done,
                () = stop.stopped() => return Handover::Done,
            };
            // The response's parts are rendered, and dropped, outside this future.
            let Ok((head, body, length)) = response_head(response, close) else {
                return Handover::Done;
            };
            let sent = match length {
                Some(n) => Box::pin(whole(io, head, body, n, close)).await,
                None => match Box::pin(write_flush(io, head)).await {
                    Ok(()) => stream_body(io, body, close, &mut buf, stop).await,
                    Err(e) => Err(e),
                },
            };
            if !matches!(sent, Ok(true)) {
                let _ = io.shutdown().await;
                return Handover::Done;
            }
        }
    }
}

/// The future that answers `request`, boxed. Built outside `serve` on purpose: a local that an
/// async function borrows keeps its room in the function's state until its scope ends, and
/// `serve`'s state is what every waiting connection holds. Here the request (about 230 bytes)
/// and its box are gone before the wait begins.
fn answer(
    request: Box<Request<Body>>,
    peer: &Peer,
    app: &Router,
    api: &Arc<ApiState>,
) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
    let mut request = *request;
    request.extensions_mut().insert(ConnectInfo(peer.addr));
    request.extensions_mut().insert(peer.certificate.clone());
    // Both boxed: the task of a connection is as large as its largest state, and it should be
    // sized by what it holds while an event stream waits in `stream_body`, not by a request on
    // its way through the router or a long-poll's wait.
    match long_poll(&request) {
        Some(stream) => {
            let api = api.clone();
            // Built here, so that the request is held by this box, which is gone before the
            // wait, rather than by the future below, which lasts through it.
            let preparing = Box::pin(prepare_poll(api.clone(), request, stream));
            Box::pin(async move {
                let waiting = preparing.await;
                let answer = waiting.await;
                super::count(&api.metrics, answer)
            })
        }
        None => {
            let app = app.clone();
            Box::pin(async move {
                tower::ServiceExt::oneshot(app, request)
                    .await
                    .unwrap_or_else(|e: std::convert::Infallible| match e {})
            })
        }
    }
}

/// Which stream a long-poll reads; `None` for the event stream.
fn long_poll(request: &Request<Body>) -> Option<Stream> {
    match request.uri().path() {
        "/v1/inbox" => Some(Stream::Commands),
        "/v1/receipts" => Some(Stream::Receipts),
        _ => None,
    }
}

/// A long-poll's caller and query, extracted as its handler would (`inbox::inbox`) but
/// without the router, whose layers would stay allocated (about a kilobyte of boxed futures)
/// for the whole wait; then its wait. The event stream needs no such care, as its handler
/// returns at once and only its body waits.
async fn prepare_poll(
    api: Arc<ApiState>,
    request: Request<Body>,
    stream: Stream,
) -> inbox::Waiting {
    let (mut parts, _) = request.into_parts();
    let refused =
        |refused: Response<Body>| -> inbox::Waiting { Box::pin(std::future::ready(refused)) };
    let caller = match Caller::from_request_parts(&mut parts, &api).await {
        Ok(caller) => caller,
        Err(e) => return refused(e.into_response()),
    };
    let query = match Query::<PollQuery>::try_from_uri(&parts.uri) {
        Ok(Query(query)) => query,
        Err(e) => return refused(e.into_response()),
    };
    inbox::read_stream(api, caller, query, stream).unwrap_or_else(|e| refused(e.into_response()))
}

/// A parsed request head.
enum Head {
    /// A waiting request, `len` bytes long, and whether the client asked to close after it.
    Ours {
        request: Box<Request<Body>>,
        len: usize,
        close: bool,
    },
    /// Anything else: hyper's.
    Other,
    /// The peer closed before sending a request.
    Closed,
}

/// Reads until `buf` holds a whole request head (or it is clearly not one of ours).
async fn read_head<S: AsyncRead + Unpin>(io: &mut S, buf: &mut Vec<u8>) -> std::io::Result<Head> {
    loop {
        if !buf.is_empty() {
            match parse(buf) {
                Parsed::Complete(head) => return Ok(head),
                Parsed::Partial if buf.len() < MAX_HEAD => {}
                Parsed::Partial => return Ok(Head::Other),
            }
        }
        if buf.capacity() == buf.len() {
            buf.reserve(if buf.is_empty() {
                FIRST_READ
            } else {
                buf.len()
            });
        }
        if io.read_buf(buf).await? == 0 {
            // A half-sent head is hyper's to answer; nothing at all is a plain close.
            return Ok(if buf.is_empty() {
                Head::Closed
            } else {
                Head::Other
            });
        }
    }
}

enum Parsed {
    Complete(Head),
    Partial,
}

fn parse(buf: &[u8]) -> Parsed {
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut head = httparse::Request::new(&mut headers);
    let len = match head.parse(buf) {
        Ok(httparse::Status::Complete(len)) => len,
        Ok(httparse::Status::Partial) => return Parsed::Partial,
        Err(_) => return Parsed::Complete(Head::Other),
    };
    let path = head.path.unwrap_or_default();
    let ours = head.method == Some("GET")
        && head.version == Some(1)
        && PATHS.contains(&path.split('?').next().unwrap_or_default());
    if !ours {
        return Parsed::Complete(Head::Other);
    }
    let mut request = Request::builder()
        .method(Method::GET)
        .uri(path)
        .version(Version::HTTP_11);
    let mut close = false;
    for h in head.headers.iter() {
        let name = h.name;
        // A body, or a protocol switch, is not a waiting request's.
        let body = name.eq_ignore_ascii_case("transfer-encoding")
            || (name.eq_ignore_ascii_case("content-length") && h.value != b"0")
            || name.eq_ignore_ascii_case("upgrade");
        if body {
            return Parsed::Complete(Head::Other);
        }
        if name.eq_ignore_ascii_case("connection") {
            close |= h.value.split(|b| *b == b',').any(|token| {
                String::from_utf8_lossy(token)
                    .trim()
                    .eq_ignore_ascii_case("close")
            });
        }
        match (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(h.value),
        ) {
            (Ok(name), Ok(value)) => request = request.header(name, value),
            _ => return Parsed::Complete(Head::Other),
        }
    }
    match request.body(Body::empty()) {
        Ok(request) => Parsed::Complete(Head::Ours {
            request: Box::new(request),
            len,
            close,
        }),
        Err(_) => Parsed::Complete(Head::Other),
    }
}

/// Resolves when the peer closes (or its connection fails). Bytes it sends meanwhile (a
/// pipelined request) are kept in `buf` for later, up to [`MAX_HEAD`]; beyond that it stops
/// reading, and the kernel's buffers push back on the peer.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn peer_gone<'a, S: AsyncRead + Unpin>(
    io: &'a mut S,
    buf: &'a mut Vec<u8>,
) -> impl Future<Output = ()> + 'a {
    async move {
        while buf.len() < MAX_HEAD {
            let mut byte = [0u8; 1];
            match io.read(&mut byte).await {
                Ok(0) | Err(_) => return,
                Ok(_) => buf.push(byte[0]),
            }
        }
        std::future::pending::<()>().await
    }
}

/// The status line and headers of `response`, its body, and the body's length if known.
fn response_head(
    response: Response<Body>,
    close: bool,
) -> std::io::Result<(Vec<u8>, Body, Option<u64>)> {
    let (parts, body) = response.into_parts();
    let length = http_body::Body::size_hint(&body).exact();
    let mut head = Vec::with_capacity(256);
    write!(
        head,
        "HTTP/1.1 {} {}\r\ndate: {}\r\n",
        parts.status.as_u16(),
        parts.status.canonical_reason().unwrap_or(""),
        httpdate::fmt_http_date(SystemTime::now())
    )?;
    for (name, value) in &parts.headers {
        head.extend_from_slice(name.as_str().as_bytes());
        head.extend_from_slice(b": ");
        head.extend_from_slice(value.as_bytes());
        head.extend_from_slice(b"\r\n");
    }
    match length {
        Some(n) => write!(head, "content-length: {n}\r\n")?,
        None => head.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        head.extend_from_slice(b"connection: close\r\n");
    }
    head.extend_from_slice(b"\r\n");
    Ok((head, body, length))
}

/// Writes `body` in chunks as its frames come (an event stream), until it ends, the peer
/// leaves or the node stops. Returns whether the connection may serve another request.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn stream_body<'a, S>(
    io: &'a mut S,
    mut body: Body,
    close: bool,
    buf: &'a mut Vec<u8>,
    stop: &'a Stop,
) -> impl Future<Output = std::io::Result<bool>> + 'a
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    async move {
        loop {
            let frame = tokio::select! {
                frame = body.frame() => frame,
                () = peer_gone(io, buf) => return Ok(false),
                () = stop.stopped() => return Ok(false),
            };
            let last = frame.is_none();
            let chunk = match frame {
                None => b"0\r\n\r\n".to_vec(),
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                Some(Ok(frame)) => match frame.into_data() {
                    Ok(data) if !data.is_empty() => chunk(&data),
                    // Trailers (none are sent), or an empty frame.
                    _ => continue,
                },
            };
            // Boxed: inline, the write's state would add 48 bytes to every waiting connection's
            // task; an allocation per event is the cheaper side.
            Box::pin(write_flush(io, chunk)).await?;
            if last {
                return Ok(!close);
            }
        }
    }
}

/// Writes all of `bytes` and flushes.
async fn write_flush<S: AsyncWrite + Unpin>(io: &mut S, bytes: Vec<u8>) -> std::io::Result<()> {
    io.write_all(&bytes).await?;
    io.flush().await
}

/// `data` framed as one chunk of a chunked body.
fn chunk(data: &[u8]) -> Vec<u8> {
    let mut chunk = Vec::with_capacity(data.len() + 16);
    let _ = write!(chunk, "{:x}\r\n", data.len());
    chunk.extend_from_slice(data);
    chunk.extend_from_slice(b"\r\n");
    chunk
}

/// Writes `head` and a body of `length` bytes that is all there already (a long-poll's page,
/// an error); returns whether the connection may serve another request.
async fn whole<S: AsyncWrite + Unpin>(
    io: &mut S,
    mut head: Vec<u8>,
    body: Body,
    length: u64,
    close: bool,
) -> std::io::Result<bool> {
    let data = body
        .collect()
        .await
        .map_err(std::io::Error::other)?
        .to_bytes();
    if data.len() as u64 != length {
        return Err(std::io::Error::other(
            "body length differs from its size hint",
        ));
    }
    head.extend_from_slice(&data);
    write_flush(io, head).await?;
    Ok(!close)
}

/// A stream that first yields `prefix` (bytes already read from `inner`), then `inner`.
pub(super) struct Prefixed<S> {
    prefix: Vec<u8>,
    at: usize,
    inner: S,
}

impl<S> Prefixed<S> {
    /// `inner`, with `prefix` put back in front of what it will read.
    pub fn new(prefix: Vec<u8>, inner: S) -> Self {
        Prefixed {
            prefix,
            at: 0,
            inner,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Prefixed<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        if self.at < self.prefix.len() {
            let n = out.remaining().min(self.prefix.len() - self.at);
            let at = self.at;
            out.put_slice(&self.prefix[at..at + n]);
            self.at += n;
            if self.at == self.prefix.len() {
                // Given back: a long-lived connection does not keep it.
                self.prefix = Vec::new();
                self.at = 0;
            }
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, out)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Prefixed<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(text: &str) -> Head {
        match parse(text.as_bytes()) {
            Parsed::Complete(head) => head,
            Parsed::Partial => panic!("partial: {text:?}"),
        }
    }

    #[test]
    fn waiting_gets_are_ours_and_everything_else_is_hypers() {
        let ours = "GET /v1/inbox?wait=30 HTTP/1.1\r\nhost: x\r\nauthorization: Basic YTpi\r\n\r\n";
        match head(ours) {
            Head::Ours {
                request,
                len,
                close,
            } => {
                assert_eq!(len, ours.len());
                assert!(!close);
                assert_eq!(request.uri(), "/v1/inbox?wait=30");
                assert_eq!(request.headers()["authorization"], "Basic YTpi");
            }
            _ => panic!("a long-poll is ours"),
        }
        assert!(matches!(
            head("GET /v1/stream HTTP/1.1\r\nConnection: keep-alive, Close\r\n\r\n"),
            Head::Ours { close: true, .. }
        ));
        for other in [
            "POST /v1/inbox HTTP/1.1\r\ncontent-length: 2\r\n\r\n{}",
            "GET /v1/inbox HTTP/1.0\r\n\r\n",
            "GET /v1/inboxes HTTP/1.1\r\n\r\n",
            "GET /push HTTP/1.1\r\n\r\n",
            "GET /v1/inbox HTTP/1.1\r\ntransfer-encoding: chunked\r\n\r\n",
            "GET /v1/stream HTTP/1.1\r\nupgrade: websocket\r\n\r\n",
            "GET /v1/inbox HTTP/1.1\r\nbad header\r\n\r\n",
        ] {
            assert!(matches!(head(other), Head::Other), "{other:?}");
        }
        assert!(matches!(
            parse(b"GET /v1/inbox HTTP/1.1\r\nhost"),
            Parsed::Partial
        ));
    }

    #[tokio::test]
    async fn prefixed_reads_the_prefix_then_the_stream() {
        let inner: &[u8] = b" world";
        let mut io = Prefixed::new(b"hello".to_vec(), tokio::io::join(inner, tokio::io::sink()));
        let mut all = String::new();
        io.read_to_string(&mut all).await.unwrap();
        assert_eq!(all, "hello world");
    }
}
