//! The envelope in the one form nodes write it, read byte by byte instead of through serde.
//!
//! Every node writes an envelope with `serde_json` from [`Envelope`](crate::Envelope): its
//! fields in declaration order, no whitespace, optional ones left out when empty. Past the
//! first node, every envelope a hop reads is in that form. serde's derived reader, which
//! takes fields in any order, matches each key against the field names and checks for
//! duplicates, was most of a middle node's reading of a link batch: 9,900 instructions of the
//! 63,500 its dispatcher ran per command (`bench/hop_instructions.sh`).
//!
//! [`read`] accepts only that form, and only what [`Transit::read_prefix`]'s serde reading
//! would accept with the same values: anything else (another field order, whitespace, an
//! escape in a routing field, `null` for an optional field, a number priority, files, an
//! unknown field) answers `None`, and the caller reads it with serde, which decides. So this
//! path can only be faster, never accept or refuse differently; a test compares the two over
//! envelopes and every truncation and many mutations of them.

use std::borrow::Cow;

use serde::de::IgnoredAny;

use super::{AddressScan, Scan, Transit};
use crate::envelope::{Kind, ReceiptKind};
use crate::priority::Priority;

/// Deepest nesting of `params` read here; deeper ones go to serde (whose limit is 128).
const DEPTH: usize = 64;

/// Reads the envelope at the start of `text` if it is in the form nodes write and can be
/// stamped in place: how many bytes it takes, and the transit. `None` means "read it with
/// serde", not "malformed".
pub(super) fn read(text: &str) -> Option<(usize, Transit<'_>)> {
    let mut c = Cursor {
        text,
        b: text.as_bytes(),
        at: 0,
    };
    c.lit(br#"{"id":"#)?;
    let id = c.string()?;
    c.lit(br#","kind":""#)?;
    let kind = if c.eat(br#"cmd""#) {
        Kind::Cmd
    } else {
        c.lit(br#"receipt""#)?;
        Kind::Receipt
    };
    c.lit(br#","from":"#)?;
    let from = c.address()?;
    c.lit(br#","to":"#)?;
    let to = c.address()?;
    c.lit(br#","cmd":"#)?;
    let cmd = c.string()?;
    c.lit(br#","params":"#)?;
    c.value(0)?;
    let reply_to = c.optional(br#","reply_to":"#, Cursor::string)?;
    let as_service = c.optional(br#","as_service":"#, Cursor::string)?;
    c.lit(br#","created_at":"#)?;
    let created_at = c.number()?;
    let expires_at = c.optional(br#","expires_at":"#, Cursor::number)?;
    c.lit(br#","priority":""#)?;
    let priority = if c.eat(br#"normal""#) {
        Priority::Normal
    } else if c.eat(br#"urgent""#) {
        Priority::Urgent
    } else {
        c.lit(br#"bulk""#)?;
        Priority::Bulk
    };
    let mut receipts = Vec::new();
    if c.eat(br#","receipts":["#) {
        loop {
            receipts.push(c.receipt()?);
            if !c.eat(b",") {
                break;
            }
        }
        c.lit(b"]")?;
    }
    c.lit(br#","hops":"#)?;
    let hops_start = c.at;
    let hops = u8::try_from(c.number()?).ok()?;
    let hops_at = hops_start..c.at;
    let via_root = c.eat(br#","via_root":true"#);
    // A trail with no entries is left out by the writer, and a transit needs one: serde reads
    // an envelope without it.
    c.lit(br#","trail":["#)?;
    loop {
        c.lit(br#"{"node":"#)?;
        c.string()?;
        c.lit(br#","at":"#)?;
        c.number()?;
        c.lit(b"}")?;
        if !c.eat(b",") {
            break;
        }
    }
    let trail_end = c.at;
    c.lit(b"]}")?;
    let scan = Scan {
        id: Cow::Borrowed(id),
        kind,
        from,
        to,
        cmd: Cow::Borrowed(cmd),
        params: IgnoredAny,
        reply_to: reply_to.map(Cow::Borrowed),
        as_service: as_service.map(Cow::Borrowed),
        created_at,
        expires_at,
        priority,
        receipts,
        // Read by `Transit::stampable` only, which this path replaces.
        files: None,
        hops: None,
        via_root,
        trail: None,
    };
    Some((
        c.at,
        Transit {
            bytes: &text.as_bytes()[..c.at],
            scan,
            hops,
            hops_at,
            trail_end,
            trail_empty: false,
        },
    ))
}

/// A position in the envelope's bytes. Every method answers `None` where the bytes leave the
/// form nodes write (or are not JSON), and the caller gives up.
struct Cursor<'a> {
    text: &'a str,
    b: &'a [u8],
    at: usize,
}

impl<'a> Cursor<'a> {
    /// A field the writer leaves out when empty: `Some(None)` when `key` does not come next,
    /// `None` when it does and `read` fails.
    fn optional<T>(
        &mut self,
        key: &[u8],
        read: impl FnOnce(&mut Self) -> Option<T>,
    ) -> Option<Option<T>> {
        if self.eat(key) {
            read(self).map(Some)
        } else {
            Some(None)
        }
    }

    /// Steps over `lit` if the bytes go on with it.
    fn eat(&mut self, lit: &[u8]) -> bool {
        let found = self.b[self.at..].starts_with(lit);
        if found {
            self.at += lit.len();
        }
        found
    }

    /// Steps over `lit`, which must come next.
    fn lit(&mut self, lit: &[u8]) -> Option<()> {
        self.eat(lit).then_some(())
    }

    /// A string without escapes or control characters, borrowed (its quotes stepped over).
    /// The bytes are a `str`, so what lies between two ASCII quotes is one too.
    fn string(&mut self) -> Option<&'a str> {
        self.lit(b"\"")?;
        let start = self.at;
        self.at += plain_run(&self.b[start..]);
        let end = self.at;
        self.lit(b"\"")?;
        self.text.get(start..end)
    }

    /// A `u64` as serde_json reads one: digits, no sign, no leading zero, no fraction or
    /// exponent, no overflow; followed by no more digits.
    fn number(&mut self) -> Option<u64> {
        let digits = self.b[self.at..]
            .iter()
            .take_while(|c| c.is_ascii_digit())
            .count();
        let text = &self.b[self.at..self.at + digits];
        if digits == 0 || (digits > 1 && text[0] == b'0') {
            return None;
        }
        let mut n: u64 = 0;
        for &d in text {
            n = n.checked_mul(10)?.checked_add(u64::from(d - b'0'))?;
        }
        self.at += digits;
        // `1.5` or `1e3` is not a u64 to serde either, but it is its error to give.
        matches!(self.b.get(self.at), Some(b',' | b'}' | b']')).then_some(n)
    }

    /// `{"node":"…","client":"…"}`: an address as written, both strings borrowed.
    fn address(&mut self) -> Option<AddressScan<'a>> {
        self.lit(br#"{"node":"#)?;
        let node = self.string()?;
        self.lit(br#","client":"#)?;
        let client = self.string()?;
        self.lit(b"}")?;
        Some(AddressScan {
            node: Cow::Borrowed(node),
            client: Cow::Borrowed(client),
        })
    }

    /// A receipt kind's wire name, quoted.
    fn receipt(&mut self) -> Option<ReceiptKind> {
        if self.eat(br#""delivered""#) {
            Some(ReceiptKind::Delivered)
        } else if self.eat(br#""replied""#) {
            Some(ReceiptKind::Replied)
        } else {
            self.lit(br#""accepted""#)?;
            Some(ReceiptKind::Accepted)
        }
    }

    /// Steps over JSON whitespace.
    fn space(&mut self) {
        while matches!(self.b.get(self.at), Some(b' ' | b'\t' | b'\n' | b'\r')) {
            self.at += 1;
        }
    }

    /// Steps over one JSON value (`params`, kept byte for byte as it came from the
    /// submission, so with any whitespace inside), checked as serde_json checks a value it
    /// ignores: strings with valid escapes and no control characters, numbers by JSON's
    /// grammar, objects with string keys; duplicate keys are no error there either.
    fn value(&mut self, depth: usize) -> Option<()> {
        if depth > DEPTH {
            return None;
        }
        match *self.b.get(self.at)? {
            b'"' => self.skip_string(),
            b'{' => self.container(b'}', depth, true),
            b'[' => self.container(b']', depth, false),
            b't' => self.lit(b"true"),
            b'f' => self.lit(b"false"),
            b'n' => self.lit(b"null"),
            b'-' | b'0'..=b'9' => self.skip_number(),
            _ => None,
        }
    }

    /// The entries of an object (`keyed`) or array, after its opening bracket, to `close`.
    fn container(&mut self, close: u8, depth: usize, keyed: bool) -> Option<()> {
        self.at += 1;
        self.space();
        if self.eat(&[close]) {
            return Some(());
        }
        loop {
            if keyed {
                self.skip_string()?;
                self.space();
                self.lit(b":")?;
                self.space();
            }
            self.value(depth + 1)?;
            self.space();
            if self.eat(&[close]) {
                return Some(());
            }
            self.lit(b",")?;
            self.space();
        }
    }

    /// A string inside `params`: escapes as serde_json allows them (`\u` with four hex digits,
    /// whatever code point they make), no control characters.
    fn skip_string(&mut self) -> Option<()> {
        self.lit(b"\"")?;
        loop {
            self.at += plain_run(&self.b[self.at..]);
            match *self.b.get(self.at)? {
                b'"' => {
                    self.at += 1;
                    return Some(());
                }
                b'\\' => {
                    self.at += 1;
                    match *self.b.get(self.at)? {
                        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => self.at += 1,
                        b'u' => {
                            let hex = self.b.get(self.at + 1..self.at + 5)?;
                            if !hex.iter().all(u8::is_ascii_hexdigit) {
                                return None;
                            }
                            self.at += 5;
                        }
                        _ => return None,
                    }
                }
                _ => return None,
            }
        }
    }

    /// A number by JSON's grammar: `-`? (`0` | `[1-9][0-9]*`) (`.` digits)? ([eE] [+-]? digits)?
    fn skip_number(&mut self) -> Option<()> {
        self.eat(b"-");
        let digits = |c: &mut Cursor| {
            let n = c.b[c.at..]
                .iter()
                .take_while(|d| d.is_ascii_digit())
                .count();
            c.at += n;
            n
        };
        if self.eat(b"0") {
            if self.b.get(self.at).is_some_and(u8::is_ascii_digit) {
                return None;
            }
        } else if digits(self) == 0 {
            return None;
        }
        if self.eat(b".") && digits(self) == 0 {
            return None;
        }
        if self.eat(b"e") || self.eat(b"E") {
            if !self.eat(b"+") {
                self.eat(b"-");
            }
            if digits(self) == 0 {
                return None;
            }
        }
        Some(())
    }
}

/// How many bytes of `b` come before the first `"`, `\\` or control character (all of them if
/// none does): the plain stretch of a JSON string. Eight bytes at a time, as serde_json looks
/// for it; byte by byte, a 256-byte `params` string cost about a thousand instructions.
fn plain_run(b: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // The high bit of each byte of `v` below `n` (n ≤ 128). Above the lowest such byte a
    // borrow may flag others, so only the lowest flag found is certain, and only it is used.
    let below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGH;
    let mut chunks = b.chunks_exact(8);
    let mut at = 0;
    for chunk in &mut chunks {
        let x = u64::from_le_bytes(chunk.try_into().expect("eight bytes"));
        let hits = below(x ^ (ONES * u64::from(b'"')), 1)
            | below(x ^ (ONES * u64::from(b'\\')), 1)
            | below(x, 0x20);
        if hits != 0 {
            return at + (hits.trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    let rest = chunks.remainder();
    at + rest
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
        .unwrap_or(rest.len())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::address::Address;
    use crate::envelope::{Envelope, Hop};

    /// Envelopes as nodes write them: every optional field absent and present, escapes and
    /// whitespace inside `params`, one and several trail entries.
    fn written() -> Vec<String> {
        let address = |node: &str, client: &str| Address {
            node: node.into(),
            client: client.into(),
        };
        let params = [
            json!(null),
            json!({"k": [1, -2.5e3, 0, true, false, null, "two\"]", {"": "\u{1}\\/é"}]}),
            json!("x".repeat(256)),
            json!([[[[]]], {}, -0.0, 1e-7]),
        ];
        let mut out = Vec::new();
        for (i, params) in params.into_iter().enumerate() {
            let mut env = Envelope::new(
                String::from("01JABCDEFGHJKMNPQRSTVWXYZ0"),
                address("js.nj.t1", "clinic-7"),
                address("js", "pt-12345"),
                "consult.request".into(),
                params,
                1_764_000_000_000 + i as u64,
            );
            env.hops = 1;
            env.trail.push(Hop {
                node: "js.nj.t1".into(),
                at: 1_764_000_000_001,
            });
            out.push(env.clone());
            env.kind = Kind::Receipt;
            env.reply_to = Some(String::from("01JABCDEFGHJKMNPQRSTVWXYZ1"));
            env.as_service = Some("radiology".into());
            env.expires_at = Some(u64::MAX);
            env.priority = [Priority::Urgent, Priority::Bulk, Priority::Normal][i % 3];
            env.receipts = vec![
                ReceiptKind::Accepted,
                ReceiptKind::Delivered,
                ReceiptKind::Replied,
            ];
            env.via_root = true;
            env.hops = 255;
            env.trail.push(Hop {
                node: "js.nj".into(),
                at: 0,
            });
            out.push(env);
        }
        let mut out: Vec<String> = out
            .iter()
            .map(|e| String::from_utf8(e.to_bytes()).unwrap())
            .collect();
        // `params` as a submission may hold it: with whitespace.
        out.push(out[0].replace(
            r#""params":null"#,
            "\"params\":{ \"a\" :\n[ 1 ,\t2 ] , \"b\":\"\\u00e9\" }",
        ));
        out
    }

    /// What serde reads from `text`, to hold the hand-read transit against.
    fn by_serde(text: &str) -> Option<(usize, Option<Transit<'_>>)> {
        Transit::read_prefix_by_serde(text)
    }

    /// Panics unless serde reads `text` as a stampable envelope equal to `fast`.
    fn same_as_serde(text: &str, (len, fast): &(usize, Transit<'_>)) {
        let Some((serde_len, Some(slow))) = by_serde(text) else {
            panic!("read by hand but not by serde: {text:?}");
        };
        assert_eq!(*len, serde_len, "{text}");
        assert_eq!(fast.bytes(), slow.bytes(), "{text}");
        assert_eq!(fast.head(), slow.head(), "{text}");
        assert_eq!(fast.scan.receipts, slow.scan.receipts, "{text}");
        assert_eq!(fast.scan.reply_to, slow.scan.reply_to, "{text}");
        assert_eq!(fast.scan.as_service, slow.scan.as_service, "{text}");
        assert_eq!(fast.hops_at, slow.hops_at, "{text}");
        assert_eq!(
            (fast.trail_end, fast.trail_empty),
            (slow.trail_end, slow.trail_empty),
            "{text}"
        );
        assert_eq!(fast.stamp("a.b", 7), slow.stamp("a.b", 7), "{text}");
    }

    #[test]
    fn reads_what_nodes_write_as_serde_does() {
        for text in written() {
            let framed = format!("{text}}},{{\"p\":2");
            for case in [&text, &framed] {
                let fast = read(case).unwrap_or_else(|| panic!("not read by hand: {case}"));
                assert_eq!(fast.0, text.len());
                same_as_serde(case, &fast);
            }
        }
    }

    /// Cut short anywhere, or with any byte changed to one that matters to JSON, an envelope
    /// is either read by hand exactly as serde reads it, or left to serde.
    #[test]
    fn never_accepts_what_serde_would_read_otherwise() {
        let (mut tried, mut read_by_hand) = (0, 0);
        for text in written() {
            for cut in 0..text.len() {
                if let Some(t) = text.get(..cut) {
                    assert!(read(t).is_none(), "a cut envelope read: {t:?}");
                }
            }
            for at in 0..text.len() {
                for with in [
                    " ", "\"", "\\", "0", "9", "-", ".", "e", "}", "]", ",", ":", "x", "\n",
                    "\u{7}", "é",
                ] {
                    let (Some(head), Some(tail)) = (text.get(..at), text.get(at + 1..)) else {
                        continue;
                    };
                    for case in [
                        format!("{head}{with}{tail}"),
                        format!("{head}{with}{}", &text[at..]),
                    ] {
                        tried += 1;
                        if let Some(fast) = read(&case) {
                            same_as_serde(&case, &fast);
                            read_by_hand += 1;
                        }
                    }
                }
            }
        }
        // Most changes inside `params` or a routing string leave an envelope nodes could
        // have written: the comparison above is not only ever of refusals.
        assert!(
            tried > 100_000 && read_by_hand > 10_000,
            "{tried} {read_by_hand}"
        );
    }

    #[test]
    fn a_strings_plain_run_ends_at_its_first_quote_backslash_or_control_character() {
        let naive = |b: &[u8]| {
            b.iter()
                .position(|&c| c == b'"' || c == b'\\' || c < 0x20)
                .unwrap_or(b.len())
        };
        let mut seed = 7u64;
        for len in 0..40 {
            for _ in 0..300 {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
                        // Mostly plain bytes (high ones too), now and then one that ends it.
                        match (seed >> 33) % 40 {
                            0 => b'"',
                            1 => b'\\',
                            2 => (seed >> 20) as u8 % 0x20,
                            _ => 0x20 + (seed >> 40) as u8 % 0xe0,
                        }
                    })
                    .collect();
                assert_eq!(plain_run(&b), naive(&b), "{b:?}");
            }
        }
    }

    #[test]
    fn leaves_other_forms_to_serde() {
        let text = &written()[0];
        for other in [
            text.replacen(r#"{"id""#, r#"{ "id""#, 1),
            text.replacen(r#""kind":"cmd","#, "", 1),
            text.replacen(r#""hops":1"#, r#""hops":1,"files":[]"#, 1),
            text.replacen(r#""priority":"normal""#, r#""priority":5"#, 1),
            text.replacen(
                r#""cmd":"consult.request""#,
                r#""cmd":"consult\u002erequest""#,
                1,
            ),
            text.replacen(r#""params":null,"#, r#""params":null,"reply_to":null,"#, 1),
            text.replacen(r#""params":null,"#, r#""params":null,"future":1,"#, 1),
        ] {
            assert_ne!(&other, text);
            assert!(read(&other).is_none(), "{other}");
            assert!(
                by_serde(&other).is_some_and(|(_, t)| t.is_some()),
                "serde reads it: {other}"
            );
        }
    }
}
