//! `POST /v1/messages`: one command or a batch, answered 202 with the ids only once every
//! command is committed to this node's journal.
//!
//! The body is a submission object (as on the MQTT outbox), an array of them, or
//! `{"messages": [...]}`. Every submission is validated before any is handed over, so a bad
//! batch is refused whole with the index and field at fault. Retrying is safe with an `id` in
//! each submission or an `Idempotency-Key` header: the key derives the same id for the same
//! position every time, and the node accepts an id from one sender once.

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use blake2::{Blake2s256, Digest};
use bytes::Bytes;
use medlink_broker::rate::RateVerdict;
use medlink_broker::{Accept, Role};

use crate::dispatcher::Request;
use serde_json::Value;
use std::sync::Arc;
use tokio::sync::oneshot;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::envelope::{Address, Submission, MAX_PARAMS_DEPTH};

/// Most commands in one request.
pub const MAX_BATCH: usize = 1000;

/// The handler.
pub async fn post(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Response, ApiError> {
    let who = caller.require(Role::Client)?;
    let key = idempotency_key(&headers)?;
    let sender = Address {
        node: state.node_id.clone(),
        client: who.name.clone(),
    };
    // The common case, one valid submission and no key, is handed over as sent: no JSON
    // tree to build and serialise again.
    if key.is_none() {
        if let Ok(s) = Submission::parse(&body, state.limits) {
            let chosen = s.id.clone();
            if s.into_envelope(sender.clone(), String::new()).is_ok() {
                return submit(&state, &who.name, vec![(body, chosen)], false).await;
            }
        }
    }
    let (items, batch) = split(&body)?;
    // Validate everything first: a bad batch is refused whole.
    let mut payloads = Vec::with_capacity(items.len());
    for (i, mut item) in items.into_iter().enumerate() {
        let at = |f: &str| {
            if batch {
                format!("messages[{i}].{f}")
            } else {
                f.to_string()
            }
        };
        let Value::Object(map) = &mut item else {
            let at = if batch {
                format!("messages[{i}]")
            } else {
                "body".into()
            };
            return Err(ApiError::malformed("a submission must be a JSON object").field(at));
        };
        if let Some(key) = &key {
            // `"id": null` means no id, so the key's id applies (a retry must get the same).
            if map.get("id").is_none_or(Value::is_null) {
                map.insert("id".into(), Value::String(derived_id(&sender, key, i)));
            }
        }
        let bytes = serde_json::to_vec(&item).expect("a parsed JSON value serialises");
        let checked = Submission::parse(&bytes, state.limits)
            .and_then(|s| s.into_envelope(sender.clone(), String::from("x")));
        if let Err(e) = checked {
            let (status, code) = if e.too_large {
                (StatusCode::PAYLOAD_TOO_LARGE, "too_large")
            } else {
                (StatusCode::BAD_REQUEST, "invalid")
            };
            return Err(ApiError::new(status, code, e.problem.clone()).field(at(&e.field)));
        }
        let chosen = item.get("id").and_then(Value::as_str).map(str::to_string);
        payloads.push((Bytes::from(bytes), chosen));
    }
    submit(&state, &who.name, payloads, batch).await
}

/// Applies the rate, hands the validated submissions to the dispatcher and answers once every
/// verdict is in.
async fn submit(
    state: &ApiState,
    client: &str,
    payloads: Vec<(Bytes, Option<String>)>,
    batch: bool,
) -> Result<Response, ApiError> {
    for _ in 0..payloads.len() {
        if let RateVerdict::Refused { .. } = state.rate.check(client, std::time::Instant::now()) {
            medlink_broker::metrics::bump(&state.broker_metrics.rate_limited);
            let r = state.rate.settings();
            return Err(ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                format!(
                    "over {} commands per second (bursts of {}); nothing in this request was accepted",
                    r.per_second, r.burst
                ),
            ));
        }
    }
    // Hand everything over, then wait for every verdict: they come after the commit.
    let mut pending = Vec::with_capacity(payloads.len());
    for (payload, chosen) in payloads {
        let id = chosen.unwrap_or_else(|| state.next_id());
        let (tx, rx) = oneshot::channel();
        let item = Request::Submit {
            client: client.to_string(),
            payload,
            id: id.clone(),
            reply: tx,
        };
        state.hand_over(item).await?;
        pending.push((id, rx));
    }
    let mut accepted = Vec::with_capacity(pending.len());
    for (i, (id, rx)) in pending.into_iter().enumerate() {
        let at = |f: &str| {
            if batch {
                format!("messages[{i}].{f}")
            } else {
                f.to_string()
            }
        };
        let refusal = match rx.await.unwrap_or(Accept::Unavailable) {
            Accept::Committed => {
                accepted.push(id);
                continue;
            }
            Accept::Unroutable(why) => {
                ApiError::new(StatusCode::NOT_FOUND, "unknown_target", why).field(at("to"))
            }
            Accept::Rejected(why) => {
                // The dispatcher's refusals start with the field at fault (`files[0].sha256: …`).
                let field = why
                    .split_once(": ")
                    .map(|(f, _)| f)
                    .filter(|f| !f.is_empty() && !f.contains(' '))
                    .map(at);
                let e = ApiError::new(StatusCode::BAD_REQUEST, "invalid", why.clone());
                match field {
                    Some(f) => e.field(f),
                    None => e,
                }
            }
            Accept::NotAuthorized => ApiError::forbidden("not allowed to send"),
            Accept::RateLimited => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "rate_limited",
                "over the rate",
            ),
            Accept::Unavailable => {
                ApiError::unavailable("the node could not commit the command to its journal; retry")
            }
        };
        // Later items may have been committed too; say exactly which were.
        return Err(refusal.accepted(accepted));
    }
    let body = if batch {
        serde_json::json!({ "ids": accepted })
    } else {
        serde_json::json!({ "id": accepted[0], "ids": accepted })
    };
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// The submissions of a body, and whether it was a batch.
fn split(body: &[u8]) -> Result<(Vec<Value>, bool), ApiError> {
    let value: Value = serde_json::from_slice(body).map_err(|e| {
        // serde_json stops at 128 levels; only `params` can nest that deep legitimately.
        if e.to_string().contains("recursion limit") {
            ApiError::malformed(format!(
                "nests deeper than {MAX_PARAMS_DEPTH} levels of arrays and objects"
            ))
            .field("params")
        } else {
            ApiError::malformed(format!("body is not JSON: {e}")).field("body")
        }
    })?;
    let (items, batch) = match value {
        Value::Array(items) => (items, true),
        Value::Object(mut map) if map.contains_key("messages") => match map.remove("messages") {
            Some(Value::Array(items)) => {
                if let Some(extra) = map.keys().next() {
                    return Err(ApiError::malformed(format!(
                        "unknown field `{extra}` beside `messages`"
                    ))
                    .field(extra.as_str()));
                }
                (items, true)
            }
            _ => return Err(ApiError::malformed("`messages` must be an array").field("messages")),
        },
        v @ Value::Object(_) => (vec![v], false),
        _ => {
            return Err(ApiError::malformed(
                "body must be a submission object, an array of them, or {\"messages\": [...]}",
            )
            .field("body"))
        }
    };
    if items.is_empty() {
        return Err(ApiError::malformed("no messages").field("messages"));
    }
    if items.len() > MAX_BATCH {
        return Err(ApiError::malformed(format!(
            "{} messages; at most {MAX_BATCH} per request",
            items.len()
        ))
        .field("messages"));
    }
    Ok((items, batch))
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(v) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = v
        .to_str()
        .ok()
        .filter(|k| !k.is_empty() && k.len() <= 256)
        .ok_or_else(|| {
            ApiError::malformed("Idempotency-Key must be 1-256 visible characters")
                .field("Idempotency-Key")
        })?;
    Ok(Some(key.to_string()))
}

/// The id the `i`-th message of `sender`'s request with idempotency key `key` gets. The
/// sender is part of the digest, so two identities using the same key get different ids, and
/// nobody can compute another sender's ids from a key alone.
fn derived_id(sender: &Address, key: &str, i: usize) -> String {
    let mut digest = Blake2s256::new();
    for part in [&sender.node, &sender.client, key] {
        digest.update((part.len() as u64).to_le_bytes());
        digest.update(part.as_bytes());
    }
    let digest = digest.finalize();
    let hex: String = digest[..12].iter().map(|b| format!("{b:02x}")).collect();
    format!("ik.{hex}.{i}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_and_keys() {
        assert!(
            !split(br#"{"to":{"node":"a","client":"b"},"cmd":"x"}"#)
                .unwrap()
                .1
        );
        assert_eq!(split(br#"[{"cmd":"x"},{"cmd":"y"}]"#).unwrap().0.len(), 2);
        assert!(split(br#"{"messages":[{"cmd":"x"}]}"#).unwrap().1);
        assert_eq!(split(b"[]").unwrap_err().code, "malformed");
        assert_eq!(split(b"nope").unwrap_err().field.as_deref(), Some("body"));
        let a = Address {
            node: "js".into(),
            client: "a".into(),
        };
        let b = Address {
            node: "js".into(),
            client: "b".into(),
        };
        assert_eq!(derived_id(&a, "k", 3), derived_id(&a, "k", 3));
        assert_ne!(derived_id(&a, "k", 3), derived_id(&a, "k", 4));
        assert_ne!(
            derived_id(&a, "k", 3),
            derived_id(&b, "k", 3),
            "ids are per sender"
        );
        assert!(derived_id(&a, "some key", 999).len() <= 64);
    }
}
