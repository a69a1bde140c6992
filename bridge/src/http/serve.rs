//! Serving an axum application over HTTP or HTTPS (rustls), with the node's certificate and
//! the same bounds as the MQTT listeners.
//!
//! Every connection takes a slot of the node's [`ConnectionBudget`] (shared with MQTT), so an
//! idle flood on one port cannot exhaust the descriptors the others need; accept errors back
//! off like MQTT's. A connection must finish its TLS handshake, and each request its headers,
//! within `header_timeout`; a keep-alive connection idle for as long is closed (hyper starts
//! the header timer as soon as it waits for the next request). A write that stalls for
//! `write_timeout` ends the connection, so an event stream or long-poll whose reader stopped
//! reading is dropped, as a stalled MQTT subscriber is.
//!
//! Every request carries the peer address (`ConnectInfo<SocketAddr>`, for the login throttle)
//! and, over TLS, the common name of a verified client certificate (`PeerCertificate`).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::extract::ConnectInfo;
use axum::Router;
use medlink_broker::{ConnectionBudget, Stop};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit};
use tokio::time::Sleep;
use tracing::debug;

use crate::http::auth::PeerCertificate;
use crate::http::waiting;
use crate::http::ApiState;

/// The bounds every HTTP connection of the node lives within.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Connection slots, shared with the MQTT listeners.
    pub budget: ConnectionBudget,
    /// Time for the TLS handshake, for each request's headers, and that a keep-alive
    /// connection may sit idle.
    pub header_timeout: Duration,
    /// How long one write may stall before the connection is dropped.
    pub write_timeout: Duration,
}

impl HttpLimits {
    /// The defaults of the `[limits]` section: 19,000 connections, 10 s, 30 s.
    pub fn new(budget: ConnectionBudget) -> Self {
        HttpLimits {
            budget,
            header_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
        }
    }
}

/// Binds an HTTP port; the error names `what` it was for and the address.
pub async fn bind(addr: SocketAddr, what: &str) -> io::Result<TcpListener> {
    medlink_broker::listen(addr)
        .map_err(|e| io::Error::new(e.kind(), format!("{what}: cannot listen on {addr}: {e}")))
}

/// Serves `app` on `listener` until `shutdown` turns true; with `tls`, every connection must
/// complete a TLS handshake first. With `api`, the node's API, its long-polls and event
/// streams are served without hyper (`waiting.rs`).
pub async fn serve(
    listener: TcpListener,
    app: Router,
    api: Option<Arc<ApiState>>,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: HttpLimits,
    shutdown: watch::Receiver<bool>,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    // One signal for the accept loop and every connection it spawns.
    let stop = Stop::following(shutdown);
    loop {
        let (permit, tcp, peer) = tokio::select! {
            accepted = limits.budget.accept(&listener) => accepted,
            () = stop.stopped() => return,
        };
        let _ = tcp.set_nodelay(true);
        let apps = (app.clone(), api.clone());
        // Plain and TLS connections are tasks of different types, each only as large as its
        // own future: a TLS session is many times what a plain connection holds.
        match &acceptor {
            None => {
                let io = Deadline::new(tcp, limits.write_timeout);
                let who = waiting::Peer {
                    addr: peer,
                    certificate: PeerCertificate(None),
                };
                let header_timeout = limits.header_timeout;
                tokio::spawn(connection(
                    io,
                    who,
                    apps,
                    header_timeout,
                    stop.clone(),
                    permit,
                ));
            }
            Some(acceptor) => {
                let (acceptor, limits, stop) = (acceptor.clone(), limits.clone(), stop.clone());
                tokio::spawn(over_tls(acceptor, tcp, peer, apps, limits, stop, permit));
            }
        }
    }
}

/// A connection on the HTTPS port: its TLS handshake (or a plain-HTTP refusal), then its
/// requests. `slot` is its share of the budget, held until it ends.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn over_tls(
    acceptor: tokio_rustls::TlsAcceptor,
    tcp: TcpStream,
    peer: SocketAddr,
    apps: (Router, Option<Arc<ApiState>>),
    limits: HttpLimits,
    stop: Stop,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        // Boxed, and the stream named only inside the block: what the handshake and the
        // stream's first binding hold is not kept beside the connection's own state.
        let (io, certificate) = {
            let handshake = Box::pin(async {
                if !starts_with_tls(&tcp).await? {
                    // Boxed: its 4 KB buffer would otherwise be part of every connection.
                    Box::pin(refuse_plain_http(tcp)).await;
                    return Ok(None);
                }
                acceptor.accept(tcp).await.map(Some)
            });
            let stream = match tokio::time::timeout(limits.header_timeout, handshake).await {
                Ok(Ok(Some(s))) => s,
                Ok(Ok(None)) => return,
                _ => {
                    debug!(%peer, "https handshake failed");
                    return;
                }
            };
            let certificate = PeerCertificate(
                stream
                    .get_ref()
                    .1
                    .peer_certificates()
                    .and_then(|chain| chain.first())
                    .and_then(medlink_broker::tls::common_name),
            );
            (Deadline::new(stream, limits.write_timeout), certificate)
        };
        let who = waiting::Peer {
            addr: peer,
            certificate,
        };
        Box::pin(connection(io, who, apps, limits.header_timeout, stop, slot)).await;
    }
}

/// Serves one connection's requests until it closes, times out, or the node stops: waiting
/// requests without hyper (see `waiting.rs`), everything from the first other request on with
/// hyper. `slot` (the connection's share of the budget) is held until it ends, however it
/// ends.
///
/// Not an `async fn`: that would hold its arguments twice, beside the locals they move into,
/// and this future is the task of every plain HTTP connection (see `waiting::serve`).
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn connection<S>(
    mut io: Deadline<S>,
    who: waiting::Peer,
    (app, api): (Router, Option<Arc<ApiState>>),
    header_timeout: Duration,
    stop: Stop,
    slot: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    async move {
        let mut read = Vec::new();
        if let Some(api) = &api {
            let served = waiting::serve(&mut io, &who, (&app, api), header_timeout, &stop).await;
            match served {
                waiting::Handover::Hyper(bytes) => read = bytes,
                // `slot` goes with the finished task.
                waiting::Handover::Done => return,
            }
        }
        // Boxed: hyper's connection state is not part of the task of a connection that only
        // waits.
        let hyper = with_hyper(
            waiting::Prefixed::new(read, io),
            who,
            app,
            header_timeout,
            stop,
        );
        Box::pin(hyper).await;
        drop(slot);
    }
}

/// Serves the rest of a connection with hyper.
async fn with_hyper<S>(
    io: waiting::Prefixed<Deadline<S>>,
    who: waiting::Peer,
    app: Router,
    header_timeout: Duration,
    stop: Stop,
) where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let waiting::Peer {
        addr: peer,
        certificate,
    } = who;
    let service = hyper::service::service_fn(move |mut req: hyper::Request<_>| {
        req.extensions_mut().insert(ConnectInfo(peer));
        req.extensions_mut().insert(certificate.clone());
        let app = app.clone();
        async move {
            Ok::<_, Infallible>(
                tower::ServiceExt::oneshot(app, req)
                    .await
                    .unwrap_or_else(|e: Infallible| match e {}),
            )
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(header_timeout);
    let conn = builder.serve_connection(hyper_util::rt::TokioIo::new(io), service);
    tokio::pin!(conn);
    tokio::select! {
        result = conn.as_mut() => {
            if let Err(e) = result {
                debug!(%peer, error = %e, "http connection ended");
            }
        }
        () = stop.stopped() => {
            // Let a request in progress finish its answer, briefly.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(Duration::from_secs(1), conn).await;
        }
    }
}

/// Whether the first byte is a TLS handshake record (0x16); `false` for anything else, such
/// as a plain-text HTTP request sent to the HTTPS port.
async fn starts_with_tls(tcp: &TcpStream) -> io::Result<bool> {
    let mut first = [0u8; 1];
    match tcp.peek(&mut first).await? {
        0 => Err(io::ErrorKind::UnexpectedEof.into()),
        _ => Ok(first[0] == 0x16),
    }
}

/// Answers plain HTTP on the HTTPS port with a 400 that says so, instead of silence; other
/// bytes are only closed.
async fn refuse_plain_http(mut tcp: TcpStream) {
    let mut request = [0u8; 4096];
    let Ok(n) = tcp.read(&mut request).await else {
        return;
    };
    if !request[..n].first().is_some_and(u8::is_ascii_uppercase) {
        return;
    }
    let body = br#"{"code":"tls_required","message":"this port speaks HTTPS: use https://"}"#;
    let head = format!(
        "HTTP/1.1 400 Bad Request\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        body.len()
    );
    let _ = tcp.write_all(head.as_bytes()).await;
    let _ = tcp.write_all(body).await;
    let _ = tcp.shutdown().await;
    // Read what the client still sends, so that closing does not reset the answer away.
    let _ = tokio::time::timeout(Duration::from_secs(1), async {
        while matches!(tcp.read(&mut request).await, Ok(n) if n > 0) {}
    })
    .await;
}

/// A stream whose writes fail with `TimedOut` once one has been pending for `limit`: the peer
/// stopped reading and its kernel buffers are full.
struct Deadline<S> {
    inner: S,
    limit: Duration,
    stalled: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadline<S> {
    fn new(inner: S, limit: Duration) -> Self {
        Deadline {
            inner,
            limit,
            stalled: None,
        }
    }

    /// Passes a ready result through and forgets the stall; a pending one arms (or checks)
    /// the stall timer.
    fn watch<T>(
        &mut self,
        cx: &mut Context<'_>,
        polled: Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        if polled.is_ready() {
            self.stalled = None;
            return polled;
        }
        let limit = self.limit;
        let timer = self
            .stalled
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        match timer.as_mut().poll(cx) {
            Poll::Ready(()) => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "the peer stopped reading (write timeout)",
            ))),
            Poll::Pending => Poll::Pending,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadline<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadline<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write(cx, buf);
        self.watch(cx, polled)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let polled = Pin::new(&mut self.inner).poll_write_vectored(cx, bufs);
        self.watch(cx, polled)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_flush(cx);
        self.watch(cx, polled)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let polled = Pin::new(&mut self.inner).poll_shutdown(cx);
        self.watch(cx, polled)
    }
}
