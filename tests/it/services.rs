//! Service groups (anycast): a command to a service reaches exactly one online member,
//! spread across members; a member that does not acknowledge in time loses it to another;
//! with no member online it is held until one connects.

use crate::common;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use common::raw;
use common::*;
use serde_json::json;

fn radiology_tree(timeout_ms: u64) -> Tree {
    let mut js = spec("js", None, &["rad-a", "rad-b"]);
    js.extra = format!(
        "\n[[service]]\nname = \"consult.radiology\"\nmembers = [\"rad-a\", \"rad-b\"]\nack_timeout_ms = {timeout_ms}\n"
    );
    Tree::start(&[js, spec("js.t", Some("js"), &["clinic"])])
}

fn consult(n: u64) -> String {
    json!({"to": {"node": "js", "client": "consult.radiology"}, "cmd": "consult.request",
           "params": {"n": n}})
    .to_string()
}

/// Commands received by `app` until `secs` of quiet, by `n`.
async fn drain(app: &mut App, secs: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while let Some(m) = app.recv(secs).await {
        if m.topic.ends_with("/cmd") {
            assert_eq!(m.json["to"]["client"], "consult.radiology", "{}", m.json);
            got.push(m.json["params"]["n"].as_u64().expect("n"));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_command_reaches_exactly_one_member_and_work_is_spread() {
    let mut tree = radiology_tree(30_000);
    let mut a = App::connect("js", "rad-a", tree.node("js").port).await;
    let mut b = App::connect("js", "rad-b", tree.node("js").port).await;
    let clinic = App::connect("js.t", "clinic", tree.node("js.t").port).await;
    for n in 0..40 {
        clinic.publish_raw(consult(n)).await;
    }
    let (got_a, got_b) = tokio::join!(drain(&mut a, 3), drain(&mut b, 3));
    let set_a: BTreeSet<u64> = got_a.iter().copied().collect();
    let set_b: BTreeSet<u64> = got_b.iter().copied().collect();
    assert_eq!(set_a.len(), got_a.len(), "rad-a got duplicates");
    assert_eq!(set_b.len(), got_b.len(), "rad-b got duplicates");
    assert!(set_a.is_disjoint(&set_b), "a command reached both members");
    let all: BTreeSet<u64> = set_a.union(&set_b).copied().collect();
    assert_eq!(all, (0..40).collect(), "commands lost");
    assert!(
        got_a.len() >= 10 && got_b.len() >= 10,
        "not spread: {} / {}",
        got_a.len(),
        got_b.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_that_does_not_acknowledge_loses_the_command_to_another() {
    let mut tree = radiology_tree(1_500);
    let port = tree.node("js").port;
    // rad-a subscribes and receives, but never acknowledges (a hung application).
    let mut hung = raw::logged_in(port, 4, "rad-a-hung", "rad-a");
    assert_eq!(
        raw::suback_codes(&mut hung, 4, 1, &["org/js/rad-a/cmd"]),
        [1],
        "rad-a subscribed"
    );
    let mut b = App::connect("js", "rad-b", port).await;
    let clinic = App::connect("js.t", "clinic", tree.node("js.t").port).await;
    for n in 0..6 {
        clinic.publish_raw(consult(n)).await;
    }
    // What the hung member was handed.
    hung.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    let mut handed_to_a = BTreeSet::new();
    while let Some((kind, body)) = raw::read_packet(&mut hung) {
        if kind >> 4 == 3 {
            // v3.1.1 PUBLISH, QoS 1: topic (length-prefixed), packet id, payload.
            let topic_len = usize::from(u16::from_be_bytes([body[0], body[1]]));
            let payload = &body[2 + topic_len + 2..];
            let env: serde_json::Value = serde_json::from_slice(payload).expect("envelope");
            handed_to_a.insert(env["params"]["n"].as_u64().expect("n"));
        }
    }
    assert!(!handed_to_a.is_empty(), "round-robin gave rad-a nothing");
    let got_b = drain(&mut b, 4).await;
    let set_b: BTreeSet<u64> = got_b.iter().copied().collect();
    assert_eq!(set_b.len(), got_b.len(), "rad-b got duplicates: {got_b:?}");
    assert_eq!(set_b, (0..6).collect(), "rad-b ends up with every command");
    let moved = tree.node("js").metric("medlink_service_reassigned_total");
    assert_eq!(
        moved as usize,
        handed_to_a.len(),
        "each of rad-a's commands moved once"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_member_online_a_command_is_held_until_one_connects() {
    let mut tree = radiology_tree(30_000);
    let clinic = App::connect("js.t", "clinic", tree.node("js.t").port).await;
    for n in 0..5 {
        clinic.publish_raw(consult(n)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Only rad-b comes: it gets everything, including what was queued for rad-a in turn.
    let mut b = App::connect("js", "rad-b", tree.node("js").port).await;
    let got = drain(&mut b, 4).await;
    let mut counts: HashMap<u64, usize> = HashMap::new();
    for n in &got {
        *counts.entry(*n).or_default() += 1;
    }
    assert_eq!(counts.len(), 5, "held commands lost: {got:?}");
    assert!(counts.values().all(|c| *c == 1), "duplicates: {got:?}");
}
