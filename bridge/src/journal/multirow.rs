//! Multi-row statements: one `INSERT … VALUES (…), (…), …` for many rows of a round.
//!
//! A push to thousands of recipients writes a row per recipient into several tables (its queue
//! segment, its sequence reservation, its acknowledgement point), and the root writes an audit
//! row per command. One statement per row paid SQLite's per-statement costs (and rusqlite's
//! statement-cache lookup) every time; grouped, they are paid once per [`SIZES`] rows.

use rusqlite::{CachedStatement, Connection};

use super::Result;

/// Rows per statement, largest first: a round's rows go in as few statements as these make,
/// with a handful of statement texts (each one prepared once and cached).
pub(super) const SIZES: [usize; 3] = [32, 8, 1];

/// One multi-row statement, in each of the [`SIZES`].
pub(super) struct MultiRow {
    /// The statement for `SIZES[i]` rows.
    sql: [String; SIZES.len()],
    /// Parameters per row.
    columns: usize,
}

impl MultiRow {
    /// `head VALUES (?, …), … tail`, with `columns` parameters a row.
    pub(super) fn new(head: &str, columns: usize, tail: &str) -> MultiRow {
        let row = format!("({})", vec!["?"; columns].join(","));
        let sql =
            SIZES.map(|n| format!("{head} VALUES {} {tail}", vec![row.as_str(); n].join(",")));
        MultiRow { sql, columns }
    }

    /// Runs the statement over `items`, in order; `bind(stmt, first, item)` binds one item's
    /// columns from the 1-based parameter index `first` on.
    pub(super) fn run<T>(
        &self,
        tx: &Connection,
        items: &[T],
        mut bind: impl FnMut(&mut CachedStatement, usize, &T) -> Result<()>,
    ) -> Result<()> {
        let mut rest = items;
        for (sql, &size) in self.sql.iter().zip(SIZES.iter()) {
            while rest.len() >= size {
                let (group, after) = rest.split_at(size);
                let mut stmt = tx.prepare_cached(sql)?;
                for (i, item) in group.iter().enumerate() {
                    bind(&mut stmt, i * self.columns + 1, item)?;
                }
                stmt.raw_execute()?;
                rest = after;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_row_goes_in_once_in_order_whatever_the_count() {
        let mut conn = rusqlite::Connection::open_in_memory().unwrap();
        conn.execute_batch("CREATE TABLE t(a INTEGER, b TEXT)")
            .unwrap();
        let insert = MultiRow::new("INSERT INTO t(a, b)", 2, "");
        for n in [0, 1, 7, 8, 9, 32, 33, 75] {
            let items: Vec<(i64, String)> = (0..n).map(|i| (i, format!("r{i}"))).collect();
            let tx = conn.transaction().unwrap();
            tx.execute("DELETE FROM t", []).unwrap();
            insert
                .run(&tx, &items, |stmt, at, (a, b)| {
                    stmt.raw_bind_parameter(at, a)?;
                    stmt.raw_bind_parameter(at + 1, b)?;
                    Ok(())
                })
                .unwrap();
            let back: Vec<(i64, String)> = tx
                .prepare("SELECT a, b FROM t ORDER BY rowid")
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
                .unwrap()
                .collect::<rusqlite::Result<_>>()
                .unwrap();
            assert_eq!(back, items, "{n} rows");
            tx.commit().unwrap();
        }
    }
}
