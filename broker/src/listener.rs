//! Accepting connections.
//!
//! Modelled on mini-redis: a semaphore caps live connections, and accept errors (EMFILE above
//! all) back off exponentially instead of spinning and flooding the log, which is what
//! rumqttd's own accept loop does.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tracing::{debug, info, warn};

use crate::acl::AclPolicy;
use crate::auth::Authenticator;
use crate::connection;
use crate::events::Inbound;
use crate::fanout::Fanout;
use crate::frontend::{FrontEnd, WarnEvery};
use crate::metrics::{bump, BrokerMetrics};
use crate::rate::{RateLimiter, RateSettings};
use crate::slot::Slot;
use crate::tls::common_name;
use crate::transport::{Io, Socket, Transport};

/// Which MQTT transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT 3.1.1/5 over TCP (clear text).
    Tcp,
    /// MQTT 3.1.1/5 over WebSocket (clear text).
    Ws,
    /// MQTT 3.1.1/5 over TLS.
    Tls,
    /// MQTT 3.1.1/5 over WebSocket over TLS.
    Wss,
}

impl ListenerKind {
    /// Whether the listener runs TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, ListenerKind::Tls | ListenerKind::Wss)
    }

    /// Whether MQTT is framed in WebSocket messages.
    pub fn is_websocket(self) -> bool {
        matches!(self, ListenerKind::Ws | ListenerKind::Wss)
    }
}

/// One listener to open.
#[derive(Debug, Clone)]
pub struct ListenerSpec {
    /// Transport.
    pub kind: ListenerKind,
    /// Address to bind (port 0 picks a free port).
    pub addr: SocketAddr,
}

/// Settings for the broker front-end.
#[derive(Clone)]
pub struct FrontEndSettings {
    /// This node's dotted id.
    pub node_id: String,
    /// Decides who connections are.
    pub auth: Arc<Authenticator>,
    /// Counters, shared with the node's metrics endpoint.
    pub metrics: Arc<BrokerMetrics>,
    /// Server TLS configuration; required when a listener is `tls` or `wss`.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_size: usize,
    /// Most concurrent connections over all listeners (shared with the node's HTTP ports).
    pub budget: ConnectionBudget,
    /// Most concurrent connections of one identity.
    pub max_connections_per_identity: usize,
    /// Per-identity command rate (shared with the HTTP API).
    pub rate: Arc<RateLimiter>,
    /// How long a new connection may take to complete TLS, WebSocket and CONNECT.
    pub connect_timeout: Duration,
    /// How long a write to a client may stall before the client is dropped as a slow
    /// consumer.
    pub write_timeout: Duration,
    /// The dispatcher's runtime, which serves the connections of child nodes and of the
    /// clients in the credentials file after CONNECT; `None` keeps every connection where it
    /// was accepted.
    pub dispatcher: Option<tokio::runtime::Handle>,
}

impl FrontEndSettings {
    /// Settings with the usual timeouts and limits.
    pub fn new(node_id: &str, auth: Arc<Authenticator>, metrics: Arc<BrokerMetrics>) -> Self {
        FrontEndSettings {
            node_id: node_id.to_string(),
            auth,
            metrics,
            tls: None,
            max_packet_size: 8 * 1024 * 1024,
            budget: ConnectionBudget::new(19_000),
            max_connections_per_identity: 64,
            rate: Arc::new(RateLimiter::new(RateSettings {
                per_second: 0.0,
                burst: 0.0,
            })),
            connect_timeout: Duration::from_secs(10),
            write_timeout: Duration::from_secs(30),
            dispatcher: None,
        }
    }
}

/// How many connections may wait for `accept` in the kernel. mio's default of 128 made a
/// reconnect storm of thousands of devices lose SYNs, and each lost SYN costs the device a
/// 1 s, then 3 s retry; the kernel caps this at `net.core.somaxconn` (4,096 on current Linux).
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds and listens on `addr` with [`LISTEN_BACKLOG`] (and `SO_REUSEADDR`, as
/// `TcpListener::bind` does), so that a restarted node can take its port back at once.
pub fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// The running broker front-end.
pub struct BrokerHandle {
    /// Bound addresses, in the order of the specs.
    pub bound: Vec<(ListenerKind, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BrokerHandle {
    /// Binds every listener, in the order of the specs, without accepting yet (so that a
    /// port in use is found before anything else starts).
    pub async fn bind(specs: &[ListenerSpec]) -> std::io::Result<Vec<(ListenerKind, TcpListener)>> {
        let mut bound = Vec::with_capacity(specs.len());
        for spec in specs {
            let listener = listen(spec.addr).map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", spec.addr))
            })?;
            bound.push((spec.kind, listener));
        }
        Ok(bound)
    }

    /// Starts accepting on listeners from [`BrokerHandle::bind`]. Inbound items go to
    /// `inbound`.
    pub async fn start(
        listeners: Vec<(ListenerKind, TcpListener)>,
        settings: FrontEndSettings,
        fanout: Arc<Fanout>,
        inbound: mpsc::Sender<Inbound>,
    ) -> std::io::Result<BrokerHandle> {
        if listeners.iter().any(|(kind, _)| kind.is_tls()) && settings.tls.is_none() {
            return Err(std::io::Error::new(
                std::io::ErrorKind::InvalidInput,
                "a tls or wss listener needs a TLS certificate and key",
            ));
        }
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(FrontEnd {
            acl: AclPolicy::new(&settings.node_id),
            node_id: settings.node_id.clone(),
            auth: settings.auth.clone(),
            metrics: settings.metrics.clone(),
            tls: settings.tls.clone().map(tokio_rustls::TlsAcceptor::from),
            rate: settings.rate.clone(),
            max_connections_per_identity: settings.max_connections_per_identity,
            max_packet_size: settings.max_packet_size,
            connect_timeout: settings.connect_timeout,
            write_timeout: settings.write_timeout,
            dispatcher: settings.dispatcher.clone(),
            fanout,
            inbound,
            next_conn: AtomicU64::new(1),
            stop: crate::Stop::following(shutdown_rx),
            sessions: Default::default(),
            certificate_warned: WarnEvery::new(Duration::from_secs(60)),
        });
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for (kind, listener) in listeners {
            let addr = listener.local_addr()?;
            info!(?kind, %addr, "listening");
            bound.push((kind, addr));
            tasks.push(tokio::spawn(accept_loop(
                listener,
                kind,
                ctx.clone(),
                settings.budget.clone(),
            )));
        }
        Ok(BrokerHandle {
            bound,
            shutdown,
            tasks,
        })
    }

    /// Stops accepting and closes every connection.
    pub async fn stop(self) {
        let _ = self.shutdown.send(true);
        for t in self.tasks {
            t.abort();
        }
    }
}

async fn accept_loop(
    listener: TcpListener,
    kind: ListenerKind,
    ctx: Arc<FrontEnd>,
    budget: ConnectionBudget,
) {
    loop {
        let (permit, stream, peer) = tokio::select! {
            a = budget.accept(&listener) => a,
            () = ctx.stop.stopped() => return,
        };
        tokio::spawn(serve(ctx.clone(), kind, stream, peer, permit));
    }
}

/// The node's connection budget: one permit per open connection over every MQTT listener, the
/// HTTP API and the metrics endpoint, so that no port, however it is abused, can take the
/// descriptors the others need. When it is spent, listeners stop accepting and new
/// connections wait in the kernel's backlog.
#[derive(Debug, Clone)]
pub struct ConnectionBudget(Arc<Semaphore>);

impl ConnectionBudget {
    /// A budget of `max` concurrent connections.
    pub fn new(max: usize) -> Self {
        ConnectionBudget(Arc::new(Semaphore::new(max)))
    }

    /// Connections that may still open.
    pub fn available(&self) -> usize {
        self.0.available_permits()
    }

    /// Waits for a free slot, then accepts one connection; the permit is the slot, released
    /// when dropped. Accept errors (EMFILE above all) back off 1 ms, 2 ms, ... up to 1 s,
    /// logging once per backoff step rather than once per failure.
    pub async fn accept(
        &self,
        listener: &TcpListener,
    ) -> (OwnedSemaphorePermit, TcpStream, SocketAddr) {
        let permit = self
            .0
            .clone()
            .acquire_owned()
            .await
            .expect("the connection budget is never closed");
        let mut backoff = Duration::from_millis(1);
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => return (permit, stream, peer),
                Err(e) => {
                    if backoff >= Duration::from_millis(64) {
                        warn!(error = %e, backoff_ms = backoff.as_millis() as u64, "accept failed");
                    }
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(Duration::from_secs(1));
                }
            }
        }
    }
}

/// One connection: its handshakes, then the MQTT session. `permit` (its slot of the budget)
/// is held until it ends, however it ends.
///
/// Not an `async fn`, which would keep its arguments' room beside the locals it moves them
/// into; this future is the task of every MQTT connection (ARCHITECTURE.md, "Memory per
/// connection").
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn serve(
    ctx: Arc<FrontEnd>,
    kind: ListenerKind,
    stream: TcpStream,
    peer: SocketAddr,
    permit: OwnedSemaphorePermit,
) -> impl Future<Output = ()> + Send + 'static {
    async move {
        let _ = stream.set_nodelay(true);
        bump(&ctx.metrics.connections_total);
        // Boxed, as `connection::run` boxes its one-off steps: the TLS handshake's state is
        // freed once it is done instead of staying in every connection's task.
        let opened = tokio::time::timeout(ctx.connect_timeout, Box::pin(open(&ctx, kind, stream)));
        let (transport, certificate) = match opened.await {
            Ok(Ok(v)) => v,
            Ok(Err(e)) if refused_certificate(&e) && ctx.certificate_warned.due() => {
                warn!(%peer, ?kind, error = %e, "TLS handshake failed: the client's certificate was refused (not issued by [tls] client_ca, or expired); more within a minute are logged at debug");
                return;
            }
            Ok(Err(e)) => {
                debug!(%peer, ?kind, error = %e, "handshake failed");
                return;
            }
            Err(_) => {
                bump(&ctx.metrics.handshake_timeouts);
                debug!(%peer, ?kind, "handshake timed out");
                return;
            }
        };
        let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
        let slot = Slot::open(permit, ctx.metrics.clone());
        connection::run(ctx, transport, peer, conn, certificate, slot).await;
    }
}

/// Whether a handshake failed because this node refused the client's certificate.
fn refused_certificate(e: &std::io::Error) -> bool {
    e.get_ref()
        .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        .is_some_and(|e| matches!(e, rustls::Error::InvalidCertificate(_)))
}

/// Runs the TLS and WebSocket handshakes the listener kind asks for; returns the transport
/// and the common name of a verified client certificate, if one was presented.
async fn open(
    ctx: &FrontEnd,
    kind: ListenerKind,
    stream: TcpStream,
) -> std::io::Result<(Transport, Option<String>)> {
    let (io, certificate): (Box<dyn Io>, Option<String>) = if kind.is_tls() {
        let acceptor = ctx
            .tls
            .as_ref()
            .expect("TLS listeners are only started with a TLS configuration");
        let tls = acceptor
            .accept(Socket::new(stream))
            .await
            .inspect_err(|e| {
                // A peer that closes before saying anything is a port probe, not a failed
                // handshake (load balancers do this all day).
                if e.kind() != std::io::ErrorKind::UnexpectedEof {
                    bump(&ctx.metrics.tls_failures);
                }
            })?;
        let cn = tls
            .get_ref()
            .1
            .peer_certificates()
            .and_then(|chain| chain.first())
            .and_then(common_name);
        (Box::new(tls), cn)
    } else {
        (Box::new(Socket::new(stream)), None)
    };
    let transport = if kind.is_websocket() {
        Transport::websocket(io).await?
    } else {
        Transport::Stream(io)
    };
    Ok((transport, certificate))
}
