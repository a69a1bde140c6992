//! Frames on a tier link (`link/<child>/up` and `link/<child>/down`).
//!
//! Each direction of a link is a go-back-N stream: the sender numbers envelopes with a
//! per-link sequence, the receiver commits them in order and acknowledges cumulatively, and
//! the sender forgets only what is acknowledged. `floor` is the lowest sequence the sender
//! still holds: anything below it was acknowledged or expired, which lets a receiver whose
//! journal was replaced resynchronise instead of waiting forever for a gap to fill.
//!
//! Each priority class is its own stream (`lane` in batches and acks; absent means normal),
//! with its own sequence numbers, so urgent envelopes never queue behind routine ones.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::envelope::{Priority, Transit};

fn is_normal(p: &Priority) -> bool {
    *p == Priority::Normal
}

/// One envelope in a batch with its link sequence number.
#[derive(Debug, Serialize, Deserialize)]
pub struct Numbered<'a> {
    /// Sequence of the sender's previous envelope on this link: no sequence between `p` and
    /// `s` exists (expired, or never committed), so the receiver can tell a gap it must wait
    /// for from numbers that were skipped on purpose.
    pub p: u64,
    /// Link sequence number.
    pub s: u64,
    /// The envelope, verbatim.
    #[serde(borrow)]
    pub e: &'a RawValue,
}

/// A message on a link.
#[derive(Debug, Serialize)]
#[serde(tag = "t", rename_all = "lowercase")]
pub enum Frame<'a> {
    /// A batch of envelopes.
    Batch {
        /// Epoch of the sender's journal; a new epoch restarts the sequence.
        epoch: u64,
        /// Lowest sequence the sender still holds.
        floor: u64,
        /// The priority lane this batch belongs to.
        #[serde(skip_serializing_if = "is_normal")]
        lane: Priority,
        /// Envelopes in sequence order.
        #[serde(borrow)]
        msgs: Vec<Numbered<'a>>,
    },
    /// Everything up to and including `upto` is committed by the receiver.
    Ack {
        /// The lane acknowledged.
        #[serde(skip_serializing_if = "is_normal")]
        lane: Priority,
        /// Highest contiguous sequence committed.
        upto: u64,
    },
    /// Heartbeat through the node logic (not just the broker), so a stalled peer is noticed.
    Ping {
        /// Sender's clock, echoed back.
        at: u64,
    },
    /// Answer to a ping.
    Pong {
        /// The ping's `at`.
        at: u64,
    },
    /// Up: the status summary of one node of the sender's subtree (its own, or one relayed
    /// from below), for the console. Best effort, never journaled: the next one replaces it.
    Status {
        /// The node it describes.
        node: String,
        /// Its summary (`console::status::NodeStatus`).
        #[serde(borrow)]
        s: &'a RawValue,
    },
    /// Down: an operator's question for node `to` (or `*`: every node of the subtree), to be
    /// answered within `budget_ms`.
    Ask {
        /// The asker's number for it, echoed in the answer.
        qid: u64,
        /// The node asked, or `*`.
        to: String,
        /// How long the asker waits, ms (each hop passes on less).
        budget_ms: u64,
        /// The question (`console::ask::Op`).
        #[serde(borrow)]
        op: &'a RawValue,
    },
    /// Up: the answer to an `ask`.
    Answer {
        /// The ask's `qid`.
        qid: u64,
        /// The answers, one per node that answered (`console::ask::Reply`).
        #[serde(borrow)]
        a: &'a RawValue,
    },
}

/// Flat wire form used for decoding: serde's internally tagged enums buffer their content,
/// which `RawValue` cannot pass through, so the tag is read as a plain field instead.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Wire<'a> {
    t: WireKind,
    epoch: Option<u64>,
    floor: Option<u64>,
    #[serde(borrow)]
    msgs: Option<Vec<Numbered<'a>>>,
    upto: Option<u64>,
    lane: Option<Priority>,
    at: Option<u64>,
    node: Option<String>,
    #[serde(borrow)]
    s: Option<&'a RawValue>,
    qid: Option<u64>,
    to: Option<String>,
    budget_ms: Option<u64>,
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    a: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireKind {
    Batch,
    Ack,
    Ping,
    Pong,
    Status,
    Ask,
    Answer,
}

impl<'a> Frame<'a> {
    /// Decodes a frame; the envelopes stay borrowed from `bytes`.
    pub fn parse(bytes: &'a [u8]) -> Result<Frame<'a>, String> {
        let w: Wire<'a> = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;
        let need = |v: Option<u64>, f: &str| v.ok_or_else(|| format!("missing field `{f}`"));
        Ok(match w.t {
            WireKind::Batch => Frame::Batch {
                epoch: need(w.epoch, "epoch")?,
                floor: need(w.floor, "floor")?,
                lane: w.lane.unwrap_or_default(),
                msgs: w.msgs.ok_or("missing field `msgs`")?,
            },
            WireKind::Ack => Frame::Ack {
                lane: w.lane.unwrap_or_default(),
                upto: need(w.upto, "upto")?,
            },
            WireKind::Ping => Frame::Ping {
                at: need(w.at, "at")?,
            },
            WireKind::Pong => Frame::Pong {
                at: need(w.at, "at")?,
            },
            WireKind::Status => Frame::Status {
                node: w.node.ok_or("missing field `node`")?,
                s: w.s.ok_or("missing field `s`")?,
            },
            WireKind::Ask => Frame::Ask {
                qid: need(w.qid, "qid")?,
                to: w.to.ok_or("missing field `to`")?,
                budget_ms: need(w.budget_ms, "budget_ms")?,
                op: w.op.ok_or("missing field `op`")?,
            },
            WireKind::Answer => Frame::Answer {
                qid: need(w.qid, "qid")?,
                a: w.a.ok_or("missing field `a`")?,
            },
        })
    }

    /// Serialises the frame.
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("frames always serialise")
    }
}

/// Encodes a `batch` frame around envelope bodies that are already JSON (written by
/// `Envelope::to_bytes`), without parsing them again. `prev` is the sequence sent just
/// before the first row.
pub fn encode_batch(
    epoch: u64,
    lane: Priority,
    (floor, prev): (u64, u64),
    rows: &[crate::journal::Queued],
) -> Vec<u8> {
    // Numbers through `itoa`, not `write!`: the formatting machinery was most of this
    // function's cost, once per frame and twice per envelope.
    let mut n = itoa::Buffer::new();
    let size: usize = rows.iter().map(|r| r.body.len() + 48).sum();
    let mut out = Vec::with_capacity(size + 48);
    out.extend_from_slice(br#"{"t":"batch","epoch":"#);
    out.extend_from_slice(n.format(epoch).as_bytes());
    out.extend_from_slice(br#","floor":"#);
    out.extend_from_slice(n.format(floor).as_bytes());
    out.push(b',');
    if lane != Priority::Normal {
        let name = serde_json::to_vec(&lane).expect("a priority always serialises");
        out.extend_from_slice(br#""lane":"#);
        out.extend_from_slice(&name);
        out.push(b',');
    }
    out.extend_from_slice(br#""msgs":["#);
    let mut p = prev;
    for (i, row) in rows.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(br#"{"p":"#);
        out.extend_from_slice(n.format(p).as_bytes());
        out.extend_from_slice(br#","s":"#);
        out.extend_from_slice(n.format(row.lseq).as_bytes());
        out.extend_from_slice(br#","e":"#);
        out.extend_from_slice(&row.body);
        out.push(b'}');
        p = row.lseq;
    }
    out.extend_from_slice(b"]}");
    out
}

/// One envelope of a batch as the receiver takes it: its link numbers, its bytes, and what a
/// hop reads of it when that was read with the batch.
pub struct Incoming<'a> {
    /// The sender's previous sequence ([`Numbered::p`]).
    pub p: u64,
    /// Its sequence.
    pub s: u64,
    /// The envelope, verbatim.
    pub bytes: &'a [u8],
    /// Its routing fields (read with the batch by [`read_batch`], or by [`Transit::read`]
    /// after [`Frame::parse`]); `None` when it cannot be stamped in place, and the receiver
    /// parses it whole.
    pub transit: Option<Transit<'a>>,
}

impl<'a> From<Numbered<'a>> for Incoming<'a> {
    fn from(m: Numbered<'a>) -> Incoming<'a> {
        Incoming {
            p: m.p,
            s: m.s,
            bytes: m.e.get().as_bytes(),
            transit: Transit::read(m.e.get().as_bytes()),
        }
    }
}

/// A received batch: [`Frame::Batch`] with its envelopes as [`Incoming`].
pub struct Batch<'a> {
    /// The sender's journal epoch.
    pub epoch: u64,
    /// The lowest sequence the sender still holds.
    pub floor: u64,
    /// The priority lane.
    pub lane: Priority,
    /// Envelopes in sequence order.
    pub msgs: Vec<Incoming<'a>>,
}

/// Reads a batch written by [`encode_batch`] in one pass: each envelope's end is where its
/// routing fields were read ([`Transit::read_prefix`]), where [`Frame::parse`] would scan
/// every envelope once to find its end and the hop would read it again. `None` for any
/// other frame, or a batch in any other layout: [`Frame::parse`] reads those.
pub fn read_batch(bytes: &[u8]) -> Option<Batch<'_>> {
    // Checked as UTF-8 once here, so that reading each envelope need not check its strings.
    let text = std::str::from_utf8(bytes).ok()?;
    let mut r = Reader { bytes, at: 0 };
    r.expect(br#"{"t":"batch","epoch":"#)?;
    let epoch = r.number()?;
    r.expect(br#","floor":"#)?;
    let floor = r.number()?;
    let lane = if r.expect(br#","lane":""#).is_some() {
        let end = r.at + r.rest().iter().position(|&b| b == b'"')?;
        let lane = std::str::from_utf8(&bytes[r.at..end]).ok()?.parse().ok()?;
        r.at = end + 1;
        lane
    } else {
        Priority::Normal
    };
    r.expect(br#","msgs":["#)?;
    let mut msgs = Vec::new();
    if r.expect(b"]").is_none() {
        loop {
            r.expect(br#"{"p":"#)?;
            let p = r.number()?;
            r.expect(br#","s":"#)?;
            let s = r.number()?;
            r.expect(br#","e":"#)?;
            let (len, transit) = Transit::read_prefix(text.get(r.at..)?)?;
            msgs.push(Incoming {
                p,
                s,
                bytes: &bytes[r.at..r.at + len],
                transit,
            });
            r.at += len;
            r.expect(b"}")?;
            if r.expect(b",").is_none() {
                r.expect(b"]")?;
                break;
            }
        }
    }
    r.expect(b"}")?;
    (r.at == bytes.len()).then_some(Batch {
        epoch,
        floor,
        lane,
        msgs,
    })
}

/// A cursor over a frame in `encode_batch`'s layout.
struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn rest(&self) -> &'a [u8] {
        &self.bytes[self.at..]
    }

    /// Steps over `literal` if the bytes go on with it.
    fn expect(&mut self, literal: &[u8]) -> Option<()> {
        self.rest()
            .starts_with(literal)
            .then(|| self.at += literal.len())
    }

    /// A decimal u64, as [`encode_batch`] writes one: at least one digit, and no overflow.
    fn number(&mut self) -> Option<u64> {
        let digits = self
            .rest()
            .iter()
            .take_while(|b| b.is_ascii_digit())
            .count();
        if digits == 0 {
            return None;
        }
        let n = self.rest()[..digits].iter().try_fold(0u64, |n, d| {
            n.checked_mul(10)?.checked_add(u64::from(d - b'0'))
        })?;
        self.at += digits;
        Some(n)
    }
}

/// Receiver side of one link direction: which sequences to commit.
#[derive(Debug, Clone, Copy)]
pub struct InOrder {
    /// Highest sequence committed so far.
    pub last: u64,
    /// Epoch of the sender's journal those sequences belong to.
    pub epoch: u64,
}

impl InOrder {
    /// Applies a batch's epoch: sequences of a new sender journal start over.
    pub fn apply_epoch(&mut self, epoch: u64) {
        if epoch != self.epoch {
            self.epoch = epoch;
            self.last = 0;
        }
    }

    /// Applies a batch's floor: a sender that no longer holds `floor - 1` has had it
    /// acknowledged or expired, so there is nothing to wait for below it.
    pub fn apply_floor(&mut self, floor: u64) {
        if floor > self.last.saturating_add(1) {
            self.last = floor - 1;
        }
    }

    /// Classifies sequence `s` whose predecessor is `p`: `Some(true)` commit it,
    /// `Some(false)` duplicate (skip), `None` a gap (stop; the sender will go back and resend).
    pub fn admit(&mut self, p: u64, s: u64) -> Option<bool> {
        if s <= self.last {
            Some(false)
        } else if p <= self.last {
            self.last = s;
            Some(true)
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_order_admits_dedups_and_stops_at_gaps() {
        let mut r = InOrder { last: 4, epoch: 9 };
        r.apply_epoch(9);
        assert_eq!(r.last, 4);
        assert_eq!(r.admit(2, 3), Some(false));
        assert_eq!(r.admit(4, 5), Some(true));
        assert_eq!(r.admit(6, 7), None);
        // 6 was skipped on purpose by the sender
        assert_eq!(r.admit(5, 7), Some(true));
        r.apply_floor(10);
        assert_eq!(r.admit(9, 10), Some(true));
        r.apply_floor(2);
        assert_eq!(r.last, 10);
        r.apply_epoch(10);
        assert_eq!(
            r.admit(0, 1),
            Some(true),
            "a replaced sender journal starts again at 1"
        );
    }

    #[test]
    fn hand_encoded_batches_parse() {
        let rows: Vec<crate::journal::Queued> =
            [(3u64, r#"{"id":"a"}"#), (5, r#"{"id":"b","x":[1]}"#)]
                .iter()
                .map(|(l, b)| crate::journal::Queued {
                    lseq: *l,
                    id: String::new(),
                    expires_at: None,
                    body: bytes::Bytes::from(b.to_string()),
                })
                .collect();
        let bytes = encode_batch(77, Priority::Normal, (2, 1), &rows);
        let urgent = encode_batch(77, Priority::Urgent, (2, 1), &rows);
        match Frame::parse(&urgent).unwrap() {
            Frame::Batch { lane, .. } => assert_eq!(lane, Priority::Urgent),
            _ => panic!("wrong frame"),
        }
        match Frame::parse(&bytes).unwrap() {
            Frame::Batch {
                epoch,
                floor,
                msgs,
                lane,
            } => {
                assert_eq!((epoch, floor, lane), (77, 2, Priority::Normal));
                assert_eq!((msgs[0].p, msgs[0].s), (1, 3));
                assert_eq!((msgs[1].p, msgs[1].s), (3, 5));
                assert_eq!(msgs[1].e.get(), r#"{"id":"b","x":[1]}"#);
            }
            _ => panic!("wrong frame"),
        }
    }

    #[test]
    fn batches_read_in_one_pass_as_frame_parse_reads_them() {
        let env = |id: &str, hops: u8| {
            format!(
                r#"{{"id":"{id}","kind":"cmd","from":{{"node":"a.b","client":"c"}},"to":{{"node":"a","client":"d"}},"cmd":"x","params":{{"s":"}}]\"{{"}},"created_at":1,"priority":"normal","hops":{hops},"trail":[{{"node":"a.b","at":1}}]}}"#
            )
        };
        let rows: Vec<crate::journal::Queued> = [(3u64, env("m1", 1)), (5, env("m2", 1))]
            .into_iter()
            .map(|(lseq, body)| crate::journal::Queued {
                lseq,
                id: String::new(),
                expires_at: None,
                body: bytes::Bytes::from(body),
            })
            .collect();
        for lane in Priority::ALL {
            for rows in [&rows[..0], &rows[..1], &rows[..]] {
                let bytes = encode_batch(77, lane, (2, 1), rows);
                let fast = read_batch(&bytes).expect("encode_batch's layout");
                let Ok(Frame::Batch {
                    epoch,
                    floor,
                    lane: slow_lane,
                    msgs,
                }) = Frame::parse(&bytes)
                else {
                    panic!("not a batch")
                };
                assert_eq!(
                    (fast.epoch, fast.floor, fast.lane),
                    (epoch, floor, slow_lane)
                );
                assert_eq!(fast.msgs.len(), msgs.len());
                for (f, m) in fast.msgs.iter().zip(&msgs) {
                    assert_eq!((f.p, f.s, f.bytes), (m.p, m.s, m.e.get().as_bytes()));
                    let t = f.transit.as_ref().expect("read with the batch");
                    assert_eq!(t.bytes(), f.bytes);
                }
            }
        }
        let bytes = encode_batch(1, Priority::Normal, (1, 0), &rows);
        for cut in [1, 10, bytes.len() / 2, bytes.len() - 1] {
            assert!(read_batch(&bytes[..cut]).is_none(), "cut at {cut}");
        }
        let mut longer = bytes.clone();
        longer.push(b' ');
        assert!(
            read_batch(&longer).is_none(),
            "anything else goes to Frame::parse"
        );
        assert!(read_batch(br#"{"t":"ack","upto":3}"#).is_none());
        let spaced = br#"{"t":"batch", "epoch":1,"floor":1,"msgs":[]}"#;
        assert!(read_batch(spaced).is_none() && Frame::parse(spaced).is_ok());
        // Bytes that are not UTF-8 inside an envelope's string: refused by both readers.
        let mut bad = bytes.clone();
        let at = bad.windows(3).position(|w| w == b"\"m1").unwrap() + 2;
        bad[at] = 0xff;
        assert!(read_batch(&bad).is_none() && Frame::parse(&bad).is_err());
        // Numbers as `encode_batch` writes them, and none that overflow.
        let huge = br#"{"t":"batch","epoch":18446744073709551616,"floor":1,"msgs":[]}"#;
        assert!(read_batch(huge).is_none() && Frame::parse(huge).is_err());
        let max = br#"{"t":"batch","epoch":18446744073709551615,"floor":0,"msgs":[]}"#;
        assert_eq!(
            read_batch(max).map(|b| (b.epoch, b.floor)),
            Some((u64::MAX, 0))
        );
        let empty = br#"{"t":"batch","epoch":,"floor":1,"msgs":[]}"#;
        assert!(read_batch(empty).is_none() && Frame::parse(empty).is_err());
    }

    #[test]
    fn frames_round_trip() {
        let raw = RawValue::from_string(r#"{"id":"x"}"#.into()).unwrap();
        let f = Frame::Batch {
            epoch: 1,
            floor: 1,
            lane: Priority::Bulk,
            msgs: vec![Numbered {
                p: 0,
                s: 1,
                e: &raw,
            }],
        };
        let bytes = f.to_bytes();
        match Frame::parse(&bytes).unwrap() {
            Frame::Batch {
                floor, msgs, lane, ..
            } => {
                assert_eq!((floor, lane), (1, Priority::Bulk));
                assert_eq!(msgs[0].e.get(), r#"{"id":"x"}"#);
            }
            _ => panic!("wrong frame"),
        }
    }
}
