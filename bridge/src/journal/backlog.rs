//! What waits in each queue, counted in memory so that `/metrics` never scans the journal:
//! the depth and the command first in line of every destination, summed into the groups
//! `/metrics` reports ([`QueueGroup`]: the parent, each child, each service's members, all
//! other clients, all receipt streams).
//!
//! It is built once from the queue table when the journal opens, then follows the same
//! changes as the hot tails, applied only after their transaction commits. Each change costs
//! in proportion to the envelopes it adds or removes; a round reports only the groups it
//! moved. The age reported is that of the command *first in line* (since its `created_at`):
//! queues are first-in first-out per lane, so that is the one that has waited longest.

use std::collections::{BTreeSet, VecDeque};

use foldhash::{HashMap, HashMapExt, HashSet};

use rusqlite::Connection;

use super::dest::{Dest, Target};
use super::hot::HotChange;
use crate::envelope::Priority;
use crate::stats::{DeliveredBy, QueueGauge, QueueGroup, Stats};

type GroupKey = (QueueGroup, Priority);

/// One destination's waiting envelopes: (sequence, `created_at`) in sequence order.
struct Waiting {
    group: GroupKey,
    entries: VecDeque<(u64, u64)>,
}

/// One group's lane: how many wait, and the first in line of each destination in it.
#[derive(Default)]
struct Group {
    depth: u64,
    fronts: BTreeSet<(u64, String)>,
}

/// The in-memory count of every queue.
#[derive(Default)]
pub(super) struct Backlog {
    queues: HashMap<String, Waiting>,
    groups: HashMap<GroupKey, Group>,
    /// Client → the service it is a member of (its commands are reported under the service).
    members: std::collections::HashMap<String, String>,
    /// Groups moved since the last report.
    dirty: HashSet<GroupKey>,
    /// Deliveries since the last report: count and latencies (ms) per taker.
    delivered: HashMap<DeliveredBy, (u64, Vec<u64>)>,
}

/// Just the field the backlog needs from a queued body.
#[derive(serde::Deserialize)]
struct Created {
    created_at: u64,
}

/// When `body` (an envelope) was created; `fallback` if it cannot be read.
fn created_at(body: &[u8], fallback: u64) -> u64 {
    serde_json::from_slice::<Created>(body).map_or(fallback, |c| c.created_at)
}

/// `key`'s group, made on first use. The key is cloned only then: a child's or a service's
/// key holds a name, and this runs for every envelope queued or acknowledged.
fn group_mut<'a>(groups: &'a mut HashMap<GroupKey, Group>, key: &GroupKey) -> &'a mut Group {
    if !groups.contains_key(key) {
        groups.insert(key.clone(), Group::default());
    }
    groups.get_mut(key).expect("present or inserted above")
}

/// Marks `key` as moved this round (cloning it only the first time).
fn mark(dirty: &mut HashSet<GroupKey>, key: &GroupKey) {
    if !dirty.contains(key) {
        dirty.insert(key.clone());
    }
}

impl Backlog {
    /// Counts what the journal at `conn` holds (entries at or below a queue's acknowledged
    /// point are gone, even where their segment is still on disk).
    pub(super) fn load(conn: &Connection) -> rusqlite::Result<Backlog> {
        let mut acked = HashMap::new();
        {
            let mut stmt = conn.prepare("SELECT dest, upto FROM acked")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                acked.insert(row.get::<_, String>(0)?, row.get::<_, i64>(1)? as u64);
            }
        }
        let now = crate::envelope::now_ms();
        let mut backlog = Backlog::default();
        let mut stmt = conn.prepare("SELECT dest, entries FROM queue ORDER BY dest, first_lseq")?;
        let mut rows = stmt.query([])?;
        while let Some(row) = rows.next()? {
            let dest: String = row.get(0)?;
            let floor = acked.get(&dest).copied().unwrap_or(0);
            for entry in super::decode_row(row.get(1)?)? {
                if entry.lseq > floor {
                    backlog.insert(&dest, entry.lseq, created_at(&entry.body, now));
                }
            }
        }
        backlog.dirty.clear();
        Ok(backlog)
    }

    /// Reports the commands of `members`' streams under their service (client → service).
    pub(super) fn set_members(&mut self, members: std::collections::HashMap<String, String>) {
        self.members = members;
        let names: Vec<String> = self.queues.keys().cloned().collect();
        for name in names {
            let (Some(key), Some(w)) = (self.group_of(&name), self.queues.get(&name)) else {
                continue;
            };
            if w.group == key {
                continue;
            }
            let entries: Vec<(u64, u64)> = w.entries.iter().copied().collect();
            self.remove_where(&name, |w| w.drain(..).map(|(_, c)| c).collect());
            for (lseq, created) in entries {
                self.insert(&name, lseq, created);
            }
        }
    }

    fn group_of(&self, dest: &str) -> Option<GroupKey> {
        let dest: Dest = dest.parse().ok()?;
        let group = match dest.target() {
            Target::Up => QueueGroup::Parent,
            Target::Down(child) => QueueGroup::Child(child.clone()),
            Target::Commands(client) => match self.members.get(client) {
                Some(service) => QueueGroup::Service(service.clone()),
                None => QueueGroup::Clients,
            },
            Target::Receipts(_) => QueueGroup::Receipts,
            Target::Files => QueueGroup::Files,
            Target::Service(_) => return None,
        };
        Some((group, dest.lane()))
    }

    /// Applies one committed change.
    pub(super) fn apply(&mut self, change: &HotChange, now: u64) {
        match change {
            HotChange::Insert(dest, row, created) => self.insert(dest, row.lseq, *created),
            HotChange::RemoveThrough(dest, upto, by) => {
                let group = self.queues.get(dest.as_str()).map(|w| w.group.0.clone());
                let gone = self.remove_where(dest, |w| {
                    let n = w.partition_point(|(l, _)| *l <= *upto);
                    w.drain(..n).map(|(_, c)| c).collect()
                });
                if let (Some(by), Some(group)) = (by, group) {
                    if !gone.is_empty() {
                        self.record_delivery(&group, *by, &gone, now);
                    }
                }
            }
            HotChange::Remove(dest, lseq) => {
                self.remove_where(dest, |w| match w.binary_search_by_key(lseq, |(l, _)| *l) {
                    Ok(i) => w.remove(i).map(|(_, c)| vec![c]).unwrap_or_default(),
                    Err(_) => Vec::new(),
                });
            }
        }
    }

    fn insert(&mut self, dest: &str, lseq: u64, created: u64) {
        if !self.queues.contains_key(dest) {
            let Some(group) = self.group_of(dest) else {
                return;
            };
            let w = Waiting {
                group,
                entries: VecDeque::new(),
            };
            self.queues.insert(dest.to_string(), w);
        }
        let w = self
            .queues
            .get_mut(dest)
            .expect("present or inserted above");
        let group = group_mut(&mut self.groups, &w.group);
        if w.entries.is_empty() {
            group.fronts.insert((created, dest.to_string()));
        }
        w.entries.push_back((lseq, created));
        group.depth += 1;
        mark(&mut self.dirty, &w.group);
    }

    /// Removes what `take` drains from `dest`'s entries, keeping its group's first-in-line
    /// set right; returns the `created_at` of what went.
    fn remove_where(
        &mut self,
        dest: &str,
        take: impl FnOnce(&mut VecDeque<(u64, u64)>) -> Vec<u64>,
    ) -> Vec<u64> {
        let Some(w) = self.queues.get_mut(dest) else {
            return Vec::new();
        };
        let front = w.entries.front().map(|(_, c)| *c);
        let gone = take(&mut w.entries);
        if gone.is_empty() {
            return gone;
        }
        let group = group_mut(&mut self.groups, &w.group);
        group.depth = group.depth.saturating_sub(gone.len() as u64);
        let new_front = w.entries.front().map(|(_, c)| *c);
        if new_front != front {
            if let Some(c) = front {
                group.fronts.remove(&(c, dest.to_string()));
            }
            if let Some(c) = new_front {
                group.fronts.insert((c, dest.to_string()));
            }
        }
        mark(&mut self.dirty, &w.group);
        if w.entries.is_empty() {
            self.queues.remove(dest);
        }
        gone
    }

    fn record_delivery(&mut self, group: &QueueGroup, by: DeliveredBy, created: &[u64], now: u64) {
        // Only commands count (receipt streams are acknowledged the same way); the
        // end-to-end latency is taken where the recipient took the command.
        let last_hop = match group {
            QueueGroup::Clients | QueueGroup::Service(_) => true,
            QueueGroup::Parent | QueueGroup::Child(_) => false,
            QueueGroup::Receipts | QueueGroup::Files => return,
        };
        let tally = self.delivered.entry(by).or_default();
        tally.0 += created.len() as u64;
        if last_hop {
            tally
                .1
                .extend(created.iter().map(|c| now.saturating_sub(*c)));
        }
    }

    /// Hands what moved since the last report to `stats`.
    pub(super) fn report(&mut self, stats: &Stats) {
        if !self.dirty.is_empty() {
            let groups = &self.groups;
            stats.set_queues(self.dirty.drain().map(|key| {
                let gauge = groups
                    .get(&key)
                    .map_or(QueueGauge::default(), |g| QueueGauge {
                        depth: g.depth,
                        oldest_created: g.fronts.first().map(|(c, _)| *c),
                    });
                (key, gauge)
            }));
        }
        for (by, (n, latencies)) in self.delivered.drain() {
            stats.delivered_by(by, n, &latencies);
        }
    }

    /// Hands every group to `stats` (at start, when nothing was reported yet).
    pub(super) fn report_all(&mut self, stats: &Stats) {
        self.dirty.extend(self.groups.keys().cloned());
        self.report(stats);
    }

    /// Up to `n` destinations of `group`'s `lane` whose first in line is oldest, oldest first:
    /// (destination, its `created_at`, how many wait there).
    pub(super) fn oldest(&self, key: &GroupKey, n: usize) -> Vec<(String, u64, usize)> {
        let Some(group) = self.groups.get(key) else {
            return Vec::new();
        };
        group
            .fronts
            .iter()
            .take(n)
            .map(|(c, d)| {
                (
                    d.clone(),
                    *c,
                    self.queues.get(d).map_or(0, |w| w.entries.len()),
                )
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::Queued;

    fn row(lseq: u64) -> Queued {
        Queued {
            lseq,
            id: lseq.to_string(),
            expires_at: None,
            body: bytes::Bytes::new(),
        }
    }

    #[test]
    fn depth_and_first_in_line_follow_changes() {
        let mut b = Backlog::default();
        let stats = Stats::default();
        for (dest, lseq, created) in [("up", 1, 100), ("up", 2, 50), ("local:a", 1, 70)] {
            b.apply(&HotChange::Insert(dest.into(), row(lseq), created), 1000);
        }
        b.apply(
            &HotChange::Insert("local:b#urgent".into(), row(1), 10),
            1000,
        );
        b.report(&stats);
        let q = stats.queues();
        let parent = q[&(QueueGroup::Parent, Priority::Normal)];
        assert_eq!((parent.depth, parent.oldest_created), (2, Some(100)));
        let clients = q[&(QueueGroup::Clients, Priority::Normal)];
        assert_eq!((clients.depth, clients.oldest_created), (1, Some(70)));
        // The link takes 1: the first in line is now the one created at 50.
        let link = Some(DeliveredBy::Link);
        b.apply(&HotChange::RemoveThrough("up".into(), 1, link), 1000);
        // Client a takes its command: delivered over MQTT, 930 ms after its creation.
        let mqtt = Some(DeliveredBy::Mqtt);
        b.apply(&HotChange::RemoveThrough("local:a".into(), 5, mqtt), 1000);
        b.apply(&HotChange::Remove("local:b#urgent".into(), 1), 1000);
        b.report(&stats);
        let q = stats.queues();
        let parent = q[&(QueueGroup::Parent, Priority::Normal)];
        assert_eq!((parent.depth, parent.oldest_created), (1, Some(50)));
        let clients = q[&(QueueGroup::Clients, Priority::Normal)];
        assert_eq!((clients.depth, clients.oldest_created), (0, None));
        assert_eq!(q[&(QueueGroup::Clients, Priority::Urgent)].depth, 0);
        let counts = stats.delivered_counts();
        assert_eq!(counts[DeliveredBy::Mqtt as usize].1, 1);
        assert_eq!(counts[DeliveredBy::Link as usize].1, 1);
        assert_eq!(counts[DeliveredBy::Http as usize].1, 0);
        let (buckets, sum, count) = stats.latency().read();
        assert_eq!((count, sum), (1, 0.93));
        assert_eq!(buckets[6], 0, "0.93 s is above the 0.5 s bucket");
        assert_eq!(buckets[7], 1, "and within the 1 s bucket");
        assert!(b.queues.len() == 1, "empty queues are forgotten");
    }

    #[test]
    fn service_members_are_reported_under_their_service() {
        let mut b = Backlog::default();
        b.apply(&HotChange::Insert("local:m1".into(), row(1), 5), 10);
        b.apply(&HotChange::Insert("local:x".into(), row(1), 6), 10);
        b.set_members(std::collections::HashMap::from([(
            "m1".to_string(),
            "triage".to_string(),
        )]));
        b.apply(&HotChange::Insert("local:m1".into(), row(2), 7), 10);
        let stats = Stats::default();
        b.report(&stats);
        let q = stats.queues();
        assert_eq!(
            q[&(QueueGroup::Service("triage".into()), Priority::Normal)].depth,
            2
        );
        assert_eq!(q[&(QueueGroup::Clients, Priority::Normal)].depth, 1);
        let oldest = b.oldest(&(QueueGroup::Clients, Priority::Normal), 5);
        assert_eq!(oldest, vec![("local:x".to_string(), 6, 1)]);
    }
}
