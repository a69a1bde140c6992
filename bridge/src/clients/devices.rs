//! Several devices of one identity: what one device acknowledged, the others still get.
//!
//! A client stream is acknowledged cumulatively, by whichever device of the identity
//! acknowledges first, and the journal then drops what is acknowledged. Devices connected
//! over MQTT at that moment already had the message (the router fans every publish out to
//! all of the identity's subscriptions). An HTTP device, though, reads only when it polls: a
//! phone between two polls would miss what a kiosk acknowledged in between. So every message
//! handed out on a stream that has HTTP readers is also kept here for [`GRACE`] (at most
//! [`KEEP_MAX`] per stream), and a poll whose cursor is behind the acknowledged point is
//! served from here first. This is memory only: after a node restart, devices get what was
//! not yet acknowledged, not what another device acknowledged before the restart.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::journal::{Dest, Queued};

/// How long an acknowledged message stays readable by the identity's other devices.
pub(super) const GRACE: Duration = Duration::from_secs(600);
/// Most messages kept per stream lane.
pub(super) const KEEP_MAX: usize = 1024;

/// Recently handed-out messages of streams with HTTP readers, by journal destination.
#[derive(Default)]
pub(super) struct RecentDeliveries {
    by_dest: HashMap<Dest, VecDeque<(Instant, Queued)>>,
}

impl RecentDeliveries {
    /// Keeps `row` of `dest` (rows already kept, or older than the newest kept, are ignored:
    /// streams hand out in sequence order, repeats come from rewinds).
    pub(super) fn keep(&mut self, dest: &Dest, row: &Queued) {
        let kept = self.by_dest.entry(dest.clone()).or_default();
        if kept.back().is_some_and(|(_, k)| k.lseq >= row.lseq) {
            return;
        }
        if kept.len() >= KEEP_MAX {
            kept.pop_front();
        }
        kept.push_back((Instant::now(), row.clone()));
    }

    /// Kept rows of `dest` with `after < lseq <= upto`, oldest first, at most `limit`.
    pub(super) fn between(&self, dest: &Dest, after: u64, upto: u64, limit: usize) -> Vec<Queued> {
        let Some(kept) = self.by_dest.get(dest) else {
            return Vec::new();
        };
        kept.iter()
            .map(|(_, row)| row)
            .filter(|row| row.lseq > after && row.lseq <= upto)
            .take(limit)
            .cloned()
            .collect()
    }

    /// Forgets what is older than [`GRACE`].
    pub(super) fn prune(&mut self) {
        self.by_dest.retain(|_, kept| {
            while kept.front().is_some_and(|(at, _)| at.elapsed() > GRACE) {
                kept.pop_front();
            }
            !kept.is_empty()
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(lseq: u64) -> Queued {
        Queued {
            lseq,
            id: format!("m{lseq}"),
            expires_at: None,
            body: bytes::Bytes::from(format!("{lseq}")),
        }
    }

    #[test]
    fn keeps_in_order_and_serves_a_range() {
        let a: Dest = "local:a".parse().unwrap();
        let b: Dest = "local:b".parse().unwrap();
        let mut r = RecentDeliveries::default();
        for l in [1, 2, 3, 2, 5] {
            r.keep(&a, &row(l));
        }
        let got: Vec<u64> = r.between(&a, 1, 5, 10).iter().map(|q| q.lseq).collect();
        assert_eq!(
            got,
            [2, 3, 5],
            "repeats are ignored, the range is exclusive below"
        );
        assert_eq!(r.between(&a, 0, 2, 1).len(), 1);
        assert!(r.between(&b, 0, 9, 9).is_empty());
        for l in 6..(6 + KEEP_MAX as u64) {
            r.keep(&a, &row(l));
        }
        assert!(r.between(&a, 0, 5, 10).is_empty(), "bounded");
    }
}
