//! Receiving over HTTP: long-polls of the inbox and receipt streams with an acknowledged
//! cursor, explicit acknowledgement, and the same inbox as server-sent events.
//!
//! The cursor (an opaque string: the last sequence the client has in each priority lane, see
//! [`Cursor`]) says what the client has. Polling with it acknowledges everything up to it (and
//! only up to what was actually handed out), then returns what comes after, urgent first; polling again with an old cursor returns again what was not acknowledged.
//! So a response lost in transit, or a node restart, costs a repeat (same ids), never a loss.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::sse::{Event, KeepAlive, Sse};
use axum::response::{IntoResponse, Response};
use futures_util::stream::{self, Stream as FutStream};
use medlink_broker::{Role, Stream};

use crate::clients::{Cursor, Delivery, Page};
use crate::dispatcher::Request;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::auth::Caller;
use super::error::ApiError;
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

/// Asks the dispatcher for the stream after `after`.
async fn poll(
    state: &ApiState,
    client: &str,
    stream: Stream,
    after: Option<Cursor>,
    ack: bool,
    max: usize,
    wait: Duration,
) -> Result<Page, ApiError> {
    let (tx, rx) = oneshot::channel();
    let item = Request::Poll {
        client: client.to_string(),
        stream,
        after,
        ack,
        max,
        wait: !wait.is_zero(),
        reply: tx,
    };
    // Boxed: a long-poll's future is held for its whole wait, and should not keep room for
    // the hand-over (the request and the channel's send) that is over before the wait begins.
    Box::pin(state.hand_over(item)).await?;
    let _open = state.metrics.poll_opened();
    // Without a wait the dispatcher answers at once (empty or not); the limit is a safety net.
    let limit = if wait.is_zero() {
        Duration::from_secs(5)
    } else {
        wait
    };
    match tokio::time::timeout(limit, rx).await {
        Ok(Ok(v)) => Ok(v),
        // The dispatcher dropped the poll: a failed commit (the acknowledgement did not hold).
        Ok(Err(_)) => Err(ApiError::unavailable(
            "the node could not serve the poll; retry",
        )),
        Err(_) => Ok(Page {
            cursor: after.unwrap_or_default(),
            deliveries: Vec::new(),
        }),
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

/// A long-poll of `stream` for `caller` (`GET /v1/inbox` and `/v1/receipts`).
pub(super) async fn read_stream(
    state: Arc<ApiState>,
    caller: Caller,
    q: PollQuery,
    stream: Stream,
) -> Result<Response, ApiError> {
    let who = caller.require(Role::Client)?;
    let cursor = parse_cursor(q.cursor.as_deref())?;
    // A longer wait than the node allows is shortened to its `max_wait_s`, not refused: the
    // client only learns sooner that nothing came.
    let wait = number(&q.wait, "wait", 0, 0..=u64::MAX)?.min(state.max_wait.as_secs());
    let max = number(&q.max, "max", 100, 1..=MAX_POLL as u64)? as usize;
    let _slot = state.streams.open(&who.name)?;
    let got = poll(
        &state,
        &who.name,
        stream,
        cursor,
        cursor.is_some_and(|c| !c.is_start()),
        max,
        Duration::from_secs(wait),
    )
    .await?;
    Ok(page(&got))
}

/// `GET /v1/inbox`.
pub async fn inbox(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    read_stream(state, caller, q, Stream::Commands).await
}

/// `GET /v1/receipts`.
pub async fn receipts(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<PollQuery>,
) -> Result<Response, ApiError> {
    read_stream(state, caller, q, Stream::Receipts).await
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
    let client = who.name;
    let events = stream::unfold(
        (
            state,
            (client, slot),
            cursor,
            cursor.is_some_and(|c| !c.is_start()),
            Vec::<Delivery>::new(),
        ),
        |(state, (client, slot), mut after, ack, mut queued)| async move {
            loop {
                if let Some(d) = (!queued.is_empty()).then(|| queued.remove(0)) {
                    let event = Event::default()
                        .id(d.cursor.to_string())
                        .event("message")
                        .data(String::from_utf8_lossy(&d.body));
                    let next = (state, (client, slot), Some(d.cursor), false, queued);
                    return Some((Ok(event), next));
                }
                let wait = Duration::from_secs(25);
                match poll(&state, &client, Stream::Commands, after, ack, 100, wait).await {
                    Ok(got) => {
                        // Where a reader without a cursor now stands.
                        after = Some(got.cursor);
                        queued = got.deliveries;
                    }
                    Err(_) => return None,
                }
            }
        },
    );
    Ok(Sse::new(events).keep_alive(KeepAlive::new().interval(Duration::from_secs(15))))
}
