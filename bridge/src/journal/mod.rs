//! The custody journal: every envelope this node is responsible for, in SQLite (WAL).
//!
//! A node *accepts* an envelope when the transaction that queues it towards its next hop
//! commits; only then is the previous hop acknowledged. A queued row is deleted only when the
//! next hop acknowledges it (link ack or client PUBACK) or when it expires. Rows are grouped
//! by destination (a [`Dest`]: the link up, a link down, a client's stream; see `dest.rs`) and numbered
//! per destination, which gives each link its go-back-N sequence and keeps order.
//!
//! The journal is owned by the dispatcher thread; all writes of one dispatcher round share one
//! transaction (group commit), so durability costs one WAL append per round, not per message.

mod audit;
mod backlog;
mod checkpoint;
mod custody;
mod deadletters;
mod dest;
mod hot;
mod logged;
mod multirow;
mod reader;
mod record;
mod rows;
mod schema;
pub mod segment;
mod txn;

use foldhash::{HashMap, HashMapExt};
use std::path::Path;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension};

pub use checkpoint::{Checkpointer, WalSpace};
pub(crate) use custody::WRITE_CHUNK;
pub use deadletters::{Dead, Ended, Resendable};
pub use dest::{Dest, Peer, Target, UnknownDest};
pub use reader::open_reader;
pub use segment::Queued;
pub use txn::Txn;

use checkpoint::WAL_LIMIT;
use hot::Hot;
use schema::{FORMAT, SCHEMA};

/// How hard a commit tries to reach the disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Durability {
    /// WAL with `synchronous=NORMAL`: a commit survives the process being killed (`kill -9`,
    /// crash, OOM) but the last commits may be lost if the machine loses power.
    #[default]
    Process,
    /// WAL with `synchronous=FULL`: every group commit is fsynced; survives power loss.
    Power,
}

/// A decoded segment: (destination, first sequence) and its entries.
type CachedSegment = ((String, u64), std::sync::Arc<Vec<Queued>>);

/// An envelope found expired while reading `dest` to send it: the reader skips it, and the
/// dispatcher drops it with an `expired` receipt.
pub struct Stale {
    /// Where it was queued.
    pub dest: Dest,
    /// The row.
    pub row: Queued,
}

/// Journal errors are SQLite errors; the dispatcher treats them as "custody not taken".
pub type Result<T> = rusqlite::Result<T>;

/// Decoded segments kept for reads that miss the hot tail (a backlog sent frame by frame
/// reads the same large segment many times).
const SEGMENT_CACHE: usize = 4;
/// Sequence numbers are reserved in blocks, so the `seq` table is written once per block
/// instead of in every commit. After a crash the unused rest of a block is skipped, which
/// links tolerate: every envelope names its predecessor (`p`), so skipped numbers are no gap.
const SEQ_BLOCK: u64 = 65_536;

/// The SQLite journal of one node.
pub struct Journal {
    conn: Connection,
    /// Next sequence number per destination (persisted in `seq`, so numbers are never reused
    /// even after every row of a destination has been deleted).
    next: HashMap<String, u64>,
    /// Persisted end of the reserved block per destination.
    reserved: HashMap<String, u64>,
    hot: HashMap<String, Hot>,
    /// What waits per queue, counted in memory for `/metrics` and the console.
    backlog: backlog::Backlog,
    /// Where commits report queue gauges and deliveries (none in tools reading a journal).
    stats: Option<crate::stats::Stats>,
    epoch: u64,
    /// Recently decoded segments: (dest, first_lseq) → entries, most recent last.
    segments: std::cell::RefCell<Vec<CachedSegment>>,
    /// The custody log, once [`Journal::keep_custody_log`] opened it.
    custody: Option<custody::CustodyLog>,
    /// Rounds the custody log holds that SQLite does not yet (their rows are in the hot
    /// tails meanwhile).
    logged: std::cell::RefCell<Vec<(record::Record, u64)>>,
    /// When the oldest of them was logged.
    logged_since: std::cell::Cell<Option<std::time::Instant>>,
    /// Where [`Journal::snapshot`]'s read transaction is.
    snapshot: std::cell::Cell<Snapshot>,
    /// The furthest acknowledgement point per destination in the logged rounds (kept until
    /// none waits; SQLite's own are never behind them once written).
    logged_acks: std::cell::RefCell<HashMap<String, u64>>,
}

/// Where [`Journal::snapshot`]'s read transaction is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Snapshot {
    /// No snapshot: each read is a transaction of its own.
    Off,
    /// Asked for; `BEGIN` runs with the first read.
    Wanted,
    /// Begun: `COMMIT` ends it.
    Begun,
}

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Journal> {
        let conn = Connection::open(path)?;
        // A new journal gets 2 KiB pages (an existing one keeps its own). A commit writes each
        // page it touched to the WAL in full, and a command touches about seven (its queue
        // segment, indexes, audit, acknowledgements). At 1,000 commands/s the 4 KiB default
        // wrote 14-23 KB per command per node and 2 KiB writes 8-15 KB, so checkpoints have less
        // to sync and a WAL write waits less behind them: the chain's p99 fell from 24-49 ms to
        // 12 ms. 1 KiB gave the same p99 but cost throughput in large batches, where each WAL
        // frame costs two `pwrite`s (BENCHMARKS.md, "The journal's page size").
        conn.pragma_update(None, "page_size", 2048)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.pragma_update(None, "cache_size", -65536)?; // 64 MiB page cache
        conn.pragma_update(None, "temp_store", "MEMORY")?;
        // The dispatcher uses about 30 statements; rusqlite keeps 16 by default, and a round
        // using more than that prepared some of them again every time.
        conn.set_prepared_statement_cache_capacity(64);
        // Checkpoints run on a helper thread (see `spawn_checkpointer`), not inside commits.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        // When the WAL is rewound after a full checkpoint, give the disk back beyond this.
        conn.pragma_update(None, "journal_size_limit", WAL_LIMIT as i64)?;
        // An existing journal must carry this build's format; only a new one is stamped.
        let existing: bool = conn.query_row(
            "SELECT count(*) > 0 FROM sqlite_master WHERE name = 'queue'",
            [],
            |r| r.get(0),
        )?;
        if existing {
            let format: Option<i64> = conn
                .query_row("SELECT value FROM meta WHERE key = 'format'", [], |r| {
                    r.get(0)
                })
                .optional()
                .unwrap_or(None);
            if format != Some(FORMAT) {
                let found = format.map_or("an unversioned format".to_string(), |f| {
                    format!("format {f}")
                });
                return Err(rusqlite::Error::InvalidParameterName(format!(
                    "journal is in {found}; this medlink reads format {FORMAT} only"
                )));
            }
        }
        conn.execute_batch(SCHEMA)?;
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('format', ?1)",
            [FORMAT],
        )?;
        let next = numbering(&conn)?;
        let reserved = next.clone();
        // The epoch names this journal's life: a journal that is replaced (disk swapped, data
        // dir wiped) restarts its link sequences at 1, and peers must not take those for
        // duplicates of the old journal's numbers.
        conn.execute(
            "INSERT OR IGNORE INTO meta(key, value) VALUES ('epoch', ?1)",
            [(rand::random::<u64>() >> 1) as i64],
        )?;
        let epoch = conn.query_row("SELECT value FROM meta WHERE key = 'epoch'", [], |r| {
            r.get::<_, i64>(0)
        })? as u64;
        let backlog = backlog::Backlog::load(&conn)?;
        Ok(Journal {
            conn,
            next,
            reserved,
            hot: HashMap::new(),
            backlog,
            stats: None,
            epoch,
            segments: Default::default(),
            custody: None,
            logged: Default::default(),
            logged_since: Default::default(),
            snapshot: std::cell::Cell::new(Snapshot::Off),
            logged_acks: Default::default(),
        })
    }

    /// Opens the custody log beside the journal at `path` (`custody.rs`) and takes it into
    /// use: rounds that only pass envelopes on are made durable by one append to it, and
    /// written into SQLite when the dispatcher is idle ([`Journal::write_logged`]) or at the
    /// next transaction's start. What a crash left in the log is written into SQLite here,
    /// before anything else reads the journal.
    pub fn keep_custody_log(&mut self, path: &Path, durability: Durability) -> Result<()> {
        let io = |e: std::io::Error| rusqlite::Error::ToSqlConversionFailure(e.into());
        let applied = custody_applied(&self.conn)?;
        let (log, records) = custody::CustodyLog::open(path, durability, applied).map_err(io)?;
        let replayed = records.len();
        self.custody = Some(log);
        self.logged = records.into();
        if replayed > 0 {
            self.write_logged()?;
            // What the log held is in SQLite now: number and count from there.
            self.next = numbering(&self.conn)?;
            self.reserved = self.next.clone();
            self.backlog = backlog::Backlog::load(&self.conn)?;
            self.hot.clear();
            tracing::info!(rounds = replayed, "custody log replayed into the journal");
        } else if let Some(log) = self.custody.as_mut() {
            // New records must belong to a generation SQLite has not marked applied.
            log.rewind().map_err(io)?;
        }
        Ok(())
    }

    /// Whether rounds wait in the custody log for SQLite.
    pub fn has_logged(&self) -> bool {
        !self.logged.borrow().is_empty()
    }

    /// Whether the rounds waiting in the custody log should reach SQLite at the dispatcher's
    /// next idle moment: two chunks of them wait ([`custody::WRITE_DUE`]), or the oldest has
    /// waited [`custody::WRITE_AFTER`] (since the last write, when one left some). Written one
    /// round at a time they would cost SQLite's commit per command again, only off the
    /// command's path; written fifty at a time, a commit carries fifty.
    pub fn logged_due(&self) -> bool {
        let since = self.logged_since.get();
        self.logged.borrow().len() >= custody::WRITE_DUE
            || (self.has_logged() && since.is_some_and(|t| t.elapsed() >= custody::WRITE_AFTER))
    }

    /// When the rounds waiting in the custody log are due for SQLite at an idle moment (the
    /// oldest's [`custody::WRITE_AFTER`] has passed), if any wait: a node that goes quiet
    /// writes them then, not at its next input, so that tools reading the journal from
    /// outside soon find them there too.
    pub fn logged_due_at(&self) -> Option<std::time::Instant> {
        let since = self.logged_since.get().filter(|_| self.has_logged())?;
        Some(since + custody::WRITE_AFTER)
    }

    /// Writes the oldest few of the rounds waiting in the custody log into SQLite
    /// ([`custody::WRITE_CHUNK`]), in one transaction: what the dispatcher does at an idle
    /// moment, short enough that a command arriving meanwhile hardly waits.
    pub fn write_some_logged(&mut self) -> Result<()> {
        self.write_oldest_logged(custody::WRITE_CHUNK)
    }

    /// Writes the rounds waiting in the custody log into SQLite, in one transaction.
    pub fn write_logged(&mut self) -> Result<()> {
        self.write_oldest_logged(usize::MAX)
    }

    /// Writes the oldest `n` rounds waiting in the custody log into SQLite, in one transaction.
    fn write_oldest_logged(&mut self, n: usize) -> Result<()> {
        if !self.has_logged() {
            return Ok(());
        }
        let tx = self.begin()?;
        tx.apply_logged(n)?;
        tx.commit()
    }

    /// Records which node owns this journal (for tools reading it, like `medlink trace`).
    pub fn set_owner(&mut self, node: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM owner", [])?;
        tx.execute("INSERT INTO owner(node) VALUES (?1)", [node])?;
        tx.commit()
    }

    /// Reports queue gauges and deliveries to `stats` from now on (each commit reports what it
    /// moved); what waits already is reported at once. `members` maps each service member to
    /// its service, whose group its commands are counted in.
    pub fn report_to(
        &mut self,
        stats: crate::stats::Stats,
        members: std::collections::HashMap<String, String>,
    ) {
        self.backlog.set_members(members);
        self.backlog.report_all(&stats);
        self.stats = Some(stats);
    }

    /// This journal's epoch (random, fixed for the journal's life).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Up to `limit` queued envelopes for `dest` with sequence above `after`, in order.
    pub fn read(&self, dest: &Dest, after: u64, limit: usize) -> Result<Vec<Queued>> {
        let dest = dest.as_str();
        // Every number ever given to `dest` is below `next` (a destination never numbered has
        // no entry): a lane that was never used, like most links' urgent and bulk lanes, costs
        // no query in each round's pump.
        match self.next.get(dest) {
            None => return Ok(Vec::new()),
            Some(&next) if after.saturating_add(1) >= next => return Ok(Vec::new()),
            Some(_) => {}
        }
        let hot = self.hot.get(dest);
        let mut out = Vec::new();
        // Below the hot tail, SQLite's rows first.
        if hot.is_none_or(|hot| after + 1 < hot.floor) {
            let mut stmt = self.reader()?.prepare_cached(
                "SELECT first_lseq FROM queue WHERE dest = ?1 AND last_lseq > ?2 ORDER BY first_lseq",
            )?;
            let mut rows = stmt.query(params![dest, after as i64])?;
            while let Some(row) = rows.next()? {
                let first = row.get::<_, i64>(0)? as u64;
                for entry in self.segment(dest, first)?.iter() {
                    if entry.lseq > after {
                        out.push(entry.clone());
                        if out.len() >= limit {
                            return Ok(out);
                        }
                    }
                }
            }
        }
        // Then the tail's, which include the rows the custody log holds and SQLite does not
        // yet: the newest, always in the tail (the log holds a few MiB; a tail keeps its
        // newest 48).
        if let Some(hot) = hot {
            let from = out.last().map_or(after, |q| q.lseq);
            out.extend(
                hot.rows
                    .range(from + 1..)
                    .take(limit - out.len())
                    .map(|(_, q)| q.clone()),
            );
        }
        Ok(out)
    }

    /// The decoded segment of `dest` starting at `first`, from the cache or SQLite. Segments
    /// are immutable (a rewrite inserts a new one), so cached copies never go stale; a deleted
    /// segment is simply not asked for again.
    fn segment(&self, dest: &str, first: u64) -> Result<std::sync::Arc<Vec<Queued>>> {
        let key = (dest.to_string(), first);
        let mut cache = self.segments.borrow_mut();
        if let Some(i) = cache.iter().position(|(k, _)| *k == key) {
            let hit = cache.remove(i);
            let entries = hit.1.clone();
            cache.push(hit);
            return Ok(entries);
        }
        let blob: Vec<u8> = self
            .reader()?
            .prepare_cached("SELECT entries FROM queue WHERE dest = ?1 AND first_lseq = ?2")?
            .query_row(params![dest, first as i64], |r| r.get(0))?;
        let entries = std::sync::Arc::new(decode_row(blob)?);
        if cache.len() >= SEGMENT_CACHE {
            cache.remove(0);
        }
        cache.push((key, entries.clone()));
        Ok(entries)
    }

    /// Lowest sequence still queued for `dest`, or the next one to be assigned if none.
    pub fn floor(&self, dest: &Dest) -> Result<u64> {
        let dest = dest.as_str();
        let stored = floor(self.reader()?, &self.next, dest)?;
        // Rows the custody log holds are not in SQLite yet.
        let logged = self
            .logged
            .borrow()
            .iter()
            .flat_map(|(r, _)| &r.segments)
            .filter(|(d, ..)| d == dest)
            .map(|(_, first, ..)| *first)
            .min();
        Ok(logged.map_or(stored, |l| l.min(stored)))
    }

    /// Runs `reads` in one read transaction: one snapshot of the journal, and one take of the
    /// WAL's read lock instead of one per statement. Each take is an `fcntl` lock and unlock on
    /// the shared-memory file, and the dispatcher's sending pass reads once per woken stream
    /// (four statements per long-poll): 12 % of the dispatcher's time in a push to 19,000
    /// long-polls went to those locks.
    ///
    /// The transaction begins with the first read that reaches SQLite ([`Journal::reader`]): a
    /// pass that reads only hot tails, as most do, costs SQLite nothing.
    pub fn snapshot<T>(&self, reads: impl FnOnce(&Journal) -> Result<T>) -> Result<T> {
        self.snapshot.set(Snapshot::Wanted);
        let read = reads(self);
        // A transaction that only read: its commit writes nothing, it ends it and frees the lock.
        let ended = match self.snapshot.replace(Snapshot::Off) {
            Snapshot::Begun => self
                .conn
                .prepare_cached("COMMIT")
                .and_then(|mut commit| commit.execute([]))
                .map(drop),
            _ => Ok(()),
        };
        let read = read?;
        ended?;
        Ok(read)
    }

    /// The connection for a read: inside [`Journal::snapshot`], its transaction begun.
    fn reader(&self) -> Result<&Connection> {
        if self.snapshot.get() == Snapshot::Wanted {
            self.conn.prepare_cached("BEGIN")?.execute([])?;
            self.snapshot.set(Snapshot::Begun);
        }
        Ok(&self.conn)
    }

    /// How far `dest` is acknowledged by its next hop or client.
    pub fn acked(&self, dest: &Dest) -> Result<u64> {
        let dest = dest.as_str();
        let stored = acked(self.reader()?, dest)?;
        // Points the custody log holds are not in SQLite yet.
        let logged = self.logged_acks.borrow().get(dest).copied();
        Ok(logged.map_or(stored, |l| l.max(stored)))
    }
}

pub(crate) fn acked(conn: &Connection, dest: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT upto FROM acked WHERE dest = ?1")?
        .query_row([dest], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

/// How far SQLite holds the custody log: the generation and the offset in it up to which its
/// records were written (`meta.custody_applied`, `meta.custody_applied_at`; none: 0, 0).
fn custody_applied(conn: &Connection) -> Result<(u64, u64)> {
    let meta = |key: &str| -> Result<u64> {
        let value: Option<i64> = conn
            .query_row("SELECT value FROM meta WHERE key = ?1", [key], |r| r.get(0))
            .optional()?;
        Ok(value.unwrap_or(0).max(0) as u64)
    };
    Ok((meta("custody_applied")?, meta("custody_applied_at")?))
}

fn decode_row(blob: Vec<u8>) -> Result<Vec<Queued>> {
    segment::decode(Bytes::from(blob)).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
    })
}

/// Next sequence number per destination: `seq.next` is the end of the last reserved block, and
/// numbering resumes there.
fn numbering(conn: &Connection) -> Result<HashMap<String, u64>> {
    let mut next = HashMap::new();
    let mut stmt = conn.prepare("SELECT dest, next FROM seq")?;
    let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
    for row in rows {
        let (dest, n) = row?;
        next.insert(dest, n as u64);
    }
    Ok(next)
}

fn floor(conn: &Connection, next: &HashMap<String, u64>, dest: &str) -> Result<u64> {
    let min: Option<i64> = conn
        .prepare_cached("SELECT min(first_lseq) FROM queue WHERE dest = ?1")?
        .query_row([dest], |r| r.get(0))?;
    Ok(min
        .map(|m| m as u64)
        .unwrap_or_else(|| next.get(dest).copied().unwrap_or(1)))
}

#[cfg(test)]
pub(crate) mod tests;
