//! What the node sends a client: each publish from the connection's mailbox is encoded with a
//! packet id of this connection's own, remembered so the client's PUBACK can be matched to the
//! envelope it acknowledges.

use bytes::Bytes;
use tracing::warn;

use crate::connect::End;
use crate::fanout::Outgoing;
use crate::frontend::FrontEnd;
use crate::metrics::bump;

use super::{Session, MAX_INFLIGHT};

impl Session {
    /// Encodes one publish from the mailbox.
    pub(super) fn outgoing(&mut self, ctx: &FrontEnd, out: Outgoing) -> Result<(), End> {
        // Only a delivery on one of this connection's own streams is reported back as
        // delivered; a tap or a link frame is not custody of this client's.
        let id = (!out.tap && !self.streams.is_empty())
            .then(|| envelope_id(&out.payload))
            .flatten();
        if out.qos == 0 {
            self.codec
                .publish(&out.topic, &out.payload, 0, 0, &mut self.wbuf);
            if let Some(id) = id {
                // A QoS 0 subscriber asked for at-most-once: handing it over is delivery.
                self.delivered.push(id);
            }
            return Ok(());
        }
        if self.inflight.len() >= MAX_INFLIGHT {
            if out.tap {
                bump(&ctx.metrics.taps_dropped);
                return Ok(());
            }
            // Windows keep a well-behaved client far below this: one that acknowledges
            // nothing is dropped, and the journal keeps its deliveries for the next connection.
            warn!(identity = %self.identity.name, client = %self.client_id, "connection dropped: {MAX_INFLIGHT} deliveries unacknowledged");
            bump(&ctx.metrics.slow_consumers);
            return Err(End::SlowConsumer);
        }
        let pkid = self.next_pkid();
        self.inflight.insert(pkid, id);
        self.codec
            .publish(&out.topic, &out.payload, 1, pkid, &mut self.wbuf);
        Ok(())
    }

    /// The next packet id not in flight (1..=65535; 0 is not a packet id).
    fn next_pkid(&mut self) -> u16 {
        loop {
            self.last_pkid = self.last_pkid.wrapping_add(1).max(1);
            if !self.inflight.contains_key(&self.last_pkid) {
                return self.last_pkid;
            }
        }
    }
}

/// The `id` field of an envelope payload, without building the whole envelope.
fn envelope_id(payload: &Bytes) -> Option<String> {
    // Envelopes are serialised by medlink with `id` first and ids never need escaping.
    if let Some(rest) = payload.strip_prefix(br#"{"id":""#) {
        if let Some(end) = rest.iter().position(|b| *b == b'"') {
            if !rest[..end].contains(&b'\\') {
                return std::str::from_utf8(&rest[..end]).ok().map(str::to_string);
            }
        }
    }
    #[derive(serde::Deserialize)]
    struct IdOnly<'a> {
        #[serde(borrow)]
        id: std::borrow::Cow<'a, str>,
    }
    serde_json::from_slice::<IdOnly>(payload)
        .ok()
        .map(|e| e.id.into_owned())
}
