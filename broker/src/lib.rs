//! medlink's embedded MQTT broker.
//!
//! rumqttd's network front-end has defects that a hospital network cannot live with (a reset
//! during CONNECT can poison a listener, keepalive 0 is refused, EMFILE makes the accept loop
//! spin), no topic ACL, and its router costs tens of KB per connection. This crate therefore
//! keeps only rumqttd's codec and owns the rest: it accepts TCP, TLS, WebSocket and secure WebSocket
//! connections, decodes MQTT 3.1.1 and 5 with `rumqttd::protocol`, authenticates against
//! argon2id hashes or client certificates ([`Authenticator`]), enforces the [`AclPolicy`] and
//! the per-identity limits, and delivers to subscribers itself ([`Fanout`]): rumqttd's router
//! is not used (ARCHITECTURE.md §5 says why).
//!
//! Publishes that carry custody (a client's outbox, a child node's link frames) are handed to
//! the node logic as [`Inbound`] items and the PUBACK is written only once the node has
//! committed them to its journal. What the node publishes (inboxes, receipts, frames down to
//! children) reaches subscribers through [`Fanout::publish`].

pub mod acl;
pub mod auth;
pub mod codec;
mod connect;
mod connection;
pub mod events;
pub mod fanout;
mod frontend;
pub mod identity;
mod listener;
pub mod metrics;
pub mod rate;
mod slot;
mod stop;
pub mod throttle;
pub mod tls;
pub mod token;
mod transport;

pub use acl::{AclPolicy, PublishClass};
pub use auth::{Authenticator, CredentialSource};
pub use events::{Accept, ConnId, Inbound, Stream};
pub use fanout::Fanout;
pub use identity::{Credentials, CredentialsFile, Identity, Role};
pub use listener::{
    listen, BrokerHandle, ConnectionBudget, FrontEndSettings, ListenerKind, ListenerSpec,
};
pub use metrics::BrokerMetrics;
pub use rate::RateSettings;
pub use stop::{Stop, Stopped};
