//! MQTT framing around `rumqttd::protocol`: picking v3.1.1 or v5 from the CONNECT, and reading
//! the packet-id/QoS fields that rumqttd keeps crate-private.
//!
//! rumqttd's `Publish` hides `qos` and `pkid`, yet the front-end needs both to write PUBACKs
//! after custody and to correlate a client's PUBACK with the command it acknowledges. Both are
//! at fixed places in the wire format, so they are read from the bytes.

use bytes::{BufMut, BytesMut};
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
    ///
    /// Only packet types a client may send are handed to rumqttd's decoders: its v5 decoder
    /// reaches `unreachable!()` on an UNSUBACK (found by `fuzz/mqtt_frontend`), and a panic in
    /// a connection task would skip that connection's cleanup. Any other panic inside the
    /// third-party decoder is contained too and reported as a malformed packet.
    pub fn read(&self, buf: &mut BytesMut, max_size: usize) -> Result<Packet, Error> {
        if let Some(first) = buf.first() {
            if !client_may_send(first >> 4) {
                return Err(Error::InvalidPacketType(first >> 4));
            }
        }
        let version = self.version;
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match version {
            Version::V4 => V4.read_mut(buf, max_size),
            Version::V5 => V5.read_mut(buf, max_size),
        }))
        .unwrap_or(Err(Error::MalformedPacket))
    }

    /// Encodes a PUBLISH of `payload` on `topic` at the end of `buf`: QoS 0 or 1, never
    /// retained or DUP, no v5 properties. Written here rather than through rumqttd's `Publish`,
    /// whose QoS and packet id cannot be set outside rumqttd.
    pub fn publish(&self, topic: &[u8], payload: &[u8], qos: u8, pkid: u16, buf: &mut BytesMut) {
        let props = usize::from(self.version == Version::V5);
        let pkid_len = if qos > 0 { 2 } else { 0 };
        let remaining = 2 + topic.len() + pkid_len + props + payload.len();
        buf.reserve(5 + remaining);
        buf.put_u8(0x30 | (qos.min(1) << 1));
        let mut left = remaining;
        loop {
            let mut byte = (left % 128) as u8;
            left /= 128;
            if left > 0 {
                byte |= 0x80;
            }
            buf.put_u8(byte);
            if left == 0 {
                break;
            }
        }
        buf.put_u16(topic.len() as u16);
        buf.put_slice(topic);
        if qos > 0 {
            buf.put_u16(pkid);
        }
        if props == 1 {
            buf.put_u8(0);
        }
        buf.put_slice(payload);
    }

    /// Encodes `packet` at the end of `buf`.
    pub fn write(&self, packet: Packet, buf: &mut BytesMut) -> Result<usize, Error> {
        match self.version {
            Version::V4 => V4.write(packet, buf),
            Version::V5 => V5.write(packet, buf),
        }
    }
}

/// Whether a client may send MQTT control packet type `t` (CONNECT, PUBLISH, the PUBACK
/// family, SUBSCRIBE, UNSUBSCRIBE, PINGREQ, DISCONNECT). AUTH (15) is not offered.
fn client_may_send(t: u8) -> bool {
    matches!(t, 1 | 3..=8 | 10 | 12 | 14)
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
    fn publishes_written_here_decode_as_rumqttd_reads_them() {
        for version in [Version::V4, Version::V5] {
            let codec = Codec { version };
            for (qos, size) in [(0u8, 10usize), (1, 200), (1, 20_000), (1, 3_000_000)] {
                let payload = vec![7u8; size];
                let mut buf = BytesMut::new();
                codec.publish(b"org/js/a/cmd", &payload, qos, 513, &mut buf);
                assert_eq!(
                    publish_header(&buf),
                    Some((qos, if qos > 0 { 513 } else { 0 }))
                );
                // decode it as a client would (rumqttd's decoders accept server packets too)
                let mut read = buf.clone();
                let packet = match version {
                    Version::V4 => V4.read_mut(&mut read, 4 << 20),
                    Version::V5 => V5.read_mut(&mut read, 4 << 20),
                };
                let Ok(Packet::Publish(p, _)) = packet else {
                    panic!("{version:?} qos {qos} size {size}: {packet:?}");
                };
                assert_eq!(&p.topic[..], b"org/js/a/cmd");
                assert_eq!(p.payload.len(), size);
                assert!(read.is_empty());
            }
        }
    }

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
    fn packets_only_servers_send_are_refused_not_decoded() {
        // UNSUBACK once made rumqttd's v5 decoder panic.
        for version in [Version::V4, Version::V5] {
            let codec = Codec { version };
            for first in [0x20, 0x90, 0xb0, 0xb8, 0xd0, 0xf0, 0x00] {
                let mut buf = BytesMut::from(&[first, 2, 0, 1][..]);
                assert!(
                    codec.read(&mut buf, 1024).is_err(),
                    "{version:?} {first:#x}"
                );
            }
        }
        let crash = [
            184u8, 16, 58, 0, 4, 77, 81, 84, 84, 5, 198, 0, 255, 255, 255, 255, 255, 255, 255, 3,
        ];
        let mut buf = BytesMut::from(&crash[..]);
        assert!(Codec {
            version: Version::V5
        }
        .read(&mut buf, 1024)
        .is_err());
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
