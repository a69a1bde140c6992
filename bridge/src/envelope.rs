//! The node's view of the wire contract. The types are `medlink-wire`'s, in the form a node
//! holds them (params unparsed, `Box<RawValue>`), re-exported here under the names the node
//! has always used so `crate::envelope::…` keeps working. A client publishes a
//! [`Submission`] to its outbox; the first node validates it ([`Submission::parse`]), stamps
//! the authenticated sender into `from` ([`Submission::into_envelope`]), and every later hop
//! carries the [`Envelope`] unchanged except for `hops`, `trail` and the `via_root` flag.

use serde_json::value::RawValue;

pub use medlink_wire::{
    check_node_id, json_depth, now_ms, valid_node_id, Address, FieldError, Head, Hop, Kind, Limits,
    Priority, ReceiptKind, ReceiptStatus, Transit, LANES, MAX_HOPS, MAX_NODE_ID, MAX_PARAMS_DEPTH,
    RECEIPT_TTL_MS,
};

/// The routed form of a command, params unparsed: what the journal stores and links carry.
pub type Envelope = medlink_wire::Envelope<Box<RawValue>>;

/// What a client publishes to its outbox, params unparsed.
pub type Submission = medlink_wire::Submission<Box<RawValue>>;

/// `null`, the params of a command that has none.
pub(crate) fn null_params() -> Box<RawValue> {
    medlink_wire::Params::null()
}

/// A minimal command from `js.nj.t1/a` to `node/client`, for tests.
#[cfg(test)]
pub(crate) fn test_envelope(id: &str, node: &str, client: &str) -> Envelope {
    Envelope::new(
        id.into(),
        Address::new("js.nj.t1", "a"),
        Address::new(node, client),
        "x".into(),
        null_params(),
        0,
    )
}
