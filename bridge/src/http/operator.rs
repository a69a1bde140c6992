//! The operators' endpoints (admin identities only): dead letters, re-sending and purging
//! them, and the operator log (`medlink deadletters` and the console call these).

use std::sync::Arc;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::Json;
use medlink_broker::Role;
use medlink_wire::{DeadLetterIds, DeadLetterQuery, MAX_LISTED};
use serde::Deserialize;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::dispatcher::{Operation, OperatorRequest, Request};

/// Hands `op` to the dispatcher as `caller` (who must be an admin); answers with its JSON.
async fn operate(state: &ApiState, caller: Caller, op: Operation) -> Result<Response, ApiError> {
    let who = caller.require(Role::Admin)?;
    let (req, rx) = OperatorRequest::new(who.name, op);
    state.hand_over(Request::Operator(req)).await?;
    let answer = rx
        .await
        .map_err(|_| ApiError::unavailable("the request was not committed; retry"))?;
    let json = answer.into_json().map_err(ApiError::unavailable)?;
    Ok(Json(json).into_response())
}

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(q)| q)
        .map_err(|e| ApiError::malformed(e.body_text()))
}

/// `GET /v1/deadletters?reason=&client=&node=&cmd=&id=&since=&limit=`: newest first.
pub async fn list(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    q: Result<Query<DeadLetterQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let q = query(q)?;
    q.check().map_err(refused)?;
    operate(&state, caller, Operation::DeadLetters(q)).await
}

/// The ids of a re-send or purge body, at most [`MAX_LISTED`].
fn ids(body: &[u8]) -> Result<Vec<String>, ApiError> {
    let ids: DeadLetterIds = serde_json::from_slice(body).map_err(|e| {
        ApiError::malformed(format!("expected {{\"ids\": [\"…\"]}}: {e}")).field("ids")
    })?;
    if ids.ids.is_empty() || ids.ids.len() > MAX_LISTED {
        return Err(ApiError::malformed(format!("ids: give 1 to {MAX_LISTED} ids")).field("ids"));
    }
    Ok(ids.ids)
}

/// `POST /v1/deadletters/resend` `{"ids": [...]}`: each becomes a new command (a new id)
/// from its original sender, linked to the dead letter and written in the operator log.
pub async fn resend(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let ids = ids(&body)?;
    operate(&state, caller, Operation::Resend(ids)).await
}

/// `POST /v1/deadletters/purge` `{"ids": [...]}`: forgets them (written in the operator log).
pub async fn purge(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    body: bytes::Bytes,
) -> Result<Response, ApiError> {
    let ids = ids(&body)?;
    operate(&state, caller, Operation::Purge(ids)).await
}

/// Query of `GET /v1/operator/log`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogQuery {
    /// Most lines (default 100).
    limit: Option<usize>,
}

/// `GET /v1/operator/log?limit=`: what operators did here, newest first.
pub async fn log(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    q: Result<Query<LogQuery>, QueryRejection>,
) -> Result<Response, ApiError> {
    let limit = query(q)?.limit;
    medlink_wire::check_limit(limit).map_err(refused)?;
    let limit = limit.unwrap_or(100);
    operate(&state, caller, Operation::Log { limit }).await
}

fn refused(e: medlink_wire::FieldError) -> ApiError {
    ApiError::malformed(format!("{}: {}", e.field, e.problem)).field(e.field)
}
