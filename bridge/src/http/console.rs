//! `/console`: the operators' web console, served by every node on its HTTP API port.
//!
//! Who may look: an admin identity, by a session cookie from the login form (password), or by
//! the API's own credentials on each request (a client certificate, HTTP Basic, a Bearer
//! token with the admin role). Anyone else gets the login page, which holds no data, and the
//! JSON endpoints answer 401.
//!
//! - `GET /console`: the page (one HTML document, inline script and style under a per-response
//!   nonce; no external files, no build step). It renders the tree from
//!   `/console/api/events` (server-sent events: the subtree's rows whenever a summary arrives,
//!   and every 5 s) and asks questions through `/console/api/ask`.
//! - `POST /console/login` (form `name`, `password`), `POST /console/logout`.
//! - `GET /console/api/tree`: the rows once.
//! - `POST /console/api/ask` `{"to": node | "*", "op": {...}}`: a question for a node of the
//!   subtree ([`crate::console::ask::Op`]), answered by each node asked. It needs the header
//!   `x-medlink-console: 1`, which a page of another origin cannot send (no CORS here): the
//!   cookie alone never re-sends or reveals anything.
//!
//! Sessions live in memory for [`SESSION_TTL`]; a restart logs everyone out.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::{ConnectInfo, FromRequestParts, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use axum::Json;
use futures_util::stream::{self, Stream};
use medlink_broker::Role;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::oneshot;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::console::ask::Op;
use crate::console::{Console, Question};

/// How long a console login lasts.
pub const SESSION_TTL: Duration = Duration::from_secs(8 * 3600);
const COOKIE: &str = "medlink_console";
/// The header every question must carry (see the module docs).
const ASK_HEADER: &str = "x-medlink-console";
const PAGE: &str = include_str!("console.html");
const LOGIN: &str = include_str!("console-login.html");

/// Logged-in console sessions: random token → (operator, expiry).
#[derive(Default)]
pub struct Sessions(Mutex<HashMap<String, (String, Instant)>>);

impl Sessions {
    fn open(&self, operator: &str) -> String {
        let token = hex::encode(rand::random::<[u8; 32]>());
        let mut map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        map.retain(|_, (_, until)| *until > now);
        map.insert(token.clone(), (operator.to_string(), now + SESSION_TTL));
        token
    }

    fn operator(&self, token: &str) -> Option<String> {
        let map = self.0.lock().unwrap_or_else(|p| p.into_inner());
        map.get(token)
            .filter(|(_, until)| *until > Instant::now())
            .map(|(op, _)| op.clone())
    }

    fn close(&self, token: &str) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(token);
    }
}

fn session_cookie(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == COOKIE)
        .map(|(_, v)| v.to_string())
}

/// An admin looking at the console.
pub struct Operator(pub String);

#[axum::async_trait]
impl FromRequestParts<Arc<ApiState>> for Operator {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        if let Some(name) = session_cookie(&parts.headers).and_then(|t| state.sessions.operator(&t))
        {
            return Ok(Operator(name));
        }
        let has_certificate = parts
            .extensions
            .get::<super::auth::PeerCertificate>()
            .is_some_and(|c| c.0.is_some());
        if parts.headers.contains_key(header::AUTHORIZATION) || has_certificate {
            let caller = Caller::from_request_parts(parts, state).await?;
            return Ok(Operator(caller.require(Role::Admin)?.name));
        }
        Err(ApiError::console_login("log in at /console"))
    }
}

fn console(state: &ApiState) -> Result<&Arc<Console>, ApiError> {
    state
        .console
        .as_ref()
        .ok_or_else(|| ApiError::unavailable("this node serves no console"))
}

/// An HTML page with a fresh nonce for its inline script and style; `message` fills the
/// page's one variable text (the operator's name, or why the login failed).
fn html(status: StatusCode, template: &str, state: &ApiState, message: &str) -> Response {
    let nonce = super::push::nonce();
    let body = template
        .replace("{{NODE}}", &super::push::escape(&state.node_id))
        .replace("{{MESSAGE}}", &super::push::escape(message))
        .replace("{{NONCE}}", &nonce);
    // As /push's, but the login form may post to this origin.
    let csp = format!(
        "default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; \
         connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'self'; \
         frame-ancestors 'none'"
    );
    super::push::html_response(status, body, &csp)
}

/// `GET /console`: the console for an admin, the login page for anyone else.
pub async fn page(State(state): State<Arc<ApiState>>, who: Result<Operator, ApiError>) -> Response {
    match who {
        Ok(Operator(name)) => html(StatusCode::OK, PAGE, &state, &name),
        Err(e) if e.code == "forbidden" => html(
            StatusCode::FORBIDDEN,
            LOGIN,
            &state,
            "that identity is not an admin",
        ),
        Err(_) => html(StatusCode::OK, LOGIN, &state, ""),
    }
}

/// `POST /console/login` (form `name`, `password`): a session for an admin.
pub async fn login(
    State(state): State<Arc<ApiState>>,
    peer: Option<ConnectInfo<std::net::SocketAddr>>,
    body: bytes::Bytes,
) -> Response {
    let mut name = String::new();
    let mut password = String::new();
    for (k, v) in url::form_urlencoded::parse(&body) {
        match k.as_ref() {
            "name" => name = v.into_owned(),
            "password" => password = v.into_owned(),
            _ => {}
        }
    }
    let ip = peer.map_or(std::net::IpAddr::from([127, 0, 0, 1]), |c| c.0.ip());
    let refused = |why: &str| html(StatusCode::UNAUTHORIZED, LOGIN, &state, why);
    let identity = match state
        .auth
        .login(ip, Some(&name), Some(password.as_bytes()), None)
        .await
    {
        Ok(identity) => identity,
        Err(medlink_broker::identity::LoginError::Throttled) => {
            return refused("too many recent attempts; wait a little")
        }
        Err(_) => return refused("wrong name or password"),
    };
    if identity.role != Role::Admin {
        return refused("that identity is not an admin");
    }
    let token = state.sessions.open(&identity.name);
    tracing::info!(operator = %identity.name, "console login");
    let secure = if state.console_secure { "; Secure" } else { "" };
    let cookie = format!(
        "{COOKIE}={token}; Path=/console; HttpOnly; SameSite=Strict; Max-Age={}{secure}",
        SESSION_TTL.as_secs()
    );
    let mut resp = (StatusCode::SEE_OTHER, "").into_response();
    resp.headers_mut()
        .insert(header::LOCATION, HeaderValue::from_static("/console"));
    if let Ok(v) = HeaderValue::from_str(&cookie) {
        resp.headers_mut().insert(header::SET_COOKIE, v);
    }
    resp
}

/// `POST /console/logout`.
pub async fn logout(State(state): State<Arc<ApiState>>, headers: HeaderMap) -> Response {
    if let Some(token) = session_cookie(&headers) {
        state.sessions.close(&token);
    }
    let mut resp = (StatusCode::SEE_OTHER, "").into_response();
    let h = resp.headers_mut();
    h.insert(header::LOCATION, HeaderValue::from_static("/console"));
    h.insert(
        header::SET_COOKIE,
        HeaderValue::from_static(
            "medlink_console=; Path=/console; HttpOnly; SameSite=Strict; Max-Age=0",
        ),
    );
    resp
}

fn snapshot(console: &Console) -> serde_json::Value {
    json!({
        "node": console.me,
        "now": crate::envelope::now_ms(),
        "rows": console.rows(),
    })
}

/// `GET /console/api/tree`.
pub async fn tree(
    State(state): State<Arc<ApiState>>,
    _who: Operator,
) -> Result<Response, ApiError> {
    Ok(Json(snapshot(console(&state)?)).into_response())
}

/// `GET /console/api/events`: the rows whenever a summary arrives (at most 4 a second),
/// and every 5 s (staleness changes with time alone).
pub async fn events(
    State(state): State<Arc<ApiState>>,
    _who: Operator,
) -> Result<Sse<impl Stream<Item = Result<Event, Infallible>>>, ApiError> {
    let console = console(&state)?.clone();
    let changes = console.changes.clone();
    let events = stream::unfold(
        (console, changes, true),
        |(console, mut changes, first)| async move {
            if !first {
                let _ = tokio::time::timeout(Duration::from_secs(5), changes.changed()).await;
                tokio::time::sleep(Duration::from_millis(250)).await;
            }
            changes.borrow_and_update();
            let event = Event::default()
                .event("tree")
                .data(snapshot(&console).to_string());
            Some((Ok(event), (console, changes, false)))
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}

/// The body of `POST /console/api/ask`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AskBody {
    /// The node asked, or `*`.
    to: String,
    /// The question.
    op: Op,
}

/// `POST /console/api/ask`.
pub async fn ask(
    State(state): State<Arc<ApiState>>,
    Operator(name): Operator,
    headers: HeaderMap,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    if headers.get(ASK_HEADER).is_none() {
        return Err(ApiError::forbidden(format!(
            "questions need the header {ASK_HEADER}: 1"
        )));
    }
    let console = console(&state)?;
    let AskBody { to, mut op } = serde_json::from_slice(&body)
        .map_err(|e| ApiError::malformed(format!("expected {{\"to\": …, \"op\": {{…}}}}: {e}")))?;
    // Who acts is this console's operator, whatever the page says.
    let acting = format!("{name}@{}", console.me);
    match &mut op {
        Op::Reveal { operator, .. } | Op::Resend { operator, .. } | Op::Purge { operator, .. } => {
            *operator = acting
        }
        _ => {}
    }
    let (reply, rx) = oneshot::channel();
    console
        .questions
        .send(Question { to, op, reply })
        .await
        .map_err(|_| ApiError::unavailable("the console is stopping"))?;
    let replies = rx
        .await
        .map_err(|_| ApiError::unavailable("the question was dropped; retry"))?;
    Ok(Json(json!({ "replies": replies })).into_response())
}
