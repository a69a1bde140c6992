//! Delivery from the node to the connections subscribed to a topic, in place of rumqttd's
//! router.
//!
//! Only the node publishes to subscribers (client publishes carry custody and go to the
//! dispatcher), so what a router does here is small: find who subscribed to one topic and hand
//! them the bytes. rumqttd's router did it through a thread of its own, fixed buffers of about
//! 128 KB of capacity per connection, and a commit log per topic whose filters were matched
//! against every subscription when the topic was first seen (quadratic in the number of
//! recipients). Measured figures and the decision are in ARCHITECTURE.md §5.
//!
//! Here the dispatcher thread looks the topic up in a map and pushes onto each subscriber's
//! [`Mailbox`], which wakes that connection's task: one hand-off, no copy of the payload, and
//! nothing allocated for a connection that has nothing waiting.
//!
//! Clients and nodes may subscribe only to exact topics of their own (the ACL), found by one
//! map lookup. Wildcard filters, which only admins may use (watching `org/#`), are matched per
//! publish: that list grows with the number of admin taps, never with clients.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use foldhash::HashMap;
use rumqttd::protocol::matches;
use tokio::sync::Notify;

use crate::events::ConnId;
use crate::metrics::{bump, BrokerMetrics};

/// Most publishes waiting for a tap (an observer's subscription, see [`Fanout::subscribe`])
/// before further ones are dropped for it. Deliveries on a client's own streams and a child's
/// link are never dropped: their windows bound them (1,024 per stream lane, the link window).
pub const TAP_BACKLOG: usize = 4096;

/// One publish for one connection.
#[derive(Debug, Clone)]
pub struct Outgoing {
    /// Topic, shared by every subscriber of this publish.
    pub topic: Bytes,
    /// Payload, shared likewise.
    pub payload: Bytes,
    /// QoS of the delivery: the subscription's, capped at 1.
    pub qos: u8,
    /// Whether it came through a tap (may be dropped, see [`TAP_BACKLOG`]).
    pub tap: bool,
}

/// What waits for one connection, filled by the dispatcher and drained by the connection.
/// Empty, it holds no allocation.
#[derive(Debug, Default)]
pub struct Mailbox {
    queue: Mutex<VecDeque<Outgoing>>,
    ready: Notify,
}

impl Mailbox {
    fn push(&self, out: Outgoing) -> bool {
        let mut queue = self
            .queue
            .lock()
            .expect("mailbox lock is never held across a panic");
        if out.tap && queue.len() >= TAP_BACKLOG {
            return false;
        }
        let was_empty = queue.is_empty();
        queue.push_back(out);
        drop(queue);
        // One wake-up per batch: the connection takes everything at once.
        if was_empty {
            self.ready.notify_one();
        }
        true
    }

    /// Waits until something was pushed since the last [`Mailbox::take`].
    pub async fn ready(&self) {
        self.ready.notified().await
    }

    /// Everything waiting, in order. Leaves the mailbox without an allocation.
    pub fn take(&self) -> VecDeque<Outgoing> {
        std::mem::take(
            &mut *self
                .queue
                .lock()
                .expect("mailbox lock is never held across a panic"),
        )
    }
}

/// What a subscription is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SubKind {
    /// One of the connection's own delivery streams (a client's commands or receipts).
    Stream,
    /// A child node's link.
    Link,
    /// Watching (an admin's): bounded by dropping.
    Tap,
}

/// One connection's subscription to a filter.
#[derive(Debug, Clone)]
struct Sub {
    conn: ConnId,
    qos: u8,
    tap: bool,
    /// A stream subscription receives only once the node has opened the stream for it
    /// ([`Fanout::activate`]); until then the stream's rewind, not this subscription, brings it
    /// what is pending, so nothing arrives twice.
    active: bool,
    mailbox: Arc<Mailbox>,
}

/// A `$share/<group>/<filter>` group: each publish goes to one member, in turn.
#[derive(Debug)]
struct Group {
    name: String,
    members: Vec<Sub>,
    next: usize,
}

/// Who subscribed to one filter.
#[derive(Debug, Default)]
struct Subscribers {
    plain: Vec<Sub>,
    groups: Vec<Group>,
}

impl Subscribers {
    fn add(&mut self, group: Option<&str>, sub: Sub) {
        let members = match group {
            None => &mut self.plain,
            Some(name) => match self.groups.iter().position(|g| g.name == name) {
                Some(i) => &mut self.groups[i].members,
                None => {
                    self.groups.push(Group {
                        name: name.to_string(),
                        members: Vec::new(),
                        next: 0,
                    });
                    &mut self.groups.last_mut().expect("just pushed").members
                }
            },
        };
        // Subscribing again replaces the subscription (MQTT 3.1.1 §3.8.4), and keeps it open.
        match members.iter_mut().find(|s| s.conn == sub.conn) {
            Some(existing) => {
                let active = existing.active || sub.active;
                *existing = Sub { active, ..sub };
            }
            None => members.push(sub),
        }
    }

    fn remove(&mut self, group: Option<&str>, conn: ConnId) -> bool {
        let members = match group {
            None => &mut self.plain,
            Some(name) => match self.groups.iter_mut().find(|g| g.name == name) {
                Some(g) => &mut g.members,
                None => return false,
            },
        };
        let before = members.len();
        members.retain(|s| s.conn != conn);
        let removed = members.len() != before;
        self.groups.retain(|g| !g.members.is_empty());
        removed
    }

    fn is_empty(&self) -> bool {
        self.plain.is_empty() && self.groups.is_empty()
    }

    fn activate(&mut self, conn: ConnId) {
        let groups = self.groups.iter_mut().flat_map(|g| g.members.iter_mut());
        for s in self.plain.iter_mut().chain(groups) {
            if s.conn == conn {
                s.active = true;
            }
        }
    }

    /// Hands the publish to every plain subscriber and one member of each group.
    fn deliver(&mut self, topic: &Bytes, payload: &Bytes, metrics: &BrokerMetrics) -> usize {
        let mut handed = 0;
        let mut give = |s: &Sub| {
            let out = Outgoing {
                topic: topic.clone(),
                payload: payload.clone(),
                qos: s.qos,
                tap: s.tap,
            };
            if s.mailbox.push(out) {
                handed += 1;
            } else {
                bump(&metrics.taps_dropped);
            }
        };
        for s in self.plain.iter().filter(|s| s.active) {
            give(s);
        }
        for g in &mut self.groups {
            let len = g.members.len();
            if let Some(i) = (1..=len)
                .map(|k| (g.next + k) % len)
                .find(|i| g.members[*i].active)
            {
                g.next = i;
                give(&g.members[i]);
            }
        }
        handed
    }
}

#[derive(Debug, Default)]
struct Table {
    exact: HashMap<String, Subscribers>,
    /// Filters with `+` or `#`, admins' only.
    wildcard: Vec<(String, Subscribers)>,
}

/// The subscriptions of every connection of one node, and delivery to them.
#[derive(Debug)]
pub struct Fanout {
    table: Mutex<Table>,
    metrics: Arc<BrokerMetrics>,
}

/// Splits `$share/<group>/<filter>` into its group and filter.
pub fn split_share(filter: &str) -> (Option<&str>, &str) {
    match filter
        .strip_prefix("$share/")
        .and_then(|r| r.split_once('/'))
    {
        Some((group, rest)) => (Some(group), rest),
        None => (None, filter),
    }
}

/// Whether `filter` is a valid MQTT topic filter: `#` only as the whole last level, `+` only
/// as a whole level, not empty.
pub fn valid_filter(filter: &str) -> bool {
    if filter.is_empty() {
        return false;
    }
    let levels: Vec<&str> = filter.split('/').collect();
    levels.iter().enumerate().all(|(i, l)| {
        (!l.contains('#') || (*l == "#" && i == levels.len() - 1))
            && (!l.contains('+') || *l == "+")
    })
}

fn is_wildcard(filter: &str) -> bool {
    filter.contains(['+', '#'])
}

impl Fanout {
    /// An empty table; taps dropped are counted in `metrics`.
    pub fn new(metrics: Arc<BrokerMetrics>) -> Fanout {
        Fanout {
            table: Mutex::default(),
            metrics,
        }
    }

    /// Subscribes `conn` to `filter` (possibly `$share/<group>/…`), delivering at `qos` (capped
    /// at 1) into `mailbox`. A `tap` is a subscription for watching, not one of the connection's
    /// own streams: its backlog is bounded by dropping ([`TAP_BACKLOG`]). A `stream`
    /// subscription receives nothing until [`Fanout::activate`]. The caller has checked the ACL
    /// and [`valid_filter`].
    pub fn subscribe(
        &self,
        filter: &str,
        conn: ConnId,
        qos: u8,
        kind: SubKind,
        mailbox: &Arc<Mailbox>,
    ) {
        let (group, plain) = split_share(filter);
        let sub = Sub {
            conn,
            qos: qos.min(1),
            tap: kind == SubKind::Tap,
            active: kind != SubKind::Stream,
            mailbox: mailbox.clone(),
        };
        let mut table = self.lock();
        if is_wildcard(plain) {
            match table.wildcard.iter_mut().find(|(f, _)| f == plain) {
                Some((_, subs)) => subs.add(group, sub),
                None => {
                    let mut subs = Subscribers::default();
                    subs.add(group, sub);
                    table.wildcard.push((plain.to_string(), subs));
                }
            }
        } else {
            table
                .exact
                .entry(plain.to_string())
                .or_default()
                .add(group, sub);
        }
    }

    /// The node opened the stream on `topic` for `conn`: its subscriptions there receive from
    /// now on.
    pub fn activate(&self, topic: &str, conn: ConnId) {
        if let Some(subs) = self.lock().exact.get_mut(topic) {
            subs.activate(conn);
        }
    }

    /// Removes `conn`'s subscription to `filter`; whether there was one.
    pub fn unsubscribe(&self, filter: &str, conn: ConnId) -> bool {
        let (group, plain) = split_share(filter);
        let mut table = self.lock();
        if is_wildcard(plain) {
            let Some(i) = table.wildcard.iter().position(|(f, _)| f == plain) else {
                return false;
            };
            let removed = table.wildcard[i].1.remove(group, conn);
            if table.wildcard[i].1.is_empty() {
                table.wildcard.swap_remove(i);
            }
            removed
        } else {
            let Some(subs) = table.exact.get_mut(plain) else {
                return false;
            };
            let removed = subs.remove(group, conn);
            if subs.is_empty() {
                table.exact.remove(plain);
            }
            removed
        }
    }

    /// Hands `payload` on `topic` to every subscriber; returns how many got it. Whatever is
    /// not delivered stays in the journal (the sender's window sends it again).
    pub fn publish(&self, topic: &str, payload: Bytes) -> usize {
        self.publish_all(topic, std::slice::from_ref(&payload))
    }

    /// Hands each of `payloads`, in order, on `topic` to every subscriber; returns how many
    /// deliveries that made. A client stream's batch is one call: the topic is copied, the
    /// table locked and its subscribers looked up once for the batch, not once per envelope.
    pub fn publish_all(&self, topic: &str, payloads: &[Bytes]) -> usize {
        let topic_bytes = Bytes::copy_from_slice(topic.as_bytes());
        let mut table = self.lock();
        let Table { exact, wildcard } = &mut *table;
        let mut subs: Vec<&mut Subscribers> = exact.get_mut(topic).into_iter().collect();
        subs.extend(
            wildcard
                .iter_mut()
                .filter(|(filter, _)| matches(topic, filter))
                .map(|(_, subs)| subs),
        );
        let mut handed = 0;
        for payload in payloads {
            for s in subs.iter_mut() {
                handed += s.deliver(&topic_bytes, payload, &self.metrics);
            }
        }
        handed
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Table> {
        self.table
            .lock()
            .expect("fan-out table lock is never held across a panic")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topics(m: &Mailbox) -> Vec<(String, u8)> {
        m.take()
            .into_iter()
            .map(|o| (String::from_utf8(o.topic.to_vec()).unwrap(), o.qos))
            .collect()
    }

    #[test]
    fn exact_wildcard_and_shared_subscribers_each_get_what_they_asked_for() {
        let f = Fanout::new(Arc::default());
        let [a, b, c, tap]: [Arc<Mailbox>; 4] = Default::default();
        f.subscribe("org/js/a/cmd", 1, 2, SubKind::Link, &a);
        f.subscribe("$share/g/org/js/b/cmd", 2, 1, SubKind::Link, &b);
        f.subscribe("$share/g/org/js/b/cmd", 3, 0, SubKind::Link, &c);
        f.subscribe("org/+/+/cmd", 4, 1, SubKind::Tap, &tap);
        assert_eq!(f.publish("org/js/a/cmd", Bytes::from_static(b"1")), 2);
        assert_eq!(
            topics(&a),
            [("org/js/a/cmd".to_string(), 1)],
            "QoS capped at 1"
        );
        // the group takes turns
        f.publish("org/js/b/cmd", Bytes::from_static(b"2"));
        f.publish("org/js/b/cmd", Bytes::from_static(b"3"));
        assert_eq!(topics(&b).len() + topics(&c).len(), 2);
        assert_eq!(topics(&tap).len(), 3);
        // nobody for a topic no filter matches
        assert_eq!(f.publish("link/x/down", Bytes::new()), 0);
        assert!(f.unsubscribe("org/js/a/cmd", 1));
        assert!(!f.unsubscribe("org/js/a/cmd", 1));
        assert!(f.unsubscribe("org/+/+/cmd", 4));
        assert_eq!(f.publish("org/js/a/cmd", Bytes::new()), 0);
        assert!(f.lock().wildcard.is_empty() && !f.lock().exact.contains_key("org/js/a/cmd"));
    }

    #[test]
    fn a_tap_that_does_not_read_loses_taps_not_streams() {
        let f = Fanout::new(Arc::default());
        let slow: Arc<Mailbox> = Default::default();
        f.subscribe("org/#", 1, 1, SubKind::Tap, &slow);
        f.subscribe("org/js/me/cmd", 1, 1, SubKind::Stream, &slow);
        f.activate("org/js/me/cmd", 1);
        for _ in 0..TAP_BACKLOG + 10 {
            f.publish("org/js/other/cmd", Bytes::new());
        }
        assert_eq!(
            f.metrics
                .taps_dropped
                .load(std::sync::atomic::Ordering::Relaxed),
            10
        );
        // its own stream still gets through (the tap's copy of it is dropped)
        assert_eq!(f.publish("org/js/me/cmd", Bytes::new()), 1);
    }

    #[test]
    fn a_stream_subscription_receives_only_once_opened_and_stays_open_when_renewed() {
        let f = Fanout::new(Arc::default());
        let m: Arc<Mailbox> = Default::default();
        f.subscribe("org/js/a/cmd", 7, 1, SubKind::Stream, &m);
        assert_eq!(f.publish("org/js/a/cmd", Bytes::new()), 0, "not opened yet");
        f.activate("org/js/a/cmd", 7);
        assert_eq!(f.publish("org/js/a/cmd", Bytes::new()), 1);
        f.subscribe("org/js/a/cmd", 7, 1, SubKind::Stream, &m);
        assert_eq!(
            f.publish("org/js/a/cmd", Bytes::new()),
            1,
            "a renewed subscription stays open"
        );
        // a shared group skips members not opened yet
        f.subscribe("$share/g/org/js/b/cmd", 8, 1, SubKind::Stream, &m);
        f.subscribe("$share/g/org/js/b/cmd", 9, 1, SubKind::Stream, &m);
        f.activate("org/js/b/cmd", 9);
        for _ in 0..3 {
            assert_eq!(f.publish("org/js/b/cmd", Bytes::new()), 1);
        }
    }

    #[test]
    fn filters_are_validated_like_mqtt_says() {
        for ok in ["org/#", "org/+/a/cmd", "#", "+", "a/b"] {
            assert!(valid_filter(ok), "{ok}");
        }
        for bad in ["", "org/#/x", "org/a#", "org/+a/b"] {
            assert!(!valid_filter(bad), "{bad}");
        }
        assert_eq!(split_share("$share/g/org/x"), (Some("g"), "org/x"));
        assert_eq!(split_share("org/x"), (None, "org/x"));
    }
}
