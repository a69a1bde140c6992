//! `medlink-bench push-load` (hidden): one load process of the push bench. It holds the
//! recipients `--from` ..< `--to`, each a task on one current-thread runtime, and reports to
//! its coordinator on stdout ([`Report`] lines) until the coordinator writes `stop`.
//!
//! Several of these run at once because one process may hold at most ~20,000 sockets here and
//! the coordinator must stay free to post and to time; a single thread each keeps the load
//! processes from taking more than their share of the two cores the node also runs on.

use std::net::{Ipv4Addr, SocketAddr, ToSocketAddrs};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpSocket, TcpStream};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};

use super::auth::{self, AuthMode, Login};
use super::proto::{self, Arrival, Report};
use super::{Broker, Target, Transport};

/// Options of `medlink-bench push-load`: the coordinator's target plus this process's share.
#[derive(clap::Args, Debug, Clone)]
pub struct LoadArgs {
    /// What to connect to, and how.
    #[command(flatten)]
    pub target: Target,
    /// First recipient index (0-based) held by this process.
    #[arg(long)]
    pub from: usize,
    /// One past the last recipient index held by this process.
    #[arg(long)]
    pub to: usize,
    /// The run's nonce: payloads carrying another are counted as stale.
    #[arg(long)]
    pub run: String,
}

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
    pub acks: Option<mpsc::UnboundedSender<super::http::AckJob>>,
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
    idx: u32,
    first: bool,
    attempt: u32,
    permit: Option<OwnedSemaphorePermit>,
    /// CLOCK_REALTIME µs at which the current connection attempt started.
    attempt_started: u64,
    /// CLOCK_REALTIME µs at which its TCP connection was established.
    connected_at: u64,
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

/// Connect attempts of a recipient before the run gives up on it.
const FIRST_CONNECT_ATTEMPTS: u32 = 20;

/// One recipient: sessions until `stop`, reconnecting when a session ends.
async fn recipient(ctx: Arc<Ctx>, idx: u32, slots: Arc<Semaphore>) {
    let mut life = Life {
        idx,
        first: true,
        attempt: 0,
        permit: slots.acquire_owned().await.ok(),
        attempt_started: 0,
        connected_at: 0,
        cursor: None,
    };
    let mut stop = ctx.stop.clone();
    loop {
        if *stop.borrow() {
            return;
        }
        life.attempt_started = proto::now_us();
        let ended = match ctx.target.transport {
            Transport::Mqtt => super::mqtt::session(&ctx, &mut life).await,
            Transport::Sse => super::http::sse_session(&ctx, &mut life).await,
            Transport::Longpoll => super::http::poll_session(&ctx, &mut life).await,
        };
        let Err(why) = ended else { return };
        life.attempt += 1;
        let pause = if life.first {
            if life.attempt >= FIRST_CONNECT_ATTEMPTS {
                ctx.send(Event::Fatal(format!("{}: {why}", ctx.identity(idx))));
                return;
            }
            // A few per process, so that a systematic refusal shows without flooding.
            if ctx
                .logged
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
                < 5
            {
                eprintln!(
                    "medlink-bench push-load: {} (attempt {}): {why}",
                    ctx.identity(idx),
                    life.attempt
                );
            }
            Duration::from_millis((200 * u64::from(life.attempt)).min(2_000))
        } else {
            if life.attempt == 1 {
                ctx.send(Event::Down(why));
            }
            backoff(idx, life.attempt, ctx.target.reconnect_cap_ms)
        };
        tokio::select! {
            _ = tokio::time::sleep(pause) => {}
            _ = stop.changed() => return,
        }
    }
}

/// A device's reconnect delay, as the SDK does it: 100 ms doubling to `cap_ms` (the SDK's is
/// 5 s), plus up to half again at random, so that a crowd that lost its node together does
/// not return together.
fn backoff(idx: u32, attempt: u32, cap_ms: u64) -> Duration {
    let base = (100u64 << attempt.saturating_sub(1).min(16)).min(cap_ms.max(1));
    let nanos = Instant::now().elapsed().as_nanos() as u64 ^ proto::now_us();
    let mut x = (u64::from(idx) << 32) ^ u64::from(attempt) ^ nanos;
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    Duration::from_millis(base + x % (base / 2 + 1))
}

/// Writes the reports: arrivals and re-admissions batched per line, `ready` once every
/// recipient of this process was admitted.
async fn reporter(mut events: mpsc::UnboundedReceiver<Event>, count: usize, started: Instant) {
    let mut out = tokio::io::stdout();
    let mut ready = 0usize;
    let mut down = (0u64, String::new());
    while let Some(first) = events.recv().await {
        let mut lines = Vec::new();
        let (mut arrivals, mut ups) = (Vec::new(), Vec::new());
        let mut next = Some(first);
        while let Some(e) = next.take().or_else(|| events.try_recv().ok()) {
            match e {
                Event::Ready => {
                    ready += 1;
                    if ready == count {
                        lines.push(Report::Ready {
                            connected: ready,
                            connect_s: started.elapsed().as_secs_f64(),
                        });
                    }
                }
                Event::Arrival(a) => arrivals.push(a),
                Event::Up(i, s, c, t) => ups.push((i, s, c, t)),
                Event::Down(why) => down = (down.0 + 1, why),
                Event::Fatal(error) => lines.push(Report::Fatal { error }),
            }
            if arrivals.len() >= 2000 {
                break;
            }
        }
        if !arrivals.is_empty() {
            lines.push(Report::Arrivals { a: arrivals });
        }
        if !ups.is_empty() {
            lines.push(Report::Up { a: ups });
        }
        if down.0 > 0 {
            let (n, why) = std::mem::take(&mut down);
            lines.push(Report::Down { n, why });
        }
        let mut text = String::new();
        for l in lines {
            text.push_str(&serde_json::to_string(&l).expect("reports serialise"));
            text.push('\n');
        }
        if out.write_all(text.as_bytes()).await.is_err() || out.flush().await.is_err() {
            return; // The coordinator is gone.
        }
    }
}

fn resolve(addr: &Option<String>, flag: &str) -> Result<Option<SocketAddr>, String> {
    let Some(a) = addr else { return Ok(None) };
    a.to_socket_addrs()
        .map_err(|e| format!("--{flag} {a}: {e}"))?
        .find(SocketAddr::is_ipv4)
        .map(Some)
        .ok_or_else(|| format!("--{flag} {a}: no IPv4 address"))
}

/// Runs the load process until the coordinator says `stop` (or closes stdin).
pub async fn run(args: LoadArgs) -> Result<(), String> {
    let started = Instant::now();
    proto::raise_nofile();
    let t = &args.target;
    let mqtt = resolve(&t.mqtt, "mqtt")?;
    let http = resolve(&t.http, "http")?;
    let loopback = [mqtt, http].iter().flatten().all(|a| a.ip().is_loopback());
    let (events_tx, events_rx) = mpsc::unbounded_channel();
    let (stop_tx, stop_rx) = watch::channel(false);
    let acks = (t.transport == Transport::Sse).then(|| {
        let (tx, rx) = mpsc::unbounded_channel();
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        for w in 0..t.ack_conns.clamp(1, 250) {
            // Each from an address of its own, like the recipients (see `Ctx::source`).
            let source = (loopback && !t.one_source)
                .then(|| Ipv4Addr::new(127, 98, (args.from / 256 % 256) as u8, w as u8 + 1));
            tokio::spawn(super::http::ack_worker(http, source, rx.clone()));
        }
        tx
    });
    let ctx = Arc::new(Ctx {
        mode: t.auth_mode(),
        target: t.clone(),
        run: args.run.clone(),
        mqtt,
        http,
        spread: loopback && !t.one_source,
        events: events_tx,
        stop: stop_rx,
        acks,
        logged: Default::default(),
    });
    let count = args.to.saturating_sub(args.from);
    let report = tokio::spawn(reporter(events_rx, count, started));
    // `stop` (or the coordinator going away) ends the run.
    tokio::spawn(async move {
        let mut lines = BufReader::new(tokio::io::stdin()).lines();
        while let Ok(Some(l)) = lines.next_line().await {
            if l.trim() == proto::STOP {
                break;
            }
        }
        let _ = stop_tx.send(true);
    });
    let slots = Arc::new(Semaphore::new(t.connect_concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    for idx in args.from..args.to {
        tasks.spawn(recipient(ctx.clone(), idx as u32, slots.clone()));
    }
    let mut stop = ctx.stop.clone();
    let _ = stop.wait_for(|s| *s).await;
    // Sessions close themselves on `stop`; a task stuck in a write is not waited for long.
    if tokio::time::timeout(Duration::from_secs(5), async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_err()
    {
        tasks.abort_all();
    }
    drop(tasks);
    drop(ctx);
    let _ = report.await;
    let done = Report::Done {
        cpu_s: proto::cpu_seconds(),
        rss_kb: proto::rss_kb("self").unwrap_or(0),
    };
    println!(
        "{}",
        serde_json::to_string(&done).expect("reports serialise")
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_a_cap_with_jitter() {
        for attempt in 1..40 {
            let d = backoff(7, attempt, 5_000).as_millis() as u64;
            let base = (100u64 << (attempt - 1).min(16)).min(5_000);
            assert!(d >= base && d <= base + base / 2, "{attempt}: {d}");
        }
    }
}
