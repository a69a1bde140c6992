//! What every connection of one node shares: the front-end's settings, counters, the fan-out
//! table, the way to the dispatcher, and the live sessions. Its own module so that the CONNECT
//! phase (`connect.rs`) and the session (`connection/`) both use it without using each other.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use crate::acl::AclPolicy;
use crate::auth::Authenticator;
use crate::events::{ConnId, Inbound};
use crate::fanout::Fanout;
use crate::metrics::BrokerMetrics;
use crate::rate::RateLimiter;

/// Live sessions by identity, then client id, with the switch that ends each one. Grouped by
/// identity so the per-identity connection limit is a map lookup, not a scan of every session.
pub type SessionRegistry = Mutex<HashMap<String, HashMap<String, (ConnId, oneshot::Sender<()>)>>>;

/// State shared by all connections of one node.
pub struct FrontEnd {
    pub node_id: String,
    pub auth: Arc<Authenticator>,
    pub metrics: Arc<BrokerMetrics>,
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    pub rate: Arc<RateLimiter>,
    pub max_connections_per_identity: usize,
    pub acl: AclPolicy,
    pub max_packet_size: usize,
    pub connect_timeout: Duration,
    pub write_timeout: Duration,
    pub fanout: Arc<Fanout>,
    pub inbound: mpsc::Sender<Inbound>,
    pub next_conn: AtomicU64,
    pub shutdown: watch::Receiver<bool>,
    /// Live sessions by (identity, MQTT client id), for session takeover (MQTT 3.1.1
    /// §3.1.4). Keyed by identity too, so nobody can kick another identity's connection by
    /// reusing its client id.
    pub sessions: SessionRegistry,
}
