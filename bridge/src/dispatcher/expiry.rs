//! Expiry: envelopes whose time has passed are dropped wherever they wait unsent, each with
//! one `expired` receipt to its sender. The sweep runs once a second inside a round; `pump`
//! hands over what it skipped while reading (`Stale`) to the same `drop_stale`.

use std::time::{Duration, Instant};

use tracing::error;

use super::{State, IDEMPOTENCY_WINDOW_MS};
use crate::envelope::Envelope;
use crate::envelope::ReceiptStatus;
use crate::journal::{Dest, Queued, Txn};

impl State {
    /// Drops expired envelopes that are not in flight, with an `expired` receipt each.
    pub(super) fn sweep_expired(&mut self, tx: &mut Txn, now: u64) -> rusqlite::Result<()> {
        for (dest, row) in tx.expired(now, 1000)? {
            // Already acknowledged (a leftover of a partly acknowledged segment), or published
            // and waiting for its acknowledgement: not ours to expire.
            let (acked, in_flight) = if let Some((online, lane)) = self.links.lane_for(&dest) {
                (lane.acked, online && row.lseq <= lane.sent)
            } else if let Some(position) = self.clients.position(&dest, row.lseq) {
                position
            } else {
                (tx.acked(&dest)?, false)
            };
            if row.lseq > acked && !in_flight {
                self.drop_stale(tx, &dest, row, now)?;
            }
        }
        self.clients.prune();
        let retention = self.cfg.dead_letter_retention.as_millis() as u64;
        tx.prune_dead_letters(now.saturating_sub(retention))?;
        if self.last_prune.elapsed() >= Duration::from_secs(60) {
            self.last_prune = Instant::now();
            tx.prune_accepted(now.saturating_sub(IDEMPOTENCY_WINDOW_MS), now)?;
        }
        Ok(())
    }

    pub(super) fn drop_stale(
        &mut self,
        tx: &mut Txn,
        dest: &Dest,
        row: Queued,
        now: u64,
    ) -> rusqlite::Result<()> {
        tx.remove(dest, row.lseq)?;
        match Envelope::parse(&row.body) {
            Ok(env) => self.expire(tx, &env, now),
            Err(e) => {
                error!(dest = %dest, id = %row.id, error = %e, "unreadable envelope in journal dropped");
                Ok(())
            }
        }
    }

    /// Drops `env`, whose time passed before delivery, with its `expired` receipt.
    pub(super) fn expire(
        &mut self,
        tx: &mut Txn,
        env: &Envelope,
        now: u64,
    ) -> rusqlite::Result<()> {
        self.refuse(
            tx,
            env,
            ReceiptStatus::Expired,
            "expired before delivery",
            now,
        )
    }
}
