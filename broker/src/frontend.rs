//! What every connection of one node shares: the front-end's settings, counters, the fan-out
//! table, the way to the dispatcher, and the live sessions. Its own module so that the CONNECT
//! phase (`connect.rs`) and the session (`connection/`) both use it without using each other.

use std::collections::HashMap;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};

use crate::acl::AclPolicy;
use crate::auth::Authenticator;
use crate::events::{ConnId, Inbound};
use crate::fanout::Fanout;
use crate::identity::{Identity, Role};
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
    /// The node's stop, which every connection and listener waits for.
    pub stop: crate::Stop,
    /// Live sessions by (identity, MQTT client id), for session takeover (MQTT 3.1.1
    /// §3.1.4). Keyed by identity too, so nobody can kick another identity's connection by
    /// reusing its client id.
    pub sessions: SessionRegistry,
    /// The dispatcher's runtime, where the connections of child nodes and of the clients in
    /// the credentials file are served once they have logged in (`None`: every connection
    /// stays where it was accepted). See [`FrontEnd::home`].
    pub dispatcher: Option<tokio::runtime::Handle>,
    /// When a refused client certificate was last logged at WARN.
    pub certificate_warned: WarnEvery,
}

impl FrontEnd {
    /// The runtime `who`'s connection moves to after CONNECT, if it moves.
    ///
    /// Child nodes and the systems listed in the credentials file (clinics, hospitals,
    /// services: a few hundred at most, each carrying a steady flow of commands) move to the
    /// dispatcher's thread, so that what they send is read, taken into custody and passed on
    /// by one thread, and what they are sent is written by it, with no hand-off between
    /// threads. Device-token holders (patients' phones, up to 100,000) and admins stay on the
    /// workers: their TLS records and their number would take the dispatcher's time, and
    /// their handshakes ran on the workers anyway. ARCHITECTURE.md, "Threads and tasks".
    pub fn home(&self, who: &Identity) -> Option<tokio::runtime::Handle> {
        let dispatcher = self.dispatcher.as_ref()?;
        let moves = match who.role {
            Role::Node => true,
            Role::Client => self.auth.credentials().role(&who.name) == Some(Role::Client),
            Role::Admin => false,
        };
        moves.then(|| dispatcher.clone())
    }
}

/// A WARN that an operator must see once, but that a stranger's connections must not be able
/// to repeat into every line of the log: at most one per period, the others at DEBUG.
#[derive(Debug)]
pub struct WarnEvery {
    period: Duration,
    start: std::time::Instant,
    /// Milliseconds after `start` of the last WARN, plus one (0: never).
    last: AtomicU64,
}

impl WarnEvery {
    /// At most one per `period`.
    pub fn new(period: Duration) -> Self {
        WarnEvery {
            period,
            start: std::time::Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// Whether this one is logged at WARN (and the next ones of the period are not).
    pub fn due(&self) -> bool {
        use std::sync::atomic::Ordering;
        let now = self.start.elapsed().as_millis() as u64 + 1;
        let last = self.last.load(Ordering::Relaxed);
        let period = self.period.as_millis() as u64;
        (last == 0 || now >= last + period)
            && self
                .last
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }
}
