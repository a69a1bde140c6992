//! Accepting connections.
//!
//! Modelled on mini-redis: a semaphore caps live connections, and accept errors (EMFILE above
//! all) back off exponentially instead of spinning and flooding the log, which is what
//! rumqttd's own accept loop does.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch, Semaphore};
use tracing::{debug, info, warn};

use crate::acl::AclPolicy;
use crate::connection::{self, FrontEnd};
use crate::events::Inbound;
use crate::identity::Credentials;
use crate::transport::Transport;
use crate::LinkFactory;

/// Which MQTT transport a listener speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ListenerKind {
    /// MQTT 3.1.1/5 over TCP.
    Tcp,
    /// MQTT 3.1.1/5 over WebSocket.
    Ws,
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
    /// Known identities.
    pub credentials: Credentials,
    /// Largest MQTT packet accepted, bytes.
    pub max_packet_size: usize,
    /// Most concurrent connections over all listeners.
    pub max_connections: usize,
    /// How long a new connection may take to send CONNECT.
    pub connect_timeout: Duration,
}

/// The running broker front-end.
pub struct BrokerHandle {
    /// Bound addresses, in the order of the specs.
    pub bound: Vec<(ListenerKind, SocketAddr)>,
    shutdown: watch::Sender<bool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl BrokerHandle {
    /// Binds every listener and starts accepting. Inbound items go to `inbound`.
    pub async fn start(
        specs: &[ListenerSpec],
        settings: FrontEndSettings,
        links: LinkFactory,
        inbound: mpsc::Sender<Inbound>,
    ) -> std::io::Result<BrokerHandle> {
        let (shutdown, shutdown_rx) = watch::channel(false);
        let ctx = Arc::new(FrontEnd {
            acl: AclPolicy::new(&settings.node_id),
            node_id: settings.node_id.clone(),
            credentials: settings.credentials.clone(),
            max_packet_size: settings.max_packet_size,
            connect_timeout: settings.connect_timeout,
            links,
            inbound,
            next_conn: AtomicU64::new(1),
            shutdown: shutdown_rx,
            sessions: Default::default(),
        });
        let limit = Arc::new(Semaphore::new(settings.max_connections));
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        for spec in specs {
            let listener = TcpListener::bind(spec.addr).await.map_err(|e| {
                std::io::Error::new(e.kind(), format!("cannot listen on {}: {e}", spec.addr))
            })?;
            let addr = listener.local_addr()?;
            info!(kind = ?spec.kind, %addr, "listening");
            bound.push((spec.kind, addr));
            tasks.push(tokio::spawn(accept_loop(
                listener,
                spec.kind,
                ctx.clone(),
                limit.clone(),
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
    limit: Arc<Semaphore>,
) {
    let mut shutdown = ctx.shutdown.clone();
    loop {
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => return,
            },
            _ = shutdown.changed() => return,
        };
        let (stream, peer) = tokio::select! {
            a = accept_with_backoff(&listener) => a,
            _ = shutdown.changed() => return,
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            serve(ctx, kind, stream, peer).await;
            drop(permit);
        });
    }
}

/// Accepts one connection; on error waits 1 ms, 2 ms, ... up to 1 s between attempts, logging
/// once per backoff step rather than once per failure.
async fn accept_with_backoff(listener: &TcpListener) -> (TcpStream, SocketAddr) {
    let mut backoff = Duration::from_millis(1);
    loop {
        match listener.accept().await {
            Ok(accepted) => return accepted,
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

async fn serve(ctx: Arc<FrontEnd>, kind: ListenerKind, stream: TcpStream, peer: SocketAddr) {
    let _ = stream.set_nodelay(true);
    let transport = match kind {
        ListenerKind::Tcp => Transport::Tcp(stream),
        ListenerKind::Ws => {
            match tokio::time::timeout(ctx.connect_timeout, Transport::websocket(stream)).await {
                Ok(Ok(t)) => t,
                Ok(Err(e)) => {
                    debug!(%peer, error = %e, "websocket handshake failed");
                    return;
                }
                Err(_) => {
                    debug!(%peer, "websocket handshake timed out");
                    return;
                }
            }
        }
    };
    let conn = ctx.next_conn.fetch_add(1, Ordering::Relaxed);
    connection::run(ctx, transport, peer, conn).await;
}
