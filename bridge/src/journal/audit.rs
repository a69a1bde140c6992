//! The audit trail in the journal: one row per routing decision (every command at the root,
//! and at any node with `audit = true`), written with the round's transaction.
//!
//! Rows are gathered during the round and inserted at commit, many to a statement. At
//! the root one row per command is a large part of the dispatcher's work, and one statement
//! per row paid SQLite's per-statement costs (and rusqlite's statement-cache lookup) every time.

use std::sync::LazyLock;

use super::multirow::MultiRow;
use super::{Result, Txn};
use crate::envelope::{Head, Kind};

/// `INSERT INTO audit(...)`, many rows a statement.
static INSERT: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO audit(at, id, kind, from_node, from_client, to_node, to_client, cmd, hops, decision)",
        10,
        "",
    )
});

/// One audit record, held until the commit. Its strings live in [`AuditRows::text`], so a row
/// costs no allocation of its own.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct AuditRow {
    at: i64,
    kind: &'static str,
    hops: u8,
    /// Where the row's strings start in the text.
    start: usize,
    /// Ends of id, from node, from client, to node, to client, cmd and decision in the text.
    ends: [usize; 7],
}

/// A round's audit records (or those of several logged rounds).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct AuditRows {
    rows: Vec<AuditRow>,
    text: String,
}

impl AuditRows {
    /// Whether the round audited nothing.
    pub(super) fn is_empty(&self) -> bool {
        self.rows.is_empty()
    }

    /// How many rows there are.
    pub(super) fn len(&self) -> usize {
        self.rows.len()
    }

    /// Adds a row: when, `cmd` or `receipt`, hops, and its strings (id, from node, from
    /// client, to node, to client, cmd, decision).
    pub(super) fn push(&mut self, at: i64, kind: &'static str, hops: u8, fields: [&str; 7]) {
        let start = self.text.len();
        let mut ends = [0; 7];
        for (end, s) in ends.iter_mut().zip(fields) {
            self.text.push_str(s);
            *end = self.text.len();
        }
        self.rows.push(AuditRow {
            at,
            kind,
            hops,
            start,
            ends,
        });
    }

    /// Each row: when, kind, hops, strings (as [`AuditRows::push`] took them).
    pub(super) fn rows(&self) -> impl Iterator<Item = (i64, &'static str, u8, [&str; 7])> {
        self.rows.iter().map(|r| {
            (
                r.at,
                r.kind,
                r.hops,
                std::array::from_fn(|i| self.field(r, i)),
            )
        })
    }

    /// Adds `other`'s rows after these.
    pub(super) fn append(&mut self, other: &AuditRows) {
        for (at, kind, hops, fields) in other.rows() {
            self.push(at, kind, hops, fields);
        }
    }

    /// The `i`th string of `row`: id, from node, from client, to node, to client, cmd, decision.
    fn field(&self, row: &AuditRow, i: usize) -> &str {
        let start = if i == 0 { row.start } else { row.ends[i - 1] };
        &self.text[start..row.ends[i]]
    }
}

/// Inserts `audits`, several rows to a statement.
pub(super) fn insert_audits(conn: &rusqlite::Connection, audits: &AuditRows) -> Result<()> {
    INSERT.run(conn, &audits.rows, |stmt, at, r| {
        stmt.raw_bind_parameter(at, r.at)?;
        stmt.raw_bind_parameter(at + 1, audits.field(r, 0))?;
        stmt.raw_bind_parameter(at + 2, r.kind)?;
        for f in 1..=5 {
            stmt.raw_bind_parameter(at + 2 + f, audits.field(r, f))?;
        }
        stmt.raw_bind_parameter(at + 8, r.hops)?;
        stmt.raw_bind_parameter(at + 9, audits.field(r, 6))?;
        Ok(())
    })
}

impl Txn<'_> {
    /// Records a routing decision about `env`, written at commit.
    pub fn audit(&mut self, env: &Head, at: u64, decision: &str) {
        let kind = match env.kind {
            Kind::Cmd => "cmd",
            Kind::Receipt => "receipt",
        };
        self.audits.push(
            at as i64,
            kind,
            env.hops,
            [
                env.id,
                env.from.node,
                env.from.client,
                env.to.node,
                env.to.client,
                env.cmd,
                decision,
            ],
        );
    }

    /// Inserts the round's audit rows.
    pub(super) fn flush_audit(&mut self) -> Result<()> {
        if self.audits.is_empty() {
            return Ok(());
        }
        let audits = std::mem::take(&mut self.audits);
        insert_audits(self.sql()?, &audits)
    }
}

#[cfg(test)]
mod tests {
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
        // Two full statements of the largest size, then the smaller ones for the rest.
        let n = crate::journal::multirow::SIZES[0] * 2 + 5;
        let mut t = j.begin().unwrap();
        for i in 0..n {
            let env = test_envelope(&format!("m{i}"), "js", "b");
            t.audit(&env.head(), i as u64, &format!("local:b #{i}"));
        }
        t.commit().unwrap();
        let mut stmt = j
            .conn
            .prepare(
                "SELECT at, id, kind, from_node, from_client, to_node, to_client, cmd, hops, decision
                 FROM audit ORDER BY rowid",
            )
            .unwrap();
        let rows: Vec<Vec<String>> = stmt
            .query_map([], |r| {
                (0..10)
                    .map(|c| {
                        r.get::<_, rusqlite::types::Value>(c).map(|v| match v {
                            rusqlite::types::Value::Integer(n) => n.to_string(),
                            rusqlite::types::Value::Text(t) => t,
                            other => format!("{other:?}"),
                        })
                    })
                    .collect()
            })
            .unwrap()
            .collect::<rusqlite::Result<_>>()
            .unwrap();
        assert_eq!(rows.len(), n);
        for (i, row) in rows.into_iter().enumerate() {
            let want = [
                i.to_string(),
                format!("m{i}"),
                "cmd".into(),
                "js.nj.t1".into(),
                "a".into(),
                "js".into(),
                "b".into(),
                "x".into(),
                "0".into(),
                format!("local:b #{i}"),
            ];
            assert_eq!(row, want);
        }
    }
}
