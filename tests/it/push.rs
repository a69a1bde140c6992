//! One command each to many recipients at once, the outpatient team's push: every recipient
//! gets what each sender sent it once, in the order that sender sent it, whether the sender is
//! on the recipients' node or one tier below, and whatever else the node delivers meanwhile.
//! Timings are the push bench's business (BENCHMARKS.md); this checks what arrives.

use crate::common;

use std::collections::BTreeMap;

use common::http::post_json;
use common::*;
use serde_json::{json, Value};

const RECIPIENTS: usize = 200;
const ROUNDS: u64 = 3;

fn batch(round: u64) -> Value {
    (0..RECIPIENTS)
        .map(|i| {
            json!({"to": {"node": "js", "client": format!("pt-{i:03}")}, "cmd": "push",
                   "params": {"n": round}})
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_push_to_many_recipients_reaches_each_once_in_order_per_sender() {
    let names: Vec<String> = (0..RECIPIENTS).map(|i| format!("pt-{i:03}")).collect();
    let mut clients: Vec<&str> = names.iter().map(String::as_str).collect();
    clients.push("desk-a");
    let mut tree = Tree::start(&[
        spec("js", None, &clients),
        spec("js.t", Some("js"), &["desk-b"]),
    ]);
    let port = tree.node("js").port;
    let mut apps = Vec::with_capacity(RECIPIENTS);
    for name in &names {
        apps.push(App::connect("js", name, port).await);
    }
    // Each round: desk-a pushes to everyone from the recipients' own node, desk-b from the
    // tier below (its commands cross the link), each one batch of RECIPIENTS commands.
    let (root_http, child_http) = (tree.node("js").http_port, tree.node("js.t").http_port);
    for round in 0..ROUNDS {
        for (http, sender) in [(root_http, "desk-a"), (child_http, "desk-b")] {
            let (status, answer) = post_json(
                http,
                "/v1/messages",
                Some((sender, PASSWORD)),
                &batch(round),
            );
            assert_eq!(status, 202, "{sender} round {round}: {answer}");
        }
    }
    let mut received: Vec<BTreeMap<String, Vec<u64>>> = vec![BTreeMap::new(); RECIPIENTS];
    let note = |by_sender: &mut BTreeMap<String, Vec<u64>>, m: &Msg| {
        let from = m.json["from"]["client"].as_str().unwrap_or("?").to_string();
        let n = m.json["params"]["n"].as_u64().expect("params.n");
        by_sender.entry(from).or_default().push(n);
    };
    for (app, by_sender) in apps.iter_mut().zip(&mut received) {
        let mut got = 0;
        while got < 2 * ROUNDS {
            let Some(m) = app.recv(30).await else { break };
            if m.topic.ends_with("/cmd") {
                got += 1;
                note(by_sender, &m);
            }
        }
    }
    // Anything arriving afterwards is a duplicate: give it a moment, then look everywhere.
    tokio::time::sleep(std::time::Duration::from_secs(2)).await;
    let mut bad = Vec::new();
    for (app, mut by_sender) in apps.iter_mut().zip(received) {
        while let Ok(m) = app.rx.try_recv() {
            if m.topic.ends_with("/cmd") {
                note(&mut by_sender, &m);
            }
        }
        for sender in ["desk-a", "desk-b"] {
            let seen = by_sender.remove(sender).unwrap_or_default();
            if seen != (0..ROUNDS).collect::<Vec<_>>() {
                bad.push(format!("{} from {sender}: {seen:?}", app.name));
            }
        }
        if !by_sender.is_empty() {
            bad.push(format!("{}: unexpected senders {by_sender:?}", app.name));
        }
    }
    if !bad.is_empty() {
        tree.dump_logs();
    }
    assert!(
        bad.is_empty(),
        "{} of {RECIPIENTS} recipients got something else than 0..{ROUNDS} once, in order, from each sender: {:?}",
        bad.len(),
        &bad[..bad.len().min(10)]
    );
}
