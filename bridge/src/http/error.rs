//! API errors: a status, a stable machine-readable code, a message for people, and the
//! offending field when there is one. Every refusal of the HTTP API goes through here, so the
//! body is always JSON of the same shape.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

/// An error answer.
#[derive(Debug, Serialize)]
pub struct ApiError {
    #[serde(skip)]
    status: StatusCode,
    /// Stable code, e.g. `malformed`, `unauthorized`, `unknown_target`.
    pub code: &'static str,
    /// What went wrong, in words.
    pub message: String,
    /// The field at fault, e.g. `messages[2].to.node`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub field: Option<String>,
    /// Ids of the batch's messages that were accepted before the failure (never resend those).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub accepted: Vec<String>,
    /// What a 401 challenges with: `Basic` unless said otherwise (a refused Bearer token,
    /// the console's session).
    #[serde(skip)]
    challenge: &'static str,
}

impl ApiError {
    /// An error with `status`, `code` and `message`.
    pub fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            message: message.into(),
            field: None,
            accepted: Vec::new(),
            challenge: "Basic realm=\"medlink\"",
        }
    }

    /// Names the field at fault.
    pub fn field(mut self, field: impl Into<String>) -> Self {
        self.field = Some(field.into());
        self
    }

    /// Lists what was accepted before the failure.
    pub fn accepted(mut self, ids: Vec<String>) -> Self {
        self.accepted = ids;
        self
    }

    /// 400 `malformed`.
    pub fn malformed(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "malformed", message)
    }

    /// 401 `unauthorized`.
    pub fn unauthorized(message: impl Into<String>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, "unauthorized", message)
    }

    /// 401 `unauthorized` for a refused device token, with
    /// `WWW-Authenticate: Bearer error="invalid_token"`.
    pub fn invalid_token(message: impl Into<String>) -> Self {
        ApiError {
            challenge: "Bearer error=\"invalid_token\"",
            ..Self::unauthorized(message)
        }
    }

    /// 401 `unauthorized` for the console: its challenge names the login page, so a
    /// browser's `fetch` never raises a password dialog.
    pub fn console_login(message: impl Into<String>) -> Self {
        ApiError {
            challenge: "Session realm=\"medlink console\", login=\"/console\"",
            ..Self::unauthorized(message)
        }
    }

    /// 403 `forbidden`.
    pub fn forbidden(message: impl Into<String>) -> Self {
        Self::new(StatusCode::FORBIDDEN, "forbidden", message)
    }

    /// 503 `unavailable`: the node could not take custody.
    pub fn unavailable(message: impl Into<String>) -> Self {
        Self::new(StatusCode::SERVICE_UNAVAILABLE, "unavailable", message)
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let status = self.status;
        let challenge = self.challenge;
        let body = serde_json::to_vec(&self).expect("errors always serialise");
        let mut resp = (status, body).into_response();
        let headers = resp.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        match status {
            StatusCode::UNAUTHORIZED => {
                headers.insert(
                    header::WWW_AUTHENTICATE,
                    HeaderValue::from_static(challenge),
                );
            }
            StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
            }
            _ => {}
        }
        resp
    }
}
