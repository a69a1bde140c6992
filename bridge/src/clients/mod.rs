//! Delivery to this node's own clients, over MQTT and HTTP.
//!
//! - [`stream`]: the cursor of one stream lane (what is published, in flight, acknowledged).
//! - [`polls`]: HTTP long-polls and cumulative HTTP acknowledgements.
//! - [`devices`]: what one device acknowledged, kept a while for the identity's others.
//! - [`page`]: what an HTTP reader is handed.
//!
//! [`Clients`] owns all of it. Each client has two streams, commands and receipts, each in
//! three priority lanes ([`Dest`]s in the journal). MQTT connections get a stream's lanes
//! published through the router, urgent first; HTTP readers are answered from committed
//! journal rows. Acknowledgements from either are settled in the round's transaction
//! ([`Clients::settle`]) and taken over by the streams only after the commit.

mod devices;
mod page;
mod polls;
pub mod stream;

use foldhash::{HashMap, HashMapExt, HashSet, HashSetExt};

use bytes::Bytes;
use medlink_broker::acl::{inbox_topic, receipt_topic};
use medlink_broker::{ConnId, Stream};
use tokio::sync::oneshot;

use crate::envelope::Priority;
use crate::journal::{Dest, Target, Txn};
use crate::router::SendPass;
use crate::stats::DeliveredBy;
pub use page::{Cursor, Delivery, Page};
use polls::Polls;
use stream::StreamOut;

/// The lanes a PUBACK is looked up in, the normal lane of commands first (where nearly every
/// acknowledgement belongs).
const ACK_LOOKUP: [(Stream, Priority); 6] = [
    (Stream::Commands, Priority::Normal),
    (Stream::Commands, Priority::Urgent),
    (Stream::Commands, Priority::Bulk),
    (Stream::Receipts, Priority::Normal),
    (Stream::Receipts, Priority::Urgent),
    (Stream::Receipts, Priority::Bulk),
];

/// What happened to a connection's stream subscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// It subscribed.
    Opened,
    /// It unsubscribed or went away; `shared`: it read through a `$share/` group.
    Closed {
        /// Its deliveries went to it alone.
        shared: bool,
    },
}

/// The topic `client` of node `me` reads `stream` on.
pub fn stream_topic(me: &str, client: &str, stream: Stream) -> String {
    match stream {
        Stream::Commands => inbox_topic(me, client),
        Stream::Receipts => receipt_topic(me, client),
    }
}

/// The journal target of one of `client`'s streams.
pub fn target(client: &str, stream: Stream) -> Target {
    match stream {
        Stream::Commands => Target::Commands(client.to_string()),
        Stream::Receipts => Target::Receipts(client.to_string()),
    }
}

/// Every client stream of this node, and its readers.
pub struct Clients {
    me: String,
    /// Stream lanes with a reader now or since this process started.
    streams: HashMap<Dest, StreamOut>,
    /// Lanes whose acknowledgements moved this round, and by which transport.
    touched: HashMap<Dest, DeliveredBy>,
    /// Lanes that may have something to publish: something was queued, acknowledged (the
    /// window opened) or rewound since the last pump. The pump looks only at these, so its
    /// cost follows what changed, not how many clients are connected.
    wake: HashSet<Dest>,
    /// Acknowledgement points written this round, taken over by the streams after commit.
    settled: Vec<(Dest, u64)>,
    /// The lane each client's last PUBACK was for, tried first for its next one. One entry
    /// per client that ever acknowledged here, like `streams`.
    ack_hint: HashMap<String, Dest>,
    polls: Polls,
}

/// Acknowledges `id` on lane `dest` if it is in flight there: the lane is woken and marked
/// for [`Clients::settle`] (its name cloned only when it is not marked yet). `None` when `id`
/// is not in flight on `dest`; otherwise the body if it may want a `delivered` receipt.
fn acknowledge_on(
    (streams, wake, touched): (
        &mut HashMap<Dest, StreamOut>,
        &mut HashSet<Dest>,
        &mut HashMap<Dest, DeliveredBy>,
    ),
    dest: &Dest,
    id: &str,
) -> Option<Option<Bytes>> {
    let out = streams.get_mut(dest)?;
    if !out.acknowledged(id) {
        return None;
    }
    let notice = out.take_notice(id);
    if !wake.contains(dest) {
        wake.insert(dest.clone());
    }
    match touched.get_mut(dest) {
        Some(by) => *by = DeliveredBy::Mqtt,
        None => {
            touched.insert(dest.clone(), DeliveredBy::Mqtt);
        }
    }
    Some(notice)
}

impl Clients {
    /// The clients of node `me`.
    pub fn new(me: &str) -> Clients {
        Clients {
            me: me.to_string(),
            streams: HashMap::new(),
            touched: HashMap::new(),
            wake: HashSet::new(),
            settled: Vec::new(),
            ack_hint: HashMap::new(),
            polls: Polls::default(),
        }
    }

    /// A device of `client` acknowledged `id` (a PUBACK). Everything a client can acknowledge
    /// was published from a lane's in-flight set; the journal is updated once per round, in
    /// [`Clients::settle`]. Returns the body if it may want a `delivered` receipt.
    pub fn delivered(&mut self, client: &str, id: &str) -> Option<Bytes> {
        // One PUBACK per delivery, and nearly all are for the lane the client's previous one
        // was for: try that lane first, without building (allocating) lane names.
        if let Some(dest) = self.ack_hint.get(client) {
            let lanes = (&mut self.streams, &mut self.wake, &mut self.touched);
            if let Some(notice) = acknowledge_on(lanes, dest, id) {
                return notice;
            }
        }
        for (stream, lane) in ACK_LOOKUP {
            let dest = Dest::new(target(client, stream), lane);
            let lanes = (&mut self.streams, &mut self.wake, &mut self.touched);
            if let Some(notice) = acknowledge_on(lanes, &dest, id) {
                self.ack_hint.insert(client.to_string(), dest);
                return notice;
            }
        }
        None
    }

    /// A connection opened or closed one of `client`'s streams. On open, everything not yet
    /// acknowledged goes (again) to every open connection: a new device gets what is pending.
    /// On close nothing is sent again while other connections stay: whatever was in flight on
    /// the closed one went to them too (directly, or by the rewind when they opened), and
    /// sending it again would only give them duplicates; unless the closed one read through a
    /// `$share/` group, whose deliveries went to it alone. Repeats carry the same id.
    pub fn stream_changed(
        &mut self,
        tx: &mut Txn,
        client: &str,
        conn: ConnId,
        stream: Stream,
        change: Change,
    ) -> rusqlite::Result<()> {
        let open = change == Change::Opened;
        for dest in Dest::lanes(target(client, stream)) {
            if !open && !self.streams.contains_key(&dest) {
                continue;
            }
            let floor = tx.floor(&dest)?;
            let out = self.stream_mut(tx, &dest)?;
            if open {
                out.conns.insert(conn);
            } else {
                out.conns.remove(&conn);
            }
            if open || out.conns.is_empty() || change == (Change::Closed { shared: true }) {
                out.rewind(floor);
                self.wake.insert(dest);
            }
        }
        Ok(())
    }

    /// The lane's cursor, created from the journal's acknowledged point on first use.
    fn stream_mut(&mut self, tx: &Txn, dest: &Dest) -> rusqlite::Result<&mut StreamOut> {
        if !self.streams.contains_key(dest) {
            let acked = tx.acked(dest)?;
            self.streams.insert(dest.clone(), StreamOut::new(acked));
        }
        Ok(self
            .streams
            .get_mut(dest)
            .expect("present or inserted above"))
    }

    /// Something was queued on `dest` this round: its connections and waiting polls look
    /// after the commit.
    pub fn enqueued(&mut self, dest: &Dest) {
        if self.streams.contains_key(dest) {
            self.wake.insert(dest.clone());
        }
        self.polls.enqueued(dest);
    }

    /// An HTTP long-poll of `client`'s `stream`, after acknowledging up to its cursor if
    /// asked to. Returns the bodies acknowledged that may want a `delivered` receipt.
    #[allow(clippy::too_many_arguments)]
    pub fn poll(
        &mut self,
        tx: &mut Txn,
        client: &str,
        stream: Stream,
        (after, ack): (Option<Cursor>, bool),
        (max, wait): (usize, bool),
        reply: oneshot::Sender<Page>,
    ) -> rusqlite::Result<Vec<Bytes>> {
        let mut notices = Vec::new();
        if let Some(after) = after.filter(|_| ack) {
            notices = self.http_ack(tx, client, stream, after)?.1;
        }
        let key = Dest::new(target(client, stream), Priority::Normal);
        self.polls.park(key, after, (max, wait), reply);
        Ok(notices)
    }

    /// Acknowledges `client`'s `stream` up to `upto` in each lane, never beyond what was handed
    /// out; returns the acknowledged point, and the bodies acknowledged that may want a
    /// `delivered` receipt.
    pub fn http_ack(
        &mut self,
        tx: &mut Txn,
        client: &str,
        stream: Stream,
        upto: Cursor,
    ) -> rusqlite::Result<(Cursor, Vec<Bytes>)> {
        let mut point = Cursor::default();
        let mut notices = Vec::new();
        for (lane, dest) in Dest::lanes(target(client, stream)).iter().enumerate() {
            let limit = self.polls.handed_out(dest);
            let out = self.stream_mut(tx, dest)?;
            let upto = upto.0[lane].min(limit.max(out.acked()));
            let moved = out.confirm_upto(upto);
            point.0[lane] = upto.max(out.acked());
            if moved {
                self.wake.insert(dest.clone());
                self.touched.insert(dest.clone(), DeliveredBy::Http);
            }
            notices.extend(self.polls.acknowledged(dest, upto));
        }
        Ok((point, notices))
    }

    /// Persists how far each touched lane is acknowledged and drops what is below.
    pub fn settle(&mut self, tx: &mut Txn) -> rusqlite::Result<()> {
        let streams = &self.streams;
        let acks: Vec<(Dest, u64, DeliveredBy)> = std::mem::take(&mut self.touched)
            .into_iter()
            .filter_map(|(dest, by)| {
                let upto = streams.get(&dest).and_then(StreamOut::unsettled_ack)?;
                Some((dest, upto, by))
            })
            .collect();
        if acks.is_empty() {
            return Ok(());
        }
        tx.acknowledge_all(&acks)?;
        self.settled
            .extend(acks.into_iter().map(|(dest, upto, _)| (dest, upto)));
        Ok(())
    }

    /// The round committed: the lanes take their persisted acknowledgement points.
    pub fn committed(&mut self) {
        for (dest, upto) in std::mem::take(&mut self.settled) {
            if let Some(stream) = self.streams.get_mut(&dest) {
                stream.settled(upto);
            }
        }
    }

    /// The round's commit failed: acknowledgements not persisted count for nothing, and every
    /// lane publishes again from its last persisted point (repeats carry the same id).
    pub fn commit_failed(&mut self) {
        self.settled.clear();
        self.touched.clear();
        for (dest, stream) in self.streams.iter_mut() {
            stream.forget_unsettled();
            self.wake.insert(dest.clone());
        }
    }

    /// Publishes what the windows allow to connected clients, urgent lanes first, then
    /// answers the woken HTTP polls. Expired envelopes are skipped into `stale`.
    pub fn pump(&mut self, pass: &mut SendPass) -> rusqlite::Result<()> {
        let streams = &self.streams;
        let mut ready: Vec<Dest> = self
            .wake
            .drain()
            .filter(|d| streams.get(d).is_some_and(StreamOut::ready))
            .collect();
        ready.sort_unstable_by_key(Dest::lane);
        // A lane left out of `wake` now has nothing unsent, or a full window: an
        // acknowledgement or a new entry puts it back.
        for dest in ready {
            self.deliver(pass, &dest)?;
        }
        let journal = pass.journal;
        let acked = |dest: &Dest| match self.streams.get(dest) {
            Some(s) => Ok(s.acked()),
            None => journal.acked(dest),
        };
        self.polls.serve(journal, acked, pass.now)
    }

    /// Publishes queued envelopes of `dest` into the client's inbox or receipt topic.
    fn deliver(&mut self, pass: &mut SendPass, dest: &Dest) -> rusqlite::Result<()> {
        let topic = match dest.target() {
            Target::Commands(client) => stream_topic(&self.me, client, Stream::Commands),
            Target::Receipts(client) => stream_topic(&self.me, client, Stream::Receipts),
            _ => return Ok(()),
        };
        let Some(stream) = self.streams.get_mut(dest) else {
            return Ok(());
        };
        let rows = stream.next_batch(pass.journal, dest, pass.now, &mut pass.stale)?;
        if self.polls.has_readers(dest) {
            for row in &rows {
                self.polls.keep(dest, row);
            }
        }
        let bodies: Vec<Bytes> = rows.into_iter().map(|row| row.body).collect();
        pass.router.publish_all(&topic, &bodies);
        Ok(())
    }

    /// Whether `client` has a device connected over MQTT or an HTTP poll waiting now.
    pub fn online(&self, client: &str) -> bool {
        let commands = Dest::new(Target::Commands(client.to_string()), Priority::Normal);
        self.streams
            .get(&commands)
            .is_some_and(|s| !s.conns.is_empty())
            || self.polls.is_waiting(&commands)
    }

    /// How far `dest` is acknowledged, and whether `lseq` on it is published and waiting for
    /// its acknowledgement; `None` if no reader has looked at it since the start.
    pub fn position(&self, dest: &Dest, lseq: u64) -> Option<(u64, bool)> {
        self.streams
            .get(dest)
            .map(|s| (s.acked(), s.in_flight(lseq)))
    }

    /// Publishes `dest` again from its acknowledged point (a drop of what it skipped failed).
    pub fn rewind(&mut self, dest: &Dest) {
        if let Some(s) = self.streams.get_mut(dest) {
            s.rewind(0);
            self.wake.insert(dest.clone());
        }
    }

    /// Drops polls whose HTTP request is gone, and kept deliveries past their grace.
    pub fn prune(&mut self) {
        self.polls.prune();
    }
}
