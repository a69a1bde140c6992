//! The byte streams MQTT runs over: plain TCP and WebSocket (binary frames, `mqtt`
//! sub-protocol, as MQTT.js and mosquitto expect).

use std::io;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// One accepted connection's stream.
pub enum Transport {
    /// MQTT directly over TCP.
    Tcp(TcpStream),
    /// MQTT in WebSocket binary messages.
    Ws(Box<WebSocketStream<TcpStream>>),
}

impl Transport {
    /// Completes the WebSocket handshake on `stream`, echoing the `mqtt` sub-protocol.
    pub async fn websocket(stream: TcpStream) -> io::Result<Transport> {
        #[allow(clippy::result_large_err)]
        let echo_mqtt = |req: &Request, mut resp: Response| {
            let offered = req
                .headers()
                .get("Sec-WebSocket-Protocol")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("");
            if offered.split(',').any(|p| p.trim() == "mqtt") {
                resp.headers_mut()
                    .insert("Sec-WebSocket-Protocol", HeaderValue::from_static("mqtt"));
            }
            Ok(resp)
        };
        let ws = tokio_tungstenite::accept_hdr_async(stream, echo_mqtt)
            .await
            .map_err(io::Error::other)?;
        Ok(Transport::Ws(Box::new(ws)))
    }

    /// Appends what arrives to `buf`; returns 0 at end of stream.
    pub async fn read(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            Transport::Tcp(s) => {
                buf.reserve(4096);
                s.read_buf(buf).await
            }
            Transport::Ws(ws) => loop {
                match ws.next().await {
                    None => return Ok(0),
                    Some(Err(e)) => return Err(io::Error::other(e)),
                    Some(Ok(Message::Binary(data))) => {
                        buf.extend_from_slice(&data);
                        if !data.is_empty() {
                            return Ok(data.len());
                        }
                    }
                    Some(Ok(Message::Close(_))) => return Ok(0),
                    // pings are answered by tungstenite; text frames are not MQTT
                    Some(Ok(Message::Text(_))) => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            "text frame on an MQTT WebSocket",
                        ))
                    }
                    Some(Ok(_)) => continue,
                }
            },
        }
    }

    /// Writes all of `data`.
    pub async fn write_all(&mut self, data: &[u8]) -> io::Result<()> {
        match self {
            Transport::Tcp(s) => s.write_all(data).await,
            Transport::Ws(ws) => ws
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Best-effort orderly close.
    pub async fn close(&mut self) {
        match self {
            Transport::Tcp(s) => {
                let _ = s.shutdown().await;
            }
            Transport::Ws(ws) => {
                let _ = SinkExt::close(ws).await;
            }
        }
    }
}
