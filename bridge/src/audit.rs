//! Reading the audit table: every envelope a node routed while auditing was on (always at the
//! root), for `medlink audit`.

use std::path::Path;

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
    /// Where it went: a journal destination (see [`crate::journal::Dest`]) or `refused: ...`.
    pub decision: String,
}

impl std::fmt::Display for AuditRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} {} {:<7} {}/{} -> {}/{} {} hops={} {}",
            format_time(self.at),
            self.id,
            self.kind,
            self.from_node,
            self.from_client,
            self.to_node,
            self.to_client,
            self.cmd,
            self.hops,
            self.decision
        )
    }
}

/// Formats Unix ms as `YYYY-MM-DDTHH:MM:SS.fffZ`.
pub fn format_time(ms: u64) -> String {
    let secs = (ms / 1000) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    // civil_from_days (Howard Hinnant)
    let z = days + 719_468;
    let era = if z >= 0 { z } else { z - 146_096 } / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        ms % 1000
    )
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
    /// Oldest first (the default is newest first).
    pub oldest_first: bool,
}

/// What a query found.
#[derive(Debug, Clone, Default)]
pub struct AuditPage {
    /// The records, in the order asked for.
    pub records: Vec<AuditRecord>,
    /// More records matched than `limit` allowed.
    pub cut: bool,
}

/// Runs `q` against the journal at `path` (opened read-only, safe while the node runs).
pub fn query(path: &Path, q: &AuditQuery) -> rusqlite::Result<AuditPage> {
    // The custody log's rounds too: those the node has not yet written into SQLite.
    let conn = crate::journal::open_reader(path)?;
    let node_like = q.node.as_ref().map(|n| format!("{n}.%"));
    let order = if q.oldest_first {
        "at, rowid"
    } else {
        "at DESC, rowid DESC"
    };
    let mut stmt = conn.prepare(&format!(
        "SELECT at, id, kind, from_node, from_client, to_node, to_client, cmd, hops, decision
         FROM audit
         WHERE (?1 IS NULL OR from_client = ?1 OR to_client = ?1)
           AND (?2 IS NULL OR from_node = ?2 OR to_node = ?2 OR from_node LIKE ?3 OR to_node LIKE ?3)
           AND (?4 IS NULL OR cmd = ?4)
           AND (?5 IS NULL OR at >= ?5)
         ORDER BY {order} LIMIT ?6"
    ))?;
    let rows = stmt.query_map(
        rusqlite::params![
            q.client,
            q.node,
            node_like,
            q.cmd,
            q.since.map(|s| s as i64),
            // One more than asked, to know whether the output was cut.
            q.limit.saturating_add(1) as i64
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
    let mut records = rows.collect::<rusqlite::Result<Vec<_>>>()?;
    let cut = records.len() > q.limit;
    records.truncate(q.limit);
    Ok(AuditPage { records, cut })
}
