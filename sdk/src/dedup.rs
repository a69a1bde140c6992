//! De-duplication by message id. Nodes deliver at least once (a rewind after a reconnect, a
//! poll repeated with an old cursor, a switch of transport), so the SDK remembers the ids it
//! handed over recently and drops repeats. It is one structure for every transport, so a
//! message seen over MQTT is recognised again over HTTP.

use std::collections::{HashSet, VecDeque};

use crate::message::{Kind, Message};

/// Ids remembered. A node re-delivers only what was unacknowledged (at most 1024 commands and
/// 1024 receipts per client), so repeats are recent; this is far more than that.
const SEEN_MAX: usize = 100_000;

/// Ids handed over recently, oldest forgotten first.
#[derive(Default)]
pub(crate) struct Seen {
    ids: HashSet<String>,
    order: VecDeque<String>,
}

/// Ids are unique per sender only (two clients may choose the same one), and receipts are
/// numbered by the nodes: the key says whose id it is.
fn key(m: &Message) -> String {
    let kind = match m.kind {
        Kind::Cmd => 'c',
        Kind::Receipt => 'r',
    };
    format!("{kind}|{}|{}|{}", m.from.node, m.from.client, m.id)
}

impl Seen {
    /// Whether `m` was handed over already.
    pub(crate) fn contains(&self, m: &Message) -> bool {
        self.ids.contains(&key(m))
    }

    /// Takes back a record made just before a hand-over that did not happen (the key stays
    /// in the age order until it ages out, which is harmless).
    pub(crate) fn forget(&mut self, m: &Message) {
        self.ids.remove(&key(m));
    }

    /// Records `m` as handed over; false if it was already.
    pub(crate) fn insert(&mut self, m: &Message) -> bool {
        let k = key(m);
        if self.ids.contains(&k) {
            return false;
        }
        if self.order.len() >= SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(k.clone());
        self.order.push_back(k);
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::Address;

    fn msg(from: &str, id: &str) -> Message {
        Message {
            id: id.into(),
            kind: Kind::Cmd,
            from: Address::new("js", from),
            to: Address::new("js", "me"),
            cmd: "c".into(),
            params: serde_json::Value::Null,
            reply_to: None,
            as_service: None,
            created_at: 0,
            expires_at: None,
            priority: Default::default(),
            receipts: Vec::new(),
            files: Vec::new(),
            hops: 0,
            via_root: false,
            trail: Vec::new(),
        }
    }

    #[test]
    fn repeats_are_recognised_per_sender() {
        let mut s = Seen::default();
        assert!(s.insert(&msg("a", "1")));
        assert!(!s.insert(&msg("a", "1")));
        assert!(s.contains(&msg("a", "1")));
        // Another sender may use the same id.
        assert!(s.insert(&msg("b", "1")));
    }

    #[test]
    fn the_oldest_are_forgotten() {
        let mut s = Seen::default();
        for i in 0..SEEN_MAX + 1 {
            s.insert(&msg("a", &i.to_string()));
        }
        assert!(!s.contains(&msg("a", "0")));
        assert!(s.contains(&msg("a", "1")));
    }
}
