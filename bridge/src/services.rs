//! Service groups (anycast): a command addressed to a service reaches one online member.
//!
//! A node's config declares services (say `consult.radiology`) and their member identities.
//! A command to `<node>/<service>` is put in one member's own command stream — an online
//! member's, round-robin, so work spreads; with no member online, the next member's in turn,
//! where it is held. The assignment is remembered until that stream's acknowledgement passes
//! it. If it is not acknowledged within the group's `ack_timeout`, or its member is offline
//! while another is online, it is taken out of that stream (in the same transaction) and
//! given to another online member. Members receive on their usual inbox topic; `to.client`
//! still names the service, and replies come `from` the member.
//!
//! A member that was merely slow, not gone, may still process a command it lost to another
//! member: failover makes delivery at-least-once across members (each member's SDK drops
//! repeats only of its own). Assignments live in memory and are rebuilt from the members'
//! queues when the node starts.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use bytes::Bytes;
use medlink_broker::Stream;

use crate::clients::{self, Clients};
use crate::envelope::Envelope;
use crate::journal::{Dest, Journal, Txn};

/// A service group as configured.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceGroup {
    /// The name commands are addressed to (`to.client`).
    pub name: String,
    /// Client identities at this node that serve it.
    pub members: Vec<String>,
    /// How long a member has to acknowledge before another member gets the command.
    pub ack_timeout: Duration,
}

/// How long after its last poll an HTTP-only member still counts as online.
const HTTP_PRESENCE: Duration = Duration::from_secs(60);

/// One command given to a member and not yet acknowledged.
struct Assignment {
    service: String,
    member: String,
    dest: Dest,
    lseq: u64,
    since: Instant,
    body: Bytes,
}

/// An overdue command to take out of one member's stream and give to another.
pub struct Move {
    /// The service it was addressed to.
    pub service: String,
    /// The member that did not acknowledge it in time, or went offline.
    pub from: String,
    /// The online member it goes to.
    pub to: String,
    /// Where it waits now.
    pub dest: Dest,
    /// Its sequence there.
    pub lseq: u64,
    /// The envelope.
    pub body: Bytes,
}

/// Groups, their round-robin positions, and the open assignments.
#[derive(Default)]
pub struct Services {
    groups: HashMap<String, (ServiceGroup, usize)>,
    /// Open assignments by envelope id.
    open: HashMap<String, Assignment>,
    /// When each member last polled over HTTP (presence of HTTP-only members).
    polled: HashMap<String, Instant>,
    /// Every member of every group (a poll by anyone else is not noted).
    members: HashSet<String>,
}

impl Services {
    /// The groups, with the assignments found in the members' queues of `journal` (after a
    /// restart every one of them gets a fresh timeout).
    pub fn new(me: &str, groups: &[ServiceGroup], journal: &Journal) -> rusqlite::Result<Services> {
        let mut s = Services {
            groups: groups
                .iter()
                .map(|g| (g.name.clone(), (g.clone(), 0)))
                .collect(),
            members: groups.iter().flat_map(|g| g.members.clone()).collect(),
            ..Services::default()
        };
        for g in groups {
            for member in &g.members {
                for dest in Dest::lanes(clients::target(member, Stream::Commands)) {
                    let acked = journal.acked(&dest)?;
                    for row in journal.read(&dest, acked, usize::MAX)? {
                        let Ok(env) = Envelope::parse(&row.body) else {
                            continue;
                        };
                        if env.to.node == me && env.to.client == g.name {
                            s.open.insert(
                                row.id.clone(),
                                Assignment {
                                    service: g.name.clone(),
                                    member: member.clone(),
                                    dest: dest.clone(),
                                    lseq: row.lseq,
                                    since: Instant::now(),
                                    body: row.body,
                                },
                            );
                        }
                    }
                }
            }
        }
        Ok(s)
    }

    /// Whether `client` is a member of the service group `service` here.
    pub fn is_member(&self, service: &str, client: &str) -> bool {
        self.groups
            .get(service)
            .is_some_and(|(g, _)| g.members.iter().any(|m| m == client))
    }

    /// Notes an HTTP poll by `client`.
    pub fn polled(&mut self, client: &str) {
        if self.members.contains(client) {
            self.polled.insert(client.to_string(), Instant::now());
        }
    }

    /// Whether `member` is connected over MQTT or has polled over HTTP lately.
    fn online(&self, member: &str, clients: &Clients) -> bool {
        clients.online(member)
            || self
                .polled
                .get(member)
                .is_some_and(|t| t.elapsed() < HTTP_PRESENCE)
    }

    /// The member to give the next command of `service` to: the next online one other than
    /// `not`, round-robin; with none online, the next one in turn (where it waits), unless
    /// `online_only`.
    pub fn pick(
        &mut self,
        service: &str,
        not: Option<&str>,
        online_only: bool,
        clients: &Clients,
    ) -> Option<String> {
        let (group, _) = self.groups.get(service)?;
        let members = group.members.clone();
        let online: Vec<bool> = members.iter().map(|m| self.online(m, clients)).collect();
        let (_, next) = self.groups.get_mut(service)?;
        let n = members.len();
        let start = *next;
        let found = (0..n)
            .map(|i| (start + i) % n)
            .find(|&i| online[i] && Some(members[i].as_str()) != not)
            .or_else(|| (!online_only && n > 0).then_some(start % n));
        let i = found?;
        *next = (i + 1) % n.max(1);
        Some(members[i].clone())
    }

    /// Records that command `id` of `service` was queued for `member` at `lseq` of `dest`.
    pub fn assigned(
        &mut self,
        id: &str,
        (service, member): (&str, &str),
        (dest, lseq): (Dest, u64),
        body: Bytes,
    ) {
        self.open.insert(
            id.to_string(),
            Assignment {
                service: service.to_string(),
                member: member.to_string(),
                dest,
                lseq,
                since: Instant::now(),
                body,
            },
        );
    }

    /// Closes acknowledged assignments and returns the overdue ones that another online
    /// member can take (they are closed here; the caller moves them).
    pub fn overdue(&mut self, tx: &Txn, clients: &Clients) -> rusqlite::Result<Vec<Move>> {
        let mut settled = Vec::new();
        let mut late = Vec::new();
        for (id, a) in &self.open {
            let acked = match clients.position(&a.dest, a.lseq) {
                Some((acked, _)) => acked,
                None => tx.acked(&a.dest)?,
            };
            if acked >= a.lseq {
                settled.push(id.clone());
                continue;
            }
            let timeout = self
                .groups
                .get(&a.service)
                .map_or(Duration::MAX, |(g, _)| g.ack_timeout);
            if a.since.elapsed() >= timeout || !self.online(&a.member, clients) {
                late.push(id.clone());
            }
        }
        for id in settled {
            self.open.remove(&id);
        }
        let mut moves = Vec::new();
        for id in late {
            let Some(a) = self.open.get(&id) else {
                continue;
            };
            let (service, from) = (a.service.clone(), a.member.clone());
            let Some(to) = self.pick(&service, Some(&from), true, clients) else {
                continue; // nobody else online: it stays where it is
            };
            let a = self.open.remove(&id).expect("looked up above");
            moves.push(Move {
                service,
                from,
                to,
                dest: a.dest,
                lseq: a.lseq,
                body: a.body,
            });
        }
        Ok(moves)
    }
}
