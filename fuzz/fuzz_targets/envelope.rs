//! Parsers of untrusted payloads: a client's outbox submission (and stamping it into an
//! envelope), envelopes and link frames from other nodes, journal segments, and HTTP cursors.
#![no_main]

use libfuzzer_sys::fuzz_target;
use medlink_bridge::envelope::{Address, Envelope, Limits, Submission};
use medlink_bridge::link::frame::Frame;

fuzz_target!(|data: &[u8]| {
    let limits = Limits { max_payload: 64 * 1024 };
    if let Ok(s) = Submission::parse(data, limits) {
        let sender = Address { node: "js.nj".into(), client: "clinic".into() };
        if let Ok(env) = s.into_envelope(sender, "01ARZ3NDEKTSV4RRFFQ69G5FAV".into()) {
            // What the node stamps must parse back.
            let again = Envelope::parse(&env.to_bytes()).expect("a stamped envelope re-parses");
            assert_eq!(again.id, env.id);
        }
    }
    if let Ok(env) = Envelope::parse(data) {
        let _ = Envelope::parse(&env.to_bytes());
    }
    let _ = Frame::parse(data);
    // A link batch and an envelope read in place (by hand for the form nodes write, else by
    // serde: `wire/src/transit/canonical.rs`).
    let _ = medlink_bridge::link::frame::read_batch(data);
    let _ = medlink_bridge::envelope::Transit::read(data);
    if let Ok(text) = std::str::from_utf8(data) {
        // A cursor that parses prints back to one that parses to the same position.
        if let Ok(c) = text.parse::<medlink_bridge::clients::Cursor>() {
            assert_eq!(c.to_string().parse::<medlink_bridge::clients::Cursor>(), Ok(c));
        }
    }
    let _ = medlink_bridge::journal::segment::decode(bytes::Bytes::copy_from_slice(data));
    let sender = Address { node: "js".into(), client: "c".into() };
    let _ = Envelope::rejection("js", &sender, data, "fuzz", "01ARZ3NDEKTSV4RRFFQ69G5FAV".into());
});
