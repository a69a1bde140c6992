//! The child's connection to its parent.
//!
//! Firewalls let sites dial out only, so the child always dials. This task tries the parent's
//! addresses in turn with jittered exponential backoff and moves frames: what the dispatcher
//! hands it goes up, what comes down goes to the dispatcher. Over MQTT (rumqttc) the frames
//! travel on `link/<me>/up` and `link/<me>/down`; over HTTP see `uplink_http.rs`. Listing an
//! MQTT address first and an HTTP one after it gives the fallback: when MQTT is unreachable
//! the link moves to HTTP within seconds, and back as soon as MQTT answers again. The task
//! keeps no custody of its own — a frame lost with a dying connection is resent by the
//! dispatcher's go-back-N window.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use medlink_broker::acl::{link_down_topic, link_up_topic};
use rand::Rng;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

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
    },
    /// The connection ended.
    Disconnected,
    /// A frame from the parent.
    Frame(Bytes),
}

/// The dispatcher's handle on the uplink task.
#[derive(Debug, Clone)]
pub struct UplinkHandle {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    reconnect: mpsc::UnboundedSender<()>,
}

impl UplinkHandle {
    /// Queues a frame for the parent (dropped if the link is down; the window resends).
    pub fn send(&self, frame: Vec<u8>) {
        let _ = self.frames.send(frame);
    }

    /// Drops the current connection and dials again (used when the link stalls).
    pub fn reconnect(&self) {
        let _ = self.reconnect.send(());
    }
}

/// Starts the uplink task.
pub fn spawn(
    cfg: UplinkConfig,
    events: mpsc::Sender<ParentEvent>,
    shutdown: watch::Receiver<bool>,
) -> (UplinkHandle, tokio::task::JoinHandle<()>) {
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let (reconnect_tx, reconnect_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(run(cfg, events, frames_rx, reconnect_rx, shutdown));
    (
        UplinkHandle {
            frames: frames_tx,
            reconnect: reconnect_tx,
        },
        task,
    )
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

fn options(cfg: &UplinkConfig, addr: &ParentAddr) -> MqttOptions {
    let tls = || {
        TlsConfiguration::Rustls(
            cfg.tls
                .clone()
                .expect("configuration loading requires a CA for mqtts/wss parents"),
        )
    };
    let (mut opts, transport) = match addr {
        ParentAddr::Tcp { host, port } => (MqttOptions::new(&cfg.node_id, host, *port), None),
        ParentAddr::Ws { url, port } => (
            MqttOptions::new(&cfg.node_id, url, *port),
            Some(Transport::Ws),
        ),
        ParentAddr::Tls { host, port } => (
            MqttOptions::new(&cfg.node_id, host, *port),
            Some(Transport::tls_with_config(tls())),
        ),
        ParentAddr::Wss { url, port } => (
            MqttOptions::new(&cfg.node_id, url, *port),
            Some(Transport::wss_with_config(tls())),
        ),
        ParentAddr::Http { .. } => unreachable!("HTTP addresses run uplink_http sessions"),
    };
    if let Some(t) = transport {
        opts.set_transport(t);
    }
    opts.set_credentials(&cfg.node_id, cfg.password.as_deref().unwrap_or(""))
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true)
        .set_max_packet_size(cfg.max_packet, cfg.max_packet)
        .set_inflight(256);
    opts
}

/// The uplink's channels, lent to one session at a time.
pub(crate) struct Channels<'a> {
    pub(crate) events: &'a mpsc::Sender<ParentEvent>,
    pub(crate) frames: &'a mut mpsc::UnboundedReceiver<Vec<u8>>,
    pub(crate) reconnect: &'a mut mpsc::UnboundedReceiver<()>,
    pub(crate) shutdown: &'a mut watch::Receiver<bool>,
}

/// How a session ended.
pub(crate) enum Ended {
    /// The node is stopping (or the dispatcher is gone).
    Shutdown,
    /// The connection failed or was lost; `connected` if it had been up.
    Lost { connected: bool, reason: String },
    /// On the HTTP fallback, the preferred MQTT address answers again.
    Preferred,
}

async fn run(
    cfg: UplinkConfig,
    events: mpsc::Sender<ParentEvent>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    mut reconnect: mpsc::UnboundedReceiver<()>,
    mut shutdown: watch::Receiver<bool>,
) {
    let n = cfg.parents.len();
    let (mut index, told_http) = first_address(&cfg).await;
    let mut failures = 0u32;
    let mut mqtt_failed = false;
    loop {
        let addr = &cfg.parents[index % n];
        // While on HTTP, an MQTT address listed before it is where the link wants to be,
        // unless the parent said this node belongs on HTTP.
        let preferred = match addr {
            ParentAddr::Http { .. } if !told_http => {
                cfg.parents[..index % n].iter().find(|a| !a.is_http())
            }
            _ => None,
        };
        if addr.is_http() && mqtt_failed {
            warn!(parent = %addr, "MQTT to the parent is unreachable; falling back to HTTP");
        }
        debug!(parent = %addr, "dialling parent");
        let mut ch = Channels {
            events: &events,
            frames: &mut frames,
            reconnect: &mut reconnect,
            shutdown: &mut shutdown,
        };
        let ended = match addr {
            ParentAddr::Http { url } => {
                crate::uplink_http::session(&cfg, url, preferred, &mut ch).await
            }
            _ => mqtt_session(&cfg, addr, &mut ch).await,
        };
        match ended {
            Ended::Shutdown => return,
            Ended::Preferred => {
                info!(parent = %addr, "MQTT to the parent answers again; leaving the HTTP fallback");
                if events.send(ParentEvent::Disconnected).await.is_err() {
                    return;
                }
                index = cfg
                    .parents
                    .iter()
                    .position(|a| Some(a) == preferred)
                    .unwrap_or(0);
                mqtt_failed = false;
                failures = 0;
                while frames.try_recv().is_ok() {}
                continue;
            }
            Ended::Lost {
                connected: true,
                reason,
            } => {
                warn!(parent = %addr, reason = %reason, "parent link lost");
                if events.send(ParentEvent::Disconnected).await.is_err() {
                    return;
                }
                failures = 0;
            }
            Ended::Lost {
                connected: false,
                reason,
            } => {
                debug!(parent = %addr, reason = %reason, "parent not reachable");
                mqtt_failed = !addr.is_http();
                // Fail over to the next address after a failed attempt.
                index += 1;
            }
        }
        // Frames queued for the dead connection are stale; the window resends.
        while frames.try_recv().is_ok() {}
        failures = failures.saturating_add(1);
        // Trying the next address of the list comes quickly; a whole round of failures backs off.
        let wait = if !index.is_multiple_of(n) && failures < n as u32 {
            Duration::from_millis(50)
        } else {
            backoff(failures, cfg.backoff_cap)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Where to start: the first address, unless the parent has an HTTP address and says (in
/// `GET /v1/transport`) that this node should use another transport, which is then tried
/// first if the list has an address of that kind. Also whether the parent chose HTTP.
async fn first_address(cfg: &UplinkConfig) -> (usize, bool) {
    let Some(ParentAddr::Http { url }) = cfg.parents.iter().find(|a| a.is_http()) else {
        return (0, false);
    };
    let Some(choice) = crate::uplink_http::ask_transport(cfg, url).await else {
        return (0, false);
    };
    let wanted = |a: &ParentAddr| match choice.as_str() {
        "http" => a.is_http(),
        "ws" => matches!(a, ParentAddr::Ws { .. } | ParentAddr::Wss { .. }),
        _ => matches!(a, ParentAddr::Tcp { .. } | ParentAddr::Tls { .. }),
    };
    let index = cfg.parents.iter().position(wanted).unwrap_or(0);
    info!(transport = %choice, parent = %cfg.parents[index], "the parent chose the link transport");
    (index, choice == "http")
}

/// One MQTT session with the parent at `addr`.
async fn mqtt_session(cfg: &UplinkConfig, addr: &ParentAddr, ch: &mut Channels<'_>) -> Ended {
    let up_topic = link_up_topic(&cfg.node_id);
    let down_topic = link_down_topic(&cfg.node_id);
    let (client, mut eventloop) = AsyncClient::new(options(cfg, addr), 1024);
    // Acks and pings are small writes; Nagle would hold them for a delayed ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    // Queued now, sent right after CONNACK.
    let _ = client.try_subscribe(&down_topic, QoS::AtLeastOnce);
    // `EventLoop::poll` must never be dropped half-way, yet `select!` drops whichever branch
    // loses. rumqttc gives a publish its packet id and records it in flight, or decodes a
    // publish from the parent, and only then writes the publish (or its PUBACK); that write
    // first waits for the socket to take the rest of the previous large frame. A poll dropped
    // there loses the packet: a lost publish keeps its id outstanding until the ids come round
    // ("Collision on packet id"), after which rumqttc sends nothing until the stall timer
    // reconnects; a lost PUBACK makes the parent's router drop the link (out-of-order ack).
    // Kept in a stream, the poll in progress survives the select: `next()` is cancel-safe.
    let mut events = Box::pin(futures_util::stream::unfold(
        eventloop,
        |mut eventloop| async move {
            let event = eventloop.poll().await;
            Some((event, eventloop))
        },
    ));
    let mut subscribed = false;
    loop {
        tokio::select! {
            Some(ev) = events.next() => match ev {
                Ok(Event::Incoming(Packet::SubAck(ack))) if !subscribed => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        return Ended::Lost {
                            connected: false,
                            reason: "the parent refused the link subscription (is this node a known child there?)".into(),
                        };
                    }
                    subscribed = true;
                    info!(parent = %addr, "connected to parent");
                    if ch.events.send(ParentEvent::Connected { http: false }).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if ch.events.send(ParentEvent::Frame(p.payload)).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(_) => {}
                Err(e) => return Ended::Lost { connected: subscribed, reason: e.to_string() },
            },
            Some(frame) = ch.frames.recv(), if subscribed => {
                if let Err(e) = client.try_publish(&up_topic, QoS::AtLeastOnce, false, frame) {
                    debug!(error = %e, "frame not queued; the window will resend it");
                }
            }
            Some(()) = ch.reconnect.recv() => {
                return Ended::Lost { connected: subscribed, reason: "link stalled".into() };
            }
            _ = ch.shutdown.changed() => {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
                return Ended::Shutdown;
            }
        }
    }
}

/// Full-jitter exponential backoff: uniform in [base/2, base], base = 100 ms · 2^n, capped.
fn backoff(failures: u32, cap: Duration) -> Duration {
    let base = Duration::from_millis(100)
        .saturating_mul(1u32 << failures.min(16))
        .min(cap);
    let half = base / 2;
    half + Duration::from_millis(rand::thread_rng().gen_range(0..=half.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(3);
        for n in 0..40 {
            let b = backoff(n, cap);
            assert!(b <= cap, "{b:?}");
            assert!(b >= Duration::from_millis(50), "{b:?}");
        }
        assert!(backoff(30, cap) >= cap / 2);
    }
}
