//! Acknowledgements from peers, written with the next transaction instead of one of their own.
//!
//! A peer's `ack` frame lets this node forget what the peer has committed. Forgetting it needs
//! no commit of its own: if the node dies before the point reaches the disk, it sends those
//! envelopes again after the restart, and the peer skips them by link sequence
//! ([`InOrder`](super::frame::InOrder)), as it skips any go-back-N resend. So an
//! acknowledgement moves the lane's window at once, in memory, and its point is written at the
//! start of the next round's transaction, which commits anyway. At a steady flow of single
//! commands that halves the commits of every node in the middle of the tree (one per command
//! instead of two), and a round that only brought acknowledgements writes nothing.
//!
//! Not every next round writes them, though: forgetting a point is a `DELETE` in the queue and
//! its index, a few more pages in the commit, and a round that carries a command would make
//! that command wait for it at every hop (9 % of a middle node's time at 1,000 commands/s).
//! Points are written by a round with nothing else to do, which the dispatcher's 100 ms tick
//! makes whenever the node has a moment, or by any round once the oldest point has waited
//! [`WRITE_WITHIN`]: a node that is never idle still forgets what its peers hold. Writing
//! many points at once also costs less than one at a time: the same few pages change. A round
//! that runs the expiry sweep writes every point before the sweep, so that the sweep never
//! takes an acknowledged envelope for an expired one.

use std::time::{Duration, Instant};

use foldhash::HashMap;

use crate::journal::{Dest, Txn};
use crate::stats::DeliveredBy;

/// How long a point may wait for a round with nothing else to do before any round writes it.
pub const WRITE_WITHIN: Duration = Duration::from_millis(250);

/// Link acknowledgements not yet in the journal: the newest point per queue.
#[derive(Default)]
pub struct PendingAcks {
    /// Points received and not yet written.
    waiting: HashMap<Dest, u64>,
    /// When the oldest of `waiting` was noted.
    since: Option<Instant>,
    /// Points written in the transaction in progress, kept until it commits.
    writing: Vec<(Dest, u64, DeliveredBy)>,
}

impl PendingAcks {
    /// A peer acknowledged `dest` up to `upto` (a point past any it sent before).
    pub fn note(&mut self, dest: Dest, upto: u64) {
        let point = self.waiting.entry(dest).or_default();
        *point = (*point).max(upto);
        self.since.get_or_insert_with(Instant::now);
    }

    /// Whether any point waits to be written.
    pub fn is_empty(&self) -> bool {
        self.waiting.is_empty()
    }

    /// Whether a round should write the waiting points: it has nothing else to do (`idle`), or
    /// the oldest has waited [`WRITE_WITHIN`].
    pub fn due(&self, idle: bool) -> bool {
        match self.since {
            Some(since) => idle || since.elapsed() >= WRITE_WITHIN,
            None => false,
        }
    }

    /// Writes every waiting point in `tx`; they count as written once [`Self::committed`].
    pub fn write(&mut self, tx: &mut Txn) -> rusqlite::Result<()> {
        self.since = None;
        if self.waiting.is_empty() {
            return Ok(());
        }
        let start = self.writing.len();
        self.writing.extend(
            self.waiting
                .drain()
                .map(|(dest, upto)| (dest, upto, DeliveredBy::Link)),
        );
        tx.acknowledge_all(&self.writing[start..])
    }

    /// The transaction that wrote them committed.
    pub fn committed(&mut self) {
        self.writing.clear();
    }

    /// The transaction that wrote them failed: they wait for the next one.
    pub fn failed(&mut self) {
        for (dest, upto, _) in std::mem::take(&mut self.writing) {
            self.note(dest, upto);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::{lseqs, up};
    use crate::journal::{Durability, Journal};

    fn journal_with(dir: &tempfile::TempDir, n: u64) -> Journal {
        let mut j = Journal::open(&dir.path().join("j.db"), Durability::Process).unwrap();
        let mut t = j.begin().unwrap();
        for i in 1..=n {
            let env = crate::envelope::test_envelope(&i.to_string(), "a", "c");
            assert_eq!(t.enqueue(&up(), &env.head(), "body".into()).unwrap(), i);
        }
        t.commit().unwrap();
        j
    }

    /// A point is on disk only after the transaction that wrote it commits; one whose
    /// transaction failed is written by the next, and a newer point wins over an older one.
    #[test]
    fn points_reach_the_journal_with_the_next_commit() {
        let dir = tempfile::tempdir().unwrap();
        let mut j = journal_with(&dir, 5);
        let mut acks = PendingAcks::default();
        acks.note(up(), 2);
        acks.note(up(), 3);
        assert!(!acks.is_empty());
        assert_eq!(j.acked(&up()).unwrap(), 0, "noted, not written");

        let mut t = j.begin().unwrap();
        acks.write(&mut t).unwrap();
        drop(t); // the round failed
        acks.failed();
        assert_eq!(j.acked(&up()).unwrap(), 0);
        assert!(!acks.is_empty(), "a failed write waits for the next round");

        acks.note(up(), 1); // an older point never moves one back
        let mut t = j.begin().unwrap();
        acks.write(&mut t).unwrap();
        assert!(acks.is_empty());
        t.commit().unwrap();
        acks.committed();
        acks.failed(); // nothing left to put back once committed
        assert!(acks.is_empty());
        assert_eq!(j.acked(&up()).unwrap(), 3);
        assert_eq!(lseqs(&j, &up(), 3), [4, 5]);
    }
}
