//! The connection task: one per client, alive as long as a client handle is. It asks the node
//! how to connect (for an `http(s)://` URL), runs one transport session at a time (`mqtt.rs`
//! or `http.rs`), and when a session ends reconnects by itself with capped, jittered backoff.
//! Everything a session needs and must survive it (the send queue, the receive cursors, the
//! hand-over with its de-duplication) lives in [`Core`], so a new session — on the same
//! transport or another — continues where the last one stopped.

use std::time::{Duration, Instant};

use medlink_wire::Backoff;
use tokio::sync::watch;
use tracing::warn;

use crate::session::{Core, Ended};
use crate::{http, mqtt, Error, Transport};

/// Where the application pointed the client.
#[derive(Debug, Clone)]
pub(crate) enum Endpoint {
    /// `mqtt://` or `mqtts://`: MQTT, no question asked.
    Mqtt(String),
    /// `http://` or `https://`: the node's HTTP API, which decides.
    Http(String),
}

impl Endpoint {
    pub(crate) fn parse(url: &str) -> Result<Endpoint, Error> {
        let parsed =
            url::Url::parse(url).map_err(|e| Error::Config(format!("url '{url}': {e}")))?;
        if parsed.host_str().is_none() {
            return Err(Error::Config(format!("url '{url}' has no host")));
        }
        match parsed.scheme() {
            "mqtt" | "mqtts" | "tcp" | "ssl" => Ok(Endpoint::Mqtt(url.to_string())),
            "http" | "https" => Ok(Endpoint::Http(url.trim_end_matches('/').to_string())),
            other => Err(Error::Config(format!(
                "url '{url}': scheme '{other}' is not mqtt, mqtts, http or https"
            ))),
        }
    }

    /// Whether connecting needs a CA.
    pub(crate) fn needs_tls(&self) -> bool {
        match self {
            Endpoint::Mqtt(u) => u.starts_with("mqtts") || u.starts_with("ssl"),
            Endpoint::Http(u) => u.starts_with("https"),
        }
    }
}

/// Whether an MQTT URL the node advertised is TLS.
fn needs_tls(url: &str) -> bool {
    ["mqtts:", "ssl:", "wss:"]
        .iter()
        .any(|s| url.starts_with(s))
}

/// Reconnect backoff: 100 ms doubling to 5 s, plus up to 50 % at random so clients cut off
/// together do not all come back in the same instant.
const BACKOFF: Backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(5), 50);

/// A session that lasted this long resets the backoff.
const STABLE: Duration = Duration::from_secs(2);
/// After this many failed MQTT attempts at the URL the node advertised, use its HTTP API.
const MQTT_TRIES_BEFORE_HTTP: u32 = 2;
enum Plan {
    Mqtt(String, Transport),
    Http {
        base: String,
        /// On a fallback: the MQTT URL to go back to once it answers.
        probe: Option<String>,
    },
}

/// The task.
pub(crate) async fn run(mut core: Core, endpoint: Endpoint, done: watch::Sender<bool>) {
    let mut backoff = BACKOFF;
    let mut mqtt_failures = 0u32;
    let http_client = match &endpoint {
        Endpoint::Http(_) => match http::client(&core) {
            Ok(c) => Some(c),
            Err(e) => {
                fail_first(&mut core, e);
                done.send_replace(true);
                return;
            }
        },
        Endpoint::Mqtt(_) => None,
    };
    loop {
        let plan = match (&endpoint, &http_client) {
            (Endpoint::Http(base), Some(hc)) => match http::ask_transport(hc, &core, base).await {
                Ok((Transport::Http, _)) => Plan::Http {
                    base: base.clone(),
                    probe: None,
                },
                Ok((t, Some(url)))
                    if mqtt_failures < MQTT_TRIES_BEFORE_HTTP
                        && (core.tls.is_some() || !needs_tls(&url)) =>
                {
                    Plan::Mqtt(url, t)
                }
                Ok((t, url)) => {
                    let url = url.filter(|u| core.tls.is_some() || !needs_tls(u));
                    if url.is_none() {
                        warn!(transport = ?t, "the node chose MQTT but advertises no URL for it that this client can use (a TLS URL needs Options::ca); using HTTP");
                    } else {
                        warn!(transport = ?t, "MQTT unreachable; using HTTP for now");
                    }
                    mqtt_failures = 0;
                    Plan::Http {
                        base: base.clone(),
                        probe: url,
                    }
                }
                Err(Ended::Refused(e)) => {
                    if !refused(&mut core, e) {
                        break;
                    }
                    if !pause(&mut core, backoff.delay()).await {
                        break;
                    }
                    continue;
                }
                Err(other) => {
                    warn!(reason = ?other, "cannot ask the node for its transport");
                    if !pause(&mut core, backoff.delay()).await {
                        break;
                    }
                    continue;
                }
            },
            (Endpoint::Mqtt(url), _) => Plan::Mqtt(url.clone(), Transport::Mqtt),
            (Endpoint::Http(_), None) => unreachable!("an HTTP endpoint always has its client"),
        };
        let on_mqtt = matches!(plan, Plan::Mqtt(..));
        let started = Instant::now();
        let ended = match plan {
            Plan::Mqtt(url, t) => mqtt::session(&mut core, &url, t).await,
            Plan::Http { base, probe } => match &http_client {
                Some(hc) => http::session(&mut core, hc, &base, probe.as_deref()).await,
                None => unreachable!("an HTTP plan comes from an HTTP endpoint"),
            },
        };
        core.link.send_replace(None);
        match ended {
            Ended::Closed => break,
            Ended::Lost { connected, reason } => {
                warn!(%reason, "connection to the node lost; reconnecting");
                if connected {
                    // A node that accepts and drops at once must not be hammered.
                    if started.elapsed() >= STABLE {
                        backoff.reset();
                    }
                    mqtt_failures = 0;
                } else if on_mqtt {
                    mqtt_failures += 1;
                }
            }
            Ended::Refused(e) => {
                if !refused(&mut core, e) {
                    break;
                }
            }
        }
        if !pause(&mut core, backoff.delay()).await {
            break;
        }
    }
    core.link.send_replace(None);
    // Dropping the core closes the outbox file before `done` says so.
    drop(core);
    done.send_replace(true);
}

/// The node refused us. Before the first session that is `connect`'s error; afterwards it is
/// logged and retried (a password can be fixed at the node). False: stop.
fn refused(core: &mut Core, e: Error) -> bool {
    if let Some(f) = core.first.take() {
        let _ = f.send(Err(e));
        return false;
    }
    warn!(error = %e, "the node refused this client; retrying");
    true
}

fn fail_first(core: &mut Core, e: Error) {
    if let Some(f) = core.first.take() {
        let _ = f.send(Err(e));
    }
}

/// Waits `d`, still taking sends; false when the client is closed.
async fn pause(core: &mut Core, d: Duration) -> bool {
    let sleep = tokio::time::sleep(d);
    tokio::pin!(sleep);
    let mut stop = core.stop.clone();
    loop {
        tokio::select! {
            _ = &mut sleep => return true,
            p = core.submits.recv() => if !core.take(p) { return false },
            _ = Core::stopped(&mut stop) => return false,
        }
    }
}
