//! medlink's node logic: everything between the broker front-end and the next hop.
//!
//! - [`envelope`]: the command envelope and its validation.
//! - [`route`]: tree routing (`shortest` / `via_root`).
//! - [`journal`]: the SQLite custody journal, its typed destinations ([`journal::Dest`]) and
//!   row format.
//! - [`dispatcher`]: the single owner of custody, one transaction per round; it routes, and
//!   hands the rest to the owners below.
//! - [`link`]: the tier link (frames, the go-back-N sending side, the uplink to the parent).
//! - [`clients`]: delivery to this node's own clients, over MQTT and HTTP.
//! - [`services`]: service groups (anycast to one online member).
//! - [`router`]: the dispatcher's hand into the broker's fan-out.
//! - [`node`]: wires broker, dispatcher, uplink and HTTP API into one running node.
//! - [`http`]: the HTTP API (send by POST, receive by long-poll or SSE, transport decisions)
//!   and the HTTP(S) server it and [`metrics`] run on.
//! - [`audit`], [`trace`]: reading the audit table and following one command.
//! - [`datadir`]: the locked, private data directory; [`stats`]: the node's counters.

pub mod audit;
pub mod clients;
pub mod console;
pub mod datadir;
pub mod dispatcher;
pub mod envelope;
pub mod files;
pub mod http;
pub mod journal;
pub mod link;
pub mod metrics;
pub mod node;
pub mod route;
pub mod router;
pub mod services;
pub mod stats;
pub mod trace;
