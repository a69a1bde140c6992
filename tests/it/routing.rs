//! Routing across real node processes: four tiers both ways, across branches, `via_root` with
//! the root's audit, receipts for expired and unroutable commands, rejected submissions.

use crate::common;

use common::*;
use serde_json::json;

fn five_branch_tree() -> Vec<NodeSpec> {
    vec![
        spec("js", None, &["prov"]),
        spec("js.nj", Some("js"), &["hosp"]),
        spec("js.nj.gl", Some("js.nj"), &[]),
        spec("js.nj.gl.t3", Some("js.nj.gl"), &["clinic-a"]),
        spec("js.nj.xw", Some("js.nj"), &[]),
        // a township directly under the county B branch
        spec("js.nj.xw.t1", Some("js.nj.xw"), &["clinic-b"]),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_cross_four_tiers_both_ways_and_between_branches() {
    let mut tree = Tree::start(&five_branch_tree());
    let mut a = App::connect("js.nj.gl.t3", "clinic-a", tree.node("js.nj.gl.t3").port).await;
    let mut b = App::connect("js.nj.xw.t1", "clinic-b", tree.node("js.nj.xw.t1").port).await;
    let mut prov = App::connect("js", "prov", tree.node("js").port).await;

    // up four tiers
    a.send("js", "prov", "consult.request", json!({"n": 1}))
        .await;
    let got = prov.expect_cmd(15).await;
    assert_eq!(
        got["from"],
        json!({"node": "js.nj.gl.t3", "client": "clinic-a"})
    );
    assert_eq!(trail(&got), ["js.nj.gl.t3", "js.nj.gl", "js.nj", "js"]);
    assert_eq!(got["params"], json!({"n": 1}));

    // down four tiers, as a reply
    let reply = json!({"to": got["from"], "cmd": "consult.reply", "reply_to": got["id"], "params": {"ok": true}});
    prov.publish_raw(reply.to_string()).await;
    let back = a.expect_cmd(15).await;
    assert_eq!(back["reply_to"], got["id"]);
    assert_eq!(trail(&back), ["js", "js.nj", "js.nj.gl", "js.nj.gl.t3"]);

    // across branches: up to the lowest common ancestor (the city) and down the other side
    for i in 0..20 {
        a.send("js.nj.xw.t1", "clinic-b", "note", json!({"i": i}))
            .await;
    }
    for i in 0..20 {
        let m = b.expect_cmd(15).await;
        assert_eq!(m["params"]["i"], json!(i), "order kept across branches");
        assert_eq!(
            trail(&m),
            [
                "js.nj.gl.t3",
                "js.nj.gl",
                "js.nj",
                "js.nj.xw",
                "js.nj.xw.t1"
            ]
        );
    }
    b.send("js.nj.gl.t3", "clinic-a", "note", json!({"back": true}))
        .await;
    let m = a.expect_cmd(15).await;
    assert_eq!(m["params"], json!({"back": true}));
    // nothing extra arrives anywhere
    assert!(
        b.recv(1).await.is_none(),
        "clinic-b got an unexpected message"
    );
    assert!(
        prov.recv(1).await.is_none(),
        "prov got an unexpected message"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn via_root_sends_same_node_commands_through_the_root_which_audits_them() {
    let mut specs = vec![spec("js", None, &[]), spec("js.a", Some("js"), &["x", "y"])];
    specs[1].extra = "policy = \"via_root\"".into();
    let mut tree = Tree::start(&specs);
    let port = tree.node("js.a").port;
    let x = App::connect("js.a", "x", port).await;
    let mut y = App::connect("js.a", "y", port).await;
    x.send("js.a", "y", "consult.request", json!({"k": "v"}))
        .await;
    let m = y.expect_cmd(15).await;
    assert_eq!(trail(&m), ["js.a", "js", "js.a"], "went through the root");
    let id = m["id"].as_str().unwrap().to_string();

    let root_data = tree.node("js").data_dir.clone();
    let (code, out, err) = medlink(&[
        "audit",
        "--data-dir",
        root_data.to_str().unwrap(),
        "--client",
        "x",
        "--json",
    ]);
    assert_eq!(code, 0, "{err}");
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(rows.len(), 1, "{out}");
    assert_eq!(rows[0]["id"], json!(id));
    assert_eq!(rows[0]["decision"], json!("down:js.a"));
    // filters: another command name finds nothing, the node filter finds it
    let (_, out, _) = medlink(&[
        "audit",
        "--data-dir",
        root_data.to_str().unwrap(),
        "--cmd",
        "other",
        "--json",
    ]);
    assert!(out.trim().is_empty());
    let (_, out, _) = medlink(&[
        "audit",
        "--data-dir",
        root_data.to_str().unwrap(),
        "--node",
        "js.a",
        "--since",
        "0",
    ]);
    assert!(out.contains(&id));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shortest_keeps_same_node_commands_on_their_node() {
    let mut tree = Tree::start(&[spec("js", None, &[]), spec("js.a", Some("js"), &["x", "y"])]);
    let port = tree.node("js.a").port;
    let x = App::connect("js.a", "x", port).await;
    let mut y = App::connect("js.a", "y", port).await;
    x.send("js.a", "y", "ping", json!(null)).await;
    let m = y.expect_cmd(15).await;
    assert_eq!(trail(&m), ["js.a"]);
    let root_data = tree.node("js").data_dir.clone();
    let (_, out, _) = medlink(&["audit", "--data-dir", root_data.to_str().unwrap(), "--json"]);
    assert!(
        out.trim().is_empty(),
        "the root saw a same-node command: {out}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unknown_targets_and_expiry_give_receipts() {
    let mut tree = Tree::start(&[
        spec("js", None, &["r"]),
        spec("js.a", Some("js"), &["x", "y"]),
    ]);
    let port = tree.node("js.a").port;
    let mut x = App::connect("js.a", "x", port).await;

    // unknown client on a known node
    x.send("js.a", "nobody", "ping", json!(null)).await;
    let r = x.expect_receipt(10).await;
    assert_eq!(r["params"]["status"], json!("failed"));
    assert!(
        r["params"]["reason"].as_str().unwrap().contains("nobody"),
        "{r}"
    );

    // unknown node: climbs to the root, which knows no such subtree
    x.send("zj.hz", "c", "ping", json!(null)).await;
    let r = x.expect_receipt(10).await;
    assert_eq!(r["params"]["status"], json!("failed"));
    assert_eq!(r["params"]["by"], json!("js"));
    assert_eq!(trail(&r), ["js", "js.a"], "the receipt came back down");

    // a command for an offline client expires in the journal: expired receipt, no delivery
    let body = json!({"to": {"node": "js", "client": "r"}, "cmd": "late", "ttl_ms": 300});
    x.publish_raw(body.to_string()).await;
    let r = x.expect_receipt(10).await;
    assert_eq!(r["params"]["status"], json!("expired"), "{r}");
    assert_eq!(r["params"]["cmd"], json!("late"));
    let mut late = App::connect("js", "r", tree.node("js").port).await;
    assert!(
        late.recv(2).await.is_none(),
        "an expired command was delivered"
    );

    // an already expired absolute time is refused at the first node
    let body = json!({"to": {"node": "js.a", "client": "y"}, "cmd": "old", "expires_at": 1});
    x.publish_raw(body.to_string()).await;
    let r = x.expect_receipt(10).await;
    assert_eq!(r["params"]["status"], json!("expired"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_oversized_and_forged_submissions_are_rejected_with_a_reason() {
    let mut s = spec("js", None, &["x", "y"]);
    s.limits = "max_payload = 2048\nmax_packet = 1048576\n".into();
    let mut tree = Tree::start(&[s]);
    let port = tree.node("js").port;
    let mut x = App::connect("js", "x", port).await;
    let mut y = App::connect("js", "y", port).await;

    x.publish_raw("this is not json").await;
    let r = x.expect_receipt(10).await;
    assert_eq!(r["params"]["status"], json!("rejected"));
    assert!(
        r["params"]["reason"]
            .as_str()
            .unwrap()
            .starts_with("payload"),
        "{r}"
    );

    x.publish_raw(json!({"to": {"node": "js", "client": "y"}, "cmd": 5}).to_string())
        .await;
    let r = x.expect_receipt(10).await;
    assert!(
        r["params"]["reason"]
            .as_str()
            .unwrap()
            .contains("invalid type"),
        "{r}"
    );

    x.publish_raw(json!({"to": {"node": "js"}, "cmd": "c"}).to_string())
        .await;
    let r = x.expect_receipt(10).await;
    assert!(
        r["params"]["reason"].as_str().unwrap().contains("client"),
        "{r}"
    );

    let big = json!({"to": {"node": "js", "client": "y"}, "cmd": "c", "params": "x".repeat(4000)});
    x.publish_raw(big.to_string()).await;
    let r = x.expect_receipt(10).await;
    assert!(
        r["params"]["reason"]
            .as_str()
            .unwrap()
            .contains("exceeds the limit"),
        "{r}"
    );

    let forged = json!({"from": {"node": "js", "client": "y"}, "to": {"node": "js", "client": "y"}, "cmd": "c"});
    x.publish_raw(forged.to_string()).await;
    let r = x.expect_receipt(10).await;
    assert!(
        r["params"]["reason"].as_str().unwrap().starts_with("from"),
        "{r}"
    );

    // none of that reached y, and the node still routes good commands
    x.send("js", "y", "ok", json!(1)).await;
    let m = y.expect_cmd(10).await;
    assert_eq!(m["cmd"], json!("ok"));
    assert_eq!(m["from"]["client"], json!("x"));
    assert!(y.recv(1).await.is_none());
}
