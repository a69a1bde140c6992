//! Counters a node keeps about itself, shared between the dispatcher and whoever reports them
//! (the demo, benches, and later the metrics endpoint).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

#[derive(Debug, Default)]
struct Inner {
    accepted: AtomicU64,
    delivered: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    reassigned: AtomicU64,
    parent_up: AtomicBool,
    parent_http: AtomicBool,
    parent_http_links: AtomicU64,
    parent_stalls: AtomicU64,
}

/// Cheap-to-clone handle on a node's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Inner>);

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Commands accepted from this node's clients.
    pub accepted: u64,
    /// Envelopes acknowledged by this node's clients.
    pub delivered: u64,
    /// Submissions refused as invalid.
    pub rejected: u64,
    /// Envelopes dropped as expired or unroutable (a receipt was sent).
    pub refused: u64,
    /// Service-group commands moved to another member (no acknowledgement in time).
    pub reassigned: u64,
    /// Whether the link to the parent is up.
    pub parent_up: bool,
    /// Whether the link to the parent runs over HTTP.
    pub parent_http: bool,
    /// Times the link to the parent came up over HTTP (the fallback, or an HTTP-only site).
    pub parent_http_links: u64,
    /// Times the link to the parent went silent (no frame for `dead_after`) and was redialled.
    pub parent_stalls: u64,
}

impl Stats {
    pub(crate) fn accepted(&self) {
        self.0.accepted.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn delivered(&self) {
        self.0.delivered.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn rejected(&self) {
        self.0.rejected.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn refused(&self) {
        self.0.refused.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn reassigned(&self) {
        self.0.reassigned.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_parent_up(&self, up: bool) {
        self.0.parent_up.store(up, Ordering::Relaxed);
    }
    pub(crate) fn parent_stalled(&self) {
        self.0.parent_stalls.fetch_add(1, Ordering::Relaxed);
    }
    pub(crate) fn set_parent_http(&self, http: bool) {
        self.0.parent_http.store(http, Ordering::Relaxed);
        if http {
            self.0.parent_http_links.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// Reads all counters.
    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            accepted: self.0.accepted.load(Ordering::Relaxed),
            delivered: self.0.delivered.load(Ordering::Relaxed),
            rejected: self.0.rejected.load(Ordering::Relaxed),
            refused: self.0.refused.load(Ordering::Relaxed),
            reassigned: self.0.reassigned.load(Ordering::Relaxed),
            parent_up: self.0.parent_up.load(Ordering::Relaxed),
            parent_http: self.0.parent_http.load(Ordering::Relaxed),
            parent_http_links: self.0.parent_http_links.load(Ordering::Relaxed),
            parent_stalls: self.0.parent_stalls.load(Ordering::Relaxed),
        }
    }
}
