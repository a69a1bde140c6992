//! Tier links over HTTP: a path mixing MQTT/TCP, HTTP and MQTT/WebSocket links, a kill -9 of
//! the HTTP-linked tier during a stream, and the MQTT→HTTP fallback and its recovery.

use crate::common;

use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::json;

fn chain() -> Vec<NodeSpec> {
    vec![
        spec("js", None, &["sink"]),
        spec("js.nj", Some("js"), &["hosp"]),
        spec("js.nj.gl", Some("js.nj"), &[]),
        spec("js.nj.gl.t3", Some("js.nj.gl"), &["clinic"]),
    ]
}

/// township → county over MQTT/TCP, county → city over HTTP, city → province over MQTT/WS.
fn mixed_tree() -> Tree {
    let mut tree = Tree::new(&chain());
    let province_ws = tree.node("js").ws_port;
    let city_http = tree.node("js.nj").http_port;
    tree.set_parent_addresses("js.nj", &[format!("ws://127.0.0.1:{province_ws}/mqtt")]);
    tree.set_parent_addresses("js.nj.gl", &[format!("http://127.0.0.1:{city_http}")]);
    for s in chain() {
        tree.node(&s.id).start();
    }
    tree
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mixed_path_carries_commands_both_ways_and_survives_kill9_of_the_http_tier() {
    const N: u64 = 20_000;
    let mut tree = mixed_tree();
    let mut clinic = App::connect("js.nj.gl.t3", "clinic", tree.node("js.nj.gl.t3").port).await;
    let mut sink = App::connect("js", "sink", tree.node("js").port).await;
    // Round trip: up through all three kinds of link, and the answer back down.
    clinic.send("js", "sink", "hello", json!({"s": 0})).await;
    let got = sink.expect_cmd(20).await;
    assert_eq!(trail(&got), ["js.nj.gl.t3", "js.nj.gl", "js.nj", "js"]);
    sink.send("js.nj.gl.t3", "clinic", "hello.back", json!({}))
        .await;
    let back = clinic.expect_cmd(20).await;
    assert_eq!(trail(&back), ["js", "js.nj", "js.nj.gl", "js.nj.gl.t3"]);
    assert!(tree.node("js.nj.gl").metric("medlink_parent_link_http") == 1.0);
    assert!(tree
        .node("js.nj")
        .log_text()
        .contains("child link up (HTTP)"));

    // A stream through the HTTP-linked county while it is killed three times.
    let sender = stream_to_sink(clinic, N, 500, 60);
    let killer = {
        let mut county = tree.take("js.nj.gl");
        tokio::task::spawn_blocking(move || {
            county.kill9_repeatedly(3, 800);
            county
        })
    };
    let (seqs, receipts) = collect(&mut sink, N, 40).await;
    let clinic = sender.await.expect("sender task");
    tree.put(killer.await.expect("killer task"));
    tree.assert_stream_intact(&seqs, &receipts, N);
    clinic.disconnect().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_blocked_mqtt_port_falls_back_to_http_and_returns_when_it_opens() {
    let mut tree = Tree::new(&[
        spec("js", None, &["sink"]),
        spec("js.a", Some("js"), &["c"]),
    ]);
    let proxy = Proxy::start(([127, 0, 0, 1], tree.node("js").port).into()).await;
    proxy.set(Mode::Cut);
    let http = tree.node("js").http_port;
    tree.set_parent_addresses(
        "js.a",
        &[
            format!("mqtt://127.0.0.1:{}", proxy.port),
            format!("http://127.0.0.1:{http}"),
        ],
    );
    tree.node("js").start();
    tree.node("js.a").start();
    let c = App::connect("js.a", "c", tree.node("js.a").port).await;
    let mut sink = App::connect("js", "sink", tree.node("js").port).await;
    c.send("js", "sink", "while.blocked", json!({"s": 0})).await;
    assert_eq!(sink.expect_cmd(20).await["cmd"], "while.blocked");
    assert_eq!(tree.node("js.a").metric("medlink_parent_link_http"), 1.0);
    assert!(tree
        .node("js.a")
        .log_text()
        .contains("falling back to HTTP"));

    // The port opens: the link goes back to MQTT by itself; a stream across the switch loses
    // and repeats nothing.
    proxy.set(Mode::Pass);
    let sender = {
        let c = c;
        tokio::spawn(async move {
            for s in 1..=2000u64 {
                c.send("js", "sink", "stream", json!({"s": s})).await;
                if s % 100 == 0 {
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            c
        })
    };
    let (seqs, _) = collect(&mut sink, 2000, 30).await;
    let shifted: Vec<u64> = seqs.iter().map(|s| s - 1).collect();
    assert_eq!(
        audit_sequence(&shifted, 2000),
        (0, 0, 0),
        "lost, duplicates, reordered"
    );
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while tree.node("js.a").metric("medlink_parent_link_http") != 0.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "never returned to MQTT"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(tree
        .node("js.a")
        .log_text()
        .contains("leaving the HTTP fallback"));
    let c = sender.await.unwrap();
    c.send("js", "sink", "after", json!({"s": 9})).await;
    assert_eq!(sink.expect_cmd(20).await["cmd"], "after");
    assert!(tree.node("js.a").metric("medlink_parent_http_links_total") >= 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_https_link_works_through_the_sites_proxy() {
    use common::proxy::ConnectProxy;
    let mut tree = Tree::new_tls(&[
        spec("js", None, &["sink"]),
        spec("js.a", Some("js"), &["c"]),
    ]);
    let proxy = ConnectProxy::start().await;
    let https = tree.node("js").http_port;
    tree.set_parent_addresses("js.a", &[format!("https://localhost:{https}")]);
    tree.node("js.a").behind_proxy(proxy.port);
    tree.node("js").start();
    tree.node("js.a").start();
    let ca = tree.ca();
    let c = App::connect_tls("js.a", "c", tree.node("js.a").port, &ca).await;
    let mut sink = App::connect_tls("js", "sink", tree.node("js").port, &ca).await;
    c.send("js", "sink", "via.proxy", json!({"s": 1})).await;
    let got = sink.expect_cmd(20).await;
    assert_eq!(got["cmd"], "via.proxy");
    sink.send("js.a", "c", "back.via.proxy", json!({})).await;
    let mut c = c;
    assert_eq!(c.expect_cmd(20).await["cmd"], "back.via.proxy");
    assert!(
        proxy.tunnels.load(std::sync::atomic::Ordering::SeqCst) >= 1,
        "the link went through the proxy"
    );
    assert_eq!(tree.node("js.a").metric("medlink_parent_link_http"), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_parent_decides_the_childs_transport() {
    // The child lists MQTT first, but the parent's /v1/transport says HTTP for it.
    let mut tree = Tree::new(&[
        spec("js", None, &["sink"]),
        spec("js.a", Some("js"), &["c"]),
    ]);
    let (mqtt, http) = (tree.node("js").port, tree.node("js").http_port);
    tree.set_parent_addresses(
        "js.a",
        &[
            format!("mqtt://127.0.0.1:{mqtt}"),
            format!("http://127.0.0.1:{http}"),
        ],
    );
    let cfg = tree.node("js").config.clone();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text += "\n[transport.identities]\n\"js.a\" = \"http\"\n";
    std::fs::write(&cfg, text).unwrap();
    tree.node("js").start();
    tree.node("js.a").start();
    let c = App::connect("js.a", "c", tree.node("js.a").port).await;
    let mut sink = App::connect("js", "sink", tree.node("js").port).await;
    c.send("js", "sink", "told.http", json!({"s": 1})).await;
    assert_eq!(sink.expect_cmd(20).await["cmd"], "told.http");
    assert_eq!(tree.node("js.a").metric("medlink_parent_link_http"), 1.0);
    assert!(tree
        .node("js.a")
        .log_text()
        .contains("the parent chose the link transport"));
    // It stays there: reachable MQTT does not pull it back against the parent's choice.
    tokio::time::sleep(Duration::from_secs(7)).await;
    assert_eq!(tree.node("js.a").metric("medlink_parent_link_http"), 1.0);
    assert!(!tree
        .node("js.a")
        .log_text()
        .contains("leaving the HTTP fallback"));
}

/// A child speaks the link protocol by hand (the schemathesis run found these): an
/// acknowledgement beyond what it was sent must not make the parent forget commands it never
/// sent, and sequence numbers at the top of the range must not crash the parent.
#[test]
fn a_child_cannot_make_its_parent_forget_unsent_commands_or_crash_it() {
    use common::http::{call, get_json, post_json};
    let mut tree = Tree::new(&[spec("js", None, &["hosp"]), spec("js.t", Some("js"), &[])]);
    tree.node("js").start();
    let http = tree.node("js").http_port;
    let child = Some(("js.t", PASSWORD));
    let send = |n: u64| {
        let to = json!({"node": "js.t", "client": "x"});
        let (status, body) = post_json(
            http,
            "/v1/messages",
            Some(("hosp", PASSWORD)),
            &json!({"to": to, "cmd": "c", "params": {"n": n}}),
        );
        assert_eq!(status, 202, "{body}");
    };
    let down = || {
        let (status, page) = get_json(http, "/v1/link/down?wait=2", child);
        assert_eq!(status, 200, "{page}");
        page["frames"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|f| f["t"] == "batch")
            .flat_map(|f| f["msgs"].as_array().unwrap().clone())
            .map(|m| {
                (
                    m["s"].as_u64().unwrap(),
                    m["e"]["params"]["n"].as_u64().unwrap(),
                )
            })
            .collect::<Vec<_>>()
    };
    send(0);
    assert_eq!(down(), [(1, 0)]);
    send(1);
    send(2);
    // Acknowledges far beyond the one frame it was sent.
    let ack = |upto: u64| {
        let r = call(
            http,
            "POST",
            "/v1/link/up",
            child,
            format!(r#"{{"t":"ack","upto":{upto}}}"#).as_bytes(),
        );
        assert!(r.status == 200 || r.status == 400, "{}", r.status);
    };
    ack(1000);
    assert_eq!(
        down(),
        [(2, 1), (3, 2)],
        "commands never sent were forgotten"
    );
    ack(u64::MAX);
    let top = format!(
        r#"{{"t":"batch","epoch":1,"floor":1,"msgs":[{{"p":0,"s":{},"e":{{}}}}]}}"#,
        u64::MAX
    );
    call(http, "POST", "/v1/link/up", child, top.as_bytes());
    let next = r#"{"t":"batch","epoch":1,"floor":1,"msgs":[{"p":0,"s":1,"e":{}}]}"#;
    call(http, "POST", "/v1/link/up", child, next.as_bytes());
    std::thread::sleep(Duration::from_millis(300));
    assert!(tree.node("js").is_running(), "the parent crashed");
    assert_eq!(get_json(http, "/v1/transport", child).0, 200);
}
