//! The dispatcher's hand into the broker's fan-out: every publish to a client's inbox or a
//! child's down topic goes through here, after the round that queued it has committed.

use std::sync::Arc;

use bytes::Bytes;
use medlink_broker::Fanout;

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

/// The dispatcher's way to subscribers.
pub struct Router(Arc<Fanout>);

impl Router {
    /// Publishes through `fanout`.
    pub fn new(fanout: Arc<Fanout>) -> Router {
        Router(fanout)
    }

    /// Lets `conn`'s stream subscription on `topic` receive: the node has opened the stream for
    /// it (and rewinds the stream, so what it missed comes now).
    pub fn activate(&mut self, topic: &str, conn: medlink_broker::ConnId) {
        self.0.activate(topic, conn);
    }

    /// Publishes `payload` on `topic` to whoever subscribed now. Whatever reached nobody
    /// stays in the journal and is sent again when its reader comes back.
    pub fn publish(&mut self, topic: &str, payload: impl Into<Bytes>) {
        self.0.publish(topic, payload.into());
    }

    /// Publishes `payloads` on `topic`, in order, as [`Router::publish`] would one by one.
    pub fn publish_all(&mut self, topic: &str, payloads: &[Bytes]) {
        self.0.publish_all(topic, payloads);
    }
}
