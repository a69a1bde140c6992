//! What travels: the envelope a node delivers, as the application sees it (the wire format is
//! `topics.md`; this mirrors it without depending on the node's crates).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A message id (ULID when chosen by the SDK or a node).
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

/// A command's priority class: every hop sends urgent before normal before bulk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Ahead of everything else.
    Urgent,
    /// The default.
    #[default]
    Normal,
    /// Behind everything else.
    Bulk,
}

/// A message as delivered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Message {
    /// Id, unique per sender.
    pub id: MessageId,
    /// Command or receipt.
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
    /// When the first node accepted it, Unix ms.
    pub created_at: u64,
    /// When it expires, Unix ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<u64>,
    /// Priority class.
    #[serde(default)]
    pub priority: Priority,
    /// Custody hops.
    #[serde(default)]
    pub trail: Vec<Hop>,
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
}

/// What the SDK publishes to the outbox.
#[derive(Debug, Serialize)]
pub(crate) struct Submission<'a> {
    pub id: &'a str,
    pub to: &'a Address,
    pub cmd: &'a str,
    pub params: &'a Value,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reply_to: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub ttl_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<Priority>,
}
