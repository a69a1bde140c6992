//! Who a message is from and for: [`Address`] (a client at a node), and the syntax rules for
//! node ids, client names and message ids that every node enforces (`topics.md`, "the
//! outbox"). The SDK checks ids with the same rule, so a bad one fails at the caller.

use serde::{Deserialize, Serialize};

/// A message id: chosen by the client, or a ULID assigned by the SDK or the first node.
pub type MessageId = String;

/// The longest message id (`id`, `reply_to`), in bytes.
pub const MAX_ID: usize = 64;

/// The longest node id, in bytes.
pub const MAX_NODE_ID: usize = 200;

/// The longest client name (or service name), in bytes.
pub const MAX_CLIENT: usize = 128;

/// What a message id may be, in the words errors use.
pub const ID_RULE: &str = "1-64 characters of A-Z a-z 0-9 - _ . :";

/// A client at a node: where commands go and where they come from. On the wire
/// `{"node": …, "client": …}`; no other keys are allowed.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Dotted node id, e.g. `js.nj.gulou`.
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

impl Address {
    /// The same address, borrowed.
    pub fn borrowed(&self) -> AddressRef<'_> {
        AddressRef {
            node: &self.node,
            client: &self.client,
        }
    }
}

/// A client at a node, borrowed: how an [`Envelope`](crate::Envelope)'s routing fields are
/// read without copying them ([`Head`](crate::Head)).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AddressRef<'a> {
    /// Dotted node id.
    pub node: &'a str,
    /// Client identity at that node.
    pub client: &'a str,
}

impl std::fmt::Display for AddressRef<'_> {
    /// `node/client`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.client)
    }
}

impl std::fmt::Display for Address {
    /// `node/client`.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.node, self.client)
    }
}

/// Whether `id` is a valid message id ([`ID_RULE`]).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_ID
        && id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'))
}

/// Checks a dotted node id: at most [`MAX_NODE_ID`] bytes of non-empty segments of
/// `[A-Za-z0-9_-]`.
pub fn valid_node_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= MAX_NODE_ID
        && id.split('.').all(|seg| {
            !seg.is_empty()
                && seg
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
        })
}

/// What is wrong with a node id, in words that name the rule it breaks.
pub fn check_node_id(id: &str) -> Result<(), String> {
    if id.len() > MAX_NODE_ID {
        return Err(format!(
            "is {} characters long; a node id has at most {MAX_NODE_ID}",
            id.len()
        ));
    }
    if !valid_node_id(id) {
        return Err(
            "is not a dotted node id (segments of A-Z a-z 0-9 _ -, e.g. js.nj.gulou)".into(),
        );
    }
    Ok(())
}

/// Whether `name` is a valid client (or service) name: 1-[`MAX_CLIENT`] bytes with no
/// `+ # /` or control characters, so it can stand in a topic.
pub fn valid_client(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_CLIENT
        && !name
            .chars()
            .any(|ch| matches!(ch, '+' | '#' | '/') || ch.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_follow_the_documented_rule() {
        assert!(valid_id("t3-20261122-0042:a.b_c"));
        assert!(!valid_id(""));
        assert!(!valid_id("a/b"));
        assert!(!valid_id(&"x".repeat(MAX_ID + 1)));
        assert!(valid_id(&"x".repeat(MAX_ID)));
    }

    #[test]
    fn node_ids_and_client_names() {
        assert!(valid_node_id("js.nj.gulou"));
        assert!(!valid_node_id("a..b"));
        assert!(!valid_node_id(""));
        assert!(check_node_id(&"a".repeat(MAX_NODE_ID + 1))
            .unwrap_err()
            .contains("at most 200"));
        assert!(valid_client("hosp-nj"));
        assert!(!valid_client("a/b"));
        assert!(!valid_client("a\u{7}"));
        assert!(!valid_client(&"c".repeat(MAX_CLIENT + 1)));
    }

    #[test]
    fn addresses_are_strict_on_the_wire() {
        let a = Address::new("js", "a");
        assert_eq!(
            serde_json::to_string(&a).unwrap(),
            r#"{"node":"js","client":"a"}"#
        );
        assert_eq!(a.to_string(), "js/a");
        assert!(serde_json::from_str::<Address>(r#"{"node":"js","client":"a","x":1}"#).is_err());
    }
}
