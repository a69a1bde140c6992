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

use medlink_broker::{Cursor, Delivery, Page, Stream};
use tokio::sync::oneshot;

use super::devices::RecentDeliveries;
use super::State;
use crate::delivery::{lane_dests, may_want_delivered, StreamOut};
use crate::envelope::{Priority, LANES};
use crate::journal::{Journal, Txn};

/// A waiting long-poll.
pub(super) struct Waiter {
    /// `None`: a reader without a cursor (starts at the acknowledged point).
    after: Option<Cursor>,
    max: usize,
    wait: bool,
    reply: oneshot::Sender<Page>,
}

/// Long-polls by stream destination, and how far each stream was handed out over HTTP.
#[derive(Default)]
pub(super) struct Polls {
    waiting: HashMap<String, Vec<Waiter>>,
    /// Destinations to look at after this round's commit.
    woken: Vec<String>,
    /// Highest sequence handed to an HTTP poller per destination (this process's life): an
    /// acknowledgement is never taken beyond it, so no message counts as delivered before
    /// anyone saw it.
    handed_out: HashMap<String, u64>,
    /// Handed-out bodies that may want a `delivered` receipt, by destination and sequence,
    /// until the cursor acknowledges them.
    notices: HashMap<String, BTreeMap<u64, Bytes>>,
    /// What the identity's other devices may still need.
    pub(super) recent: RecentDeliveries,
    /// Lane destinations that have been polled over HTTP (since this process started).
    readers: HashSet<String>,
}

impl Polls {
    /// Notes that `dest` got something new, if anyone waits for it.
    pub(super) fn enqueued(&mut self, dest: &str) {
        // Polls wait under the stream's normal lane, whichever lane got the message.
        let (key, _) = Priority::of_dest(dest);
        if self.waiting.contains_key(key) {
            self.wake(key);
        }
    }

    /// Has `dest`'s polls looked at after this round's commit.
    fn wake(&mut self, dest: &str) {
        if !self.woken.iter().any(|d| d == dest) {
            self.woken.push(dest.to_string());
        }
    }

    /// Whether an HTTP poll of the stream whose normal lane is `dest` is waiting now.
    pub(super) fn is_waiting(&self, dest: &str) -> bool {
        self.waiting
            .get(dest)
            .is_some_and(|l| l.iter().any(|w| !w.reply.is_closed()))
    }

    /// Whether `dest` (a lane destination) has HTTP readers, so what it hands out is kept for
    /// them.
    pub(super) fn has_readers(&self, dest: &str) -> bool {
        self.readers.contains(dest)
    }

    /// Drops polls whose HTTP request is gone.
    pub(super) fn prune(&mut self) {
        self.recent.prune();
        self.waiting.retain(|_, list| {
            list.retain(|w| !w.reply.is_closed());
            !list.is_empty()
        });
    }
}

impl State {
    /// Parks an HTTP long-poll of `client`'s `stream` after acknowledging up to its cursor.
    #[allow(clippy::too_many_arguments)]
    pub(super) fn poll(
        &mut self,
        tx: &mut Txn,
        client: &str,
        stream: Stream,
        (after, ack): (Option<Cursor>, bool),
        (max, wait): (usize, bool),
        reply: oneshot::Sender<Page>,
        now: u64,
    ) -> rusqlite::Result<()> {
        let dests = lane_dests(client, stream);
        let key = dests[1].clone();
        self.polls.readers.extend(dests);
        self.services.polled(client);
        if let Some(after) = after.filter(|_| ack) {
            self.http_ack(tx, client, stream, after, now)?;
        }
        self.polls
            .waiting
            .entry(key.clone())
            .or_default()
            .push(Waiter {
                after,
                max: max.max(1),
                wait,
                reply,
            });
        self.polls.wake(&key);
        Ok(())
    }

    /// Acknowledges `client`'s `stream` up to `upto` in each lane, never beyond what was handed
    /// out; returns the acknowledged point.
    pub(super) fn http_ack(
        &mut self,
        tx: &mut Txn,
        client: &str,
        stream: Stream,
        upto: Cursor,
        now: u64,
    ) -> rusqlite::Result<Cursor> {
        let mut point = Cursor::default();
        for (lane, dest) in lane_dests(client, stream).iter().enumerate() {
            if !self.locals.contains_key(dest) {
                let acked = tx.acked(dest)?;
                self.locals.insert(dest.clone(), StreamOut::new(acked));
            }
            let limit = self.polls.handed_out.get(dest).copied().unwrap_or(0);
            let out = self
                .locals
                .get_mut(dest)
                .expect("present or inserted above");
            let upto = upto.0[lane].min(limit.max(out.acked()));
            if out.confirm_upto(upto) {
                self.acked_streams.insert(dest.clone());
            }
            point.0[lane] = upto.max(out.acked());
            if let Some(pending) = self.polls.notices.get_mut(dest) {
                let later = pending.split_off(&(upto + 1));
                let done = std::mem::replace(pending, later);
                for body in done.into_values() {
                    self.delivered_notice(tx, &body, now)?;
                }
            }
        }
        Ok(point)
    }

    /// Answers the woken polls from committed journal rows, most urgent lane first.
    pub(super) fn serve_polls(&mut self, journal: &Journal, now: u64) -> rusqlite::Result<()> {
        for key in std::mem::take(&mut self.polls.woken) {
            let Some(list) = self.polls.waiting.remove(&key) else {
                continue;
            };
            let dests = Priority::lanes_of(&key);
            let mut acked = [0u64; LANES];
            for (lane, dest) in dests.iter().enumerate() {
                acked[lane] = match self.locals.get(dest) {
                    Some(l) => l.acked(),
                    None => journal.acked(dest)?,
                };
            }
            let mut still = Vec::new();
            for w in list {
                if w.reply.is_closed() {
                    continue;
                }
                // A reader without a cursor starts at the acknowledged point: a late device
                // gets what is not yet acknowledged, not what other devices already have.
                let start = w.after.unwrap_or(Cursor(acked));
                let mut cursor = start;
                let mut fresh: Vec<Delivery> = Vec::new();
                for (lane, dest) in dests.iter().enumerate() {
                    let room = w.max - fresh.len();
                    if room == 0 {
                        break;
                    }
                    // Behind the acknowledged point: what another device acknowledged first.
                    let after = start.0[lane];
                    let mut rows = self.polls.recent.between(dest, after, acked[lane], room);
                    let more = room - rows.len();
                    rows.extend(journal.read(dest, after.max(acked[lane]), more)?);
                    for r in rows {
                        cursor.0[lane] = r.lseq;
                        if matches!(r.expires_at, Some(e) if e <= now) {
                            continue;
                        }
                        if may_want_delivered(&r.body) {
                            let pending = self.polls.notices.entry(dest.clone()).or_default();
                            pending.insert(r.lseq, r.body.clone());
                        }
                        self.polls.recent.keep(dest, &r);
                        fresh.push(Delivery {
                            cursor,
                            body: r.body,
                        });
                    }
                    if cursor.0[lane] > start.0[lane] {
                        let top = self.polls.handed_out.entry(dest.clone()).or_insert(0);
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
                self.polls.waiting.insert(key, still);
            }
        }
        Ok(())
    }
}
