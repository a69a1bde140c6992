//! What the application configures: how to reach its node ([`Options`]) and how one command
//! travels ([`SendOptions`]). Kept apart from the client so the knobs are documented in one
//! place.

use std::path::PathBuf;
use std::time::Duration;

use medlink_wire::{FileRef, Submission};
use serde_json::Value;

use crate::message::{Address, MessageId, Priority, ReceiptKind};

/// How to reach the node and as whom.
///
/// ```
/// let opts = medlink_sdk::Options {
///     url: "https://township.example:8443".into(),
///     node: "js.nj.gulou.t3".into(),
///     identity: "clinic-t3".into(),
///     password: "secret".into(),
///     ca: Some("ca.crt".into()),
///     ..Default::default()
/// };
/// assert!(opts.outbox.is_none());
/// ```
#[derive(Clone, Default)]
pub struct Options {
    /// The node: `mqtt://host:port` / `mqtts://host:port` to speak MQTT directly, or
    /// `http://host:port` / `https://host:port` (the node's HTTP API) to let the node decide the
    /// transport (`GET /v1/transport`): MQTT over TCP/TLS, MQTT over WebSocket (`ws`/`wss`), or
    /// HTTP. Clear-text schemes are for loopback and tests.
    pub url: String,
    /// The node's id (the application's address is `node`/`identity`).
    pub node: String,
    /// The application's identity.
    pub identity: String,
    /// Its password.
    pub password: String,
    /// CA certificate (PEM) the node's certificate must chain to; required for `mqtts`,
    /// `https` and `wss` (no system roots are compiled in).
    pub ca: Option<PathBuf>,
    /// A local SQLite file for sends (see the crate docs, "Outbox"): when set, every send is
    /// written there first and survives the node being unreachable and the application
    /// restarting. One client at a time may use a file.
    pub outbox: Option<PathBuf>,
    /// How long [`Client::connect`](crate::Client::connect) waits for the first session when
    /// there is no outbox (default 15 s).
    pub connect_timeout: Option<Duration>,
    /// Take only the replies (and failure receipts) of this client's own
    /// [`Client::request`](crate::Client::request)s, and leave every other command and
    /// receipt with the node, unacknowledged, for the identity's receiving devices. For
    /// short-lived senders (`medlink send`, scripts) that are not one of those devices: a
    /// client that reads nothing must not take anything.
    pub replies_only: bool,
    /// The node's HTTP API for files ([`Files`](crate::Files)), when `url` is not it (an
    /// `mqtt(s)://` URL): `https://host:port`.
    pub files_url: Option<String>,
}

impl std::fmt::Debug for Options {
    // Written by hand so the password never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Options")
            .field("url", &self.url)
            .field("node", &self.node)
            .field("identity", &self.identity)
            .field("password", &"<redacted>")
            .field("ca", &self.ca)
            .field("outbox", &self.outbox)
            .field("connect_timeout", &self.connect_timeout)
            .field("replies_only", &self.replies_only)
            .field("files_url", &self.files_url)
            .finish()
    }
}

/// Options of one send ([`Client::send_with`](crate::Client::send_with)). The defaults are
/// what [`Client::send`](crate::Client::send) uses.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SendOptions {
    /// Scheduling class (sent only when not `Normal`).
    pub priority: Priority,
    /// Give up on delivery after this long from acceptance (an `expired` receipt follows).
    pub ttl: Option<Duration>,
    /// Positive receipts wanted (sent only when non-empty).
    pub receipts: Vec<ReceiptKind>,
    /// The id to use (1–64 of `A-Z a-z 0-9 - _ . :`), e.g. derived from a business key so a
    /// resend after an application crash is recognised by the node. Default: a new ULID.
    pub id: Option<MessageId>,
    /// Files the command refers to, uploaded to the node's file store first (`/v1/files`).
    pub files: Vec<FileRef>,
}

impl SendOptions {
    /// The JSON body of one submission (`topics.md`, "the outbox") sent with these options; `reply` is the id answered
    /// and the service answered for, if any.
    pub(crate) fn submission(
        &self,
        id: &str,
        to: &Address,
        cmd: &str,
        params: &Value,
        reply: Option<(&str, Option<&str>)>,
    ) -> Vec<u8> {
        let ttl_ms = self
            .ttl
            .map(|t| u64::try_from(t.as_millis()).unwrap_or(u64::MAX).max(1));
        // Normal is the default and is not written; the node refuses unknown keys, so only
        // what is set goes out.
        let body = Submission {
            id: Some(id.to_string()),
            from: None,
            to: to.clone(),
            cmd: cmd.to_string(),
            params: Some(params),
            reply_to: reply.map(|(id, _)| id.to_string()),
            as_service: reply.and_then(|(_, service)| service).map(str::to_string),
            ttl_ms,
            expires_at: None,
            priority: (self.priority != Priority::Normal).then_some(self.priority),
            receipts: self.receipts.clone(),
            files: self.files.clone(),
        };
        serde_json::to_vec(&body).unwrap_or_else(|e| {
            unreachable!("a submission of strings and a JSON value always serialises: {e}")
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn defaults_stay_off_the_wire() {
        let to = Address::new("js", "b");
        let body = SendOptions::default().submission("x1", &to, "c", &Value::Null, None);
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"id": "x1", "to": {"node": "js", "client": "b"}, "cmd": "c", "params": null})
        );
        let opts = SendOptions {
            priority: Priority::Urgent,
            ttl: Some(Duration::from_secs(2)),
            receipts: vec![ReceiptKind::Delivered, ReceiptKind::Replied],
            id: None,
            files: Vec::new(),
        };
        let body = opts.submission("x2", &to, "c", &Value::Null, Some(("r", None)));
        // The bytes the node has always been sent, in this order.
        assert_eq!(
            std::str::from_utf8(&body).unwrap(),
            r#"{"id":"x2","to":{"node":"js","client":"b"},"cmd":"c","params":null,"reply_to":"r","ttl_ms":2000,"priority":"urgent","receipts":["delivered","replied"]}"#
        );
        let v: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(v["priority"], "urgent");
        assert_eq!(v["ttl_ms"], 2000);
        assert_eq!(v["receipts"], serde_json::json!(["delivered", "replied"]));
        assert_eq!(v["reply_to"], "r");
    }
}
