//! Whether an MQTT (or WebSocket) address answers again, for a client or child node on the
//! HTTP fallback that wants to go back to MQTT.

use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::net::{TcpStream, ToSocketAddrs};

/// How long the TCP connect may take.
const CONNECT: Duration = Duration::from_secs(2);
/// How long the peer must stay silent and open after it.
const SILENT: Duration = Duration::from_millis(300);

/// Whether `addr` accepts a TCP connection and keeps it open, silent, the way a broker waits
/// for CONNECT (a middlebox that accepts and drops does not count).
pub async fn answers(addr: impl ToSocketAddrs) -> bool {
    let Ok(Ok(mut s)) = tokio::time::timeout(CONNECT, TcpStream::connect(addr)).await else {
        return false;
    };
    let mut byte = [0u8; 1];
    match tokio::time::timeout(SILENT, s.read(&mut byte)).await {
        Err(_) => true,
        Ok(Ok(n)) => n > 0,
        Ok(Err(_)) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_silent_listener_answers_and_a_closed_port_does_not() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let held = tokio::spawn(async move { listener.accept().await.map(|(s, _)| s) });
        assert!(answers(addr).await);
        drop(held);
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap();
        drop(closed);
        assert!(!answers(gone).await);
    }
}
