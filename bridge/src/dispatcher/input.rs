//! What the dispatcher takes in. The broker front-end declares its own events
//! ([`medlink_broker::Inbound`]); the HTTP API's requests are declared here, by their
//! consumer, and so is the uplink's ([`ParentEvent`]).

use bytes::Bytes;
use medlink_broker::{Accept, Inbound, Stream};
use std::future::Future;
use std::pin::Pin;

use tokio::sync::{mpsc, oneshot};

use crate::clients::{Cursor, Page};
use crate::link::uplink::ParentEvent;

/// A request from the HTTP API. Like the broker's events, those that carry custody come
/// with a reply channel answered after the round's commit.
#[derive(Debug)]
pub enum Request {
    /// A command submitted over HTTP. Like an MQTT command, but the API chose the `id` to use
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
    /// A child node linked over HTTP posts a link frame.
    LinkFrame {
        /// The child node's id.
        child: String,
        /// Raw frame.
        payload: Bytes,
        /// Where to send the verdict.
        reply: oneshot::Sender<Accept>,
    },
    /// The console's agent sends `frame` (a question) down to child `child`.
    LinkSend {
        /// The child node.
        child: String,
        /// The frame.
        frame: Vec<u8>,
    },
    /// An operator's request (dead letters, re-sends, the operator log).
    Operator(super::operator::OperatorRequest),
    /// A child node linked over HTTP asks for the frames waiting for it (a long-poll). The
    /// reply is `None` if it is not a child of this node.
    LinkPoll {
        /// The child node's id.
        child: String,
        /// Where the frames go; dropping the receiver abandons the poll.
        reply: oneshot::Sender<Option<Vec<Bytes>>>,
    },
}

/// One input to a round.
pub(super) enum Input {
    Broker(Inbound),
    Http(Request),
    Parent(ParentEvent),
    Files(crate::files::Ready),
}

/// Most items handled in one round (one transaction).
const MAX_ROUND: usize = 4096;

/// Where the dispatcher's inputs come from.
pub struct Inputs {
    /// The broker front-end's events.
    pub broker: mpsc::Receiver<Inbound>,
    /// The HTTP API's requests.
    pub http: mpsc::Receiver<Request>,
    /// The uplink's events.
    pub parent: mpsc::Receiver<ParentEvent>,
    /// Held commands whose files arrived (from the file mover).
    pub files: mpsc::UnboundedReceiver<crate::files::Ready>,
}

impl Inputs {
    /// Whether no input waits on any channel.
    pub(super) fn is_idle(&self) -> bool {
        self.broker.is_empty()
            && self.http.is_empty()
            && self.parent.is_empty()
            && self.files.is_empty()
    }

    /// Waits for the next input or `tick`, then takes whatever else is waiting, up to
    /// [`MAX_ROUND`]: one round's worth. `None` once `stopped` (the node's stop) completes.
    pub(super) async fn next_round<S: Future>(
        &mut self,
        tick: &mut tokio::time::Interval,
        stopped: Pin<&mut S>,
    ) -> Option<Vec<Input>> {
        let mut items: Vec<Input> = Vec::new();
        tokio::select! {
            Some(i) = self.broker.recv() => items.push(Input::Broker(i)),
            Some(r) = self.http.recv() => items.push(Input::Http(r)),
            Some(p) = self.parent.recv() => items.push(Input::Parent(p)),
            Some(f) = self.files.recv() => items.push(Input::Files(f)),
            _ = tick.tick() => {}
            _ = stopped => return None,
        }
        while items.len() < MAX_ROUND {
            match self.broker.try_recv() {
                Ok(i) => items.push(Input::Broker(i)),
                Err(_) => break,
            }
        }
        while items.len() < MAX_ROUND {
            match self.http.try_recv() {
                Ok(r) => items.push(Input::Http(r)),
                Err(_) => break,
            }
        }
        while items.len() < MAX_ROUND {
            match self.parent.try_recv() {
                Ok(p) => items.push(Input::Parent(p)),
                Err(_) => break,
            }
        }
        while let Ok(f) = self.files.try_recv() {
            items.push(Input::Files(f));
        }
        Some(items)
    }
}
