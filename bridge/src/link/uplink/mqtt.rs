//! The uplink over MQTT on WebSocket (rumqttc): `link/<me>/up` out, `link/<me>/down` in. TCP
//! and TLS parents use `direct.rs`.

use std::time::Duration;

use futures_util::StreamExt;
use medlink_wire::topics::{link_down_topic, link_up_topic};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tracing::{debug, info};

use super::health::Cause;
use super::parent::{Channels, Ended, ParentAddr, ParentEvent, UplinkConfig};

fn options(cfg: &UplinkConfig, addr: &ParentAddr) -> MqttOptions {
    let (mut opts, transport) = match addr {
        ParentAddr::Ws { url, port } => (MqttOptions::new(&cfg.node_id, url, *port), Transport::Ws),
        ParentAddr::Wss { url, port } => (
            MqttOptions::new(&cfg.node_id, url, *port),
            Transport::wss_with_config(TlsConfiguration::Rustls(
                cfg.tls
                    .clone()
                    .expect("configuration loading requires a CA for wss parents"),
            )),
        ),
        ParentAddr::Tcp { .. } | ParentAddr::Tls { .. } => {
            unreachable!("TCP and TLS addresses run uplink::direct sessions")
        }
        ParentAddr::Http { .. } => unreachable!("HTTP addresses run uplink::http sessions"),
    };
    opts.set_transport(transport);
    opts.set_credentials(&cfg.node_id, cfg.password.as_deref().unwrap_or(""))
        .set_keep_alive(Duration::from_secs(5))
        .set_clean_session(true)
        .set_max_packet_size(cfg.max_packet, cfg.max_packet)
        .set_inflight(256);
    opts
}

/// Why an MQTT session could not be had: the CONNACK's refusal, or what the error chain says.
fn cause(e: &rumqttc::ConnectionError) -> Cause {
    use rumqttc::ConnectReturnCode as Code;
    match e {
        rumqttc::ConnectionError::ConnectionRefused(
            Code::BadUserNamePassword | Code::NotAuthorized,
        ) => Cause::LoginRefused,
        rumqttc::ConnectionError::NetworkTimeout => Cause::Timeout,
        other => Cause::of(other),
    }
}

/// The QoS of link frames, up and down (see `session`).
const LINK_QOS: QoS = QoS::AtMostOnce;

/// One MQTT session with the parent at `addr`.
pub(super) async fn session(cfg: &UplinkConfig, addr: &ParentAddr, ch: &mut Channels<'_>) -> Ended {
    let up_topic = link_up_topic(&cfg.node_id);
    let down_topic = link_down_topic(&cfg.node_id);
    let (client, mut eventloop) = AsyncClient::new(options(cfg, addr), 1024);
    // Acks and pings are small writes; Nagle would hold them for a delayed ACK.
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    net.set_connection_timeout(5);
    eventloop.set_network_options(net);
    // Queued now, sent right after CONNACK. Frames travel at QoS 0 both ways: custody is the
    // link's own (an `ack` frame after the receiver's commit, go-back-N resends after a lost
    // connection), so a PUBACK per frame would only add a packet each way at every hop
    // (ARCHITECTURE.md, "Custody rules").
    let _ = client.try_subscribe(&down_topic, LINK_QOS);
    // `EventLoop::poll` must never be dropped half-way, yet `select!` drops whichever branch
    // loses. rumqttc gives a publish its packet id and records it in flight, or decodes a
    // publish from the parent, and only then writes the publish (or its PUBACK); that write
    // first waits for the socket to take the rest of the previous large frame. A poll dropped
    // there loses the packet: a lost publish keeps its id outstanding until the ids come round
    // ("Collision on packet id"), after which rumqttc sends nothing until the stall timer
    // reconnects; a lost PUBACK makes the parent's router drop the link (out-of-order ack).
    // Kept in a stream, the poll in progress survives the select: `next()` is cancel-safe.
    let mut events = Box::pin(futures_util::stream::unfold(
        eventloop,
        |mut eventloop| async move {
            let event = eventloop.poll().await;
            Some((event, eventloop))
        },
    ));
    let mut subscribed = false;
    loop {
        tokio::select! {
            Some(ev) = events.next() => match ev {
                Ok(Event::Incoming(Packet::SubAck(ack))) if !subscribed => {
                    if ack.return_codes.iter().any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure)) {
                        return Ended::Lost { connected: false, reason: Cause::NotAChild };
                    }
                    subscribed = true;
                    info!(parent = %addr, "connected to parent");
                    if !ch.connected(false).await {
                        return Ended::Shutdown;
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    if ch.events.send(ParentEvent::Frame(p.payload)).await.is_err() {
                        return Ended::Shutdown;
                    }
                }
                Ok(_) => {}
                Err(e) => return Ended::Lost { connected: subscribed, reason: cause(&e) },
            },
            Some(frame) = ch.frames.recv(), if subscribed => {
                if let Err(e) = client.try_publish(&up_topic, LINK_QOS, false, frame) {
                    debug!(error = %e, "frame not queued; the window will resend it");
                }
            }
            Some(()) = ch.reconnect.recv() => {
                return Ended::Lost { connected: subscribed, reason: Cause::Stalled };
            }
            _ = ch.shutdown.changed() => {
                let _ = client.try_disconnect();
                let _ = tokio::time::timeout(Duration::from_millis(200), events.next()).await;
                return Ended::Shutdown;
            }
        }
    }
}
