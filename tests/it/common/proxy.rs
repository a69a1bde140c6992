//! A fault-injecting TCP proxy for link tests (`tc netem` is not available here).
//!
//! Modes: `Pass` forwards bytes; `Freeze` keeps every connection open but forwards nothing
//! (a stalled link, as a hung middlebox produces: both ends still see "connected"); `Cut`
//! closes every connection and refuses new ones (a dead link); `HoldUpstream` holds only the
//! client's bytes while the server's still flow (the client's acknowledgements are lost in
//! the network while deliveries keep reaching it). [`Proxy::start_slow`] also caps the bandwidth
//! of each direction and keeps its receive buffer small, as a slow WAN link does, so a fast
//! sender's socket pushes back.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::watch;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    Pass,
    Freeze,
    HoldUpstream,
    Cut,
}

pub struct Proxy {
    pub port: u16,
    mode: Arc<watch::Sender<Mode>>,
}

impl Proxy {
    /// Starts a proxy on a free loopback port forwarding to `target`.
    pub async fn start(target: SocketAddr) -> Proxy {
        Self::start_with(target, 0).await
    }

    /// Like [`Proxy::start`], but each direction carries at most `bytes_per_second`, and the
    /// proxy's receive buffer is small (64 KiB), so the sender's socket fills up.
    pub async fn start_slow(target: SocketAddr, bytes_per_second: u64) -> Proxy {
        Self::start_with(target, bytes_per_second).await
    }

    async fn start_with(target: SocketAddr, rate: u64) -> Proxy {
        let socket = TcpSocket::new_v4().expect("proxy socket");
        if rate > 0 {
            // Accepted sockets inherit it; a fixed size also turns receive autotuning off.
            socket
                .set_recv_buffer_size(64 * 1024)
                .expect("proxy receive buffer");
        }
        socket.bind(([127, 0, 0, 1], 0).into()).expect("bind proxy");
        let listener = socket.listen(128).expect("proxy listens");
        let port = listener.local_addr().expect("proxy address").port();
        let (tx, rx) = watch::channel(Mode::Pass);
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                if *rx.borrow() == Mode::Cut {
                    drop(client);
                    continue;
                }
                let rx = rx.clone();
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let (cr, cw) = client.into_split();
                    let (sr, sw) = server.into_split();
                    tokio::select! {
                        _ = pipe(cr, sw, rx.clone(), Direction::Up, rate) => {}
                        _ = pipe(sr, cw, rx.clone(), Direction::Down, rate) => {}
                    }
                });
            }
        });
        Proxy {
            port,
            mode: Arc::new(tx),
        }
    }

    pub fn set(&self, mode: Mode) {
        let _ = self.mode.send(mode);
    }
}

/// Which way a pipe copies: `Up` from the client to the server.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Direction {
    Up,
    Down,
}

/// Copies `from` to `to` (at most `rate` bytes per second unless 0), holding bytes while
/// frozen and ending when cut.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut mode: watch::Receiver<Mode>,
    way: Direction,
    rate: u64,
) {
    // Throttled: reads of 10 ms worth of bytes, each followed by those 10 ms.
    let chunk = match rate {
        0 => 64 * 1024,
        r => (r / 100).clamp(1024, 64 * 1024) as usize,
    };
    let mut buf = vec![0u8; chunk];
    loop {
        if !flowing(&mut mode, way).await {
            return;
        }
        tokio::select! {
            n = from.read(&mut buf) => {
                let Ok(n) = n else { return };
                if n == 0 {
                    return;
                }
                // bytes read just before a freeze are held until it ends
                if !flowing(&mut mode, way).await {
                    return;
                }
                if to.write_all(&buf[..n]).await.is_err() {
                    return;
                }
                if let Some(nanos) = (n as u64 * 1_000_000_000).checked_div(rate) {
                    tokio::time::sleep(Duration::from_nanos(nanos)).await;
                }
            }
            r = mode.changed() => if r.is_err() { return },
        }
    }
}

/// Waits while frozen (in this direction); false once the link is cut (or the proxy is gone).
async fn flowing(mode: &mut watch::Receiver<Mode>, way: Direction) -> bool {
    loop {
        let m = *mode.borrow_and_update();
        match m {
            Mode::Pass => return true,
            Mode::HoldUpstream if way == Direction::Down => return true,
            Mode::Cut => return false,
            Mode::Freeze | Mode::HoldUpstream => {
                if mode.changed().await.is_err() {
                    return false;
                }
            }
        }
    }
}

/// A forward proxy as a site's firewall would offer: it only tunnels `CONNECT host:port`
/// (HTTPS through a proxy) and counts the tunnels it opened.
pub struct ConnectProxy {
    pub port: u16,
    pub tunnels: Arc<std::sync::atomic::AtomicUsize>,
}

impl ConnectProxy {
    pub async fn start() -> ConnectProxy {
        use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let tunnels = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = tunnels.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let count = count.clone();
                tokio::spawn(async move {
                    let mut reader = BufReader::new(client);
                    let mut line = String::new();
                    if reader.read_line(&mut line).await.is_err() {
                        return;
                    }
                    let mut parts = line.split_whitespace();
                    let (Some("CONNECT"), Some(target)) = (parts.next(), parts.next()) else {
                        let _ = reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 405 Method Not Allowed\r\n\r\n")
                            .await;
                        return;
                    };
                    let target = target.to_string();
                    loop {
                        let mut h = String::new();
                        if reader.read_line(&mut h).await.is_err() || h == "\r\n" || h.is_empty() {
                            break;
                        }
                    }
                    let Ok(server) = TcpStream::connect(&target).await else {
                        let _ = reader
                            .get_mut()
                            .write_all(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
                            .await;
                        return;
                    };
                    count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    let mut client = reader.into_inner();
                    if client
                        .write_all(b"HTTP/1.1 200 Connection established\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                    let mut server = server;
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                });
            }
        });
        ConnectProxy { port, tunnels }
    }
}
