//! The dispatcher's hand into rumqttd's router: every publish to a client's inbox or a
//! child's down topic goes through here, after the round that queued it has committed.

use bytes::Bytes;
use rumqttd::local::LinkTx;
use tracing::error;

use crate::journal::{Journal, Stale};

/// One sending pass after a round's commit: what the link and client owners read from,
/// publish through, and report expired envelopes to.
pub struct SendPass<'a> {
    /// The journal, read only.
    pub journal: &'a Journal,
    /// Where publishes go.
    pub router: &'a mut Router,
    /// The pass's time, Unix ms.
    pub now: u64,
    /// Envelopes found expired while reading, dropped by the dispatcher afterwards.
    pub stale: Vec<Stale>,
}

/// The dispatcher's connection to the router.
pub struct Router(LinkTx);

impl Router {
    /// Publishes through `link`.
    pub fn new(link: LinkTx) -> Router {
        Router(link)
    }

    /// Publishes `payload` on `topic`. The router refuses only when it is shutting down;
    /// whatever was not delivered stays in the journal and is sent again.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) {
        if let Err(e) = self.0.publish(topic.to_string(), payload.into()) {
            error!(topic, error = %e, "router refused a publish");
        }
    }
}
