//! Reading a stream over HTTP: the cursor (`u.n.b`) and the page a long-poll of
//! `/v1/inbox` or `/v1/receipts` answers (`topics.md`, "HTTP").

use serde::{Deserialize, Serialize};

use crate::priority::LANES;

/// A position in one of a client's streams as an HTTP client sees it: the last sequence it
/// has in each priority lane, urgent first. Written `u.n.b` (e.g. `0.17.3`); a plain number
/// `n` means `0.n.0`. Clients pass back what they were given and need not look inside.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct Cursor(pub [u64; LANES]);

impl Cursor {
    /// Whether the client has nothing yet.
    pub fn is_start(&self) -> bool {
        self.0 == [0; LANES]
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [u, n, b] = self.0;
        write!(f, "{u}.{n}.{b}")
    }
}

/// Text that is not a cursor.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor (u.n.b or n)")]
pub struct BadCursor;

impl std::str::FromStr for Cursor {
    type Err = BadCursor;

    fn from_str(s: &str) -> Result<Cursor, BadCursor> {
        // Digits only: `u64::from_str` would also take a leading `+`.
        let parts: Vec<u64> = s
            .split('.')
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(BadCursor);
                }
                p.parse::<u64>().map_err(|_| BadCursor)
            })
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [n] => Ok(Cursor([0, n, 0])),
            [u, n, b] => Ok(Cursor([u, n, b])),
            _ => Err(BadCursor),
        }
    }
}

impl Serialize for Cursor {
    /// As its text, `"u.n.b"`.
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cursor {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Cursor, D::Error> {
        let text = std::borrow::Cow::<str>::deserialize(d)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

/// The answer to a long-poll: `{"cursor": "u.n.b", "messages": [envelope, …]}`, urgent
/// first. `cursor` is where the reader stands after taking these messages; the next poll
/// passes it back, which acknowledges them. The node writes it without parsing the envelopes
/// again (`bridge/src/http/inbox.rs`); `M` is how a reader holds them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Page<M> {
    /// Where the reader stands after this page.
    pub cursor: Cursor,
    /// The envelopes, in order.
    pub messages: Vec<M>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_form() {
        let c: Cursor = "0.17.3".parse().unwrap();
        assert_eq!(c, Cursor([0, 17, 3]));
        assert_eq!(c.to_string(), "0.17.3");
        assert_eq!("5".parse::<Cursor>(), Ok(Cursor([0, 5, 0])));
        for bad in [
            "",
            "+5",
            "1.2",
            "1..3",
            "a.b.c",
            "1.2.3.4",
            "99999999999999999999",
        ] {
            assert_eq!(bad.parse::<Cursor>(), Err(BadCursor), "{bad}");
        }
        assert!(Cursor::default().is_start());
    }

    #[test]
    fn pages_read_as_the_node_writes_them() {
        let page: Page<serde_json::Value> =
            serde_json::from_str(r#"{"cursor":"1.2.0","messages":[{"id":"a"}]}"#).unwrap();
        assert_eq!(page.cursor, Cursor([1, 2, 0]));
        assert_eq!(page.messages.len(), 1);
        assert_eq!(
            serde_json::to_string(&page).unwrap(),
            r#"{"cursor":"1.2.0","messages":[{"id":"a"}]}"#
        );
        assert!(
            serde_json::from_str::<Page<serde_json::Value>>(r#"{"cursor":"x","messages":[]}"#)
                .is_err()
        );
    }
}
