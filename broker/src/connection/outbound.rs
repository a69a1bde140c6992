//! What the router sends a client: deliveries (whose packet ids are remembered so the
//! client's PUBACK can be matched to an envelope) and SUBACKs patched with the ACL's refusals.

use bytes::Bytes;
use rumqttd::protocol::{Packet, SubscribeReasonCode};
use rumqttd::Notification;

use crate::codec::{publish_header, Version};
use crate::connect::End;

use super::Session;

impl Session {
    /// Handles one notification from the router.
    pub(super) async fn outgoing(&mut self, n: Notification) -> Result<(), End> {
        match n {
            Notification::Forward(forward) => {
                let id = (!self.streams.is_empty())
                    .then(|| envelope_id(&forward.publish.payload))
                    .flatten();
                let start = self.wbuf.len();
                self.encode(Packet::Publish(forward.publish, forward.properties))?;
                if let (Some(id), Some((q, pkid))) = (id, publish_header(&self.wbuf[start..])) {
                    if q > 0 {
                        self.inflight.insert(pkid, id);
                    } else {
                        // A QoS 0 subscriber asked for at-most-once: handing it over is delivery.
                        let client = self.identity.name.clone();
                        self.delivered.push((client, id));
                    }
                }
            }
            Notification::Unschedule => {
                self.link_rx
                    .wake()
                    .await
                    .map_err(|_| End::RouterDisconnect)?;
            }
            Notification::Disconnect(d, props) => {
                self.taken_over = true;
                if self.codec.version == Version::V5 {
                    self.encode(Packet::Disconnect(d, props))?;
                }
                return Err(End::RouterDisconnect);
            }
            other => {
                let packet: Option<Packet> = other.into();
                if let Some(packet) = packet {
                    let packet = self.patch_suback(packet);
                    self.encode(packet)?;
                }
            }
        }
        Ok(())
    }

    /// Puts the ACL's refusals back into a SUBACK from the router.
    pub(super) fn patch_suback(&mut self, packet: Packet) -> Packet {
        let Packet::SubAck(mut ack, props) = packet else {
            return packet;
        };
        if let Some(codes) = self.denied.remove(&ack.pkid) {
            let mut granted = ack.return_codes.into_iter();
            ack.return_codes = codes
                .into_iter()
                .map(|c| {
                    c.unwrap_or_else(|| granted.next().unwrap_or(SubscribeReasonCode::Failure))
                })
                .collect();
        }
        Packet::SubAck(ack, props)
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
