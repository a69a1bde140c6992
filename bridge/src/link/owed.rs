//! Acknowledgements this node owes its peers for the batches it took: sent a moment later, one
//! for several batches, instead of one per batch.
//!
//! A link's `ack` is cumulative, and the peer only needs it to forget what this node holds
//! (and to keep its window open). Sent at once for every batch, each one woke the peer for
//! nothing else: at 1,000 commands/s every node of the chain woke twice per command, once for
//! the command and once for the next hop's `ack`, and each wake-up (a loopback delivery, a
//! context switch, an epoll round) took CPU the command passing through the other nodes was
//! waiting for on two cores. An acknowledgement now waits up to [`ACK_DELAY`], or goes at once
//! when [`ACK_AFTER`] envelopes wait for it, so a burst keeps the peer's window moving.
//!
//! Nothing about custody changes: an ack is owed only once the transaction that took the batch
//! has committed, and a peer that hears it later only holds its copies a little longer (its
//! custody log drops them all the same, `journal/logged.rs`: it writes to SQLite every 50 ms).

use std::time::{Duration, Instant};

use foldhash::HashMap;

use super::frame::Frame;
use crate::envelope::Priority;
use crate::journal::{Peer, WRITE_CHUNK};

/// Longest an acknowledgement waits for others to go with it.
pub const ACK_DELAY: Duration = Duration::from_millis(5);
/// Envelopes taken from a lane since its last acknowledgement beyond which it goes at once:
/// the size of a chunk of logged rounds the peer writes to SQLite ([`WRITE_CHUNK`]), so that
/// under load the acknowledgement still reaches it before the rounds it covers do, and they
/// are dropped rather than inserted and deleted again.
pub const ACK_AFTER: u64 = WRITE_CHUNK as u64;

/// What is owed on one incoming lane.
struct Owed {
    /// Committed up to here.
    upto: u64,
    /// Envelopes taken since the last acknowledgement sent.
    taken: u64,
    /// When the oldest of them was committed.
    since: Instant,
}

/// Acknowledgements owed, per incoming lane.
#[derive(Default)]
pub struct OwedAcks {
    owed: HashMap<(Peer, Priority), Owed>,
    /// When the oldest owed acknowledgement is due (none owed: `None`).
    due: Option<Instant>,
}

impl OwedAcks {
    /// `peer`'s `lane` is committed up to `upto`, `taken` more envelopes with it. Returns the
    /// acknowledgement to send now, if that many wait for it.
    pub fn owe(
        &mut self,
        peer: Peer,
        lane: Priority,
        upto: u64,
        taken: u64,
        now: Instant,
    ) -> Option<(Peer, Vec<u8>)> {
        let owed = self.owed.entry((peer.clone(), lane)).or_insert(Owed {
            upto,
            taken: 0,
            since: now,
        });
        owed.upto = owed.upto.max(upto);
        owed.taken += taken;
        if owed.taken >= ACK_AFTER {
            let upto = owed.upto;
            self.owed.remove(&(peer.clone(), lane));
            return Some((peer, Frame::Ack { upto, lane }.to_bytes()));
        }
        let due = now + ACK_DELAY;
        self.due = Some(self.due.map_or(due, |d| d.min(due)));
        None
    }

    /// When the oldest owed acknowledgement is due, if any is owed.
    pub fn due_at(&self) -> Option<Instant> {
        self.due
    }

    /// The acknowledgements due at `now` (every one owed when `all`), as frames to send. Only
    /// looks at the owed ones once the oldest is due: at most once per [`ACK_DELAY`].
    pub fn take_due(&mut self, now: Instant, all: bool) -> Vec<(Peer, Vec<u8>)> {
        if !all && self.due.is_none_or(|due| due > now) {
            return Vec::new();
        }
        let mut frames = Vec::new();
        let mut next: Option<Instant> = None;
        self.owed.retain(|(peer, lane), owed| {
            let due = owed.since + ACK_DELAY;
            if all || due <= now {
                let frame = Frame::Ack {
                    upto: owed.upto,
                    lane: *lane,
                };
                frames.push((peer.clone(), frame.to_bytes()));
                false
            } else {
                next = Some(next.map_or(due, |n| n.min(due)));
                true
            }
        });
        self.due = next;
        frames
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn acked(frames: &[(Peer, Vec<u8>)]) -> Vec<(Peer, u64)> {
        frames
            .iter()
            .map(|(peer, bytes)| match Frame::parse(bytes) {
                Ok(Frame::Ack { upto, .. }) => (peer.clone(), upto),
                _ => panic!("not an ack"),
            })
            .collect()
    }

    /// Acknowledgements wait for [`ACK_DELAY`], one per lane with the furthest point; many
    /// envelopes at once get theirs at once.
    #[test]
    fn acknowledgements_go_together_after_a_moment_or_at_once_when_many_wait() {
        let mut owed = OwedAcks::default();
        let t0 = Instant::now();
        let child = Peer::Child("c".into());
        assert!(owed.due_at().is_none());
        assert!(owed
            .owe(child.clone(), Priority::Normal, 3, 1, t0)
            .is_none());
        assert!(owed
            .owe(child.clone(), Priority::Normal, 5, 2, t0)
            .is_none());
        assert!(owed.owe(Peer::Parent, Priority::Normal, 9, 1, t0).is_none());
        assert_eq!(owed.due_at(), Some(t0 + ACK_DELAY));
        assert!(owed.take_due(t0, false).is_empty(), "not yet");
        let mut sent = acked(&owed.take_due(t0 + ACK_DELAY, false));
        sent.sort_by_key(|(_, upto)| *upto);
        assert_eq!(sent, [(child.clone(), 5), (Peer::Parent, 9)]);
        assert!(owed.due_at().is_none());

        let now = t0 + ACK_DELAY;
        assert!(owed
            .owe(child.clone(), Priority::Normal, 6, 1, now)
            .is_none());
        let burst = owed.owe(
            child.clone(),
            Priority::Normal,
            6 + ACK_AFTER,
            ACK_AFTER,
            now,
        );
        assert_eq!(
            acked(&burst.into_iter().collect::<Vec<_>>()),
            [(child.clone(), 6 + ACK_AFTER)]
        );
        assert!(
            owed.take_due(now + ACK_DELAY, false).is_empty(),
            "nothing left owed"
        );

        // At shutdown everything owed goes.
        owed.owe(child.clone(), Priority::Urgent, 2, 1, now);
        assert_eq!(acked(&owed.take_due(now, true)), [(child, 2)]);
    }
}
