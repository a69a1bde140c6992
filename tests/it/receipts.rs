//! Positive receipts across tiers: `accepted` from the first node, `delivered` when the
//! target acknowledges (over MQTT, or by moving its HTTP cursor), `replied` when it answers —
//! each exactly once, and only when asked for.

use crate::common;

use common::http::{get_json, Login};
use common::*;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// Receipts (status → ref) and commands received by `app` until `secs` of quiet.
async fn drain(app: &mut App, secs: u64) -> (Vec<(String, String, String)>, Vec<Value>) {
    let (mut receipts, mut cmds) = (Vec::new(), Vec::new());
    while let Some(m) = app.recv(secs).await {
        if m.topic.ends_with("/receipt") {
            let p = &m.json["params"];
            receipts.push((
                p["status"].as_str().unwrap_or("").to_string(),
                p["ref"].as_str().unwrap_or("").to_string(),
                m.json["id"].as_str().unwrap_or("").to_string(),
            ));
        } else {
            cmds.push(m.json);
        }
    }
    (receipts, cmds)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn accepted_delivered_and_replied_each_arrive_once_across_tiers() {
    let mut township = spec("js.t", Some("js"), &["clinic"]);
    township.extra = "audit = true\n".into();
    let mut tree = Tree::start(&[spec("js", None, &["hosp"]), township]);
    let mut hosp = App::connect("js", "hosp", tree.node("js").port).await;
    let mut clinic = App::connect("js.t", "clinic", tree.node("js.t").port).await;
    let ask = json!({"id": "ask-1", "to": {"node": "js", "client": "hosp"}, "cmd": "consult.request",
                     "receipts": ["accepted", "delivered", "replied"], "params": {"q": 1}});
    clinic.publish_raw(ask.to_string()).await;
    let plain = json!({"id": "plain-1", "to": {"node": "js", "client": "hosp"}, "cmd": "note"});
    clinic.publish_raw(plain.to_string()).await;
    let got = hosp.expect_cmd(15).await;
    assert_eq!(got["id"], "ask-1");
    assert_eq!(hosp.expect_cmd(15).await["id"], "plain-1");
    let reply = json!({"to": got["from"], "cmd": "consult.reply", "reply_to": "ask-1",
                       "params": {"a": 1}});
    hosp.publish_raw(reply.to_string()).await;

    let (receipts, cmds) = drain(&mut clinic, 3).await;
    let mut by_status: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (status, reference, id) in &receipts {
        assert_eq!(
            id,
            &format!("r.{status}.{reference}"),
            "receipt ids derive from the fact"
        );
        by_status
            .entry(status.clone())
            .or_default()
            .push(reference.clone());
    }
    let expected: BTreeMap<String, Vec<String>> = ["accepted", "delivered", "replied"]
        .iter()
        .map(|s| (s.to_string(), vec!["ask-1".to_string()]))
        .collect();
    assert_eq!(
        by_status, expected,
        "each positive receipt once, none for plain-1"
    );
    assert_eq!(cmds.len(), 1, "the reply itself: {cmds:?}");
    assert_eq!(cmds[0]["reply_to"], "ask-1");

    // `medlink trace` follows it through both journals, in time order.
    let dirs: Vec<String> = ["js.t", "js"]
        .iter()
        .map(|id| tree.node(id).data_dir.display().to_string())
        .collect();
    let (code, out, err) = medlink(&[
        "trace",
        "ask-1",
        "--data-dir",
        &dirs[0],
        "--data-dir",
        &dirs[1],
    ]);
    assert_eq!(code, 0, "{err}");
    let lines: Vec<&str> = out.lines().collect();
    let at = |needle: &str| {
        lines
            .iter()
            .position(|l| l.contains(needle))
            .unwrap_or_else(|| panic!("trace lacks `{needle}`:\n{out}"))
    };
    // The path by hop (steps in one millisecond printed out of order before), the delivery
    // said in words, then the receipts.
    let accepted = at("js.t                   accepted from clinic → up");
    let custody = at("js                     took custody (hop 2) → local:hosp");
    let delivered = at("js                     delivered to hosp");
    let receipt = at("`delivered` receipt for js.t/clinic");
    at("`replied` receipt for js.t/clinic");
    assert!(
        accepted < custody && custody < delivered && delivered < receipt,
        "hop order:\n{out}"
    );
    let (code, _, err) = medlink(&["trace", "no-such-id", "--data-dir", &dirs[0]]);
    assert_eq!(code, 1, "an unknown id is said so: {err}");
}

const HOSP: Login = Some(("hosp", PASSWORD));

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delivered_over_http_means_the_cursor_moved_past_it() {
    let mut tree = Tree::start(&[
        spec("js", None, &["hosp"]),
        spec("js.t", Some("js"), &["clinic"]),
    ]);
    let http = tree.node("js").http_port;
    let mut clinic = App::connect("js.t", "clinic", tree.node("js.t").port).await;
    let ask = json!({"id": "h-1", "to": {"node": "js", "client": "hosp"}, "cmd": "x",
                     "receipts": ["delivered"], "priority": "urgent"});
    clinic.publish_raw(ask.to_string()).await;
    let (_, page) = get_json(http, "/v1/inbox?wait=10", HOSP);
    assert_eq!(page["messages"][0]["id"], "h-1", "{page}");
    assert_eq!(page["messages"][0]["priority"], "urgent");
    // Handed out but not acknowledged: no receipt yet.
    let (early, _) = drain(&mut clinic, 2).await;
    assert!(
        early.is_empty(),
        "delivered before the cursor moved: {early:?}"
    );
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let (status, _) = get_json(http, &format!("/v1/inbox?cursor={cursor}"), HOSP);
    assert_eq!(status, 200);
    let (receipts, _) = drain(&mut clinic, 3).await;
    let statuses: Vec<&str> = receipts.iter().map(|r| r.0.as_str()).collect();
    assert_eq!(statuses, ["delivered"], "{receipts:?}");
}
