//! Reading the audit table: every envelope a node routed while auditing was on (always at the
//! root), for `medlink audit`.

use std::path::Path;

use rusqlite::{Connection, OpenFlags};
use serde::Serialize;

/// One routing decision.
#[derive(Debug, Clone, Serialize)]
pub struct AuditRecord {
    /// Unix ms when this node took custody.
    pub at: u64,
    /// Envelope id.
    pub id: String,
    /// `cmd` or `receipt`.
    pub kind: String,
    /// Sender node.
    pub from_node: String,
    /// Sender client.
    pub from_client: String,
    /// Target node.
    pub to_node: String,
    /// Target client.
    pub to_client: String,
    /// Command name.
    pub cmd: String,
    /// Nodes passed including this one.
    pub hops: u32,
    /// Where it went (`up`, `down:<child>`, `local:<client>`, `refused: ...`).
    pub decision: String,
}

/// Which records to return; all conditions must hold.
#[derive(Debug, Clone, Default)]
pub struct AuditQuery {
    /// Sender or target client.
    pub client: Option<String>,
    /// Sender or target node, or a node below it.
    pub node: Option<String>,
    /// Command name.
    pub cmd: Option<String>,
    /// At or after this Unix ms.
    pub since: Option<u64>,
    /// Most records.
    pub limit: usize,
}

/// Runs `q` against the journal at `path` (opened read-only, safe while the node runs).
pub fn query(path: &Path, q: &AuditQuery) -> rusqlite::Result<Vec<AuditRecord>> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let node_like = q.node.as_ref().map(|n| format!("{n}.%"));
    let mut stmt = conn.prepare(
        "SELECT at, id, kind, from_node, from_client, to_node, to_client, cmd, hops, decision
         FROM audit
         WHERE (?1 IS NULL OR from_client = ?1 OR to_client = ?1)
           AND (?2 IS NULL OR from_node = ?2 OR to_node = ?2 OR from_node LIKE ?3 OR to_node LIKE ?3)
           AND (?4 IS NULL OR cmd = ?4)
           AND (?5 IS NULL OR at >= ?5)
         ORDER BY at, rowid LIMIT ?6",
    )?;
    let rows = stmt.query_map(
        rusqlite::params![
            q.client,
            q.node,
            node_like,
            q.cmd,
            q.since.map(|s| s as i64),
            q.limit as i64
        ],
        |r| {
            Ok(AuditRecord {
                at: r.get::<_, i64>(0)? as u64,
                id: r.get(1)?,
                kind: r.get(2)?,
                from_node: r.get(3)?,
                from_client: r.get(4)?,
                to_node: r.get(5)?,
                to_client: r.get(6)?,
                cmd: r.get(7)?,
                hops: r.get(8)?,
                decision: r.get(9)?,
            })
        },
    )?;
    rows.collect()
}
