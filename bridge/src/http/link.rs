//! Tier links over HTTP, for a child node whose site passes only HTTP(S): it POSTs its frames
//! up (answered after the parent committed what they carried, like the MQTT PUBACK) and
//! long-polls for the frames coming down. The frames, sequence numbers, acknowledgements and
//! heartbeats are exactly those of the MQTT link (`bridge/src/frame.rs`), so custody and
//! de-duplication are the same whichever transport carries them.

use std::sync::Arc;
use std::time::Duration;

use axum::extract::{Query, State};
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use medlink_broker::{Accept, Role};

use crate::dispatcher::Request;
use serde::Deserialize;
use tokio::sync::oneshot;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

/// `POST /v1/link/up`: one frame from the calling child.
pub async fn up(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller.require(Role::Node)?;
    let (tx, rx) = oneshot::channel();
    let item = Request::LinkFrame {
        child: who.name.clone(),
        payload: body,
        reply: tx,
    };
    state.hand_over(item).await?;
    match rx.await.unwrap_or(Accept::Unavailable) {
        Accept::Committed => Ok(axum::Json(serde_json::json!({"ok": true})).into_response()),
        // As for `link/down`: a node identity that is not a child here.
        Accept::NotAuthorized => Err(ApiError::forbidden(format!(
            "'{}' is not a child node of this node",
            who.name
        ))),
        Accept::Rejected(why) => Err(ApiError::new(StatusCode::BAD_REQUEST, "invalid", why)),
        _ => Err(ApiError::unavailable(
            "the node could not commit the frame; it will be resent",
        )),
    }
}

/// Query of a down poll.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownQuery {
    /// Seconds to wait when nothing is queued.
    #[serde(default)]
    wait: Option<u64>,
}

/// `GET /v1/link/down`: the frames waiting for the calling child, as
/// `{"frames": [frame, ...]}`.
pub async fn down(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Query(q): Query<DownQuery>,
) -> Result<Response, ApiError> {
    let who = caller.require(Role::Node)?;
    let wait = Duration::from_secs(q.wait.unwrap_or(0).min(state.max_wait.as_secs()));
    let (tx, rx) = oneshot::channel();
    state
        .hand_over(Request::LinkPoll {
            child: who.name.clone(),
            reply: tx,
        })
        .await?;
    let _open = state.metrics.poll_opened();
    let frames = match tokio::time::timeout(wait.max(Duration::from_millis(1)), rx).await {
        Ok(Ok(Some(frames))) => frames,
        Ok(Ok(None)) => {
            return Err(ApiError::forbidden(format!(
                "'{}' is not a child node of this node",
                who.name
            )))
        }
        Ok(Err(_)) | Err(_) => Vec::new(),
    };
    let mut body = Vec::with_capacity(16 + frames.iter().map(|f| f.len() + 1).sum::<usize>());
    body.extend_from_slice(b"{\"frames\":[");
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            body.push(b',');
        }
        body.extend_from_slice(f);
    }
    body.extend_from_slice(b"]}");
    Ok((
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json")],
        body,
    )
        .into_response())
}
