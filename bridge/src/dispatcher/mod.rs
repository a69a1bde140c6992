//! The dispatcher: a node's single owner of custody.
//!
//! It runs on its own thread (with a current-thread runtime for its timers and channels) and
//! is the only code that touches the journal. Each round takes everything that is waiting —
//! client commands, link frames from children and the parent, session events — handles it
//! inside one SQLite transaction, commits, and only then acknowledges (PUBACKs through the
//! broker front-end, `ack` frames on links) and sends onward. That ordering is the custody
//! rule: nothing is acknowledged before it is durable here, nothing is forgotten before the
//! next hop has it durable.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medlink_broker::{Accept, Authenticator, ConnId, Inbound, Role};
use rumqttd::local::{LinkRx, LinkTx};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error, info, warn};

use crate::delivery::{local_dest, receipt_dest, StreamOut};
use crate::envelope::{now_ms, Address, Envelope, Kind, Limits, Submission, TrailHop, MAX_HOPS};
use crate::frame::InOrder;
use crate::journal::{Journal, Txn};
use crate::links::{down_dest, LinkOut, LinkTuning};
use crate::route::{within, NextHop, Policy, Topology};
use crate::stats::Stats;
use crate::uplink::{ParentEvent, UplinkHandle};

mod devices;
mod expiry;
mod frames;
mod mailboxes;
mod polls;
mod pump;
mod receipts;
mod services;
mod streams;

pub use services::ServiceGroup;

/// Journal name of the parent as a link peer.
const PARENT: &str = "^parent";
/// Most items handled in one round (one transaction).
const MAX_ROUND: usize = 4096;
/// How long a client-chosen id is remembered for idempotent resends.
const IDEMPOTENCY_WINDOW_MS: u64 = 7 * 24 * 3600 * 1000;

/// What the dispatcher needs to know about its node.
#[derive(Debug, Clone)]
pub struct DispatcherConfig {
    /// Place in the tree.
    pub topology: Topology,
    /// Routing policy for commands originating here.
    pub policy: Policy,
    /// Record every routed envelope in the audit table (always on at the root).
    pub audit: bool,
    /// Submission limits.
    pub limits: Limits,
    /// Link tuning.
    pub tuning: LinkTuning,
    /// The identities; clients added or removed there become (un)routable within a second.
    pub directory: Option<Arc<Authenticator>>,
    /// Service groups declared at this node.
    pub services: Vec<ServiceGroup>,
}

/// Output of a round, released only after the commit.
#[derive(Default)]
struct Outbox {
    replies: Vec<(oneshot::Sender<Accept>, Accept)>,
    to_children: Vec<(String, Vec<u8>)>,
    to_parent: Vec<Vec<u8>>,
    /// HTTP acknowledgements, answered after the commit.
    acks: Vec<(
        oneshot::Sender<medlink_broker::Cursor>,
        medlink_broker::Cursor,
    )>,
}

/// Everything the dispatcher owns besides the journal.
struct State {
    cfg: DispatcherConfig,
    router: LinkTx,
    uplink: Option<UplinkHandle>,
    ids: ulid::Generator,
    up: Option<LinkOut>,
    downs: HashMap<String, LinkOut>,
    child_conn: HashMap<String, ConnId>,
    link_in: HashMap<String, InOrder>,
    /// Client streams, keyed by journal destination.
    locals: HashMap<String, StreamOut>,
    /// Streams whose acknowledgements moved this round.
    acked_streams: HashSet<String>,
    /// Acknowledgement points written this round, taken over by the streams after commit.
    settled: Vec<(String, u64)>,
    stats: Stats,
    last_prune: Instant,
    /// Credentials generation the client list was last built from.
    directory_generation: u64,
    /// HTTP long-polls.
    polls: polls::Polls,
    /// Frames for children linked over HTTP.
    mailboxes: mailboxes::Mailboxes,
    /// Service groups and their open assignments.
    services: services::Services,
}

/// The running dispatcher's inputs.
pub struct Dispatcher {
    journal: Journal,
    state: State,
    inbound: mpsc::Receiver<Inbound>,
    parent: mpsc::Receiver<ParentEvent>,
    _router_rx: LinkRx,
}

impl Dispatcher {
    /// Prepares a dispatcher over an opened journal.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: DispatcherConfig,
        journal: Journal,
        router: (LinkTx, LinkRx),
        inbound: mpsc::Receiver<Inbound>,
        parent: mpsc::Receiver<ParentEvent>,
        uplink: Option<UplinkHandle>,
        stats: Stats,
    ) -> rusqlite::Result<Dispatcher> {
        let up = if cfg.topology.has_parent {
            Some(LinkOut::new("up", &journal)?)
        } else {
            None
        };
        let mut downs = HashMap::new();
        for child in &cfg.topology.children {
            downs.insert(child.clone(), LinkOut::new(&down_dest(child), &journal)?);
        }
        let services = services::Services::new(&cfg.topology.me, &cfg.services, &journal)?;
        Ok(Dispatcher {
            journal,
            state: State {
                cfg,
                router: router.0,
                uplink,
                ids: ulid::Generator::new(),
                up,
                downs,
                child_conn: HashMap::new(),
                link_in: HashMap::new(),
                locals: HashMap::new(),
                acked_streams: HashSet::new(),
                settled: Vec::new(),
                stats,
                last_prune: Instant::now(),
                directory_generation: 0,
                polls: polls::Polls::default(),
                mailboxes: mailboxes::Mailboxes::default(),
                services,
            },
            inbound,
            parent,
            _router_rx: router.1,
        })
    }

    /// Runs until `shutdown` turns true, then finishes the round in progress.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        loop {
            let mut items: Vec<Input> = Vec::new();
            tokio::select! {
                Some(i) = self.inbound.recv() => items.push(Input::Broker(i)),
                Some(p) = self.parent.recv() => items.push(Input::Parent(p)),
                _ = tick.tick() => {}
                _ = shutdown.changed() => {
                    info!("dispatcher stopping");
                    return;
                }
            }
            while items.len() < MAX_ROUND {
                match self.inbound.try_recv() {
                    Ok(i) => items.push(Input::Broker(i)),
                    Err(_) => break,
                }
            }
            while items.len() < MAX_ROUND {
                match self.parent.try_recv() {
                    Ok(p) => items.push(Input::Parent(p)),
                    Err(_) => break,
                }
            }
            let sweep = last_sweep.elapsed() >= Duration::from_secs(1);
            if sweep {
                last_sweep = Instant::now();
                self.state.refresh_clients();
            }
            self.round(items, sweep);
        }
    }

    /// Handles one batch of inputs in one transaction, then acknowledges and sends.
    fn round(&mut self, items: Vec<Input>, sweep: bool) {
        let t0 = std::time::Instant::now();
        let n_items = items.len();
        let now = now_ms();
        let mut out = Outbox::default();
        let state = &mut self.state;
        let result = (|| -> rusqlite::Result<()> {
            let mut tx = self.journal.begin()?;
            for item in items {
                state.handle(&mut tx, item, now, &mut out)?;
            }
            if sweep {
                state.sweep_expired(&mut tx, now)?;
                state.service_timers(&mut tx, now)?;
            }
            state.settle_acks(&mut tx)?;
            tx.commit()
        })();
        if let Err(e) = result {
            error!(error = %e, "journal commit failed; nothing from this round is acknowledged");
            for (reply, _) in out.replies {
                let _ = reply.send(Accept::Unavailable);
            }
            // In-memory positions may be ahead of the journal: re-read receive positions, and
            // send every local stream again from its start (duplicates carry the same id).
            self.state.link_in.clear();
            // Streams publish again from their last committed acknowledgement point.
            self.state.settled.clear();
            for stream in self.state.locals.values_mut() {
                stream.forget_unsettled();
            }
            return;
        }
        let t1 = t0.elapsed();
        self.state.release(out);
        self.state.timers();
        if let Err(e) = self.state.pump(&mut self.journal, now) {
            error!(error = %e, "journal read failed while sending");
        }
        tracing::trace!(
            n_items,
            commit_us = t1.as_micros() as u64,
            total_us = t0.elapsed().as_micros() as u64,
            "round"
        );
    }
}

/// One input to a round.
enum Input {
    Broker(Inbound),
    Parent(ParentEvent),
}

impl State {
    fn me(&self) -> &str {
        &self.cfg.topology.me
    }

    fn next_id(&mut self) -> String {
        match self.ids.generate() {
            Ok(id) => id.to_string(),
            // The generator refuses only when 2^80 ids were made in one millisecond.
            Err(_) => ulid::Ulid::new().to_string(),
        }
    }

    fn handle(
        &mut self,
        tx: &mut Txn,
        item: Input,
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<()> {
        match item {
            Input::Broker(Inbound::Command {
                client,
                payload,
                reply,
            }) => {
                let verdict = self.command(tx, &client, &payload, now, None)?;
                if let Some(reply) = reply {
                    out.replies.push((reply, verdict));
                }
            }
            Input::Broker(Inbound::Submit {
                client,
                payload,
                id,
                reply,
            }) => {
                let verdict = self.command(tx, &client, &payload, now, Some(id))?;
                out.replies.push((reply, verdict));
            }
            Input::Broker(Inbound::Poll {
                client,
                stream,
                after,
                ack,
                max,
                wait,
                reply,
            }) => self.poll(tx, &client, stream, (after, ack), (max, wait), reply, now)?,
            Input::Broker(Inbound::Ack {
                client,
                stream,
                upto,
                reply,
            }) => {
                let point = self.http_ack(tx, &client, stream, upto, now)?;
                out.acks.push((reply, point));
            }
            Input::Broker(Inbound::Refused {
                client,
                payload,
                reason,
            }) => self.reject(tx, &client, &payload, &reason, now)?,
            Input::Broker(Inbound::LinkPoll { child, reply }) => self.link_poll(&child, reply),
            Input::Broker(Inbound::LinkFrame {
                child,
                payload,
                reply,
            }) => {
                let verdict = self.child_frame(tx, &child, &payload, now, out)?;
                if let Some(reply) = reply {
                    out.replies.push((reply, verdict));
                }
            }
            Input::Broker(Inbound::InboxOpen {
                client,
                conn,
                stream,
            }) => self.stream_changed(tx, &client, conn, stream, true)?,
            Input::Broker(Inbound::InboxClosed {
                client,
                conn,
                stream,
            }) => self.stream_changed(tx, &client, conn, stream, false)?,
            Input::Broker(Inbound::Delivered { client, id }) => {
                self.delivered(tx, &client, &id, now)?
            }
            Input::Broker(Inbound::ChildOpen { child, conn }) => {
                if let Some(link) = self.downs.get_mut(&child) {
                    info!(child, "child link up");
                    link.open();
                    self.child_conn.insert(child, conn);
                }
            }
            Input::Broker(Inbound::ChildClosed { child, conn }) => {
                if self.child_conn.get(&child) == Some(&conn) {
                    info!(child, "child link down");
                    self.child_conn.remove(&child);
                    if let Some(link) = self.downs.get_mut(&child) {
                        link.online = false;
                    }
                }
            }
            Input::Parent(ParentEvent::Connected { http }) => {
                if let Some(up) = self.up.as_mut() {
                    info!(http, "parent link up");
                    up.open();
                    self.stats.set_parent_up(true);
                    self.stats.set_parent_http(http);
                }
            }
            Input::Parent(ParentEvent::Disconnected) => {
                if let Some(up) = self.up.as_mut() {
                    if up.online {
                        info!("parent link down");
                    }
                    up.online = false;
                    self.stats.set_parent_up(false);
                }
            }
            Input::Parent(ParentEvent::Frame(bytes)) => self.parent_frame(tx, &bytes, now, out)?,
        }
        Ok(())
    }

    /// A client's submission: validate, stamp, route, queue. `http_id` marks an HTTP
    /// submission: the id to use if the client chose none, and a target known here to be
    /// unreachable is refused instead of accepted with a `failed` receipt.
    fn command(
        &mut self,
        tx: &mut Txn,
        client: &str,
        payload: &[u8],
        now: u64,
        http_id: Option<String>,
    ) -> rusqlite::Result<Accept> {
        let sender = Address {
            node: self.me().to_string(),
            client: client.to_string(),
        };
        let strict = http_id.is_some();
        let id = http_id.unwrap_or_else(|| self.next_id());
        let parsed = Submission::parse(payload, self.cfg.limits).and_then(|s| {
            let chosen = s.id.is_some();
            s.into_envelope(sender.clone(), id).map(|e| (chosen, e))
        });
        match parsed {
            Err(problem) => {
                warn!(client, error = %problem, "command rejected");
                let reason = problem.to_string();
                self.reject(tx, client, payload, &reason, now)?;
                Ok(Accept::Rejected(reason))
            }
            Ok((_, env))
                if env
                    .as_service
                    .as_deref()
                    .is_some_and(|s| !self.services.is_member(s, client)) =>
            {
                let reason = format!(
                    "as_service: {client} is not a member of service '{}' at {}",
                    env.as_service.as_deref().unwrap_or_default(),
                    self.me()
                );
                warn!(client, reason = %reason.escape_debug(), "command rejected");
                self.reject(tx, client, payload, &reason, now)?;
                Ok(Accept::Rejected(reason))
            }
            Ok((chosen, mut env)) => {
                if strict {
                    if let NextHop::Unroutable(why) = self.cfg.topology.next_hop(&env) {
                        return Ok(Accept::Unroutable(why));
                    }
                }
                // Idempotency is per sender: another client's choice of id is no concern.
                let key = format!("{}/{}/{}", env.from.node, env.from.client, env.id);
                if chosen && !tx.first_acceptance(&key, now)? {
                    debug!(client, id = %env.id, "resent command ignored (already accepted)");
                    return Ok(Accept::Committed);
                }
                if self.cfg.policy == Policy::ViaRoot && self.cfg.topology.has_parent {
                    env.via_root = true;
                }
                self.stats.accepted();
                let notable =
                    (!env.receipts.is_empty() || env.reply_to.is_some()).then(|| env.clone());
                self.accept(tx, env, now)?;
                if let Some(env) = notable {
                    self.submitted(tx, client, &env, now)?;
                }
                Ok(Accept::Committed)
            }
        }
    }

    /// Picks up clients added to or removed from the credentials file. New child nodes need a
    /// restart (their links carry journal state created at start).
    fn refresh_clients(&mut self) {
        let Some(directory) = &self.cfg.directory else {
            return;
        };
        directory.refresh();
        let generation = directory.generation();
        if generation == self.directory_generation {
            return;
        }
        self.directory_generation = generation;
        let credentials = directory.credentials();
        self.cfg.topology.clients = credentials
            .names_with_role(Role::Client)
            .map(str::to_string)
            .collect();
        let me = &self.cfg.topology.me;
        for child in credentials.names_with_role(Role::Node) {
            if child != me && within(me, child) && !self.cfg.topology.children.contains(child) {
                warn!(
                    child,
                    "new child node identity: restart this node to route to it"
                );
            }
        }
    }

    /// Sends `client` a `rejected` receipt for `payload`, saying why.
    fn reject(
        &mut self,
        tx: &mut Txn,
        client: &str,
        payload: &[u8],
        reason: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        self.stats.rejected();
        let sender = Address {
            node: self.me().to_string(),
            client: client.to_string(),
        };
        let rid = self.next_id();
        let receipt = Envelope::rejection(self.me(), &sender, payload, reason, rid);
        self.accept(tx, receipt, now)
    }

    /// Takes custody of `env` at this node: stamps the trail, routes, audits, queues.
    fn accept(&mut self, tx: &mut Txn, mut env: Envelope, now: u64) -> rusqlite::Result<()> {
        env.hops = env.hops.saturating_add(1);
        env.trail.push(TrailHop {
            node: self.me().to_string(),
            at: now,
        });
        if !self.cfg.topology.has_parent {
            env.via_root = false;
        }
        let hop = if env.hops > MAX_HOPS {
            NextHop::Unroutable(format!("hop limit of {MAX_HOPS} exceeded"))
        } else if env.expired(now) {
            NextHop::Unroutable("expired".into())
        } else {
            self.cfg.topology.next_hop(&env)
        };
        let dest = match &hop {
            NextHop::Local(client) if env.kind == Kind::Receipt => {
                Ok(env.priority.dest(receipt_dest(client)))
            }
            NextHop::Local(client) => Ok(env.priority.dest(local_dest(client))),
            NextHop::Down(child) => Ok(env.priority.dest(down_dest(child))),
            NextHop::Up => Ok(env.priority.dest("up")),
            NextHop::Service(name) => Ok(format!("service:{name}")),
            NextHop::Unroutable(why) => Err(why.clone()),
        };
        if self.cfg.audit {
            let decision = match &dest {
                Ok(d) => d.clone(),
                Err(why) => format!("refused: {why}"),
            };
            tx.audit(&env, now, &decision)?;
        }
        match dest {
            Ok(_) if matches!(hop, NextHop::Service(_)) => {
                let NextHop::Service(service) = &hop else {
                    unreachable!("matched just above")
                };
                let body = env.to_bytes().into();
                self.route_to_service(tx, service, &env, body, now)?;
            }
            Ok(dest) => {
                tx.enqueue(&dest, &env, env.to_bytes().into())?;
                self.polls.enqueued(&dest);
                if let NextHop::Local(client) = &hop {
                    self.expect_reply(tx, client, &env, now)?;
                }
            }
            Err(why) => {
                let status = if why == "expired" {
                    "expired"
                } else {
                    "failed"
                };
                self.refuse(tx, &env, status, &why, now)?;
            }
        }
        Ok(())
    }

    /// Sends acknowledgements and replies held back until the commit.
    fn release(&mut self, out: Outbox) {
        for (dest, upto) in std::mem::take(&mut self.settled) {
            if let Some(stream) = self.locals.get_mut(&dest) {
                stream.settled(upto);
            }
        }
        for (reply, verdict) in out.replies {
            let _ = reply.send(verdict);
        }
        for (reply, point) in out.acks {
            let _ = reply.send(point);
        }
        for (child, frame) in out.to_children {
            self.send_down(&child, frame.into());
        }
        if let Some(uplink) = &self.uplink {
            for frame in out.to_parent {
                uplink.send(frame);
            }
        }
    }

    fn publish(&mut self, topic: &str, payload: impl Into<bytes::Bytes>) {
        if let Err(e) = self.router.publish(topic.to_string(), payload.into()) {
            error!(topic, error = %e, "router refused a publish");
        }
    }
}
