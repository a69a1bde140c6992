//! What travels, as the application sees it: the wire contract's types (`medlink-wire`, the
//! crate the node uses too), with params as a `serde_json::Value`. An application links only
//! this crate: everything it needs is re-exported from the crate root.

use serde_json::Value;

pub use medlink_wire::{
    Address, Hop, Kind, MessageId, Priority, Receipt, ReceiptKind, ReceiptStatus,
};

use crate::Error;

/// A message as delivered: a command, or a receipt about one the application sent
/// ([`Message::receipt`](medlink_wire::Envelope::receipt) reads it). The node's envelope with
/// its params parsed.
pub type Message = medlink_wire::Envelope<Value>;

/// Checks an id the way the node does (1–64 of `A-Z a-z 0-9 - _ . :`), so a bad one fails
/// at the caller instead of as a rejection later.
pub(crate) fn check_id(id: &str) -> Result<(), Error> {
    if medlink_wire::valid_id(id) {
        Ok(())
    } else {
        Err(Error::Config(format!(
            "id '{id}': {}",
            medlink_wire::ID_RULE
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
    fn receipts_read_through_the_message() {
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
        assert_eq!(r.to, Some(Address::new("js", "nobody")));
        assert_eq!(m.receipt_status(), Some("failed"));
    }
}
