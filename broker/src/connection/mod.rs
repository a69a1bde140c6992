//! One client connection, from CONNECT to close.
//!
//! This is medlink's replacement for rumqttd's `RemoteLink`: it decodes packets with
//! `rumqttd::protocol`, applies authentication and the ACL, hands custody-carrying publishes
//! to the node, registers subscriptions in the node's [`Fanout`](crate::fanout::Fanout),
//! writes what arrives in its [`Mailbox`], and reports the client's PUBACKs for inbox
//! deliveries.
//!
//! Because every step here is owned by medlink, a reset in the middle of CONNECT only ends
//! this task: nothing is left behind that could poison the listener for later clients.

use std::collections::VecDeque;

use foldhash::{HashMap, HashMapExt};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use rumqttd::protocol::{
    ConnAck, ConnAckProperties, ConnectReturnCode, Disconnect, DisconnectReasonCode, Error, Packet,
};
use tokio::sync::oneshot;
use tokio::time::Instant;
use tracing::{debug, info, warn};

use crate::acl::outbox_topic;
use crate::codec::{publish_header, Codec, Version};
use crate::connect::{admit, handshake, refuse, ConnectInfo, End};
use crate::events::{Accept, ConnId, Inbound, Stream};
use crate::fanout::Mailbox;
use crate::frontend::FrontEnd;
use crate::identity::{Identity, Role};
use crate::metrics::bump;
use crate::slot::Slot;
use crate::transport::Transport;

mod inbound;
mod outbound;

/// A PUBACK/PUBREC owed to the client once the node has decided.
struct OwedAck {
    pkid: u16,
    qos: u8,
    verdict: oneshot::Receiver<Accept>,
}

/// Serves one client connection from CONNECT to close; `slot` is given back when it ends.
///
/// Once logged in, a child node's or an institution's connection moves to the dispatcher's
/// runtime ([`FrontEnd::home`]): what it sends is then taken into custody and passed on, and
/// what it is sent written, without waking another thread.
///
/// Not an `async fn`, which would keep its arguments' room beside the locals it moves them
/// into; and the steps before and after serving are boxed, so what the task holds while the
/// connection waits is the session and its serve loop (ARCHITECTURE.md, "Memory per
/// connection").
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
pub(crate) fn run(
    ctx: Arc<FrontEnd>,
    mut transport: Transport,
    peer: SocketAddr,
    conn: ConnId,
    certificate: Option<String>,
    mut slot: Slot,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        // Matched as a temporary: a named `Option` would keep its room beside the session.
        let opened = open_session(&ctx, &mut transport, peer, conn, certificate);
        let (session, rbuf) = match Box::pin(opened).await {
            Some(admitted) => admitted,
            None => return,
        };
        // A WebSocket connection stays: its stream cannot be taken out of the reactor.
        let home = ctx.home(&session.identity);
        if let Some((home, socket)) = home.and_then(|h| Some((h, transport.unregister()?))) {
            home.spawn(async move {
                if let Err(e) = transport.register(socket) {
                    warn!(%peer, conn, client = %session.client_id, error = %e, "the connection could not move to the dispatcher's thread; closed, the client will connect again");
                    Box::pin(close_session(&ctx, &mut transport, session, End::Io(e), peer, conn))
                        .await;
                    return;
                }
                slot.moved_to_dispatcher();
                serve(ctx, transport, session, rbuf, peer, conn, slot).await;
            });
            return;
        }
        serve(ctx, transport, session, rbuf, peer, conn, slot).await;
    }
}

/// Serves a registered session until it ends, then closes it and gives `slot` back.
#[allow(clippy::manual_async_fn)] // an `async fn` would hold its arguments twice
fn serve(
    ctx: Arc<FrontEnd>,
    mut transport: Transport,
    mut session: Session,
    rbuf: BytesMut,
    peer: SocketAddr,
    conn: ConnId,
    slot: Slot,
) -> impl std::future::Future<Output = ()> + Send + 'static {
    async move {
        // From here on the session is registered (sessions, subscriptions): every exit path
        // must go through `close`, or a dead connection would keep its slot and subscriptions.
        let flushed = Box::pin(session.flush(&ctx, &mut transport)).await;
        let end = match flushed {
            Ok(()) => session.serve(&ctx, &mut transport, rbuf).await,
            Err(e) => e,
        };
        Box::pin(close_session(
            &ctx,
            &mut transport,
            session,
            end,
            peer,
            conn,
        ))
        .await;
        drop(slot);
    }
}

/// CONNECT, authentication and the session's registration; `None` (logged, the transport
/// closed) if the client was refused or left.
async fn open_session(
    ctx: &FrontEnd,
    transport: &mut Transport,
    peer: SocketAddr,
    conn: ConnId,
    certificate: Option<String>,
) -> Option<(Session, BytesMut)> {
    let mut rbuf = BytesMut::new();
    let (codec, connect) = match handshake(ctx, transport, &mut rbuf).await {
        Ok(v) => v,
        Err(e) => {
            debug!(%peer, conn, reason = %e, "connection refused");
            transport.close().await;
            return None;
        }
    };
    let peer_of = (peer, certificate.as_deref());
    match Session::open(ctx, transport, codec, connect, peer_of, conn).await {
        Ok(session) => Some((session, rbuf)),
        Err(e) => {
            info!(%peer, conn, reason = %e, "connect refused");
            transport.close().await;
            None
        }
    }
}

/// Ends a registered session for `end`: the last bytes written where that still makes sense,
/// then `Session::close` and the transport's.
async fn close_session(
    ctx: &FrontEnd,
    transport: &mut Transport,
    mut session: Session,
    end: End,
    peer: SocketAddr,
    conn: ConnId,
) {
    debug!(%peer, conn, client = %session.client_id, reason = %end, "connection closed");
    // Best effort: a v5 DISCONNECT carrying the reason may be waiting in the buffer. Not to a
    // stalled or broken socket: that would only hold the close (and the rewind that hands the
    // client's deliveries to its other connections) for another write timeout.
    if !matches!(end, End::SlowConsumer | End::Io(_)) {
        let _ = session.flush(ctx, transport).await;
    }
    session.close(ctx, &end).await;
    transport.close().await;
}

/// Room for one read while a connection is quiet: most MQTT packets a client sends fit.
const SMALL_READ: usize = 512;
/// Room for one read while bytes stream in (a child's link frames, a burst of publishes).
const LARGE_READ: usize = 16 * 1024;

/// Most QoS 1 deliveries a connection may leave unacknowledged. Stream and link windows keep
/// far below it; a watcher that never acknowledges its taps reaches it and loses taps.
const MAX_INFLIGHT: usize = 16_384;

/// An authenticated connection.
struct Session {
    conn: ConnId,
    codec: Codec,
    client_id: String,
    identity: Identity,
    keep_alive: Duration,
    /// What the node publishes to this connection.
    mailbox: Arc<Mailbox>,
    /// Filters subscribed, as the client wrote them, to remove at close.
    filters: Vec<String>,
    wbuf: BytesMut,
    owed: VecDeque<OwedAck>,
    /// Packet id of each unacknowledged QoS 1 delivery → envelope id, for a stream delivery.
    inflight: HashMap<u16, Option<String>>,
    /// The packet id given to the last QoS 1 delivery.
    last_pkid: u16,
    /// Streams this connection has subscribed (commands, receipts).
    streams: Vec<Stream>,
    /// Streams it subscribed through a `$share/` group.
    shared_streams: Vec<Stream>,
    child_open: bool,
    /// QoS 0 deliveries to report once written.
    delivered: Vec<String>,
    /// Envelope ids PUBACKed in the packets being read, reported together after them.
    acked: Vec<String>,
    /// Fires when a newer connection with the same client id takes the session over.
    kicked: oneshot::Receiver<()>,
    /// The will, kept only when it targets the client's own outbox; submitted as a command
    /// if the connection ends without DISCONNECT.
    will: Option<Bytes>,
}

impl Session {
    async fn open(
        ctx: &FrontEnd,
        transport: &mut Transport,
        codec: Codec,
        info: ConnectInfo,
        (peer, certificate): (SocketAddr, Option<&str>),
        conn: ConnId,
    ) -> Result<Session, End> {
        let keep_alive = Duration::from_millis(info.keep_alive as u64 * 1500);
        let (identity, client_id, assigned) =
            admit(ctx, transport, codec, &info, peer, certificate, conn).await?;
        let will = match info.will {
            Some(w)
                if identity.role == Role::Client
                    && w.topic[..] == *outbox_topic(&ctx.node_id, &identity.name).as_bytes() =>
            {
                Some(w.message)
            }
            Some(w) => {
                bump(&ctx.metrics.wills_removed);
                warn!(identity = %identity.name, topic = %String::from_utf8_lossy(&w.topic), "will on a foreign topic removed");
                None
            }
            None => None,
        };
        let others = ctx
            .sessions
            .lock()
            .expect("session registry lock is never held across a panic")
            .get(&identity.name)
            .map_or(0, |ids| {
                ids.len() - usize::from(ids.contains_key(&client_id))
            });
        if others >= ctx.max_connections_per_identity {
            bump(&ctx.metrics.identity_connection_limit);
            warn!(identity = %identity.name, limit = ctx.max_connections_per_identity, "connection refused: identity at its connection limit");
            let code = match codec.version {
                Version::V4 => ConnectReturnCode::ServiceUnavailable,
                Version::V5 => ConnectReturnCode::QuotaExceeded,
            };
            return Err(refuse(transport, codec, code, "identity at its connection limit").await);
        }
        let (kick_tx, kicked) = oneshot::channel();
        let previous = ctx
            .sessions
            .lock()
            .expect("session registry lock is never held across a panic")
            .entry(identity.name.clone())
            .or_default()
            .insert(client_id.clone(), (conn, kick_tx));
        if let Some((_, kick)) = previous {
            let _ = kick.send(());
        }
        let props = match codec.version {
            Version::V4 => None,
            Version::V5 => Some(ConnAckProperties {
                session_expiry_interval: None,
                receive_max: None,
                max_qos: Some(1),
                retain_available: Some(0),
                max_packet_size: Some(ctx.max_packet_size as u32),
                assigned_client_identifier: assigned.then(|| client_id.clone()),
                topic_alias_max: Some(0),
                reason_string: None,
                user_properties: vec![],
                wildcard_subscription_available: None,
                subscription_identifiers_available: None,
                shared_subscription_available: None,
                server_keep_alive: None,
                response_information: None,
                server_reference: None,
                authentication_method: None,
                authentication_data: None,
            }),
        };
        // Sessions are never resumed from broker memory: the journal is the durable session,
        // so session_present is always false and the client re-subscribes.
        let ack = Packet::ConnAck(
            ConnAck {
                session_present: false,
                code: ConnectReturnCode::Success,
            },
            props,
        );
        let mut session = Session {
            conn,
            codec,
            client_id,
            identity,
            keep_alive,
            mailbox: Arc::default(),
            filters: Vec::new(),
            wbuf: BytesMut::new(),
            owed: VecDeque::new(),
            inflight: HashMap::new(),
            last_pkid: 0,
            streams: Vec::new(),
            shared_streams: Vec::new(),
            child_open: false,
            delivered: Vec::new(),
            acked: Vec::new(),
            kicked,
            will,
        };
        session.encode(ack)?;
        Ok(session)
    }

    async fn serve(
        &mut self,
        ctx: &FrontEnd,
        transport: &mut Transport,
        mut rbuf: BytesMut,
    ) -> End {
        let mut last_heard = Instant::now();
        let mailbox = self.mailbox.clone();
        let mut streaming = false;
        // Made once, not at every pass of the loop: a new `Sleep` and a new stop each pass
        // registered with the timer wheel and the stop's waiters and took themselves out again,
        // at every packet. The keepalive timer fires at the deadline it was last set for, and
        // is set again then if bytes came since.
        let keepalive = tokio::time::sleep_until(last_heard + self.keep_alive);
        tokio::pin!(keepalive);
        let stopped = ctx.stop.stopped();
        tokio::pin!(stopped);
        loop {
            // Boxed: handling packets (subscriptions, publishes to the node) is a 1.5 KB
            // future, and inline it would make every idle connection's task that much larger
            // (ARCHITECTURE.md, "Memory per connection"). One allocation per read that brought
            // bytes, none per delivery. (`acked` is always empty here: a drain reports it.)
            if !rbuf.is_empty() {
                if let Err(e) = Box::pin(self.drain_incoming(ctx, &mut rbuf)).await {
                    return e;
                }
            }
            // Idle, a connection keeps only a small read buffer: most of its life is waiting.
            if rbuf.is_empty() && !streaming && rbuf.capacity() > SMALL_READ {
                rbuf = BytesMut::new();
            }
            let want = if streaming { LARGE_READ } else { SMALL_READ };
            if let Err(e) = self.flush(ctx, transport).await {
                return e;
            }
            tokio::select! {
                verdict = next_verdict(&mut self.owed), if !self.owed.is_empty() => {
                    let owed = self.owed.pop_front().expect("select guard: owed is non-empty");
                    if let Err(e) = self.answer(owed, verdict) {
                        return e;
                    }
                    // One write for every PUBACK already decided (group commits decide many).
                    while let Some(head) = self.owed.front_mut() {
                        let Ok(verdict) = head.verdict.try_recv() else { break };
                        let owed = self.owed.pop_front().expect("front exists");
                        if let Err(e) = self.answer(owed, verdict) {
                            return e;
                        }
                    }
                }
                _ = mailbox.ready() => {
                    for out in mailbox.take() {
                        if let Err(e) = self.outgoing(ctx, out) {
                            return e;
                        }
                    }
                }
                r = transport.read(&mut rbuf, want) => match r {
                    Ok(0) => return End::Closed,
                    Ok(n) => {
                        last_heard = Instant::now();
                        streaming = n >= SMALL_READ;
                    }
                    Err(e) => return End::Io(e),
                },
                _ = keepalive.as_mut(), if !self.keep_alive.is_zero() => {
                    let deadline = last_heard + self.keep_alive;
                    if Instant::now() >= deadline {
                        return End::KeepAlive;
                    }
                    keepalive.as_mut().reset(deadline);
                }
                _ = &mut self.kicked => {
                    self.disconnect_v5(DisconnectReasonCode::SessionTakenOver);
                    let _ = self.flush(ctx, transport).await;
                    return End::TakenOver;
                }
                () = stopped.as_mut() => return End::Shutdown,
            }
        }
    }

    /// Handles every complete packet in `rbuf`, then reports the PUBACKs among them at once.
    async fn drain_incoming(&mut self, ctx: &FrontEnd, rbuf: &mut BytesMut) -> Result<(), End> {
        let handled = self.handle_complete(ctx, rbuf).await;
        report(ctx, &self.identity.name, &mut self.acked).await;
        handled
    }

    /// Handles each complete packet in `rbuf`, in order.
    async fn handle_complete(&mut self, ctx: &FrontEnd, rbuf: &mut BytesMut) -> Result<(), End> {
        loop {
            let header = publish_header(rbuf);
            let packet = match self.codec.read(rbuf, ctx.max_packet_size) {
                Ok(p) => p,
                Err(Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => {
                    match e {
                        Error::PayloadSizeLimitExceeded(_) => bump(&ctx.metrics.oversized),
                        _ => bump(&ctx.metrics.malformed),
                    }
                    self.disconnect_v5(match e {
                        Error::PayloadSizeLimitExceeded(_) => DisconnectReasonCode::PacketTooLarge,
                        _ => DisconnectReasonCode::MalformedPacket,
                    });
                    return Err(End::Protocol(e));
                }
            };
            self.incoming(ctx, packet, header).await?;
        }
    }

    fn encode(&mut self, packet: Packet) -> Result<(), End> {
        self.codec
            .write(packet, &mut self.wbuf)
            .map(|_| ())
            .map_err(End::Protocol)
    }

    /// Writes what is buffered. A client that does not read for the write timeout is dropped
    /// as a slow consumer: its unacknowledged deliveries stay in the journal for its next
    /// connection, and nothing piles up in memory meanwhile.
    async fn flush(&mut self, ctx: &FrontEnd, transport: &mut Transport) -> Result<(), End> {
        if !self.wbuf.is_empty() {
            match tokio::time::timeout(ctx.write_timeout, transport.write_all(&self.wbuf)).await {
                Ok(written) => written?,
                Err(_) => {
                    bump(&ctx.metrics.slow_consumers);
                    warn!(identity = %self.identity.name, client = %self.client_id, "slow consumer dropped");
                    return Err(End::SlowConsumer);
                }
            }
            // A large buffer is not kept for the next, probably small, write.
            if self.wbuf.capacity() > SMALL_READ * 8 {
                self.wbuf = BytesMut::new();
            } else {
                self.wbuf.clear();
            }
        }
        report(ctx, &self.identity.name, &mut self.delivered).await;
        Ok(())
    }

    async fn notify_closed(&self, ctx: &FrontEnd, stream: Stream) {
        let _ = ctx
            .inbound
            .send(Inbound::InboxClosed {
                client: self.identity.name.clone(),
                conn: self.conn,
                stream,
                shared: self.shared_streams.contains(&stream),
            })
            .await;
    }

    /// Queues a v5 DISCONNECT with `reason` (3.1.1 has no way to say why).
    fn disconnect_v5(&mut self, reason: DisconnectReasonCode) {
        if self.codec.version == Version::V5 {
            let _ = self.encode(Packet::Disconnect(
                Disconnect {
                    reason_code: reason,
                },
                None,
            ));
        }
    }

    async fn close(&mut self, ctx: &FrontEnd, end: &End) {
        if let Some(will) = self.will.take() {
            // MQTT publishes the will unless the client said DISCONNECT; a takeover by the
            // same client is not a failure either.
            if !matches!(end, End::Disconnected | End::TakenOver) {
                let _ = ctx
                    .inbound
                    .send(Inbound::Command {
                        client: self.identity.name.clone(),
                        payload: will,
                        reply: None,
                    })
                    .await;
            }
        }
        {
            let mut sessions = ctx
                .sessions
                .lock()
                .expect("session registry lock is never held across a panic");
            if let Some(ids) = sessions.get_mut(&self.identity.name) {
                if ids
                    .get(&self.client_id)
                    .is_some_and(|(c, _)| *c == self.conn)
                {
                    ids.remove(&self.client_id);
                }
                if ids.is_empty() {
                    sessions.remove(&self.identity.name);
                }
            }
        }
        for stream in std::mem::take(&mut self.streams) {
            self.notify_closed(ctx, stream).await;
        }
        if self.child_open {
            let _ = ctx
                .inbound
                .send(Inbound::ChildClosed {
                    child: self.identity.name.clone(),
                    conn: self.conn,
                })
                .await;
        }
        for filter in std::mem::take(&mut self.filters) {
            ctx.fanout.unsubscribe(&filter, self.conn);
        }
    }
}

async fn next_verdict(owed: &mut VecDeque<OwedAck>) -> Accept {
    let head = owed.front_mut().expect("select guard: owed is non-empty");
    (&mut head.verdict).await.unwrap_or(Accept::Unavailable)
}

/// Tells the dispatcher that `client` has the envelopes `ids` (nothing when there are none),
/// and empties `ids`.
pub(super) async fn report(ctx: &FrontEnd, client: &str, ids: &mut Vec<String>) {
    if ids.is_empty() {
        return;
    }
    let ids = std::mem::take(ids);
    let client = client.to_string();
    let _ = ctx.inbound.send(Inbound::Delivered { client, ids }).await;
}
