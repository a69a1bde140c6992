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
use crate::message::{Kind, Message, MessageId};

/// The application's receiving side, shared by the client handles and the transports.
pub(crate) struct Handover {
    seen: Mutex<Seen>,
    repeats: AtomicU64,
    replies: Mutex<HashMap<MessageId, oneshot::Sender<Message>>>,
    commands: mpsc::Sender<Message>,
    receipts: mpsc::Sender<Message>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Nothing panics while holding these locks (plain map operations), so poisoning cannot
    // happen; recover the data rather than propagate a panic if it ever did.
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Handover {
    pub(crate) fn new(commands: mpsc::Sender<Message>, receipts: mpsc::Sender<Message>) -> Self {
        Handover {
            seen: Mutex::new(Seen::default()),
            repeats: AtomicU64::new(0),
            replies: Mutex::new(HashMap::new()),
            commands,
            receipts,
        }
    }

    /// Repeats dropped so far.
    pub(crate) fn repeats(&self) -> u64 {
        self.repeats.load(Ordering::Relaxed)
    }

    /// Registers a `request` waiting for the reply to `id`.
    pub(crate) fn expect_reply(&self, id: &str) -> oneshot::Receiver<Message> {
        let (tx, rx) = oneshot::channel();
        locked(&self.replies).insert(id.to_string(), tx);
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

    /// Hands `m` over once. Cancel-safe: a message counts as handed over only once it is on a
    /// channel or with its request, so a transport torn down in the middle loses nothing (the
    /// node delivers it again, unacknowledged, and it is handed over then).
    pub(crate) async fn deliver(&self, m: Message) {
        if locked(&self.seen).contains(&m) {
            self.repeat(&m);
            return;
        }
        let is_reply = m.kind == Kind::Cmd
            && m.reply_to
                .as_ref()
                .is_some_and(|r| locked(&self.replies).contains_key(r));
        if is_reply {
            let waiter = m
                .reply_to
                .as_ref()
                .and_then(|r| locked(&self.replies).remove(r));
            if let Some(w) = waiter {
                locked(&self.seen).insert(&m);
                // A request that stopped waiting just now: the reply is still handed over.
                if let Err(m) = w.send(m) {
                    let _ = self.commands.send(m).await;
                }
                return;
            }
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
            }
            // The application dropped this receiver: it does not want these.
            Err(_) => {
                locked(&self.seen).insert(&m);
            }
        }
    }
}
