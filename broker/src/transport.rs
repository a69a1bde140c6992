//! The byte streams MQTT runs over: a byte stream (TCP, or TLS over TCP) and WebSocket
//! (binary frames, `mqtt` sub-protocol, as MQTT.js and mosquitto expect) over either.
//!
//! The byte stream is boxed so that the four listener kinds (tcp, tls, ws, wss) share one
//! connection type; the cost is one indirect call per read or write.

use std::io;

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A byte stream a connection can run over.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One accepted connection's stream.
pub enum Transport {
    /// MQTT directly over the byte stream.
    Stream(Box<dyn Io>),
    /// MQTT in WebSocket binary messages.
    Ws(Box<WebSocketStream<Box<dyn Io>>>),
}

impl Transport {
    /// Completes the WebSocket handshake on `stream`, echoing the `mqtt` sub-protocol.
    pub async fn websocket(stream: Box<dyn Io>) -> io::Result<Transport> {
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
    ///
    /// A byte stream is read into at most `want` bytes of fresh room: an idle connection waits
    /// holding only that much, so the caller keeps it small unless data is streaming in.
    pub async fn read(&mut self, buf: &mut BytesMut, want: usize) -> io::Result<usize> {
        match self {
            Transport::Stream(s) => {
                buf.reserve(want);
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
            Transport::Stream(s) => {
                s.write_all(data).await?;
                // TLS buffers records until flushed; for TCP this is a no-op.
                s.flush().await
            }
            Transport::Ws(ws) => ws
                .send(Message::binary(data.to_vec()))
                .await
                .map_err(io::Error::other),
        }
    }

    /// Best-effort orderly close.
    pub async fn close(&mut self) {
        match self {
            Transport::Stream(s) => {
                let _ = s.shutdown().await;
            }
            Transport::Ws(ws) => {
                let _ = SinkExt::close(ws).await;
            }
        }
    }
}
