//! What one round changed, in the form the custody log stores and SQLite receives
//! (`custody.rs`, `logged.rs`): queue segments, link receive positions, sequence blocks,
//! acknowledgement points and audit rows.
//!
//! Encoding: little-endian `u64` counts and numbers, strings and blobs as `[len u32][bytes]`,
//! one section after another. The last two sections (acknowledgement points, audit rows) came
//! later: a record that ends before them has none (the log left by an older build reads the
//! same).

use super::audit::AuditRows;

/// One queue segment: destination, first and last sequence, earliest expiry, entries.
pub(super) type Segment = (String, u64, u64, Option<u64>, Vec<u8>);

/// What one round changed, as the log and SQLite receive it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(super) struct Record {
    /// Queue segments: destination, first and last sequence, earliest expiry, entries.
    pub segments: Vec<Segment>,
    /// Link receive positions: `link_in` key, last sequence, the peer journal's epoch.
    pub link_in: Vec<(String, u64, u64)>,
    /// Ends of newly reserved sequence blocks: destination, end.
    pub reservations: Vec<(String, u64)>,
    /// Acknowledgement points: destination, acknowledged through (the queue forgets what is
    /// below, and the point is stored).
    pub acks: Vec<(String, u64)>,
    /// Routing decisions audited in the round.
    pub audits: AuditRows,
}

impl Record {
    /// Appends the record's bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        num(out, self.segments.len() as u64);
        for (dest, first, last, expiry, entries) in &self.segments {
            bytes(out, dest.as_bytes());
            num(out, *first);
            num(out, *last);
            num(out, expiry.map_or(0, |e| e.saturating_add(1)));
            bytes(out, entries);
        }
        num(out, self.link_in.len() as u64);
        for (peer, last, epoch) in &self.link_in {
            bytes(out, peer.as_bytes());
            num(out, *last);
            num(out, *epoch);
        }
        num(out, self.reservations.len() as u64);
        for (dest, end) in &self.reservations {
            bytes(out, dest.as_bytes());
            num(out, *end);
        }
        num(out, self.acks.len() as u64);
        for (dest, upto) in &self.acks {
            bytes(out, dest.as_bytes());
            num(out, *upto);
        }
        num(out, self.audits.len() as u64);
        for (at, kind, hops, fields) in self.audits.rows() {
            num(out, at as u64);
            out.push(u8::from(kind == "receipt"));
            out.push(hops);
            for field in fields {
                bytes(out, field.as_bytes());
            }
        }
    }

    /// The record encoded in all of `b`, if it is one.
    pub fn decode(mut b: &[u8]) -> Option<Record> {
        let b = &mut b;
        let mut r = Record::default();
        for _ in 0..read_num(b)? {
            let dest = text(b)?;
            let (first, last) = (read_num(b)?, read_num(b)?);
            let expiry = read_num(b)?.checked_sub(1);
            r.segments
                .push((dest, first, last, expiry, read_bytes(b)?.to_vec()));
        }
        for _ in 0..read_num(b)? {
            let peer = text(b)?;
            r.link_in.push((peer, read_num(b)?, read_num(b)?));
        }
        for _ in 0..read_num(b)? {
            let dest = text(b)?;
            r.reservations.push((dest, read_num(b)?));
        }
        if b.is_empty() {
            return Some(r);
        }
        for _ in 0..read_num(b)? {
            let dest = text(b)?;
            r.acks.push((dest, read_num(b)?));
        }
        for _ in 0..read_num(b)? {
            let at = read_num(b)? as i64;
            let (kind, rest) = b.split_first_chunk::<2>()?;
            *b = rest;
            let kind_name = match kind[0] {
                0 => "cmd",
                1 => "receipt",
                _ => return None,
            };
            let mut fields: [&str; 7] = [""; 7];
            for field in &mut fields {
                *field = std::str::from_utf8(read_bytes(b)?).ok()?;
            }
            r.audits.push(at, kind_name, kind[1], fields);
        }
        b.is_empty().then_some(r)
    }
}

fn bytes(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_le_bytes());
    out.extend_from_slice(b);
}

fn num(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(&n.to_le_bytes());
}

fn read_num(b: &mut &[u8]) -> Option<u64> {
    let (n, rest) = b.split_first_chunk::<8>()?;
    *b = rest;
    Some(u64::from_le_bytes(*n))
}

fn read_bytes<'a>(b: &mut &'a [u8]) -> Option<&'a [u8]> {
    let (n, rest) = b.split_first_chunk::<4>()?;
    let n = u32::from_le_bytes(*n) as usize;
    let (v, rest) = (rest.get(..n)?, rest.get(n..)?);
    *b = rest;
    Some(v)
}

fn text(b: &mut &[u8]) -> Option<String> {
    String::from_utf8(read_bytes(b)?.to_vec()).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full() -> Record {
        let mut audits = AuditRows::default();
        audits.push(
            17,
            "cmd",
            2,
            ["01J", "b.c", "app", "b", "sink", "x", "local:b"],
        );
        audits.push(18, "receipt", 0, ["01K", "b", "", "b.c", "app", "", "up"]);
        Record {
            segments: vec![("up".into(), 3, 4, Some(9), vec![1, 2, 3])],
            link_in: vec![("c/normal".into(), 4, 77)],
            reservations: vec![("up".into(), 65_540)],
            acks: vec![("stream/sink/normal".into(), 12)],
            audits,
        }
    }

    #[test]
    fn a_record_comes_back_as_it_went_in() {
        let mut out = Vec::new();
        full().encode(&mut out);
        assert_eq!(Record::decode(&out), Some(full()));
        // Cut anywhere, or with a byte too many, it is no record.
        for cut in [1, 9, out.len() / 2, out.len() - 1] {
            assert_eq!(Record::decode(&out[..cut]), None, "cut at {cut}");
        }
        out.push(0);
        assert_eq!(Record::decode(&out), None);
    }

    #[test]
    fn a_record_of_the_older_layout_reads_with_no_points_and_no_audit_rows() {
        let mut older = full();
        older.acks.clear();
        older.audits = AuditRows::default();
        let mut out = Vec::new();
        older.encode(&mut out);
        // The older layout ended after the sequence blocks: two empty counts fewer.
        out.truncate(out.len() - 16);
        assert_eq!(Record::decode(&out), Some(older));
    }
}
