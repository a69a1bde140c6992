//! The committed tail of each destination's queue, kept in memory so that sending does not
//! read back what was just written. Changes are applied only after their transaction commits.

use std::collections::{BTreeMap, HashMap};

use super::Queued;
use crate::stats::DeliveredBy;

/// Most rows and bytes kept in memory per destination; beyond that, sending reads SQLite.
const HOT_LIMIT: usize = 64 * 1024;
const HOT_BYTES: usize = 64 * 1024 * 1024;
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
            h.bytes += row.body.len();
            h.rows.insert(row.lseq, row);
            if h.rows.len() > HOT_LIMIT || h.bytes > HOT_BYTES {
                // Keep the newest three quarters; older rows are read from SQLite again.
                while h.rows.len() > HOT_LIMIT * 3 / 4 || h.bytes > HOT_BYTES * 3 / 4 {
                    match h.rows.pop_first() {
                        Some((l, old)) => {
                            h.floor = l.saturating_add(1);
                            h.bytes -= old.body.len();
                        }
                        None => break,
                    }
                }
            }
        }
        HotChange::RemoveThrough(dest, upto, _) => {
            if let Some(h) = hot.get_mut(&dest) {
                let kept = h.rows.split_off(&upto.saturating_add(1));
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
