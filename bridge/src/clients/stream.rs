//! The cursor of one client stream lane.
//!
//! Each client has two streams, commands and receipts ([`Target::Commands`],
//! [`Target::Receipts`]), queued in the journal like links are. A [`StreamOut`] is the cursor
//! of one stream: what was published, what is still unacknowledged, and how far everything is
//! acknowledged. MQTT clients acknowledge QoS 1 publishes in order, so acknowledgement is
//! tracked cumulatively, like a link: the journal stores "acknowledged up to N" per stream and
//! drops whole segments below it, instead of deleting envelope by envelope.

use std::collections::BTreeSet;

use bytes::Bytes;
// Per-delivery lookups by envelope id: foldhash, seeded per process, is several times cheaper
// than SipHash here, and a client can only place its own window's ids (at most
// `STREAM_WINDOW`) in these maps.
use foldhash::{HashMap, HashSet};
use medlink_broker::ConnId;

#[cfg(doc)]
use crate::journal::Target;
use crate::journal::{Dest, Journal, Queued, Stale};

/// Most unacknowledged deliveries per client stream.
pub const STREAM_WINDOW: usize = 1024;

/// Delivery state of one client stream.
#[derive(Debug, Default)]
pub struct StreamOut {
    /// Connections subscribed to the stream.
    pub conns: HashSet<ConnId>,
    /// Read cursor: highest sequence published (or skipped) in the current pass.
    sent: u64,
    /// Everything up to here is acknowledged (persisted in the journal).
    acked: u64,
    /// Everything up to here is acknowledged by the client, persisted or not yet.
    confirmed: u64,
    /// Published and unacknowledged: id → sequence. An id is in flight at most once, so a
    /// PUBACK names exactly one envelope.
    inflight: HashMap<String, u64>,
    /// The same sequences, ordered, to find the cumulative acknowledgement.
    inflight_seqs: BTreeSet<u64>,
    /// Bodies of in-flight envelopes that may want a `delivered` receipt.
    notices: HashMap<String, Bytes>,
}

/// Whether `body` may ask for a `delivered` receipt (a cheap scan; the caller parses to be
/// sure, since the word may also occur in params).
pub fn may_want_delivered(body: &[u8]) -> bool {
    static NEEDLE: std::sync::LazyLock<memchr::memmem::Finder<'static>> =
        std::sync::LazyLock::new(|| memchr::memmem::Finder::new(b"\"delivered\""));
    NEEDLE.find(body).is_some()
}

impl StreamOut {
    /// A stream whose journal says it is acknowledged up to `acked`.
    pub fn new(acked: u64) -> StreamOut {
        StreamOut {
            sent: acked,
            acked,
            confirmed: acked,
            ..StreamOut::default()
        }
    }

    /// Publishes everything unacknowledged again, starting at the journal's `floor`: used when
    /// a connection opens (a new device gets what is pending) or closes (nothing waits on a
    /// dead connection). Duplicates this may cause carry the same id.
    pub fn rewind(&mut self, floor: u64) {
        self.sent = floor.saturating_sub(1).max(self.confirmed);
        self.inflight.clear();
        self.inflight_seqs.clear();
        self.notices.clear();
    }

    /// Records a PUBACK for envelope `id`; false if it was not in flight here.
    pub fn acknowledged(&mut self, id: &str) -> bool {
        let Some(lseq) = self.inflight.remove(id) else {
            return false;
        };
        self.inflight_seqs.remove(&lseq);
        // The cumulative point is taken now: a rewind later in the same round must not lose it.
        let upto = match self.inflight_seqs.first() {
            Some(first) => first - 1,
            None => self.sent,
        };
        self.confirmed = self.confirmed.max(upto);
        true
    }

    /// An acknowledgement of everything up to `upto` at once (an HTTP cursor); deliveries in
    /// flight over MQTT at or below it are done too. Returns whether anything moved.
    pub fn confirm_upto(&mut self, upto: u64) -> bool {
        if upto <= self.confirmed {
            return false;
        }
        self.confirmed = upto;
        self.sent = self.sent.max(upto);
        self.inflight.retain(|_, lseq| *lseq > upto);
        self.inflight_seqs.retain(|lseq| *lseq > upto);
        true
    }

    /// If the cumulative acknowledgement moved, its new value, to persist; the stream takes
    /// it as its own with [`StreamOut::settled`] once that is committed.
    pub fn unsettled_ack(&self) -> Option<u64> {
        (self.confirmed > self.acked).then_some(self.confirmed)
    }

    /// A commit failed: acknowledgements not yet persisted count for nothing, and everything
    /// from the last persisted point is published again.
    pub fn forget_unsettled(&mut self) {
        self.confirmed = self.acked;
        self.rewind(0);
    }

    /// The journal now says the stream is acknowledged up to `upto`.
    pub fn settled(&mut self, upto: u64) {
        self.acked = self.acked.max(upto);
        self.confirmed = self.confirmed.max(self.acked);
    }

    /// Whether more can be published now.
    pub fn ready(&self) -> bool {
        !self.conns.is_empty() && self.inflight.len() < STREAM_WINDOW
    }

    /// The bodies to publish next, within the window. Expired envelopes are skipped into
    /// `stale`; an id already in flight (two senders chose the same id) stops the pass until
    /// the first is acknowledged, which keeps order.
    pub fn next_batch(
        &mut self,
        journal: &Journal,
        dest: &Dest,
        now: u64,
        stale: &mut Vec<Stale>,
    ) -> rusqlite::Result<Vec<Queued>> {
        let mut out = Vec::new();
        while self.ready() {
            let rows = journal.read(dest, self.sent, STREAM_WINDOW - self.inflight.len())?;
            if rows.is_empty() {
                break;
            }
            for row in rows {
                let Queued {
                    lseq,
                    id,
                    expires_at,
                    body,
                } = row;
                if self.inflight.contains_key(&id) {
                    return Ok(out);
                }
                self.sent = lseq;
                if matches!(expires_at, Some(e) if e <= now) {
                    let row = Queued {
                        lseq,
                        id,
                        expires_at,
                        body,
                    };
                    stale.push(Stale {
                        dest: dest.clone(),
                        row,
                    });
                    continue;
                }
                if may_want_delivered(&body) {
                    self.notices.insert(id.clone(), body.clone());
                }
                self.inflight.insert(id.clone(), lseq);
                self.inflight_seqs.insert(lseq);
                out.push(Queued {
                    lseq,
                    id,
                    expires_at,
                    body,
                });
            }
        }
        Ok(out)
    }

    /// The body of acknowledged `id` if it may want a `delivered` receipt.
    pub fn take_notice(&mut self, id: &str) -> Option<Bytes> {
        if self.notices.is_empty() {
            return None;
        }
        self.notices.remove(id)
    }

    /// How far the journal says this stream is acknowledged.
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Whether `lseq` is published and unacknowledged (the expiry sweep leaves those alone).
    pub fn in_flight(&self, lseq: u64) -> bool {
        !self.conns.is_empty() && lseq <= self.sent
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cumulative_acknowledgement_waits_for_the_oldest() {
        let mut s = StreamOut::new(10);
        s.conns.insert(1);
        for (id, l) in [("a", 11), ("b", 12), ("c", 14)] {
            s.inflight.insert(id.into(), l);
            s.inflight_seqs.insert(l);
            s.sent = l;
        }
        assert!(s.acknowledged("b"));
        assert_eq!(s.unsettled_ack(), None, "11 is still out");
        assert!(s.acknowledged("a"));
        assert_eq!(s.unsettled_ack(), Some(13));
        assert!(!s.acknowledged("zz"));
        assert!(s.acknowledged("c"));
        assert_eq!(s.unsettled_ack(), Some(14));
        // a rewind in the same round keeps what the client acknowledged
        s.rewind(0);
        assert_eq!(s.sent, 14);
        // a failed commit forgets it and goes back to the last settled point
        s.forget_unsettled();
        assert_eq!(s.sent, 10);
        assert_eq!(s.unsettled_ack(), None);
        s.settled(14);
        s.rewind(5);
        assert_eq!(s.sent, 14, "never rewinds below what is acknowledged");
    }
}
