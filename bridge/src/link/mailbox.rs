//! Frames for child nodes linked over HTTP.
//!
//! A child on MQTT receives its frames through the router (`link/<child>/down`). A child on
//! HTTP long-polls for them instead, so they wait here, in memory: frames carry no custody of
//! their own (the go-back-N window resends whatever is lost), so a bounded queue that drops
//! its oldest frames is enough, and a restarted parent simply starts empty.

use std::collections::VecDeque;

use foldhash::HashMap;

use bytes::Bytes;
use tokio::sync::oneshot;

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
    pub(super) fn push(&mut self, child: &str, frame: Bytes) {
        let mb = self.boxes.entry(child.to_string()).or_default();
        if mb.frames.len() >= MAX_QUEUED {
            mb.frames.pop_front();
        }
        mb.frames.push_back(frame);
        if let Some(w) = mb.waiter.take() {
            let _ = w.send(Some(mb.frames.drain(..).collect()));
        }
    }

    /// `child` polls: it gets what waits, or waits for the next frame (an older poll of the
    /// same child is answered empty).
    pub(super) fn poll(&mut self, child: &str, reply: oneshot::Sender<Option<Vec<Bytes>>>) {
        let mb = self.boxes.entry(child.to_string()).or_default();
        if mb.frames.is_empty() {
            if let Some(old) = mb.waiter.replace(reply) {
                let _ = old.send(Some(Vec::new()));
            }
        } else {
            let _ = reply.send(Some(mb.frames.drain(..).collect()));
        }
    }
}
