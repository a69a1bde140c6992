//! The coordinator of `medlink-bench push`: spawns the load processes, waits until every
//! recipient is connected, measures the node's memory, pushes one command to each recipient,
//! collects the arrivals and checks them, and (with `--storm`) restarts the node and times the
//! re-admissions.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::loads::{spawn_loads, Loads, Tally};
use super::proto::{self, now_us, Report};
use super::send::{polls_open, send_all};
use super::storm::{storm, StormReport};
use super::{Broker, PushArgs, Transport};
use crate::latency::Latencies;

/// What one run measured: printed as one JSON line (the field names are what `bench/push.sh`
/// reads) and a `#` summary.
#[derive(Serialize, Debug, Clone)]
pub struct PushReport {
    /// `--label`.
    pub label: String,
    /// `medlink` or `mosquitto`.
    pub broker: &'static str,
    /// `mqtt`, `sse` or `longpoll`.
    pub transport: &'static str,
    /// Recipients connected.
    pub recipients: usize,
    /// Load processes.
    pub procs: usize,
    /// Commands per POST (mosquitto: publishes per timing group).
    pub batch: usize,
    /// Seconds from spawning the load processes until every recipient was ready.
    pub connect_s: f64,
    /// The node's RSS before any recipient connected, kB.
    pub rss_before_kb: Option<u64>,
    /// With every recipient connected and idle, once it settled, kB.
    pub rss_idle_kb: Option<u64>,
    /// After the push, kB.
    pub rss_after_kb: Option<u64>,
    /// (idle − before) / recipients, bytes.
    pub bytes_per_conn: Option<f64>,
    /// Whether commands were sent (not with `--no-push`).
    pub pushed: bool,
    /// Seconds the sender spent posting (or publishing) every command.
    pub send_s: f64,
    /// Seconds from the first POST until the last recipient had its command (absent when
    /// some never did).
    pub time_to_last_s: Option<f64>,
    /// Median delivery latency, from the POST of a command's batch to its arrival, ms.
    pub p50_ms: f64,
    /// 99th percentile of the same.
    pub p99_ms: f64,
    /// Slowest of the same.
    pub max_ms: f64,
    /// Recipients that got their command.
    pub delivered: usize,
    /// Recipients that did not get it before `--deadline`.
    pub lost: usize,
    /// Deliveries of a command a recipient already had.
    pub duplicated: usize,
    /// Deliveries of this run's command to the wrong recipient, or with the wrong id.
    pub misrouted: usize,
    /// Deliveries of commands from an earlier run (left in the journal of a node that was not
    /// started afresh): reported, not a failure of this run.
    pub stale: usize,
    /// The run stopped waiting at `--deadline`.
    pub deadline_hit: bool,
    /// Recipient connections lost during the run (outside the storm).
    pub disconnects: u64,
    /// CPU seconds the load processes used in all.
    pub load_cpu_s: f64,
    /// The load processes' RSS at the end, kB in all.
    pub load_rss_kb: u64,
    /// The reconnect storm, with `--storm`.
    pub storm: Option<StormReport>,
}

impl PushReport {
    /// Everything arrived, once each, and at the right recipient.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicated == 0 && self.misrouted == 0
    }

    /// The human summary line.
    pub fn summary(&self) -> String {
        let mb = |kb: Option<u64>| kb.map_or("?".into(), |k| format!("{:.0}", k as f64 / 1024.0));
        let mut s = format!(
            "# {} {} {}: {} recipients in {} procs, connected in {:.1} s; RSS {} -> {} MB idle ({} per connection), {} MB after; ",
            self.broker,
            self.transport,
            self.label,
            self.recipients,
            self.procs,
            self.connect_s,
            mb(self.rss_before_kb),
            mb(self.rss_idle_kb),
            self.bytes_per_conn
                .map_or("?".into(), |b| format!("{:.1} KB", b / 1000.0)),
            mb(self.rss_after_kb),
        );
        match self.time_to_last_s {
            Some(t) => s += &format!("last delivery {t:.3} s after the first send"),
            None if !self.pushed => s += "nothing sent (--no-push)",
            None => s += "NOT all delivered by the deadline",
        }
        s += &format!(
            " (p50 {:.1} ms, p99 {:.1} ms); delivered {}, lost {}, duplicated {}, misrouted {}, stale {}, disconnects {}",
            self.p50_ms,
            self.p99_ms,
            self.delivered,
            self.lost,
            self.duplicated,
            self.misrouted,
            self.stale,
            self.disconnects
        );
        if let Some(st) = &self.storm {
            s += &format!(
                "; storm: {}/{} readmitted, last {} s after the new node listened (admission p50 {:.0} ms, p99 {:.0} ms)",
                st.readmitted,
                st.recipients,
                st.readmit_after_listening_s
                    .map_or("?".into(), |t| format!("{t:.2}")),
                st.admit_p50_ms,
                st.admit_p99_ms,
            );
        }
        s
    }
}

fn rss(pid: Option<u32>) -> Option<u64> {
    pid.and_then(|p| proto::rss_kb(&p.to_string()))
}

/// Samples the node's RSS every 500 ms until two samples in a row agree within 0.5 % (or
/// 256 kB), at most `settle` seconds; returns the last.
async fn settled_rss(pid: Option<u32>, settle: u64) -> Option<u64> {
    let until = Instant::now() + Duration::from_secs(settle);
    let mut last = rss(pid)?;
    let mut calm = 0;
    while Instant::now() < until && calm < 2 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let now = rss(pid)?;
        let close = now.abs_diff(last) <= (last / 200).max(256);
        calm = if close { calm + 1 } else { 0 };
        last = now;
    }
    Some(last)
}

/// Runs the bench: connect, measure, push, check, optionally storm.
pub async fn run(args: &PushArgs) -> Result<PushReport, String> {
    args.validate()?;
    proto::raise_nofile();
    let n = args.recipients;
    // A run's nonce: commands of an earlier run still queued somewhere count as stale.
    let run = format!("{:x}", now_us() % (1 << 40));
    let mut tally = Tally::new(n, run.clone(), args.target.broker == Broker::Medlink);
    // Settled, as the idle figure is: a node that has just parsed a large credentials file
    // gives memory back for a few seconds after it listens.
    let rss_before = settled_rss(args.node_pid, args.settle).await;
    let spawned = Instant::now();
    let mut loads = spawn_loads(args, &run)?;
    let result = measure(args, &run, &mut loads, &mut tally, spawned, rss_before).await;
    loads.stop(&mut tally).await;
    let (mut report, storm_ok) = result?;
    report.load_cpu_s = tally.done.0;
    report.load_rss_kb = tally.done.1;
    if !storm_ok {
        return Err(format!("{}; the storm did not complete", report.summary()));
    }
    Ok(report)
}

/// Everything between spawning the load processes and stopping them.
async fn measure(
    args: &PushArgs,
    run: &str,
    loads: &mut Loads,
    tally: &mut Tally,
    spawned: Instant,
    rss_before: Option<u64>,
) -> Result<(PushReport, bool), String> {
    let n = args.recipients;
    let until = spawned + Duration::from_secs(args.connect_deadline);
    let mut ready = 0;
    while ready < args.procs {
        match loads.next(until).await {
            Some((_, Some(Report::Ready { .. }))) => ready += 1,
            Some((_, Some(r))) => tally.take(r)?,
            Some((p, None)) => return Err(format!("load process {p} ended before it was ready")),
            None => {
                return Err(format!(
                    "not every recipient connected within --connect-deadline {} s",
                    args.connect_deadline
                ))
            }
        }
    }
    let connect_s = spawned.elapsed().as_secs_f64();
    eprintln!("# {n} recipients ready in {connect_s:.1} s");
    if let (Some(m), Transport::Sse | Transport::Longpoll) = (&args.metrics, args.target.transport)
    {
        // An HTTP recipient is ready once its request is written; the node holds it open a
        // moment later.
        let until = Instant::now() + Duration::from_secs(60);
        while polls_open(m).await.unwrap_or(0) < n as u64 && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    let rss_idle = settled_rss(args.node_pid, args.settle).await;
    let sent = match args.no_push {
        true => None,
        false => Some(send_all(args, run).await?),
    };
    let started = sent.as_ref().map_or(&[][..], |s| &s.started[..]);
    let send_s = started
        .first()
        .map_or(0.0, |&t| (now_us() - t) as f64 / 1e6);
    let deadline = Instant::now()
        + Duration::from_secs(args.deadline).saturating_sub(Duration::from_secs_f64(send_s));
    let mut grace_until = None;
    while sent.is_some() {
        let until = grace_until.unwrap_or(deadline).min(deadline);
        match loads.next(until).await {
            Some((_, Some(r))) => tally.take(r)?,
            Some((p, None)) => return Err(format!("load process {p} ended during the run")),
            None => break,
        }
        if tally.delivered == n && grace_until.is_none() {
            grace_until = Some(Instant::now() + Duration::from_secs_f64(args.grace));
        }
    }
    let rss_after = rss(args.node_pid);
    let mut lat = Latencies::with_capacity(tally.delivered);
    let mut last = 0;
    for (i, &at) in tally.first.iter().enumerate() {
        if at > 0 {
            let from = started[i / args.batch];
            lat.push_nanos(at.saturating_sub(from) * 1000);
            last = last.max(at);
        }
    }
    let bytes_per_conn = match (rss_before, rss_idle) {
        (Some(b), Some(i)) => Some((i as f64 - b as f64) * 1024.0 / n as f64),
        _ => None,
    };
    let mut report = PushReport {
        label: args.label.clone(),
        broker: match args.target.broker {
            Broker::Medlink => "medlink",
            Broker::Mosquitto => "mosquitto",
        },
        transport: args.target.transport.name(),
        recipients: n,
        procs: args.procs,
        batch: args.batch,
        connect_s,
        rss_before_kb: rss_before,
        rss_idle_kb: rss_idle,
        rss_after_kb: rss_after,
        bytes_per_conn,
        send_s,
        pushed: sent.is_some(),
        time_to_last_s: (sent.is_some() && tally.delivered == n)
            .then(|| last.saturating_sub(started[0]) as f64 / 1e6),
        p50_ms: lat.ms(0.5),
        p99_ms: lat.ms(0.99),
        max_ms: lat.ms(1.0),
        delivered: tally.delivered,
        lost: if sent.is_some() {
            n - tally.delivered
        } else {
            0
        },
        duplicated: tally.duplicated,
        misrouted: tally.misrouted,
        stale: tally.stale,
        deadline_hit: sent.is_some() && tally.delivered < n,
        disconnects: tally.disconnects,
        load_cpu_s: 0.0,
        load_rss_kb: 0,
        storm: None,
    };
    if !args.storm {
        return Ok((report, true));
    }
    let storm = storm(args, loads, tally).await?;
    let ok = storm.readmitted == n;
    report.storm = Some(storm);
    Ok((report, ok))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tally(n: usize) -> Tally {
        Tally::new(n, "r".into(), true)
    }

    #[test]
    fn each_delivery_is_counted_once_at_its_recipient() {
        let mut t = tally(4);
        let a = vec![
            (0, 0, 10, "pr-0".to_string()),
            (1, 1, 11, "pr-1".into()),
            (1, 1, 12, "pr-1".into()),  // a repeat
            (2, 3, 13, "pr-3".into()),  // recipient 3's command at recipient 2
            (2, 2, 14, "other".into()), // the right number under another id
            (3, -1, 15, "pq-3".into()), // an earlier run's
        ];
        t.take(Report::Arrivals { a }).unwrap();
        assert_eq!(
            (t.delivered, t.duplicated, t.misrouted, t.stale),
            (2, 1, 2, 1)
        );
        assert_eq!(t.first[..2], [10, 11], "the first arrival is the one timed");
        assert!(t.take(Report::Fatal { error: "x".into() }).is_err());
    }

    #[test]
    fn the_storm_counts_readmissions_after_the_restart_only() {
        let mut t = tally(2);
        t.take(Report::Up {
            a: vec![(0, 3, 4, 5)],
        })
        .unwrap();
        assert_eq!(t.readmitted, 0, "before the storm");
        t.storm_from = Some(10);
        t.take(Report::Up {
            a: vec![(0, 7, 8, 9), (1, 10, 11, 12), (1, 11, 12, 13)],
        })
        .unwrap();
        assert_eq!((t.readmitted, t.up[1], t.up_tried[1]), (1, 12, (10, 11)));
    }
}
