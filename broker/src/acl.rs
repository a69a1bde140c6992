//! Topic access control, decided per identity.
//!
//! The contract is `topics.md`. The rule that makes `from` trustworthy: a client can publish
//! only to its own outbox, so whatever arrives there was sent by that identity.

use crate::identity::{Identity, Role};

// The topic names are the wire contract's; re-exported so the front-end and the node keep
// one path to them.
pub use medlink_wire::topics::{
    inbox_topic, is_link_up_topic, is_outbox_topic, link_down_topic, link_up_topic, outbox_topic,
    receipt_topic,
};

/// What a permitted publish is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublishClass {
    /// A client's command into its own outbox `org/<node>/<client>/out`.
    Outbox,
    /// A child node's link frame on `link/<child>/up`.
    LinkUp,
    /// Not allowed.
    Denied,
}

/// The topic ACL of one node.
#[derive(Debug, Clone)]
pub struct AclPolicy {
    node_id: String,
}

impl AclPolicy {
    /// ACL for the node `node_id`.
    pub fn new(node_id: &str) -> Self {
        AclPolicy {
            node_id: node_id.to_string(),
        }
    }

    /// Classifies a publish by `who` on `topic`.
    pub fn publish(&self, who: &Identity, topic: &str) -> PublishClass {
        match who.role {
            Role::Client if is_outbox_topic(topic, &self.node_id, &who.name) => {
                PublishClass::Outbox
            }
            Role::Node if is_link_up_topic(topic, &who.name) => PublishClass::LinkUp,
            _ => PublishClass::Denied,
        }
    }

    /// Whether `who` may subscribe to `filter`. Shared-subscription prefixes are stripped so
    /// `$share/g/<foreign filter>` cannot be used to read someone else's inbox.
    pub fn subscribe(&self, who: &Identity, filter: &str) -> bool {
        let filter = strip_share(filter);
        match who.role {
            // Operators watch client traffic; link frames and everything else stay private.
            Role::Admin => filter.starts_with("org/"),
            Role::Client => {
                filter == inbox_topic(&self.node_id, &who.name)
                    || filter == receipt_topic(&self.node_id, &who.name)
            }
            Role::Node => filter == link_down_topic(&who.name),
        }
    }
}

/// `filter` without a `$share/<group>/` prefix.
pub fn strip_share(filter: &str) -> &str {
    if let Some(rest) = filter.strip_prefix("$share/") {
        match rest.find('/') {
            Some(i) => &rest[i + 1..],
            None => rest,
        }
    } else {
        filter
    }
}

/// Which of `client`'s delivery streams `filter` (without `$share/` prefix) is, if any.
pub fn stream_of(node: &str, client: &str, filter: &str) -> Option<crate::events::Stream> {
    if filter == inbox_topic(node, client) {
        Some(crate::events::Stream::Commands)
    } else if filter == receipt_topic(node, client) {
        Some(crate::events::Stream::Receipts)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(name: &str, role: Role) -> Identity {
        Identity {
            name: name.into(),
            role,
        }
    }

    #[test]
    fn clients_are_confined_to_their_own_topics() {
        let acl = AclPolicy::new("js.nj");
        let c = id("clinic", Role::Client);
        assert_eq!(
            acl.publish(&c, "org/js.nj/clinic/out"),
            PublishClass::Outbox
        );
        assert_eq!(acl.publish(&c, "org/js.nj/other/out"), PublishClass::Denied);
        assert_eq!(acl.publish(&c, "org/js.nj/other/cmd"), PublishClass::Denied);
        assert!(acl.subscribe(&c, "org/js.nj/clinic/cmd"));
        assert!(!acl.subscribe(&c, "org/js.nj/+/cmd"));
        assert!(!acl.subscribe(&c, "$share/g/org/js.nj/other/cmd"));
        assert!(acl.subscribe(&c, "$share/g/org/js.nj/clinic/cmd"));
        let a = id("ops", Role::Admin);
        assert!(acl.subscribe(&a, "org/#"));
        assert!(!acl.subscribe(&a, "#"));
        assert!(!acl.subscribe(&a, "link/#"));
        assert_eq!(
            acl.publish(&a, "org/js.nj/clinic/out"),
            PublishClass::Denied
        );
        let n = id("js.nj.gl", Role::Node);
        assert_eq!(acl.publish(&n, "link/js.nj.gl/up"), PublishClass::LinkUp);
        assert!(acl.subscribe(&n, "link/js.nj.gl/down"));
        assert!(!acl.subscribe(&n, "link/js.nj.other/down"));
        assert_eq!(
            stream_of("a.b", "c1", "org/a.b/c1/cmd"),
            Some(crate::events::Stream::Commands)
        );
        assert_eq!(
            stream_of("a.b", "c1", "org/a.b/c1/receipt"),
            Some(crate::events::Stream::Receipts)
        );
        assert_eq!(stream_of("a.b", "c1", "org/a.bc/c1/cmd"), None);
        assert_eq!(stream_of("a.b", "c1", "org/a.b/c2/cmd"), None);
    }
}
