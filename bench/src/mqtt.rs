//! `medlink-bench mqtt`: one load generator for medlink and for any other MQTT broker.
//!
//! Publishers send N numbered messages at QoS 1; a subscriber (on the same or another broker)
//! checks every message for loss, duplication and per-publisher order, and measures latency
//! from the publisher's call to the subscriber's receipt (same process, same clock).
//! In `--medlink` mode the messages are commands sent through client outboxes and received
//! from an inbox, so they cross every tier in between with custody at each hop; in plain mode
//! they are ordinary publishes on `<topic>/<publisher>`, which is how a chain of bridged
//! mosquitto brokers is driven. The result is one JSON line plus a human summary.

use std::time::{Duration, Instant};

use rumqttc::QoS;
use serde::{Deserialize, Serialize};

use crate::latency::Latencies;
use crate::mqtt_client::{self, Endpoint, Received};

/// Options of `medlink-bench mqtt`.
#[derive(clap::Args, Debug, Clone)]
pub struct MqttArgs {
    /// Broker the publishers connect to (`mqtt://`, `mqtts://host:port`, `ws://` or
    /// `wss://host:port/mqtt`).
    #[arg(long)]
    pub pub_url: String,
    /// Broker the subscriber connects to (default: the publishers' broker).
    #[arg(long)]
    pub sub_url: Option<String>,
    /// Messages in total.
    #[arg(long, short = 'n', default_value_t = 10_000, value_parser = crate::positive)]
    pub messages: usize,
    /// Payload bytes per message.
    #[arg(long, short = 's', default_value_t = 256)]
    pub size: usize,
    /// Concurrent publishers.
    #[arg(long, short = 'p', default_value_t = 1, value_parser = crate::positive)]
    pub publishers: usize,
    /// Total send rate in messages/s (default: as fast as the broker takes them).
    #[arg(long)]
    pub rate: Option<u64>,
    /// Drive a medlink tree: publish commands to client outboxes, receive from an inbox.
    #[arg(long)]
    pub medlink: bool,
    /// medlink: the publishers' node id.
    #[arg(long)]
    pub pub_node: Option<String>,
    /// medlink: the subscriber's node id.
    #[arg(long)]
    pub sub_node: Option<String>,
    /// Publishers' username (medlink: their client identity).
    #[arg(long)]
    pub pub_user: Option<String>,
    /// Publishers' password.
    #[arg(long)]
    pub pub_pass: Option<String>,
    /// Subscriber's username (medlink: the target client identity).
    #[arg(long)]
    pub sub_user: Option<String>,
    /// Subscriber's password.
    #[arg(long)]
    pub sub_pass: Option<String>,
    /// CA certificate for `mqtts`/`wss` URLs.
    #[arg(long)]
    pub ca: Option<std::path::PathBuf>,
    /// Plain mode: topic prefix.
    #[arg(long, default_value = "bench")]
    pub topic: String,
    /// Give up when nothing arrives for this many seconds.
    #[arg(long, default_value_t = 20)]
    pub idle_timeout: u64,
    /// Label copied into the JSON result.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Also write every sample to this file, one line each: when it was sent and its latency
    /// (both in microseconds), to see whether slow messages come at a period.
    #[arg(long)]
    pub samples: Option<std::path::PathBuf>,
}

/// What every message carries so the subscriber can check it.
#[derive(Serialize, Deserialize)]
struct Probe {
    p: u32,
    s: u32,
    t: u64,
}

/// What one run measured: printed as one JSON line (the field names are what
/// `bench/chain.sh` reads) and a summary.
#[derive(Serialize, Debug, Clone)]
pub struct MqttReport {
    /// `--label`.
    pub label: String,
    /// `medlink` (commands through a tree) or `mqtt` (plain publishes).
    pub mode: &'static str,
    /// Messages sent.
    pub messages: usize,
    /// Payload bytes per message.
    pub size: usize,
    /// Concurrent publishers.
    pub publishers: usize,
    /// The total send rate asked for, if any.
    pub rate: Option<u64>,
    /// Distinct messages received.
    pub received: usize,
    /// Messages that never arrived (before `--idle-timeout`).
    pub lost: usize,
    /// Messages that arrived more than once.
    pub duplicates: usize,
    /// Messages that arrived after a later one of the same publisher.
    pub out_of_order: usize,
    /// medlink: receipts the publishers got (none are asked for, so these are failures).
    pub receipts: usize,
    /// From the first send to the last receipt.
    pub seconds: f64,
    /// Received messages per second.
    pub throughput_msg_s: f64,
    /// Median latency, publisher's call to subscriber's receipt.
    pub p50_ms: f64,
    /// 99th percentile latency.
    pub p99_ms: f64,
    /// 99.9th percentile latency.
    pub p999_ms: f64,
    /// Highest latency.
    pub max_ms: f64,
}

impl MqttReport {
    /// Nothing lost and nothing duplicated.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0
    }

    /// The human summary line (`bench/chain.sh` shows it as the run's progress).
    pub fn summary(&self) -> String {
        format!(
            "# {} {}: {} msgs x {} B from {} publisher(s){}: {:.0} msg/s, p50 {:.3} ms, p99 {:.3} ms, p99.9 {:.3} ms, max {:.3} ms; lost {}, duplicates {}, out of order {}",
            self.mode,
            self.label,
            self.messages,
            self.size,
            self.publishers,
            self.rate.map(|x| format!(" at {x} msg/s")).unwrap_or_default(),
            self.throughput_msg_s,
            self.p50_ms,
            self.p99_ms,
            self.p999_ms,
            self.max_ms,
            self.lost,
            self.duplicates,
            self.out_of_order
        )
    }
}

/// Runs the load `args` describe and reports what arrived.
pub async fn run(args: &MqttArgs) -> Result<MqttReport, String> {
    if args.publishers == 0 || args.messages == 0 {
        return Err("--publishers and --messages must be positive".into());
    }
    let sub_ep = Endpoint::new(
        args.sub_url.as_ref().unwrap_or(&args.pub_url),
        &args.sub_user,
        &args.sub_pass,
        &args.ca,
    );
    let pub_ep = Endpoint::new(&args.pub_url, &args.pub_user, &args.pub_pass, &args.ca);
    let (pub_topic, sub_filters, target) = if args.medlink {
        let pn = args.pub_node.clone().ok_or("--medlink needs --pub-node")?;
        let sn = args.sub_node.clone().ok_or("--medlink needs --sub-node")?;
        let pu = args.pub_user.clone().ok_or("--medlink needs --pub-user")?;
        let su = args.sub_user.clone().ok_or("--medlink needs --sub-user")?;
        (
            format!("org/{pn}/{pu}/out"),
            vec![
                format!("org/{sn}/{su}/cmd"),
                format!("org/{pn}/{pu}/receipt"),
            ],
            Some((sn, su)),
        )
    } else {
        (args.topic.clone(), vec![format!("{}/#", args.topic)], None)
    };
    let sub_id = format!("bench-sub-{}", std::process::id());
    let (_sub, mut rx) = mqtt_client::connect(&sub_ep, &sub_id, &sub_filters).await?;
    let epoch = Instant::now();
    let per_pub = args.messages.div_ceil(args.publishers);
    let mut handles = Vec::new();
    for p in 0..args.publishers {
        let count = args.messages.saturating_sub(p * per_pub).min(per_pub);
        let ep = pub_ep.clone();
        let topic = if args.medlink {
            pub_topic.clone()
        } else {
            format!("{}/{p}", args.topic)
        };
        let target = target.clone();
        let size = args.size;
        let interval = args
            .rate
            .map(|r| Duration::from_secs_f64(args.publishers as f64 / r.max(1) as f64));
        let id = format!("bench-pub-{}-{p}", std::process::id());
        let (client, _rx) = mqtt_client::connect(&ep, &id, &[]).await?;
        handles.push(tokio::spawn(async move {
            let mut ticker = interval.map(|i| {
                let mut t = tokio::time::interval(i);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
                t
            });
            for s in 0..count {
                if let Some(t) = ticker.as_mut() {
                    t.tick().await;
                }
                let probe = Probe {
                    p: p as u32,
                    s: s as u32,
                    t: epoch.elapsed().as_nanos() as u64,
                };
                let payload = payload(&probe, size, target.as_ref());
                if client
                    .publish(topic.clone(), QoS::AtLeastOnce, false, payload)
                    .await
                    .is_err()
                {
                    return Err(format!("publisher {p} lost its connection"));
                }
            }
            Ok::<(usize, AsyncClientKeep), String>((count, AsyncClientKeep(client)))
        }));
    }
    let mut counts = vec![0usize; args.publishers];
    let mut seen: Vec<Vec<bool>> = (0..args.publishers).map(|_| vec![false; per_pub]).collect();
    let mut highest: Vec<i64> = vec![-1; args.publishers];
    let (mut unique, mut dups, mut ooo, mut receipts) = (0usize, 0usize, 0usize, 0usize);
    let mut lat = Latencies::with_capacity(args.messages);
    let mut trail: Vec<(u64, u64)> = Vec::new();
    let mut last_rx = epoch;
    let idle = Duration::from_secs(args.idle_timeout);
    while unique < args.messages {
        let msg = match tokio::time::timeout(idle, rx.recv()).await {
            Ok(Some(m)) => m,
            _ => break,
        };
        let now = epoch.elapsed().as_nanos() as u64;
        let Some(probe) = read_probe(&msg, args.medlink, &mut receipts) else {
            continue;
        };
        last_rx = Instant::now();
        let (p, s) = (probe.p as usize, probe.s as usize);
        if p >= args.publishers || s >= per_pub {
            continue;
        }
        if seen[p][s] {
            dups += 1;
            continue;
        }
        seen[p][s] = true;
        counts[p] += 1;
        unique += 1;
        if (s as i64) < highest[p] {
            ooo += 1;
        }
        highest[p] = highest[p].max(s as i64);
        lat.push_nanos(now.saturating_sub(probe.t));
        if args.samples.is_some() {
            trail.push((probe.t / 1000, now.saturating_sub(probe.t) / 1000));
        }
    }
    if let Some(path) = &args.samples {
        let text: String = trail.iter().map(|(t, l)| format!("{t} {l}\n")).collect();
        std::fs::write(path, text).map_err(|e| format!("{}: {e}", path.display()))?;
    }
    let mut keep = Vec::new();
    for h in handles {
        match h.await {
            Ok(Ok(k)) => keep.push(k),
            Ok(Err(e)) => return Err(e),
            Err(e) => return Err(format!("publisher task failed: {e}")),
        }
    }
    // Give late duplicates a moment to show up before counting.
    if unique == args.messages {
        let grace = Instant::now() + Duration::from_millis(500);
        while let Ok(Some(msg)) = tokio::time::timeout_at(grace.into(), rx.recv()).await {
            if let Some(probe) = read_probe(&msg, args.medlink, &mut receipts) {
                if (probe.p as usize) < args.publishers
                    && (probe.s as usize) < per_pub
                    && seen[probe.p as usize][probe.s as usize]
                {
                    dups += 1;
                }
            }
        }
    }
    drop(keep);
    let seconds = last_rx.duration_since(epoch).as_secs_f64();
    Ok(MqttReport {
        label: args.label.clone(),
        mode: if args.medlink { "medlink" } else { "mqtt" },
        messages: args.messages,
        size: args.size,
        publishers: args.publishers,
        rate: args.rate,
        received: unique,
        lost: args.messages - unique,
        duplicates: dups,
        out_of_order: ooo,
        receipts,
        seconds,
        throughput_msg_s: if seconds > 0.0 {
            unique as f64 / seconds
        } else {
            0.0
        },
        p50_ms: lat.ms(0.50),
        p99_ms: lat.ms(0.99),
        p999_ms: lat.ms(0.999),
        max_ms: lat.ms(1.0),
    })
}

/// Keeps a publisher's connection open until the subscriber is done.
struct AsyncClientKeep(#[allow(dead_code)] rumqttc::AsyncClient);

fn payload(probe: &Probe, size: usize, target: Option<&(String, String)>) -> Vec<u8> {
    match target {
        None => {
            let mut v = serde_json::to_vec(probe).expect("probes serialise");
            v.push(b' ');
            if v.len() < size {
                v.resize(size, b'.');
            }
            v
        }
        Some((node, client)) => {
            let head = serde_json::json!({
                "to": {"node": node, "client": client},
                "cmd": "bench",
                "params": {"p": probe.p, "s": probe.s, "t": probe.t, "pad": ""},
            })
            .to_string();
            let pad = size.saturating_sub(head.len());
            let params = serde_json::json!({"p": probe.p, "s": probe.s, "t": probe.t, "pad": ".".repeat(pad)});
            serde_json::json!({
                "to": {"node": node, "client": client},
                "cmd": "bench",
                "params": params,
            })
            .to_string()
            .into_bytes()
        }
    }
}

fn read_probe(msg: &Received, medlink: bool, receipts: &mut usize) -> Option<Probe> {
    if !medlink {
        let end = msg.payload.iter().position(|b| *b == b' ')?;
        return serde_json::from_slice(&msg.payload[..end]).ok();
    }
    if msg.topic.ends_with("/receipt") {
        *receipts += 1;
        if *receipts <= 3 {
            eprintln!("receipt: {}", String::from_utf8_lossy(&msg.payload));
        }
        return None;
    }
    #[derive(Deserialize)]
    struct Env<'a> {
        #[serde(borrow)]
        params: &'a serde_json::value::RawValue,
    }
    let env: Env = serde_json::from_slice(&msg.payload).ok()?;
    serde_json::from_str(env.params.get()).ok()
}
