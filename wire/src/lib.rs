//! medlink's wire contract, written once for both ends: the node (`medlink-broker`,
//! `medlink-bridge`) and the applications' SDK (`medlink-sdk`) depend on this crate, and it
//! depends on no medlink crate. `topics.md` describes the same contract in prose.
//!
//! - [`address`]: [`Address`], and the rules for node ids, client names and message ids.
//! - [`envelope`]: [`Envelope`] (what travels and is delivered), [`Kind`], [`Hop`], and
//!   [`Head`], the fields a node routes by.
//! - [`transit`]: [`Transit`], an envelope a node passes on: routing fields read, bytes kept.
//! - [`submission`]: [`Submission`] (what a client sends) and the rules a node holds it to.
//! - [`priority`]: [`Priority`] and its lanes.
//! - [`receipt`]: [`ReceiptKind`], [`ReceiptStatus`], [`Receipt`]; how receipts are built and
//!   read.
//! - [`error`]: [`FieldError`], a refusal that names the field.
//! - [`file`]: [`FileRef`], a content-addressed file (the upload's answer).
//! - [`topics`]: the MQTT topic names.
//! - [`cursor`]: the HTTP stream position [`Cursor`] and the long-poll [`Page`].
//! - [`transport`]: [`Transport`] and the `GET /v1/transport` answer.
//! - [`backoff`]: the reconnect [`Backoff`].
//! - [`operator`]: dead letters, re-sends and the operator log, as the API answers them.
//! - `probe` and `http` (feature `client`): whether an MQTT address answers again, and the
//!   HTTP client of the HTTP transport.
//! - `token` (feature `token`): the claims of a device token, and minting one (HS256).

#![warn(missing_docs)]

pub mod address;
pub mod backoff;
pub mod cursor;
pub mod envelope;
pub mod error;
pub mod file;
#[cfg(feature = "client")]
pub mod http;
mod names;
pub mod operator;
pub mod priority;
#[cfg(feature = "client")]
pub mod probe;
pub mod receipt;
pub mod submission;
#[cfg(feature = "token")]
pub mod token;
pub mod topics;
pub mod transit;
pub mod transport;

pub use address::{
    check_node_id, valid_client, valid_id, valid_node_id, Address, AddressRef, MessageId, ID_RULE,
    MAX_CLIENT, MAX_ID, MAX_NODE_ID,
};
pub use backoff::Backoff;
pub use cursor::{BadCursor, Cursor, Page};
pub use envelope::{
    now_ms, Envelope, Head, Hop, Kind, Params, ReceiptKind, UnknownReceiptKind, MAX_HOPS,
};
pub use error::FieldError;
pub use file::{valid_sha256, FileRef, MAX_FILES};
pub use operator::{
    check_limit, DeadLetter, DeadLetterIds, DeadLetterQuery, DeadReason, OperatorAction, Outcome,
    UnknownDeadReason, MAX_LISTED,
};
pub use priority::{Priority, UnknownPriority, LANES};
pub use receipt::{Receipt, ReceiptStatus, RECEIPT_SENDER, RECEIPT_TTL_MS};
pub use submission::{json_depth, Limits, Submission, MAX_CMD, MAX_PARAMS_DEPTH};
pub use transit::Transit;
pub use transport::{default_port, Transport, TransportAnswer, UnknownTransport};
