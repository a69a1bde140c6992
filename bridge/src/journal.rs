//! The custody journal: every envelope this node is responsible for, in SQLite (WAL).
//!
//! A node *accepts* an envelope when the transaction that queues it towards its next hop
//! commits; only then is the previous hop acknowledged. A queued row is deleted only when the
//! next hop acknowledges it (link ack or client PUBACK) or when it expires. Rows are grouped
//! by destination (`up`, `down:<child>`, `local:<client>`, `receipts:<client>`) and numbered
//! per destination, which gives each link its go-back-N sequence and keeps order.
//!
//! The journal is owned by the dispatcher thread; all writes of one dispatcher round share one
//! transaction (group commit), so durability costs one WAL append per round, not per message.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;

use bytes::Bytes;
use rusqlite::{params, Connection, OptionalExtension, Transaction};

use crate::envelope::Envelope;

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

/// On-disk format of the journal (`meta.format`).
const FORMAT: i64 = 3;

/// Journal errors are SQLite errors; the dispatcher treats them as "custody not taken".
pub type Result<T> = rusqlite::Result<T>;

/// A queued envelope read back for sending.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Per-destination sequence.
    pub lseq: u64,
    /// Envelope id.
    pub id: String,
    /// Expiry, Unix ms.
    pub expires_at: Option<u64>,
    /// Envelope JSON.
    pub body: Bytes,
}

/// Most rows and bytes kept in memory per destination; beyond that, sending reads SQLite.
const HOT_LIMIT: usize = 64 * 1024;
const HOT_BYTES: usize = 64 * 1024 * 1024;
/// Decoded segments kept for reads that miss the hot tail (a backlog sent frame by frame
/// reads the same large segment many times).
const SEGMENT_CACHE: usize = 4;
/// Sequence numbers are reserved in blocks, so the `seq` table is written once per block
/// instead of in every commit. After a crash the unused rest of a block is skipped, which
/// links tolerate: every envelope names its predecessor (`p`), so skipped numbers are no gap.
const SEQ_BLOCK: u64 = 65_536;

/// The committed tail of one destination's queue, kept in memory so that sending does not
/// read back what was just written. Every committed row with `lseq >= floor` is in `rows`.
#[derive(Debug, Default)]
struct Hot {
    floor: u64,
    rows: BTreeMap<u64, Queued>,
    bytes: usize,
}

/// A change to apply to the hot tails once the transaction commits.
enum HotChange {
    Insert(String, Queued),
    RemoveThrough(String, u64),
    Remove(String, u64),
}

/// The SQLite journal of one node.
pub struct Journal {
    conn: Connection,
    /// Next sequence number per destination (persisted in `seq`, so numbers are never reused
    /// even after every row of a destination has been deleted).
    next: HashMap<String, u64>,
    /// Persisted end of the reserved block per destination.
    reserved: HashMap<String, u64>,
    hot: HashMap<String, Hot>,
    epoch: u64,
    /// Recently decoded segments: (dest, first_lseq) → entries, most recent last.
    segments: std::cell::RefCell<Vec<CachedSegment>>,
}

const SCHEMA: &str = "
-- One row per segment: consecutive envelopes for one destination (see segment.rs).
CREATE TABLE IF NOT EXISTS queue(
    rid INTEGER PRIMARY KEY,
    dest TEXT NOT NULL,
    first_lseq INTEGER NOT NULL,
    last_lseq INTEGER NOT NULL,
    min_expiry INTEGER,
    entries BLOB NOT NULL
);
CREATE UNIQUE INDEX IF NOT EXISTS queue_dest ON queue(dest, first_lseq);
CREATE INDEX IF NOT EXISTS queue_expiry ON queue(min_expiry) WHERE min_expiry IS NOT NULL;
CREATE TABLE IF NOT EXISTS seq(dest TEXT PRIMARY KEY, next INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS link_in(
    peer TEXT PRIMARY KEY,
    last INTEGER NOT NULL,
    epoch INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value INTEGER NOT NULL);
-- How far each destination is acknowledged by its next hop or client.
CREATE TABLE IF NOT EXISTS acked(dest TEXT PRIMARY KEY, upto INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS accepted(id TEXT PRIMARY KEY, at INTEGER NOT NULL);
-- Commands delivered here whose sender wants a `replied` receipt: `<client>/<id>` → the
-- command (without params), until its expiry or 7 days.
CREATE TABLE IF NOT EXISTS awaiting_reply(
    key TEXT PRIMARY KEY,
    origin BLOB NOT NULL,
    until INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS audit(
    at INTEGER NOT NULL,
    id TEXT NOT NULL,
    kind TEXT NOT NULL,
    from_node TEXT NOT NULL,
    from_client TEXT NOT NULL,
    to_node TEXT NOT NULL,
    to_client TEXT NOT NULL,
    cmd TEXT NOT NULL,
    hops INTEGER NOT NULL,
    decision TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS audit_at ON audit(at);
CREATE INDEX IF NOT EXISTS audit_id ON audit(id);
-- The node this journal belongs to (for tools reading it, like `medlink trace`).
CREATE TABLE IF NOT EXISTS owner(node TEXT NOT NULL);
";

impl Journal {
    /// Opens (creating if needed) the journal at `path`.
    pub fn open(path: &Path, durability: Durability) -> Result<Journal> {
        let conn = Connection::open(path)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        let sync = match durability {
            Durability::Process => "NORMAL",
            Durability::Power => "FULL",
        };
        conn.pragma_update(None, "synchronous", sync)?;
        conn.pragma_update(None, "busy_timeout", 5000)?;
        conn.pragma_update(None, "cache_size", -65536)?; // 64 MiB page cache
        conn.pragma_update(None, "temp_store", "MEMORY")?;
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
        // `seq.next` is the end of the last reserved block: numbering resumes there.
        let mut next = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT dest, next FROM seq")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            for row in rows {
                let (dest, n) = row?;
                next.insert(dest, n as u64);
            }
        }
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
        Ok(Journal {
            conn,
            next,
            reserved,
            hot: HashMap::new(),
            epoch,
            segments: Default::default(),
        })
    }

    /// Records which node owns this journal (for tools reading it, like `medlink trace`).
    pub fn set_owner(&mut self, node: &str) -> Result<()> {
        let tx = self.conn.transaction()?;
        tx.execute("DELETE FROM owner", [])?;
        tx.execute("INSERT INTO owner(node) VALUES (?1)", [node])?;
        tx.commit()
    }

    /// This journal's epoch (random, fixed for the journal's life).
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Starts a thread that checkpoints the WAL into the database every `period`, so the
    /// dispatcher's commits never pay for a checkpoint (and its fsync) themselves. The thread
    /// stops when the returned handle is dropped.
    pub fn spawn_checkpointer(path: &Path, period: std::time::Duration) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        let path = path.to_path_buf();
        conn.pragma_update(None, "busy_timeout", 5000)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let wal = {
                    let mut p = path.clone().into_os_string();
                    p.push("-wal");
                    std::path::PathBuf::from(p)
                };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    // PASSIVE never waits for the dispatcher, but under a sustained stream of
                    // commits it never finishes either, and the WAL would grow without bound.
                    // Past the limit a RESTART checkpoint makes the dispatcher wait (briefly)
                    // so the WAL can be rewound and truncated.
                    // The PASSIVE pass first copies nearly everything without blocking anyone,
                    // so the RESTART that follows holds the dispatcher only for the remainder.
                    let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LIMIT);
                    let modes: &[&str] = if big {
                        &["PASSIVE", "RESTART"]
                    } else {
                        &["PASSIVE"]
                    };
                    for mode in modes {
                        let sql = format!("PRAGMA wal_checkpoint({mode})");
                        if let Err(e) = conn.query_row(&sql, [], |_| Ok(())) {
                            tracing::warn!(error = %e, mode, "WAL checkpoint failed");
                        }
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer { _stop: stop })
    }

    /// Starts a group transaction.
    pub fn begin(&mut self) -> Result<Txn<'_>> {
        Ok(Txn {
            tx: self.conn.transaction()?,
            next: &mut self.next,
            reserved: &mut self.reserved,
            hot: &mut self.hot,
            changes: Vec::new(),
            dirty: HashSet::new(),
            pending: HashMap::new(),
            segments: &self.segments,
        })
    }

    /// Up to `limit` queued envelopes for `dest` with sequence above `after`, in order.
    pub fn read(&self, dest: &str, after: u64, limit: usize) -> Result<Vec<Queued>> {
        if let Some(hot) = self.hot.get(dest) {
            if after + 1 >= hot.floor {
                return Ok(hot
                    .rows
                    .range(after + 1..)
                    .take(limit)
                    .map(|(_, q)| q.clone())
                    .collect());
            }
        }
        let mut stmt = self.conn.prepare_cached(
            "SELECT first_lseq FROM queue WHERE dest = ?1 AND last_lseq > ?2 ORDER BY first_lseq",
        )?;
        let mut rows = stmt.query(params![dest, after as i64])?;
        let mut out = Vec::new();
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
            .conn
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
    pub fn floor(&self, dest: &str) -> Result<u64> {
        floor(&self.conn, &self.next, dest)
    }

    /// How far `dest` is acknowledged by its next hop or client.
    pub fn acked(&self, dest: &str) -> Result<u64> {
        acked(&self.conn, dest)
    }
}

fn acked(conn: &Connection, dest: &str) -> Result<u64> {
    Ok(conn
        .prepare_cached("SELECT upto FROM acked WHERE dest = ?1")?
        .query_row([dest], |r| r.get::<_, i64>(0))
        .optional()?
        .unwrap_or(0) as u64)
}

fn decode_row(blob: Vec<u8>) -> Result<Vec<Queued>> {
    crate::segment::decode(Bytes::from(blob)).map_err(|e| {
        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Blob, e.into())
    })
}

fn floor(conn: &Connection, next: &HashMap<String, u64>, dest: &str) -> Result<u64> {
    let min: Option<i64> = conn.query_row(
        "SELECT min(first_lseq) FROM queue WHERE dest = ?1",
        [dest],
        |r| r.get(0),
    )?;
    Ok(min
        .map(|m| m as u64)
        .unwrap_or_else(|| next.get(dest).copied().unwrap_or(1)))
}

/// WAL size beyond which checkpoints wait for the dispatcher so the WAL can be rewound.
const WAL_LIMIT: u64 = 128 * 1024 * 1024;

/// Keeps the checkpoint thread running; dropping it stops the thread.
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

/// One group transaction. Dropping it without [`Txn::commit`] rolls everything back.
pub struct Txn<'a> {
    tx: Transaction<'a>,
    next: &'a mut HashMap<String, u64>,
    reserved: &'a mut HashMap<String, u64>,
    hot: &'a mut HashMap<String, Hot>,
    changes: Vec<HotChange>,
    dirty: HashSet<String>,
    /// Envelopes queued in this transaction, by destination, written as segments.
    pending: HashMap<String, Vec<Queued>>,
    /// The journal's decoded-segment cache, emptied when a segment is rewritten.
    segments: &'a std::cell::RefCell<Vec<CachedSegment>>,
}

impl Txn<'_> {
    /// Last sequence committed from `peer` on its link into this node, and the epoch of the
    /// peer's journal it belongs to.
    pub fn link_in(&self, peer: &str) -> Result<(u64, u64)> {
        Ok(self
            .tx
            .prepare_cached("SELECT last, epoch FROM link_in WHERE peer = ?1")?
            .query_row([peer], |r| {
                Ok((r.get::<_, i64>(0)? as u64, r.get::<_, i64>(1)? as u64))
            })
            .optional()?
            .unwrap_or((0, 0)))
    }

    /// Lowest sequence still queued for `dest` (including this transaction's), or the next
    /// one to be assigned if none.
    pub fn floor(&mut self, dest: &str) -> Result<u64> {
        self.flush_pending()?;
        floor(&self.tx, self.next, dest)
    }

    /// Queued envelopes that expired at `now`, from at most `limit` segments.
    pub fn expired(&self, now: u64, limit: usize) -> Result<Vec<(String, Queued)>> {
        let mut stmt = self.tx.prepare_cached(
            "SELECT dest, entries FROM queue WHERE min_expiry IS NOT NULL AND min_expiry <= ?1 LIMIT ?2",
        )?;
        let mut rows = stmt.query(params![now as i64, limit as i64])?;
        let mut out = Vec::new();
        while let Some(row) = rows.next()? {
            let dest: String = row.get(0)?;
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
    pub fn enqueue(&mut self, dest: &str, env: &Envelope, body: Bytes) -> Result<u64> {
        let slot = self.next.entry(dest.to_string()).or_insert(1);
        let lseq = *slot;
        *slot += 1;
        if lseq >= self.reserved.get(dest).copied().unwrap_or(0) {
            self.dirty.insert(dest.to_string());
        }
        let entry = Queued {
            lseq,
            id: env.id.clone(),
            expires_at: env.expires_at,
            body,
        };
        self.pending
            .entry(dest.to_string())
            .or_default()
            .push(entry.clone());
        self.changes
            .push(HotChange::Insert(dest.to_string(), entry));
        Ok(lseq)
    }

    fn insert_segment(&self, dest: &str, entries: &[Queued]) -> Result<()> {
        let (Some(first), Some(last)) = (entries.first(), entries.last()) else {
            return Ok(());
        };
        let min_expiry = entries.iter().filter_map(|e| e.expires_at).min();
        self.tx
            .prepare_cached(
                "INSERT INTO queue(dest, first_lseq, last_lseq, min_expiry, entries)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                dest,
                first.lseq as i64,
                last.lseq as i64,
                min_expiry.map(|v| v as i64),
                crate::segment::encode(entries)
            ])?;
        Ok(())
    }

    /// Writes the segments queued in this transaction, one per destination.
    fn flush_pending(&mut self) -> Result<()> {
        let pending = std::mem::take(&mut self.pending);
        for (dest, entries) in &pending {
            self.insert_segment(dest, entries)?;
        }
        Ok(())
    }

    /// Forgets everything for `dest` up to and including `upto`; returns how many rows went.
    pub fn remove_through(&mut self, dest: &str, upto: u64) -> Result<usize> {
        self.changes
            .push(HotChange::RemoveThrough(dest.to_string(), upto));
        self.flush_pending()?;
        // A segment only partly acknowledged stays until the rest is: after a restart its
        // acknowledged part is sent again and the receiver drops it by sequence number.
        self.tx
            .prepare_cached("DELETE FROM queue WHERE dest = ?1 AND last_lseq <= ?2")?
            .execute(params![dest, upto as i64])
    }

    /// Forgets one envelope of `dest` by sequence (rewriting its segment without it).
    pub fn remove(&mut self, dest: &str, lseq: u64) -> Result<bool> {
        self.flush_pending()?;
        self.changes.push(HotChange::Remove(dest.to_string(), lseq));
        // A segment of one envelope is deleted without reading it back.
        let single = self
            .tx
            .prepare_cached(
                "DELETE FROM queue WHERE dest = ?1 AND first_lseq = ?2 AND last_lseq = ?2",
            )?
            .execute(params![dest, lseq as i64])?;
        if single > 0 {
            return Ok(true);
        }
        let found = self
            .tx
            .prepare_cached(
                "DELETE FROM queue WHERE dest = ?1 AND first_lseq <= ?2 AND last_lseq >= ?2
                 RETURNING entries",
            )?
            .query_row(params![dest, lseq as i64], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        let Some(blob) = found else {
            return Ok(false);
        };
        // The rewrite keeps the segment's key when the first entry stays: forget cached copies.
        self.segments.borrow_mut().clear();
        let entries = decode_row(blob)?;
        let before = entries.len();
        let rest: Vec<Queued> = entries.into_iter().filter(|e| e.lseq != lseq).collect();
        self.insert_segment(dest, &rest)?;
        Ok(rest.len() < before)
    }

    /// How far `dest` is acknowledged by its next hop or client.
    pub fn acked(&self, dest: &str) -> Result<u64> {
        acked(&self.tx, dest)
    }

    /// Forgets `dest` up to `upto` and stores that it is acknowledged that far. Entries of a
    /// partly acknowledged segment stay on disk; the stored point tells readers (and the
    /// expiry sweep) to skip them.
    pub fn acknowledge(&mut self, dest: &str, upto: u64) -> Result<()> {
        self.remove_through(dest, upto)?;
        self.tx
            .prepare_cached(
                "INSERT INTO acked(dest, upto) VALUES (?1, ?2)
                 ON CONFLICT(dest) DO UPDATE SET upto = max(upto, excluded.upto)",
            )?
            .execute(params![dest, upto as i64])?;
        Ok(())
    }

    /// Records that the client-chosen id was accepted; false if it already was (a resend).
    pub fn first_acceptance(&mut self, id: &str, now: u64) -> Result<bool> {
        Ok(self
            .tx
            .prepare_cached("INSERT OR IGNORE INTO accepted(id, at) VALUES (?1, ?2)")?
            .execute(params![id, now as i64])?
            > 0)
    }

    /// Drops idempotency records older than `before` and reply expectations past their
    /// time (Unix ms).
    pub fn prune_accepted(&mut self, before: u64, now: u64) -> Result<usize> {
        self.tx
            .prepare_cached("DELETE FROM awaiting_reply WHERE until < ?1")?
            .execute([now as i64])?;
        self.tx
            .prepare_cached("DELETE FROM accepted WHERE at < ?1")?
            .execute([before as i64])
    }

    /// Remembers that a reply to `key` (`<client>/<id>`) owes `origin`'s sender a receipt.
    pub fn await_reply(&mut self, key: &str, origin: &[u8], until: u64) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT OR REPLACE INTO awaiting_reply(key, origin, until) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![key, origin, until as i64])?;
        Ok(())
    }

    /// Takes the command a reply to `key` answers, if its sender wants a `replied` receipt.
    pub fn take_awaited(&mut self, key: &str) -> Result<Option<Vec<u8>>> {
        let origin = self
            .tx
            .prepare_cached("SELECT origin FROM awaiting_reply WHERE key = ?1")?
            .query_row([key], |r| r.get::<_, Vec<u8>>(0))
            .optional()?;
        if origin.is_some() {
            self.tx
                .prepare_cached("DELETE FROM awaiting_reply WHERE key = ?1")?
                .execute([key])?;
        }
        Ok(origin)
    }

    /// Stores the last sequence committed from `peer` and its journal's epoch.
    pub fn set_link_in(&mut self, peer: &str, last: u64, epoch: u64) -> Result<()> {
        self.tx
            .prepare_cached(
                "INSERT INTO link_in(peer, last, epoch) VALUES (?1, ?2, ?3)
                 ON CONFLICT(peer) DO UPDATE SET last = excluded.last, epoch = excluded.epoch",
            )?
            .execute(params![peer, last as i64, epoch as i64])?;
        Ok(())
    }

    /// Appends an audit record of a routing decision.
    pub fn audit(&mut self, env: &Envelope, at: u64, decision: &str) -> Result<()> {
        let kind = match env.kind {
            crate::envelope::Kind::Cmd => "cmd",
            crate::envelope::Kind::Receipt => "receipt",
        };
        self.tx
            .prepare_cached(
                "INSERT INTO audit(at, id, kind, from_node, from_client, to_node, to_client, cmd, hops, decision)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                at as i64,
                env.id,
                kind,
                env.from.node,
                env.from.client,
                env.to.node,
                env.to.client,
                env.cmd,
                env.hops,
                decision
            ])?;
        Ok(())
    }

    /// Commits the group.
    pub fn commit(mut self) -> Result<()> {
        self.flush_pending()?;
        {
            let mut stmt = self.tx.prepare_cached(
                "INSERT INTO seq(dest, next) VALUES (?1, ?2)
                 ON CONFLICT(dest) DO UPDATE SET next = excluded.next",
            )?;
            for dest in &self.dirty {
                let end = self.next[dest] + SEQ_BLOCK;
                stmt.execute(params![dest, end as i64])?;
            }
        }
        self.tx.commit()?;
        for dest in self.dirty {
            let end = self.next[&dest] + SEQ_BLOCK;
            self.reserved.insert(dest, end);
        }
        for change in self.changes {
            apply(self.hot, change);
        }
        Ok(())
    }
}

fn apply(hot: &mut HashMap<String, Hot>, change: HotChange) {
    match change {
        HotChange::Insert(dest, row) => {
            let h = hot.entry(dest).or_insert_with(|| Hot {
                floor: row.lseq,
                rows: BTreeMap::new(),
                bytes: 0,
            });
            h.bytes += row.body.len();
            h.rows.insert(row.lseq, row);
            if h.rows.len() > HOT_LIMIT || h.bytes > HOT_BYTES {
                // Keep the newest three quarters; older rows are read from SQLite again.
                while h.rows.len() > HOT_LIMIT * 3 / 4 || h.bytes > HOT_BYTES * 3 / 4 {
                    match h.rows.pop_first() {
                        Some((l, old)) => {
                            h.floor = l + 1;
                            h.bytes -= old.body.len();
                        }
                        None => break,
                    }
                }
            }
        }
        HotChange::RemoveThrough(dest, upto) => {
            if let Some(h) = hot.get_mut(&dest) {
                let kept = h.rows.split_off(&(upto + 1));
                h.bytes -= h.rows.values().map(|q| q.body.len()).sum::<usize>();
                h.rows = kept;
            }
        }
        HotChange::Remove(dest, lseq) => {
            if let Some(h) = hot.get_mut(&dest) {
                if let Some(old) = h.rows.remove(&lseq) {
                    h.bytes -= old.body.len();
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hot_tail_matches_the_database() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path, Durability::Process).unwrap();
        let mut t = j.begin().unwrap();
        for i in 0..10 {
            t.enqueue("d", &env(&i.to_string()), format!("b{i}").into())
                .unwrap();
        }
        t.commit().unwrap();
        // rolled back work never shows in the hot tail
        let mut t = j.begin().unwrap();
        t.enqueue("d", &env("x"), "rolled back".into()).unwrap();
        t.remove_through("d", 9).unwrap();
        drop(t);
        assert_eq!(j.read("d", 0, 100).unwrap().len(), 10);
        let mut t = j.begin().unwrap();
        t.remove_through("d", 3).unwrap();
        assert!(t.remove("d", 6).unwrap());
        t.commit().unwrap();
        // Readers always start above the acknowledged point (3 here); a segment that is only
        // partly acknowledged keeps its acknowledged entries on disk until the rest goes.
        let hot: Vec<u64> = j
            .read("d", 3, 100)
            .unwrap()
            .iter()
            .map(|q| q.lseq)
            .collect();
        drop(j);
        let cold = Journal::open(&path, Durability::Process).unwrap();
        let db: Vec<u64> = cold
            .read("d", 3, 100)
            .unwrap()
            .iter()
            .map(|q| q.lseq)
            .collect();
        assert_eq!(hot, db);
        assert_eq!(db, vec![4, 5, 7, 8, 9, 10]);
    }

    #[test]
    fn a_journal_of_another_format_is_refused_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("old.db");
        let old = Connection::open(&path).unwrap();
        old.execute_batch("CREATE TABLE queue(dest TEXT, lseq INTEGER, body BLOB);")
            .unwrap();
        drop(old);
        let err = Journal::open(&path, Durability::Process)
            .err()
            .expect("refused");
        assert!(err.to_string().contains("format"), "{err}");
        // a fresh journal opens, and opens again
        let fresh = dir.path().join("new.db");
        drop(Journal::open(&fresh, Durability::Process).unwrap());
        Journal::open(&fresh, Durability::Process).unwrap();
    }

    fn env(id: &str) -> Envelope {
        crate::envelope::test_envelope(id, "a", "c")
    }

    #[test]
    fn sequences_survive_reopen_and_are_never_reused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        {
            let mut j = Journal::open(&path, Durability::Process).unwrap();
            let mut t = j.begin().unwrap();
            assert_eq!(t.enqueue("up", &env("1"), "one".into()).unwrap(), 1);
            assert_eq!(t.enqueue("up", &env("2"), "two".into()).unwrap(), 2);
            t.commit().unwrap();
            let mut t = j.begin().unwrap();
            t.remove_through("up", 2).unwrap();
            t.commit().unwrap();
            // an uncommitted transaction leaves nothing behind
            let mut t = j.begin().unwrap();
            t.enqueue("up", &env("3"), "lost".into()).unwrap();
            drop(t);
        }
        let mut j = Journal::open(&path, Durability::Process).unwrap();
        // numbering resumes past the reserved block: nothing below 3 comes back
        let floor = j.floor("up").unwrap();
        assert!(floor >= 3, "{floor}");
        let mut t = j.begin().unwrap();
        let lseq = t.enqueue("up", &env("3"), "three".into()).unwrap();
        assert!(lseq >= 3 && lseq == floor, "{lseq} {floor}");
        t.commit().unwrap();
        let rows = j.read("up", 0, 10).unwrap();
        assert_eq!(rows.len(), 1);
        assert_eq!(&rows[0].body[..], b"three");
    }
}
