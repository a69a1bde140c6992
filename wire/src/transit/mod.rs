//! An envelope a node passes on: its routing fields read, its bytes kept.
//!
//! A node between the first and the last takes custody of an envelope and changes only its
//! `hops` and `trail` (`envelope.rs`). Parsing the whole envelope into owned strings and
//! writing it out again cost a middle node's dispatcher about two fifths of its time
//! (BENCHMARKS.md, "Forwarding envelopes as bytes"). [`Transit::read`] reads the fields a hop
//! decides by, borrowed from the bytes, checks the rest the way [`Envelope::parse`] would,
//! and remembers where `hops` and the end of `trail` are; [`Transit::stamp`] writes the
//! custody stamp into a copy of the bytes. Everything else (params, unknown fields, the
//! spelling of the priority) passes through byte for byte.
//!
//! An envelope it cannot stamp in place (no `hops` or `trail` field yet, files to check,
//! anything malformed) reads as `None`: the node then parses it whole, which gives the
//! error, if there is one, that names the field.
//!
//! [`Envelope::parse`]: crate::Envelope::parse

use std::borrow::Cow;
use std::ops::Range;

use serde::de::IgnoredAny;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::address::AddressRef;
use crate::envelope::{Head, Kind, ReceiptKind};
use crate::priority::Priority;

mod canonical;

/// The envelope's fields as a hop reads them: the same names and rules as
/// [`Envelope`](crate::Envelope), strings borrowed where they hold no escapes, the params
/// skipped, and `hops`, `files` and `trail` kept raw so their places are known.
#[derive(Deserialize)]
struct Scan<'a> {
    #[serde(borrow)]
    id: Cow<'a, str>,
    #[serde(default)]
    kind: Kind,
    #[serde(borrow)]
    from: AddressScan<'a>,
    #[serde(borrow)]
    to: AddressScan<'a>,
    #[serde(borrow)]
    cmd: Cow<'a, str>,
    #[serde(default)]
    #[allow(dead_code)]
    params: IgnoredAny,
    #[serde(default, borrow)]
    #[allow(dead_code)]
    reply_to: Option<Cow<'a, str>>,
    #[serde(default, borrow)]
    #[allow(dead_code)]
    as_service: Option<Cow<'a, str>>,
    created_at: u64,
    #[serde(default)]
    expires_at: Option<u64>,
    #[serde(default)]
    priority: Priority,
    #[serde(default)]
    receipts: Vec<ReceiptKind>,
    #[serde(default, borrow)]
    files: Option<&'a RawValue>,
    #[serde(default, borrow)]
    hops: Option<&'a RawValue>,
    #[serde(default)]
    via_root: bool,
    #[serde(default, borrow)]
    trail: Option<&'a RawValue>,
}

/// [`Address`](crate::Address)'s rules, borrowed.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AddressScan<'a> {
    #[serde(borrow)]
    node: Cow<'a, str>,
    #[serde(borrow)]
    client: Cow<'a, str>,
}

/// [`Hop`](crate::Hop)'s rules, borrowed: a trail is checked, not kept.
#[derive(Deserialize)]
struct HopScan<'a> {
    #[serde(borrow)]
    #[allow(dead_code)]
    node: Cow<'a, str>,
    #[allow(dead_code)]
    at: u64,
}

/// A trail checked entry by entry as [`HopScan`]s, of which only whether there are any is
/// kept: collected into a `Vec`, it cost an allocation at every hop.
struct TrailScan {
    empty: bool,
}

impl<'de> Deserialize<'de> for TrailScan {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<TrailScan, D::Error> {
        struct Entries;
        impl<'de> serde::de::Visitor<'de> for Entries {
            type Value = TrailScan;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a trail of hops")
            }
            fn visit_seq<A: serde::de::SeqAccess<'de>>(
                self,
                mut seq: A,
            ) -> Result<TrailScan, A::Error> {
                let mut empty = true;
                while seq.next_element::<HopScan<'de>>()?.is_some() {
                    empty = false;
                }
                Ok(TrailScan { empty })
            }
        }
        d.deserialize_seq(Entries)
    }
}

/// An envelope a node passes on: the bytes it came in, and what a hop decides by.
pub struct Transit<'a> {
    bytes: &'a [u8],
    scan: Scan<'a>,
    hops: u8,
    /// Where the `hops` value is.
    hops_at: Range<usize>,
    /// Where the `trail` array's closing `]` is.
    trail_end: usize,
    /// Whether the trail has entries already (the stamp then needs a comma).
    trail_empty: bool,
}

impl<'a> Transit<'a> {
    /// Reads an envelope's routing fields, or `None` when it cannot be stamped in place: it is
    /// malformed, has no `hops` or `trail` field yet, or refers to files (which a node checks
    /// on the parsed envelope).
    pub fn read(bytes: &'a [u8]) -> Option<Transit<'a>> {
        let whole = std::str::from_utf8(bytes).ok().and_then(canonical::read);
        match whole {
            Some((len, t)) if len == bytes.len() => Some(t),
            _ => Transit::stampable(bytes, serde_json::from_slice(bytes).ok()?),
        }
    }

    /// Reads the envelope at the start of `text`, which goes on after it (a link batch holds
    /// envelopes one after the other), in one pass: how many bytes it takes, and the envelope
    /// as [`Transit::read`] reads it. `None` when no envelope with the fields a hop reads
    /// starts there. Text, not bytes: the caller checks a whole batch as UTF-8 once, where
    /// reading bytes checked every string of every envelope again.
    /// The form every node writes is read by hand ([`canonical`]); any other, by serde.
    pub fn read_prefix(text: &'a str) -> Option<(usize, Option<Transit<'a>>)> {
        match canonical::read(text) {
            Some((len, t)) => Some((len, Some(t))),
            None => Transit::read_prefix_by_serde(text),
        }
    }

    /// [`Transit::read_prefix`] through serde's derived reader: any field order, whitespace,
    /// escapes, unknown fields.
    fn read_prefix_by_serde(text: &'a str) -> Option<(usize, Option<Transit<'a>>)> {
        let mut stream = serde_json::Deserializer::from_str(text).into_iter::<Scan<'a>>();
        let scan = stream.next()?.ok()?;
        let len = stream.byte_offset();
        Some((len, Transit::stampable(&text.as_bytes()[..len], scan)))
    }

    /// `scan`, read from `bytes`, as a transit, if it can be stamped in place.
    fn stampable(bytes: &'a [u8], scan: Scan<'a>) -> Option<Transit<'a>> {
        if scan.files.is_some_and(|f| f.get() != "[]") {
            return None;
        }
        let hops_raw = scan.hops?;
        let hops: u8 = hops_raw.get().parse().ok()?;
        let trail = scan.trail?;
        let hops_at = span(bytes, hops_raw)?;
        let trail_at = span(bytes, trail)?;
        let entries: TrailScan = serde_json::from_str(trail.get()).ok()?;
        Some(Transit {
            bytes,
            hops,
            hops_at,
            trail_end: trail_at.end - 1,
            trail_empty: entries.empty,
            scan,
        })
    }

    /// The bytes as they came.
    pub fn bytes(&self) -> &'a [u8] {
        self.bytes
    }

    /// The routing fields, as they came (before this node's stamp).
    pub fn head(&self) -> Head<'_> {
        let s = &self.scan;
        Head {
            id: &s.id,
            kind: s.kind,
            from: AddressRef {
                node: &s.from.node,
                client: &s.from.client,
            },
            to: AddressRef {
                node: &s.to.node,
                client: &s.to.client,
            },
            cmd: &s.cmd,
            created_at: s.created_at,
            expires_at: s.expires_at,
            priority: s.priority,
            hops: self.hops,
            via_root: s.via_root,
        }
    }

    /// Whether the sender asked for this receipt.
    pub fn wants(&self, receipt: ReceiptKind) -> bool {
        self.scan.receipts.contains(&receipt)
    }

    /// The envelope with `node`'s custody stamped: `hops` one more, and `{node, at}` at the
    /// end of the trail. The same bytes [`Envelope::to_bytes`](crate::Envelope::to_bytes)
    /// writes after the same change, when the envelope came in the form it writes.
    pub fn stamp(&self, node: &str, at: u64) -> Vec<u8> {
        let b = self.bytes;
        let mut hop = Vec::with_capacity(node.len() + 40);
        if !self.trail_empty {
            hop.push(b',');
        }
        hop.extend_from_slice(br#"{"node":"#);
        serde_json::to_writer(&mut hop, node).expect("a string always serialises");
        // Numbers through `itoa`: `write!` and `to_string` went through the formatting
        // machinery, a sixth of the stamp's cost.
        let mut n = itoa::Buffer::new();
        hop.extend_from_slice(br#","at":"#);
        hop.extend_from_slice(n.format(at).as_bytes());
        hop.push(b'}');
        let hops = n.format(self.hops.saturating_add(1));
        // Two edits, applied in the order they occur in the bytes.
        let mut edits = [
            (self.hops_at.clone(), hops.as_bytes()),
            (self.trail_end..self.trail_end, hop.as_slice()),
        ];
        edits.sort_by_key(|(at, _)| at.start);
        let mut out = Vec::with_capacity(b.len() + hop.len() + 4);
        let mut from = 0;
        for (at, with) in edits {
            out.extend_from_slice(&b[from..at.start]);
            out.extend_from_slice(with);
            from = at.end;
        }
        out.extend_from_slice(&b[from..]);
        out
    }
}

/// Where `raw`, borrowed from `bytes`, lies in them.
fn span(bytes: &[u8], raw: &RawValue) -> Option<Range<usize>> {
    let start = (raw.get().as_ptr() as usize).checked_sub(bytes.as_ptr() as usize)?;
    let end = start + raw.get().len();
    (end <= bytes.len()).then_some(start..end)
}

#[cfg(test)]
mod tests {
    use serde_json::value::RawValue;

    use super::*;
    use crate::envelope::{Envelope, Hop};

    type NodeEnvelope = Envelope<Box<RawValue>>;

    /// What a node did before: parse whole, stamp, write whole.
    fn whole(bytes: &[u8], node: &str, at: u64) -> Vec<u8> {
        let mut env = NodeEnvelope::parse(bytes).unwrap();
        env.hops = env.hops.saturating_add(1);
        env.trail.push(Hop {
            node: node.into(),
            at,
        });
        env.to_bytes()
    }

    const WIRE: &str = r#"{"id":"01ABC","kind":"cmd","from":{"node":"js.nj.t1","client":"a"},"to":{"node":"js","client":"b"},"cmd":"x","params":{"k":[1,"two\"]"],"trail":[]},"created_at":5,"expires_at":9,"priority":"urgent","receipts":["delivered","replied"],"hops":2,"via_root":true,"trail":[{"node":"js.nj.t1","at":5},{"node":"js.nj","at":6}]}"#;

    #[test]
    fn stamps_the_bytes_a_whole_parse_would_write() {
        let t = Transit::read(WIRE.as_bytes()).unwrap();
        let head = t.head();
        assert_eq!((head.id, head.cmd, head.hops), ("01ABC", "x", 2));
        assert_eq!(
            head.to,
            AddressRef {
                node: "js",
                client: "b"
            }
        );
        assert_eq!(head.from.to_string(), "js.nj.t1/a");
        assert_eq!(
            (head.priority, head.expires_at, head.via_root),
            (Priority::Urgent, Some(9), true)
        );
        assert!(t.wants(ReceiptKind::Replied) && !t.wants(ReceiptKind::Accepted));
        let parsed = NodeEnvelope::parse(WIRE.as_bytes()).unwrap();
        assert_eq!(head, parsed.head(), "both readings decide alike");
        assert_eq!(
            String::from_utf8(t.stamp("js", 7)).unwrap(),
            String::from_utf8(whole(WIRE.as_bytes(), "js", 7)).unwrap()
        );
    }

    #[test]
    fn a_first_stamp_on_an_empty_trail_and_fields_in_any_order() {
        let cases = [
            r#"{"id":"1","from":{"node":"a","client":"b"},"to":{"node":"a","client":"c"},"cmd":"x","created_at":1,"hops":0,"trail":[]}"#,
            r#"{"trail":[{"node":"a","at":1}],"hops":1,"id":"1","from":{"node":"a","client":"b"},"to":{"node":"a","client":"c"},"cmd":"x","created_at":1}"#,
            r#" { "id" : "1" , "hops" : 3 , "trail" : [ {"node":"a","at":1} ] , "from":{"node":"a","client":"b"},"to":{"node":"a","client":"c"},"cmd":"x","created_at":1 } "#,
        ];
        for case in cases {
            let t = Transit::read(case.as_bytes()).unwrap();
            let stamped = t.stamp("n.m", 42);
            let ours = Envelope::<serde_json::Value>::parse(&stamped).unwrap();
            let theirs =
                Envelope::<serde_json::Value>::parse(&whole(case.as_bytes(), "n.m", 42)).unwrap();
            assert_eq!(ours, theirs, "{case}");
        }
    }

    #[test]
    fn what_it_cannot_stamp_in_place_reads_as_none() {
        let base = r#""id":"1","from":{"node":"a","client":"b"},"to":{"node":"a","client":"c"},"cmd":"x","created_at":1"#;
        for (case, why) in [
            (format!("{{{base}}}"), "no hops, no trail"),
            (format!(r#"{{{base},"hops":1}}"#), "no trail"),
            (format!(r#"{{{base},"trail":[]}}"#), "no hops"),
            (
                format!(r#"{{{base},"hops":1,"trail":[],"files":[{{"sha256":"x"}}]}}"#),
                "files",
            ),
            (format!(r#"{{{base},"hops":-1,"trail":[]}}"#), "hops not a u8"),
            (format!(r#"{{{base},"hops":300,"trail":[]}}"#), "hops not a u8"),
            (format!(r#"{{{base},"hops":1,"trail":{{}}}}"#), "trail not a list"),
            (format!(r#"{{{base},"hops":1,"trail":[{{"at":1}}]}}"#), "a hop without node"),
            (
                format!(r#"{{{base},"hops":1,"trail":[],"hops":2}}"#),
                "a duplicate field",
            ),
            (
                r#"{"id":"1","from":{"node":"a","client":"b","x":1},"to":{"node":"a","client":"c"},"cmd":"x","created_at":1,"hops":1,"trail":[]}"#.to_string(),
                "an address with another key",
            ),
            (r#"{"id":1}"#.to_string(), "malformed"),
        ] {
            assert!(Transit::read(case.as_bytes()).is_none(), "{why}: {case}");
        }
        let no_files = format!(r#"{{{base},"hops":1,"trail":[],"files":[]}}"#);
        assert!(Transit::read(no_files.as_bytes()).is_some());
    }

    #[test]
    fn reads_an_envelope_that_more_bytes_follow() {
        let framed = format!(r#"{WIRE}}},{{"p":1"#);
        let (len, t) = Transit::read_prefix(&framed).unwrap();
        assert_eq!(len, WIRE.len());
        assert_eq!(t.unwrap().bytes(), WIRE.as_bytes());
        let (len, t) = Transit::read_prefix(r#"{"id":"1","from":{"node":"a","client":"b"},"to":{"node":"a","client":"c"},"cmd":"x","created_at":1}]"#).unwrap();
        assert!(
            t.is_none() && len == 99,
            "an envelope, but not one to stamp in place"
        );
        assert!(Transit::read_prefix(r#"{"id":1}}"#).is_none());
        assert!(Transit::read_prefix("").is_none());
    }

    #[test]
    fn escaped_strings_and_unknown_fields_pass_through() {
        let case = r#"{"id":"1","from":{"node":"a","client":"b\u0041"},"to":{"node":"a","client":"c"},"cmd":"x\"y","created_at":1,"future":{"z":[1]},"priority":9,"hops":1,"trail":[{"node":"a","at":1}]}"#;
        let t = Transit::read(case.as_bytes()).unwrap();
        assert_eq!((t.head().from.client, t.head().cmd), ("bA", "x\"y"));
        assert_eq!(t.head().priority, Priority::Urgent);
        let stamped = String::from_utf8(t.stamp("a.b", 2)).unwrap();
        assert!(stamped.contains(r#""future":{"z":[1]}"#), "{stamped}");
        assert!(stamped.contains(r#""priority":9"#), "{stamped}");
        assert!(
            stamped.ends_with(r#""hops":2,"trail":[{"node":"a","at":1},{"node":"a.b","at":2}]}"#)
        );
    }
}
