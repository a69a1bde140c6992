//! The dispatcher's side of incoming link frames: batches committed in sequence order,
//! cumulative acks, heartbeats — from children (through the broker front-end) and from the
//! parent (through the uplink).

use std::time::Instant;

use medlink_broker::Accept;
use tracing::{error, warn};

use super::{Outbox, State, PARENT};
use crate::envelope::{Envelope, Priority};
use crate::frame::{Frame, InOrder};
use crate::journal::Txn;
use crate::links::LinkOut;
use crate::route::within;

/// The peer committed everything up to `upto` on `lane` of `link`: the journal forgets it.
fn acknowledged(
    tx: &mut Txn,
    link: &mut LinkOut,
    lane: Priority,
    upto: u64,
) -> rusqlite::Result<()> {
    let lane = link.lane_mut(lane);
    if lane.ack(upto) {
        tx.acknowledge(&lane.dest, upto)?;
    }
    Ok(())
}

impl State {
    /// Commits a batch from a link peer in sequence order; returns the cumulative ack.
    fn receive_batch(
        &mut self,
        tx: &mut Txn,
        peer: &str,
        lane: Priority,
        (epoch, floor): (u64, u64),
        msgs: &[crate::frame::Numbered],
        now: u64,
    ) -> rusqlite::Result<u64> {
        // Each lane is its own numbered stream, stored under its own key.
        let key = lane.dest(peer);
        let mut order = match self.link_in.get(&key) {
            Some(o) => *o,
            None => {
                let (last, epoch) = tx.link_in(&key)?;
                InOrder { last, epoch }
            }
        };
        let before = (order.last, order.epoch);
        if order.epoch != epoch && before.1 != 0 {
            warn!(
                peer,
                "peer's journal was replaced (new epoch); its sequence starts again"
            );
        }
        order.apply_epoch(epoch);
        order.apply_floor(floor);
        for m in msgs {
            match order.admit(m.p, m.s) {
                Some(true) => match Envelope::parse(m.e.get().as_bytes()) {
                    // Everything a child sends up originated in its own subtree; a `from`
                    // outside it is a compromised or misconfigured node posing as someone
                    // else, so it is dropped (and acknowledged, so the link moves on).
                    Ok(env) if peer != PARENT && !within(peer, &env.from.node) => {
                        self.stats.rejected();
                        error!(
                            peer,
                            id = %env.id,
                            from = %format!("{}/{}", env.from.node, env.from.client),
                            "envelope from a child claims a sender outside its subtree; dropped"
                        );
                    }
                    Ok(env) => self.accept(tx, env, now)?,
                    Err(e) => {
                        warn!(peer, seq = m.s, error = %e, "malformed envelope on link dropped")
                    }
                },
                Some(false) => {}
                None => break,
            }
        }
        if (order.last, order.epoch) != before {
            tx.set_link_in(&key, order.last, order.epoch)?;
        }
        self.link_in.insert(key, order);
        Ok(order.last)
    }

    pub(super) fn child_frame(
        &mut self,
        tx: &mut Txn,
        child: &str,
        payload: &[u8],
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<Accept> {
        let known = self.child_conn.contains_key(child);
        let Some(link) = self.downs.get_mut(child) else {
            warn!(child, "frame from a node that is not configured as a child");
            return Ok(Accept::NotAuthorized);
        };
        link.last_heard = Instant::now();
        if !link.online && known {
            link.open();
        }
        let frame = match Frame::parse(payload) {
            Ok(f) => f,
            Err(e) => {
                warn!(child, error = %e, "malformed link frame");
                return Ok(Accept::Rejected(format!("malformed frame: {e}")));
            }
        };
        if let Some(answer) = self.link_frame(tx, child, frame, now)? {
            out.to_children.push((child.to_string(), answer));
        }
        Ok(Accept::Committed)
    }

    pub(super) fn parent_frame(
        &mut self,
        tx: &mut Txn,
        payload: &[u8],
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<()> {
        let Some(up) = self.up.as_mut() else {
            return Ok(());
        };
        up.last_heard = Instant::now();
        let frame = match Frame::parse(payload) {
            Ok(f) => f,
            Err(e) => {
                warn!(error = %e, "malformed frame from parent");
                return Ok(());
            }
        };
        if let Some(answer) = self.link_frame(tx, PARENT, frame, now)? {
            out.to_parent.push(answer);
        }
        Ok(())
    }

    /// Handles one parsed frame from `peer` (a child's id, or `PARENT`), the same way for
    /// either direction; returns the frame to answer with, if any.
    fn link_frame(
        &mut self,
        tx: &mut Txn,
        peer: &str,
        frame: Frame,
        now: u64,
    ) -> rusqlite::Result<Option<Vec<u8>>> {
        Ok(match frame {
            Frame::Batch {
                epoch,
                floor,
                lane,
                msgs,
            } => {
                let upto = self.receive_batch(tx, peer, lane, (epoch, floor), &msgs, now)?;
                Some(Frame::Ack { upto, lane }.to_bytes())
            }
            Frame::Ack { upto, lane } => {
                let link = match peer {
                    PARENT => self.up.as_mut(),
                    child => self.downs.get_mut(child),
                };
                if let Some(link) = link {
                    acknowledged(tx, link, lane, upto)?;
                }
                None
            }
            Frame::Ping { at } => Some(Frame::Pong { at }.to_bytes()),
            Frame::Pong { .. } => None,
        })
    }
}
