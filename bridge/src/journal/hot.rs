//! The committed tail of each destination's queue, kept in memory so that sending does not
//! read back what was just written. Changes are applied only after their transaction commits.

use std::collections::BTreeMap;

use foldhash::HashMap;

use super::Queued;
use crate::stats::DeliveredBy;

/// Most memory the tail of one destination holds (bodies, ids and [`ROW_COST`] each); beyond
/// that its oldest rows are let go, and sending reads them from SQLite. The bound is in bytes
/// only: a row count of 65,536 let go of rows a 100,000-command burst at the root still
/// needed (601-byte envelopes, a backlog of 59,000), so the drain read a sixth of it back.
const HOT_BYTES: usize = 64 * 1024 * 1024;

/// What a row costs beyond its body and id: the `Queued` and its share of the B-tree.
const ROW_COST: usize = 96;

/// The memory `row` holds while hot.
fn cost(row: &Queued) -> usize {
    row.body.len() + row.id.len() + ROW_COST
}
/// The committed tail of one destination's queue, kept in memory so that sending does not
/// read back what was just written. Every committed row with `lseq >= floor` is in `rows`.
#[derive(Debug, Default)]
pub(super) struct Hot {
    pub(super) floor: u64,
    pub(super) rows: BTreeMap<u64, Queued>,
    pub(super) bytes: usize,
}

/// A change to apply to the hot tails (and the backlog) once the transaction commits.
pub(super) enum HotChange {
    /// A row queued for a destination, with its envelope's `created_at`.
    Insert(String, Queued, u64),
    /// A destination acknowledged through a sequence, and who took it (`None`: not a
    /// delivery, e.g. a rewrite).
    RemoveThrough(String, u64, Option<DeliveredBy>),
    /// One row dropped (expired, moved to another service member).
    Remove(String, u64),
}

pub(super) fn apply(hot: &mut HashMap<String, Hot>, change: HotChange) {
    match change {
        HotChange::Insert(dest, row, _) => {
            let h = hot.entry(dest).or_insert_with(|| Hot {
                floor: row.lseq,
                rows: BTreeMap::new(),
                bytes: 0,
            });
            h.bytes += cost(&row);
            h.rows.insert(row.lseq, row);
            if h.bytes > HOT_BYTES {
                // Keep the newest three quarters; older rows are read from SQLite again.
                while h.bytes > HOT_BYTES * 3 / 4 {
                    match h.rows.pop_first() {
                        Some((l, old)) => {
                            h.floor = l.saturating_add(1);
                            h.bytes -= cost(&old);
                        }
                        None => break,
                    }
                }
            }
        }
        HotChange::RemoveThrough(dest, upto, _) => {
            if let Some(h) = hot.get_mut(&dest) {
                let kept = h.rows.split_off(&upto.saturating_add(1));
                h.bytes -= h.rows.values().map(cost).sum::<usize>();
                h.rows = kept;
            }
        }
        HotChange::Remove(dest, lseq) => {
            if let Some(h) = hot.get_mut(&dest) {
                if let Some(old) = h.rows.remove(&lseq) {
                    h.bytes -= cost(&old);
                }
            }
        }
    }
}
