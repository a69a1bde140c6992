//! What a console asks of a node of its subtree, and what comes back. A question travels down
//! the tree in `ask` link frames to the node it names (or to every node, for a search) and
//! the answers come up in `answer` frames, so an operator at the root reaches a township
//! without logging in there.

use medlink_wire::DeadLetterQuery;
use serde::{Deserialize, Serialize};
use serde_json::Value;

/// A question for one node.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case", deny_unknown_fields)]
pub enum Op {
    /// Where a command went (by `id`), or the routing decisions matching the filters.
    Journey {
        /// One command's id: its events (audit, queues, trails).
        #[serde(default)]
        id: Option<String>,
        /// Sender or target client.
        #[serde(default)]
        client: Option<String>,
        /// Sender or target node, or one below it.
        #[serde(default)]
        node: Option<String>,
        /// Command name.
        #[serde(default)]
        cmd: Option<String>,
        /// At or after this time (Unix ms).
        #[serde(default)]
        since: Option<u64>,
    },
    /// The queues with the oldest commands first in line, per group and lane, with the first
    /// few commands of each (params left out).
    Queues,
    /// One waiting command with its params. Written in the operator log of the node asked.
    Reveal {
        /// The queue it waits in (a journal destination, as `Queues` names it).
        queue: String,
        /// Its id.
        id: String,
        /// Who asks (`name@node` of the console).
        operator: String,
    },
    /// Dead letters.
    DeadLetters {
        /// Which.
        #[serde(default)]
        query: DeadLetterQuery,
    },
    /// Re-send dead letters.
    Resend {
        /// Their ids.
        ids: Vec<String>,
        /// Who asks.
        operator: String,
    },
    /// Forget dead letters.
    Purge {
        /// Their ids.
        ids: Vec<String>,
        /// Who asks.
        operator: String,
    },
    /// The operator log.
    Log,
}

/// One node's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Reply {
    /// The node that answered (or that did not answer in time).
    pub node: String,
    /// What it found.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<Value>,
    /// Why there is nothing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Reply {
    /// `node` found `value`.
    pub fn ok(node: &str, value: Value) -> Reply {
        Reply {
            node: node.to_string(),
            ok: Some(value),
            error: None,
        }
    }

    /// `node` could not answer.
    pub fn error(node: &str, error: impl Into<String>) -> Reply {
        Reply {
            node: node.to_string(),
            ok: None,
            error: Some(error.into()),
        }
    }
}
