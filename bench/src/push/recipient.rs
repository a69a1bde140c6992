//! What one recipient task of a load process has: the context its process shares with every
//! recipient ([`Ctx`]: target, login, addresses, where to report), where it is in its life
//! ([`Life`]), and what it reports ([`Event`]). The sessions (`mqtt.rs`, `http.rs`) and the
//! process that runs them (`load.rs`) all use it; it uses none of them.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit};

use super::auth::{self, AuthMode, Login};
use super::proto::{self, Arrival};
use super::{Broker, Target};

/// An SSE acknowledgement for the shared ack connections: (Authorization, cursor).
pub(super) type AckJob = (Arc<str>, String);

/// What a recipient task tells the reporter.
pub(super) enum Event {
    Ready,
    Arrival(Arrival),
    Up(u32, u64, u64, u64),
    Down(String),
    Fatal(String),
}

/// What every recipient of this process shares.
pub(super) struct Ctx {
    pub target: Target,
    pub mode: AuthMode,
    pub run: String,
    pub mqtt: Option<SocketAddr>,
    pub http: Option<SocketAddr>,
    /// Spread recipients over distinct loopback source addresses (see [`Ctx::source`]).
    pub spread: bool,
    pub events: mpsc::UnboundedSender<Event>,
    pub stop: watch::Receiver<bool>,
    /// SSE acknowledgements: (Authorization, cursor), sent by a few shared connections.
    pub acks: Option<mpsc::UnboundedSender<AckJob>>,
    /// First-connect failures logged so far.
    pub logged: std::sync::atomic::AtomicUsize,
}

impl Ctx {
    pub fn identity(&self, idx: u32) -> String {
        super::identity(&self.target.prefix, idx as usize)
    }

    pub fn login(&self, identity: &str) -> Option<Login> {
        auth::login(&self.target.auth, self.mode, identity)
    }

    /// The topic a recipient subscribes to: its medlink inbox, or `push/<n>` on a plain broker.
    pub fn topic(&self, idx: u32) -> String {
        match self.target.broker {
            Broker::Medlink => format!(
                "org/{}/{}/cmd",
                self.target.node.as_deref().unwrap_or(""),
                self.identity(idx)
            ),
            Broker::Mosquitto => super::plain_topic(idx as usize),
        }
    }

    /// The loopback source address of recipient `idx`, so that every recipient comes from an
    /// address of its own, as phones do: a node's per-address state (the login throttle
    /// counts attempts in flight per address) then sees what it would see in the field, and
    /// 19,000 connections do not share one address's ephemeral ports.
    fn source(&self, idx: u32) -> Option<Ipv4Addr> {
        if !self.spread {
            return None;
        }
        let (x, y) = (idx / 250, idx % 250);
        Some(Ipv4Addr::new(
            127,
            100 + (x / 250) as u8,
            (x % 250) as u8 + 1,
            y as u8 + 1,
        ))
    }

    /// A TCP connection to `to` from recipient `idx`'s source address, Nagle off.
    pub async fn connect(&self, idx: u32, to: SocketAddr) -> Result<TcpStream, String> {
        let socket = TcpSocket::new_v4().map_err(|e| format!("socket: {e}"))?;
        if let Some(ip) = self.source(idx) {
            socket
                .bind(SocketAddr::new(ip.into(), 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = tokio::time::timeout(Duration::from_secs(10), socket.connect(to))
            .await
            .map_err(|_| format!("connect {to}: no answer in 10 s"))?
            .map_err(|e| format!("connect {to}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(stream)
    }

    /// Reads a delivery: the sender's sequence number from `params` (medlink's envelope) or
    /// from the payload itself (plain MQTT), checked against this run's nonce.
    pub fn arrival(&self, idx: u32, payload: &[u8]) -> Arrival {
        let at = proto::now_us();
        let v: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        self.read_arrival(idx, &v, at)
    }

    /// [`Ctx::arrival`] of a delivery already parsed (a long-poll page's message).
    pub fn arrival_value(&self, idx: u32, v: &serde_json::Value) -> Arrival {
        self.read_arrival(idx, v, proto::now_us())
    }

    fn read_arrival(&self, idx: u32, v: &serde_json::Value, at: u64) -> Arrival {
        let p = v.get("params").unwrap_or(v);
        let ours = p.get("run").and_then(|r| r.as_str()) == Some(self.run.as_str());
        let seq = match p.get("seq").and_then(|s| s.as_i64()) {
            Some(s) if ours => s,
            _ => -1,
        };
        let id = v
            .get("id")
            .and_then(|i| i.as_str())
            .unwrap_or("")
            .to_string();
        (idx, seq, at, id)
    }

    pub fn send(&self, e: Event) {
        let _ = self.events.send(e);
    }
}

/// Where one recipient is in its life: before its first admission (connect retries are
/// limited, and a connect slot is held), or after (it reconnects for ever, with backoff).
pub(super) struct Life {
    pub(super) idx: u32,
    pub(super) first: bool,
    pub(super) attempt: u32,
    pub(super) permit: Option<OwnedSemaphorePermit>,
    /// CLOCK_REALTIME µs at which the current connection attempt started.
    pub(super) attempt_started: u64,
    /// CLOCK_REALTIME µs at which its TCP connection was established.
    pub(super) connected_at: u64,
    /// Where the recipient stands in its HTTP stream (SSE `Last-Event-ID`, long-poll
    /// cursor), kept across reconnects.
    pub cursor: Option<String>,
}

impl Life {
    /// The recipient's index.
    pub fn idx(&self) -> u32 {
        self.idx
    }

    /// Recipient `idx`'s TCP connection for this attempt, timed: the storm tells the wait for
    /// the node's accept (and the kernel's backlog) apart from the protocol's handshake.
    pub async fn connect(&mut self, ctx: &Ctx, to: SocketAddr) -> Result<TcpStream, String> {
        let stream = ctx.connect(self.idx, to).await?;
        self.connected_at = proto::now_us();
        Ok(stream)
    }

    /// The recipient is connected and subscribed: ready the first time, re-admitted later.
    pub fn admitted(&mut self, ctx: &Ctx) {
        if self.first {
            self.first = false;
            ctx.send(Event::Ready);
        } else {
            let now = proto::now_us();
            ctx.send(Event::Up(
                self.idx,
                self.attempt_started,
                self.connected_at,
                now,
            ));
        }
        self.attempt = 0;
        self.permit = None;
    }
}
