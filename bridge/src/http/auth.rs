//! Who an HTTP request is: HTTP Basic credentials (the same identities and passwords as MQTT),
//! a device token (`Authorization: Bearer <JWT>`, checked against the node's token keys as an
//! MQTT token password is), or the verified client certificate of an HTTPS connection. Failed
//! attempts go through the same throttle as MQTT logins.
//!
//! Every endpoint that takes a login goes through [`Caller`], so a token works on all of them:
//! POST, long-polls, acknowledgements, the event stream `/v1/stream` (and so `/push`). A
//! refused token is answered 401 with the API's JSON error body and
//! `WWW-Authenticate: Bearer error="invalid_token"` (RFC 6750 §3.1).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, StatusCode};
use base64::Engine;
use medlink_broker::auth::TokenLoginError;
use medlink_broker::identity::LoginError;
use medlink_broker::token::Refusal;
use medlink_broker::{Identity, Role};

use super::error::ApiError;
use super::ApiState;

/// The common name of the client certificate the TLS layer verified for this connection.
#[derive(Debug, Clone)]
pub struct PeerCertificate(pub Option<String>);

/// The authenticated caller of a request (an extractor: a handler that takes it only runs
/// for a request that logged in).
pub struct Caller(pub Identity);

impl Caller {
    /// The identity, if it has `role`; 403 otherwise.
    pub fn require(self, role: Role) -> Result<Identity, ApiError> {
        if self.0.role != role {
            return Err(ApiError::forbidden(format!(
                "identity '{}' is a {}; this endpoint is for a {role}",
                self.0.name, self.0.role
            )));
        }
        Ok(self.0)
    }
}

#[axum::async_trait]
impl FromRequestParts<Arc<ApiState>> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(
        parts: &mut Parts,
        state: &Arc<ApiState>,
    ) -> Result<Self, Self::Rejection> {
        let peer = parts.extensions.get::<ConnectInfo<SocketAddr>>().cloned();
        let certificate = parts.extensions.get::<PeerCertificate>().cloned();
        // Boxed: a handler's future is as large as its largest state, and a login's state
        // (token decoding, the throttle) would otherwise stay reserved in every long-poll for
        // its whole wait.
        Box::pin(identify(
            state,
            &parts.headers,
            peer.as_ref(),
            certificate.as_ref(),
        ))
        .await
        .map(Caller)
    }
}

/// Authenticates a request.
async fn identify(
    state: &ApiState,
    headers: &HeaderMap,
    peer: Option<&ConnectInfo<SocketAddr>>,
    certificate: Option<&PeerCertificate>,
) -> Result<Identity, ApiError> {
    let ip = peer
        .map(|c| c.0.ip())
        .unwrap_or(std::net::IpAddr::from([127, 0, 0, 1]));
    let (user, password) = match headers.get(header::AUTHORIZATION) {
        Some(value) => {
            let value = value
                .to_str()
                .map_err(|_| ApiError::unauthorized("Authorization header is not text"))?;
            // Auth schemes are case-insensitive (RFC 9110 §11.1): `basic` is `Basic`.
            let (scheme, rest) = value.split_once(' ').unwrap_or((value, ""));
            if scheme.eq_ignore_ascii_case("bearer") {
                return bearer(state, ip, rest.trim()).await;
            }
            let encoded = Some(rest)
                .filter(|_| scheme.eq_ignore_ascii_case("basic"))
                .ok_or_else(|| {
                    ApiError::unauthorized(
                        "use HTTP Basic, a Bearer device token, or a client certificate",
                    )
                })?;
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(encoded.trim())
                .map_err(|_| ApiError::unauthorized("Basic credentials are not base64"))?;
            let text = String::from_utf8(decoded)
                .map_err(|_| ApiError::unauthorized("Basic credentials are not UTF-8"))?;
            let (u, p) = text
                .split_once(':')
                .ok_or_else(|| ApiError::unauthorized("Basic credentials need user:password"))?;
            (Some(u.to_string()), Some(p.to_string()))
        }
        None => (None, None),
    };
    let cert = certificate.and_then(|c| c.0.as_deref());
    if user.is_none() && cert.is_none() {
        return Err(ApiError::unauthorized(
            "credentials required (HTTP Basic, a Bearer device token, or a client certificate)",
        ));
    }
    let identity = state
        .auth
        .login(
            ip,
            user.as_deref(),
            password.as_deref().map(str::as_bytes),
            cert,
        )
        .await
        .map_err(|e| match e {
            LoginError::Throttled => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "too many recent login attempts for this identity or address; retry later",
            ),
            _ => ApiError::unauthorized("bad username, password or certificate"),
        })?;
    Ok(identity)
}

/// Authenticates a request by its device token.
async fn bearer(state: &ApiState, ip: std::net::IpAddr, token: &str) -> Result<Identity, ApiError> {
    state
        .auth
        .login_token(ip, token.as_bytes())
        .await
        .map_err(|e| match e {
            TokenLoginError::Throttled => ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "throttled",
                "too many recent login attempts for this identity or address; retry later",
            ),
            // The device may renew an expired token by itself; other causes are in the node's
            // log, not told to whoever holds the token.
            TokenLoginError::Refused(Refusal::Expired) => {
                ApiError::invalid_token("the device token expired")
            }
            TokenLoginError::Refused(_) => ApiError::invalid_token("the device token was refused"),
        })
}
