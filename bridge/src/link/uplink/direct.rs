//! The uplink over MQTT on TCP or TLS without rumqttc: the dispatcher writes each frame to the
//! parent's socket itself, inside its sending pass, instead of handing it to this task's
//! channel and rumqttc's event loop (about 18 µs of a hop between the commit and the `writev`,
//! BENCHMARKS.md). The session task keeps the rest: CONNECT and SUBSCRIBE, reading the parent's
//! frames, keep-alive pings, and finishing a write the socket could not take at once.
//! MQTT 3.1.1 through rumqttd's codec; WebSocket parents still go through rumqttc (`mqtt.rs`).

use std::future::poll_fn;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use medlink_wire::topics::{link_down_topic, link_up_topic};
use rumqttd::protocol::v4::V4;
use rumqttd::protocol::{
    ConnAck, Connect, ConnectReturnCode, Filter, Login, Packet, PingReq, Protocol, QoS,
    RetainForwardRule, Subscribe, SubscribeReasonCode,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::sync::Notify;
use tracing::{debug, info};

use super::health::Cause;
use super::parent::{Channels, Ended, ParentAddr, ParentEvent, UplinkConfig};

/// A byte stream to the parent: TCP, or TLS over TCP.
trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Seconds between keep-alive pings (the parent drops a link silent for 1.5 times this).
const KEEP_ALIVE: u16 = 5;

/// The write side of a connected session, shared by the dispatcher (through
/// [`DirectLink::send`]) and the session task.
struct Writer {
    half: WriteHalf<Box<dyn Stream>>,
    /// `link/<me>/up`, where frames are published.
    topic: String,
    /// Bytes the socket has not taken yet, in order.
    pending: BytesMut,
    /// The socket failed: the session ends, and frames are dropped (the window resends).
    failed: bool,
}

impl Writer {
    /// Writes what is pending as far as the socket takes it now.
    fn poll_drain(&mut self, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        while !self.pending.is_empty() {
            match Pin::new(&mut self.half).poll_write(cx, &self.pending) {
                Poll::Ready(Ok(0)) => {
                    return Poll::Ready(Err(std::io::ErrorKind::WriteZero.into()))
                }
                Poll::Ready(Ok(n)) => {
                    let _ = self.pending.split_to(n);
                }
                Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // TLS keeps records in its own buffer until flushed.
        Pin::new(&mut self.half).poll_flush(cx)
    }
}

/// The dispatcher's way to the parent while a direct session is up.
#[derive(Default)]
pub(super) struct DirectLink {
    writer: Mutex<Option<Writer>>,
    /// Wakes the session task when a write could not finish at once.
    wake: Notify,
}

impl DirectLink {
    /// Writes `frame` as a QoS 0 PUBLISH now, as far as the socket takes it; false when no
    /// direct session is up (the caller queues it for the uplink task instead).
    pub(super) fn send(&self, frame: &[u8]) -> bool {
        let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
        let Some(w) = guard.as_mut() else {
            return false;
        };
        if w.failed {
            return true;
        }
        let was_empty = w.pending.is_empty();
        medlink_broker::codec::Codec {
            version: medlink_broker::codec::Version::V4,
        }
        .publish(w.topic.as_bytes(), frame, 0, 0, &mut w.pending);
        if was_empty {
            // A waker that does nothing: if the socket is full, the session task is told to
            // finish the write and registers its own.
            match w.poll_drain(&mut Context::from_waker(std::task::Waker::noop())) {
                Poll::Ready(Ok(())) => return true,
                Poll::Ready(Err(e)) => {
                    debug!(error = %e, "frame write to the parent failed");
                    w.failed = true;
                }
                Poll::Pending => {}
            }
        }
        self.wake.notify_one();
        true
    }

    fn install(&self, writer: Writer) {
        *self.writer.lock().unwrap_or_else(|p| p.into_inner()) = Some(writer);
    }

    fn remove(&self) {
        self.writer.lock().unwrap_or_else(|p| p.into_inner()).take();
    }

    /// Appends a packet for the session task's own writes (the keep-alive ping).
    fn queue(&self, packet: Packet) {
        if let Some(w) = self
            .writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_mut()
        {
            let _ = V4.write(packet, &mut w.pending);
        }
        self.wake.notify_one();
    }

    /// Whether bytes wait for the socket (or the socket failed).
    fn pending(&self) -> bool {
        self.writer
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .as_ref()
            .is_some_and(|w| w.failed || !w.pending.is_empty())
    }

    /// Finishes what is pending, with the session task's waker. Cancel-safe: what the socket
    /// has not taken stays pending.
    async fn drain(&self) -> std::io::Result<()> {
        poll_fn(|cx| {
            let mut guard = self.writer.lock().unwrap_or_else(|p| p.into_inner());
            match guard.as_mut() {
                Some(w) if w.failed => Poll::Ready(Err(std::io::ErrorKind::BrokenPipe.into())),
                Some(w) => w.poll_drain(cx),
                None => Poll::Ready(Ok(())),
            }
        })
        .await
    }
}

/// Reads packets from the parent, one at a time.
struct Reader {
    half: ReadHalf<Box<dyn Stream>>,
    buf: BytesMut,
    max: usize,
}

impl Reader {
    async fn next(&mut self) -> Result<Packet, Cause> {
        loop {
            match V4.read_mut(&mut self.buf, self.max) {
                Ok(p) => return Ok(p),
                Err(rumqttd::protocol::Error::InsufficientBytes(_)) => {}
                Err(e) => {
                    return Err(Cause::Other(format!(
                        "malformed packet from the parent: {e:?}"
                    )))
                }
            }
            self.buf.reserve(16 * 1024);
            match self.half.read_buf(&mut self.buf).await {
                Ok(0) => return Err(Cause::Other("the parent closed the connection".into())),
                Ok(_) => {}
                Err(e) => return Err(Cause::of(&e)),
            }
        }
    }
}

async fn dial(cfg: &UplinkConfig, addr: &ParentAddr) -> Result<Box<dyn Stream>, Cause> {
    let (host, port, tls) = match addr {
        ParentAddr::Tcp { host, port } => (host, *port, false),
        ParentAddr::Tls { host, port } => (host, *port, true),
        _ => unreachable!("only TCP and TLS parents run direct sessions"),
    };
    let tcp = tokio::net::TcpStream::connect((host.as_str(), port));
    let tcp = match tokio::time::timeout(Duration::from_secs(5), tcp).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(Cause::of(&e)),
        Err(_) => return Err(Cause::Timeout),
    };
    // Acks and pings are small writes; Nagle would hold them for a delayed ACK.
    let _ = tcp.set_nodelay(true);
    if !tls {
        return Ok(Box::new(tcp));
    }
    let config = cfg
        .tls
        .clone()
        .expect("configuration loading requires a CA for mqtts parents");
    let name = rustls::pki_types::ServerName::try_from(host.clone())
        .map_err(|e| Cause::Tls(e.to_string()))?;
    let handshake = tokio_rustls::TlsConnector::from(config).connect(name, tcp);
    match tokio::time::timeout(Duration::from_secs(5), handshake).await {
        Ok(Ok(s)) => Ok(Box::new(s)),
        Ok(Err(e)) => Err(Cause::of(&e)),
        Err(_) => Err(Cause::Timeout),
    }
}

/// Why a CONNACK refused the session.
fn refused(ack: &ConnAck) -> Option<Cause> {
    match ack.code {
        ConnectReturnCode::Success => None,
        ConnectReturnCode::BadUserNamePassword | ConnectReturnCode::NotAuthorized => {
            Some(Cause::LoginRefused)
        }
        code => Some(Cause::Other(format!(
            "the parent refused the connection: {code:?}"
        ))),
    }
}

/// CONNECT, CONNACK, SUBSCRIBE, SUBACK: the session is ready for frames.
async fn open(
    cfg: &UplinkConfig,
    addr: &ParentAddr,
) -> Result<(Reader, WriteHalf<Box<dyn Stream>>), Cause> {
    let stream = dial(cfg, addr).await?;
    let (read, mut write) = tokio::io::split(stream);
    let mut reader = Reader {
        half: read,
        buf: BytesMut::with_capacity(16 * 1024),
        max: cfg.max_packet,
    };
    let mut out = BytesMut::new();
    let connect = Connect {
        keep_alive: KEEP_ALIVE,
        client_id: cfg.node_id.clone(),
        clean_session: true,
    };
    let login = Login {
        username: cfg.node_id.clone(),
        password: cfg.password.clone().unwrap_or_default(),
    };
    let subscribe = Subscribe {
        pkid: 1,
        filters: vec![Filter {
            path: link_down_topic(&cfg.node_id),
            qos: QoS::AtMostOnce,
            nolocal: false,
            preserve_retain: false,
            retain_forward_rule: RetainForwardRule::OnEverySubscribe,
        }],
    };
    let _ = V4.write(
        Packet::Connect(connect, None, None, None, Some(login)),
        &mut out,
    );
    let _ = V4.write(Packet::Subscribe(subscribe, None), &mut out);
    let io = |e: std::io::Error| Cause::of(&e);
    write.write_all(&out).await.map_err(io)?;
    write.flush().await.map_err(io)?;
    let within = tokio::time::timeout(Duration::from_secs(5), async {
        match reader.next().await? {
            Packet::ConnAck(ack, _) => {
                if let Some(cause) = refused(&ack) {
                    return Err(cause);
                }
            }
            other => return Err(Cause::Other(format!("expected CONNACK, got {other:?}"))),
        }
        loop {
            match reader.next().await? {
                Packet::SubAck(ack, _) => {
                    let failed = ack.return_codes.iter().any(|c| {
                        matches!(
                            c,
                            SubscribeReasonCode::Failure | SubscribeReasonCode::NotAuthorized
                        )
                    });
                    return if failed {
                        Err(Cause::NotAChild)
                    } else {
                        Ok(())
                    };
                }
                Packet::PingResp(_) | Packet::Publish(..) => {}
                other => return Err(Cause::Other(format!("expected SUBACK, got {other:?}"))),
            }
        }
    });
    match within.await {
        Ok(Ok(())) => Ok((reader, write)),
        Ok(Err(cause)) => Err(cause),
        Err(_) => Err(Cause::Timeout),
    }
}

/// One direct MQTT session with the parent at `addr`.
pub(super) async fn session(
    cfg: &UplinkConfig,
    addr: &ParentAddr,
    link: &Arc<DirectLink>,
    ch: &mut Channels<'_>,
) -> Ended {
    let (mut reader, write) = match open(cfg, addr).await {
        Ok(s) => s,
        Err(reason) => {
            return Ended::Lost {
                connected: false,
                reason,
            }
        }
    };
    // Frames queued for an earlier session are stale: the window resends from the
    // acknowledged point once the dispatcher hears of this one.
    while ch.frames.try_recv().is_ok() {}
    link.install(Writer {
        half: write,
        topic: link_up_topic(&cfg.node_id),
        pending: BytesMut::with_capacity(64 * 1024),
        failed: false,
    });
    info!(parent = %addr, "connected to parent");
    let ended = run(addr, link, &mut reader, ch).await;
    link.remove();
    ended
}

async fn run(
    addr: &ParentAddr,
    link: &Arc<DirectLink>,
    reader: &mut Reader,
    ch: &mut Channels<'_>,
) -> Ended {
    let lost = |reason| Ended::Lost {
        connected: true,
        reason,
    };
    if !ch.connected(false).await {
        return Ended::Shutdown;
    }
    let mut ping = tokio::time::interval(Duration::from_secs(u64::from(KEEP_ALIVE)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut heard = Instant::now();
    loop {
        // Reading goes on while a long write drains: the parent's acks and pongs are how the
        // dispatcher knows the link is alive.
        let pending = link.pending();
        tokio::select! {
            packet = reader.next() => match packet {
                Ok(Packet::Publish(p, _)) => {
                    heard = Instant::now();
                    if ch.events.send(ParentEvent::Frame(p.payload)).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(_) => heard = Instant::now(),
                Err(reason) => return lost(reason),
            },
            drained = link.drain(), if pending => {
                if let Err(e) = drained {
                    return lost(Cause::of(&e));
                }
            }
            // The dispatcher left bytes pending: the next turn drains them.
            _ = link.wake.notified() => {}
            // Frames the dispatcher queued before this session was installed.
            Some(frame) = ch.frames.recv() => {
                link.send(&frame);
            }
            _ = ping.tick() => {
                if heard.elapsed() > Duration::from_secs(u64::from(KEEP_ALIVE) * 2) {
                    return lost(Cause::Timeout);
                }
                link.queue(Packet::PingReq(PingReq));
            }
            Some(()) = ch.reconnect.recv() => return lost(Cause::Stalled),
            _ = ch.shutdown.changed() => {
                link.queue(Packet::Disconnect(
                    rumqttd::protocol::Disconnect {
                        reason_code: rumqttd::protocol::DisconnectReasonCode::NormalDisconnection,
                    },
                    None,
                ));
                let _ = tokio::time::timeout(Duration::from_millis(200), link.drain()).await;
                debug!(parent = %addr, "disconnected from the parent");
                return Ended::Shutdown;
            }
        }
    }
}
