//! An open connection's place in the node: its permit of the connection budget and its counts
//! in the front-end's gauges. Its own module because the listener makes it and the connection,
//! wherever it runs, gives it back.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use tokio::sync::OwnedSemaphorePermit;

use crate::metrics::BrokerMetrics;

/// An open connection's place: its permit of the budget and its count in
/// `connections_open`, both given back when the connection ends, on whichever runtime that is.
pub(crate) struct Slot {
    _permit: OwnedSemaphorePermit,
    metrics: Arc<BrokerMetrics>,
    on_dispatcher: bool,
}

impl Slot {
    /// Counts a connection that has completed its handshakes.
    pub(crate) fn open(permit: OwnedSemaphorePermit, metrics: Arc<BrokerMetrics>) -> Self {
        metrics.connections_open.fetch_add(1, Ordering::Relaxed);
        Slot {
            _permit: permit,
            metrics,
            on_dispatcher: false,
        }
    }

    /// The connection now runs on the dispatcher's thread; counted there until it ends.
    pub(crate) fn moved_to_dispatcher(&mut self) {
        self.on_dispatcher = true;
        self.metrics
            .connections_on_dispatcher
            .fetch_add(1, Ordering::Relaxed);
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.metrics
            .connections_open
            .fetch_sub(1, Ordering::Relaxed);
        if self.on_dispatcher {
            self.metrics
                .connections_on_dispatcher
                .fetch_sub(1, Ordering::Relaxed);
        }
    }
}
