//! What travels: the envelope a node delivers, as the application sees it, and the submission
//! the SDK sends. The wire format is `topics.md`; this mirrors it without depending on the
//! node's crates, so an application links only this crate.

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::Error;

/// A message id (a ULID when chosen by the SDK or a node).
pub type MessageId = String;

/// A client at a node: where commands go and where they come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Address {
    /// Dotted node id, e.g. `js.nj`.
    pub node: String,
    /// Client identity at that node.
    pub client: String,
}

impl Address {
    /// `client` at `node`.
    pub fn new(node: impl Into<String>, client: impl Into<String>) -> Self {
        Address {
            node: node.into(),
            client: client.into(),
        }
    }
}

impl std::fmt::Display for Address {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.client)
    }
}

/// Command or receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Kind {
    /// A command from an application.
    Cmd,
    /// A receipt from a node about a command this client sent.
    Receipt,
}

/// One hop of custody.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hop {
    /// Node that took custody.
    pub node: String,
    /// When, Unix ms.
    pub at: u64,
}

/// How urgent a command is. On the wire `"urgent"`, `"normal"`, `"bulk"`; `Normal` is the
/// default and is not written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Ahead of everything else (e.g. a stroke alert).
    Urgent,
    /// Ordinary traffic.
    #[default]
    Normal,
    /// Behind everything else (e.g. nightly statistics).
    Bulk,
}

/// A positive receipt the sender may ask for (failures — `expired`, `rejected`, `failed` —
/// always come). On the wire `"accepted"`, `"delivered"`, `"replied"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ReceiptKind {
    /// The first node took custody.
    Accepted,
    /// The target's node handed it to the target.
    Delivered,
    /// The target replied.
    Replied,
}

/// A message as delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Id, unique per sender.
    pub id: MessageId,
    /// Command or receipt.
    #[serde(default = "default_kind")]
    pub kind: Kind,
    /// Sender, stamped by its node from the login.
    pub from: Address,
    /// Target.
    pub to: Address,
    /// Command name (`receipt` for receipts).
    pub cmd: String,
    /// Parameters, any JSON.
    #[serde(default)]
    pub params: Value,
    /// The command this one answers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<MessageId>,
    /// The service group the sender answered for (its node checked the membership): a
    /// [`Client::request`](crate::Client::request) to a service accepts replies from the
    /// service's members this way.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub as_service: Option<String>,
    /// When the first node accepted it, Unix ms.
    pub created_at: u64,
    /// When it expires, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Priority class.
    #[serde(default)]
    pub priority: Priority,
    /// Custody hops, first node first.
    #[serde(default)]
    pub trail: Vec<Hop>,
}

fn default_kind() -> Kind {
    Kind::Cmd
}

impl Message {
    /// For a receipt: its status (`rejected`, `failed`, `expired`, ...).
    pub fn receipt_status(&self) -> Option<&str> {
        (self.kind == Kind::Receipt)
            .then(|| self.params.get("status").and_then(Value::as_str))
            .flatten()
    }

    /// For a receipt: the id of the command it is about.
    pub fn receipt_for(&self) -> Option<&str> {
        (self.kind == Kind::Receipt)
            .then(|| self.params.get("ref").and_then(Value::as_str))
            .flatten()
    }

    /// For a receipt: its parameters, typed. `None` for commands.
    pub fn receipt(&self) -> Option<Receipt> {
        if self.kind != Kind::Receipt {
            return None;
        }
        let text = |k: &str| self.params.get(k).and_then(Value::as_str).map(String::from);
        Some(Receipt {
            status: ReceiptStatus::from_wire(&text("status").unwrap_or_default()),
            about: text("ref").unwrap_or_default(),
            cmd: text("cmd").unwrap_or_default(),
            to: self
                .params
                .get("to")
                .and_then(|v| serde_json::from_value(v.clone()).ok()),
            reason: text("reason"),
            by: text("by"),
        })
    }
}

/// What a receipt says about a command the application sent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ReceiptStatus {
    /// The first node took custody (asked for with [`ReceiptKind::Accepted`]).
    Accepted,
    /// The target's node handed it to the target (asked for with [`ReceiptKind::Delivered`]).
    Delivered,
    /// The target replied (asked for with [`ReceiptKind::Replied`]).
    Replied,
    /// It expired before delivery.
    Expired,
    /// The first node refused it (invalid, forged sender, over the rate).
    Rejected,
    /// No route to the target.
    Failed,
    /// A status this SDK does not know yet (a newer node).
    Other(String),
}

impl ReceiptStatus {
    /// From the wire string.
    pub fn from_wire(s: &str) -> Self {
        match s {
            "accepted" => ReceiptStatus::Accepted,
            "delivered" => ReceiptStatus::Delivered,
            "replied" => ReceiptStatus::Replied,
            "expired" => ReceiptStatus::Expired,
            "rejected" => ReceiptStatus::Rejected,
            "failed" => ReceiptStatus::Failed,
            other => ReceiptStatus::Other(other.to_string()),
        }
    }

    /// The wire string.
    pub fn as_wire(&self) -> &str {
        match self {
            ReceiptStatus::Accepted => "accepted",
            ReceiptStatus::Delivered => "delivered",
            ReceiptStatus::Replied => "replied",
            ReceiptStatus::Expired => "expired",
            ReceiptStatus::Rejected => "rejected",
            ReceiptStatus::Failed => "failed",
            ReceiptStatus::Other(s) => s,
        }
    }

    /// Whether the command will never reach its target.
    pub fn is_failure(&self) -> bool {
        matches!(
            self,
            ReceiptStatus::Expired | ReceiptStatus::Rejected | ReceiptStatus::Failed
        )
    }
}

impl std::fmt::Display for ReceiptStatus {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_wire())
    }
}

/// A receipt's parameters (the wire keys `status`, `ref`, `cmd`, `to`, `reason`, `by`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// What happened.
    pub status: ReceiptStatus,
    /// The id of the command it is about (`ref`; empty if the node could not read one).
    pub about: MessageId,
    /// That command's `cmd`.
    pub cmd: String,
    /// That command's target.
    pub to: Option<Address>,
    /// Why, in words (for failures).
    pub reason: Option<String>,
    /// The node that issued it.
    pub by: Option<String>,
}

/// The longest id a node accepts.
const MAX_ID: usize = 64;

/// Checks an id the way the node does (1–64 of `A-Z a-z 0-9 - _ . :`), so a bad one fails
/// at the caller instead of as a rejection later.
pub(crate) fn check_id(id: &str) -> Result<(), Error> {
    let ok = !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    if ok {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "id '{id}': 1-{MAX_ID} characters of A-Z a-z 0-9 - _ . :"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_checked_like_the_node_does() {
        assert!(check_id("t3-20261122-0042:a.b_c").is_ok());
        assert!(check_id("").is_err());
        assert!(check_id("a/b").is_err());
        assert!(check_id(&"x".repeat(65)).is_err());
    }

    #[test]
    fn receipts_parse() {
        let m: Message = serde_json::from_value(serde_json::json!({
            "id": "r1", "kind": "receipt", "from": {"node": "js", "client": "$medlink"},
            "to": {"node": "js", "client": "a"}, "cmd": "receipt",
            "params": {"status": "failed", "ref": "x1", "cmd": "c", "reason": "no client",
                       "by": "js", "to": {"node": "js", "client": "nobody"}},
            "created_at": 1, "priority": "urgent"
        }))
        .unwrap();
        assert_eq!(m.priority, Priority::Urgent);
        let r = m.receipt().unwrap();
        assert_eq!(r.status, ReceiptStatus::Failed);
        assert!(r.status.is_failure());
        assert_eq!(r.about, "x1");
        assert_eq!(r.to, Some(Address::new("js", "nobody")));
        assert_eq!(m.receipt_status(), Some("failed"));
    }
}
