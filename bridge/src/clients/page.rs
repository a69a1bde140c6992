//! What an HTTP reader of a client stream is handed: deliveries with their cursors.

use bytes::Bytes;

/// One envelope handed to an HTTP poller: its position in the client's stream (the cursor
/// to acknowledge it with) and its JSON.
#[derive(Debug, Clone)]
pub struct Delivery {
    /// The stream position just after this delivery.
    pub cursor: Cursor,
    /// The envelope, as JSON.
    pub body: Bytes,
}

/// The answer to a poll: the deliveries, and the cursor after them (for an empty answer to
/// a poll without a cursor, the stream's acknowledged point: where this reader now stands).
#[derive(Debug, Clone, Default)]
pub struct Page {
    /// Where the reader stands after this page.
    pub cursor: Cursor,
    /// What it is handed, in order.
    pub deliveries: Vec<Delivery>,
}

/// A position in one of a client's streams as an HTTP client sees it: the last sequence it
/// has in each priority lane, urgent first. Written `u.n.b` (e.g. `0.17.3`); a plain number
/// `n` means `0.n.0`. Clients treat it as opaque.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Cursor(pub [u64; 3]);

impl Cursor {
    /// Whether the client has nothing yet.
    pub fn is_start(&self) -> bool {
        self.0 == [0; 3]
    }
}

impl std::fmt::Display for Cursor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let [u, n, b] = self.0;
        write!(f, "{u}.{n}.{b}")
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> Result<Cursor, ()> {
        // Digits only: `u64::from_str` would also take a leading `+`.
        let parts: Vec<u64> = s
            .split('.')
            .map(|p| {
                if p.is_empty() || !p.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(());
                }
                p.parse::<u64>().map_err(|_| ())
            })
            .collect::<Result<_, _>>()?;
        match parts[..] {
            [n] => Ok(Cursor([0, n, 0])),
            [u, n, b] => Ok(Cursor([u, n, b])),
            _ => Err(()),
        }
    }
}
