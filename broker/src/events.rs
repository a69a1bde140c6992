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

/// One envelope handed to an HTTP poller: its sequence in the client's stream (the cursor
/// to acknowledge it with) and its JSON.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream position just after this delivery.
    pub cursor: Cursor,
    /// The envelope, as JSON.
    pub body: Bytes,
}

/// The answer to a poll: the deliveries, and the cursor after them (for an empty answer to
/// a poll without a cursor, the stream's acknowledged point: where this reader now stands).
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Where the reader stands after this page.
    pub cursor: Cursor,
    /// What it is handed, in order.
    pub deliveries: Vec<Delivery>,
}

/// A position in one of a client's streams as an HTTP client sees it: the last sequence it
/// has in each priority lane, urgent first. Written `u.n.b` (e.g. `0.17.3`); a plain number
/// `n` means `0.n.0`. Clients treat it as opaque.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(pub [u64; 3]);

impl Cursor {
    /// Whether the client has nothing yet.
    pub fn is_start(&self) -> bool {
        self.0 == [0; 3]
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [u, n, b] = self.0;
        write!(f, "{u}.{n}.{b}")
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Cursor, ()> {
        // Digits only: `u64::from_str` would also take a leading `+`.
        let parts: Vec<u64> = s
            .split('.')
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                p.parse::<u64>().map_err(|_| ())
            })
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [n] => Ok(Cursor([0, n, 0])),
            [u, n, b] => Ok(Cursor([u, n, b])),
            _ => Err(()),
        }
    }
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
    /// A command submitted over HTTP. Like `Command`, but the front-end chose the `id` to use
    /// if the submission has none (it answers with it), and a target known here to be
    /// unreachable is refused with [`Accept::Unroutable`] instead of accepted.
    Submit {
        /// Authenticated identity of the sender.
        client: String,
        /// Raw submission.
        payload: Bytes,
        /// Envelope id unless the submission names one.
        id: String,
        /// Where to send the verdict.
        reply: oneshot::Sender<Accept>,
    },
    /// An HTTP client reads one of its streams after `after` (a long-poll): the reply comes
    /// once something is there. With `ack`, everything up to `after` is first acknowledged.
    Poll {
        /// Client identity.
        client: String,
        /// Which stream.
        stream: Stream,
        /// Cursor: what the client has. `None`: a reader without a cursor, which starts at
        /// the oldest unacknowledged message (not at what other devices acknowledged).
        after: Option<Cursor>,
        /// Acknowledge everything up to `after` first.
        ack: bool,
        /// Most deliveries in the reply.
        max: usize,
        /// Wait for something to arrive; without it an empty stream is answered at once.
        wait: bool,
        /// Where the deliveries go; dropping the receiver abandons the poll.
        reply: oneshot::Sender<Page>,
    },
    /// An HTTP client acknowledges its stream up to `upto` (cumulative); the reply is the
    /// acknowledged point after it (never beyond what was handed out).
    Ack {
        /// Client identity.
        client: String,
        /// Which stream.
        stream: Stream,
        /// Cursor.
        upto: Cursor,
        /// Where the new acknowledged point goes.
        reply: oneshot::Sender<Cursor>,
    },
    /// A child node linked over HTTP asks for the frames waiting for it (a long-poll). The
    /// reply is `None` if it is not a child of this node.
    LinkPoll {
        /// The child node's id.
        child: String,
        /// Where the frames go; dropping the receiver abandons the poll.
        reply: oneshot::Sender<Option<Vec<Bytes>>>,
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
    },
    /// A client acknowledged (PUBACK) the command with this envelope id.
    Delivered {
        /// Client identity.
        client: String,
        /// Envelope id.
        id: String,
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
