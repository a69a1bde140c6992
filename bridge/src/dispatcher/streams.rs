//! Client streams at the dispatcher: which connections have a stream open (a new device, or
//! one gone, rewinds it), publishing queued envelopes to them, and settling their cumulative
//! acknowledgements once per round. The cursor arithmetic itself is `delivery.rs`.

use medlink_broker::acl::{inbox_topic, receipt_topic};
use medlink_broker::{ConnId, Stream};

use super::State;
use crate::delivery::{lane_dests, stream_dest, StreamOut};
use crate::envelope::Priority;
use crate::journal::{Journal, Txn};
use crate::links::Stale;

/// The lanes a PUBACK is looked up in, the normal lane of commands first (where nearly every
/// acknowledgement belongs), so the common case builds one destination name.
const ACK_LOOKUP: [(Stream, Priority); 6] = [
    (Stream::Commands, Priority::Normal),
    (Stream::Commands, Priority::Urgent),
    (Stream::Commands, Priority::Bulk),
    (Stream::Receipts, Priority::Normal),
    (Stream::Receipts, Priority::Urgent),
    (Stream::Receipts, Priority::Bulk),
];

impl State {
    /// A device of `client` acknowledged `id`. Everything a client can acknowledge was
    /// published from a stream's in-flight set; the journal is updated once per round in
    /// `settle_acks`.
    pub(super) fn delivered(
        &mut self,
        tx: &mut Txn,
        client: &str,
        id: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        for (stream, priority) in ACK_LOOKUP {
            let dest = priority.dest(stream_dest(client, stream));
            let Some(out) = self.locals.get_mut(&dest) else {
                continue;
            };
            if out.acknowledged(id) {
                let notice = out.take_notice(id);
                self.stats.delivered();
                self.acked_streams.insert(dest);
                if let Some(body) = notice {
                    self.delivered_notice(tx, &body, now)?;
                }
                break;
            }
        }
        Ok(())
    }

    /// A connection opened or closed one of `client`'s streams. Either way, everything not yet
    /// acknowledged goes (again) to every open connection: a new device gets what is pending,
    /// and nothing waits on a connection that died. Repeats carry the same id.
    pub(super) fn stream_changed(
        &mut self,
        tx: &mut Txn,
        client: &str,
        conn: ConnId,
        stream: Stream,
        open: bool,
    ) -> rusqlite::Result<()> {
        for dest in lane_dests(client, stream) {
            if !self.locals.contains_key(&dest) {
                if !open {
                    continue;
                }
                let acked = tx.acked(&dest)?;
                self.locals.insert(dest.clone(), StreamOut::new(acked));
            }
            let floor = tx.floor(&dest)?;
            let local = self
                .locals
                .get_mut(&dest)
                .expect("present or inserted above");
            if open {
                local.conns.insert(conn);
            } else {
                local.conns.remove(&conn);
            }
            local.rewind(floor);
        }
        Ok(())
    }

    /// Persists how far each touched client stream is acknowledged and drops what is below.
    pub(super) fn settle_acks(&mut self, tx: &mut Txn) -> rusqlite::Result<()> {
        for dest in std::mem::take(&mut self.acked_streams) {
            if let Some(upto) = self.locals.get(&dest).and_then(StreamOut::unsettled_ack) {
                tx.acknowledge(&dest, upto)?;
                self.settled.push((dest, upto));
            }
        }
        Ok(())
    }

    /// Publishes queued envelopes of `dest` into the client's inbox or receipt topic.
    pub(super) fn deliver(
        &mut self,
        journal: &Journal,
        dest: &str,
        now: u64,
        stale: &mut Vec<Stale>,
    ) -> rusqlite::Result<()> {
        let me = self.me().to_string();
        let topic = match Priority::of_dest(dest).0.split_once(':') {
            Some(("receipts", client)) => receipt_topic(&me, client),
            Some((_, client)) => inbox_topic(&me, client),
            None => return Ok(()),
        };
        let Some(stream) = self.locals.get_mut(dest) else {
            return Ok(());
        };
        let rows = stream.next_batch(journal, dest, now, stale)?;
        let keep = self.polls.has_readers(dest);
        for row in rows {
            if keep {
                self.polls.recent.keep(dest, &row);
            }
            self.publish(&topic, row.body);
        }
        Ok(())
    }
}
