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
use tracing::{info, warn};

use super::State;
use crate::delivery::{lane_dests, local_dest};
use crate::envelope::Envelope;
use crate::journal::{Journal, Txn};

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
    dest: String,
    lseq: u64,
    since: Instant,
    body: Bytes,
}

/// Groups, their round-robin positions, and the open assignments.
#[derive(Default)]
pub(super) struct Services {
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
    pub(super) fn new(
        me: &str,
        groups: &[ServiceGroup],
        journal: &Journal,
    ) -> rusqlite::Result<Services> {
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
                for dest in lane_dests(member, Stream::Commands) {
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

    /// Notes an HTTP poll by `client`.
    /// Whether `client` is a member of the service group `service` here.
    pub(super) fn is_member(&self, service: &str, client: &str) -> bool {
        self.groups
            .get(service)
            .is_some_and(|(g, _)| g.members.iter().any(|m| m == client))
    }

    pub(super) fn polled(&mut self, client: &str) {
        if self.members.contains(client) {
            self.polled.insert(client.to_string(), Instant::now());
        }
    }
}

impl State {
    /// Whether `member` is connected over MQTT or has polled over HTTP lately.
    fn member_online(&self, member: &str) -> bool {
        let dest = local_dest(member);
        self.locals.get(&dest).is_some_and(|l| !l.conns.is_empty())
            || self.polls.is_waiting(&dest)
            || self
                .services
                .polled
                .get(member)
                .is_some_and(|t| t.elapsed() < HTTP_PRESENCE)
    }

    /// The member to give the next command of `service` to: the next online one other than
    /// `not`, round-robin; with none online, the next one in turn (where it waits), unless
    /// `online_only`.
    fn pick_member(
        &mut self,
        service: &str,
        not: Option<&str>,
        online_only: bool,
    ) -> Option<String> {
        let (group, _) = self.services.groups.get(service)?;
        let members = group.members.clone();
        let online: Vec<bool> = members.iter().map(|m| self.member_online(m)).collect();
        let (_, next) = self.services.groups.get_mut(service)?;
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

    /// Queues a command addressed to `service` for one of its members.
    pub(super) fn route_to_service(
        &mut self,
        tx: &mut Txn,
        service: &str,
        env: &Envelope,
        body: Bytes,
        now: u64,
    ) -> rusqlite::Result<()> {
        let Some(member) = self.pick_member(service, None, false) else {
            return self.refuse(tx, env, "failed", "service has no members", now);
        };
        self.assign(tx, service, &member, env, body, now)
    }

    fn assign(
        &mut self,
        tx: &mut Txn,
        service: &str,
        member: &str,
        env: &Envelope,
        body: Bytes,
        now: u64,
    ) -> rusqlite::Result<()> {
        let dest = env.priority.dest(local_dest(member));
        let lseq = tx.enqueue(&dest, env, body.clone())?;
        self.polls.enqueued(&dest);
        self.expect_reply(tx, member, env, now)?;
        self.services.open.insert(
            env.id.clone(),
            Assignment {
                service: service.to_string(),
                member: member.to_string(),
                dest,
                lseq,
                since: Instant::now(),
                body,
            },
        );
        Ok(())
    }

    /// Closes acknowledged assignments and moves overdue ones to another online member.
    pub(super) fn service_timers(&mut self, tx: &mut Txn, now: u64) -> rusqlite::Result<()> {
        let mut settled = Vec::new();
        let mut overdue = Vec::new();
        for (id, a) in &self.services.open {
            let acked = match self.locals.get(&a.dest) {
                Some(l) => l.acked(),
                None => tx.acked(&a.dest)?,
            };
            if acked >= a.lseq {
                settled.push(id.clone());
                continue;
            }
            let timeout = self
                .services
                .groups
                .get(&a.service)
                .map_or(Duration::MAX, |(g, _)| g.ack_timeout);
            if a.since.elapsed() >= timeout || !self.member_online(&a.member) {
                overdue.push(id.clone());
            }
        }
        for id in settled {
            self.services.open.remove(&id);
        }
        for id in overdue {
            let Some(a) = self.services.open.get(&id) else {
                continue;
            };
            let (service, from) = (a.service.clone(), a.member.clone());
            let Some(to) = self.pick_member(&service, Some(&from), true) else {
                continue; // nobody else online: it stays where it is
            };
            let a = self.services.open.remove(&id).expect("looked up above");
            if !tx.remove(&a.dest, a.lseq)? {
                continue; // acknowledged or expired meanwhile
            }
            match Envelope::parse(&a.body) {
                Ok(env) if !env.expired(now) => {
                    info!(id = %env.id, service, from, to, "service command moved to another member");
                    self.stats.reassigned();
                    self.assign(tx, &service, &to, &env, a.body, now)?;
                }
                Ok(env) => self.refuse(tx, &env, "expired", "expired before delivery", now)?,
                Err(e) => warn!(id, error = %e, "unreadable service command dropped"),
            }
        }
        Ok(())
    }
}
