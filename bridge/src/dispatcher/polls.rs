//! HTTP delivery: long-polls and cumulative acknowledgements on a client's streams.
//!
//! An HTTP client reads its stream from the journal by sequence number (its cursor) and
//! acknowledges by moving the cursor forward. Nothing is handed over from memory: a poll is
//! answered from committed rows after the round's commit, so a poll cut off in transit is
//! simply answered again from the same cursor, also after a restart. A poll with nothing to
//! read waits here until a round enqueues something for that stream (or the poller gives up,
//! which drops the receiver).

use std::collections::HashMap;

use medlink_broker::{Delivery, Stream};
use tokio::sync::oneshot;

use super::State;
use crate::delivery::{stream_dest, StreamOut};
use crate::journal::{Journal, Txn};

/// A waiting long-poll.
pub(super) struct Waiter {
    after: u64,
    max: usize,
    wait: bool,
    reply: oneshot::Sender<Vec<Delivery>>,
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
}

impl Polls {
    /// Notes that `dest` got something new, if anyone waits for it.
    pub(super) fn enqueued(&mut self, dest: &str) {
        if self.waiting.contains_key(dest) {
            self.wake(dest);
        }
    }

    /// Has `dest`'s polls looked at after this round's commit.
    fn wake(&mut self, dest: &str) {
        if !self.woken.iter().any(|d| d == dest) {
            self.woken.push(dest.to_string());
        }
    }

    /// Drops polls whose HTTP request is gone.
    pub(super) fn prune(&mut self) {
        self.waiting.retain(|_, list| {
            list.retain(|w| !w.reply.is_closed());
            !list.is_empty()
        });
    }
}

impl State {
    /// A long-poll arrives: acknowledge up to its cursor if asked, then queue it to be
    /// answered after the commit.
    pub(super) fn poll(
        &mut self,
        tx: &mut Txn,
        client: &str,
        stream: Stream,
        (after, ack): (u64, bool),
        (max, wait): (usize, bool),
        reply: oneshot::Sender<Vec<Delivery>>,
    ) -> rusqlite::Result<()> {
        let dest = stream_dest(client, stream);
        if ack {
            self.http_ack(tx, &dest, after)?;
        }
        self.polls
            .waiting
            .entry(dest.clone())
            .or_default()
            .push(Waiter {
                after,
                max: max.max(1),
                wait,
                reply,
            });
        self.polls.wake(&dest);
        Ok(())
    }

    /// Acknowledges `dest` up to `upto`, but never beyond what was handed out; returns the
    /// acknowledged point.
    pub(super) fn http_ack(
        &mut self,
        tx: &mut Txn,
        dest: &str,
        upto: u64,
    ) -> rusqlite::Result<u64> {
        if !self.locals.contains_key(dest) {
            let acked = tx.acked(dest)?;
            self.locals.insert(dest.to_string(), StreamOut::new(acked));
        }
        let limit = self.polls.handed_out.get(dest).copied().unwrap_or(0);
        let stream = self
            .locals
            .get_mut(dest)
            .expect("present or inserted above");
        let upto = upto.min(limit.max(stream.acked()));
        if stream.confirm_upto(upto) {
            self.acked_streams.insert(dest.to_string());
        }
        Ok(upto.max(stream.acked()))
    }

    /// Answers the polls of every stream that got something this round, from committed rows.
    pub(super) fn serve_polls(&mut self, journal: &Journal, now: u64) -> rusqlite::Result<()> {
        for dest in std::mem::take(&mut self.polls.woken) {
            let Some(list) = self.polls.waiting.remove(&dest) else {
                continue;
            };
            let acked = match self.locals.get(&dest) {
                Some(l) => l.acked(),
                None => journal.acked(&dest)?,
            };
            let mut still = Vec::new();
            for w in list {
                if w.reply.is_closed() {
                    continue;
                }
                let rows = journal.read(&dest, w.after.max(acked), w.max)?;
                let fresh: Vec<Delivery> = rows
                    .into_iter()
                    .filter(|r| !matches!(r.expires_at, Some(e) if e <= now))
                    .map(|r| Delivery {
                        seq: r.lseq,
                        body: r.body,
                    })
                    .collect();
                match fresh.last() {
                    None if w.wait => still.push(w),
                    None => {
                        let _ = w.reply.send(Vec::new());
                    }
                    Some(last) => {
                        let top = self.polls.handed_out.entry(dest.clone()).or_insert(0);
                        *top = (*top).max(last.seq);
                        let _ = w.reply.send(fresh);
                    }
                }
            }
            if !still.is_empty() {
                self.polls.waiting.insert(dest, still);
            }
        }
        Ok(())
    }
}
