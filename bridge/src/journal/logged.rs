//! How a transaction uses the custody log (`custody.rs`): whether its round goes to the log
//! instead of a SQLite commit ([`Txn::log`]), and how the logged rounds reach SQLite before any
//! statement of a later transaction ([`Txn::sql`]) or in the dispatcher's idle moments
//! ([`Txn::apply_logged`]), with how far SQLite holds the log stored alongside.

use std::sync::LazyLock;

use rusqlite::Connection;

use super::custody::{Record, WRITE_AT};
use super::multirow::MultiRow;
use super::rows::{insert_rows, segment_row, store_link_in, store_reservations, SegmentRow};
use super::{Result, Txn};

/// Stores values in `meta`.
static STORE_META: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO meta(key, value)",
        2,
        "ON CONFLICT(key) DO UPDATE SET value = excluded.value",
    )
});

impl Txn<'_> {
    /// Whether this transaction has nothing to write: no statement changed SQLite, and nothing
    /// waits to be written at the commit.
    pub(super) fn writes_nothing(&self) -> bool {
        self.applying.get() == 0
            && self.pending.is_empty()
            && self.link_in.is_empty()
            && self.dirty.is_empty()
            && self.audits.is_empty()
            && matches!(
                self.tx.transaction_state(None),
                Ok(state) if state != rusqlite::TransactionState::Write
            )
    }

    /// Makes this round durable by one append to the custody log instead of SQLite's commit,
    /// if it can: its changes are only queued envelopes, link positions and sequence blocks,
    /// and nothing in it has written to SQLite yet. `Ok(true)`: the log took it, and it waits
    /// in `logged` for the next transaction (or the dispatcher's next idle moment) to write it.
    pub(super) fn log(&mut self) -> Result<bool> {
        // A node busy without a pause writes to SQLite every [`WRITE_AT`]th round, with all
        // the logged ones: what waits in the log stays small, and so does that commit.
        if self.custody.is_none()
            || self.logged.borrow().len() >= WRITE_AT
            || self.applying.get() > 0
            || !self.audits.is_empty()
            || self.tx.transaction_state(None)? == rusqlite::TransactionState::Write
        {
            return Ok(false);
        }
        let record = Record {
            segments: self
                .pending
                .iter()
                .filter_map(|(dest, entries)| segment_row(dest, entries))
                .map(|(dest, first, last, expiry, blob)| {
                    (dest.to_string(), first, last, expiry, blob.into_owned())
                })
                .collect(),
            link_in: self.link_in.clone(),
            reservations: self.reservations(),
        };
        let Some(log) = self.custody.as_mut() else {
            return Ok(false);
        };
        match log.append(&record) {
            Ok(Some(end)) => {
                self.pending.clear();
                self.link_in.clear();
                let mut logged = self.logged.borrow_mut();
                if logged.is_empty() {
                    self.logged_since.set(Some(std::time::Instant::now()));
                }
                logged.push((record, end));
                Ok(true)
            }
            Ok(None) => Ok(false),
            Err(e) => Err(rusqlite::Error::ToSqlConversionFailure(
                format!("{}: {e}", log.path().display()).into(),
            )),
        }
    }

    /// Writes the oldest logged rounds, up to `upto` of them in all, into this transaction.
    pub(super) fn apply_logged(&self, upto: usize) -> Result<()> {
        let conn = self.tx.0;
        let logged = self.logged.borrow();
        let (from, to) = (self.applying.get(), upto.min(logged.len()));
        for (record, _) in logged.iter().take(to).skip(from) {
            let rows: Vec<SegmentRow> = record
                .segments
                .iter()
                .map(|(dest, first, last, expiry, blob)| {
                    (
                        dest.as_str(),
                        *first,
                        *last,
                        *expiry,
                        blob.as_slice().into(),
                    )
                })
                .collect();
            insert_rows(conn, &rows)?;
            store_link_in(conn, &record.link_in)?;
            store_reservations(conn, &record.reservations)?;
        }
        // Kept in `logged` until the commit that writes them succeeds.
        self.applying.set(to.max(from));
        Ok(())
    }

    /// Stores in this transaction how far SQLite holds the custody log: its generation, and
    /// the end of the last logged round this transaction wrote. (Not through [`Txn::sql`],
    /// which would write every logged round.)
    pub(super) fn mark_applied(&self) -> Result<()> {
        let Some(log) = self.custody.as_ref() else {
            return Ok(());
        };
        let end = self.logged.borrow()[self.applying.get() - 1].1;
        STORE_META.run(
            self.tx.0,
            &[
                ("custody_applied", log.generation()),
                ("custody_applied_at", end),
            ],
            |stmt, at, (key, value)| {
                stmt.raw_bind_parameter(at, *key)?;
                stmt.raw_bind_parameter(at + 1, *value as i64)?;
                Ok(())
            },
        )
    }
}

impl<'a> Txn<'a> {
    /// The transaction's connection, for a statement: rounds the custody log holds that SQLite
    /// does not are written first, so that the statement sees (and changes) them too.
    pub(super) fn sql(&self) -> Result<&'a Connection> {
        if self.applying.get() < self.logged.borrow().len() {
            self.apply_logged(usize::MAX)?;
        }
        Ok(self.tx.0)
    }
}
