//! MQTT framing around `rumqttd::protocol`: picking v3.1.1 or v5 from the CONNECT, and reading
//! the packet-id/QoS fields that rumqttd keeps crate-private.
//!
//! rumqttd's `Publish` hides `qos` and `pkid`, yet the front-end needs both to write PUBACKs
//! after custody and to correlate a client's PUBACK with the command it acknowledges. Both are
//! at fixed places in the wire format, so they are read from the bytes.

use bytes::BytesMut;
use rumqttd::protocol::{v4::V4, v5::V5, Error, Protocol};

/// The decoded packet type (rumqttd's), re-exported for callers of [`Codec::read`].
pub use rumqttd::protocol::Packet;

/// Protocol version of a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V4,
    /// MQTT 5.
    V5,
}

/// Encoder/decoder for one connection's protocol version.
#[derive(Debug, Clone, Copy)]
pub struct Codec {
    /// The negotiated version.
    pub version: Version,
}

impl Codec {
    /// Decodes one packet from the front of `buf`.
    pub fn read(&self, buf: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        match self.version {
            Version::V4 => V4.read_mut(buf, max_size),
            Version::V5 => V5.read_mut(buf, max_size),
        }
    }

    /// Encodes `packet` at the end of `buf`.
    pub fn write(&self, packet: Packet, buf: &mut BytesMut) -> Result<usize, Error> {
        match self.version {
            Version::V4 => V4.write(packet, buf),
            Version::V5 => V5.write(packet, buf),
        }
    }
}

/// Outcome of looking at the first bytes of a connection.
#[derive(Debug, PartialEq, Eq)]
pub enum Sniff {
    /// Need more bytes.
    Incomplete,
    /// A CONNECT of this version.
    Connect(Version),
    /// Not an MQTT 3.1.1/5 CONNECT; the byte that gave it away.
    Garbage,
    /// MQTT 3.1 or another unsupported protocol level.
    UnsupportedLevel(u8),
}

/// Reads the protocol level out of a CONNECT at the start of `buf`.
pub fn sniff_connect(buf: &[u8]) -> Sniff {
    if buf.is_empty() {
        return Sniff::Incomplete;
    }
    if buf[0] != 0x10 {
        return Sniff::Garbage;
    }
    let Some((_, len_bytes)) = remaining_length(&buf[1..]) else {
        return if buf.len() > 5 {
            Sniff::Garbage
        } else {
            Sniff::Incomplete
        };
    };
    let at = 1 + len_bytes;
    // protocol name: u16 length + "MQTT" (or "MQIsdp" for 3.1), then the level byte.
    if buf.len() < at + 2 {
        return Sniff::Incomplete;
    }
    let name_len = u16::from_be_bytes([buf[at], buf[at + 1]]) as usize;
    if name_len > 6 {
        return Sniff::Garbage;
    }
    if buf.len() < at + 2 + name_len + 1 {
        return Sniff::Incomplete;
    }
    let name = &buf[at + 2..at + 2 + name_len];
    let level = buf[at + 2 + name_len];
    match (name, level) {
        (b"MQTT", 4) => Sniff::Connect(Version::V4),
        (b"MQTT", 5) => Sniff::Connect(Version::V5),
        (b"MQTT", l) | (b"MQIsdp", l) => Sniff::UnsupportedLevel(l),
        _ => Sniff::Garbage,
    }
}

/// Decodes an MQTT variable-byte integer: (value, bytes used).
fn remaining_length(buf: &[u8]) -> Option<(usize, usize)> {
    let mut value = 0usize;
    for (i, b) in buf.iter().take(4).enumerate() {
        value |= ((b & 0x7f) as usize) << (7 * i);
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
    }
    None
}

/// QoS and packet id of the PUBLISH at the start of `buf`, if there is one (complete header).
pub fn publish_header(buf: &[u8]) -> Option<(u8, u16)> {
    let first = *buf.first()?;
    if first >> 4 != 3 {
        return None;
    }
    let qos = (first >> 1) & 0b11;
    let (_, n) = remaining_length(&buf[1..])?;
    let at = 1 + n;
    let topic_len = u16::from_be_bytes([*buf.get(at)?, *buf.get(at + 1)?]) as usize;
    if qos == 0 {
        return Some((0, 0));
    }
    let p = at + 2 + topic_len;
    Some((qos, u16::from_be_bytes([*buf.get(p)?, *buf.get(p + 1)?])))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sniffs_versions_and_garbage() {
        let v4 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 4, 2, 0, 0];
        assert_eq!(sniff_connect(&v4), Sniff::Connect(Version::V4));
        let v5 = [0x10, 12, 0, 4, b'M', b'Q', b'T', b'T', 5, 2, 0, 0];
        assert_eq!(sniff_connect(&v5), Sniff::Connect(Version::V5));
        assert_eq!(sniff_connect(&v4[..5]), Sniff::Incomplete);
        assert_eq!(sniff_connect(b"GET / HTTP/1.1\r\n"), Sniff::Garbage);
        let v3 = [0x10, 14, 0, 6, b'M', b'Q', b'I', b's', b'd', b'p', 3];
        assert_eq!(sniff_connect(&v3), Sniff::UnsupportedLevel(3));
    }

    #[test]
    fn reads_publish_pkid() {
        // QoS 1 publish, topic "a/b", pkid 0x1234, payload "x"
        let p = [0x32, 8, 0, 3, b'a', b'/', b'b', 0x12, 0x34, b'x'];
        assert_eq!(publish_header(&p), Some((1, 0x1234)));
        let p0 = [0x30, 6, 0, 3, b'a', b'/', b'b', b'x'];
        assert_eq!(publish_header(&p0), Some((0, 0)));
        assert_eq!(publish_header(&[0x82, 0]), None);
    }
}
