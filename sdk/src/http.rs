//! The HTTP transport (the node's HTTP API, `bridge/openapi.json`), for sites where MQTT
//! ports are blocked or when the node says so. Three loops run in one session: sends are
//! POSTed to `/v1/messages` in order (202 = the node committed them; every submission carries
//! its client-chosen id, so a POST retried after a cut connection is accepted once), and the
//! inbox and receipts are long-polled with an acknowledged cursor — messages are handed to
//! the application first, and only the next poll (carrying the new cursor) acknowledges them.
//! A failed loop ends the session; the driver reconnects and the cursors and the send queue
//! carry over.

use std::sync::Arc;
use std::time::Duration;

use medlink_wire::{Cursor, Transport, TransportAnswer};
use reqwest::StatusCode;
use serde::Deserialize;
use tracing::{debug, warn};

use crate::handover::Handover;
use crate::message::Message;
use medlink_wire::http::POLL_WAIT_S;

use crate::sendq::SendQueue;
use crate::session::{Core, Cursors, Ended};
use crate::{tls, Error};

/// Most messages per poll.
const POLL_MAX: u64 = 500;
/// Most sends per POST.
const BATCH: usize = 100;

/// The HTTP client of one `Client` (keeps connections alive between requests).
pub(crate) fn client(core: &Core) -> Result<reqwest::Client, Error> {
    let tls = match &core.tls {
        Some(c) => (**c).clone(),
        None => (*tls::trusting_nothing()?).clone(),
    };
    medlink_wire::http::client(tls, Duration::from_secs(10))
        .map_err(|e| Error::Config(format!("cannot build the HTTP client: {e}")))
}

/// The body of an error answer (`{"code", "message", "field"}`).
#[derive(Deserialize, Default)]
struct ApiError {
    #[serde(default)]
    code: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    field: Option<String>,
}

impl ApiError {
    fn describe(&self, status: StatusCode) -> String {
        match &self.field {
            Some(f) => format!("{status} {}: {} ({f})", self.code, self.message),
            None => format!("{status} {}: {}", self.code, self.message),
        }
    }
}

/// A response read whole.
struct Answer {
    status: StatusCode,
    retry_after: Option<u64>,
    body: bytes::Bytes,
}

impl Answer {
    fn error(&self) -> ApiError {
        serde_json::from_slice(&self.body).unwrap_or_default()
    }
}

async fn call(req: reqwest::RequestBuilder, core_login: (&str, &str)) -> Result<Answer, String> {
    let resp = req
        .basic_auth(core_login.0, Some(core_login.1))
        .send()
        .await
        .map_err(|e| format!("{e}"))?;
    let status = resp.status();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    let body = resp.bytes().await.map_err(|e| format!("{e}"))?;
    Ok(Answer {
        status,
        retry_after,
        body,
    })
}

fn auth_refusal(a: &Answer) -> Option<Ended> {
    matches!(a.status, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN).then(|| {
        Ended::Refused(Error::Auth(format!(
            "the node refused the login: {}",
            a.error().describe(a.status)
        )))
    })
}

/// Sends a GET and reads its JSON answer; a refused login ends the client, anything else ends
/// the session (`connected` says whether it had been up).
async fn get_json<T: serde::de::DeserializeOwned>(
    req: reqwest::RequestBuilder,
    login: (&str, &str),
    connected: bool,
    what: &str,
) -> Result<T, Ended> {
    let lost = |reason: String| Ended::Lost { connected, reason };
    let a = call(req, login).await.map_err(lost)?;
    if let Some(refused) = auth_refusal(&a) {
        return Err(refused);
    }
    if !a.status.is_success() {
        return Err(lost(format!("{what}: {}", a.error().describe(a.status))));
    }
    serde_json::from_slice(&a.body)
        .map_err(|e| lost(format!("{what} answered something else: {e}")))
}

/// `GET /v1/transport`: what the node decided for this identity, and the URL to use.
pub(crate) async fn ask_transport(
    http: &reqwest::Client,
    core: &Core,
    base: &str,
) -> Result<(Transport, Option<String>), Ended> {
    let login = (core.me.client.as_str(), core.password.as_str());
    let req = http
        .get(format!("{base}/v1/transport"))
        .timeout(Duration::from_secs(10));
    let d: TransportAnswer = get_json(req, login, false, "/v1/transport").await?;
    // A transport a newer node may offer that this SDK does not know: HTTP always works.
    let t = d.transport.unwrap_or(Transport::Http);
    Ok((t, d.url.filter(|u| !u.is_empty())))
}

/// What a long-poll answers; the messages are decoded one by one, so one this SDK cannot
/// read does not hold up the rest.
type Page = medlink_wire::Page<serde_json::Value>;

/// One long-poll of `path` after `cursor` (which acknowledges everything up to it).
async fn poll(
    http: &reqwest::Client,
    url: &str,
    login: (&str, &str),
    cursor: Option<Cursor>,
    wait: u64,
) -> Result<Page, Ended> {
    // No cursor yet is an empty one: the node starts at the oldest unacknowledged message.
    let cursor = cursor.map(|c| c.to_string()).unwrap_or_default();
    let (wait, max) = (wait.to_string(), POLL_MAX.to_string());
    let req = http
        .get(url)
        .query(&[("cursor", &cursor), ("wait", &wait), ("max", &max)]);
    get_json(req, login, true, "poll").await
}

/// Hands a page over, then (and only then) adopts its cursor. False if the application had
/// dropped a channel the page needed: then nothing of the page is acknowledged (the cursor
/// covers whole pages), and what it did take is dropped as a repeat next time.
async fn take_page(page: Page, cursor: &mut Option<Cursor>, handover: &Handover) -> bool {
    let mut all = true;
    for v in page.messages {
        match serde_json::from_value::<Message>(v) {
            Ok(m) => all &= handover.deliver(m).await,
            Err(e) => warn!(error = %e, "undecodable delivery dropped"),
        }
    }
    if all {
        // The node's answer is authoritative (after a replaced journal its numbers restart).
        *cursor = Some(page.cursor);
    }
    all
}

/// How long a stream whose channel the application dropped waits between polls (the node
/// answers the same page again at once; replies to requests in it still get through).
const HELD_PAUSE: Duration = Duration::from_secs(5);

/// Polls one stream until a poll fails.
async fn receive(
    http: &reqwest::Client,
    url: String,
    login: (&str, &str),
    cursor: &mut Option<Cursor>,
    handover: &Handover,
) -> Ended {
    let mut wait = POLL_WAIT_S;
    loop {
        match poll(http, &url, login, *cursor, wait).await {
            Ok(page) => {
                if !take_page(page, cursor, handover).await {
                    tokio::time::sleep(HELD_PAUSE).await;
                }
            }
            // The node allows shorter waits (`http.max_wait_s`): ask for less.
            Err(Ended::Lost { ref reason, .. }) if reason.contains("(wait)") && wait > 1 => {
                wait /= 2;
                debug!(wait, "the node refused the long-poll wait; asking for less");
            }
            Err(e) => return e,
        }
    }
}

/// POSTs `bodies` (one submission, or an array of them).
async fn post(
    http: &reqwest::Client,
    url: &str,
    login: (&str, &str),
    queue: &SendQueue,
    n: usize,
) -> Result<Answer, String> {
    let mut body = Vec::new();
    if n == 1 {
        if let Some(p) = queue.get(0) {
            body.extend_from_slice(&p.body);
        }
    } else {
        body.push(b'[');
        for i in 0..n {
            if let Some(p) = queue.get(i) {
                if i > 0 {
                    body.push(b',');
                }
                body.extend_from_slice(&p.body);
            }
        }
        body.push(b']');
    }
    let req = http
        .post(url)
        .header("content-type", "application/json")
        .body(body);
    call(req, login).await
}

/// Sends the queue in order, forever (or until a POST fails).
async fn send(
    http: &reqwest::Client,
    url: String,
    login: (&str, &str),
    queue: &mut SendQueue,
    submits: &mut tokio::sync::mpsc::UnboundedReceiver<crate::sendq::Pending>,
) -> Ended {
    // After a batch was refused, send that many one by one to find the one at fault.
    let mut singles = 0usize;
    loop {
        while let Ok(p) = submits.try_recv() {
            queue.push(p);
        }
        if queue.is_empty() {
            match submits.recv().await {
                Some(p) => queue.push(p),
                None => return Ended::Closed,
            }
            continue;
        }
        let n = if singles > 0 {
            1
        } else {
            queue.len().min(BATCH)
        };
        let a = match post(http, &url, login, queue, n).await {
            Ok(a) => a,
            Err(reason) => {
                return Ended::Lost {
                    connected: true,
                    reason,
                }
            }
        };
        if let Some(refused) = auth_refusal(&a) {
            return refused;
        }
        match a.status {
            StatusCode::ACCEPTED | StatusCode::OK => {
                let all: Vec<usize> = (0..n).collect();
                queue.custody(&all).await;
                singles = singles.saturating_sub(1);
            }
            StatusCode::TOO_MANY_REQUESTS => {
                let secs = a.retry_after.unwrap_or(1).clamp(1, 60);
                debug!(secs, "rate limited; waiting");
                tokio::time::sleep(Duration::from_secs(secs)).await;
            }
            StatusCode::BAD_REQUEST | StatusCode::NOT_FOUND | StatusCode::PAYLOAD_TOO_LARGE => {
                if n > 1 {
                    // Nothing of a refused batch is lost: the ids make resending the
                    // accepted ones harmless.
                    singles = n;
                } else {
                    queue.refused(0, a.error().describe(a.status)).await;
                    singles = singles.saturating_sub(1);
                }
            }
            status => {
                return Ended::Lost {
                    connected: true,
                    reason: format!("send: {}", a.error().describe(status)),
                }
            }
        }
    }
}

/// How often the MQTT URL is probed while HTTP is a fallback.
const PROBE_EVERY: Duration = Duration::from_secs(10);

/// Whether the MQTT (or WebSocket) URL answers again (`medlink_wire::probe`).
async fn reachable(url: &str) -> bool {
    let Ok(parsed) = url::Url::parse(url) else {
        return false;
    };
    let (Some(host), Some(port)) = (
        parsed.host_str(),
        parsed
            .port()
            .or_else(|| medlink_wire::default_port(parsed.scheme())),
    ) else {
        return false;
    };
    medlink_wire::probe::answers((host, port)).await
}

/// Resolves when `probe` (the MQTT URL of a fallback) answers again; never without one.
async fn mqtt_back(probe: Option<&str>) {
    let Some(url) = probe else {
        return std::future::pending().await;
    };
    loop {
        tokio::time::sleep(PROBE_EVERY).await;
        if reachable(url).await {
            return;
        }
    }
}

/// Runs one session against `base` until it fails, the client closes, or — when HTTP is a
/// fallback — the MQTT URL `probe` answers again (the driver then goes back to MQTT).
pub(crate) async fn session(
    core: &mut Core,
    http: &reqwest::Client,
    base: &str,
    probe: Option<&str>,
) -> Ended {
    let password = core.password.clone();
    let identity = core.me.client.clone();
    let login = (identity.as_str(), password.as_str());
    let inbox_url = format!("{base}/v1/inbox");
    let receipts_url = format!("{base}/v1/receipts");
    // First contact (no wait): proves the login and hands over what is waiting.
    match poll(http, &inbox_url, login, core.cursors.inbox, 0).await {
        Ok(page) => {
            core.connected(Transport::Http);
            // Not taken (commands dropped by the application): the loop below holds it.
            let _ = take_page(page, &mut core.cursors.inbox, &core.handover).await;
        }
        Err(Ended::Lost { reason, .. }) => {
            return Ended::Lost {
                connected: false,
                reason,
            }
        }
        Err(other) => return other,
    }
    let handover: Arc<Handover> = core.handover.clone();
    let mut stop = core.stop.clone();
    let Core {
        queue,
        submits,
        cursors: Cursors { inbox, receipts },
        ..
    } = core;
    tokio::select! {
        e = send(http, format!("{base}/v1/messages"), login, queue, submits) => e,
        e = receive(http, inbox_url, login, inbox, &handover) => e,
        e = receive(http, receipts_url, login, receipts, &handover) => e,
        _ = Core::stopped(&mut stop) => Ended::Closed,
        _ = mqtt_back(probe) => Ended::Lost { connected: true, reason: "MQTT answers again".into() },
    }
}
