//! What a client sends: publishes (commands with a custody decision owed, link frames, or
//! refusals), subscriptions checked against the ACL, and the PUBACK/PUBREC answering each
//! publish once the node has decided.

use rumqttd::protocol::{
    DisconnectReasonCode, Error, Packet, PingResp, PubAck, PubAckReason, PubComp, PubCompReason,
    PubRec, PubRecReason, QoS, SubAck, Subscribe, SubscribeReasonCode, UnsubAck, UnsubAckReason,
};
use tokio::sync::oneshot;
use tracing::warn;

use crate::acl::{link_down_topic, stream_of, strip_share, PublishClass};
use crate::codec::Version;
use crate::connect::End;
use crate::events::{Accept, Inbound, Stream};
use crate::fanout::{valid_filter, SubKind};
use crate::metrics::bump;
use crate::rate::RateVerdict;

use super::{FrontEnd, OwedAck, Session};

impl Session {
    pub(super) async fn incoming(
        &mut self,
        ctx: &FrontEnd,
        packet: Packet,
        header: Option<(u8, u16)>,
    ) -> Result<(), End> {
        if !matches!(packet, Packet::PubAck(..)) {
            // Whatever this packet makes the connection report comes after its acknowledgements.
            super::report(ctx, &self.identity.name, &mut self.acked).await;
        }
        match packet {
            Packet::Publish(publish, props) => {
                let (qos, pkid) = header.expect("a decoded PUBLISH has a complete header");
                if props.as_ref().is_some_and(|p| p.topic_alias.is_some()) {
                    // CONNACK said topic_alias_max = 0: an alias is a protocol error, and
                    // refusing it outright means an alias can never stand in for a topic the
                    // ACL would deny.
                    bump(&ctx.metrics.malformed);
                    self.disconnect_v5(DisconnectReasonCode::TopicAliasInvalid);
                    return Err(End::Protocol(Error::IncorrectPacketFormat));
                }
                // Invalid UTF-8 is no topic at all, so it matches nothing the ACL allows.
                let topic = std::str::from_utf8(&publish.topic).unwrap_or("");
                let class = ctx.acl.publish(&self.identity, topic);
                if class == PublishClass::Outbox {
                    if let RateVerdict::Refused { notify } = ctx
                        .rate
                        .check(&self.identity.name, std::time::Instant::now())
                    {
                        bump(&ctx.metrics.rate_limited);
                        if notify {
                            let limit = ctx.rate.settings();
                            warn!(identity = %self.identity.name, per_second = limit.per_second, burst = limit.burst, "publish refused: rate limit");
                            let reason = format!(
                                "rate limit exceeded: {} commands per second per identity (bursts of {}); the command was not accepted",
                                limit.per_second, limit.burst
                            );
                            let _ = ctx.inbound.try_send(Inbound::Refused {
                                client: self.identity.name.clone(),
                                payload: publish.payload.clone(),
                                reason,
                            });
                        }
                        if qos > 0 {
                            let (tx, rx) = oneshot::channel();
                            let _ = tx.send(Accept::RateLimited);
                            self.owed.push_back(OwedAck {
                                pkid,
                                qos,
                                verdict: rx,
                            });
                        }
                        return Ok(());
                    }
                }
                let (tx, rx) = if qos > 0 {
                    let (tx, rx) = oneshot::channel();
                    (Some(tx), Some(rx))
                } else {
                    (None, None)
                };
                let item = match class {
                    PublishClass::Outbox => Inbound::Command {
                        client: self.identity.name.clone(),
                        payload: publish.payload,
                        reply: tx,
                    },
                    PublishClass::LinkUp => Inbound::LinkFrame {
                        child: self.identity.name.clone(),
                        payload: publish.payload,
                        reply: tx,
                    },
                    PublishClass::Denied => {
                        bump(&ctx.metrics.acl_publish_denied);
                        warn!(identity = %self.identity.name, topic, "publish denied by ACL");
                        if let Some(tx) = tx {
                            let _ = tx.send(Accept::NotAuthorized);
                        }
                        if let Some(rx) = rx {
                            self.owed.push_back(OwedAck {
                                pkid,
                                qos,
                                verdict: rx,
                            });
                        }
                        return Ok(());
                    }
                };
                ctx.inbound.send(item).await.map_err(|_| End::Shutdown)?;
                if let Some(rx) = rx {
                    self.owed.push_back(OwedAck {
                        pkid,
                        qos,
                        verdict: rx,
                    });
                }
            }
            Packet::PubRel(rel, _) => {
                // QoS 2 publishes were acknowledged with PUBREC after custody, and duplicates
                // are removed by envelope id, so PUBREL can be completed at once.
                self.encode(Packet::PubComp(
                    PubComp {
                        pkid: rel.pkid,
                        reason: PubCompReason::Success,
                    },
                    None,
                ))?;
            }
            Packet::Subscribe(subscribe, props) => self.subscribe(ctx, subscribe, props).await?,
            Packet::Unsubscribe(unsub, _) => {
                let mut reasons = Vec::with_capacity(unsub.filters.len());
                for f in &unsub.filters {
                    let had = ctx.fanout.unsubscribe(f, self.conn);
                    self.filters.retain(|mine| mine != f);
                    reasons.push(if had {
                        UnsubAckReason::Success
                    } else {
                        UnsubAckReason::NoSubscriptionExisted
                    });
                    if let Some(stream) =
                        stream_of(&ctx.node_id, &self.identity.name, strip_share(f))
                    {
                        if self.streams.contains(&stream) && !self.subscribed_to(stream, ctx) {
                            self.streams.retain(|s| *s != stream);
                            self.notify_closed(ctx, stream).await;
                        }
                    }
                }
                let ack = UnsubAck {
                    pkid: unsub.pkid,
                    reasons,
                };
                self.encode(Packet::UnsubAck(ack, None))?;
            }
            Packet::PubAck(ack, _) => {
                // An unknown packet id (acknowledged twice, or never sent) is ignored.
                if let Some(Some(id)) = self.inflight.remove(&ack.pkid) {
                    self.acked.push(id);
                }
            }
            Packet::PingReq(_) => self.encode(Packet::PingResp(PingResp))?,
            Packet::Disconnect(..) => return Err(End::Disconnected),
            Packet::Connect(..) => return Err(End::Protocol(Error::IncorrectPacketFormat)),
            // PUBREC and PUBCOMP answer QoS 2 deliveries, which are never sent (QoS is
            // capped at 1): nothing to do.
            _ => {}
        }
        Ok(())
    }

    pub(super) async fn subscribe(
        &mut self,
        ctx: &FrontEnd,
        subscribe: Subscribe,
        _props: Option<rumqttd::protocol::SubscribeProperties>,
    ) -> Result<(), End> {
        let (refusal, invalid) = match self.codec.version {
            Version::V4 => (SubscribeReasonCode::Failure, SubscribeReasonCode::Failure),
            Version::V5 => (
                SubscribeReasonCode::NotAuthorized,
                SubscribeReasonCode::TopicFilterInvalid,
            ),
        };
        let mut codes = Vec::with_capacity(subscribe.filters.len());
        let mut opens: Vec<Stream> = Vec::new();
        let mut opens_child = false;
        for filter in subscribe.filters {
            let plain = strip_share(&filter.path);
            if !valid_filter(plain) {
                codes.push(invalid);
                continue;
            }
            if !ctx.acl.subscribe(&self.identity, &filter.path) {
                bump(&ctx.metrics.acl_subscribe_denied);
                warn!(identity = %self.identity.name, filter = %filter.path, "subscribe denied by ACL");
                codes.push(refusal);
                continue;
            }
            let stream = stream_of(&ctx.node_id, &self.identity.name, plain);
            let child = plain == link_down_topic(&self.identity.name);
            // Deliveries are QoS 1 at most: custody is end to end, not QoS 2's handshake.
            let qos = match filter.qos {
                QoS::AtMostOnce => QoS::AtMostOnce,
                _ => QoS::AtLeastOnce,
            };
            // Anything but the connection's own streams and link is a watcher's tap.
            let kind = match (stream, child) {
                (Some(_), _) => SubKind::Stream,
                (None, true) => SubKind::Link,
                (None, false) => SubKind::Tap,
            };
            ctx.fanout
                .subscribe(&filter.path, self.conn, qos as u8, kind, &self.mailbox);
            if let (Some(s), true) = (stream, filter.path.starts_with("$share/")) {
                if !self.shared_streams.contains(&s) {
                    self.shared_streams.push(s);
                }
            }
            if !self.filters.contains(&filter.path) {
                self.filters.push(filter.path);
            }
            opens.extend(stream);
            opens_child |= child;
            codes.push(SubscribeReasonCode::Success(qos));
        }
        // The subscription is in the fan-out table before the node hears of it, so whatever
        // the node publishes next reaches this connection.
        let ack = SubAck {
            pkid: subscribe.pkid,
            return_codes: codes,
        };
        self.encode(Packet::SubAck(ack, None))?;
        for stream in opens {
            if !self.streams.contains(&stream) {
                self.streams.push(stream);
                let item = Inbound::InboxOpen {
                    client: self.identity.name.clone(),
                    conn: self.conn,
                    stream,
                };
                ctx.inbound.send(item).await.map_err(|_| End::Shutdown)?;
            }
        }
        if opens_child && !self.child_open {
            self.child_open = true;
            let item = Inbound::ChildOpen {
                child: self.identity.name.clone(),
                conn: self.conn,
            };
            ctx.inbound.send(item).await.map_err(|_| End::Shutdown)?;
        }
        Ok(())
    }

    /// Whether one of this connection's filters (plain or shared) still delivers `stream`.
    fn subscribed_to(&self, stream: Stream, ctx: &FrontEnd) -> bool {
        self.filters
            .iter()
            .any(|f| stream_of(&ctx.node_id, &self.identity.name, strip_share(f)) == Some(stream))
    }

    /// Writes the client's PUBACK/PUBREC for a custody decision, in arrival order.
    pub(super) fn answer(&mut self, owed: OwedAck, verdict: Accept) -> Result<(), End> {
        let v5 = self.codec.version == Version::V5;
        let (ok, reason) = match &verdict {
            Accept::Committed => (true, PubAckReason::Success),
            Accept::NotAuthorized => (true, PubAckReason::NotAuthorized),
            Accept::Rejected(_) => (true, PubAckReason::PayloadFormatInvalid),
            Accept::RateLimited => (true, PubAckReason::QuotaExceeded),
            Accept::Unroutable(_) => (true, PubAckReason::UnspecifiedError),
            Accept::Unavailable => (false, PubAckReason::UnspecifiedError),
        };
        if !ok {
            // No acknowledgement: closing makes the client resend after reconnecting.
            return Err(End::Shutdown);
        }
        let reason = if v5 { reason } else { PubAckReason::Success };
        let packet = if owed.qos == 2 {
            let reason = match reason {
                PubAckReason::Success => PubRecReason::Success,
                PubAckReason::NotAuthorized => PubRecReason::NotAuthorized,
                PubAckReason::QuotaExceeded => PubRecReason::QuotaExceeded,
                _ => PubRecReason::ImplementationSpecificError,
            };
            Packet::PubRec(
                PubRec {
                    pkid: owed.pkid,
                    reason,
                },
                None,
            )
        } else {
            Packet::PubAck(
                PubAck {
                    pkid: owed.pkid,
                    reason,
                },
                None,
            )
        };
        self.encode(packet)
    }
}
