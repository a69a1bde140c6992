//! What an HTTP reader of a client stream is handed: deliveries with their cursors. The JSON
//! answer built from a [`Page`] is the wire's `medlink_wire::Page` (`http/inbox.rs` writes it).

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

/// A position in one of a client's streams as an HTTP client sees it (`u.n.b`): the wire
/// contract's, which the SDK reads too.
pub use medlink_wire::Cursor;
