//! Sending side of tier links: the go-back-N window towards the parent and each child.
//!
//! The queue itself is the journal ([`Target::Up`] / [`Target::Down`], one destination per
//! priority lane); a [`LinkOut`] is only the cursor state of its lanes. Frames are built from
//! journal reads, so a link that was down for hours costs disk, not memory.

use std::time::{Duration, Instant};

use super::frame::encode_batch;
use crate::envelope::{Priority, LANES};
use crate::journal::{Dest, Journal, Queued, Stale, Target};

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

/// One outgoing link direction (to the parent or to one child): a go-back-N [`Lane`] per
/// priority class, sent most urgent first, and the link's liveness.
#[derive(Debug)]
pub struct LinkOut {
    /// Lanes indexed by [`Priority::lane`].
    pub lanes: [Lane; LANES],
    /// Whether the peer is connected and subscribed.
    pub online: bool,
    /// When the peer was last heard from.
    pub last_heard: Instant,
    /// When we last sent a ping.
    pub last_ping: Instant,
}

/// Cursor state of one priority class on one link. Each lane has its own sequence numbers,
/// window and acknowledgements, so an urgent frame never waits behind a routine backlog.
#[derive(Debug)]
pub struct Lane {
    /// Journal destination.
    pub dest: Dest,
    /// Class of this lane, carried in its frames.
    pub priority: Priority,
    /// Highest sequence the peer acknowledged.
    pub acked: u64,
    /// Read cursor: highest sequence handled in the current pass (sent or skipped as expired).
    pub sent: u64,
    /// Highest sequence actually transmitted (or acknowledged): the `p` of the next envelope.
    pub last_tx: u64,
    /// Highest sequence this process ever handed out on the lane (rewinds do not lower it): a
    /// peer cannot acknowledge, and so make this node forget, what it was never sent.
    pub reached: u64,
    /// When the window last moved (ack or go-back).
    pub last_progress: Instant,
}

impl LinkOut {
    /// The link to `target` ([`Target::Up`] or [`Target::Down`]), each lane resuming from
    /// what the journal says.
    pub fn new(target: Target, journal: &Journal) -> rusqlite::Result<LinkOut> {
        let [urgent, normal, bulk] = Dest::lanes(target);
        let now = Instant::now();
        Ok(LinkOut {
            lanes: [
                Lane::new(urgent, journal)?,
                Lane::new(normal, journal)?,
                Lane::new(bulk, journal)?,
            ],
            online: false,
            last_heard: now,
            last_ping: now,
        })
    }

    /// The peer is (again) reachable: resend everything not acknowledged.
    pub fn open(&mut self) {
        self.online = true;
        self.last_heard = Instant::now();
        for lane in &mut self.lanes {
            lane.rewind();
        }
    }

    /// The lane a frame names (an unknown number counts as normal, as an older peer means).
    pub fn lane_mut(&mut self, priority: Priority) -> &mut Lane {
        &mut self.lanes[priority.lane()]
    }

    /// The lane stored under journal destination `dest`, if it is one of this link's.
    pub fn lane_for(&mut self, dest: &Dest) -> Option<&mut Lane> {
        self.lanes.iter_mut().find(|l| l.dest == *dest)
    }

    /// Goes back to the acknowledged point on every lane whose window has not moved for a
    /// while.
    pub fn maybe_go_back(&mut self, tuning: &LinkTuning) {
        if self.online {
            for lane in &mut self.lanes {
                lane.maybe_go_back(tuning);
            }
        }
    }

    /// Builds the frames that fit in the windows, most urgent lane first. Expired envelopes
    /// that were never sent are skipped and returned in `stale` for the caller to drop.
    pub fn next_frames(
        &mut self,
        journal: &Journal,
        tuning: &LinkTuning,
        now_ms: u64,
        stale: &mut Vec<Stale>,
    ) -> rusqlite::Result<Vec<Vec<u8>>> {
        let mut frames = Vec::new();
        if self.online {
            for lane in &mut self.lanes {
                lane.next_frames(journal, tuning, now_ms, stale, &mut frames)?;
            }
        }
        Ok(frames)
    }
}

impl Lane {
    /// A lane resuming from what the journal says: acknowledged up to the stored point, or
    /// just below the oldest envelope it still holds.
    fn new(dest: Dest, journal: &Journal) -> rusqlite::Result<Lane> {
        let priority = dest.lane();
        let acked = journal
            .floor(&dest)?
            .saturating_sub(1)
            .max(journal.acked(&dest)?);
        Ok(Lane {
            dest,
            priority,
            acked,
            sent: acked,
            last_tx: acked,
            reached: acked,
            last_progress: Instant::now(),
        })
    }

    /// Starts sending again from the acknowledged point.
    pub fn rewind(&mut self) {
        self.sent = self.acked;
        self.last_tx = self.acked;
        self.last_progress = Instant::now();
    }

    /// The peer acknowledged `upto`; returns whether that is news.
    pub fn ack(&mut self, upto: u64) -> bool {
        // Beyond what was handed out: a confused or hostile peer (or a stale acknowledgement
        // of a previous process's frames, which are resent and acknowledged again).
        let upto = upto.min(self.reached);
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
    fn maybe_go_back(&mut self, tuning: &LinkTuning) {
        if self.sent > self.acked && self.last_progress.elapsed() >= tuning.resend_after {
            self.rewind();
        }
    }

    /// Appends to `frames` what fits in this lane's window, advancing `sent`.
    fn next_frames(
        &mut self,
        journal: &Journal,
        tuning: &LinkTuning,
        now_ms: u64,
        stale: &mut Vec<Stale>,
        frames: &mut Vec<Vec<u8>>,
    ) -> rusqlite::Result<()> {
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
            self.reached = self.reached.max(last);
            if let Some(newest) = kept.last() {
                let lseq = newest.lseq;
                frames.push(encode_batch(
                    journal.epoch(),
                    self.priority,
                    (self.acked + 1, self.last_tx),
                    &kept,
                ));
                self.last_tx = lseq;
            }
        }
        Ok(())
    }
}
