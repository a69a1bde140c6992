//! One group transaction over the journal: everything a dispatcher round changes, committed
//! (and made durable) at once.

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

use super::backlog::Backlog;
use super::custody::CustodyLog;
use super::dest::{link_in_key, Dest, Peer};
use super::hot::{apply, Hot, HotChange};
use super::record::Record;
use super::rows::{
    forget_acknowledged, insert_rows, segment_row, store_link_in, store_reservations, SegmentRow,
};
use super::{acked, decode_row, floor, CachedSegment, Journal, Queued, Result, SEQ_BLOCK};
use crate::envelope::{now_ms, Head, Priority};
use crate::stats::{DeliveredBy, Stats};

/// A transaction begun and committed with cached statements: a round's write transaction.
/// `Connection::transaction` runs `BEGIN` and `COMMIT` through `execute_batch`, which parses
/// the text anew, and every round ran both: 2 % of a middle node's dispatcher at 1,000
/// commands a second. It begins with its first statement ([`CachedTx::conn`]): a round the
/// custody log takes, or one that only notes acknowledgements, runs none, and costs SQLite
/// nothing. Dropped before [`CachedTx::commit`] (or after a failed one), it rolls back.
pub(super) struct CachedTx<'a> {
    conn: &'a Connection,
    begun: std::cell::Cell<bool>,
}

impl<'a> CachedTx<'a> {
    /// A transaction that begins with its first statement.
    pub(super) fn lazy(conn: &'a Connection) -> Self {
        CachedTx {
            conn,
            begun: std::cell::Cell::new(false),
        }
    }

    /// The connection, the transaction begun.
    pub(super) fn conn(&self) -> Result<&'a Connection> {
        if !self.begun.get() {
            self.conn.prepare_cached("BEGIN")?.execute([])?;
            self.begun.set(true);
        }
        Ok(self.conn)
    }

    /// Whether a statement of this transaction has written.
    pub(super) fn wrote(&self) -> Result<bool> {
        Ok(self.begun.get()
            && self.conn.transaction_state(None)? == rusqlite::TransactionState::Write)
    }

    pub(super) fn commit(self) -> Result<()> {
        if self.begun.get() {
            self.conn.prepare_cached("COMMIT")?.execute([])?;
        }
        Ok(())
    }
}

impl Drop for CachedTx<'_> {
    fn drop(&mut self) {
        if self.begun.get() && !self.conn.is_autocommit() {
            let rolled_back = self
                .conn
                .prepare_cached("ROLLBACK")
                .and_then(|mut rollback| rollback.execute([]));
            if let Err(e) = rolled_back {
                tracing::error!(error = %e, "journal rollback failed");
            }
        }
    }
}

impl Journal {
    /// Starts a group transaction. Rounds the custody log took and SQLite has not yet are
    /// written into it before its first statement ([`Txn::sql`]), so everything it reads or
    /// changes in SQLite includes them.
    pub fn begin(&mut self) -> Result<Txn<'_>> {
        Ok(Txn {
            tx: CachedTx::lazy(&self.conn),
            dead: [0; 3],
            next: &mut self.next,
            reserved: &mut self.reserved,
            hot: &mut self.hot,
            backlog: &mut self.backlog,
            stats: self.stats.as_ref(),
            changes: Vec::new(),
            dirty: HashSet::new(),
            pending: HashMap::new(),
            link_in: Vec::new(),
            segments: &self.segments,
            audits: Default::default(),
            acks: Default::default(),
            custody: &mut self.custody,
            logged: &self.logged,
            logged_since: &self.logged_since,
            logged_acks: &self.logged_acks,
            applying: std::cell::Cell::new(0),
        })
    }
}

/// One group transaction. Dropping it without [`Txn::commit`] rolls everything back.
pub struct Txn<'a> {
    pub(super) tx: CachedTx<'a>,
    /// Dead letters kept in this transaction, by [`medlink_wire::DeadReason`].
    pub(super) dead: [u64; 3],
    pub(super) next: &'a mut HashMap<String, u64>,
    reserved: &'a mut HashMap<String, u64>,
    hot: &'a mut HashMap<String, Hot>,
    backlog: &'a mut Backlog,
    /// Where the backlog reports after the commit, if anywhere.
    stats: Option<&'a Stats>,
    changes: Vec<HotChange>,
    pub(super) dirty: HashSet<String>,
    /// Envelopes queued in this transaction, by destination, written as segments.
    pub(super) pending: HashMap<String, Vec<Queued>>,
    /// Link receive positions set in this transaction: `link_in` key, last, epoch.
    pub(super) link_in: Vec<(String, u64, u64)>,
    /// The custody log, if this journal keeps one (`custody.rs`).
    pub(super) custody: &'a mut Option<CustodyLog>,
    /// Rounds the custody log holds that SQLite does not yet.
    pub(super) logged: &'a std::cell::RefCell<Vec<(Record, u64)>>,
    /// When the oldest of them was logged.
    pub(super) logged_since: &'a std::cell::Cell<Option<std::time::Instant>>,
    /// The furthest acknowledgement point per destination in them.
    pub(super) logged_acks: &'a std::cell::RefCell<HashMap<String, u64>>,
    /// How many of the logged rounds, oldest first, this transaction wrote into SQLite
    /// ([`Txn::sql`], [`Txn::apply_logged`]): its commit stores how far the log is applied,
    /// forgets them, and rewinds the log once none is left.
    pub(super) applying: std::cell::Cell<usize>,
    /// The journal's decoded-segment cache, emptied when a segment is rewritten.
    segments: &'a std::cell::RefCell<Vec<CachedSegment>>,
    /// Audit rows of this transaction, inserted at commit (`audit.rs`).
    pub(super) audits: super::audit::AuditRows,
    /// Acknowledgement points of this transaction: destination, acknowledged through. Written
    /// at commit, or before any statement ([`Txn::sql`]), which then sees their rows gone.
    pub(super) acks: std::cell::RefCell<Vec<(String, u64)>>,
}

impl Txn<'_> {
    /// Last sequence committed from `peer` on its link into this node, and the epoch of the
    /// peer's journal it belongs to.
    pub fn link_in(&self, peer: &Peer, lane: Priority) -> Result<(u64, u64)> {
        let key = link_in_key(peer, lane);
        if let Some((_, last, epoch)) = self.link_in.iter().rev().find(|(k, ..)| *k == key) {
            return Ok((*last, *epoch));
        }
        Ok(self
            .sql()?
            .prepare_cached("SELECT last, epoch FROM link_in WHERE peer = ?1")?
            .query_row([key], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?
            .unwrap_or((0, 0)))
    }

    /// Lowest sequence still queued for `dest` (including this transaction's), or the next
    /// one to be assigned if none.
    pub fn floor(&mut self, dest: &Dest) -> Result<u64> {
        let dest = dest.as_str();
        self.flush_pending()?;
        floor(self.sql()?, self.next, dest)
    }

    /// Queued envelopes that expired at `now`, from at most `limit` segments.
    pub fn expired(&self, now: u64, limit: usize) -> Result<Vec<(Dest, Queued)>> {
        let mut stmt = self.sql()?.prepare_cached(
            "SELECT dest, entries FROM queue WHERE min_expiry IS NOT NULL AND min_expiry <= ?1 LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![now as i64, limit as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let name: String = row.get(0)?;
            let Ok(dest) = name.parse::<Dest>() else {
                tracing::error!(dest = %name.escape_debug(), "journal queue with an unknown name skipped");
                continue;
            };
            for entry in decode_row(row.get::<_, Vec<u8>>(1)?)? {
                if matches!(entry.expires_at, Some(e) if e <= now) {
                    out.push((dest.clone(), entry));
                }
            }
        }
        Ok(out)
    }

    /// Queues `body` for `dest`; returns its sequence number. The row is written at commit,
    /// together with everything else queued for `dest` in this transaction (one segment).
    pub fn enqueue(&mut self, dest: &Dest, env: &Head, body: Bytes) -> Result<u64> {
        let dest = dest.as_str();
        // Looked up before `entry`, which would allocate the name for every envelope.
        let lseq = match self.next.get_mut(dest) {
            Some(slot) => {
                *slot += 1;
                *slot - 1
            }
            None => {
                self.next.insert(dest.to_string(), 2);
                1
            }
        };
        if lseq >= self.reserved.get(dest).copied().unwrap_or(0) {
            self.dirty.insert(dest.to_string());
        }
        let entry = Queued {
            lseq,
            id: env.id.to_string(),
            expires_at: env.expires_at,
            body,
        };
        match self.pending.get_mut(dest) {
            Some(segment) => segment.push(entry.clone()),
            None => {
                self.pending.insert(dest.to_string(), vec![entry.clone()]);
            }
        }
        self.changes
            .push(HotChange::Insert(dest.to_string(), entry, env.created_at));
        Ok(lseq)
    }

    /// Writes the segments queued in this transaction, one per destination (a push to many
    /// recipients writes many, several to a statement).
    fn flush_pending(&mut self) -> Result<()> {
        if self.pending.is_empty() {
            return Ok(());
        }
        let pending = std::mem::take(&mut self.pending);
        self.insert_segments(pending.iter().map(|(d, e)| (d.as_str(), e.as_slice())))
    }

    /// Writes one segment per `(dest, entries)`, several to a statement (none for no entries).
    fn insert_segments<'e>(
        &self,
        segments: impl Iterator<Item = (&'e str, &'e [Queued])>,
    ) -> Result<()> {
        let rows: Vec<SegmentRow> = segments
            .filter_map(|(dest, entries)| segment_row(dest, entries))
            .collect();
        insert_rows(self.sql()?, &rows)
    }

    /// Forgets everything for `dest` up to and including `upto`; returns how many rows went.
    pub fn remove_through(&mut self, dest: &Dest, upto: u64) -> Result<usize> {
        self.changes
            .push(HotChange::RemoveThrough(dest.to_string(), upto, None));
        self.flush_pending()?;
        self.sql()?
            .prepare_cached(
                "DELETE FROM queue WHERE dest = ?1 AND first_lseq <= ?2 AND last_lseq <= ?2",
            )?
            .execute(params![dest.as_str(), upto as i64])
    }

    /// Forgets one envelope of `dest` by sequence (rewriting its segment without it).
    pub fn remove(&mut self, dest: &Dest, lseq: u64) -> Result<bool> {
        let dest = dest.as_str();
        self.flush_pending()?;
        self.changes.push(HotChange::Remove(dest.to_string(), lseq));
        // A segment of one envelope is deleted without reading it back.
        let single = self
            .sql()?
            .prepare_cached(
                "DELETE FROM queue WHERE dest = ?1 AND first_lseq = ?2 AND last_lseq = ?2",
            )?
            .execute(params![dest, lseq as i64])?;
        if single > 0 {
            return Ok(true);
        }
        Ok(self.cut(dest, lseq)?.is_some())
    }

    /// Takes one envelope of `dest` out by sequence: it is forgotten there, and returned.
    pub fn take(&mut self, dest: &Dest, lseq: u64) -> Result<Option<Queued>> {
        let dest = dest.as_str();
        self.flush_pending()?;
        self.changes.push(HotChange::Remove(dest.to_string(), lseq));
        self.cut(dest, lseq)
    }

    /// Rewrites the segment of `dest` holding `lseq` without it; returns the entry.
    fn cut(&mut self, dest: &str, lseq: u64) -> Result<Option<Queued>> {
        let found = self
            .sql()?
            .prepare_cached(
                "DELETE FROM queue WHERE dest = ?1 AND first_lseq <= ?2 AND last_lseq >= ?2
                 RETURNING entries",
            )?
            .query_row(params![dest, lseq as i64], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        let Some(blob) = found else {
            return Ok(None);
        };
        // The rewrite keeps the segment's key when the first entry stays: forget cached copies.
        self.segments.borrow_mut().clear();
        let (taken, rest): (Vec<Queued>, Vec<Queued>) =
            decode_row(blob)?.into_iter().partition(|e| e.lseq == lseq);
        self.insert_segments(std::iter::once((dest, rest.as_slice())))?;
        Ok(taken.into_iter().next())
    }

    /// About how many envelopes are queued for `dest`: the entries of its segments, counting
    /// those of a partly acknowledged or rewritten segment that are gone. For operators' logs.
    pub fn queued(&mut self, dest: &Dest) -> Result<u64> {
        self.flush_pending()?;
        let n: i64 = self
            .sql()?
            .prepare_cached(
                "SELECT coalesce(sum(last_lseq - first_lseq + 1), 0) FROM queue WHERE dest = ?1",
            )?
            .query_row([dest.as_str()], |r| r.get(0))?;
        Ok(n.max(0) as u64)
    }

    /// How far `dest` is acknowledged by its next hop or client.
    pub fn acked(&self, dest: &Dest) -> Result<u64> {
        let dest = dest.as_str();
        acked(self.sql()?, dest)
    }

    /// Forgets `dest` up to `upto`, taken by `by`, and stores that it is acknowledged that
    /// far. Entries of a partly acknowledged segment stay on disk; the stored point tells
    /// readers (and the expiry sweep) to skip them.
    pub fn acknowledge(&mut self, dest: &Dest, upto: u64, by: DeliveredBy) -> Result<()> {
        self.acknowledge_all(&[(dest.clone(), upto, by)])
    }

    /// [`Txn::acknowledge`] for many destinations at once (a round's acknowledged client
    /// streams: one per recipient of a push). The points are written at commit, several to a
    /// statement, or go to the custody log with the round (`logged.rs`); rounds still in the
    /// log drop what they cover at once.
    pub fn acknowledge_all(&mut self, acks: &[(Dest, u64, DeliveredBy)]) -> Result<()> {
        let mut staged = self.acks.borrow_mut();
        for (dest, upto, by) in acks {
            self.changes
                .push(HotChange::RemoveThrough(dest.to_string(), *upto, Some(*by)));
            staged.push((dest.to_string(), *upto));
        }
        drop(staged);
        self.forget_logged(acks.iter().map(|(dest, upto, _)| (dest.as_str(), *upto)));
        Ok(())
    }

    /// Writes the staged acknowledgement points.
    pub(super) fn write_acks(&self) -> Result<()> {
        let staged = self.acks.take();
        if staged.is_empty() {
            return Ok(());
        }
        forget_acknowledged(self.tx.conn()?, &staged)
    }

    /// Records that the client-chosen id was accepted; false if it already was (a resend).
    pub fn first_acceptance(&mut self, id: &str, now: u64) -> Result<bool> {
        Ok(self
            .sql()?
            .prepare_cached("INSERT OR IGNORE INTO accepted(id, at) VALUES (?1, ?2)")?
            .execute(params![id, now as i64])?
            > 0)
    }

    /// Drops idempotency records older than `before` and reply expectations past their
    /// time (Unix ms).
    ///
    /// `accepted` holds a week of ids (millions at a busy root) and has no index on `at`: a
    /// `WHERE at < ?` scanned all of them, on the dispatcher, every minute (65 ms per 2 million
    /// rows). Rows are appended in time order, so the expired ones are a prefix in rowid order:
    /// the walk stops at the first record still in the window, and costs what it deletes. A
    /// record written while the clock was set back waits until the records before it expire.
    pub fn prune_accepted(&mut self, before: u64, now: u64) -> Result<usize> {
        self.sql()?
            .prepare_cached("DELETE FROM awaiting_reply WHERE until < ?1")?
            .execute([now as i64])?;
        self.sql()?
            .prepare_cached(
                "DELETE FROM accepted WHERE rowid < coalesce(
                    (SELECT rowid FROM accepted WHERE at >= ?1 ORDER BY rowid LIMIT 1),
                    (SELECT max(rowid) + 1 FROM accepted))",
            )?
            .execute([before as i64])
    }

    /// Remembers that a reply to `key` (`<client>/<id>`) owes `origin`'s sender a receipt.
    pub fn await_reply(&mut self, key: &str, origin: &[u8], until: u64) -> Result<()> {
        self.sql()?
            .prepare_cached(
                "INSERT OR REPLACE INTO awaiting_reply(key, origin, until) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, origin, until as i64])?;
        Ok(())
    }

    /// Takes the command a reply to `key` answers, if its sender wants a `replied` receipt.
    pub fn take_awaited(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        let origin = self
            .sql()?
            .prepare_cached("SELECT origin FROM awaiting_reply WHERE key = ?1")?
            .query_row([key], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        if origin.is_some() {
            self.sql()?
                .prepare_cached("DELETE FROM awaiting_reply WHERE key = ?1")?
                .execute([key])?;
        }
        Ok(origin)
    }

    /// Stores the last sequence committed from `peer` and its journal's epoch.
    pub fn set_link_in(
        &mut self,
        (peer, lane): (&Peer, Priority),
        last: u64,
        epoch: u64,
    ) -> Result<()> {
        let peer = link_in_key(peer, lane);
        // Written at the commit, with the round's segments: a round that only passes envelopes
        // on then goes to the custody log whole.
        match self.link_in.iter_mut().find(|(k, ..)| *k == peer) {
            Some(slot) => *slot = (peer, last, epoch),
            None => self.link_in.push((peer, last, epoch)),
        }
        Ok(())
    }

    /// Writes the staged receive positions.
    fn write_link_in(&mut self) -> Result<()> {
        if self.link_in.is_empty() {
            return Ok(());
        }
        let staged = std::mem::take(&mut self.link_in);
        store_link_in(self.sql()?, &staged)
    }

    /// Up to `n` queues of `group`'s `lane` whose first in line is oldest, oldest first:
    /// (queue, the `created_at` of its first in line, how many wait there).
    pub fn oldest_queues(
        &self,
        group: &crate::stats::QueueGroup,
        lane: Priority,
        n: usize,
    ) -> Vec<(Dest, u64, usize)> {
        self.backlog
            .oldest(&(group.clone(), lane), n)
            .into_iter()
            .filter_map(|(d, c, k)| Some((d.parse().ok()?, c, k)))
            .collect()
    }

    /// The first `n` committed envelopes waiting in `dest`, in order (for operators; reads
    /// SQLite, not the hot tail).
    pub fn peek(&self, dest: &Dest, n: usize) -> Result<Vec<Queued>> {
        let floor = acked(self.sql()?, dest.as_str())?;
        let mut stmt = self.sql()?.prepare_cached(
            "SELECT entries FROM queue WHERE dest = ?1 AND last_lseq > ?2 ORDER BY first_lseq",
        )?;
        let mut rows = stmt.query(params![dest.as_str(), floor as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            for entry in decode_row(row.get(0)?)? {
                if entry.lseq > floor {
                    out.push(entry);
                    if out.len() >= n {
                        return Ok(out);
                    }
                }
            }
        }
        Ok(out)
    }

    /// Commits the group. A failure is counted (`medlink_journal_commit_failures_total`).
    pub fn commit(mut self) -> Result<()> {
        let stats = self.stats;
        let failed = |e| {
            if let Some(stats) = stats {
                stats.commit_failed();
            }
            e
        };
        if self.writes_nothing() {
            // A round that changed nothing (a peer's `ack` kept for later, an empty tick): its
            // commit only ends the transaction, and rounds in the custody log stay there.
        } else if !self.log().map_err(failed)? {
            // Each write below goes through `Txn::sql`: rounds waiting in the custody log go
            // into this commit before this round's rows. A commit that only writes some of
            // them (`Journal::write_some_logged`) writes nothing else, and leaves the rest.
            self.flush_pending().map_err(failed)?;
            self.flush_audit().map_err(failed)?;
            self.write_reservations().map_err(failed)?;
            self.write_link_in().map_err(failed)?;
            if !self.acks.borrow().is_empty() {
                self.sql().map_err(failed)?; // writes the acknowledgement points
            }
            if self.applying.get() > 0 {
                self.mark_applied().map_err(failed)?;
            }
        }
        self.tx.commit().map_err(failed)?;
        if self.applying.get() > 0 {
            let mut logged = self.logged.borrow_mut();
            logged.drain(..self.applying.get());
            if logged.is_empty() {
                self.logged_since.set(None);
                self.logged_acks.borrow_mut().clear();
                CustodyLog::rewind_or_stop(self.custody);
            } else {
                // The rest wait a chunk or their own while, not the written ones'.
                self.logged_since.set(Some(std::time::Instant::now()));
            }
        }
        for dest in self.dirty {
            let end = self.next[&dest] + SEQ_BLOCK;
            self.reserved.insert(dest, end);
        }
        let now = now_ms();
        for change in self.changes {
            self.backlog.apply(&change, now);
            apply(self.hot, change);
        }
        if let Some(stats) = self.stats {
            self.backlog.report(stats);
            stats.dead_letters(self.dead);
        }
        Ok(())
    }

    /// Stores the end of a new block of sequence numbers for each destination that needs one.
    fn write_reservations(&self) -> Result<()> {
        if self.dirty.is_empty() {
            return Ok(());
        }
        store_reservations(self.sql()?, &self.reservations())
    }

    /// The end of a new block of sequence numbers for each destination that needs one.
    pub(super) fn reservations(&self) -> Vec<(String, u64)> {
        self.dirty
            .iter()
            .map(|dest| (dest.clone(), self.next[dest] + SEQ_BLOCK))
            .collect()
    }
}
