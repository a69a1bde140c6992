//! The statements that write what a round queues or acknowledges: segments, link receive
//! positions, sequence blocks and acknowledgement points; shared by a round's own commit (`txn.rs`) and by the rounds the custody
//! log took, when they reach SQLite (`logged.rs`).

use std::borrow::Cow;
use std::sync::LazyLock;

use rusqlite::Connection;

use super::multirow::MultiRow;
use super::{Queued, Result};

/// A queue row to insert: destination, first and last sequence, earliest expiry, entries
/// (encoded for this round's own rows, borrowed from the custody log's records for theirs).
pub(super) type SegmentRow<'e> = (&'e str, u64, u64, Option<u64>, Cow<'e, [u8]>);

/// The row of one segment of `entries` queued for `dest` (none for no entries).
pub(super) fn segment_row<'e>(dest: &'e str, entries: &[Queued]) -> Option<SegmentRow<'e>> {
    let (first, last) = (entries.first()?, entries.last()?);
    let min_expiry = entries.iter().filter_map(|e| e.expires_at).min();
    Some((
        dest,
        first.lseq,
        last.lseq,
        min_expiry,
        Cow::Owned(super::segment::encode(entries)),
    ))
}

/// Writes queue segments.
static INSERT_SEGMENTS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO queue(dest, first_lseq, last_lseq, min_expiry, entries)",
        5,
        "",
    )
});

/// Stores link receive positions.
static STORE_LINK_IN: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO link_in(peer, last, epoch)",
        3,
        "ON CONFLICT(peer) DO UPDATE SET last = excluded.last, epoch = excluded.epoch",
    )
});

/// Stores the ends of sequence-number blocks.
static STORE_RESERVATIONS: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO seq(dest, next)",
        2,
        "ON CONFLICT(dest) DO UPDATE SET next = excluded.next",
    )
});

/// Stores acknowledgement points; a point never moves back.
static STORE_ACKED: LazyLock<MultiRow> = LazyLock::new(|| {
    MultiRow::new(
        "INSERT INTO acked(dest, upto)",
        2,
        "ON CONFLICT(dest) DO UPDATE SET upto = max(upto, excluded.upto)",
    )
});

/// Writes segment rows, several to a statement.
pub(super) fn insert_rows(conn: &Connection, rows: &[SegmentRow]) -> Result<()> {
    INSERT_SEGMENTS.run(conn, rows, |stmt, at, row| {
        let (dest, first, last, min_expiry, blob) = row;
        stmt.raw_bind_parameter(at, dest)?;
        stmt.raw_bind_parameter(at + 1, *first as i64)?;
        stmt.raw_bind_parameter(at + 2, *last as i64)?;
        stmt.raw_bind_parameter(at + 3, min_expiry.map(|v| v as i64))?;
        stmt.raw_bind_parameter(at + 4, blob.as_ref())?;
        Ok(())
    })
}

/// Stores link receive positions: `link_in` key, last sequence, epoch.
pub(super) fn store_link_in(conn: &Connection, rows: &[(String, u64, u64)]) -> Result<()> {
    STORE_LINK_IN.run(conn, rows, |stmt, at, (peer, last, epoch)| {
        stmt.raw_bind_parameter(at, peer)?;
        stmt.raw_bind_parameter(at + 1, *last as i64)?;
        stmt.raw_bind_parameter(at + 2, *epoch as i64)?;
        Ok(())
    })
}

/// Stores the ends of sequence-number blocks.
pub(super) fn store_reservations(conn: &Connection, ends: &[(String, u64)]) -> Result<()> {
    STORE_RESERVATIONS.run(conn, ends, |stmt, at, (dest, end)| {
        stmt.raw_bind_parameter(at, dest)?;
        stmt.raw_bind_parameter(at + 1, *end as i64)?;
        Ok(())
    })
}

/// Forgets each destination's segments wholly at or below its acknowledged point, and stores
/// the points. A segment only partly acknowledged stays until the rest is: after a restart its
/// acknowledged part is sent again and the receiver drops it by sequence number.
pub(super) fn forget_acknowledged(conn: &Connection, points: &[(String, u64)]) -> Result<()> {
    // `first_lseq <= ?2` bounds the walk of `queue_dest` to the segments that can go, not
    // every segment still queued for `dest` (a backlog of thousands at a busy root).
    let mut delete = conn.prepare_cached(
        "DELETE FROM queue WHERE dest = ?1 AND first_lseq <= ?2 AND last_lseq <= ?2",
    )?;
    for (dest, upto) in points {
        delete.execute(rusqlite::params![dest, *upto as i64])?;
    }
    STORE_ACKED.run(conn, points, |stmt, at, (dest, upto)| {
        stmt.raw_bind_parameter(at, dest)?;
        stmt.raw_bind_parameter(at + 1, *upto as i64)?;
        Ok(())
    })
}
