//! The MQTT transport (TCP, TLS, WebSocket, secure WebSocket): one session per connection.
//! A fresh rumqttc event loop per session, so nothing rumqttc kept from a dead connection is
//! replayed behind our back: the send queue is the only source of resends, always with the
//! same ids. Sends complete on PUBACK (the node answers only after its journal commit);
//! deliveries are acknowledged manually, after the hand-over.

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use futures_util::StreamExt;
use medlink_wire::topics::{inbox_topic, outbox_topic, receipt_topic};
use rumqttc::{
    AsyncClient, ConnectReturnCode, ConnectionError, Event, MqttOptions, NetworkOptions, Outgoing,
    Packet, QoS, SubscribeReasonCode, TlsConfiguration,
};
use tracing::warn;

use crate::message::{Message, MessageId};
use crate::session::{Core, Ended};
use crate::{Error, Transport};

/// Publishes waiting for their PUBACK at most (rumqttc's own in-flight limit is set to it).
const WINDOW: usize = 100;
/// rumqttc's request channel: room for a window of publishes plus the PUBACKs of two full
/// delivery windows (1024 each), so a `try_` call never finds it full.
const REQUESTS: usize = 4096;
/// CONNECT, CONNACK and both SUBACKs must be done within this.
const SESSION_TIMEOUT: Duration = Duration::from_secs(15);

fn lost(connected: bool, reason: impl std::fmt::Display) -> Ended {
    Ended::Lost {
        connected,
        reason: reason.to_string(),
    }
}

/// rumqttc options for `url` (`mqtt`, `mqtts`, `ws`, `wss`).
fn options(core: &Core, url: &str) -> Result<MqttOptions, String> {
    let parsed = url::Url::parse(url).map_err(|e| format!("'{url}': {e}"))?;
    let host = parsed
        .host_str()
        .ok_or_else(|| format!("'{url}' has no host"))?
        .to_string();
    let tls = || -> Result<TlsConfiguration, String> {
        let config = core
            .tls
            .clone()
            .ok_or_else(|| format!("'{url}' needs TLS, and no CA was given (Options::ca)"))?;
        Ok(TlsConfiguration::Rustls(config))
    };
    let id = core.client_id.clone();
    let port = parsed
        .port()
        .or_else(|| medlink_wire::default_port(parsed.scheme()))
        .unwrap_or_default();
    let (mut opts, transport) = match parsed.scheme() {
        "mqtt" | "tcp" => (MqttOptions::new(id, host, port), None),
        "mqtts" | "ssl" => (
            MqttOptions::new(id, host, port),
            Some(rumqttc::Transport::tls_with_config(tls()?)),
        ),
        // rumqttc takes the whole URL as the "host" for WebSocket.
        "ws" => (
            MqttOptions::new(id, url, port),
            Some(rumqttc::Transport::Ws),
        ),
        "wss" => (
            MqttOptions::new(id, url, port),
            Some(rumqttc::Transport::wss_with_config(tls()?)),
        ),
        other => return Err(format!("'{url}': scheme '{other}' is not MQTT")),
    };
    if let Some(t) = transport {
        opts.set_transport(t);
    }
    opts.set_credentials(&core.me.client, &core.password)
        .set_keep_alive(Duration::from_secs(20))
        .set_clean_session(true)
        .set_manual_acks(true)
        .set_inflight(WINDOW as u16)
        .set_request_channel_capacity(REQUESTS)
        .set_max_packet_size(16 << 20, 16 << 20);
    Ok(opts)
}

/// A refusal that resending the same CONNECT will not fix.
fn refusal(e: &ConnectionError) -> Option<Error> {
    match e {
        ConnectionError::ConnectionRefused(
            code @ (ConnectReturnCode::BadUserNamePassword
            | ConnectReturnCode::NotAuthorized
            | ConnectReturnCode::BadClientId),
        ) => Some(Error::Auth(format!(
            "the node refused the login ({code:?})"
        ))),
        _ => None,
    }
}

/// Runs one session on `url` until it ends.
pub(crate) async fn session(core: &mut Core, url: &str, kind: Transport) -> Ended {
    let opts = match options(core, url) {
        Ok(o) => o,
        Err(reason) => return lost(false, reason),
    };
    let (client, mut eventloop) = AsyncClient::new(opts, REQUESTS);
    // PUBACKs and small publishes must not wait for delayed ACKs (Nagle).
    let mut net = NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(10);
    eventloop.set_network_options(net);
    // `EventLoop::poll` must not be dropped half-way (the `select!` below drops the branch
    // that loses): rumqttc assigns a publish its packet id, or decodes a delivery, before it
    // writes the publish (or the PUBACK), and a poll dropped while that write waits for the
    // socket loses the packet with its id still in flight. Kept in a stream, a poll in
    // progress survives the select (see the uplink, where this froze tier links).
    let mut events = Box::pin(futures_util::stream::unfold(
        eventloop,
        |mut eventloop| async move {
            let event = eventloop.poll().await;
            Some((event, eventloop))
        },
    ));
    let (node, me) = (&core.me.node, &core.me.client);
    let topic = outbox_topic(node, me);
    let filters = [inbox_topic(node, me), receipt_topic(node, me)];
    let mut live = false;
    let mut subacks = 0;
    // Sends at the front of the queue handed to rumqttc in this session.
    let mut sent = 0usize;
    // Their ids, waiting for rumqttc to assign packet ids (it does so in order).
    let mut unpaired: VecDeque<MessageId> = VecDeque::new();
    let mut by_pkid: HashMap<u16, MessageId> = HashMap::new();
    let setup = tokio::time::sleep(SESSION_TIMEOUT);
    tokio::pin!(setup);
    let mut stop = core.stop.clone();
    loop {
        if live {
            while sent < core.queue.len() && sent < WINDOW {
                let Some(p) = core.queue.get(sent) else { break };
                if let Err(e) =
                    client.try_publish(topic.clone(), QoS::AtLeastOnce, false, p.body.to_vec())
                {
                    return lost(true, format!("cannot queue a publish: {e}"));
                }
                unpaired.push_back(p.id.clone());
                sent += 1;
            }
        }
        tokio::select! {
            Some(ev) = events.next() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(_))) => {
                    // Sessions are clean: subscribe after every connect.
                    for f in &filters {
                        if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                            return lost(false, format!("cannot subscribe: {e}"));
                        }
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(ack))) => {
                    if ack.return_codes.contains(&SubscribeReasonCode::Failure) {
                        return Ended::Refused(Error::Config(format!(
                            "the node refused the subscription to {}'s inbox: is node '{}' the node at {url}?",
                            core.me.client, core.me.node
                        )));
                    }
                    subacks += 1;
                    if subacks == filters.len() {
                        live = true;
                        core.connected(kind);
                    }
                }
                Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                    if let Some(id) = unpaired.pop_front() {
                        by_pkid.insert(pkid, id);
                    }
                }
                Ok(Event::Incoming(Packet::PubAck(ack))) => {
                    let at = by_pkid.remove(&ack.pkid).and_then(|id| core.queue.position(&id));
                    if let Some(at) = at {
                        // Everything acknowledged was sent in this session, so it sat in the
                        // sent prefix.
                        sent = sent.saturating_sub(1);
                        core.queue.custody(&[at]).await;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let taken = match serde_json::from_slice::<Message>(&p.payload) {
                        // A full channel (an application not reading) must not keep `close`
                        // waiting; the hand-over is cancel-safe and the node redelivers.
                        Ok(m) => tokio::select! {
                            taken = core.handover.deliver(m) => taken,
                            _ = Core::stopped(&mut stop) => {
                                let _ = client.try_disconnect();
                                return Ended::Closed;
                            }
                        },
                        Err(e) => {
                            warn!(error = %e, topic = %p.topic, "undecodable delivery dropped");
                            true
                        }
                    };
                    // Acknowledged only after the hand-over: if the session dies in between, the
                    // node delivers it again and the hand-over drops the repeat. Not at all if
                    // the application dropped the channel: the node keeps it.
                    if taken {
                        if let Err(e) = client.try_ack(&p) {
                            return lost(true, format!("cannot acknowledge: {e}"));
                        }
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(refused) = refusal(&e) {
                        return Ended::Refused(refused);
                    }
                    return lost(live, e);
                }
            },
            p = core.submits.recv() => {
                if !core.take(p) {
                    let _ = client.try_disconnect();
                    return Ended::Closed;
                }
            }
            _ = &mut setup, if !live => return lost(false, format!("{url}: no session within {SESSION_TIMEOUT:?}")),
            _ = Core::stopped(&mut stop) => {
                let _ = client.try_disconnect();
                return Ended::Closed;
            }
        }
    }
}
