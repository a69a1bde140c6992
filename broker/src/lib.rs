//! medlink's embedded MQTT broker.
//!
//! rumqttd's router is a fast fan-out engine, but its network front-end has defects that a
//! hospital network cannot live with (a reset during CONNECT can poison a listener, keepalive 0
//! is refused, EMFILE makes the accept loop spin) and it has no topic ACL. This crate therefore
//! owns the network side itself: it accepts TCP, TLS, WebSocket and secure WebSocket
//! connections, decodes MQTT 3.1.1 and 5 with `rumqttd::protocol`, authenticates against
//! argon2id hashes or client certificates ([`Authenticator`]), enforces the [`AclPolicy`] and
//! the per-identity limits, and drives the router through in-process links
//! (`rumqttd::local::LinkBuilder`), exactly as rumqttd's own remote link does.
//!
//! Publishes that carry custody (a client's outbox, a child node's link frames) never enter the
//! router: they are handed to the node logic as [`Inbound`] items and the PUBACK is written only
//! once the node has committed them to its journal. The router carries what the node publishes
//! (inboxes, receipts, frames down to children) to subscribers.

pub mod acl;
pub mod auth;
pub mod codec;
mod connect;
mod connection;
pub mod events;
mod frontend;
pub mod identity;
mod listener;
pub mod metrics;
pub mod rate;
pub mod throttle;
pub mod tls;
pub mod token;
mod transport;

pub use acl::{AclPolicy, PublishClass};
pub use auth::{Authenticator, CredentialSource};
pub use events::{Accept, ConnId, Inbound, Stream};
pub use identity::{Credentials, CredentialsFile, Identity, Role};
pub use listener::{BrokerHandle, ConnectionBudget, FrontEndSettings, ListenerKind, ListenerSpec};
pub use metrics::BrokerMetrics;
pub use rate::RateSettings;

/// Client id reserved for the node's own in-process link; network clients may not use it.
pub const RESERVED_CLIENT_ID: &str = "__medlink_node__";

use std::sync::Arc;

use rumqttd::local::{LinkBuilder, LinkError, LinkRx, LinkTx};
use rumqttd::{Notification, Router, RouterConfig};

/// Creates in-process links to the router. The router's sender type is not nameable outside
/// rumqttd, so the factory closes over it. Errors are rendered to text (rumqttd's error type
/// is large and carries nothing a caller could act on).
pub type LinkFactory =
    Arc<dyn Fn(&str) -> Result<(LinkTx, LinkRx, Notification), String> + Send + Sync>;

/// Settings of the router (fan-out engine) shared by all listeners.
#[derive(Debug, Clone)]
pub struct RouterSettings {
    /// Most connections the router accepts (remote and local).
    pub max_connections: usize,
    /// Bytes per commit-log segment.
    pub max_segment_size: usize,
    /// Segments kept per topic before the oldest is dropped.
    pub max_segment_count: usize,
}

impl Default for RouterSettings {
    fn default() -> Self {
        RouterSettings {
            max_connections: 20_480,
            max_segment_size: 64 * 1024 * 1024,
            max_segment_count: 4,
        }
    }
}

/// Spawns rumqttd's router thread and returns a factory for links into it.
pub fn spawn_router(settings: &RouterSettings) -> LinkFactory {
    let config = RouterConfig {
        max_connections: settings.max_connections,
        max_outgoing_packet_count: 1024,
        max_segment_size: settings.max_segment_size,
        max_segment_count: settings.max_segment_count,
        custom_segment: None,
        initialized_filters: None,
        shared_subscriptions_strategy: Default::default(),
    };
    let router_tx = Router::new(0, config).spawn();
    Arc::new(move |client_id: &str| {
        LinkBuilder::new(client_id, router_tx.clone())
            .clean_session(true)
            .build()
            .map_err(|e: LinkError| e.to_string())
    })
}
