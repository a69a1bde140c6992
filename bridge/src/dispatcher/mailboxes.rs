//! Frames for child nodes linked over HTTP.
//!
//! A child on MQTT receives its frames through the router (`link/<child>/down`). A child on
//! HTTP long-polls for them instead, so they wait here, in memory: frames carry no custody of
//! their own (the go-back-N window resends whatever is lost), so a bounded queue that drops
//! its oldest frames is enough, and a restarted parent simply starts empty.

use std::collections::{HashMap, VecDeque};

use bytes::Bytes;
use medlink_broker::ConnId;
use tokio::sync::oneshot;
use tracing::{debug, info};

use super::State;

/// The `child_conn` entry of a child linked over HTTP (no MQTT connection has this id).
pub(super) const HTTP_CONN: ConnId = ConnId::MAX;

/// Frames kept per child; older ones are dropped (and resent by the window if needed).
const MAX_QUEUED: usize = 1024;

#[derive(Default)]
struct Mailbox {
    frames: VecDeque<Bytes>,
    waiter: Option<oneshot::Sender<Option<Vec<Bytes>>>>,
}

/// Mailboxes by child id.
#[derive(Default)]
pub(super) struct Mailboxes {
    boxes: HashMap<String, Mailbox>,
}

impl Mailboxes {
    /// Queues a frame for `child`, answering its waiting poll at once.
    fn push(&mut self, child: &str, frame: Bytes) {
        let mb = self.boxes.entry(child.to_string()).or_default();
        if mb.frames.len() >= MAX_QUEUED {
            mb.frames.pop_front();
        }
        mb.frames.push_back(frame);
        if let Some(w) = mb.waiter.take() {
            let _ = w.send(Some(mb.frames.drain(..).collect()));
        }
    }
}

impl State {
    /// Sends a frame to `child` over whichever transport it is linked by.
    pub(super) fn send_down(&mut self, child: &str, frame: Bytes) {
        if self.child_conn.get(child) == Some(&HTTP_CONN) {
            self.mailboxes.push(child, frame);
        } else {
            self.publish(&medlink_broker::acl::link_down_topic(child), frame);
        }
    }

    /// An HTTP child polls: it is linked (over HTTP) from now on; it gets what waits, or
    /// waits for the next frame.
    pub(super) fn link_poll(&mut self, child: &str, reply: oneshot::Sender<Option<Vec<Bytes>>>) {
        let Some(link) = self.downs.get_mut(child) else {
            debug!(child, "link poll from a node that is not a child here");
            let _ = reply.send(None);
            return;
        };
        link.last_heard = std::time::Instant::now();
        if self.child_conn.get(child) != Some(&HTTP_CONN) {
            info!(child, "child link up (HTTP)");
            self.child_conn.insert(child.to_string(), HTTP_CONN);
            link.open();
        } else if !link.online {
            link.open();
        }
        let mb = self.mailboxes.boxes.entry(child.to_string()).or_default();
        if mb.frames.is_empty() {
            if let Some(old) = mb.waiter.replace(reply) {
                let _ = old.send(Some(Vec::new()));
            }
        } else {
            let _ = reply.send(Some(mb.frames.drain(..).collect()));
        }
    }
}
