//! The tier link: how custody moves between a node and its parent and children.
//!
//! - [`frame`]: the wire format of link frames, and in-order admission on the receiving side.
//! - [`acks`]: peers' acknowledgements, written with the next transaction.
//! - [`out`]: the sending side, a go-back-N window per priority lane over the journal.
//! - [`mailbox`]: frames waiting for children that link over HTTP (they long-poll).
//! - [`uplink`]: the child's own connection to its parent, over MQTT or HTTP.
//!
//! [`Links`] owns every link of a node: the lanes up and down, their windows, the positions
//! of incoming lanes, and how each child is connected. The dispatcher hands it frames inside
//! its round; [`Links`] answers with what it admitted, which the dispatcher takes custody of
//! in the same transaction, and the frame to answer with, sent after the commit.

pub mod acks;
pub mod frame;
mod mailbox;
pub mod out;
pub mod owed;
pub mod uplink;

use foldhash::{HashMap, HashMapExt};
use std::time::{Duration, Instant};

use bytes::Bytes;
use medlink_broker::{Accept, ConnId};
use tokio::sync::oneshot;
use tracing::{debug, error, info, warn};

use crate::console::Note;
use crate::envelope::{now_ms, Envelope, Priority, Transit};
use crate::journal::{Dest, Journal, Peer, Target, Txn};
use crate::route::{within, Topology};
use crate::router::{Router, SendPass};
use crate::stats::Stats;
use acks::PendingAcks;
use frame::{Batch, Frame, InOrder, Incoming};
use mailbox::Mailboxes;
use out::{Lane, LinkOut, LinkTuning};
use owed::OwedAcks;
use uplink::UplinkHandle;

/// How a child is connected right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Via {
    /// Subscribed to its down topic on this MQTT connection.
    Mqtt(ConnId),
    /// Long-polling the HTTP API for its frames.
    Http,
}

/// One configured child: its outgoing lanes and its connection.
struct Child {
    out: LinkOut,
    via: Option<Via>,
    /// When anything was last heard from it (Unix ms; this process's start until then).
    heard_at: u64,
    /// What `/metrics` reports of it, written in the round's timers.
    gauge: std::sync::Arc<crate::stats::ChildGauge>,
}

impl Child {
    /// A frame or a poll came from it.
    fn heard(&mut self) {
        self.out.last_heard = Instant::now();
        self.heard_at = now_ms();
    }
}

/// One envelope a link admitted.
pub enum Admitted<'a> {
    /// Read for its routing fields only, borrowed from the frame: most hops just stamp it.
    Transit(Transit<'a>),
    /// Parsed whole: it was not in a form that can be stamped in place.
    Whole(Envelope),
}

/// What one frame from a peer brought.
#[derive(Default)]
pub struct Received<'a> {
    /// Envelopes admitted in sequence order: the dispatcher takes custody of them in the
    /// transaction that also stores the new receive position.
    pub admitted: Vec<Admitted<'a>>,
    /// The frame to answer with (a pong) and who gets it, sent after the commit.
    pub answer: Option<(Peer, Vec<u8>)>,
    /// The acknowledgement a batch earns once committed: the peer, the lane, how far, and how
    /// many envelopes it took (`owed.rs`).
    pub ack: Option<(Peer, Priority, u64, u64)>,
}

/// Every tier link of one node.
pub struct Links {
    tuning: LinkTuning,
    stats: Stats,
    up: Option<LinkOut>,
    uplink: Option<UplinkHandle>,
    children: HashMap<String, Child>,
    /// Positions of incoming lanes, read from the journal on first use.
    inbound: HashMap<(Peer, Priority), InOrder>,
    mailboxes: Mailboxes,
    /// Peers' acknowledgements, applied in memory and written with the next transaction.
    pub acks: PendingAcks,
    /// Acknowledgements owed to peers for the batches taken, sent a moment later (`owed.rs`).
    pub owed: OwedAcks,
    /// Where console frames (summaries, questions, answers) go.
    pub console: Option<tokio::sync::mpsc::UnboundedSender<Note>>,
    /// When [`Links::timers`] next looks at the links.
    timers_due: Instant,
}

/// How often [`Links::timers`] looks at every link. Its timers are seconds long (`LinkTuning`:
/// resend after 2 s, ping every 1 s, dead after 5 s), and it ran at every round: at every
/// command, a look at every child, three clock reads each.
const TIMERS_EVERY: Duration = Duration::from_millis(50);

impl Links {
    /// The links of a node placed at `topology`, each lane resuming from the journal.
    pub fn new(
        topology: &Topology,
        tuning: LinkTuning,
        journal: &Journal,
        uplink: Option<UplinkHandle>,
        stats: Stats,
    ) -> rusqlite::Result<Links> {
        let up = if topology.has_parent {
            Some(LinkOut::new(Target::Up, journal)?)
        } else {
            None
        };
        stats.set_has_parent(topology.has_parent);
        let gauges = stats.register_children(&topology.children);
        let mut children = HashMap::new();
        for (child, gauge) in gauges {
            let out = LinkOut::new(Target::Down(child.clone()), journal)?;
            let c = Child {
                out,
                via: None,
                heard_at: now_ms(),
                gauge,
            };
            children.insert(child, c);
        }
        Ok(Links {
            tuning,
            stats,
            up,
            uplink,
            children,
            inbound: HashMap::new(),
            mailboxes: Mailboxes::default(),
            acks: PendingAcks::default(),
            owed: OwedAcks::default(),
            console: None,
            timers_due: Instant::now(),
        })
    }

    /// A configured child subscribed to its down topic on `conn`.
    pub fn child_open(&mut self, child: &str, conn: ConnId) {
        if let Some(c) = self.children.get_mut(child) {
            info!(child, "child link up");
            c.out.open();
            c.via = Some(Via::Mqtt(conn));
        }
    }

    /// A child's connection `conn` went away (a newer one may have replaced it already).
    pub fn child_closed(&mut self, child: &str, conn: ConnId) {
        if let Some(c) = self.children.get_mut(child) {
            if c.via == Some(Via::Mqtt(conn)) {
                info!(child, "child link down");
                c.via = None;
                c.out.online = false;
            }
        }
    }

    /// The uplink reached the parent.
    pub fn parent_connected(&mut self, http: bool, outage: Option<(Duration, u64)>) {
        if let Some(up) = self.up.as_mut() {
            match outage {
                Some((down, waiting)) => info!(
                    http,
                    down_for_s = format!("{:.1}", down.as_secs_f64()),
                    waiting,
                    "parent link up again; sending what waited"
                ),
                None => info!(http, "parent link up"),
            }
            up.open();
            self.stats.set_parent_up(true);
            self.stats.set_parent_http(http);
        }
    }

    /// The uplink lost the parent.
    pub fn parent_disconnected(&mut self) {
        if let Some(up) = self.up.as_mut() {
            if up.online {
                info!("parent link down");
            }
            up.online = false;
            self.stats.set_parent_up(false);
        }
    }

    /// A frame from `child` (over MQTT or HTTP).
    pub fn child_frame<'a>(
        &mut self,
        tx: &mut Txn,
        child: &str,
        payload: &'a [u8],
    ) -> rusqlite::Result<(Accept, Received<'a>)> {
        let Some(c) = self.children.get_mut(child) else {
            warn!(child, "frame from a node that is not configured as a child");
            return Ok((Accept::NotAuthorized, Received::default()));
        };
        c.heard();
        if !c.out.online && c.via.is_some() {
            c.out.open();
        }
        let peer = Peer::Child(child.to_string());
        if let Some(batch) = frame::read_batch(payload) {
            return Ok((Accept::Committed, self.batch(tx, peer, batch)?));
        }
        let frame = match Frame::parse(payload) {
            Ok(f) => f,
            Err(e) => {
                warn!(child, error = %e, "malformed link frame");
                let verdict = Accept::Rejected(format!("malformed frame: {e}"));
                return Ok((verdict, Received::default()));
            }
        };
        let received = self.frame(tx, peer, frame)?;
        Ok((Accept::Committed, received))
    }

    /// A frame from the parent.
    pub fn parent_frame<'a>(
        &mut self,
        tx: &mut Txn,
        payload: &'a [u8],
    ) -> rusqlite::Result<Received<'a>> {
        let Some(up) = self.up.as_mut() else {
            return Ok(Received::default());
        };
        up.last_heard = Instant::now();
        if let Some(batch) = frame::read_batch(payload) {
            return self.batch(tx, Peer::Parent, batch);
        }
        match Frame::parse(payload) {
            Ok(frame) => self.frame(tx, Peer::Parent, frame),
            Err(e) => {
                warn!(error = %e, "malformed frame from parent");
                Ok(Received::default())
            }
        }
    }

    /// Handles one parsed frame from `peer`, the same way for either direction.
    fn frame<'a>(
        &mut self,
        tx: &mut Txn,
        peer: Peer,
        frame: Frame<'a>,
    ) -> rusqlite::Result<Received<'a>> {
        let mut received = Received::default();
        match frame {
            Frame::Batch {
                epoch,
                floor,
                lane,
                msgs,
            } => {
                let batch = Batch {
                    epoch,
                    floor,
                    lane,
                    msgs: msgs.into_iter().map(Incoming::from).collect(),
                };
                return self.batch(tx, peer, batch);
            }
            Frame::Ack { upto, lane } => {
                let mut moved = None;
                if let Some(link) = self.out_mut(&peer) {
                    let lane = link.lane_mut(lane);
                    if lane.ack(upto) {
                        moved = Some((lane.dest.clone(), lane.acked));
                    }
                }
                if let Some((dest, upto)) = moved {
                    // The point waits for a round to write it (`acks.rs`); the rounds still
                    // in the custody log drop what it covers now.
                    tx.forget_logged([(dest.as_str(), upto)]);
                    self.acks.note(dest, upto);
                }
            }
            Frame::Ping { at } => received.answer = Some((peer, Frame::Pong { at }.to_bytes())),
            Frame::Status { node, s } => match &peer {
                Peer::Child(child) => self.to_console(Note::Status {
                    child: child.clone(),
                    node,
                    body: s.to_owned(),
                }),
                Peer::Parent => debug!("status summary from the parent ignored"),
            },
            Frame::Ask {
                qid,
                to,
                budget_ms,
                op,
            } => match &peer {
                Peer::Parent => self.to_console(Note::Ask {
                    qid,
                    to,
                    budget_ms,
                    op: op.to_owned(),
                }),
                Peer::Child(child) => warn!(child, "question from a child ignored"),
            },
            Frame::Answer { qid, a } => match &peer {
                Peer::Child(child) => self.to_console(Note::Answer {
                    child: child.clone(),
                    qid,
                    body: a.to_owned(),
                }),
                Peer::Parent => debug!("answer from the parent ignored"),
            },
            Frame::Pong { at } => {
                // Our own ping's time, echoed: the round trip (clock steps aside).
                if peer == Peer::Parent {
                    let rtt = now_ms().saturating_sub(at);
                    self.stats.set_rtt(Duration::from_millis(rtt.max(1)));
                }
            }
        }
        Ok(received)
    }

    /// Admits a batch from `peer` in sequence order and stores the new position; answers with
    /// the cumulative ack.
    fn batch<'a>(
        &mut self,
        tx: &mut Txn,
        peer: Peer,
        batch: Batch<'a>,
    ) -> rusqlite::Result<Received<'a>> {
        let mut received = Received::default();
        let lane = batch.lane;
        let key = (peer.clone(), lane);
        let mut order = match self.inbound.get(&key) {
            Some(o) => *o,
            None => {
                let (last, epoch) = tx.link_in(&peer, lane)?;
                InOrder { last, epoch }
            }
        };
        let before = (order.last, order.epoch);
        if order.epoch != batch.epoch && before.1 != 0 {
            warn!(
                peer = %peer,
                "peer's journal was replaced (new epoch); its sequence starts again"
            );
        }
        order.apply_epoch(batch.epoch);
        order.apply_floor(batch.floor);
        for m in batch.msgs {
            match order.admit(m.p, m.s) {
                Some(true) => {
                    let admitted = match m.transit {
                        Some(t) => Admitted::Transit(t),
                        None => match Envelope::parse(m.bytes) {
                            Ok(env) => Admitted::Whole(env),
                            Err(e) => {
                                warn!(peer = %peer, seq = m.s, error = %e, "malformed envelope on link dropped");
                                continue;
                            }
                        },
                    };
                    let (id, from) = match &admitted {
                        Admitted::Transit(t) => (t.head().id, t.head().from),
                        Admitted::Whole(env) => (env.id.as_str(), env.from.borrowed()),
                    };
                    if self.may_send(&peer, from.node) {
                        received.admitted.push(admitted);
                    } else {
                        // Everything a child sends up originated in its own subtree; a `from`
                        // outside it is a compromised or misconfigured node posing as someone
                        // else, so it is dropped (and acknowledged, so the link moves on).
                        self.stats.rejected();
                        error!(
                            peer = %peer,
                            id = %id,
                            from = %from,
                            "envelope from a child claims a sender outside its subtree; dropped"
                        );
                    }
                }
                Some(false) => {}
                None => break,
            }
        }
        if (order.last, order.epoch) != before {
            tx.set_link_in((&peer, lane), order.last, order.epoch)?;
        }
        self.inbound.insert(key, order);
        let taken = received.admitted.len() as u64;
        received.ack = Some((peer, lane, order.last, taken));
        Ok(received)
    }

    /// Whether `peer` may hand over an envelope sent from node `from`: a child only what comes
    /// from its own subtree.
    fn may_send(&self, peer: &Peer, from: &str) -> bool {
        match peer {
            Peer::Parent => true,
            Peer::Child(child) => within(child, from),
        }
    }

    fn to_console(&self, note: Note) {
        if let Some(console) = &self.console {
            let _ = console.send(note);
        }
    }

    /// An HTTP child polls: it is linked over HTTP from now on; it gets what waits, or waits
    /// for the next frame. The reply is `None` for a node that is not a child here.
    pub fn child_poll(&mut self, child: &str, reply: oneshot::Sender<Option<Vec<Bytes>>>) {
        let Some(c) = self.children.get_mut(child) else {
            debug!(child, "link poll from a node that is not a child here");
            let _ = reply.send(None);
            return;
        };
        c.heard();
        if c.via != Some(Via::Http) {
            info!(child, "child link up (HTTP)");
            c.via = Some(Via::Http);
            c.out.open();
        } else if !c.out.online {
            c.out.open();
        }
        self.mailboxes.poll(child, reply);
    }

    /// Sends `frame` to `peer` over whichever transport it is linked by.
    pub fn send(&mut self, router: &mut Router, peer: &Peer, frame: Vec<u8>) {
        match peer {
            Peer::Parent => {
                if let Some(uplink) = &self.uplink {
                    uplink.send(frame);
                }
            }
            Peer::Child(child) => self.send_down(router, child, frame.into()),
        }
    }

    fn send_down(&mut self, router: &mut Router, child: &str, frame: Bytes) {
        let via = self.children.get(child).and_then(|c| c.via);
        if via == Some(Via::Http) {
            self.mailboxes.push(child, frame);
        } else {
            router.publish(&medlink_broker::acl::link_down_topic(child), frame);
        }
    }

    /// Heartbeats, stall detection and go-back timers: at most once per [`TIMERS_EVERY`].
    pub fn timers(&mut self) {
        let now = Instant::now();
        if now < self.timers_due {
            return;
        }
        self.timers_due = now + TIMERS_EVERY;
        let tuning = self.tuning;
        if let Some(up) = self.up.as_mut() {
            if up.online {
                if up.last_heard.elapsed() > tuning.dead_after {
                    warn!(
                        silent_ms = up.last_heard.elapsed().as_millis() as u64,
                        "parent link stalled; reconnecting"
                    );
                    up.online = false;
                    self.stats.set_parent_up(false);
                    self.stats.parent_stalled();
                    if let Some(uplink) = &self.uplink {
                        uplink.reconnect();
                    }
                } else if up.last_ping.elapsed() >= tuning.ping_every {
                    up.last_ping = Instant::now();
                    if let Some(uplink) = &self.uplink {
                        uplink.send(Frame::Ping { at: now_ms() }.to_bytes());
                    }
                }
                up.maybe_go_back(&tuning);
            }
        }
        for (child, c) in self.children.iter_mut() {
            if c.out.online && c.out.last_heard.elapsed() > tuning.dead_after {
                warn!(child, "child link stalled");
                c.out.online = false;
            }
            c.out.maybe_go_back(&tuning);
            let via = c.via.filter(|_| c.out.online).map(|v| v == Via::Http);
            c.gauge.set(via, c.heard_at);
        }
    }

    /// Sends whatever the windows allow on every link; expired envelopes are skipped into
    /// `stale`.
    pub fn pump(&mut self, pass: &mut SendPass) -> rusqlite::Result<()> {
        let tuning = self.tuning;
        let (journal, now, stale) = (pass.journal, pass.now, &mut pass.stale);
        if let Some(up) = self.up.as_mut() {
            let frames = up.next_frames(journal, &tuning, now, stale)?;
            if let Some(uplink) = &self.uplink {
                for f in frames {
                    uplink.send(f);
                }
            }
        }
        let mut down = Vec::new();
        for (child, c) in self.children.iter_mut() {
            for f in c.out.next_frames(journal, &tuning, now, stale)? {
                down.push((child.clone(), f));
            }
        }
        for (child, f) in down {
            self.send_down(pass.router, &child, f.into());
        }
        Ok(())
    }

    /// The outgoing lane stored under `dest`, and whether its link is up.
    pub fn lane_for(&mut self, dest: &Dest) -> Option<(bool, &mut Lane)> {
        let link = match dest.target() {
            Target::Up => self.up.as_mut(),
            Target::Down(child) => self.children.get_mut(child).map(|c| &mut c.out),
            _ => None,
        }?;
        let online = link.online;
        link.lane_for(dest).map(|lane| (online, lane))
    }

    /// A commit failed: receive positions are read from the journal again.
    pub fn forget_inbound(&mut self) {
        self.inbound.clear();
    }

    fn out_mut(&mut self, peer: &Peer) -> Option<&mut LinkOut> {
        match peer {
            Peer::Parent => self.up.as_mut(),
            Peer::Child(child) => self.children.get_mut(child).map(|c| &mut c.out),
        }
    }
}
