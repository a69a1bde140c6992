//! How a transaction uses the custody log (`custody.rs`): whether its round goes to the log
//! instead of a SQLite commit ([`Txn::log`]), and how the logged rounds reach SQLite before any
//! statement of a later transaction ([`Txn::sql`]) or in the dispatcher's idle moments
//! ([`Txn::apply_logged`]), with how far SQLite holds the log stored alongside.

use std::sync::LazyLock;

use foldhash::{HashMap, HashMapExt};

use rusqlite::Connection;

use super::audit::{insert_audits, AuditRows};
use super::custody::WRITE_AT;
use super::multirow::MultiRow;
use super::record::Record;
use super::rows::{
    forget_acknowledged, insert_rows, segment_row, store_link_in, store_reservations, SegmentRow,
};
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
            && self.acks.borrow().is_empty()
            && matches!(self.tx.wrote(), Ok(false))
    }

    /// Makes this round durable by one append to the custody log instead of SQLite's commit,
    /// if it can: its changes are only queued envelopes, link positions, sequence blocks,
    /// acknowledgement points and audit rows, and nothing in it has written to SQLite yet.
    /// `Ok(true)`: the log took it, and it waits in `logged` for the next transaction (or the
    /// dispatcher's next idle moment) to write it.
    pub(super) fn log(&mut self) -> Result<bool> {
        // A node busy without a pause writes to SQLite every [`WRITE_AT`]th round, with all
        // the logged ones: what waits in the log stays small, and so does that commit.
        if self.custody.is_none()
            || self.logged.borrow().len() >= WRITE_AT
            || self.applying.get() > 0
            || self.tx.wrote()?
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
            acks: self.acks.borrow().clone(),
            audits: std::mem::take(&mut self.audits),
        };
        let Some(log) = self.custody.as_mut() else {
            self.audits = record.audits;
            return Ok(false);
        };
        match log.append(&record) {
            Ok(Some(end)) => {
                self.pending.clear();
                self.link_in.clear();
                self.acks.borrow_mut().clear();
                let mut points = self.logged_acks.borrow_mut();
                for (dest, upto) in &record.acks {
                    let point = points.entry(dest.clone()).or_default();
                    *point = (*point).max(*upto);
                }
                let mut logged = self.logged.borrow_mut();
                if logged.is_empty() {
                    self.logged_since.set(Some(std::time::Instant::now()));
                }
                logged.push((record, end));
                Ok(true)
            }
            Ok(None) => {
                // Too large for the log: the round commits to SQLite, audit rows and all.
                self.audits = record.audits;
                Ok(false)
            }
            Err(e) => Err(rusqlite::Error::ToSqlConversionFailure(
                format!("{}: {e}", log.path().display()).into(),
            )),
        }
    }

    /// Acknowledgement points (destination, acknowledged through): the segments they cover
    /// wholly, in logged rounds not yet written into SQLite, need never be. At a steady flow
    /// the next hop or client acknowledges a command well before its round reaches SQLite, so
    /// those writes carry only positions, points and audit rows, and no queue row is inserted
    /// and deleted again per command. The records stay in the log's file: if the node dies
    /// before SQLite has passed them, they are replayed, with the points logged after them
    /// (a client's stream), or sent again (a link's: the next hop skips them by link sequence,
    /// as it skips any resend after a lost acknowledgement, `link/acks.rs`).
    pub fn forget_logged<'d>(&self, points: impl IntoIterator<Item = (&'d str, u64)>) {
        let mut logged = self.logged.borrow_mut();
        if logged.len() <= self.applying.get() {
            return;
        }
        let covered = furthest(points);
        if covered.is_empty() {
            return;
        }
        for (record, _) in logged.iter_mut().skip(self.applying.get()) {
            record.segments.retain(|(dest, _, last, ..)| {
                covered.get(dest.as_str()).is_none_or(|upto| last > upto)
            });
        }
    }

    /// Writes the oldest logged rounds, up to `upto` of them in all, into this transaction:
    /// their segments, and of their link positions and sequence blocks only the last of each
    /// (a later round's supersedes an earlier one's), in one statement each.
    pub(super) fn apply_logged(&self, upto: usize) -> Result<()> {
        let conn = self.tx.conn()?;
        let logged = self.logged.borrow();
        let (from, to) = (self.applying.get(), upto.min(logged.len()));
        let records = || logged.iter().take(to).skip(from).map(|(record, _)| record);
        let rows: Vec<SegmentRow> = records()
            .flat_map(|record| &record.segments)
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
        // As if each round were written in turn: a later round's value wins.
        let link_in: Vec<(String, u64, u64)> = last_of(
            records()
                .flat_map(|record| &record.link_in)
                .map(|(key, last, epoch)| (key.as_str(), (*last, *epoch))),
        )
        .into_iter()
        .map(|(key, (last, epoch))| (key, last, epoch))
        .collect();
        let reservations: Vec<(String, u64)> = last_of(
            records()
                .flat_map(|record| &record.reservations)
                .map(|(dest, end)| (dest.as_str(), *end)),
        );
        store_link_in(conn, &link_in)?;
        store_reservations(conn, &reservations)?;
        let mut audits = AuditRows::default();
        for record in records() {
            audits.append(&record.audits);
        }
        insert_audits(conn, &audits)?;
        // Points after the segments: a point never covers a segment queued after it.
        let acks: Vec<(String, u64)> = furthest(
            records()
                .flat_map(|record| &record.acks)
                .map(|(dest, upto)| (dest.as_str(), *upto)),
        )
        .into_iter()
        .map(|(dest, upto)| (dest.to_string(), upto))
        .collect();
        forget_acknowledged(conn, &acks)?;
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
            self.tx.conn()?,
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
    /// does not are written first, so that the statement sees (and changes) them too, and so
    /// are the points this transaction acknowledged.
    pub(super) fn sql(&self) -> Result<&'a Connection> {
        if self.applying.get() < self.logged.borrow().len() {
            self.apply_logged(usize::MAX)?;
        }
        // And this round's acknowledgement points, so that it sees their rows gone.
        self.write_acks()?;
        self.tx.conn()
    }
}

/// Each destination's furthest point (a point never moves back).
fn furthest<'r>(points: impl IntoIterator<Item = (&'r str, u64)>) -> HashMap<&'r str, u64> {
    let mut furthest: HashMap<&str, u64> = HashMap::new();
    for (dest, upto) in points {
        let point = furthest.entry(dest).or_default();
        *point = (*point).max(upto);
    }
    furthest
}

/// Each key's last value, as storing them in turn would leave it.
fn last_of<'r, V>(values: impl IntoIterator<Item = (&'r str, V)>) -> Vec<(String, V)> {
    let last: HashMap<&str, V> = values.into_iter().collect();
    last.into_iter()
        .map(|(key, value)| (key.to_string(), value))
        .collect()
}
