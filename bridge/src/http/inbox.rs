//! Receiving over HTTP: long-polls of the inbox and receipt streams with an acknowledged
//! cursor, explicit acknowledgement, and the same inbox as server-sent events.
//!
//! The cursor (an opaque string: the last sequence the client has in each priority lane, see
//! [`Cursor`]) says what the client has. Polling with it acknowledges everything up to it (and
//! only up to what was actually handed out), then returns what comes after, urgent first; polling again with an old cursor returns again what was not acknowledged.
//! So a response lost in transit, or a node restart, costs a repeat (same ids), never a loss.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::{FutureExt, Stream as FutStream};
use medlink_broker::{Role, Stream};

use crate::clients::{Cursor, Page};
use crate::dispatcher::Request;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::auth::Caller;
use super::error::ApiError;
use super::poll::{Events, Polled};
use super::ApiState;

/// Most messages per poll.
pub const MAX_POLL: usize = 1000;

/// Query of a poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    /// Last sequence the client has (0: none yet).
    #[serde(default)]
    cursor: Option<String>,
    /// Seconds to wait when nothing is there (0: answer at once).
    #[serde(default)]
    wait: Option<String>,
    /// Most messages to return (default 100).
    #[serde(default)]
    max: Option<String>,
}

/// Body of an acknowledgement.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AckBody {
    /// Everything up to this cursor is processed.
    cursor: CursorValue,
}

/// A cursor in a JSON body: the string a poll returned (or, from older clients, a number).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
enum CursorValue {
    Text(String),
    Number(u64),
}

/// Parses a cursor from a query parameter, header or body; `None` when none was given (an
/// empty string included).
fn parse_cursor(value: Option<&str>) -> Result<Option<Cursor>, ApiError> {
    match value {
        None | Some("") => Ok(None),
        Some(v) => v.parse().map(Some).map_err(|_| {
            ApiError::malformed(format!(
                "'{v}' is not a cursor (pass back the `cursor` of the last response)"
            ))
            .field("cursor")
        }),
    }
}

/// A whole number query parameter in `range`, `default` when absent.
fn number(
    value: &Option<String>,
    field: &str,
    default: u64,
    range: std::ops::RangeInclusive<u64>,
) -> Result<u64, ApiError> {
    let Some(v) = value else {
        return Ok(default);
    };
    // Digits only (`u64::from_str` would also take a leading `+`).
    let digits = !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit());
    match v.parse::<u64>() {
        Ok(n) if digits && range.contains(&n) => Ok(n),
        _ => Err(ApiError::malformed(format!(
            "'{v}' is not a whole number from {} to {}",
            range.start(),
            range.end()
        ))
        .field(field)),
    }
}

/// `{"cursor": N, "messages": [envelope, ...]}` without re-parsing the envelopes.
fn page(page: &Page) -> Response {
    let (next, deliveries) = (page.cursor, &page.deliveries);
    let mut body =
        Vec::with_capacity(64 + deliveries.iter().map(|d| d.body.len() + 1).sum::<usize>());
    body.extend_from_slice(format!("{{\"cursor\":\"{next}\",\"messages\":[").as_bytes());
    for (i, d) in deliveries.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(&d.body);
    }
    body.extend_from_slice(b"]}");
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response()
}

/// The wait of a long-poll, boxed so that whoever awaits it holds a pointer rather than a
/// second copy.
pub(super) type Waiting = Pin<Box<dyn Future<Output = Response> + Send>>;

/// A long-poll of `stream` for `caller` (`GET /v1/inbox` and `/v1/receipts`): the caller and
/// query are checked and the stream's slot taken here, and the wait is the future returned.
pub(super) fn read_stream(
    state: Arc<ApiState>,
    caller: Caller,
    q: PollQuery,
    stream: Stream,
) -> Result<Waiting, ApiError> {
    let PollArgs {
        client,
        cursor,
        max,
        wait,
    } = PollArgs::new(&state, caller, q)?;
    let slot = state.streams.open(&client)?;
    let ack = cursor.is_some_and(|c| !c.is_start());
    let polled = Polled::new(state, &client, stream, (cursor, ack), max, wait);
    Ok(Box::pin(polled.map(move |got| {
        drop(slot);
        match got {
            Ok(got) => page(&got),
            Err(refused) => refused.into_response(),
        }
    })))
}

/// A long-poll's caller and query, checked.
struct PollArgs {
    client: String,
    cursor: Option<Cursor>,
    max: usize,
    wait: Duration,
}

impl PollArgs {
    fn new(state: &ApiState, caller: Caller, q: PollQuery) -> Result<PollArgs, ApiError> {
        let who = caller.require(Role::Client)?;
        let cursor = parse_cursor(q.cursor.as_deref())?;
        // A longer wait than the node allows is shortened to its `max_wait_s`, not refused:
        // the client only learns sooner that nothing came.
        let wait = number(&q.wait, "wait", 0, 0..=u64::MAX)?.min(state.max_wait.as_secs());
        let max = number(&q.max, "max", 100, 1..=MAX_POLL as u64)? as usize;
        Ok(PollArgs {
            client: who.name,
            cursor,
            max,
            wait: Duration::from_secs(wait),
        })
    }
}

/// `GET /v1/inbox`.
pub async fn inbox(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    Ok(read_stream(state, caller, q, Stream::Commands)?.await)
}

/// `GET /v1/receipts`.
pub async fn receipts(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    Ok(read_stream(state, caller, q, Stream::Receipts)?.await)
}

async fn ack_stream(
    state: Arc<ApiState>,
    caller: Caller,
    body: &[u8],
    stream: Stream,
) -> Result<Response, ApiError> {
    let who = caller.require(Role::Client)?;
    let ack: AckBody = serde_json::from_slice(body).map_err(|e| {
        ApiError::malformed(format!("expected {{\"cursor\": \"…\"}}: {e}")).field("cursor")
    })?;
    let upto = match ack.cursor {
        CursorValue::Text(t) => parse_cursor(Some(&t))?.unwrap_or_default(),
        CursorValue::Number(n) => Cursor([0, n, 0]),
    };
    let (tx, rx) = oneshot::channel();
    let item = Request::Ack {
        client: who.name.clone(),
        stream,
        upto,
        reply: tx,
    };
    state.hand_over(item).await?;
    let acked = rx
        .await
        .map_err(|_| ApiError::unavailable("the acknowledgement was not committed; retry"))?;
    Ok(axum::Json(serde_json::json!({ "acked": acked.to_string() })).into_response())
}

/// `POST /v1/inbox/ack`.
pub async fn ack_inbox(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    ack_stream(state, caller, &body, Stream::Commands).await
}

/// `POST /v1/receipts/ack`.
pub async fn ack_receipts(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    ack_stream(state, caller, &body, Stream::Receipts).await
}

/// `GET /v1/stream`: the inbox as server-sent events, `id:` = sequence. A browser's
/// `EventSource` reconnects with `Last-Event-ID`, which acknowledges everything up to it.
pub async fn events(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
    Query(q): Query<PollQuery>,
) -> Result<Sse<impl FutStream<Item = Result<Event, std::convert::Infallible>>>, ApiError> {
    let who = caller.require(Role::Client)?;
    let resume = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<Cursor>().ok());
    let cursor = match resume {
        Some(c) => Some(c),
        None => parse_cursor(q.cursor.as_deref())?,
    };
    // Held for as long as the stream is open.
    let slot = state.streams.open(&who.name)?;
    let events = Events::new(state, who.name, slot, cursor);
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
