//! HTTP delivery: long-polls and cumulative acknowledgements on a client's streams.
//!
//! An HTTP client reads its stream from the journal by sequence number (its cursor) and
//! acknowledges by moving the cursor forward. Nothing is handed over from memory: a poll is
//! answered from committed rows after the round's commit, so a poll cut off in transit is
//! simply answered again from the same cursor, also after a restart. A poll with nothing to
//! read waits here until a round enqueues something for that stream (or the poller gives up,
//! which drops the receiver).

use std::collections::{BTreeMap, HashMap, HashSet};

use bytes::Bytes;
use tokio::sync::oneshot;

use super::devices::RecentDeliveries;
use super::page::{Cursor, Delivery, Page};
use super::stream::may_want_delivered;
use crate::envelope::{Priority, LANES};
use crate::journal::{Dest, Journal, Queued, Target};

/// A waiting long-poll.
struct Waiter {
    /// `None`: a reader without a cursor (starts at the acknowledged point).
    after: Option<Cursor>,
    max: usize,
    wait: bool,
    reply: oneshot::Sender<Page>,
}

/// Long-polls by stream (keyed by the stream's normal lane), and how far each lane was
/// handed out over HTTP.
#[derive(Default)]
pub(super) struct Polls {
    waiting: HashMap<Dest, Vec<Waiter>>,
    /// Streams to look at after this round's commit.
    woken: Vec<Dest>,
    /// Highest sequence handed to an HTTP poller per lane (this process's life): an
    /// acknowledgement is never taken beyond it, so no message counts as delivered before
    /// anyone saw it.
    handed_out: HashMap<Dest, u64>,
    /// Handed-out bodies that may want a `delivered` receipt, by lane and sequence, until the
    /// cursor acknowledges them.
    notices: HashMap<Dest, BTreeMap<u64, Bytes>>,
    /// What the identity's other devices may still need.
    recent: RecentDeliveries,
    /// Streams that have been polled over HTTP (since this process started). A poll reads
    /// every lane of its stream, so the stream stands for its lanes: one entry per client
    /// rather than three `Dest`s (a hospital's 100,000 phones each have one).
    readers: HashSet<Target>,
}

impl Polls {
    /// Parks a poll of the stream whose normal lane is `key`, answered after the commit.
    pub(super) fn park(
        &mut self,
        key: Dest,
        after: Option<Cursor>,
        (max, wait): (usize, bool),
        reply: oneshot::Sender<Page>,
    ) {
        if !self.readers.contains(key.target()) {
            self.readers.insert(key.target().clone());
        }
        // Room for one: a stream almost always has a single poller (one phone), and a
        // default `Vec` would take room for four.
        let list = self
            .waiting
            .entry(key.clone())
            .or_insert_with(|| Vec::with_capacity(1));
        list.push(Waiter {
            after,
            max: max.max(1),
            wait,
            reply,
        });
        self.wake(key);
    }

    /// Notes that `dest` got something new, if anyone waits for it.
    pub(super) fn enqueued(&mut self, dest: &Dest) {
        // Polls wait under the stream's normal lane, whichever lane got the message.
        if dest.lane() == Priority::Normal {
            if self.waiting.contains_key(dest) {
                self.wake(dest.clone());
            }
        } else if !self.waiting.is_empty() {
            let key = dest.with_lane(Priority::Normal);
            if self.waiting.contains_key(&key) {
                self.wake(key);
            }
        }
    }

    /// Has `key`'s polls looked at after this round's commit.
    fn wake(&mut self, key: Dest) {
        if !self.woken.contains(&key) {
            self.woken.push(key);
        }
    }

    /// Whether an HTTP poll of the stream whose normal lane is `key` is waiting now.
    pub(super) fn is_waiting(&self, key: &Dest) -> bool {
        self.waiting
            .get(key)
            .is_some_and(|l| l.iter().any(|w| !w.reply.is_closed()))
    }

    /// Whether `dest` (a lane) has HTTP readers, so what it hands out is kept for them.
    pub(super) fn has_readers(&self, dest: &Dest) -> bool {
        self.readers.contains(dest.target())
    }

    /// Keeps `row` of `dest` for the identity's other devices.
    pub(super) fn keep(&mut self, dest: &Dest, row: &Queued) {
        self.recent.keep(dest, row);
    }

    /// Highest sequence of `dest` handed out over HTTP.
    pub(super) fn handed_out(&self, dest: &Dest) -> u64 {
        self.handed_out.get(dest).copied().unwrap_or(0)
    }

    /// `dest` is acknowledged up to `upto`: the handed-out bodies below it that may want a
    /// `delivered` receipt.
    pub(super) fn acknowledged(&mut self, dest: &Dest, upto: u64) -> Vec<Bytes> {
        let Some(pending) = self.notices.get_mut(dest) else {
            return Vec::new();
        };
        let later = pending.split_off(&(upto + 1));
        std::mem::replace(pending, later).into_values().collect()
    }

    /// Drops polls whose HTTP request is gone.
    pub(super) fn prune(&mut self) {
        self.recent.prune();
        self.waiting.retain(|_, list| {
            list.retain(|w| !w.reply.is_closed());
            !list.is_empty()
        });
    }

    /// Answers the woken polls from committed journal rows, most urgent lane first. `acked`
    /// tells how far a lane is acknowledged.
    pub(super) fn serve(
        &mut self,
        journal: &Journal,
        acked: impl Fn(&Dest) -> rusqlite::Result<u64>,
        now: u64,
    ) -> rusqlite::Result<()> {
        for key in std::mem::take(&mut self.woken) {
            let Some(list) = self.waiting.remove(&key) else {
                continue;
            };
            let lanes = Priority::ALL.map(|lane| key.with_lane(lane));
            let mut points = [0u64; LANES];
            for (lane, dest) in lanes.iter().enumerate() {
                points[lane] = acked(dest)?;
            }
            let mut still = Vec::with_capacity(list.len());
            for w in list {
                if w.reply.is_closed() {
                    continue;
                }
                // A reader without a cursor starts at the acknowledged point: a late device
                // gets what is not yet acknowledged, not what other devices already have.
                let start = w.after.unwrap_or(Cursor(points));
                let mut cursor = start;
                let mut fresh: Vec<Delivery> = Vec::new();
                for (lane, dest) in lanes.iter().enumerate() {
                    let room = w.max - fresh.len();
                    if room == 0 {
                        break;
                    }
                    // Behind the acknowledged point: what another device acknowledged first.
                    let after = start.0[lane];
                    let mut rows = self.recent.between(dest, after, points[lane], room);
                    let more = room - rows.len();
                    rows.extend(journal.read(dest, after.max(points[lane]), more)?);
                    for r in rows {
                        cursor.0[lane] = r.lseq;
                        if matches!(r.expires_at, Some(e) if e <= now) {
                            continue;
                        }
                        if may_want_delivered(&r.body) {
                            let pending = self.notices.entry(dest.clone()).or_default();
                            pending.insert(r.lseq, r.body.clone());
                        }
                        self.recent.keep(dest, &r);
                        fresh.push(Delivery {
                            cursor,
                            body: r.body,
                        });
                    }
                    if cursor.0[lane] > start.0[lane] {
                        let top = self.handed_out.entry(dest.clone()).or_insert(0);
                        *top = (*top).max(cursor.0[lane]);
                    }
                }
                if fresh.is_empty() && w.wait {
                    still.push(w);
                } else {
                    let _ = w.reply.send(Page {
                        cursor,
                        deliveries: fresh,
                    });
                }
            }
            if !still.is_empty() {
                self.waiting.insert(key, still);
            }
        }
        Ok(())
    }
}
