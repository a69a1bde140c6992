//! The reconnect storm of `medlink-bench push --storm`: the broker is restarted while every
//! recipient is connected, and each recipient's return is timed, with the node's side of it
//! (TCP accept, then CONNECT to SUBACK) apart from the device's own backoff.

use std::process::Stdio;
use std::time::{Duration, Instant};

use serde::Serialize;
use tokio::process::Command;

use super::loads::{Loads, Tally};
use super::proto::now_us;
use super::PushArgs;
use crate::latency::Latencies;

/// What the reconnect storm measured (`--storm`).
#[derive(Serialize, Debug, Clone)]
pub struct StormReport {
    /// Recipients connected when the node was restarted.
    pub recipients: usize,
    /// Recipients connected and subscribed again before `--storm-deadline`.
    pub readmitted: usize,
    /// Seconds the restart command took.
    pub restart_cmd_s: f64,
    /// Seconds from the restart command's start until the new node accepted a connection.
    pub listening_s: Option<f64>,
    /// Seconds from the restart command's start to the last re-admission.
    pub last_readmitted_s: Option<f64>,
    /// Seconds from the new node's first accepted connection to the last re-admission: the
    /// storm as the node sees it (the clients' reconnect backoff included).
    pub readmit_after_listening_s: Option<f64>,
    /// Median of the re-admissions, seconds after the new node listened.
    pub p50_after_listening_s: Option<f64>,
    /// The node's side of each re-admission, without the device's backoff: from the start of
    /// the successful attempt (or the node's listening, if later) to the SUBACK; median, ms.
    pub admit_p50_ms: f64,
    /// The same, 99th percentile.
    pub admit_p99_ms: f64,
    /// The same, slowest.
    pub admit_max_ms: f64,
    /// Of admission, the TCP connect (the wait for the node's accept, SYN retransmits after
    /// a full listen backlog included); median, ms.
    pub tcp_p50_ms: f64,
    /// The same, 99th percentile.
    pub tcp_p99_ms: f64,
    /// Of admission, the protocol: from the established connection to the SUBACK (CONNECT,
    /// login, CONNACK, SUBSCRIBE); median, ms.
    pub handshake_p50_ms: f64,
    /// The same, 99th percentile.
    pub handshake_p99_ms: f64,
}

/// Restarts the node with `--restart-cmd` while every recipient is connected, and waits
/// until each one has connected and subscribed again.
pub(super) async fn storm(
    args: &PushArgs,
    loads: &mut Loads,
    tally: &mut Tally,
) -> Result<StormReport, String> {
    let n = args.recipients;
    let cmd = args.restart_cmd.as_deref().unwrap_or_default();
    let t0 = now_us();
    tally.storm_from = Some(t0);
    eprintln!("# storm: restarting the node with `{cmd}`");
    let out = Command::new("sh")
        .args(["-c", cmd])
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .await
        .map_err(|e| format!("--restart-cmd: {e}"))?;
    if !out.status.success() {
        return Err(format!("--restart-cmd exited with {}", out.status));
    }
    let restart_cmd_s = (now_us() - t0) as f64 / 1e6;
    let until = Instant::now() + Duration::from_secs(args.storm_deadline);
    // The new node listens once a connection is accepted (the old one is gone: the command
    // waited for it). Reports go on arriving meanwhile.
    let addr = args.target.mqtt.clone().unwrap_or_default();
    let probe = tokio::spawn(async move {
        loop {
            if tokio::net::TcpStream::connect(&addr).await.is_ok() {
                return now_us();
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    while tally.readmitted < n {
        match loads.next(until).await {
            Some((_, Some(r))) => tally.take(r)?,
            Some((p, None)) => return Err(format!("load process {p} ended during the storm")),
            None => break,
        }
    }
    let listening = if probe.is_finished() {
        probe.await.ok()
    } else {
        probe.abort();
        None
    };
    let mut after = Latencies::with_capacity(tally.readmitted);
    let mut admit = Latencies::with_capacity(tally.readmitted);
    let (mut tcp, mut handshake) = (admit.clone(), admit.clone());
    let last = tally.up.iter().copied().max().filter(|&t| t > 0);
    for (&u, &(tried, connected)) in tally.up.iter().zip(&tally.up_tried).filter(|(&u, _)| u > 0) {
        let from = listening.map_or(tried, |l| tried.max(l));
        admit.push_nanos(u.saturating_sub(from) * 1000);
        tcp.push_nanos(connected.saturating_sub(from) * 1000);
        handshake.push_nanos(u.saturating_sub(connected.max(from)) * 1000);
        if let Some(l) = listening {
            after.push_nanos(u.saturating_sub(l) * 1000);
        }
    }
    let secs = |a: u64, b: u64| a.saturating_sub(b) as f64 / 1e6;
    Ok(StormReport {
        recipients: n,
        readmitted: tally.readmitted,
        restart_cmd_s,
        listening_s: listening.map(|l| secs(l, t0)),
        last_readmitted_s: last.map(|l| secs(l, t0)),
        readmit_after_listening_s: listening.zip(last).map(|(l, u)| secs(u, l)),
        p50_after_listening_s: listening.map(|_| after.ms(0.5) / 1000.0),
        admit_p50_ms: admit.ms(0.5),
        admit_p99_ms: admit.ms(0.99),
        admit_max_ms: admit.ms(1.0),
        tcp_p50_ms: tcp.ms(0.5),
        tcp_p99_ms: tcp.ms(0.99),
        handshake_p50_ms: handshake.ms(0.5),
        handshake_p99_ms: handshake.ms(0.99),
    })
}
