//! What the broker front-end tells the node logic, and what it hears back.
//!
//! The front-end and the node run on different tasks; they talk through one channel of
//! [`Inbound`] items. Items that carry custody come with a reply channel: the front-end writes
//! the PUBACK (or its v5 reason code) only when the reply arrives, which the node sends after
//! its journal commit.

use bytes::Bytes;
use tokio::sync::oneshot;

/// Identifies one network connection for the lifetime of the process.
pub type ConnId = u64;

/// The node's verdict on a publish that carried custody.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Accept {
    /// Committed to the journal (or a duplicate of something already committed).
    Committed,
    /// Rejected; the reason has been sent to the publisher as a receipt. PUBACK 0x99 on v5.
    Rejected(String),
    /// The ACL does not let this identity publish there. PUBACK 0x87 on v5.
    NotAuthorized,
    /// Over the identity's publish rate; not accepted. PUBACK 0x97 (quota exceeded) on v5.
    RateLimited,
    /// Refused without custody because the target is known here to be unreachable (HTTP
    /// submissions only: MQTT submissions are accepted and get a `failed` receipt).
    Unroutable(String),
    /// The node could not take custody (journal failure, shutting down). No PUBACK is sent, so
    /// the publisher retries.
    Unavailable,
}

/// Which of a client's two delivery streams a subscription opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Stream {
    /// Commands, on `org/<node>/<client>/cmd`.
    Commands,
    /// Receipts about the client's own commands, on `org/<node>/<client>/receipt`.
    Receipts,
}

/// One event from the broker front-end to the node logic.
#[derive(Debug)]
pub enum Inbound {
    /// A client published a command to its own outbox.
    Command {
        /// Authenticated identity of the publisher.
        client: String,
        /// Raw payload.
        payload: Bytes,
        /// Where to send the verdict; `None` for QoS 0.
        reply: Option<oneshot::Sender<Accept>>,
    },
    /// A client's command refused before custody (rate limit): the node tells the sender
    /// why with a `rejected` receipt, and does nothing else with it.
    Refused {
        /// Authenticated identity of the publisher.
        client: String,
        /// Raw payload (for the receipt's reference to the command id).
        payload: Bytes,
        /// Why, in words for the sender.
        reason: String,
    },
    /// A child node published a link frame.
    LinkFrame {
        /// The child node's id.
        child: String,
        /// Raw frame.
        payload: Bytes,
        /// Where to send the verdict; `None` for QoS 0.
        reply: Option<oneshot::Sender<Accept>>,
    },
    /// A client connection subscribed to its commands or receipts and can receive them.
    InboxOpen {
        /// Client identity.
        client: String,
        /// Connection.
        conn: ConnId,
        /// Which stream.
        stream: Stream,
    },
    /// A connection that had a stream open unsubscribed or went away.
    InboxClosed {
        /// Client identity.
        client: String,
        /// Connection.
        conn: ConnId,
        /// Which stream.
        stream: Stream,
        /// The connection read the stream through a `$share/` group, so its deliveries did not
        /// also go to the identity's other connections.
        shared: bool,
    },
    /// A client acknowledged (PUBACK) the commands with these envelope ids, in the order it
    /// acknowledged them. A connection reports every PUBACK of one read together, and before
    /// any other event of its own, so they keep their place among its events.
    Delivered {
        /// Client identity.
        client: String,
        /// Envelope ids.
        ids: Vec<String>,
    },
    /// A child node subscribed to its down link.
    ChildOpen {
        /// Child node id.
        child: String,
        /// Connection.
        conn: ConnId,
    },
    /// A child node's connection went away.
    ChildClosed {
        /// Child node id.
        child: String,
        /// Connection.
        conn: ConnId,
    },
}
