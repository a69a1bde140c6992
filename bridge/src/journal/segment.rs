//! The on-disk form of queued envelopes: segments.
//!
//! A journal row holds a *segment*: consecutive envelopes for one destination, committed in
//! the same round. At a tier in the middle of the tree a round typically queues hundreds of
//! envelopes for the same next hop; storing them as one row costs one B-tree insert and one
//! delete instead of hundreds, which is most of what durability costs per hop.
//!
//! Encoding, per entry: `lseq` u64, `expires_at` i64 (-1 for none), id length u16, id, body
//! length u32, body; all little-endian.

use bytes::{Buf, BufMut, Bytes};

/// A queued envelope read back for sending.
#[derive(Debug, Clone)]
pub struct Queued {
    /// Per-destination sequence.
    pub lseq: u64,
    /// Envelope id.
    pub id: String,
    /// Expiry, Unix ms.
    pub expires_at: Option<u64>,
    /// Envelope JSON.
    pub body: Bytes,
}

/// Encodes entries (in sequence order) into a segment blob.
pub fn encode(entries: &[Queued]) -> Vec<u8> {
    let size: usize = entries.iter().map(|e| 22 + e.id.len() + e.body.len()).sum();
    let mut out = Vec::with_capacity(size);
    for e in entries {
        out.put_u64_le(e.lseq);
        out.put_i64_le(e.expires_at.map(|v| v as i64).unwrap_or(-1));
        out.put_u16_le(e.id.len() as u16);
        out.put_slice(e.id.as_bytes());
        out.put_u32_le(e.body.len() as u32);
        out.put_slice(&e.body);
    }
    out
}

/// Decodes a segment blob; bodies share the blob's memory.
pub fn decode(blob: Bytes) -> Result<Vec<Queued>, String> {
    let mut buf = blob.clone();
    let mut out = Vec::new();
    while buf.has_remaining() {
        if buf.remaining() < 18 {
            return Err("truncated segment entry header".into());
        }
        let lseq = buf.get_u64_le();
        let expires = buf.get_i64_le();
        let id_len = buf.get_u16_le() as usize;
        if buf.remaining() < id_len + 4 {
            return Err("truncated segment entry id".into());
        }
        let id = String::from_utf8(buf.copy_to_bytes(id_len).to_vec())
            .map_err(|_| "segment entry id is not UTF-8".to_string())?;
        let body_len = buf.get_u32_le() as usize;
        if buf.remaining() < body_len {
            return Err("truncated segment entry body".into());
        }
        let body = buf.copy_to_bytes(body_len);
        out.push(Queued {
            lseq,
            id,
            expires_at: (expires >= 0).then_some(expires as u64),
            body,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_round_trip_and_reject_truncation() {
        let entries = vec![
            Queued {
                lseq: 7,
                id: "01A".into(),
                expires_at: None,
                body: Bytes::from_static(b"{\"id\":\"01A\"}"),
            },
            Queued {
                lseq: 9,
                id: "x".into(),
                expires_at: Some(1234),
                body: Bytes::from_static(b"{}"),
            },
        ];
        let blob = encode(&entries);
        let back = decode(Bytes::from(blob.clone())).unwrap();
        assert_eq!(back.len(), 2);
        assert_eq!(
            (back[0].lseq, back[0].id.as_str(), back[0].expires_at),
            (7, "01A", None)
        );
        assert_eq!((back[1].lseq, back[1].expires_at), (9, Some(1234)));
        assert_eq!(&back[1].body[..], b"{}");
        assert!(decode(Bytes::from(blob[..blob.len() - 1].to_vec())).is_err());
    }
}
