//! What operators see and do through the API (`/v1/deadletters`, `/v1/operator/log`), the
//! one definition the node answers with and `medlink deadletters` reads.
//!
//! A *dead letter* is a command that ended `failed`, `expired` or `rejected` at a node. The
//! node keeps it, its envelope and why it ended, for a retention time, so that an operator can
//! look at it and re-send it once the cause is fixed. A re-send is a new command (a new id),
//! linked to the original in the dead letter (`resent_as`, `resent_by`) and in the operator
//! log.

use serde::{Deserialize, Serialize};

use crate::names::wire_names;
use crate::{Address, FieldError, MAX_CLIENT, MAX_CMD, MAX_ID, MAX_NODE_ID};

/// Why a command ended without reaching its target.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeadReason {
    /// No route to its target (unknown node or client, hop limit).
    Failed,
    /// Its time passed before delivery.
    Expired,
    /// The first node refused the submission (invalid, not a member of `as_service`).
    Rejected,
}

wire_names!(DeadReason, UnknownDeadReason, "dead-letter reason" {
    Failed => "failed",
    Expired => "expired",
    Rejected => "rejected",
});

/// One dead letter. `P` is the envelope: raw JSON at the node, a JSON value in readers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeadLetter<P> {
    /// The command's id.
    pub id: String,
    /// When it ended (Unix ms).
    pub at: u64,
    /// Why.
    pub reason: DeadReason,
    /// The words of its negative receipt.
    pub detail: String,
    /// The node where it ended (the node answering).
    pub node: String,
    /// Its sender.
    pub from: Address,
    /// Its target (empty names for a submission too broken to read one from).
    pub to: Address,
    /// Its `cmd`.
    pub cmd: String,
    /// The envelope as it ended; for a rejected submission, what the client sent (a string
    /// when it was not JSON).
    pub envelope: P,
    /// The id of the command that re-sent it, once re-sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent_as: Option<String>,
    /// The operator who re-sent it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent_by: Option<String>,
}

/// `GET /v1/deadletters`: which dead letters to list, newest first.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterQuery {
    /// Only this reason.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<DeadReason>,
    /// Only commands from or to this client name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub client: Option<String>,
    /// Only commands to or from this node.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// Only this `cmd`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmd: Option<String>,
    /// Only this id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Only those that ended at or after this time (Unix ms).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<u64>,
    /// Most to list (default 100, at most [`MAX_LISTED`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<usize>,
}

/// The most dead letters one listing returns.
pub const MAX_LISTED: usize = 1000;

impl DeadLetterQuery {
    /// Refuses values no dead letter can match, naming the field (as the API documents).
    pub fn check(&self) -> Result<(), FieldError> {
        check_limit(self.limit)?;
        if self.since.is_some_and(|s| s > i64::MAX as u64) {
            return Err(FieldError::new("since", "beyond any time (Unix ms)"));
        }
        for (field, value, max) in [
            ("client", &self.client, MAX_CLIENT),
            ("node", &self.node, MAX_NODE_ID),
            ("cmd", &self.cmd, MAX_CMD),
            ("id", &self.id, MAX_ID),
        ] {
            if value.as_ref().is_some_and(|v| v.len() > max) {
                return Err(FieldError::new(field, format!("longer than {max} bytes")));
            }
        }
        Ok(())
    }
}

/// Refuses a `limit` above [`MAX_LISTED`].
pub fn check_limit(limit: Option<usize>) -> Result<(), FieldError> {
    match limit {
        Some(n) if n > MAX_LISTED => Err(FieldError::new("limit", format!("at most {MAX_LISTED}"))),
        _ => Ok(()),
    }
}

/// `POST /v1/deadletters/resend` and `/v1/deadletters/purge`: the dead letters to act on.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeadLetterIds {
    /// Their ids (at most [`MAX_LISTED`]).
    pub ids: Vec<String>,
}

/// What happened to one dead letter an operator acted on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Outcome {
    /// The dead letter's id.
    pub id: String,
    /// Re-sent: the new command's id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resent_as: Option<String>,
    /// Not done, and why (no such dead letter, already re-sent, refused again).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// One line of the operator log: who did what to which command or queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OperatorAction {
    /// When (Unix ms).
    pub at: u64,
    /// The operator's identity.
    pub operator: String,
    /// `reveal`, `resend` or `purge`.
    pub action: String,
    /// The command id (or queue) acted on.
    pub target: String,
    /// More: the re-sent command's id, the node, the reason.
    pub detail: String,
}
