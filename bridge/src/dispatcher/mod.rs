//! The dispatcher: a node's single owner of custody.
//!
//! It runs on its own thread (with a current-thread runtime for its timers and channels) and
//! is the only code that touches the journal. Each round takes everything that is waiting —
//! client commands, link frames from children and the parent, session events — handles it
//! inside one SQLite transaction, commits, and only then acknowledges (PUBACKs through the
//! broker front-end, `ack` frames on links) and sends onward. That ordering is the custody
//! rule: nothing is acknowledged before it is durable here, nothing is forgotten before the
//! next hop has it durable.

use std::sync::Arc;
use std::time::{Duration, Instant};

use medlink_broker::{Accept, Authenticator, Inbound};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use crate::clients::{stream_topic, Change, Clients, Cursor};
use crate::envelope::{now_ms, Limits};
use crate::journal::{Dest, Journal, Peer, Target, Txn};
use crate::link::out::LinkTuning;
use crate::link::uplink::{ParentEvent, UplinkHandle};
use crate::link::{Admitted, Links, Received};
use crate::route::{Policy, Topology};
use crate::router::{Router, SendPass};
use crate::services::{ServiceGroup, Services};
use crate::stats::Stats;

mod custody;
mod expiry;
mod files;
mod input;
mod operator;
mod receipts;
mod service;

use input::Input;
pub use input::{Inputs, Request};
pub use operator::{Answer, Operation, OperatorRequest};

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
    /// How long dead letters are kept after their command ended.
    pub dead_letter_retention: Duration,
    /// The file store, where a command's recipients are granted its files.
    pub files: Option<Arc<crate::files::FileStore>>,
    /// The task moving the files of held commands (`files_pending`).
    pub mover: Option<mpsc::UnboundedSender<crate::files::Held>>,
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
    /// Verdicts on MQTT publishes that carried custody (PUBACKs), sent after the sending pass.
    replies: Vec<(oneshot::Sender<Accept>, Accept)>,
    /// Verdicts on HTTP POSTs (202s), sent before it: an HTTP sender waits for its answer
    /// before it posts again, so holding it through the pass would hold the sender too.
    posted: Vec<(oneshot::Sender<Accept>, Accept)>,
    /// Link answers (pongs, frames for children).
    frames: Vec<(Peer, Vec<u8>)>,
    /// Acknowledgements the round's batches earned: peer, lane, how far, how many taken.
    owed: Vec<(Peer, crate::envelope::Priority, u64, u64)>,
    /// HTTP acknowledgements.
    acks: Vec<(oneshot::Sender<Cursor>, Cursor)>,
    /// Answers to operators.
    operator: Vec<(oneshot::Sender<Answer>, Answer)>,
}

impl Outbox {
    /// Holds `verdict` for `reply` until the commit (`None`: a QoS 0 publish wants none).
    fn reply(&mut self, reply: impl Into<Option<oneshot::Sender<Accept>>>, verdict: Accept) {
        if let Some(reply) = reply.into() {
            self.replies.push((reply, verdict));
        }
    }

    /// Holds `verdict` for an HTTP POST until the commit.
    fn answer_post(&mut self, reply: impl Into<Option<oneshot::Sender<Accept>>>, verdict: Accept) {
        if let Some(reply) = reply.into() {
            self.posted.push((reply, verdict));
        }
    }
}

/// Everything the dispatcher owns besides the journal: the owners of links, clients and
/// services, and what a round needs to route.
struct State {
    cfg: DispatcherConfig,
    router: Router,
    ids: ulid::Generator,
    links: Links,
    clients: Clients,
    services: Services,
    stats: Stats,
    last_prune: Instant,
    /// Credentials generation the client list was last built from.
    directory_generation: u64,
}

/// The running dispatcher.
pub struct Dispatcher {
    journal: Journal,
    state: State,
    inputs: Inputs,
    /// The rounds' output, emptied by each round and kept for the next: its lists keep their
    /// room instead of allocating again at every command.
    outbox: Outbox,
}

impl Dispatcher {
    /// Prepares a dispatcher over an opened journal.
    pub fn new(
        cfg: DispatcherConfig,
        mut journal: Journal,
        router: Router,
        inputs: Inputs,
        uplink: Option<UplinkHandle>,
        stats: Stats,
        console: Option<mpsc::UnboundedSender<crate::console::Note>>,
    ) -> rusqlite::Result<Dispatcher> {
        let mut links = Links::new(&cfg.topology, cfg.tuning, &journal, uplink, stats.clone())?;
        links.console = console;
        let services = Services::new(&cfg.topology.me, &cfg.services, &journal)?;
        let clients = Clients::new(&cfg.topology.me);
        let members = cfg
            .services
            .iter()
            .flat_map(|g| g.members.iter().map(|m| (m.clone(), g.name.clone())))
            .collect();
        journal.report_to(stats.clone(), members);
        if let Some(mover) = &cfg.mover {
            for held in files::held_commands(&journal, &cfg.topology)? {
                let _ = mover.send(held);
            }
        }
        Ok(Dispatcher {
            journal,
            state: State {
                cfg,
                router,
                ids: ulid::Generator::new(),
                links,
                clients,
                services,
                stats,
                last_prune: Instant::now(),
                directory_generation: 0,
            },
            inputs,
            outbox: Outbox::default(),
        })
    }

    /// Runs until `shutdown` turns true, then finishes the round in progress.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut last_sweep = Instant::now();
        // After a failed write of the logged rounds, the next try waits for an input (or this).
        let mut retry_after = Instant::now();
        // The stop and the idle wake-up are futures made once and polled by every wait, not
        // made again for each: a new `changed()` registered with the watch and a new `Sleep`
        // with the timer wheel, and both took themselves out again, at every command.
        let stopped = shutdown.changed();
        tokio::pin!(stopped);
        let idle = tokio::time::sleep_until(tokio::time::Instant::now());
        tokio::pin!(idle);
        loop {
            // Rounds the custody log took reach SQLite in idle moments, a few at a time, off
            // the path of the next command: first the tasks the last round woke (the writes on
            // to the next hop and back to the senders) run, then, if no input came of them,
            // the oldest few are written. Any input waits for the next round instead, whose
            // first statement writes them all.
            while self.journal.logged_due() {
                tokio::task::yield_now().await;
                if !self.inputs.is_idle() {
                    break;
                }
                let t0 = std::time::Instant::now();
                let result = self.journal.write_some_logged();
                tracing::debug!(
                    us = t0.elapsed().as_micros() as u64,
                    "custody log's rounds written into the journal"
                );
                if let Err(e) = result {
                    warn!(error = %e, "writing the custody log's rounds into the journal failed; the next round tries again");
                    retry_after = Instant::now() + Duration::from_secs(1);
                    break;
                }
            }
            self.state.send_owed_acks(Instant::now(), false);
            let next = self.inputs.next_round(&mut tick, stopped.as_mut());
            // Idle until the logged rounds or an owed acknowledgement are due: the loop comes
            // round to write or send them.
            let logged = self.journal.logged_due_at().map(|due| due.max(retry_after));
            let wake = logged
                .into_iter()
                .chain(self.state.links.owed.due_at())
                .min();
            let next = match wake {
                Some(due) => {
                    // Set again only when the due time moved (a fired `Sleep` stays ready).
                    let due = tokio::time::Instant::from_std(due);
                    if idle.deadline() != due {
                        idle.as_mut().reset(due);
                    }
                    tokio::select! {
                        biased;
                        next = next => next,
                        _ = idle.as_mut() => continue,
                    }
                }
                None => next.await,
            };
            let Some(items) = next else {
                if !self.state.links.acks.is_empty() {
                    // Not needed for custody (the peers would skip the resends), but a node
                    // stopped cleanly resends nothing.
                    self.round(Vec::new(), false);
                }
                // And owes its peers nothing: they would send it all again.
                self.state.send_owed_acks(Instant::now(), true);
                // Likewise: a node stopped cleanly leaves its custody log empty.
                if let Err(e) = self.journal.write_logged() {
                    warn!(error = %e, "writing the custody log's rounds into the journal failed; they are written at the next start");
                }
                info!("dispatcher stopping");
                return;
            };
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
        // Timed for the trace below only: a clock read is a few hundred instructions.
        let t0 = tracing::enabled!(tracing::Level::TRACE).then(std::time::Instant::now);
        let n_items = items.len();
        let now = now_ms();
        let mut out = std::mem::take(&mut self.outbox);
        let state = &mut self.state;
        let result = (|| -> rusqlite::Result<()> {
            let mut tx = self.journal.begin()?;
            // Peers' acknowledgements of earlier rounds, when this round has nothing else to
            // do or they have waited long enough: a command never waits for them
            // (`link/acks.rs`).
            if state.links.acks.due(n_items == 0) {
                state.links.acks.write(&mut tx)?;
            }
            for item in items {
                state.handle(&mut tx, item, now, &mut out)?;
            }
            if sweep {
                // This round's too, or the sweep would take what they acknowledged for
                // expired.
                state.links.acks.write(&mut tx)?;
                state.sweep_expired(&mut tx, now)?;
                state.service_timers(&mut tx, now)?;
            }
            state.clients.settle(&mut tx)?;
            tx.commit()
        })();
        if let Err(e) = result {
            error!(error = %e, "journal commit failed; nothing from this round is acknowledged");
            // The rest of `out` is dropped unsent; `self.outbox` is the empty one `take` left.
            for (reply, _) in out.replies.into_iter().chain(out.posted) {
                let _ = reply.send(Accept::Unavailable);
            }
            // In-memory positions may be ahead of the journal: receive positions are read
            // again, and client streams publish again from their last committed point
            // (duplicates carry the same id).
            self.state.links.forget_inbound();
            self.state.links.acks.failed();
            self.state.clients.commit_failed();
            return;
        }
        let t1 = t0.map(|t0| t0.elapsed());
        self.state.clients.committed();
        self.state.links.acks.committed();
        self.state.answer_requests(&mut out);
        self.state.links.timers();
        if let Err(e) = self.state.pump(&mut self.journal, now) {
            error!(error = %e, "journal read failed while sending");
        }
        // After the sending pass: the tasks it woke (the uplink, the next hop's connection)
        // then run before the ones answering the senders, so a command goes on before its
        // PUBACK or link `ack` goes back. Each of those writes costs the loopback a wake-up of
        // the peer, about 10 us, that the command would otherwise wait for at every hop.
        self.state.release(&mut out);
        self.outbox = out;
        if let (Some(t0), Some(t1)) = (t0, t1) {
            tracing::trace!(
                n_items,
                commit_us = t1.as_micros() as u64,
                total_us = t0.elapsed().as_micros() as u64,
                "round"
            );
        }
    }
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
            Input::Broker(event) => self.broker_event(tx, event, now, out),
            Input::Http(request) => self.http_request(tx, request, now, out),
            Input::Parent(ParentEvent::Connected { http, down_for }) => {
                let waiting = match down_for {
                    Some(_) => Dest::lanes(Target::Up)
                        .iter()
                        .map(|lane| tx.queued(lane))
                        .sum::<rusqlite::Result<u64>>()?,
                    None => 0,
                };
                self.links
                    .parent_connected(http, down_for.map(|d| (d, waiting)));
                Ok(())
            }
            Input::Parent(ParentEvent::Disconnected) => {
                self.links.parent_disconnected();
                Ok(())
            }
            Input::Parent(ParentEvent::Frame(bytes)) => {
                let received = self.links.parent_frame(tx, &bytes)?;
                self.received(tx, received, now, out)
            }
            Input::Files(ready) => self.files_ready(tx, ready, now),
        }
    }

    fn broker_event(
        &mut self,
        tx: &mut Txn,
        event: Inbound,
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<()> {
        match event {
            Inbound::Command {
                client,
                payload,
                reply,
            } => {
                let verdict = self.command(tx, &client, &payload, now, None)?;
                out.reply(reply, verdict);
            }
            Inbound::Refused {
                client,
                payload,
                reason,
            } => self.reject(tx, &client, &payload, &reason, now)?,
            Inbound::LinkFrame {
                child,
                payload,
                reply,
            } => {
                let verdict = self.child_frame(tx, &child, &payload, now, out)?;
                out.reply(reply, verdict);
            }
            Inbound::InboxOpen {
                client,
                conn,
                stream,
            } => {
                let topic = stream_topic(&self.cfg.topology.me, &client, stream);
                // Opened before the rewind: what it missed comes by the rewind, the rest by
                // the subscription, nothing twice.
                self.router.activate(&topic, conn);
                self.clients
                    .stream_changed(tx, &client, conn, stream, Change::Opened)?
            }
            Inbound::InboxClosed {
                client,
                conn,
                stream,
                shared,
            } => {
                self.clients
                    .stream_changed(tx, &client, conn, stream, Change::Closed { shared })?
            }
            Inbound::Delivered { client, ids } => {
                for id in ids {
                    if let Some(body) = self.clients.delivered(&client, &id) {
                        self.delivered_notice(tx, &body, now)?;
                    }
                }
            }
            Inbound::ChildOpen { child, conn } => self.links.child_open(&child, conn),
            Inbound::ChildClosed { child, conn } => self.links.child_closed(&child, conn),
        }
        Ok(())
    }

    fn http_request(
        &mut self,
        tx: &mut Txn,
        request: Request,
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<()> {
        match request {
            Request::Submit {
                client,
                payload,
                id,
                reply,
            } => {
                let verdict = self.command(tx, &client, &payload, now, Some(id))?;
                out.answer_post(reply, verdict);
            }
            Request::Poll {
                client,
                stream,
                after,
                ack,
                max,
                wait,
                reply,
            } => {
                self.services.polled(&client);
                let notices =
                    self.clients
                        .poll(tx, &client, stream, (after, ack), (max, wait), reply)?;
                for body in notices {
                    self.delivered_notice(tx, &body, now)?;
                }
            }
            Request::Ack {
                client,
                stream,
                upto,
                reply,
            } => {
                let (point, notices) = self.clients.http_ack(tx, &client, stream, upto)?;
                for body in notices {
                    self.delivered_notice(tx, &body, now)?;
                }
                out.acks.push((reply, point));
            }
            Request::LinkFrame {
                child,
                payload,
                reply,
            } => {
                let verdict = self.child_frame(tx, &child, &payload, now, out)?;
                out.answer_post(reply, verdict);
            }
            Request::LinkPoll { child, reply } => self.links.child_poll(&child, reply),
            Request::Operator(req) => out.operator.push(self.operate(tx, req, now)?),
            Request::LinkSend { child, frame } => out.frames.push((Peer::Child(child), frame)),
        }
        Ok(())
    }

    /// A frame from `child`: what it admitted is taken into custody in this round.
    fn child_frame(
        &mut self,
        tx: &mut Txn,
        child: &str,
        payload: &[u8],
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<Accept> {
        let (verdict, received) = self.links.child_frame(tx, child, payload)?;
        self.received(tx, received, now, out)?;
        Ok(verdict)
    }

    /// Takes custody of what a link frame admitted, and queues its answer.
    fn received(
        &mut self,
        tx: &mut Txn,
        received: Received,
        now: u64,
        out: &mut Outbox,
    ) -> rusqlite::Result<()> {
        for admitted in received.admitted {
            match admitted {
                Admitted::Transit(t) => self.pass_on(tx, t, now)?,
                Admitted::Whole(env) => self.accept(tx, env, now)?,
            }
        }
        out.frames.extend(received.answer);
        out.owed.extend(received.ack);
        Ok(())
    }
    /// Picks up clients added to or removed from the credentials file, and token keys added,
    /// changed or removed (their client patterns are routable names).
    fn refresh_clients(&mut self) {
        let Some(directory) = &self.cfg.directory else {
            return;
        };
        directory.refresh();
        let generation = directory.generation();
        if generation != self.directory_generation {
            self.directory_generation = generation;
            let keys = directory.tokens().current();
            self.cfg.topology.learn(&directory.credentials(), &keys);
        }
    }

    /// Answers the HTTP requests held back until the commit, before the sending pass: their
    /// senders wait for these answers (a POST's 202, an ack's cursor, an operator's result)
    /// before they go on, and their tasks run on the workers.
    fn answer_requests(&mut self, out: &mut Outbox) {
        for (reply, verdict) in out.posted.drain(..) {
            let _ = reply.send(verdict);
        }
        for (reply, point) in out.acks.drain(..) {
            let _ = reply.send(point);
        }
        for (reply, answer) in out.operator.drain(..) {
            let _ = reply.send(answer);
        }
    }

    /// Sends the PUBACKs and link answers held back until the commit, after the sending pass.
    fn release(&mut self, out: &mut Outbox) {
        for (reply, verdict) in out.replies.drain(..) {
            let _ = reply.send(verdict);
        }
        for (peer, frame) in out.frames.drain(..) {
            self.links.send(&mut self.router, &peer, frame);
        }
        // Committed now: the batches' acknowledgements are owed, and go a moment later, or at
        // once if many wait (`link/owed.rs`).
        let now = Instant::now();
        for (peer, lane, upto, taken) in out.owed.drain(..) {
            if let Some((peer, frame)) = self.links.owed.owe(peer, lane, upto, taken, now) {
                self.links.send(&mut self.router, &peer, frame);
            }
        }
        self.send_owed_acks(now, false);
    }

    /// Sends the acknowledgements owed that are due at `now` (every one, when `all`).
    fn send_owed_acks(&mut self, now: Instant, all: bool) {
        for (peer, frame) in self.links.owed.take_due(now, all) {
            self.links.send(&mut self.router, &peer, frame);
        }
    }

    /// Sends whatever the windows allow on every link and to every connected client, then
    /// drops what was found expired on the way.
    fn pump(&mut self, journal: &mut Journal, now: u64) -> rusqlite::Result<()> {
        let (links, clients, router) = (&mut self.links, &mut self.clients, &mut self.router);
        let stale = journal.snapshot(|journal| {
            let mut pass = SendPass {
                journal,
                router,
                now,
                stale: Vec::new(),
            };
            links.pump(&mut pass)?;
            clients.pump(&mut pass)?;
            Ok(pass.stale)
        })?;
        if stale.is_empty() {
            return Ok(());
        }
        let dests: Vec<Dest> = stale.iter().map(|s| s.dest.clone()).collect();
        let dropped = (|| {
            let mut tx = journal.begin()?;
            for s in stale {
                self.drop_stale(&mut tx, &s.dest, s.row, now)?;
            }
            tx.commit()
        })();
        if let Err(e) = dropped {
            // The cursors moved past these envelopes: send them again, so they are found
            // expired again, rather than vanish without a receipt.
            for dest in dests {
                match self.links.lane_for(&dest) {
                    Some((_, lane)) => lane.rewind(),
                    None => self.clients.rewind(&dest),
                }
            }
            return Err(e);
        }
        Ok(())
    }
}
