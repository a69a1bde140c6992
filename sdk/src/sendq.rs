//! Sends not yet in the node's custody, in the order they were made. Every transport session
//! transmits from the front of this queue and removes an entry only when the node confirmed
//! custody (PUBACK, 202); a session that dies leaves the rest here, and the next one sends
//! them again with the same ids. With an outbox the queue is mirrored in the file.

use std::collections::VecDeque;
use std::sync::Arc;

use bytes::Bytes;
use tokio::sync::{oneshot, watch};
use tracing::warn;

use crate::message::MessageId;
use crate::outbox::{self, Outbox};
use crate::Error;

/// One send.
pub(crate) struct Pending {
    /// The id in the body.
    pub id: MessageId,
    /// The submission JSON.
    pub body: Bytes,
    /// Its row in the outbox.
    pub seq: Option<i64>,
    /// Told when the node has custody (or refused it for good).
    pub waiter: Option<oneshot::Sender<Result<(), Error>>>,
}

/// The queue, owned by the connection task.
pub(crate) struct SendQueue {
    items: VecDeque<Pending>,
    outbox: Option<Arc<Outbox>>,
    /// Sends made and not yet finished, for `Client::pending` and `Client::flush`: counted up
    /// by the client when it makes one (before it reaches this queue), down here.
    len: Arc<watch::Sender<usize>>,
}

impl SendQueue {
    pub(crate) fn new(outbox: Option<Arc<Outbox>>, len: Arc<watch::Sender<usize>>) -> Self {
        SendQueue {
            items: VecDeque::new(),
            outbox,
            len,
        }
    }

    pub(crate) fn push(&mut self, p: Pending) {
        self.items.push_back(p);
    }

    pub(crate) fn len(&self) -> usize {
        self.items.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    pub(crate) fn get(&self, i: usize) -> Option<&Pending> {
        self.items.get(i)
    }

    /// The position of the send with `id`.
    pub(crate) fn position(&self, id: &str) -> Option<usize> {
        self.items.iter().position(|p| p.id == id)
    }

    /// The node has custody of the sends at `positions` (ascending or not).
    pub(crate) async fn custody(&mut self, positions: &[usize]) {
        self.finish(positions, |_| Ok(())).await;
    }

    /// The node refused the send at `at` for good: tell its caller, forget it.
    pub(crate) async fn refused(&mut self, at: usize, reason: String) {
        if let Some(p) = self.items.get(at) {
            warn!(id = %p.id, %reason, "the node refused a command");
        }
        self.finish(&[at], |id| {
            Err(Error::Rejected {
                id: id.to_string(),
                reason: reason.clone(),
            })
        })
        .await;
    }

    async fn finish(&mut self, positions: &[usize], outcome: impl Fn(&str) -> Result<(), Error>) {
        let mut sorted = positions.to_vec();
        sorted.sort_unstable();
        sorted.dedup();
        let mut done = Vec::with_capacity(sorted.len());
        // From the back, so earlier positions stay valid.
        for &i in sorted.iter().rev() {
            if let Some(p) = self.items.remove(i) {
                done.push(p);
            }
        }
        self.len.send_modify(|n| *n = n.saturating_sub(done.len()));
        let seqs: Vec<i64> = done.iter().filter_map(|p| p.seq).collect();
        for p in done {
            if let Some(w) = p.waiter {
                let _ = w.send(outcome(&p.id));
            }
        }
        if let (Some(ob), false) = (&self.outbox, seqs.is_empty()) {
            // A failed delete only means a resend after the next start, which the node
            // recognises by id.
            if let Err(e) = outbox::blocking(ob, move |o| o.delete(&seqs)).await {
                warn!(error = %e, "outbox: could not forget delivered sends");
            }
        }
    }
}
