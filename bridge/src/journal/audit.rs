//! The audit trail in the journal: one row per routing decision (every command at the root,
//! and at any node with `audit = true`), written with the round's transaction.
//!
//! Rows are gathered during the round and inserted at commit, [`CHUNK`] to a statement. At
//! the root one row per command is a large part of the dispatcher's work, and one statement
//! per row paid SQLite's per-statement costs (and rusqlite's statement-cache lookup) every time.

use std::sync::LazyLock;

use super::{Result, Txn};
use crate::envelope::{Head, Kind};

/// Rows per multi-row `INSERT`.
const CHUNK: usize = 32;

/// The columns, in the order each row binds them.
const COLUMNS: usize = 10;

/// `INSERT INTO audit(...) VALUES (...), ... ` for `rows` rows.
fn insert(rows: usize) -> String {
    let row = format!("({})", ["?"; COLUMNS].join(","));
    format!(
        "INSERT INTO audit(at, id, kind, from_node, from_client, to_node, to_client, cmd, hops, decision) VALUES {}",
        vec![row; rows].join(",")
    )
}

static INSERT_CHUNK: LazyLock<String> = LazyLock::new(|| insert(CHUNK));
static INSERT_ONE: LazyLock<String> = LazyLock::new(|| insert(1));

/// One audit record, held until the commit.
pub(super) struct AuditRow {
    at: i64,
    id: String,
    kind: &'static str,
    from_node: String,
    from_client: String,
    to_node: String,
    to_client: String,
    cmd: String,
    hops: u8,
    decision: String,
}

impl Txn<'_> {
    /// Records a routing decision about `env`, written at commit.
    pub fn audit(&mut self, env: &Head, at: u64, decision: &str) {
        self.audits.push(AuditRow {
            at: at as i64,
            id: env.id.to_string(),
            kind: match env.kind {
                Kind::Cmd => "cmd",
                Kind::Receipt => "receipt",
            },
            from_node: env.from.node.to_string(),
            from_client: env.from.client.to_string(),
            to_node: env.to.node.to_string(),
            to_client: env.to.client.to_string(),
            cmd: env.cmd.to_string(),
            hops: env.hops,
            decision: decision.to_string(),
        });
    }

    /// Inserts the round's audit rows.
    pub(super) fn flush_audit(&mut self) -> Result<()> {
        let rows = std::mem::take(&mut self.audits);
        let mut chunks = rows.chunks_exact(CHUNK);
        for chunk in chunks.by_ref() {
            self.insert_audit(&INSERT_CHUNK, chunk)?;
        }
        for row in chunks.remainder() {
            self.insert_audit(&INSERT_ONE, std::slice::from_ref(row))?;
        }
        Ok(())
    }

    fn insert_audit(&self, sql: &str, rows: &[AuditRow]) -> Result<()> {
        let mut stmt = self.tx.prepare_cached(sql)?;
        for (i, r) in rows.iter().enumerate() {
            let at = i * COLUMNS;
            stmt.raw_bind_parameter(at + 1, r.at)?;
            stmt.raw_bind_parameter(at + 2, &r.id)?;
            stmt.raw_bind_parameter(at + 3, r.kind)?;
            stmt.raw_bind_parameter(at + 4, &r.from_node)?;
            stmt.raw_bind_parameter(at + 5, &r.from_client)?;
            stmt.raw_bind_parameter(at + 6, &r.to_node)?;
            stmt.raw_bind_parameter(at + 7, &r.to_client)?;
            stmt.raw_bind_parameter(at + 8, &r.cmd)?;
            stmt.raw_bind_parameter(at + 9, r.hops)?;
            stmt.raw_bind_parameter(at + 10, &r.decision)?;
        }
        stmt.raw_execute()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::test_envelope;
    use crate::journal::Journal;

    #[test]
    fn every_row_of_a_round_is_written_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = Journal::open(
            &dir.path().join("j.db"),
            crate::journal::Durability::Process,
        )
        .unwrap();
        let n = CHUNK * 2 + 5;
        let mut t = j.begin().unwrap();
        for i in 0..n {
            let env = test_envelope(&format!("m{i}"), "js", "b");
            t.audit(&env.head(), i as u64, &format!("local:b #{i}"));
        }
        t.commit().unwrap();
        let mut stmt = j
            .conn
            .prepare("SELECT at, id, decision FROM audit ORDER BY rowid")
            .unwrap();
        let rows: Vec<(i64, String, String)> = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows.len(), n);
        for (i, (at, id, decision)) in rows.into_iter().enumerate() {
            assert_eq!(
                (at, id, decision),
                (i as i64, format!("m{i}"), format!("local:b #{i}"))
            );
        }
    }
}
