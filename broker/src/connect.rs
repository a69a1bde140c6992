//! The CONNECT phase: recognising MQTT, decoding the CONNECT, and deciding who the
//! connection is — before the session exists.
//!
//! Every refusal here answers with a CONNACK carrying the reason code the client's protocol
//! version understands, then closes; nothing is left behind.

use std::net::SocketAddr;

use bytes::BytesMut;
use rumqttd::protocol::{ConnAck, ConnectReturnCode, Error, LastWill, Login, Packet};

use crate::codec::{sniff_connect, Codec, Sniff};
use crate::events::ConnId;
use crate::frontend::FrontEnd;
use crate::identity::{valid_name, Identity, LoginError};
use crate::metrics::bump;
use crate::transport::Transport;

/// Why a connection ended.
#[derive(Debug, thiserror::Error)]
pub enum End {
    #[error("peer closed")]
    Closed,
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
    #[error("protocol: {0:?}")]
    Protocol(Error),
    #[error("not MQTT")]
    Garbage,
    #[error("refused at CONNECT: {0}")]
    Refused(&'static str),
    #[error("client sent DISCONNECT")]
    Disconnected,
    #[error("keepalive expired")]
    KeepAlive,
    #[error("slow consumer: a write stalled longer than the write timeout")]
    SlowConsumer,
    #[error("session taken over by a new connection with the same client id")]
    TakenOver,
    #[error("node is shutting down")]
    Shutdown,
}

/// A decoded CONNECT, with what we need from it.
pub struct ConnectInfo {
    pub client_id: String,
    pub keep_alive: u16,
    pub login: Option<Login>,
    pub will: Option<LastWill>,
}

/// Reads the CONNECT (within the connect timeout) and picks the protocol version from it.
pub async fn handshake(
    ctx: &FrontEnd,
    transport: &mut Transport,
    rbuf: &mut BytesMut,
) -> Result<(Codec, ConnectInfo), End> {
    let read = tokio::time::timeout(ctx.connect_timeout, async {
        let version = loop {
            match sniff_connect(rbuf) {
                Sniff::Incomplete => read_more(transport, rbuf).await?,
                Sniff::Connect(v) => break v,
                Sniff::Garbage => {
                    bump(&ctx.metrics.malformed);
                    return Err(End::Garbage);
                }
                Sniff::UnsupportedLevel(_) => {
                    // 3.1.1 CONNACK "unacceptable protocol version"
                    transport.write_all(&[0x20, 0x02, 0x00, 0x01]).await?;
                    return Err(End::Refused("unsupported protocol level"));
                }
            }
        };
        let codec = Codec { version };
        let packet = loop {
            match codec.read(rbuf, ctx.max_packet_size) {
                Ok(p) => break p,
                Err(Error::InsufficientBytes(_)) => read_more(transport, rbuf).await?,
                Err(e) => {
                    match e {
                        Error::PayloadSizeLimitExceeded(_) => bump(&ctx.metrics.oversized),
                        _ => bump(&ctx.metrics.malformed),
                    }
                    return Err(End::Protocol(e));
                }
            }
        };
        let Packet::Connect(connect, _props, will, _will_props, login) = packet else {
            bump(&ctx.metrics.malformed);
            return Err(End::Garbage);
        };
        Ok((
            codec,
            ConnectInfo {
                client_id: connect.client_id,
                keep_alive: connect.keep_alive,
                login,
                will,
            },
        ))
    })
    .await;
    read.unwrap_or_else(|_| {
        bump(&ctx.metrics.handshake_timeouts);
        Err(End::Refused("no CONNECT within the connect timeout"))
    })
}

async fn read_more(transport: &mut Transport, rbuf: &mut BytesMut) -> Result<(), End> {
    if transport.read(rbuf, 1024).await? == 0 {
        return Err(End::Closed);
    }
    Ok(())
}

/// Authenticates the CONNECT and checks the client id; returns the identity, the client id
/// (assigned when the client sent none) and whether it was assigned.
pub async fn admit(
    ctx: &FrontEnd,
    transport: &mut Transport,
    codec: Codec,
    info: &ConnectInfo,
    peer: SocketAddr,
    certificate: Option<&str>,
    conn: ConnId,
) -> Result<(Identity, String, bool), End> {
    let login = info.login.as_ref();
    let identity = ctx
        .auth
        .login(
            peer.ip(),
            login.map(|l| l.username.as_str()),
            login.map(|l| l.password.as_bytes()),
            certificate,
        )
        .await;
    match check_client_id(identity, &info.client_id, conn) {
        Ok(admitted) => Ok(admitted),
        Err((code, why)) => Err(refuse(transport, codec, code, why).await),
    }
}

/// The decision of [`admit`] after authentication, without I/O: identity, client id, whether
/// it was assigned, or the CONNACK code and reason of a refusal.
fn check_client_id(
    identity: Result<Identity, LoginError>,
    client_id: &str,
    conn: ConnId,
) -> Result<(Identity, String, bool), (ConnectReturnCode, &'static str)> {
    let identity = identity.map_err(|e| match e {
        LoginError::InvalidName => (
            ConnectReturnCode::ClientIdentifierNotValid,
            "identity contains + # / or control characters",
        ),
        LoginError::BadCredentials => (
            ConnectReturnCode::BadUserNamePassword,
            "bad username, password or certificate",
        ),
        LoginError::Throttled => (
            ConnectReturnCode::ServiceUnavailable,
            "too many recent login attempts; retry later",
        ),
    })?;
    let assigned = client_id.is_empty();
    let client_id = if assigned {
        format!("{}-{conn}", identity.name)
    } else {
        client_id.to_string()
    };
    // '$' is kept out as MQTT reserves it for broker topics and ids.
    if !assigned && (!valid_name(&client_id) || client_id.contains('$')) {
        return Err((
            ConnectReturnCode::ClientIdentifierNotValid,
            "client id contains + # / $ or control characters",
        ));
    }
    Ok((identity, client_id, assigned))
}

/// Writes a refusing CONNACK; the session ends with `why` (or the write error).
pub async fn refuse(
    transport: &mut Transport,
    codec: Codec,
    code: ConnectReturnCode,
    why: &'static str,
) -> End {
    let ack = ConnAck {
        session_present: false,
        code,
    };
    match write_packet(transport, codec, Packet::ConnAck(ack, None)).await {
        Ok(()) => End::Refused(why),
        Err(e) => e,
    }
}

pub async fn write_packet(
    transport: &mut Transport,
    codec: Codec,
    packet: Packet,
) -> Result<(), End> {
    let mut buf = BytesMut::new();
    codec.write(packet, &mut buf).map_err(End::Protocol)?;
    transport.write_all(&buf).await?;
    Ok(())
}
