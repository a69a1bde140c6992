//! Following one message through the tree, for `medlink trace ID`.
//!
//! Each node's journal knows part of a message's story: the audit table has one row per node
//! that routed it (and per receipt about it), the queues hold it with its custody trail while
//! the node still has custody, and `awaiting_reply` says a reply is expected. This reads those
//! from every journal it is given (read-only, safe while the nodes run) and merges them into
//! one list: the command's path in hop order (acceptance, then each custody hop, then the
//! delivery), then the receipts about it in time order. Hop order, not time, leads, because
//! several steps often share one millisecond and nodes' clocks differ. Nodes audit what they
//! route when `audit = true` (the root always).

use std::path::Path;

use bytes::Bytes;
use serde::Serialize;

use crate::envelope::Envelope;
use crate::journal::{Dest, Target};

/// What kind of step an event is, in the order steps happen at one hop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    /// Accepted from its sender (hop 1).
    Accepted,
    /// A node took custody.
    Custody,
    /// Still waiting in a queue of this node.
    Waiting,
    /// Handed to its target client.
    Delivered,
    /// A receipt about it was routed.
    Receipt,
}

/// One thing that happened to the message, at one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TraceEvent {
    /// Unix ms (0: not recorded).
    pub at: u64,
    /// Which node along the path (1: the sender's node).
    pub hop: u32,
    /// What kind of step.
    pub step: Step,
    /// The node (or, for a journal without a name, its label).
    pub node: String,
    /// What happened, in words.
    pub what: String,
    /// Read from an envelope's custody trail rather than from that node's own records: said
    /// only where the node's journal has nothing on it.
    #[serde(skip)]
    pub from_trail: bool,
}

/// What `journal` knows of message `id`; events are named after the node that owns the
/// journal, or `label` for a journal that does not say.
pub fn trace_journal(journal: &Path, label: &str, id: &str) -> rusqlite::Result<Vec<TraceEvent>> {
    // The custody log's rounds too: those the node has not yet written into SQLite.
    let conn = crate::journal::open_reader(journal)?;
    let owner: Option<String> = conn
        .query_row("SELECT node FROM owner", [], |r| r.get(0))
        .ok();
    let label = owner.as_deref().unwrap_or(label);
    let mut out = Vec::new();
    let receipt_ids = format!("r.%.{id}");
    let mut stmt = conn.prepare(
        "SELECT at, id, kind, hops, decision, from_client, to_node, to_client FROM audit
         WHERE id = ?1 OR id LIKE ?2 ORDER BY at, rowid",
    )?;
    let rows = stmt.query_map([id, receipt_ids.as_str()], |r| {
        Ok((
            r.get::<_, i64>(0)? as u64,
            r.get::<_, String>(1)?,
            r.get::<_, String>(2)?,
            r.get::<_, i64>(3)?,
            r.get::<_, String>(4)?,
            r.get::<_, String>(5)?,
            format!("{}/{}", r.get::<_, String>(6)?, r.get::<_, String>(7)?),
        ))
    })?;
    // Where this node put the command for a local client, if it did: (hop, at, client).
    let mut local = None;
    let mut gave_up = false;
    for row in rows {
        let (at, rid, kind, hops, decision, from_client, to) = row?;
        let hop = u32::try_from(hops).unwrap_or(0);
        let (step, what) = if kind == "receipt" {
            let status = rid.split('.').nth(1).unwrap_or("?");
            gave_up |= matches!(status, "expired" | "failed");
            (
                Step::Receipt,
                format!("`{status}` receipt for {to} routed → {decision}"),
            )
        } else if hops == 1 && from_client != "$medlink" {
            (
                Step::Accepted,
                format!("accepted from {from_client} → {decision}"),
            )
        } else {
            (
                Step::Custody,
                format!("took custody (hop {hops}) → {decision}"),
            )
        };
        if kind != "receipt" {
            if let Ok(dest) = decision.parse::<Dest>() {
                if let Target::Commands(client) = dest.target() {
                    local = Some((hop, at, client.clone()));
                }
            }
        }
        out.push(TraceEvent {
            at,
            hop,
            step,
            node: label.to_string(),
            what,
            from_trail: false,
        });
    }
    let mut waiting = false;
    // Still in custody here: where it waits, and the trail it carries.
    let mut stmt = conn.prepare("SELECT dest, entries FROM queue")?;
    let mut rows = stmt.query([])?;
    while let Some(row) = rows.next()? {
        let dest: String = row.get(0)?;
        let blob: Vec<u8> = row.get(1)?;
        let Ok(entries) = crate::journal::segment::decode(Bytes::from(blob)) else {
            continue;
        };
        for entry in entries.into_iter().filter(|e| e.id == id) {
            let Ok(env) = Envelope::parse(&entry.body) else {
                continue;
            };
            waiting = true;
            for (i, hop) in env.trail.iter().enumerate() {
                out.push(TraceEvent {
                    at: hop.at,
                    hop: i as u32 + 1,
                    step: if i == 0 {
                        Step::Accepted
                    } else {
                        Step::Custody
                    },
                    node: hop.node.clone(),
                    what: "took custody (from the trail)".into(),
                    from_trail: true,
                });
            }
            out.push(TraceEvent {
                at: env.trail.last().map_or(env.created_at, |h| h.at),
                hop: u32::from(env.hops),
                step: Step::Waiting,
                node: label.to_string(),
                what: match dest.parse::<Dest>().map(|d| d.target().clone()) {
                    Ok(Target::Files) => format!(
                        "files_pending: held in {dest} until its {} file(s) are here and, going up, at the parent",
                        env.files.len()
                    ),
                    _ => format!("waiting in {dest} (not yet acknowledged by the next hop)"),
                },
                from_trail: false,
            });
        }
    }
    let mut stmt = conn.prepare("SELECT key FROM awaiting_reply WHERE key LIKE ?1")?;
    let pattern = format!("%/{id}");
    let keys = stmt.query_map([pattern], |r| r.get::<_, String>(0))?;
    let mut expecting = false;
    for key in keys {
        let key = key?;
        let who = key.rsplit_once('/').map_or(key.as_str(), |(c, _)| c);
        expecting = true;
        out.push(TraceEvent {
            at: 0,
            hop: local.as_ref().map_or(0, |l| l.0),
            step: if waiting {
                Step::Waiting
            } else {
                Step::Delivered
            },
            node: label.to_string(),
            what: if waiting {
                format!("a reply from {who} is expected")
            } else {
                format!("delivered to {who}; a reply is expected")
            },
            from_trail: false,
        });
    }
    // Queued for a local client and gone from the queue without expiring: its client
    // acknowledged it (the queue keeps a command until then).
    if let Some((hop, _, client)) = local.filter(|_| !waiting && !gave_up && !expecting) {
        out.push(TraceEvent {
            // The journal does not record when.
            at: 0,
            hop,
            step: Step::Delivered,
            node: label.to_string(),
            what: format!("delivered to {client}"),
            from_trail: false,
        });
    }
    Ok(out)
}

/// Merges what several journals know into one list (the path in hop order, then receipts in
/// time order), repeats removed (a trail names the same custody hop as the audit row of that
/// node).
pub fn merge(mut events: Vec<TraceEvent>) -> Vec<TraceEvent> {
    // The path by hop and step, then receipts by time.
    let key = |e: &TraceEvent| match e.step {
        Step::Receipt => (1, 0, e.step, e.at),
        _ => (0, e.hop, e.step, e.at),
    };
    events.sort_by(|a, b| {
        (key(a), &a.node, &a.what, a.from_trail).cmp(&(key(b), &b.node, &b.what, b.from_trail))
    });
    events.dedup();
    // A trail entry adds nothing where the node's own records say the same at that time.
    let recorded: std::collections::HashSet<(u64, String)> = events
        .iter()
        .filter(|e| !e.from_trail)
        .map(|e| (e.at, e.node.clone()))
        .collect();
    events.retain(|e| !e.from_trail || !recorded.contains(&(e.at, e.node.clone())));
    events
}
