//! Dead letters and replay (issue "Operators see and fix what is stuck", part 4): a command
//! that ends expired, failed or rejected is kept with its envelope and reason, survives a
//! restart, is listed and re-sent by an admin (CLI and HTTP), and the re-send is a new
//! command, delivered once, linked to the original and written in the operator log.

use std::time::Duration;

use crate::common;
use common::http::{get_json, post_json, Login};
use common::*;
use serde_json::{json, Value};

const OPS: Login = Some(("ops", PASSWORD));

fn dead_letters(port: u16, query: &str) -> Vec<Value> {
    let (status, body) = get_json(port, &format!("/v1/deadletters{query}"), OPS);
    assert_eq!(status, 200, "{body}");
    body["deadletters"].as_array().expect("deadletters").clone()
}

/// Runs `medlink deadletters` against `port` as the admin.
fn cli(port: u16, args: &[&str]) -> (i32, String, String) {
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    std::fs::write(&pw, PASSWORD).unwrap();
    let url = format!("http://127.0.0.1:{port}");
    let pw = pw.display().to_string();
    let mut all = vec!["deadletters", "--url", &url, "--identity", "ops"];
    all.extend(["--password-file", &pw]);
    all.extend(args);
    medlink(&all)
}

#[test]
fn dead_letters_survive_a_restart_and_a_resend_is_delivered_once_and_audited() {
    let mut t = Tree::start(&[spec("js", None, &["doc", "nurse"])]);
    let port = t.node("js").http_port;
    let doc: Login = Some(("doc", PASSWORD));
    // The nurse is away: a command with 1 s to live expires waiting for her.
    let (status, body) = post_json(
        port,
        "/v1/messages",
        doc,
        &json!({"to": {"node": "js", "client": "nurse"}, "cmd": "lab.result", "ttl_ms": 1000, "params": {"n": 7}}),
    );
    assert_eq!(status, 202, "{body}");
    let id = body["id"].as_str().expect("id").to_string();
    // A submission refused at the door is kept too, as sent.
    let (status, _) = post_json(
        port,
        "/v1/messages",
        doc,
        &json!({"to": {"node": "js", "client": "nurse"}, "cmd": "x", "as_service": "triage"}),
    );
    assert_eq!(status, 400);
    assert!(within(10, || dead_letters(port, "?reason=expired").len() == 1));
    assert_eq!(dead_letters(port, "?reason=rejected").len(), 1);
    let metric = r#"medlink_deadletters_total{reason="expired"}"#;
    assert_eq!(t.node("js").metric(metric), 1.0);

    // Only admins see them, and bad filters are named.
    let (status, body) = get_json(port, "/v1/deadletters", doc);
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let (status, body) = get_json(port, "/v1/deadletters?colour=red", OPS);
    assert_eq!(status, 400);
    assert!(
        body["message"].as_str().unwrap().contains("colour"),
        "{body}"
    );

    // They are in the journal: a restart keeps them.
    t.node("js").stop();
    t.node("js").start();
    let listed = dead_letters(port, &format!("?id={id}"));
    assert_eq!(listed.len(), 1, "{listed:?}");
    let d = &listed[0];
    assert_eq!(d["reason"], "expired");
    assert_eq!(d["node"], "js");
    assert_eq!(d["cmd"], "lab.result");
    assert_eq!(d["from"], json!({"node": "js", "client": "doc"}));
    assert_eq!(d["envelope"]["params"], json!({"n": 7}));
    let (code, out, err) = cli(port, &["--reason", "expired"]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains(&id) && out.contains("lab.result"), "{out}");

    // The nurse is back; the operator re-sends from the CLI. She gets it once, as a new id.
    let (code, out, err) = cli(port, &["--resend", &id]);
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("re-sent as"), "{out}");
    let nurse: Login = Some(("nurse", PASSWORD));
    let (status, page) = get_json(port, "/v1/inbox?wait=5", nurse);
    assert_eq!(status, 200, "{page}");
    let msgs = page["messages"].as_array().expect("messages");
    assert_eq!(msgs.len(), 1, "{page}");
    let new_id = msgs[0]["id"].as_str().unwrap().to_string();
    assert_ne!(new_id, id);
    assert_eq!(msgs[0]["params"], json!({"n": 7}));
    assert_eq!(msgs[0]["from"], json!({"node": "js", "client": "doc"}));
    let cursor = page["cursor"].as_str().unwrap();
    let (_, rest) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=1"), nurse);
    assert_eq!(rest["messages"], json!([]), "delivered once: {rest}");

    // Linked to the original, by whom; a second re-send is refused; the log says it all.
    let d = &dead_letters(port, &format!("?id={id}"))[0];
    assert_eq!(
        (d["resent_as"].as_str(), d["resent_by"].as_str()),
        (Some(new_id.as_str()), Some("ops"))
    );
    let (status, again) = post_json(port, "/v1/deadletters/resend", OPS, &json!({"ids": [id]}));
    assert_eq!(status, 200);
    let error = again["outcomes"][0]["error"].as_str().unwrap_or_default();
    assert!(error.contains("already re-sent"), "{again}");
    let (code, out, _) = cli(port, &["--log"]);
    assert_eq!(code, 0);
    assert!(
        out.contains("resend") && out.contains(&id) && out.contains(&new_id),
        "{out}"
    );

    // Purging is audited too, and a missing id is said.
    let rejected = dead_letters(port, "?reason=rejected")[0]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, purged) = post_json(
        port,
        "/v1/deadletters/purge",
        OPS,
        &json!({"ids": [rejected, "no-such-id"]}),
    );
    assert_eq!(status, 200, "{purged}");
    assert_eq!(purged["outcomes"][0]["error"], Value::Null);
    assert!(purged["outcomes"][1]["error"]
        .as_str()
        .unwrap()
        .contains("no dead letter"));
    assert!(dead_letters(port, "?reason=rejected").is_empty());
    let (_, log) = get_json(port, "/v1/operator/log", OPS);
    let actions: Vec<&str> = log["log"]
        .as_array()
        .unwrap()
        .iter()
        .map(|l| l["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, ["purge", "resend"], "{log}");
}

#[test]
fn dead_letters_are_dropped_after_their_retention() {
    let mut s = spec("js", None, &["doc", "nurse"]);
    s.extra = "dead_letter_retention_s = 2\n".into();
    let mut t = Tree::start(&[s]);
    let port = t.node("js").http_port;
    let (status, body) = post_json(
        port,
        "/v1/messages",
        Some(("doc", PASSWORD)),
        &json!({"to": {"node": "js", "client": "nurse"}, "cmd": "x", "ttl_ms": 300}),
    );
    assert_eq!(status, 202, "{body}");
    assert!(within(5, || dead_letters(port, "").len() == 1));
    std::thread::sleep(Duration::from_millis(2_000));
    assert!(within(5, || dead_letters(port, "").is_empty()));
}
