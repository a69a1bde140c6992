//! Sending side of tier links: the go-back-N window towards the parent and each child.
//!
//! The queue itself is the journal (`up` / `down:<child>` rows); a [`LinkOut`] is only the
//! cursor state. Frames are built from journal reads, so a link that was down for hours costs
//! disk, not memory.

use std::time::{Duration, Instant};

use crate::frame::encode_batch;
use crate::journal::{Journal, Queued};

/// Journal destination of the link down to `child` (the link up is `up`).
pub fn down_dest(child: &str) -> String {
    format!("down:{child}")
}

/// Tuning of tier links.
#[derive(Debug, Clone, Copy)]
pub struct LinkTuning {
    /// Most envelopes per frame.
    pub batch: usize,
    /// Most bytes per frame (at least one envelope is always sent).
    pub batch_bytes: usize,
    /// Most envelopes sent but not yet acknowledged.
    pub window: u64,
    /// Go back and resend when nothing was acknowledged for this long.
    pub resend_after: Duration,
    /// Heartbeat period.
    pub ping_every: Duration,
    /// A link with no frame from the peer for this long is down.
    pub dead_after: Duration,
}

impl Default for LinkTuning {
    fn default() -> Self {
        LinkTuning {
            batch: 512,
            batch_bytes: 512 * 1024,
            window: 8192,
            resend_after: Duration::from_secs(2),
            ping_every: Duration::from_secs(1),
            dead_after: Duration::from_secs(5),
        }
    }
}

/// Cursor state of one outgoing link direction.
#[derive(Debug)]
pub struct LinkOut {
    /// Journal destination (`up` or `down:<child>`).
    pub dest: String,
    /// Whether the peer is connected and subscribed.
    pub online: bool,
    /// Highest sequence the peer acknowledged.
    pub acked: u64,
    /// Read cursor: highest sequence handled in the current pass (sent or skipped as expired).
    pub sent: u64,
    /// Highest sequence actually transmitted (or acknowledged): the `p` of the next envelope.
    pub last_tx: u64,
    /// When the window last moved (ack or go-back).
    pub last_progress: Instant,
    /// When the peer was last heard from.
    pub last_heard: Instant,
    /// When we last sent a ping.
    pub last_ping: Instant,
}

/// An envelope that expired before it could be sent.
pub struct Stale {
    /// Journal destination.
    pub dest: String,
    /// The row.
    pub row: Queued,
}

impl LinkOut {
    /// A link resuming from what the journal says: acknowledged up to the stored point, or
    /// just below the oldest envelope it still holds.
    pub fn new(dest: String, journal: &Journal) -> rusqlite::Result<LinkOut> {
        let acked = journal
            .floor(&dest)?
            .saturating_sub(1)
            .max(journal.acked(&dest)?);
        let now = Instant::now();
        Ok(LinkOut {
            dest,
            online: false,
            acked,
            sent: acked,
            last_tx: acked,
            last_progress: now,
            last_heard: now,
            last_ping: now,
        })
    }

    /// The peer is (again) reachable: resend everything not acknowledged.
    pub fn open(&mut self) {
        self.online = true;
        self.sent = self.acked;
        self.last_tx = self.acked;
        let now = Instant::now();
        self.last_progress = now;
        self.last_heard = now;
    }

    /// The peer acknowledged `upto`; returns whether that is news.
    pub fn ack(&mut self, upto: u64) -> bool {
        if upto <= self.acked {
            return false;
        }
        self.acked = upto;
        self.sent = self.sent.max(upto);
        self.last_tx = self.last_tx.max(upto);
        self.last_progress = Instant::now();
        true
    }

    /// Goes back to the acknowledged point if the window has not moved for a while.
    pub fn maybe_go_back(&mut self, tuning: &LinkTuning) -> bool {
        if self.online
            && self.sent > self.acked
            && self.last_progress.elapsed() >= tuning.resend_after
        {
            self.sent = self.acked;
            self.last_tx = self.acked;
            self.last_progress = Instant::now();
            return true;
        }
        false
    }

    /// Builds the frames that fit in the window, advancing `sent`. Expired envelopes that
    /// were never sent are skipped and returned in `stale` for the caller to drop.
    pub fn next_frames(
        &mut self,
        journal: &Journal,
        tuning: &LinkTuning,
        now_ms: u64,
        stale: &mut Vec<Stale>,
    ) -> rusqlite::Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        if !self.online {
            return Ok(frames);
        }
        while self.sent - self.acked < tuning.window {
            let room = (tuning.window - (self.sent - self.acked)) as usize;
            let rows = journal.read(&self.dest, self.sent, room.min(tuning.batch))?;
            if rows.is_empty() {
                break;
            }
            let mut bytes = 0;
            let mut kept: Vec<Queued> = Vec::with_capacity(rows.len());
            let mut last = self.sent;
            for row in rows {
                if bytes > 0 && bytes + row.body.len() > tuning.batch_bytes {
                    break;
                }
                last = row.lseq;
                if matches!(row.expires_at, Some(e) if e <= now_ms) {
                    stale.push(Stale {
                        dest: self.dest.clone(),
                        row,
                    });
                    continue;
                }
                bytes += row.body.len();
                kept.push(row);
            }
            self.sent = last;
            if let Some(newest) = kept.last() {
                frames.push(encode_batch(
                    journal.epoch(),
                    self.acked + 1,
                    self.last_tx,
                    &kept,
                ));
                self.last_tx = newest.lseq;
            }
        }
        Ok(frames)
    }
}
