//! Where a queued envelope waits: the journal's destinations, typed.
//!
//! Every queue in the journal is named by a [`Dest`]: a [`Target`] (the link up, the link
//! down to one child, one client's command or receipt stream, a service) and the priority
//! lane within it. The name stored in SQLite is the `Display` form, and this module is the
//! only place that writes or reads it:
//!
//! | target | normal lane | urgent / bulk lanes |
//! |---|---|---|
//! | the parent | `up` | `up#urgent`, `up#bulk` |
//! | child `c` | `down:c` | `down:c#urgent`, … |
//! | client `a`'s commands | `local:a` | `local:a#urgent`, … |
//! | client `a`'s receipts | `receipts:a` | `receipts:a#urgent`, … |
//! | service `s` (audit only) | `service:s` | — |
//! | commands waiting for their files | `files` | `files#urgent`, `files#bulk` |
//!
//! `#` occurs in neither node ids nor client names, so names never collide, and the normal
//! lane keeps the plain name that journals written before lanes existed use.
//!
//! The position of an incoming link is stored per [`Peer`] and lane in the same way
//! (`^parent`, `^parent#urgent`, `<child>`, `<child>#bulk`).

use std::fmt;
use std::str::FromStr;

use crate::envelope::{Priority, LANES};

/// What a queue leads to.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Target {
    /// The tier link to the parent.
    Up,
    /// The tier link down to this child node.
    Down(String),
    /// The command stream of this local client.
    Commands(String),
    /// The receipt stream of this local client.
    Receipts(String),
    /// A service group: commands to it are queued in one member's command stream, so this
    /// names a routing decision (in the audit table), never a queue.
    Service(String),
    /// Commands held at this node until the files they refer to are here (and, for a command
    /// going up, at the parent): `files_pending` (`dispatcher/files.rs`).
    Files,
}

/// One queue in the journal: a target and its priority lane. Its name is rendered once, at
/// construction, since the journal looks queues up by name on every read and write.
#[derive(Clone)]
pub struct Dest {
    target: Target,
    lane: Priority,
    name: Box<str>,
}

impl Dest {
    /// The queue of `target`'s `lane`. A service has one name whatever the lane: it is no
    /// queue (its commands are queued for one member), only a routing decision to record.
    pub fn new(target: Target, lane: Priority) -> Dest {
        let lane = match target {
            Target::Service(_) => Priority::Normal,
            _ => lane,
        };
        let name = render(&target, lane).into_boxed_str();
        Dest { target, lane, name }
    }

    /// Every lane of `target`, most urgent first: the order in which they are served.
    pub fn lanes(target: Target) -> [Dest; LANES] {
        Priority::ALL.map(|lane| Dest::new(target.clone(), lane))
    }

    /// What the queue leads to.
    pub fn target(&self) -> &Target {
        &self.target
    }

    /// Its priority lane.
    pub fn lane(&self) -> Priority {
        self.lane
    }

    /// The same target's `lane`.
    pub fn with_lane(&self, lane: Priority) -> Dest {
        Dest::new(self.target.clone(), lane)
    }

    /// The name stored in the journal.
    pub fn as_str(&self) -> &str {
        &self.name
    }
}

fn render(target: &Target, lane: Priority) -> String {
    let mut name = match target {
        Target::Up => "up".to_string(),
        Target::Down(child) => format!("down:{child}"),
        Target::Commands(client) => format!("local:{client}"),
        Target::Receipts(client) => format!("receipts:{client}"),
        Target::Service(service) => format!("service:{service}"),
        Target::Files => "files".to_string(),
    };
    name.push_str(lane_suffix(lane));
    name
}

fn lane_suffix(lane: Priority) -> &'static str {
    match lane {
        Priority::Urgent => "#urgent",
        Priority::Normal => "",
        Priority::Bulk => "#bulk",
    }
}

/// Splits `name#lane` into the name and its lane (no suffix: the normal lane).
fn split_lane(s: &str) -> Result<(&str, Priority), UnknownDest> {
    match s.rsplit_once('#') {
        None => Ok((s, Priority::Normal)),
        Some((base, "urgent")) => Ok((base, Priority::Urgent)),
        Some((base, "bulk")) => Ok((base, Priority::Bulk)),
        Some(_) => Err(UnknownDest(s.to_string())),
    }
}

impl fmt::Display for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name)
    }
}

impl fmt::Debug for Dest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Dest({})", self.name)
    }
}

impl PartialEq for Dest {
    fn eq(&self, other: &Dest) -> bool {
        self.name == other.name
    }
}

impl Eq for Dest {}

impl std::hash::Hash for Dest {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.name.hash(state)
    }
}

/// A journal name that is not one of [`Dest`]'s forms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a journal destination: {0:?}")]
pub struct UnknownDest(pub String);

impl FromStr for Dest {
    type Err = UnknownDest;

    fn from_str(s: &str) -> Result<Dest, UnknownDest> {
        let unknown = || UnknownDest(s.to_string());
        let (base, lane) = split_lane(s)?;
        let named = |name: &str| (!name.is_empty()).then(|| name.to_string());
        let target = match base.split_once(':') {
            None if base == "up" => Target::Up,
            None if base == "files" => Target::Files,
            Some(("down", child)) => Target::Down(named(child).ok_or_else(unknown)?),
            Some(("local", client)) => Target::Commands(named(client).ok_or_else(unknown)?),
            Some(("receipts", client)) => Target::Receipts(named(client).ok_or_else(unknown)?),
            Some(("service", name)) if lane == Priority::Normal => {
                Target::Service(named(name).ok_or_else(unknown)?)
            }
            _ => return Err(unknown()),
        };
        Ok(Dest::new(target, lane))
    }
}

/// The other end of a tier link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Peer {
    /// This node's parent.
    Parent,
    /// One of this node's children, by node id.
    Child(String),
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            // `^` cannot start a node id.
            Peer::Parent => f.write_str("^parent"),
            Peer::Child(child) => f.write_str(child),
        }
    }
}

/// The journal's name for the position of `peer`'s incoming `lane`.
pub(super) fn link_in_key(peer: &Peer, lane: Priority) -> String {
    format!("{peer}{}", lane_suffix(lane))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_keep_the_stored_forms() {
        let cases = [
            (Dest::new(Target::Up, Priority::Normal), "up"),
            (Dest::new(Target::Up, Priority::Urgent), "up#urgent"),
            (
                Dest::new(Target::Down("js.nj".into()), Priority::Bulk),
                "down:js.nj#bulk",
            ),
            (
                Dest::new(Target::Commands("a".into()), Priority::Normal),
                "local:a",
            ),
            (
                Dest::new(Target::Receipts("a@x".into()), Priority::Urgent),
                "receipts:a@x#urgent",
            ),
            (
                Dest::new(Target::Service("radiology".into()), Priority::Normal),
                "service:radiology",
            ),
            (Dest::new(Target::Files, Priority::Urgent), "files#urgent"),
        ];
        let urgent_service = Dest::new(Target::Service("s".into()), Priority::Urgent);
        assert_eq!(urgent_service.to_string(), "service:s");
        for (dest, name) in cases {
            assert_eq!(dest.to_string(), name);
            let parsed: Dest = name.parse().unwrap();
            assert_eq!(parsed, dest);
            assert_eq!(parsed.target(), dest.target());
            assert_eq!(parsed.lane(), dest.lane());
        }
    }

    #[test]
    fn other_names_are_refused() {
        for bad in [
            "",
            "upp",
            "down:",
            "local:",
            "x:a",
            "up#soon",
            "service:s#urgent",
        ] {
            assert!(bad.parse::<Dest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn lanes_are_served_urgent_first_and_link_positions_keep_their_names() {
        let lanes = Dest::lanes(Target::Commands("a".into()));
        let names: Vec<String> = lanes.iter().map(Dest::to_string).collect();
        assert_eq!(names, ["local:a#urgent", "local:a", "local:a#bulk"]);
        assert_eq!(
            link_in_key(&Peer::Parent, Priority::Urgent),
            "^parent#urgent"
        );
        assert_eq!(link_in_key(&Peer::Child("c".into()), Priority::Normal), "c");
    }
}
