//! The tier tree as one node's console sees it: the latest status summary of every node of
//! its subtree (its own included), when each arrived, and which are stale.
//!
//! A node is *stale* when the console cannot vouch for what it shows: its parent reports the
//! link to it down, nothing came from it for [`SILENT_AFTER`], or a node above it is stale
//! (whatever it reported came through that node). A stale node is shown with its last
//! summary and when that was heard, never as connected.

use std::collections::BTreeMap;

use serde::Serialize;

use super::status::NodeStatus;
use crate::envelope::now_ms;
use crate::route::within;

/// A node that sent no summary for this long is stale (summaries come every 2 s when
/// something changes, and every 10 s regardless).
pub const SILENT_AFTER_MS: u64 = 30_000;

/// One node of the subtree.
#[derive(Debug, Clone, Serialize)]
pub struct Row {
    /// Its id.
    pub node: String,
    /// Its latest summary, if any came since this node started.
    pub status: Option<NodeStatus>,
    /// When that summary arrived here (Unix ms, this node's clock).
    pub heard: Option<u64>,
    /// Why the console cannot vouch for it, if it cannot.
    pub stale: Option<String>,
}

/// The subtree's summaries.
#[derive(Debug)]
pub struct TreeView {
    me: String,
    known: BTreeMap<String, (NodeStatus, u64)>,
}

impl TreeView {
    /// The view of node `me`.
    pub fn new(me: &str) -> TreeView {
        TreeView {
            me: me.to_string(),
            known: BTreeMap::new(),
        }
    }

    /// Takes a summary (its own, or one from below); false if it is for a node outside the
    /// subtree.
    pub fn insert(&mut self, status: NodeStatus, now: u64) -> bool {
        if !within(&self.me, &status.node) {
            return false;
        }
        self.known.insert(status.node.clone(), (status, now));
        true
    }

    /// The node of the subtree whose summary lists `node` among its children.
    fn parent_of(&self, node: &str) -> Option<&NodeStatus> {
        self.known
            .values()
            .map(|(s, _)| s)
            .find(|s| s.children.iter().any(|c| c.id == node))
    }

    /// Every node of the subtree (those that reported, and the children they list), in tree
    /// order, with staleness decided now.
    pub fn rows(&self) -> Vec<Row> {
        let now = now_ms();
        let mut names: Vec<String> = self.known.keys().cloned().collect();
        for (s, _) in self.known.values() {
            names.extend(s.children.iter().map(|c| c.id.clone()));
        }
        names.sort();
        names.dedup();
        let mut rows: Vec<Row> = Vec::with_capacity(names.len());
        for name in names {
            let known = self.known.get(&name);
            let mut stale = None;
            if name != self.me {
                // Sorted by id, every ancestor's row comes before its descendants'.
                if let Some(up) = rows
                    .iter()
                    .filter(|r| r.stale.is_some() && within(&r.node, &name))
                    .max_by_key(|r| r.node.len())
                {
                    stale = Some(format!("behind {}", up.node));
                } else if let Some(link) = self
                    .parent_of(&name)
                    .and_then(|p| p.children.iter().find(|c| c.id == name).map(|c| (p, c)))
                    .filter(|(_, c)| c.transport.is_none())
                {
                    stale = Some(format!("link down at {}", link.0.node));
                } else if known.is_none() {
                    stale = Some("no summary since this node started".into());
                } else if let Some((_, heard)) = known.filter(|(_, h)| now > h + SILENT_AFTER_MS) {
                    stale = Some(format!("silent for {} s", (now - heard) / 1000));
                }
            }
            rows.push(Row {
                node: name,
                status: known.map(|(s, _)| s.clone()),
                heard: known.map(|(_, h)| *h),
                stale,
            });
        }
        rows
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::console::status::ChildLink;

    fn status(node: &str, children: &[(&str, bool)]) -> NodeStatus {
        NodeStatus {
            node: node.into(),
            version: "0".into(),
            started_at: 0,
            at: 0,
            parent: None,
            children: children
                .iter()
                .map(|(id, up)| ChildLink {
                    id: id.to_string(),
                    transport: up.then(|| "mqtt".to_string()),
                    last_heard: 0,
                })
                .collect(),
            clients_online: 0,
            queues: Vec::new(),
            accepted: 0,
            delivered: 0,
            forwarded: 0,
            dead_letters: 0,
            journal_bytes: 0,
            disk_free_bytes: None,
        }
    }

    #[test]
    fn a_cut_link_makes_the_child_and_everything_below_it_stale() {
        let now = now_ms();
        let mut t = TreeView::new("js");
        assert!(t.insert(status("js", &[("js.a", true)]), now));
        assert!(t.insert(status("js.a", &[("js.a.b", true)]), now));
        assert!(t.insert(status("js.a.b", &[]), now));
        assert!(!t.insert(status("zj", &[]), now), "outside the subtree");
        assert!(t.rows().iter().all(|r| r.stale.is_none()));
        t.insert(status("js", &[("js.a", false)]), now);
        let rows = t.rows();
        let stale: Vec<_> = rows.iter().map(|r| r.stale.clone()).collect();
        assert_eq!(
            stale,
            [
                None,
                Some("link down at js".to_string()),
                Some("behind js.a".to_string())
            ]
        );
        // Silent for too long, though its parent still says the link is up.
        let mut t = TreeView::new("js");
        t.insert(status("js", &[("js.a", true), ("js.b", true)]), now);
        t.insert(status("js.a", &[]), now - SILENT_AFTER_MS - 5_000);
        let rows = t.rows();
        assert!(rows[1].stale.as_deref().unwrap().starts_with("silent for"));
        assert_eq!(
            rows[2].stale.as_deref(),
            Some("no summary since this node started")
        );
    }
}
