//! The node's HTTP API, for sites whose firewalls pass only HTTP(S): send by POST, receive by
//! long-poll (or server-sent events), with the same identities, ACL-equivalent rules, custody
//! and receipts as MQTT.
//!
//! The handlers never touch the journal: like the MQTT front-end they talk to the dispatcher
//! through [`Request`] items and answer after its commit, so a 2xx always means custody (or an
//! acknowledgement that is durable). The routes, their methods and their answers are described
//! in `bridge/openapi.json`, served at `/v1/openapi.json`; a test keeps the two in step.

pub mod auth;
pub mod console;
pub mod error;
pub mod files;
pub mod inbox;
pub mod link;
pub mod messages;
pub mod operator;
mod poll;
pub mod push;
pub mod serve;
pub mod slots;
pub mod transport;
mod waiting;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use medlink_broker::rate::RateLimiter;
use medlink_broker::{Authenticator, BrokerMetrics};

use crate::dispatcher::Request;
use tokio::sync::{mpsc, watch};
use tracing::info;

use crate::envelope::Limits;
pub use transport::{TransportChoice, TransportPolicy};

/// The OpenAPI 3 document of this API.
pub const OPENAPI: &str = include_str!("../../openapi.json");

/// Every route of the API: (method, path). The router is built from the same handlers; a
/// test checks that this list and the OpenAPI document agree. The operators' web console
/// (`/console…`, see `console.rs`) is a page and its own endpoints, not part of the API.
pub const ROUTES: &[(&str, &str)] = &[
    ("post", "/v1/messages"),
    ("get", "/v1/inbox"),
    ("post", "/v1/inbox/ack"),
    ("get", "/v1/receipts"),
    ("post", "/v1/receipts/ack"),
    ("get", "/v1/stream"),
    ("get", "/v1/transport"),
    ("post", "/v1/link/up"),
    ("get", "/v1/link/down"),
    ("get", "/v1/deadletters"),
    ("post", "/v1/deadletters/resend"),
    ("post", "/v1/deadletters/purge"),
    ("get", "/v1/operator/log"),
    ("options", "/v1/files"),
    ("post", "/v1/files"),
    ("head", "/v1/files/uploads/{id}"),
    ("patch", "/v1/files/uploads/{id}"),
    ("get", "/v1/files/uploads/{id}"),
    ("delete", "/v1/files/uploads/{id}"),
    ("get", "/v1/files/{sha256}"),
    ("get", "/v1/files/{sha256}/url"),
    ("get", "/v1/openapi.json"),
    ("get", "/push"),
];

/// Counters of the HTTP API.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    /// Requests answered, by class.
    pub responses_2xx: AtomicU64,
    /// Client errors.
    pub responses_4xx: AtomicU64,
    /// Server errors (503: no custody).
    pub responses_5xx: AtomicU64,
    /// Long-polls currently waiting.
    pub polls_open: AtomicI64,
}

/// Decrements the open-poll gauge when a poll ends, however it ends.
pub struct PollGuard(Arc<HttpMetrics>);

impl Drop for PollGuard {
    fn drop(&mut self) {
        self.0.polls_open.fetch_sub(1, Ordering::Relaxed);
    }
}

impl HttpMetrics {
    /// Counts an open poll until the guard drops.
    pub fn poll_opened(self: &Arc<Self>) -> PollGuard {
        self.polls_open.fetch_add(1, Ordering::Relaxed);
        PollGuard(self.clone())
    }

    /// Prometheus text.
    pub fn render(&self, out: &mut String) {
        use std::fmt::Write;
        for (class, v) in [
            ("2xx", &self.responses_2xx),
            ("4xx", &self.responses_4xx),
            ("5xx", &self.responses_5xx),
        ] {
            let _ = writeln!(
                out,
                "medlink_http_responses_total{{class=\"{class}\"}} {}",
                v.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP medlink_http_polls_open HTTP long-polls and event streams waiting\n# TYPE medlink_http_polls_open gauge\nmedlink_http_polls_open {}",
            self.polls_open.load(Ordering::Relaxed).max(0)
        );
    }
}

/// What every handler shares.
pub struct ApiState {
    /// This node's id.
    pub node_id: String,
    /// Logins.
    pub auth: Arc<Authenticator>,
    /// The per-identity command rate, shared with MQTT.
    pub rate: Arc<RateLimiter>,
    /// Front-end counters (rate limiting is counted with MQTT's).
    pub broker_metrics: Arc<BrokerMetrics>,
    /// The dispatcher's input.
    pub inbound: mpsc::Sender<Request>,
    /// Submission limits.
    pub limits: Limits,
    /// Longest long-poll wait a client may ask for.
    pub max_wait: Duration,
    /// Which transport each caller is told to use.
    pub transport: TransportPolicy,
    /// HTTP counters.
    pub metrics: Arc<HttpMetrics>,
    /// Open long-polls and event streams per identity.
    pub streams: slots::StreamSlots,
    /// The file store (`/v1/files`).
    pub files: Option<Arc<crate::files::FileStore>>,
    /// The operators' console (`/console`).
    pub console: Option<Arc<crate::console::Console>>,
    /// Logged-in console sessions.
    pub sessions: console::Sessions,
    /// Console cookies are `Secure` (the API is served over HTTPS).
    pub console_secure: bool,
    ids: Mutex<ulid::Generator>,
}

impl ApiState {
    /// State for a node.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        node_id: &str,
        auth: Arc<Authenticator>,
        rate: Arc<RateLimiter>,
        broker_metrics: Arc<BrokerMetrics>,
        inbound: mpsc::Sender<Request>,
        limits: Limits,
        max_wait: Duration,
        transport: TransportPolicy,
        max_streams_per_identity: usize,
    ) -> Self {
        ApiState {
            node_id: node_id.to_string(),
            auth,
            rate,
            broker_metrics,
            inbound,
            limits,
            max_wait,
            transport,
            metrics: Arc::default(),
            streams: slots::StreamSlots::new(max_streams_per_identity),
            files: None,
            console: None,
            sessions: console::Sessions::default(),
            console_secure: false,
            ids: Mutex::new(ulid::Generator::new()),
        }
    }

    /// Serves uploads and downloads from `files`.
    pub fn with_files(mut self, files: Arc<crate::files::FileStore>) -> Self {
        self.files = Some(files);
        self
    }

    /// Serves the operators' console from `console`; `https`: its cookies are `Secure`.
    pub fn with_console(mut self, console: Arc<crate::console::Console>, https: bool) -> Self {
        self.console = Some(console);
        self.console_secure = https;
        self
    }

    /// Hands an item to the dispatcher; 503 if the node is shutting down.
    pub async fn hand_over(&self, item: Request) -> Result<(), error::ApiError> {
        self.inbound
            .send(item)
            .await
            .map_err(|_| error::ApiError::unavailable("the node is shutting down"))
    }

    /// A fresh message id (ULID, monotonic within this process).
    pub fn next_id(&self) -> String {
        let mut ids = self
            .ids
            .lock()
            .expect("id generator lock is never held across a panic");
        match ids.generate() {
            Ok(id) => id.to_string(),
            Err(_) => ulid::Ulid::new().to_string(),
        }
    }
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}

async fn not_found() -> error::ApiError {
    error::ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such endpoint")
}

/// The API's routes.
pub fn router(state: Arc<ApiState>) -> Router {
    let metrics = state.metrics.clone();
    // Room for a full batch of the largest commands, and no more.
    let body_limit = (state.limits.max_payload + 1024)
        .saturating_mul(16)
        .min(64 << 20);
    Router::new()
        .route("/v1/messages", post(messages::post))
        .route("/v1/inbox", get(inbox::inbox))
        .route("/v1/inbox/ack", post(inbox::ack_inbox))
        .route("/v1/receipts", get(inbox::receipts))
        .route("/v1/receipts/ack", post(inbox::ack_receipts))
        .route("/v1/stream", get(inbox::events))
        .route("/v1/transport", get(transport::decide))
        .route("/v1/link/up", post(link::up))
        .route("/v1/link/down", get(link::down))
        .route("/v1/deadletters", get(operator::list))
        .route("/v1/deadletters/resend", post(operator::resend))
        .route("/v1/deadletters/purge", post(operator::purge))
        .route("/v1/operator/log", get(operator::log))
        .route("/v1/files", post(files::create).options(files::options))
        .route(
            "/v1/files/uploads/:id",
            get(files::reference)
                .head(files::offset)
                .delete(files::cancel)
                // An upload's chunks are streamed to disk, never held: no body limit here
                // (the declared Upload-Length and the store's limits bound them).
                .patch(files::append)
                .layer(DefaultBodyLimit::disable()),
        )
        .route("/v1/files/:sha256", get(files::download))
        .route("/v1/files/:sha256/url", get(files::presigned))
        .route("/v1/openapi.json", get(openapi))
        .route("/push", get(push::page))
        .route("/console", get(console::page))
        .route("/console/login", post(console::login))
        .route("/console/logout", post(console::logout))
        .route("/console/api/tree", get(console::tree))
        .route("/console/api/events", get(console::events))
        .route("/console/api/ask", post(console::ask))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(axum::middleware::map_response(move |resp: Response| {
            let metrics = metrics.clone();
            async move { count(&metrics, resp) }
        }))
        .with_state(state)
}

/// Counts a response, and turns axum's own plain-text rejections (body too large, bad
/// query string, wrong method) into the API's JSON error shape.
fn count(metrics: &HttpMetrics, resp: Response) -> Response {
    let status = resp.status();
    let counter = match status.as_u16() {
        200..=299 => &metrics.responses_2xx,
        400..=499 => &metrics.responses_4xx,
        _ => &metrics.responses_5xx,
    };
    counter.fetch_add(1, Ordering::Relaxed);
    // Our own answers: JSON, event streams, and the console's pages and redirects.
    let ours = resp.headers().get(header::CONTENT_TYPE).is_some_and(|v| {
        v.as_bytes().starts_with(b"application/json")
            || v.as_bytes().starts_with(b"text/event-stream")
            || v.as_bytes().starts_with(b"text/html")
    });
    if status.is_success() || status.is_redirection() || ours {
        return resp;
    }
    let (code, message) = match status {
        StatusCode::PAYLOAD_TOO_LARGE => ("too_large", "request body too large"),
        StatusCode::METHOD_NOT_ALLOWED => ("method_not_allowed", "method not allowed here"),
        StatusCode::UNSUPPORTED_MEDIA_TYPE => ("malformed", "unsupported content type"),
        s if s.is_client_error() => ("malformed", "malformed request"),
        _ => ("unavailable", "the node could not serve the request"),
    };
    error::ApiError::new(status, code, message).into_response()
}

/// Serves the API on `listener` (HTTPS with `tls`) until `shutdown`.
pub fn serve(
    listener: tokio::net::TcpListener,
    tls: Option<Arc<rustls::ServerConfig>>,
    limits: serve::HttpLimits,
    state: Arc<ApiState>,
    shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let bound = listener.local_addr()?;
    info!(addr = %bound, https = tls.is_some(), "HTTP API listening");
    let app = router(state.clone());
    let task = tokio::spawn(serve::serve(
        listener,
        app,
        Some(state),
        tls,
        limits,
        shutdown,
    ));
    Ok((bound, task))
}
