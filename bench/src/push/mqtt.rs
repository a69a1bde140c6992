//! An MQTT 3.1.1 recipient small enough to hold 19,000 of them in a few load processes: one
//! task and one socket each, rumqttc's packet codec (no event loop, no channels, no
//! per-connection buffers beyond what arrives). It connects with its identity, subscribes at
//! QoS 1, PUBACKs every delivery, and pings at the keepalive.

use bytes::BytesMut;
use rumqttc::{ConnectReturnCode, Packet, QoS, SubscribeReasonCode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::OwnedReadHalf;

use super::recipient::{Ctx, Event, Life};

/// Largest packet a recipient accepts (an inbox delivery is well under this).
const MAX_PACKET: usize = 1 << 20;
/// CONNACK and SUBACK must come within this.
const ANSWER_WITHIN: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads until one whole packet is in `buf` and returns it.
async fn next_packet(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<Packet, String> {
    loop {
        match Packet::read(buf, MAX_PACKET) {
            Ok(p) => return Ok(p),
            Err(rumqttc::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed packet: {e}")),
        }
        buf.reserve(512);
        match rd.read_buf(buf).await {
            Ok(0) => return Err("connection closed".into()),
            Ok(_) => {}
            Err(e) => return Err(e.to_string()),
        }
    }
}

async fn answer(rd: &mut OwnedReadHalf, buf: &mut BytesMut) -> Result<Packet, String> {
    tokio::time::timeout(ANSWER_WITHIN, next_packet(rd, buf))
        .await
        .map_err(|_| format!("no answer within {} s", ANSWER_WITHIN.as_secs()))?
}

/// One connection of recipient `life`: connect, subscribe, receive until it ends. `Ok` only
/// when the run stops.
pub(super) async fn session(ctx: &Ctx, life: &mut Life) -> Result<(), String> {
    let idx = life.idx();
    let addr = ctx.mqtt.ok_or("no --mqtt address")?;
    let identity = ctx.identity(idx);
    let (mut rd, mut wr) = life.connect(ctx, addr).await?.into_split();
    let mut out = BytesMut::with_capacity(128);
    let mut connect = rumqttc::Connect::new(identity.clone());
    connect.keep_alive = ctx.target.keepalive;
    connect.clean_session = true;
    if let Some(l) = ctx.login(&identity) {
        connect.login = Some(rumqttc::Login::new(l.username, l.secret));
    }
    Packet::Connect(connect)
        .write(&mut out, MAX_PACKET)
        .map_err(|e| e.to_string())?;
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    let mut buf = BytesMut::with_capacity(256);
    match answer(&mut rd, &mut buf).await? {
        Packet::ConnAck(a) if a.code == ConnectReturnCode::Success => {}
        Packet::ConnAck(a) => return Err(format!("CONNACK refused: {:?}", a.code)),
        p => return Err(format!("expected CONNACK, got {p:?}")),
    }
    out.clear();
    let mut subscribe = rumqttc::Subscribe::new(ctx.topic(idx), QoS::AtLeastOnce);
    subscribe.pkid = 1;
    Packet::Subscribe(subscribe)
        .write(&mut out, MAX_PACKET)
        .map_err(|e| e.to_string())?;
    wr.write_all(&out).await.map_err(|e| e.to_string())?;
    loop {
        match answer(&mut rd, &mut buf).await? {
            Packet::SubAck(a) => match a.return_codes.first() {
                Some(SubscribeReasonCode::Success(_)) => break,
                c => return Err(format!("SUBACK refused: {c:?}")),
            },
            // A delivery may overtake the SUBACK; it is handled like any other.
            Packet::Publish(p) => deliver(ctx, idx, &p, &mut wr).await?,
            _ => {}
        }
    }
    life.admitted(ctx);
    // Only a buffer's worth of what arrived stays allocated per idle recipient.
    buf = BytesMut::with_capacity(64);
    let keepalive = std::time::Duration::from_secs(u64::from(ctx.target.keepalive.max(1)));
    let mut ping = tokio::time::interval_at(tokio::time::Instant::now() + keepalive, keepalive);
    let mut stop = ctx.stop.clone();
    loop {
        tokio::select! {
            p = next_packet(&mut rd, &mut buf) => {
                if let Packet::Publish(p) = p? {
                    deliver(ctx, idx, &p, &mut wr).await?;
                }
            }
            _ = ping.tick(), if ctx.target.keepalive > 0 => {
                wr.write_all(&[0xC0, 0x00]).await.map_err(|e| e.to_string())?;
            }
            _ = stop.changed() => {
                let _ = wr.write_all(&[0xE0, 0x00]).await; // DISCONNECT
                return Ok(());
            }
        }
    }
}

/// Records a delivery, then PUBACKs it (QoS 1): the arrival time is taken before the ack.
async fn deliver(
    ctx: &Ctx,
    idx: u32,
    p: &rumqttc::Publish,
    wr: &mut tokio::net::tcp::OwnedWriteHalf,
) -> Result<(), String> {
    ctx.send(Event::Arrival(ctx.arrival(idx, &p.payload)));
    if p.qos != QoS::AtMostOnce {
        let [hi, lo] = p.pkid.to_be_bytes();
        wr.write_all(&[0x40, 0x02, hi, lo])
            .await
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}
