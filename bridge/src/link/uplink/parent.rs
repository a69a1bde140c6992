//! What the uplink's sessions share: the parent's addresses, the uplink's settings, the events
//! it gives the dispatcher, the channels lent to a session, and how a session ended.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use medlink_wire::Transport;
use tokio::sync::{mpsc, watch};

use super::health::{Cause, Health};

/// How to reach one address of the parent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ParentAddr {
    /// MQTT over TCP.
    Tcp {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// MQTT over WebSocket.
    Ws {
        /// Full URL, e.g. `ws://city.example:8083/mqtt`.
        url: String,
        /// Port (rumqttc wants it separately).
        port: u16,
    },
    /// MQTT over TLS; the parent's certificate must name `host`.
    Tls {
        /// Host name or IP.
        host: String,
        /// Port.
        port: u16,
    },
    /// MQTT over WebSocket over TLS.
    Wss {
        /// Full URL, e.g. `wss://city.example:8084/mqtt`.
        url: String,
        /// Port.
        port: u16,
    },
    /// The parent's HTTP API, e.g. `https://city.example:8443`.
    Http {
        /// Base URL.
        url: String,
    },
}

impl ParentAddr {
    /// Whether this address runs TLS.
    pub fn is_tls(&self) -> bool {
        match self {
            ParentAddr::Tls { .. } | ParentAddr::Wss { .. } => true,
            ParentAddr::Http { url } => url.starts_with("https:"),
            _ => false,
        }
    }

    /// Whether this is an HTTP address.
    pub fn is_http(&self) -> bool {
        matches!(self, ParentAddr::Http { .. })
    }

    /// The transport this address speaks (what `GET /v1/transport` names).
    pub fn transport(&self) -> Transport {
        match self {
            ParentAddr::Tcp { .. } | ParentAddr::Tls { .. } => Transport::Mqtt,
            ParentAddr::Ws { .. } | ParentAddr::Wss { .. } => Transport::Ws,
            ParentAddr::Http { .. } => Transport::Http,
        }
    }

    /// `host:port` to probe with a TCP connect.
    pub fn socket_target(&self) -> Option<String> {
        match self {
            ParentAddr::Tcp { host, port } | ParentAddr::Tls { host, port } => {
                Some(format!("{host}:{port}"))
            }
            ParentAddr::Ws { url, .. } | ParentAddr::Wss { url, .. } | ParentAddr::Http { url } => {
                let u = url::Url::parse(url).ok()?;
                let port = u.port_or_known_default().or(match self {
                    ParentAddr::Ws { port, .. } | ParentAddr::Wss { port, .. } => Some(*port),
                    _ => None,
                })?;
                Some(format!("{}:{port}", u.host_str()?))
            }
        }
    }
}

impl std::fmt::Display for ParentAddr {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ParentAddr::Tcp { host, port } => write!(f, "mqtt://{host}:{port}"),
            ParentAddr::Tls { host, port } => write!(f, "mqtts://{host}:{port}"),
            ParentAddr::Ws { url, .. } | ParentAddr::Wss { url, .. } | ParentAddr::Http { url } => {
                write!(f, "{url}")
            }
        }
    }
}

/// Settings of the uplink.
#[derive(Clone)]
pub struct UplinkConfig {
    /// This node's id (also its identity at the parent).
    pub node_id: String,
    /// Password of that identity at the parent; `None` when the link authenticates with a
    /// client certificate.
    pub password: Option<String>,
    /// TLS client configuration (trusted CA, optional client certificate) for `mqtts`/`wss`.
    pub tls: Option<Arc<rustls::ClientConfig>>,
    /// Parent addresses, tried in order.
    pub parents: Vec<ParentAddr>,
    /// Longest wait between attempts.
    pub backoff_cap: Duration,
    /// Largest frame, bytes.
    pub max_packet: usize,
}

/// What the uplink tells the dispatcher.
#[derive(Debug)]
pub enum ParentEvent {
    /// Connected (and subscribed): frames can flow; `http` tells over which transport.
    Connected {
        /// The link runs over HTTP.
        http: bool,
        /// How long the link had been down, when this ends an outage.
        down_for: Option<Duration>,
    },
    /// The connection ended.
    Disconnected,
    /// A frame from the parent.
    Frame(Bytes),
}

impl std::fmt::Debug for UplinkConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never prints the password.
        f.debug_struct("UplinkConfig")
            .field("node_id", &self.node_id)
            .field("password", &self.password.as_ref().map(|_| "<set>"))
            .field("tls", &self.tls.is_some())
            .field("parents", &self.parents)
            .finish_non_exhaustive()
    }
}

/// The uplink's channels, lent to one session at a time.
pub(crate) struct Channels<'a> {
    pub(crate) events: &'a mpsc::Sender<ParentEvent>,
    pub(crate) frames: &'a mut mpsc::UnboundedReceiver<Vec<u8>>,
    pub(crate) reconnect: &'a mut mpsc::UnboundedReceiver<()>,
    pub(crate) shutdown: &'a mut watch::Receiver<bool>,
    /// The link's health, told when a session is up.
    pub(crate) health: &'a mut Health,
}

impl Channels<'_> {
    /// Tells the health and the dispatcher that the link is up (over HTTP or not); false when
    /// the dispatcher is gone (the node is stopping).
    pub(crate) async fn connected(&mut self, http: bool) -> bool {
        let down_for = self.health.up();
        self.events
            .send(ParentEvent::Connected { http, down_for })
            .await
            .is_ok()
    }
}

/// How a session ended.
pub(crate) enum Ended {
    /// The node is stopping (or the dispatcher is gone).
    Shutdown,
    /// The connection failed or was lost; `connected` if it had been up.
    Lost { connected: bool, reason: Cause },
    /// On the HTTP fallback, the preferred MQTT address answers again.
    Preferred,
}
