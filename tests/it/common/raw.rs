//! Raw MQTT packets over a raw byte stream: the test instrument for what well-behaved client
//! libraries never send (reset mid-CONNECT, topic aliases, invalid UTF-8, oversized and
//! truncated packets) and for reading reason codes exactly as the broker wrote them, over TCP
//! or WebSocket alike.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

pub fn varint(mut n: usize, out: &mut Vec<u8>) {
    loop {
        let mut b = (n % 128) as u8;
        n /= 128;
        if n > 0 {
            b |= 0x80;
        }
        out.push(b);
        if n == 0 {
            break;
        }
    }
}

pub fn string(s: &[u8], out: &mut Vec<u8>) {
    out.extend_from_slice(&(s.len() as u16).to_be_bytes());
    out.extend_from_slice(s);
}

pub fn packet(first: u8, body: Vec<u8>) -> Vec<u8> {
    let mut p = vec![first];
    varint(body.len(), &mut p);
    p.extend(body);
    p
}

/// A will for [`connect_full`].
pub struct Will<'a> {
    pub topic: &'a [u8],
    pub payload: &'a [u8],
}

/// CONNECT with username and password.
pub fn connect(level: u8, client_id: &str, user: &str, pass: &str, keepalive: u16) -> Vec<u8> {
    connect_full(level, client_id, Some((user, pass)), keepalive, None)
}

/// CONNECT with every option the tests vary.
pub fn connect_full(
    level: u8,
    client_id: &str,
    login: Option<(&str, &str)>,
    keepalive: u16,
    will: Option<Will>,
) -> Vec<u8> {
    let mut b = Vec::new();
    string(b"MQTT", &mut b);
    b.push(level);
    let mut flags = 0x02; // clean session
    if login.is_some() {
        flags |= 0xC0;
    }
    if will.is_some() {
        flags |= 0x04 | (1 << 3); // will flag, will QoS 1
    }
    b.push(flags);
    b.extend_from_slice(&keepalive.to_be_bytes());
    if level == 5 {
        b.push(0); // no properties
    }
    string(client_id.as_bytes(), &mut b);
    if let Some(w) = will {
        if level == 5 {
            b.push(0); // no will properties
        }
        string(w.topic, &mut b);
        string(w.payload, &mut b);
    }
    if let Some((u, p)) = login {
        string(u.as_bytes(), &mut b);
        string(p.as_bytes(), &mut b);
    }
    packet(0x10, b)
}

pub fn subscribe(level: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    let mut b = pkid.to_be_bytes().to_vec();
    if level == 5 {
        b.push(0);
    }
    for f in filters {
        string(f.as_bytes(), &mut b);
        b.push(1);
    }
    packet(0x82, b)
}

/// QoS 1 PUBLISH; `alias` adds a v5 topic-alias property.
pub fn publish(level: u8, topic: &[u8], pkid: u16, payload: &[u8], alias: Option<u16>) -> Vec<u8> {
    let mut b = Vec::new();
    string(topic, &mut b);
    b.extend_from_slice(&pkid.to_be_bytes());
    if level == 5 {
        match alias {
            Some(a) => {
                b.push(3);
                b.push(0x23);
                b.extend_from_slice(&a.to_be_bytes());
            }
            None => b.push(0),
        }
    }
    b.extend_from_slice(payload);
    packet(0x32, b)
}

/// PUBACK for a delivery.
pub fn puback(pkid: u16) -> Vec<u8> {
    packet(0x40, pkid.to_be_bytes().to_vec())
}

/// A byte stream MQTT can be written to and read from: TCP or WebSocket.
pub trait Wire {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()>;
    /// Reads one packet (first byte + body); `None` on close, error or timeout.
    fn recv(&mut self) -> Option<(u8, Vec<u8>)>;
}

pub fn dial(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s
}

impl Wire for TcpStream {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.write_all(bytes)
    }
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        read_packet(self)
    }
}

/// Reads one packet (first byte + body) from a blocking reader.
pub fn read_packet(s: &mut impl Read) -> Option<(u8, Vec<u8>)> {
    let mut first = [0u8; 1];
    s.read_exact(&mut first).ok()?;
    let mut len = 0usize;
    let mut mul = 1usize;
    loop {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).ok()?;
        len += (b[0] & 0x7f) as usize * mul;
        mul *= 128;
        if b[0] & 0x80 == 0 {
            break;
        }
    }
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).ok()?;
    Some((first[0], body))
}

/// MQTT over a WebSocket (`mqtt` sub-protocol, binary frames).
pub struct WsWire {
    ws: tungstenite::WebSocket<TcpStream>,
    buf: Vec<u8>,
}

impl WsWire {
    pub fn dial(port: u16) -> WsWire {
        let stream = dial(port);
        let mut req = tungstenite::client::IntoClientRequest::into_client_request(format!(
            "ws://127.0.0.1:{port}/mqtt"
        ))
        .expect("request");
        req.headers_mut().insert(
            "Sec-WebSocket-Protocol",
            tungstenite::http::HeaderValue::from_static("mqtt"),
        );
        let (ws, _) = tungstenite::client(req, stream).expect("websocket handshake");
        WsWire {
            ws,
            buf: Vec::new(),
        }
    }
}

impl Wire for WsWire {
    fn send(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.ws
            .send(tungstenite::Message::binary(bytes.to_vec()))
            .map_err(std::io::Error::other)
    }
    fn recv(&mut self) -> Option<(u8, Vec<u8>)> {
        loop {
            if let Some(p) = read_packet(&mut std::io::Cursor::new(&self.buf)) {
                let mut consumed = Vec::new();
                varint(p.1.len(), &mut consumed);
                self.buf.drain(..1 + consumed.len() + p.1.len());
                return Some(p);
            }
            match self.ws.read().ok()? {
                tungstenite::Message::Binary(b) => self.buf.extend_from_slice(&b),
                tungstenite::Message::Close(_) => return None,
                _ => {}
            }
        }
    }
}

/// CONNECTs on `wire` and returns the CONNACK's return/reason code; `None` when the answer
/// is no CONNACK (closed, timed out, or other bytes such as a TLS alert).
pub fn handshake(wire: &mut impl Wire, connect: &[u8]) -> Option<u8> {
    wire.send(connect).ok()?;
    match wire.recv()? {
        (0x20, body) => body.get(1).copied(),
        _ => None,
    }
}

/// A fresh TCP connection logged in as `user` (password [`crate::common::PASSWORD`], keepalive
/// 30 s); panics unless the CONNACK accepts it.
pub fn logged_in(port: u16, level: u8, client_id: &str, user: &str) -> TcpStream {
    let mut s = dial(port);
    let code = handshake(
        &mut s,
        &connect(level, client_id, user, super::PASSWORD, 30),
    );
    assert_eq!(code, Some(0), "{client_id} ({user}) could not log in");
    s
}

/// CONNECTs on a fresh TCP connection and returns the CONNACK's code.
pub fn connack_code(
    port: u16,
    level: u8,
    client_id: &str,
    user: &str,
    pass: &str,
    keepalive: u16,
) -> Option<u8> {
    handshake(
        &mut dial(port),
        &connect(level, client_id, user, pass, keepalive),
    )
}

/// Subscribes and returns the SUBACK's codes, one per filter.
pub fn suback_codes(wire: &mut impl Wire, level: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
    wire.send(&subscribe(level, pkid, filters))
        .expect("send SUBSCRIBE");
    loop {
        let (kind, body) = wire.recv().expect("SUBACK");
        if kind != 0x90 {
            continue;
        }
        let mut at = 2;
        if level == 5 {
            let (props, n) = read_varint(&body[at..]);
            at += n + props;
        }
        return body[at..].to_vec();
    }
}

/// Publishes at QoS 1 and returns the PUBACK's reason code (0 on 3.1.1, which has none).
pub fn puback_code(wire: &mut impl Wire, level: u8, topic: &str, pkid: u16, payload: &[u8]) -> u8 {
    wire.send(&publish(level, topic.as_bytes(), pkid, payload, None))
        .expect("send PUBLISH");
    loop {
        let (kind, body) = wire.recv().expect("PUBACK");
        if kind >> 4 != 4 {
            continue;
        }
        return body.get(2).copied().unwrap_or(0);
    }
}

pub fn read_varint(b: &[u8]) -> (usize, usize) {
    let mut v = 0usize;
    for (i, byte) in b.iter().take(4).enumerate() {
        v |= ((byte & 0x7f) as usize) << (7 * i);
        if byte & 0x80 == 0 {
            return (v, i + 1);
        }
    }
    (v, 4)
}
