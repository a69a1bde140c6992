//! Handing deliveries to the application, the same way for every transport: repeats dropped,
//! replies given to the `request` waiting for them, everything else put on the application's
//! channels. A transport acknowledges a delivery (PUBACK, or the next poll's cursor) only after
//! [`Handover::deliver`] returned for it, so nothing is acknowledged that the application does
//! not have.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use tokio::sync::{mpsc, oneshot};
use tracing::debug;

use crate::dedup::Seen;
use crate::message::{Address, Kind, Message, MessageId};

/// A `request` waiting: who may answer it, and where the answer goes.
struct Waiter {
    target: Address,
    answer: oneshot::Sender<Message>,
}

impl Waiter {
    /// Whether `m` ends the request: a reply from its target (or from a member of the target
    /// service, as the member's node vouches with `as_service`), or a receipt (only nodes
    /// issue those) saying it failed, expired or was rejected. Anyone else who knows the id is
    /// ignored.
    fn answered_by(&self, m: &Message) -> bool {
        match m.kind {
            Kind::Cmd => {
                m.from == self.target
                    || (m.from.node == self.target.node
                        && m.as_service.as_deref() == Some(self.target.client.as_str()))
            }
            Kind::Receipt => m.receipt().is_some_and(|r| r.status.is_failure()),
        }
    }
}

/// The application's receiving side, shared by the client handles and the transports.
pub(crate) struct Handover {
    seen: Mutex<Seen>,
    repeats: AtomicU64,
    replies: Mutex<HashMap<MessageId, Waiter>>,
    commands: mpsc::Sender<Message>,
    receipts: mpsc::Sender<Message>,
    /// Hand over only answers to waiting requests (`Options::replies_only`).
    replies_only: bool,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks (plain map operations), so poisoning cannot
    // happen; recover the data rather than propagate a panic if it ever did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handover {
    pub(crate) fn new(
        commands: mpsc::Sender<Message>,
        receipts: mpsc::Sender<Message>,
        replies_only: bool,
    ) -> Self {
        Handover {
            seen: Mutex::new(Seen::default()),
            repeats: AtomicU64::new(0),
            replies: Mutex::new(HashMap::new()),
            commands,
            receipts,
            replies_only,
        }
    }

    /// Repeats dropped so far.
    pub(crate) fn repeats(&self) -> u64 {
        self.repeats.load(Ordering::Relaxed)
    }

    /// Registers a `request` to `target` waiting for the reply to `id` (or for a receipt that
    /// ends it).
    pub(crate) fn expect_reply(&self, id: &str, target: &Address) -> oneshot::Receiver<Message> {
        let (answer, rx) = oneshot::channel();
        let waiter = Waiter {
            target: target.clone(),
            answer,
        };
        locked(&self.replies).insert(id.to_string(), waiter);
        rx
    }

    /// A `request` gave up waiting (a late reply then goes to the commands channel).
    pub(crate) fn forget_reply(&self, id: &str) {
        locked(&self.replies).remove(id);
    }

    fn repeat(&self, m: &Message) {
        self.repeats.fetch_add(1, Ordering::Relaxed);
        debug!(id = %m.id, "repeat delivery dropped");
    }

    /// Hands `m` over once. True if the application has it (or had it: a repeat); false if
    /// the channel it belongs on was dropped by the application, in which case the transport
    /// must not acknowledge it — it stays with the node for a client that reads.
    ///
    /// Cancel-safe: a message counts as handed over only once it is on a channel or with its
    /// request, so a transport torn down in the middle loses nothing (the node delivers it
    /// again, unacknowledged, and it is handed over then).
    pub(crate) async fn deliver(&self, m: Message) -> bool {
        if locked(&self.seen).contains(&m) {
            self.repeat(&m);
            return true;
        }
        let waiter = m.reply_to.as_ref().and_then(|r| {
            let mut replies = locked(&self.replies);
            match replies.get(r) {
                Some(w) if w.answered_by(&m) => replies.remove(r),
                Some(_) => {
                    if m.kind == Kind::Cmd {
                        debug!(id = %m.id, from = %m.from, "a reply from someone other than the request's target is not its answer");
                    }
                    None
                }
                None => None,
            }
        });
        let m = match waiter {
            Some(w) => {
                locked(&self.seen).insert(&m);
                match w.answer.send(m) {
                    Ok(()) => return true,
                    // The request stopped waiting just now: the reply goes to the commands.
                    Err(back) => {
                        locked(&self.seen).forget(&back);
                        back
                    }
                }
            }
            None => m,
        };
        if self.replies_only {
            // Not ours to take: left unacknowledged for the identity's receiving devices.
            return false;
        }
        let channel = match m.kind {
            Kind::Cmd => &self.commands,
            Kind::Receipt => &self.receipts,
        };
        match channel.reserve().await {
            Ok(permit) => {
                // From here to the send nothing awaits, so "seen" and "on the channel" happen
                // together.
                if locked(&self.seen).insert(&m) {
                    permit.send(m);
                } else {
                    self.repeat(&m);
                }
                true
            }
            Err(_) => false,
        }
    }
}
