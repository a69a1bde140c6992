//! `GET /v1/transport`: the server decides how each caller should connect — MQTT (over TCP or
//! TLS), MQTT over WebSocket, or HTTP — per identity (a client, or a child node), with a
//! default. Clients and child nodes ask once and follow the answer.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use medlink_wire::TransportAnswer;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;

/// A transport a caller can be told to use (the wire's [`medlink_wire::Transport`]).
pub use medlink_wire::Transport as TransportChoice;

/// The node's transport decisions and the URLs it advertises for each transport.
#[derive(Debug, Clone)]
pub struct TransportPolicy {
    /// For identities without an entry of their own.
    pub default: TransportChoice,
    /// Per identity.
    pub per_identity: HashMap<String, TransportChoice>,
    /// Advertised URL per transport (e.g. `mqtts://city.example:8883`).
    pub urls: HashMap<TransportChoice, String>,
}

impl TransportPolicy {
    /// The decision for `identity`, with its URL if one is advertised.
    pub fn decide(&self, identity: &str) -> (TransportChoice, Option<&str>) {
        let choice = self
            .per_identity
            .get(identity)
            .copied()
            .unwrap_or(self.default);
        (choice, self.urls.get(&choice).map(String::as_str))
    }
}

/// The handler: any authenticated client or node.
pub async fn decide(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
) -> Result<Response, ApiError> {
    let who = caller.0;
    let (choice, url) = state.transport.decide(&who.name);
    let url = url.map(str::to_string);
    Ok(axum::Json(TransportAnswer {
        identity: who.name,
        transport: Some(choice),
        url,
    })
    .into_response())
}
