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
use tokio::sync::{mpsc, watch, Semaphore};

use super::proto::{self, Report};
use super::recipient::{Ctx, Event, Life};
use super::{Target, Transport};

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
