//! A node's status summary: what the console shows of it in the tier tree. Every node makes
//! its own every couple of seconds and sends it up the tree; each parent keeps the summaries
//! of its subtree and relays them, so the root's console sees the whole tree.

use serde::{Deserialize, Serialize};

use crate::envelope::now_ms;
use crate::stats::{DeliveredBy, Stats};

/// The link to the parent, as the node itself sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ParentLink {
    /// Up now.
    pub up: bool,
    /// Over HTTP (fallback or HTTP-only).
    pub http: bool,
}

/// One configured child, as its parent sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChildLink {
    /// The child's node id.
    pub id: String,
    /// `mqtt`, `http`, or `None` when down.
    pub transport: Option<String>,
    /// When the parent last heard from it (Unix ms, the parent's clock).
    pub last_heard: u64,
}

/// One queue group's lane (see [`crate::stats::QueueGroup`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueLine {
    /// `parent`, `child:<id>`, `service:<name>`, `clients`, `receipts`.
    pub dest: String,
    /// `urgent`, `normal`, `bulk`.
    pub lane: String,
    /// Commands waiting.
    pub depth: u64,
    /// `created_at` of the first in line.
    pub oldest_created: Option<u64>,
}

/// What the console shows of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    /// Its id.
    pub node: String,
    /// medlink version it runs.
    pub version: String,
    /// When its process started (Unix ms).
    pub started_at: u64,
    /// When this summary was made (Unix ms, its clock).
    pub at: u64,
    /// Its link to its parent (`None` at the root).
    pub parent: Option<ParentLink>,
    /// Its children's links.
    pub children: Vec<ChildLink>,
    /// Client connections open (MQTT).
    pub clients_online: u64,
    /// What waits, per group and lane (empty lanes left out).
    pub queues: Vec<QueueLine>,
    /// Commands accepted from its clients since it started.
    pub accepted: u64,
    /// Commands its clients took since it started.
    pub delivered: u64,
    /// Commands the next tier took since it started.
    pub forwarded: u64,
    /// Dead letters kept since it started.
    pub dead_letters: u64,
    /// Journal size on disk.
    pub journal_bytes: u64,
    /// Free space where the journal lives.
    pub disk_free_bytes: Option<u64>,
}

/// Where a node's own summary is read from.
#[derive(Clone)]
pub struct Sources {
    /// Its id.
    pub node: String,
    /// Its counters and gauges.
    pub stats: Stats,
    /// The MQTT front-end's counters.
    pub broker: std::sync::Arc<medlink_broker::BrokerMetrics>,
    /// Its journal file.
    pub journal: std::path::PathBuf,
    /// When it started.
    pub started_at: u64,
}

impl NodeStatus {
    /// The node's own summary, now.
    pub fn own(src: &Sources) -> NodeStatus {
        let s = src.stats.snapshot();
        let delivered = src.stats.delivered_counts();
        let count = |by: DeliveredBy| delivered[by as usize].1;
        NodeStatus {
            node: src.node.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            started_at: src.started_at,
            at: now_ms(),
            parent: src.stats.has_parent().then_some(ParentLink {
                up: s.parent_up,
                http: s.parent_http,
            }),
            children: src
                .stats
                .children()
                .map(|(id, g)| ChildLink {
                    id: id.clone(),
                    transport: g.transport().map(str::to_string),
                    last_heard: g.last_heard_ms().unwrap_or(0),
                })
                .collect(),
            clients_online: src
                .broker
                .connections_open
                .load(std::sync::atomic::Ordering::Relaxed)
                .max(0) as u64,
            queues: src
                .stats
                .queues()
                .into_iter()
                .filter(|(_, g)| g.depth > 0)
                .map(|((group, lane), g)| QueueLine {
                    dest: group.to_string(),
                    lane: lane.to_string(),
                    depth: g.depth,
                    oldest_created: g.oldest_created,
                })
                .collect(),
            accepted: s.accepted,
            delivered: count(DeliveredBy::Mqtt) + count(DeliveredBy::Http),
            forwarded: count(DeliveredBy::Link),
            dead_letters: src.stats.dead_letter_counts().iter().map(|(_, n)| n).sum(),
            journal_bytes: crate::datadir::journal_bytes(&src.journal),
            disk_free_bytes: crate::datadir::disk_free_bytes(&src.journal),
        }
    }

    /// Whether `other` says the same apart from the time it was made and what drifts by
    /// itself (disk figures): an unchanged summary is sent only as a heartbeat.
    pub fn same_as(&self, other: &NodeStatus) -> bool {
        let strip = |s: &NodeStatus| NodeStatus {
            at: 0,
            journal_bytes: 0,
            disk_free_bytes: None,
            children: s
                .children
                .iter()
                .map(|c| ChildLink {
                    last_heard: 0,
                    ..c.clone()
                })
                .collect(),
            ..s.clone()
        };
        strip(self) == strip(other)
    }
}
