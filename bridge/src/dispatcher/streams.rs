//! Client streams at the dispatcher: which connections have a stream open (a new device, or
//! one gone, rewinds it), publishing queued envelopes to them, and settling their cumulative
//! acknowledgements once per round. The cursor arithmetic itself is `delivery.rs`.

use medlink_broker::acl::{inbox_topic, receipt_topic};
use medlink_broker::{ConnId, Stream};

use super::State;
use crate::delivery::{lane_dests, StreamOut};
use crate::envelope::Priority;
use crate::journal::{Journal, Txn};
use crate::links::Stale;

impl State {
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
