//! Tree routing: where an envelope goes next from this node.
//!
//! Node ids are dotted paths from the root, so the tree itself is the routing table: deliver
//! here if the target is this node, go down to the child whose id prefixes the target, and
//! otherwise go up. A message climbs to the lowest common ancestor and descends, so routes are
//! loop-free by construction.
//!
//! A client of this node is a `client` identity of the credentials file, or any name that a
//! configured token key may vouch for as a client (its `subjects`, e.g. `pt-*`): patients with
//! device tokens have no line anywhere, yet a command to `pt-12345` must wait in that patient's
//! queue (like a command to an offline known client) instead of failing as unknown. Service
//! groups are looked up before the token patterns, so a broad pattern (`*`) never hides one.

use std::collections::BTreeSet;

use medlink_broker::token::{KeySet, Subjects};
use medlink_broker::{Credentials, Role};
use tracing::warn;

use crate::envelope::{Head, Kind};

/// How commands between clients of the same subtree travel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Policy {
    /// Through the lowest common ancestor; same-node commands stay on their node.
    #[default]
    Shortest,
    /// Everything through the root, which audits all traffic.
    ViaRoot,
}

/// The next hop of an envelope.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NextHop {
    /// Deliver to this node's client.
    Local(String),
    /// Forward to this child node.
    Down(String),
    /// Forward to the parent.
    Up,
    /// Deliver to one member of this node's service group.
    Service(String),
    /// Cannot be delivered; the reason goes into a `failed` receipt.
    Unroutable(String),
}

/// What a node knows of its place in the tree.
#[derive(Debug, Clone)]
pub struct Topology {
    /// This node's id.
    pub me: String,
    /// Whether this node has a parent.
    pub has_parent: bool,
    /// Ids of child nodes allowed to connect.
    pub children: BTreeSet<String>,
    /// Client identities of this node.
    pub clients: BTreeSet<String>,
    /// Service groups declared at this node (addressed like clients).
    pub services: BTreeSet<String>,
    /// Names the token keys may vouch for as clients: routable here without a credentials
    /// line.
    pub token_clients: Vec<Subjects>,
}

/// Whether `node` is `ancestor` or lies below it.
pub fn within(ancestor: &str, node: &str) -> bool {
    node == ancestor
        || (node.len() > ancestor.len()
            && node.starts_with(ancestor)
            && node.as_bytes()[ancestor.len()] == b'.')
}

impl Topology {
    /// Takes this node's client list from `credentials` and the client patterns of the token
    /// `keys` (clients added or removed there become (un)routable). New child nodes need a
    /// restart, since their links carry journal state created at start: they are only warned
    /// about.
    pub fn learn(&mut self, credentials: &Credentials, keys: &KeySet) {
        self.token_clients = keys.client_subjects();
        self.clients = credentials
            .names_with_role(Role::Client)
            .map(str::to_string)
            .collect();
        for child in credentials.names_with_role(Role::Node) {
            if child != self.me && within(&self.me, child) && !self.children.contains(child) {
                warn!(
                    child,
                    "new child node identity: restart this node to route to it"
                );
            }
        }
    }

    /// Decides the next hop of `env`.
    pub fn next_hop(&self, env: &Head) -> NextHop {
        let target = env.to.node;
        if env.via_root && self.has_parent {
            return NextHop::Up;
        }
        if target == self.me {
            return if self.clients.contains(env.to.client) {
                NextHop::Local(env.to.client.to_string())
            } else if self.services.contains(env.to.client) && env.kind == Kind::Cmd {
                NextHop::Service(env.to.client.to_string())
            } else if self.token_clients.iter().any(|s| s.matches(env.to.client)) {
                NextHop::Local(env.to.client.to_string())
            } else {
                NextHop::Unroutable(format!(
                    "no client '{}' at node '{}'",
                    env.to.client, self.me
                ))
            };
        }
        if within(&self.me, target) {
            // The child on the path is the known child whose id prefixes the target; levels
            // may be skipped, so it need not be exactly one segment longer.
            return match self.children.iter().find(|c| within(c, target)) {
                Some(child) => NextHop::Down(child.clone()),
                None => NextHop::Unroutable(format!(
                    "node '{}' has no child leading to '{target}'",
                    self.me
                )),
            };
        }
        if self.has_parent {
            NextHop::Up
        } else {
            NextHop::Unroutable(format!("node '{target}' is not in this tree"))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Envelope;

    fn env(node: &str, client: &str) -> Envelope {
        crate::envelope::test_envelope("1", node, client)
    }

    fn topo(me: &str, parent: bool, children: &[&str]) -> Topology {
        Topology {
            me: me.into(),
            has_parent: parent,
            children: children.iter().map(|s| s.to_string()).collect(),
            clients: ["a".to_string()].into_iter().collect(),
            services: ["svc".to_string()].into_iter().collect(),
            token_clients: Vec::new(),
        }
    }

    #[test]
    fn routes_up_down_and_local() {
        let t = topo("js.nj", true, &["js.nj.gl", "js.nj.xw.t9"]);
        assert_eq!(
            t.next_hop(&env("js.nj", "a").head()),
            NextHop::Local("a".into())
        );
        assert!(matches!(
            t.next_hop(&env("js.nj", "zz").head()),
            NextHop::Unroutable(_)
        ));
        assert_eq!(
            t.next_hop(&env("js.nj.gl.t3", "a").head()),
            NextHop::Down("js.nj.gl".into())
        );
        // a skipped level: the child's id is two segments longer
        assert_eq!(
            t.next_hop(&env("js.nj.xw.t9", "a").head()),
            NextHop::Down("js.nj.xw.t9".into())
        );
        assert!(matches!(
            t.next_hop(&env("js.nj.qq", "a").head()),
            NextHop::Unroutable(_)
        ));
        assert_eq!(t.next_hop(&env("js.sz", "a").head()), NextHop::Up);
        // prefix on a segment boundary only
        assert_eq!(t.next_hop(&env("js.njx", "a").head()), NextHop::Up);
        let root = topo("js", false, &["js.nj"]);
        assert!(matches!(
            root.next_hop(&env("zj.hz", "a").head()),
            NextHop::Unroutable(_)
        ));
        let mut e = env("js.nj", "a");
        e.via_root = true;
        assert_eq!(t.next_hop(&e.head()), NextHop::Up);
    }

    #[test]
    fn names_a_token_key_vouches_for_are_local_clients() {
        let mut t = topo("js.nj", true, &[]);
        t.token_clients = vec!["pt-*".parse().unwrap(), "*".parse().unwrap()];
        assert_eq!(
            t.next_hop(&env("js.nj", "pt-12345").head()),
            NextHop::Local("pt-12345".into())
        );
        // A service keeps its name even under a pattern that covers everything.
        let mut svc = env("js.nj", "svc");
        svc.kind = Kind::Cmd;
        assert_eq!(t.next_hop(&svc.head()), NextHop::Service("svc".into()));
        // Patterns speak for this node's names only.
        assert_eq!(t.next_hop(&env("js.sz", "pt-1").head()), NextHop::Up);
        t.token_clients = vec!["pt-*".parse().unwrap()];
        assert!(matches!(
            t.next_hop(&env("js.nj", "dr-1").head()),
            NextHop::Unroutable(_)
        ));
    }
}
