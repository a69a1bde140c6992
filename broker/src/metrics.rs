//! Counters of the broker front-end, rendered in the Prometheus text format.
//!
//! Every limit the front-end enforces increments a counter here when it is hit, so an operator
//! can alert on brute force, ACL probing, floods and slow consumers without reading logs.

use std::fmt::Write;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};

/// The front-end's counters; shared by all connections of one node.
#[derive(Debug, Default)]
pub struct BrokerMetrics {
    /// Connections currently open (after the transport handshake).
    pub connections_open: AtomicI64,
    /// Of those, served on the dispatcher's thread (child nodes, credentials-file clients).
    pub connections_on_dispatcher: AtomicI64,
    /// Connections accepted since start.
    pub connections_total: AtomicU64,
    /// Logins refused for a bad name, password or certificate.
    pub login_failures: AtomicU64,
    /// Login attempts that had to wait because of earlier failures.
    pub login_throttled: AtomicU64,
    /// Connections refused because the identity already had its maximum.
    pub identity_connection_limit: AtomicU64,
    /// Publishes refused by the ACL.
    pub acl_publish_denied: AtomicU64,
    /// Subscription filters refused by the ACL.
    pub acl_subscribe_denied: AtomicU64,
    /// Will messages removed at CONNECT because their topic was not the client's own outbox.
    pub wills_removed: AtomicU64,
    /// Publishes refused by the per-identity rate limit.
    pub rate_limited: AtomicU64,
    /// Connections closed because they did not read what was sent to them in time.
    pub slow_consumers: AtomicU64,
    /// Publishes not handed to a watcher's subscription (an admin's tap) because its backlog
    /// or unacknowledged window was full.
    pub taps_dropped: AtomicU64,
    /// Connections closed for malformed MQTT (including garbage before CONNECT).
    pub malformed: AtomicU64,
    /// Connections closed for a packet larger than the limit.
    pub oversized: AtomicU64,
    /// Connections that never completed CONNECT (or the TLS/WebSocket handshake) in time.
    pub handshake_timeouts: AtomicU64,
    /// TLS handshakes that failed (plain text on a TLS port, unknown CA, ...).
    pub tls_failures: AtomicU64,
    /// Device-token logins by result, over MQTT and HTTP.
    pub token_logins: TokenLogins,
}

/// `medlink_token_logins_total{result=…}`: device-token logins, one counter per result
/// (refused tokens also count in `medlink_login_failures_total`).
#[derive(Debug, Default)]
pub struct TokenLogins {
    /// Verified and admitted.
    pub ok: AtomicU64,
    /// Past `exp` (plus the leeway).
    pub expired: AtomicU64,
    /// The signature did not verify, or the `alg` was not the key's.
    pub bad_signature: AtomicU64,
    /// No configured key has the token's `kid`.
    pub unknown_kid: AtomicU64,
    /// Signed correctly, but claiming what the key or this node does not allow.
    pub refused: AtomicU64,
}

impl TokenLogins {
    /// Counts one login whose result label is `result` (see `token::Refusal::label`).
    pub fn count(&self, result: &str) {
        let counter = match result {
            "ok" => &self.ok,
            "expired" => &self.expired,
            "bad_signature" => &self.bad_signature,
            "unknown_kid" => &self.unknown_kid,
            _ => &self.refused,
        };
        bump(counter);
    }

    fn render(&self, out: &mut String) {
        let name = "medlink_token_logins_total";
        let _ = writeln!(
            out,
            "# HELP {name} device-token logins by result\n# TYPE {name} counter"
        );
        for (result, v) in [
            ("ok", &self.ok),
            ("expired", &self.expired),
            ("bad_signature", &self.bad_signature),
            ("unknown_kid", &self.unknown_kid),
            ("refused", &self.refused),
        ] {
            let _ = writeln!(
                out,
                "{name}{{result=\"{result}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
    }
}

/// Adds one to a counter.
pub fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl BrokerMetrics {
    /// Appends the counters to `out` in the Prometheus text exposition format.
    pub fn render(&self, out: &mut String) {
        let open = self.connections_open.load(Ordering::Relaxed).max(0) as u64;
        let on_dispatcher = self
            .connections_on_dispatcher
            .load(Ordering::Relaxed)
            .max(0) as u64;
        let gauge = [
            (
                "medlink_connections_open",
                "MQTT connections currently open",
                open,
            ),
            (
                "medlink_connections_on_dispatcher",
                "MQTT connections served on the dispatcher's thread (child nodes, clients of the credentials file)",
                on_dispatcher,
            ),
        ];
        let counters = [
            (
                "medlink_connections_total",
                "MQTT connections accepted",
                &self.connections_total,
            ),
            (
                "medlink_login_failures_total",
                "logins refused (bad name, password or certificate)",
                &self.login_failures,
            ),
            (
                "medlink_login_throttled_total",
                "login attempts delayed after earlier failures",
                &self.login_throttled,
            ),
            (
                "medlink_identity_connection_limit_total",
                "connections refused: identity at its connection limit",
                &self.identity_connection_limit,
            ),
            (
                "medlink_acl_publish_denied_total",
                "publishes refused by the ACL",
                &self.acl_publish_denied,
            ),
            (
                "medlink_acl_subscribe_denied_total",
                "subscription filters refused by the ACL",
                &self.acl_subscribe_denied,
            ),
            (
                "medlink_wills_removed_total",
                "will messages removed (topic outside the client's outbox)",
                &self.wills_removed,
            ),
            (
                "medlink_rate_limited_total",
                "publishes refused by the per-identity rate limit",
                &self.rate_limited,
            ),
            (
                "medlink_slow_consumers_total",
                "connections closed for not reading in time",
                &self.slow_consumers,
            ),
            (
                "medlink_taps_dropped_total",
                "publishes not handed to an admin's watching subscription because it fell behind",
                &self.taps_dropped,
            ),
            (
                "medlink_malformed_total",
                "connections closed for malformed MQTT",
                &self.malformed,
            ),
            (
                "medlink_oversized_total",
                "connections closed for a packet over the size limit",
                &self.oversized,
            ),
            (
                "medlink_handshake_timeouts_total",
                "connections that did not complete the handshake in time",
                &self.handshake_timeouts,
            ),
            (
                "medlink_tls_failures_total",
                "failed TLS handshakes",
                &self.tls_failures,
            ),
        ];
        for (name, help, value) in gauge {
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
            );
        }
        for (name, help, value) in counters {
            let v = value.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
            );
        }
        self.token_logins.render(out);
    }
}
