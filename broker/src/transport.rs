//! The byte streams MQTT runs over: a byte stream (TCP, or TLS over TCP) and WebSocket
//! (binary frames, `mqtt` sub-protocol, as MQTT.js and mosquitto expect) over either.
//!
//! The byte stream is boxed so that the four listener kinds (tcp, tls, ws, wss) share one
//! connection type; the cost is one indirect call per read or write. Under it is a [`Socket`],
//! which a child node's connection takes to the dispatcher's runtime once it has logged in
//! (ARCHITECTURE.md, "Threads and tasks").

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// A byte stream a connection can run over: a [`Socket`], or TLS over one.
pub trait Io: AsyncRead + AsyncWrite + Unpin + Send {
    /// The TCP socket under the stream.
    fn socket(&mut self) -> &mut Socket;
}

impl Io for Socket {
    fn socket(&mut self) -> &mut Socket {
        self
    }
}

impl Io for tokio_rustls::server::TlsStream<Socket> {
    fn socket(&mut self) -> &mut Socket {
        self.get_mut().0
    }
}

/// An accepted TCP connection whose registration can move from one runtime's reactor to
/// another's: a tokio `TcpStream` is tied to the reactor it was registered with, and TLS over
/// it cannot be taken apart and rebuilt, so the stream sits in this slot and leaves it for as
/// long as the move takes.
#[derive(Debug)]
pub struct Socket(Option<TcpStream>);

impl Socket {
    /// A socket registered with the current runtime.
    pub fn new(stream: TcpStream) -> Self {
        Socket(Some(stream))
    }

    /// Takes the stream out of this runtime's reactor; reads and writes fail until
    /// [`Socket::register`] puts it back.
    fn unregister(&mut self) -> Option<std::net::TcpStream> {
        self.0.take()?.into_std().ok()
    }

    /// Registers `stream` (from [`Socket::unregister`]) with the current runtime's reactor.
    fn register(&mut self, stream: std::net::TcpStream) -> io::Result<()> {
        self.0 = Some(TcpStream::from_std(stream)?);
        Ok(())
    }

    /// Polls the stream with `op`, or fails at once while it is moving.
    fn poll<T>(
        self: Pin<&mut Self>,
        op: impl FnOnce(Pin<&mut TcpStream>) -> Poll<io::Result<T>>,
    ) -> Poll<io::Result<T>> {
        match &mut self.get_mut().0 {
            Some(s) => op(Pin::new(s)),
            None => Poll::Ready(Err(io::Error::new(
                io::ErrorKind::NotConnected,
                "the socket is moving to another runtime",
            ))),
        }
    }
}

impl AsyncRead for Socket {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.poll(|s| s.poll_read(cx, buf))
    }
}

impl AsyncWrite for Socket {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.poll(|s| s.poll_write(cx, buf))
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.poll(|s| s.poll_write_vectored(cx, bufs))
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll(|s| s.poll_flush(cx))
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll(|s| s.poll_shutdown(cx))
    }
}

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

    /// Takes the socket out of the current runtime's reactor, so that the connection can be
    /// served on another runtime ([`Transport::register`] there). `None` over WebSocket,
    /// whose stream stays where it is.
    pub fn unregister(&mut self) -> Option<std::net::TcpStream> {
        match self {
            Transport::Stream(s) => s.socket().unregister(),
            Transport::Ws(_) => None,
        }
    }

    /// Registers the socket [`Transport::unregister`] took with the current runtime.
    pub fn register(&mut self, stream: std::net::TcpStream) -> io::Result<()> {
        match self {
            Transport::Stream(s) => s.socket().register(stream),
            Transport::Ws(_) => Err(io::Error::new(
                io::ErrorKind::Unsupported,
                "a WebSocket connection does not move",
            )),
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection accepted on one runtime keeps its bytes, buffered and in flight, when it
    /// moves to another runtime's reactor; while it moves, it refuses reads instead of hanging.
    #[test]
    fn a_socket_moves_between_runtimes() {
        let accepted = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let (mut transport, mut peer) = accepted.block_on(async {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let mut peer = TcpStream::connect(listener.local_addr().unwrap())
                .await
                .unwrap();
            let (stream, _) = listener.accept().await.unwrap();
            let mut transport = Transport::Stream(Box::new(Socket::new(stream)));
            peer.write_all(b"before").await.unwrap();
            let mut buf = BytesMut::new();
            while buf.len() < 6 {
                transport.read(&mut buf, 64).await.unwrap();
            }
            assert_eq!(&buf[..], b"before");
            (transport, peer)
        });
        let socket = transport.unregister().expect("a TCP transport can move");
        let err = accepted
            .block_on(transport.read(&mut BytesMut::new(), 64))
            .unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::NotConnected);
        // Sent while the socket belongs to no reactor: the new registration must see it.
        accepted.block_on(peer.write_all(b"moving")).unwrap();
        let mut peer = peer.into_std().unwrap();
        peer.set_nonblocking(false).unwrap();

        let target = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        drop(accepted);
        target.block_on(async {
            transport.register(socket).unwrap();
            let mut buf = BytesMut::new();
            while buf.len() < 6 {
                transport.read(&mut buf, 64).await.unwrap();
            }
            assert_eq!(&buf[..], b"moving");
            transport.write_all(b"answer").await.unwrap();
        });
        let mut answer = [0u8; 6];
        std::io::Read::read_exact(&mut peer, &mut answer).unwrap();
        assert_eq!(&answer, b"answer");
    }
}
