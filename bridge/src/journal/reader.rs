//! Reading a journal from outside its node (`medlink audit`, `medlink trace`, the console's
//! audit page): what SQLite holds, and what the custody log holds beyond it (`custody.rs`).
//!
//! A round the custody log took reaches SQLite moments later, at the node's next idle moment,
//! or, if the node died first, when it starts again. Until then its audit rows and queued
//! envelopes are in the log only. A reader opens the journal read-only, takes one snapshot
//! (a read transaction, held while the connection is used), reads the log's records beyond the
//! point that snapshot says SQLite holds, and puts them in temporary tables. Views named
//! `audit` and `queue` shadow SQLite's own tables for this connection's queries: the readers'
//! SQL runs unchanged and sees both. Nothing is written to the journal or the log.

use std::path::Path;

use rusqlite::{params, Connection, OpenFlags};

use super::custody;
use super::record::Record;
use super::{custody_applied, Result};

/// Opens the journal at `path` for reading, the custody log's rounds included (see the
/// module's comment). The connection holds one snapshot until it is dropped.
pub fn open_reader(path: &Path) -> Result<Connection> {
    let conn = Connection::open_with_flags(path, OpenFlags::SQLITE_OPEN_READ_ONLY)?;
    let mut attempt = 1;
    loop {
        conn.execute_batch("BEGIN")?;
        let applied = custody_applied(&conn)?;
        let (generation, records) = custody::peek(path, applied)
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))?;
        // A log of a newer generation than the snapshot knows: either the node started a new
        // one after the snapshot was taken (look again), or it died with the new one's records
        // unwritten (they are all beyond the snapshot, as the third look takes them).
        if generation == applied.0 || attempt == 3 {
            if !records.is_empty() {
                shadow(&conn, &records)?;
            }
            return Ok(conn);
        }
        conn.execute_batch("COMMIT")?;
        attempt += 1;
    }
}

/// Puts `records` in temporary tables, in order (a record's points forget the segments they
/// cover), and shadows `audit` and `queue` with views over SQLite's rows and theirs.
fn shadow(conn: &Connection, records: &[Record]) -> Result<()> {
    conn.execute_batch(
        "CREATE TEMP TABLE logged_audit(rowid_ INTEGER, at, id, kind, from_node, from_client,
             to_node, to_client, cmd, hops, decision);
         CREATE TEMP TABLE logged_queue(dest, first_lseq, last_lseq, min_expiry, entries);
         CREATE TEMP TABLE logged_acked(dest TEXT PRIMARY KEY, upto INTEGER);",
    )?;
    // Logged rows come after SQLite's in `rowid` order, as they will when written.
    let mut rowid: i64 =
        conn.query_row("SELECT coalesce(max(rowid), 0) FROM main.audit", [], |r| {
            r.get(0)
        })?;
    let mut audit = conn.prepare(
        "INSERT INTO logged_audit VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11)",
    )?;
    let mut queue = conn.prepare("INSERT INTO logged_queue VALUES (?1, ?2, ?3, ?4, ?5)")?;
    let mut forget = conn.prepare(
        "DELETE FROM logged_queue WHERE dest = ?1 AND first_lseq <= ?2 AND last_lseq <= ?2",
    )?;
    let mut point = conn.prepare(
        "INSERT INTO logged_acked VALUES (?1, ?2)
         ON CONFLICT(dest) DO UPDATE SET upto = max(upto, excluded.upto)",
    )?;
    for record in records {
        for (dest, first, last, expiry, entries) in &record.segments {
            queue.execute(params![
                dest,
                *first as i64,
                *last as i64,
                expiry.map(|e| e as i64),
                entries
            ])?;
        }
        for (dest, upto) in &record.acks {
            forget.execute(params![dest, *upto as i64])?;
            point.execute(params![dest, *upto as i64])?;
        }
        for (at, kind, hops, [id, from_node, from_client, to_node, to_client, cmd, decision]) in
            record.audits.rows()
        {
            rowid += 1;
            audit.execute(params![
                rowid,
                at,
                id,
                kind,
                from_node,
                from_client,
                to_node,
                to_client,
                cmd,
                hops,
                decision
            ])?;
        }
    }
    conn.execute_batch(
        "CREATE TEMP VIEW audit(rowid, at, id, kind, from_node, from_client, to_node, to_client,
             cmd, hops, decision) AS
           SELECT rowid, at, id, kind, from_node, from_client, to_node, to_client, cmd, hops,
                  decision FROM main.audit
           UNION ALL SELECT * FROM logged_audit;
         CREATE TEMP VIEW queue(dest, first_lseq, last_lseq, min_expiry, entries) AS
           SELECT dest, first_lseq, last_lseq, min_expiry, entries FROM main.queue q
           WHERE NOT EXISTS (SELECT 1 FROM logged_acked a
                             WHERE a.dest = q.dest AND q.last_lseq <= a.upto)
           UNION ALL SELECT * FROM logged_queue;",
    )
}
