//! medlink's node logic: everything between the broker front-end and the next hop.
//!
//! - [`envelope`]: the command envelope and its validation.
//! - [`route`]: tree routing (`shortest` / `via_root`).
//! - [`journal`]: the SQLite custody journal ([`journal::segment`]: its row format).
//! - [`frame`]: frames on tier links and in-order admission.
//! - [`links`]: the go-back-N sending side of tier links.
//! - [`dispatcher`]: the single owner of custody, one transaction per round.
//! - [`delivery`]: cursors of the streams to this node's own clients.
//! - [`uplink`]: the child's MQTT connection to its parent.
//! - [`node`]: wires broker, dispatcher and uplink into one running node.
//! - [`audit`]: reading the audit table.
//! - [`http`]: the HTTP API (send by POST, receive by long-poll or SSE, transport decisions).
//! - [`metrics`]: the Prometheus endpoint; [`https`]: serving it and the API over TLS.

pub mod audit;
pub mod datadir;
pub mod delivery;
pub mod dispatcher;
pub mod envelope;
pub mod frame;
pub mod http;
pub mod https;
pub mod journal;
pub mod links;
pub mod metrics;
pub mod node;
pub mod route;
pub mod stats;
pub mod trace;
pub mod uplink;
