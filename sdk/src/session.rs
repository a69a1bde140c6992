//! What one transport session works with and ends with: the connection task's state
//! ([`Core`], which survives from session to session), the HTTP cursors, and how a session
//! ended. The driver picks sessions; `mqtt.rs` and `http.rs` run them; all three use this.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use medlink_wire::Cursor;
use rustls::ClientConfig;
use tokio::sync::{mpsc, oneshot, watch};
use tracing::info;

use crate::handover::Handover;
use crate::message::Address;
use crate::sendq::{Pending, SendQueue};
use crate::{Error, Transport};

/// Receive positions over HTTP (the node's cursor after the last page handed over, per
/// stream; `None` before the first). Kept across sessions so a new poll acknowledges what
/// the application already has.
#[derive(Debug, Default)]
pub(crate) struct Cursors {
    pub inbox: Option<Cursor>,
    pub receipts: Option<Cursor>,
}

/// Everything the connection task owns.
pub(crate) struct Core {
    pub me: Address,
    pub password: String,
    /// The MQTT client id: the same for every session of this client, so a new connection
    /// takes over a half-dead old one at the node.
    pub client_id: String,
    /// From the application's CA; `None` without one.
    pub tls: Option<Arc<ClientConfig>>,
    pub queue: SendQueue,
    /// New sends from the client handles; closed when every handle is gone.
    pub submits: mpsc::UnboundedReceiver<Pending>,
    pub handover: Arc<Handover>,
    /// The transport in use, `None` while disconnected.
    pub link: watch::Sender<Option<Transport>>,
    pub cursors: Cursors,
    /// Set by `Client::close`.
    pub stop: watch::Receiver<bool>,
    /// Told about the first session (for `Client::connect` without an outbox).
    pub first: Option<oneshot::Sender<Result<(), Error>>>,
    /// Sessions established, for `Client::sessions`.
    pub sessions: Arc<AtomicU64>,
}

impl Core {
    /// A session is up on `t`.
    pub(crate) fn connected(&mut self, t: Transport) {
        info!(transport = ?t, node = %self.me.node, "connected");
        self.sessions.fetch_add(1, Ordering::Relaxed);
        self.link.send_replace(Some(t));
        if let Some(f) = self.first.take() {
            let _ = f.send(Ok(()));
        }
    }

    /// Takes a new send into the queue; false when every client handle is gone.
    pub(crate) fn take(&mut self, p: Option<Pending>) -> bool {
        match p {
            Some(p) => {
                self.queue.push(p);
                true
            }
            None => false,
        }
    }

    /// Resolves when `Client::close` was called.
    pub(crate) async fn stopped(stop: &mut watch::Receiver<bool>) {
        if stop.wait_for(|s| *s).await.is_err() {
            // The sender lives in the client handles; gone means closed too.
            std::future::pending::<()>().await;
        }
    }
}

/// How a session ended.
#[derive(Debug)]
pub(crate) enum Ended {
    /// Every client handle is gone, or `close` was called.
    Closed,
    /// The connection failed or was lost; `connected` if it had been up.
    Lost { connected: bool, reason: String },
    /// The node refused us (login, permissions): retrying will not help soon.
    Refused(Error),
}
