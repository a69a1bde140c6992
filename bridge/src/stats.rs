//! Counters a node keeps about itself, shared between the dispatcher (which writes them) and
//! whoever reports them (`/metrics`, the demo, benches).
//!
//! Writers touch only what changed: a counter per event, a queue's gauge when its group moved
//! in a round, a child's gauge in the round's timers. Readers copy at scrape time.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use crate::envelope::Priority;
use medlink_wire::DeadReason;

/// Who took a command off this node's hands: a local client (by transport) or the next tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeliveredBy {
    /// A client's PUBACK (MQTT, over TCP, TLS or WebSocket).
    Mqtt,
    /// A client's cumulative HTTP acknowledgement (long-poll, event stream or `POST /v1/ack`).
    Http,
    /// The next tier's link acknowledgement (custody moved to the parent or a child).
    Link,
}

impl DeliveredBy {
    /// Every value, in the order metrics list them.
    pub const ALL: [DeliveredBy; 3] = [DeliveredBy::Mqtt, DeliveredBy::Http, DeliveredBy::Link];

    /// The `transport` label.
    pub fn as_str(self) -> &'static str {
        match self {
            DeliveredBy::Mqtt => "mqtt",
            DeliveredBy::Http => "http",
            DeliveredBy::Link => "link",
        }
    }
}

/// Upper bounds (seconds) of the end-to-end latency buckets: from a LAN hop to an outage.
pub const LATENCY_BUCKETS: [f64; 16] = [
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 900.0, 3600.0,
];

/// A Prometheus histogram of seconds, in atomics (observed by the dispatcher, read by scrapes).
#[derive(Debug, Default)]
pub struct Histogram {
    /// Per bucket (not cumulative), then the +Inf overflow.
    buckets: [AtomicU64; LATENCY_BUCKETS.len() + 1],
    sum_ms: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn observe_ms(&self, ms: u64) {
        let secs = ms as f64 / 1000.0;
        let i = LATENCY_BUCKETS
            .iter()
            .position(|le| secs <= *le)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
        self.sum_ms.fetch_add(ms, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// Cumulative counts per bucket (the last is +Inf), the sum in seconds, and the count.
    pub fn read(&self) -> (Vec<u64>, f64, u64) {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        let sum = self.sum_ms.load(Ordering::Relaxed) as f64 / 1000.0;
        (cumulative, sum, self.count.load(Ordering::Relaxed))
    }
}

/// A group of queues reported as one series: the parent link, one child, one service's
/// members, all other clients, all receipt streams. Clients are grouped so that 100,000 of
/// them make one series, not 100,000 (the console lists the oldest by name instead).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum QueueGroup {
    /// The link to the parent.
    Parent,
    /// The link down to this child.
    Child(String),
    /// The command streams of this service's members.
    Service(String),
    /// The command streams of every other local client.
    Clients,
    /// Every local client's receipt stream.
    Receipts,
    /// Commands waiting for their files (`files_pending`).
    Files,
}

impl std::fmt::Display for QueueGroup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            QueueGroup::Parent => f.write_str("parent"),
            QueueGroup::Child(c) => write!(f, "child:{c}"),
            QueueGroup::Service(s) => write!(f, "service:{s}"),
            QueueGroup::Clients => f.write_str("clients"),
            QueueGroup::Receipts => f.write_str("receipts"),
            QueueGroup::Files => f.write_str("files"),
        }
    }
}

/// What waits in one group's lane: how many, and when the first in line was created (Unix ms).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct QueueGauge {
    /// Commands waiting.
    pub depth: u64,
    /// `created_at` of the command first in line; `None` when empty.
    pub oldest_created: Option<u64>,
}

/// How a child is linked, as `/metrics` reports it.
#[derive(Debug, Default)]
pub struct ChildGauge {
    /// 0 down, 1 over MQTT, 2 over HTTP.
    via: AtomicU8,
    /// When anything was last heard from it (Unix ms; 0: never since this process started).
    last_heard: AtomicU64,
}

impl ChildGauge {
    /// Records the link's state: `via` is `None` when down, else `Some(true)` for HTTP.
    pub(crate) fn set(&self, via: Option<bool>, last_heard_ms: u64) {
        let v = match via {
            None => 0,
            Some(false) => 1,
            Some(true) => 2,
        };
        self.via.store(v, Ordering::Relaxed);
        self.last_heard.store(last_heard_ms, Ordering::Relaxed);
    }

    /// The transport it is linked by (`mqtt`, `http`), or `None` when down.
    pub fn transport(&self) -> Option<&'static str> {
        match self.via.load(Ordering::Relaxed) {
            1 => Some("mqtt"),
            2 => Some("http"),
            _ => None,
        }
    }

    /// When it was last heard from (Unix ms), if ever since the start.
    pub fn last_heard_ms(&self) -> Option<u64> {
        Some(self.last_heard.load(Ordering::Relaxed)).filter(|t| *t > 0)
    }
}

#[derive(Debug, Default)]
struct Inner {
    accepted: AtomicU64,
    rejected: AtomicU64,
    refused: AtomicU64,
    reassigned: AtomicU64,
    parent_up: AtomicBool,
    parent_http: AtomicBool,
    parent_http_links: AtomicU64,
    parent_stalls: AtomicU64,
    has_parent: AtomicBool,
    /// The last heartbeat round trip to the parent, in microseconds.
    rtt_us: AtomicU64,
    commit_failures: AtomicU64,
    /// Dead letters kept, by [`DeadReason`] (failed, expired, rejected).
    dead_letters: [AtomicU64; 3],
    delivered_by: [AtomicU64; DeliveredBy::ALL.len()],
    latency: Histogram,
    /// Changed groups are written after each round; groups never seen are absent.
    queues: Mutex<BTreeMap<(QueueGroup, Priority), QueueGauge>>,
    /// The configured children, fixed when the links are set up.
    children: OnceLock<BTreeMap<String, Arc<ChildGauge>>>,
}

/// Cheap-to-clone handle on a node's counters.
#[derive(Debug, Clone, Default)]
pub struct Stats(Arc<Inner>);

/// A point-in-time copy of the counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Snapshot {
    /// Commands accepted from this node's clients.
    pub accepted: u64,
    /// Envelopes acknowledged by this node's clients (MQTT and HTTP; receipts included).
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
    pub(crate) fn set_has_parent(&self, has: bool) {
        self.0.has_parent.store(has, Ordering::Relaxed);
    }
    pub(crate) fn set_rtt(&self, rtt: std::time::Duration) {
        self.0
            .rtt_us
            .store(rtt.as_micros() as u64, Ordering::Relaxed);
    }
    pub(crate) fn dead_letters(&self, kept: [u64; 3]) {
        for (counter, n) in self.0.dead_letters.iter().zip(kept) {
            counter.fetch_add(n, Ordering::Relaxed);
        }
    }

    /// Dead letters kept since the start, per reason.
    pub fn dead_letter_counts(&self) -> [(DeadReason, u64); 3] {
        DeadReason::ALL.map(|r| (r, self.0.dead_letters[r as usize].load(Ordering::Relaxed)))
    }

    pub(crate) fn commit_failed(&self) {
        self.0.commit_failures.fetch_add(1, Ordering::Relaxed);
    }

    /// `n` commands left this node through `by`; `latencies_ms` holds, for those delivered to
    /// their recipient here, the time since their `created_at`.
    pub(crate) fn delivered_by(&self, by: DeliveredBy, n: u64, latencies_ms: &[u64]) {
        self.0.delivered_by[by as usize].fetch_add(n, Ordering::Relaxed);
        for ms in latencies_ms {
            self.0.latency.observe_ms(*ms);
        }
    }

    /// Writes the gauges of the groups that changed in a round.
    pub(crate) fn set_queues(
        &self,
        changed: impl IntoIterator<Item = ((QueueGroup, Priority), QueueGauge)>,
    ) {
        let mut queues = self.0.queues.lock().unwrap_or_else(|p| p.into_inner());
        for (key, gauge) in changed {
            queues.insert(key, gauge);
        }
    }

    /// Registers the configured children (once, when the links are set up); returns the
    /// gauge each child's link writes.
    pub(crate) fn register_children<'a>(
        &self,
        children: impl IntoIterator<Item = &'a String>,
    ) -> BTreeMap<String, Arc<ChildGauge>> {
        let map: BTreeMap<String, Arc<ChildGauge>> = children
            .into_iter()
            .map(|c| (c.clone(), Arc::default()))
            .collect();
        let _ = self.0.children.set(map.clone());
        map
    }

    /// Whether this node is configured with a parent.
    pub fn has_parent(&self) -> bool {
        self.0.has_parent.load(Ordering::Relaxed)
    }

    /// The last heartbeat round trip to the parent, if one was measured.
    pub fn rtt(&self) -> Option<std::time::Duration> {
        Some(self.0.rtt_us.load(Ordering::Relaxed))
            .filter(|us| *us > 0)
            .map(std::time::Duration::from_micros)
    }

    /// Group commits of the journal that failed.
    pub fn commit_failures(&self) -> u64 {
        self.0.commit_failures.load(Ordering::Relaxed)
    }

    /// Commands that left this node, by who took them.
    pub fn delivered_counts(&self) -> [(DeliveredBy, u64); DeliveredBy::ALL.len()] {
        DeliveredBy::ALL.map(|by| (by, self.0.delivered_by[by as usize].load(Ordering::Relaxed)))
    }

    /// The end-to-end latency histogram of commands delivered to their recipient here.
    pub fn latency(&self) -> &Histogram {
        &self.0.latency
    }

    /// Every queue group's gauge per lane, as last written.
    pub fn queues(&self) -> BTreeMap<(QueueGroup, Priority), QueueGauge> {
        self.0
            .queues
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    /// The configured children's link gauges (empty before the links are set up).
    pub fn children(&self) -> impl Iterator<Item = (&String, &Arc<ChildGauge>)> {
        self.0.children.get().into_iter().flatten()
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
            delivered: self.0.delivered_by[DeliveredBy::Mqtt as usize].load(Ordering::Relaxed)
                + self.0.delivered_by[DeliveredBy::Http as usize].load(Ordering::Relaxed),
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
