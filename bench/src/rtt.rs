//! `medlink-bench rtt`: request → reply round trips, the exchange a consultation is made of.
//!
//! In `--medlink` mode both ends are SDK clients: a requester at one node calls
//! `Client::request` and a responder at another node answers every command with
//! `Client::reply`, so each round trip crosses the tree up and back down with custody at every
//! hop and is correlated by `reply_to`. The transport is whatever the URLs say (`mqtt(s)://`,
//! or `http(s)://`, where the node decides). In plain mode the same exchange runs over any
//! MQTT brokers: the requester publishes on `<topic>/up/req`, the responder republishes each
//! payload on `<topic>/down/rep`, and a chain of bridged brokers has to carry `up` towards
//! the responder and `down` back.
//!
//! `-c` requests are in flight at once. Every reply is checked against its request: a reply
//! that never comes counts as lost, one that comes twice as a duplicate. The result is one
//! JSON line plus a human summary.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use medlink_sdk::{Address, Client, Options};
use rumqttc::QoS;
use serde::Serialize;
use serde_json::json;

use crate::latency::Latencies;
use crate::mqtt_client::{self, Endpoint};

/// Options of `medlink-bench rtt`.
#[derive(clap::Args, Debug, Clone)]
pub struct RttArgs {
    /// Where the requester connects.
    #[arg(long)]
    pub req_url: String,
    /// Where the responder connects.
    #[arg(long)]
    pub rep_url: String,
    /// Round trips in total.
    #[arg(long, short = 'n', default_value_t = DEFAULT_REQUESTS, value_parser = crate::positive)]
    pub requests: usize,
    /// Round trips in flight at once.
    #[arg(long, short = 'c', default_value_t = 1, value_parser = crate::positive)]
    pub concurrency: usize,
    /// Payload bytes per request (the reply carries the same).
    #[arg(long, short = 's', default_value_t = DEFAULT_SIZE)]
    pub size: usize,
    /// Drive a medlink tree through the SDK.
    #[arg(long)]
    pub medlink: bool,
    /// medlink: the requester's node id.
    #[arg(long)]
    pub req_node: Option<String>,
    /// medlink: the responder's node id.
    #[arg(long)]
    pub rep_node: Option<String>,
    /// Requester's username (medlink: its client identity).
    #[arg(long)]
    pub req_user: Option<String>,
    /// Requester's password.
    #[arg(long)]
    pub req_pass: Option<String>,
    /// Responder's username (medlink: its client identity).
    #[arg(long)]
    pub rep_user: Option<String>,
    /// Responder's password.
    #[arg(long)]
    pub rep_pass: Option<String>,
    /// CA certificate for TLS URLs.
    #[arg(long)]
    pub ca: Option<PathBuf>,
    /// Plain mode: topic prefix.
    #[arg(long, default_value = DEFAULT_TOPIC)]
    pub topic: String,
    /// A reply not back within this many seconds counts as lost.
    #[arg(long, default_value_t = DEFAULT_TIMEOUT)]
    pub timeout: u64,
    /// Label copied into the JSON result.
    #[arg(long, default_value = "")]
    pub label: String,
}

// The command line's defaults, shared with `Default` so an in-process caller gets the same.
const DEFAULT_REQUESTS: usize = 5_000;
const DEFAULT_SIZE: usize = 256;
const DEFAULT_TOPIC: &str = "rtt";
const DEFAULT_TIMEOUT: u64 = 20;

impl Default for RttArgs {
    /// What the command line gives without flags, except for the URLs, which have no default.
    fn default() -> Self {
        RttArgs {
            req_url: String::new(),
            rep_url: String::new(),
            requests: DEFAULT_REQUESTS,
            concurrency: 1,
            size: DEFAULT_SIZE,
            medlink: false,
            req_node: None,
            rep_node: None,
            req_user: None,
            req_pass: None,
            rep_user: None,
            rep_pass: None,
            ca: None,
            topic: DEFAULT_TOPIC.into(),
            timeout: DEFAULT_TIMEOUT,
            label: String::new(),
        }
    }
}

/// What one run measured: printed as one JSON line (the field names are what
/// `bench/chain.sh` reads) and a summary.
#[derive(Serialize, Debug, Clone)]
pub struct RttReport {
    /// `--label`.
    pub label: String,
    /// `medlink` (SDK clients) or `mqtt` (plain publishes).
    pub mode: &'static str,
    /// The transports the requester and the responder ended up on, e.g. `mqtt / http`.
    pub transport: String,
    /// Round trips asked for.
    pub requests: usize,
    /// Round trips in flight at once.
    pub concurrency: usize,
    /// Payload bytes per request.
    pub size: usize,
    /// Round trips whose reply came back, each counted once.
    pub replied: usize,
    /// Round trips whose reply never came (within `--timeout`).
    pub lost: usize,
    /// Replies that came for no waiting request (a second reply, or one answering another).
    pub duplicates: usize,
    /// medlink: repeats the requester's SDK dropped before the application.
    pub sdk_repeats_dropped: u64,
    /// From the first request to the last reply.
    pub seconds: f64,
    /// Replied round trips per second.
    pub round_trips_s: f64,
    /// Median round trip.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// 99.9th percentile.
    pub p999_ms: f64,
    /// Longest.
    pub max_ms: f64,
}

impl RttReport {
    /// Nothing lost and nothing duplicated.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0
    }

    /// The human summary line (`bench/chain.sh` shows it as the run's progress).
    pub fn summary(&self) -> String {
        format!(
            "# {} {} over {}: {} round trips x {} B, {} in flight: {:.0}/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; lost {}, duplicates {}",
            self.mode,
            self.label,
            self.transport,
            self.requests,
            self.size,
            self.concurrency,
            self.round_trips_s,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.lost,
            self.duplicates
        )
    }
}

/// What one run measured, before it is summarised.
struct Run {
    transport: String,
    replied: usize,
    duplicates: usize,
    repeats_dropped: u64,
    lat: Latencies,
    seconds: f64,
}

fn required(v: &Option<String>, flag: &str) -> Result<String, String> {
    v.clone().ok_or_else(|| format!("--medlink needs --{flag}"))
}

/// Runs the round trips `args` describe and reports how they went.
pub async fn run(args: &RttArgs) -> Result<RttReport, String> {
    if args.requests == 0 || args.concurrency == 0 {
        return Err("--requests and --concurrency must be positive".into());
    }
    let mut r = if args.medlink {
        medlink(args).await?
    } else {
        plain(args).await?
    };
    Ok(RttReport {
        label: args.label.clone(),
        mode: if args.medlink { "medlink" } else { "mqtt" },
        transport: r.transport,
        requests: args.requests,
        concurrency: args.concurrency,
        size: args.size,
        replied: r.replied,
        lost: args.requests - r.replied,
        duplicates: r.duplicates,
        sdk_repeats_dropped: r.repeats_dropped,
        seconds: r.seconds,
        round_trips_s: if r.seconds > 0.0 {
            r.replied as f64 / r.seconds
        } else {
            0.0
        },
        p50_ms: r.lat.ms(0.5),
        p99_ms: r.lat.ms(0.99),
        p999_ms: r.lat.ms(0.999),
        max_ms: r.lat.ms(1.0),
    })
}

/// Requests through the SDK; the responder replies to each on a task of its own.
async fn medlink(args: &RttArgs) -> Result<Run, String> {
    let connect = |url: &str, node: String, identity: String, password: String| {
        Client::connect(Options {
            url: url.to_string(),
            node,
            identity,
            password,
            ca: args.ca.clone(),
            ..Default::default()
        })
    };
    let rep_node = required(&args.rep_node, "rep-node")?;
    let rep_user = required(&args.rep_user, "rep-user")?;
    let (responder, inbox) = connect(
        &args.rep_url,
        rep_node.clone(),
        rep_user.clone(),
        args.rep_pass.clone().unwrap_or_default(),
    )
    .await
    .map_err(|e| format!("responder: {e}"))?;
    let answering = responder.clone();
    let handlers = inbox.spawn_handlers(
        move |m| {
            let r = answering.clone();
            async move {
                // Replies go out concurrently, as a busy expert system's would.
                tokio::spawn(async move { r.reply(&m, m.params.clone()).await });
            }
        },
        |_| async {},
    );
    let (requester, requester_inbox) = connect(
        &args.req_url,
        required(&args.req_node, "req-node")?,
        required(&args.req_user, "req-user")?,
        args.req_pass.clone().unwrap_or_default(),
    )
    .await
    .map_err(|e| format!("requester: {e}"))?;
    // Replies to requests of an earlier, interrupted run (kept by the nodes, as they should
    // be) arrive as plain commands: read and drop them so they never hold back this run's.
    let drain = requester_inbox.spawn_handlers(|_| async {}, |_| async {});
    let name = |c: &Client| {
        c.transport()
            .map_or("none".into(), |t| format!("{t:?}").to_lowercase())
    };
    let transport = format!("{} / {}", name(&requester), name(&responder));
    let to = Address::new(&rep_node, &rep_user);
    let pad = "x".repeat(args.size);
    let timeout = Duration::from_secs(args.timeout);
    let next = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let lat = Arc::new(std::sync::Mutex::new(Latencies::with_capacity(
        args.requests,
    )));
    let mismatched = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..args.concurrency {
        let (requester, to, pad, next, lat, mismatched) = (
            requester.clone(),
            to.clone(),
            pad.clone(),
            next.clone(),
            lat.clone(),
            mismatched.clone(),
        );
        let total = args.requests;
        workers.spawn(async move {
            let mut replied = 0usize;
            loop {
                let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if i >= total {
                    return replied;
                }
                let t0 = Instant::now();
                let params = json!({"i": i, "pad": pad});
                if let Ok(reply) = requester.request(&to, "bench.echo", params, timeout).await {
                    if reply.params["i"] == i {
                        replied += 1;
                        lat.lock()
                            .expect("no worker panics while holding the samples")
                            .push(t0.elapsed());
                    } else {
                        mismatched.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    }
                }
            }
        });
    }
    let mut replied = 0;
    while let Some(done) = workers.join_next().await {
        replied += done.map_err(|e| format!("requester task failed: {e}"))?;
    }
    let seconds = start.elapsed().as_secs_f64();
    for h in [handlers, drain] {
        h.commands.abort();
        h.receipts.abort();
    }
    let lat = std::mem::take(
        &mut *lat
            .lock()
            .expect("no worker panics while holding the samples"),
    );
    let repeats = requester.repeats_dropped();
    requester.close().await;
    responder.close().await;
    Ok(Run {
        transport,
        replied,
        // The SDK drops repeats before the application sees them (counted apart); a reply
        // that answers another request is what would show here.
        duplicates: mismatched.load(std::sync::atomic::Ordering::Relaxed),
        repeats_dropped: repeats,
        lat,
        seconds,
    })
}

/// The same exchange over plain MQTT brokers (a bridged mosquitto chain, say).
async fn plain(args: &RttArgs) -> Result<Run, String> {
    let (req_topic, rep_topic) = (
        format!("{}/up/req", args.topic),
        format!("{}/down/rep", args.topic),
    );
    let pid = std::process::id();
    let rep_ep = Endpoint::new(&args.rep_url, &args.rep_user, &args.rep_pass, &args.ca);
    let (responder, mut requests) = mqtt_client::connect(
        &rep_ep,
        &format!("rtt-rep-{pid}"),
        std::slice::from_ref(&req_topic),
    )
    .await?;
    let echo_topic = rep_topic.clone();
    let echo = tokio::spawn(async move {
        while let Some(m) = requests.recv().await {
            if responder
                .publish(
                    echo_topic.clone(),
                    QoS::AtLeastOnce,
                    false,
                    m.payload.to_vec(),
                )
                .await
                .is_err()
            {
                return;
            }
        }
    });
    let req_ep = Endpoint::new(&args.req_url, &args.req_user, &args.req_pass, &args.ca);
    let (requester, mut replies) =
        mqtt_client::connect(&req_ep, &format!("rtt-req-{pid}"), &[rep_topic]).await?;
    // Each payload starts with the request's number; the rest is padding.
    let payload = |i: usize| {
        let mut p = (i as u64).to_be_bytes().to_vec();
        p.resize(args.size.max(8), b'x');
        p
    };
    let mut sent_at: HashMap<u64, Instant> = HashMap::new();
    let mut lat = Latencies::with_capacity(args.requests);
    let (mut sent, mut replied, mut duplicates) = (0usize, 0usize, 0usize);
    let start = Instant::now();
    let wait = Duration::from_secs(args.timeout);
    while replied < args.requests {
        while sent < args.requests && sent - replied < args.concurrency {
            sent_at.insert(sent as u64, Instant::now());
            requester
                .publish(req_topic.clone(), QoS::AtLeastOnce, false, payload(sent))
                .await
                .map_err(|e| format!("requester: {e}"))?;
            sent += 1;
        }
        let Ok(Some(m)) = tokio::time::timeout(wait, replies.recv()).await else {
            break;
        };
        let Some(head) = m.payload.get(..8) else {
            continue;
        };
        let i = u64::from_be_bytes(head.try_into().expect("an 8-byte slice"));
        match sent_at.remove(&i) {
            Some(t0) => {
                lat.push(t0.elapsed());
                replied += 1;
            }
            None => duplicates += 1,
        }
    }
    let seconds = start.elapsed().as_secs_f64();
    echo.abort();
    Ok(Run {
        transport: "mqtt".into(),
        replied,
        duplicates,
        repeats_dropped: 0,
        lat,
        seconds,
    })
}
