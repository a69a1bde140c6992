//! The node's Prometheus endpoint: `GET /metrics` (front-end counters and node counters in the
//! text exposition format) and `GET /healthz`.
//!
//! It listens on its own address (`[metrics] addr`), normally loopback or a management
//! network, because scrapers and MQTT clients have different owners and firewalls.

use std::fmt::Write;
use std::net::SocketAddr;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use medlink_broker::BrokerMetrics;
use tokio::sync::watch;
use tracing::info;

use crate::http::HttpMetrics;
use crate::stats::Stats;

/// Where the node's metrics come from.
#[derive(Clone)]
pub struct Sources {
    /// The MQTT front-end.
    pub broker: Arc<BrokerMetrics>,
    /// The dispatcher.
    pub stats: Stats,
    /// The HTTP API, if served.
    pub http: Option<Arc<HttpMetrics>>,
    /// The journal's database file (its `-wal`, `-shm` and `-custody` files lie beside it).
    pub journal: std::path::PathBuf,
}

/// Renders every metric of the node.
pub fn render(sources: &Sources) -> String {
    let mut out = String::with_capacity(4096);
    sources.broker.render(&mut out);
    if let Some(http) = &sources.http {
        http.render(&mut out);
    }
    let s = sources.stats.snapshot();
    let counters = [
        (
            "medlink_commands_accepted_total",
            "commands accepted from this node's clients",
            s.accepted,
        ),
        (
            "medlink_commands_rejected_total",
            "submissions refused (invalid, forged sender, rate limit)",
            s.rejected,
        ),
        (
            "medlink_commands_refused_total",
            "envelopes dropped as expired or unroutable",
            s.refused,
        ),
        (
            "medlink_service_reassigned_total",
            "service-group commands moved to another member after no acknowledgement",
            s.reassigned,
        ),
    ];
    for (name, help, v) in counters {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    }
    let name = "medlink_parent_link_http";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the link to the parent runs over HTTP (fallback or HTTP-only)\n# TYPE {name} gauge\n{name} {}",
        u8::from(s.parent_http)
    );
    let name = "medlink_parent_http_links_total";
    let _ = writeln!(
        out,
        "# HELP {name} times the link to the parent came up over HTTP\n# TYPE {name} counter\n{name} {}",
        s.parent_http_links
    );
    let name = "medlink_parent_link_stalls_total";
    let _ = writeln!(
        out,
        "# HELP {name} times the link to the parent went silent for dead_after and was redialled\n# TYPE {name} counter\n{name} {}",
        s.parent_stalls
    );
    let name = "medlink_journal_bytes";
    let _ = writeln!(
        out,
        "# HELP {name} bytes of the custody journal on disk, WAL included\n# TYPE {name} gauge\n{name} {}",
        crate::datadir::journal_bytes(&sources.journal)
    );
    if let Some(free) = crate::datadir::disk_free_bytes(&sources.journal) {
        let name = "medlink_disk_free_bytes";
        let _ = writeln!(
            out,
            "# HELP {name} bytes free on the file system that holds the journal\n# TYPE {name} gauge\n{name} {free}"
        );
    }
    let name = "medlink_parent_link_up";
    let _ = writeln!(
        out,
        "# HELP {name} 1 when the link to the parent is up\n# TYPE {name} gauge\n{name} {}",
        u8::from(s.parent_up)
    );
    render_operations(&sources.stats, &mut out);
    out
}

/// The `# HELP` and `# TYPE` lines of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value in the exposition format's quoting.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The series an on-call person alerts on: links, queues, deliveries, latency, commits.
fn render_operations(stats: &Stats, out: &mut String) {
    let now = crate::envelope::now_ms();
    family(
        out,
        "medlink_has_parent",
        "gauge",
        "1 on a node configured with a parent (0 at the root)",
    );
    let _ = writeln!(out, "medlink_has_parent {}", u8::from(stats.has_parent()));
    if let Some(rtt) = stats.rtt() {
        family(
            out,
            "medlink_link_rtt_seconds",
            "gauge",
            "round trip of the last heartbeat on the link to the parent (ms resolution)",
        );
        let _ = writeln!(out, "medlink_link_rtt_seconds {}", rtt.as_secs_f64());
    }
    family(
        out,
        "medlink_journal_commit_failures_total",
        "counter",
        "group commits of the custody journal that failed (disk full, I/O error)",
    );
    let _ = writeln!(
        out,
        "medlink_journal_commit_failures_total {}",
        stats.commit_failures()
    );

    family(
        out,
        "medlink_deadletters_total",
        "counter",
        "commands that ended failed, expired or rejected here and were kept as dead letters",
    );
    for (reason, n) in stats.dead_letter_counts() {
        let _ = writeln!(out, "medlink_deadletters_total{{reason=\"{reason}\"}} {n}");
    }

    let children: Vec<_> = stats.children().collect();
    if !children.is_empty() {
        family(
            out,
            "medlink_child_link_up",
            "gauge",
            "1 while the child's link is up, by transport (mqtt, http; none when down)",
        );
        for (child, gauge) in &children {
            let (up, transport) = match gauge.transport() {
                Some(t) => (1, t),
                None => (0, "none"),
            };
            let _ = writeln!(
                out,
                "medlink_child_link_up{{child=\"{}\",transport=\"{transport}\"}} {up}",
                label(child)
            );
        }
        family(
            out,
            "medlink_child_last_heard_seconds",
            "gauge",
            "seconds since anything was heard from the child (since this node started, if never)",
        );
        for (child, gauge) in &children {
            let heard = gauge.last_heard_ms().unwrap_or(now);
            let _ = writeln!(
                out,
                "medlink_child_last_heard_seconds{{child=\"{}\"}} {}",
                label(child),
                now.saturating_sub(heard) as f64 / 1000.0
            );
        }
    }

    let queues = stats.queues();
    family(
        out,
        "medlink_queue_depth",
        "gauge",
        "commands waiting per destination group and lane (clients aggregated; see the console for each)",
    );
    for ((group, lane), gauge) in &queues {
        let _ = writeln!(
            out,
            "medlink_queue_depth{{dest=\"{}\",lane=\"{lane}\"}} {}",
            label(&group.to_string()),
            gauge.depth
        );
    }
    family(
        out,
        "medlink_queue_oldest_age_seconds",
        "gauge",
        "age since created_at of the command first in line (0 when empty)",
    );
    for ((group, lane), gauge) in &queues {
        let age = gauge
            .oldest_created
            .map_or(0.0, |c| now.saturating_sub(c) as f64 / 1000.0);
        let _ = writeln!(
            out,
            "medlink_queue_oldest_age_seconds{{dest=\"{}\",lane=\"{lane}\"}} {age}",
            label(&group.to_string())
        );
    }

    family(
        out,
        "medlink_commands_delivered_total",
        "counter",
        "commands taken off this node: by a local client (mqtt, http) or the next tier (link)",
    );
    for (by, n) in stats.delivered_counts() {
        let _ = writeln!(
            out,
            "medlink_commands_delivered_total{{transport=\"{}\"}} {n}",
            by.as_str()
        );
    }

    let name = "medlink_end_to_end_latency_seconds";
    family(
        out,
        name,
        "histogram",
        "from a command's created_at to its delivery to the recipient, at the recipient's node",
    );
    let (buckets, sum, count) = stats.latency().read();
    for (le, n) in crate::stats::LATENCY_BUCKETS.iter().zip(&buckets) {
        let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {n}");
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
    let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
}

/// Serves the endpoint on `listener` (over HTTPS with `tls`) until `shutdown` turns true;
/// returns the bound address.
pub fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: crate::http::serve::HttpLimits,
    sources: Sources,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route(
            "/metrics",
            get(move || {
                let body = render(&sources);
                async move {
                    (
                        [("content-type", "text/plain; version=0.0.4; charset=utf-8")],
                        body,
                    )
                }
            }),
        )
        .route("/healthz", get(|| async { "ok\n" }));
    info!(addr = %bound, https = tls.is_some(), "metrics endpoint listening");
    let task = tokio::spawn(crate::http::serve::serve(
        listener, app, None, tls, limits, shutdown,
    ));
    Ok((bound, task))
}
