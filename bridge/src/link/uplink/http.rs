//! The child's link to its parent over HTTP(S): frames go up by POST (answered after the
//! parent committed them), frames come down by long-poll. Used when a parent address is
//! `https://…` (or `http://…`), either because the site passes only HTTP or as the fallback
//! when the MQTT port is unreachable; while on the fallback, the preferred MQTT address is
//! probed every few seconds and the link returns to it as soon as it answers.
//!
//! reqwest honours `HTTPS_PROXY`/`HTTP_PROXY`/`NO_PROXY` from the environment, so the link
//! works through a site's proxy as it is.

use std::time::Duration;

use bytes::Bytes;
use medlink_wire::{Transport, TransportAnswer};
use serde::Deserialize;
use serde_json::value::RawValue;
use tracing::{debug, info};

use medlink_wire::http::POLL_WAIT_S;

use super::health::Cause;
use super::parent::{Channels, Ended, ParentAddr, ParentEvent, UplinkConfig};

/// How often the preferred (MQTT) address is probed while on HTTP.
const PROBE_EVERY: Duration = Duration::from_secs(5);

#[derive(Deserialize)]
struct Down<'a> {
    #[serde(borrow)]
    frames: Vec<&'a RawValue>,
}

fn client(cfg: &UplinkConfig) -> Result<reqwest::Client, Cause> {
    let tls = match &cfg.tls {
        Some(c) => (**c).clone(),
        None => medlink_broker::tls::client_config_trusting_nothing(),
    };
    medlink_wire::http::client(tls, Duration::from_secs(5))
        .map_err(|e| Cause::Other(format!("cannot build the HTTP client: {e}")))
}

fn authed(req: reqwest::RequestBuilder, cfg: &UplinkConfig) -> reqwest::RequestBuilder {
    match &cfg.password {
        Some(pw) => req.basic_auth(&cfg.node_id, Some(pw)),
        None => req,
    }
}

fn refused(status: reqwest::StatusCode, body: &str) -> Cause {
    Cause::of_status(status, body)
}

async fn poll_down(
    client: &reqwest::Client,
    url: &str,
    cfg: &UplinkConfig,
    wait: u64,
) -> Result<Vec<Bytes>, Cause> {
    let resp = authed(client.get(url).query(&[("wait", wait)]), cfg)
        .send()
        .await
        .map_err(|e| Cause::of(&e))?;
    let status = resp.status();
    let body = resp.bytes().await.map_err(|e| Cause::of(&e))?;
    if !status.is_success() {
        return Err(refused(status, &String::from_utf8_lossy(&body)));
    }
    let down: Down =
        serde_json::from_slice(&body).map_err(|e| Cause::Other(format!("bad down poll: {e}")))?;
    Ok(down
        .frames
        .iter()
        .map(|f| Bytes::copy_from_slice(f.get().as_bytes()))
        .collect())
}

async fn post_up(
    client: &reqwest::Client,
    url: &str,
    cfg: &UplinkConfig,
    frame: Vec<u8>,
) -> Result<(), Cause> {
    let resp = authed(client.post(url), cfg)
        .header("content-type", "application/json")
        .body(frame)
        .send()
        .await
        .map_err(|e| Cause::of(&e))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    if status == reqwest::StatusCode::BAD_REQUEST {
        // A frame the parent refused will not get better by resending; the window decides.
        debug!(body = %body.trim(), "parent refused a frame");
        return Ok(());
    }
    Err(refused(status, &body))
}

/// Asks the parent at `base` which transport this node should use (`GET /v1/transport`);
/// `None` if it cannot be asked or names a transport this version does not know.
pub(crate) async fn ask_transport(cfg: &UplinkConfig, base: &str) -> Option<Transport> {
    let client = client(cfg).ok()?;
    let url = format!("{}/v1/transport", base.trim_end_matches('/'));
    let resp = authed(client.get(url), cfg)
        .timeout(Duration::from_secs(5))
        .send()
        .await
        .ok()?;
    if !resp.status().is_success() {
        return None;
    }
    let body = resp.bytes().await.ok()?;
    serde_json::from_slice::<TransportAnswer>(&body)
        .ok()?
        .transport
}

/// Runs one HTTP link session against `base` until it fails, the preferred address answers
/// again, or the node shuts down.
pub(crate) async fn session(
    cfg: &UplinkConfig,
    base: &str,
    preferred: Option<&ParentAddr>,
    ch: &mut Channels<'_>,
) -> Ended {
    let client = match client(cfg) {
        Ok(c) => c,
        Err(reason) => {
            return Ended::Lost {
                connected: false,
                reason,
            }
        }
    };
    let base = base.trim_end_matches('/');
    let (down_url, up_url) = (format!("{base}/v1/link/down"), format!("{base}/v1/link/up"));
    // First contact: proves reachability and the login before the link counts as up.
    match poll_down(&client, &down_url, cfg, 0).await {
        Ok(frames) => {
            info!(parent = %base, "connected to parent (HTTP)");
            if !ch.connected(true).await {
                return Ended::Shutdown;
            }
            for f in frames {
                if ch.events.send(ParentEvent::Frame(f)).await.is_err() {
                    return Ended::Shutdown;
                }
            }
        }
        Err(reason) => {
            return Ended::Lost {
                connected: false,
                reason,
            }
        }
    }
    let mut poll = Box::pin(poll_down(&client, &down_url, cfg, POLL_WAIT_S));
    let mut probe = tokio::time::interval(PROBE_EVERY);
    probe.tick().await;
    loop {
        tokio::select! {
            got = &mut poll => match got {
                Ok(frames) => {
                    for f in frames {
                        if ch.events.send(ParentEvent::Frame(f)).await.is_err() {
                            return Ended::Shutdown;
                        }
                    }
                    poll = Box::pin(poll_down(&client, &down_url, cfg, POLL_WAIT_S));
                }
                Err(reason) => return Ended::Lost { connected: true, reason },
            },
            Some(frame) = ch.frames.recv() => {
                if let Err(reason) = post_up(&client, &up_url, cfg, frame).await {
                    return Ended::Lost { connected: true, reason };
                }
            }
            Some(()) = ch.reconnect.recv() => {
                return Ended::Lost { connected: true, reason: Cause::Stalled };
            }
            _ = probe.tick(), if preferred.is_some() => {
                // Back when it answers the way a broker waits for CONNECT.
                if let Some(target) = preferred.and_then(ParentAddr::socket_target) {
                    if medlink_wire::probe::answers(target.as_str()).await {
                        return Ended::Preferred;
                    }
                }
            }
            _ = ch.shutdown.changed() => return Ended::Shutdown,
        }
    }
}
