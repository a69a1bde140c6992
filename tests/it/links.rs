//! Tier links under network faults, through a fault-injecting proxy: a stalled link is
//! detected and reported down (not "connected" forever), a cut link comes back by itself, and
//! a child fails over between parent addresses. Nothing is lost, duplicated or reordered.

use crate::common;

use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::json;

async fn collect_seq(app: &mut App, n: u64, idle: u64) -> Vec<u64> {
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        match app.recv(idle).await {
            Some(m) if m.topic.ends_with("/cmd") => {
                seqs.push(m.json["params"]["s"].as_u64().expect("seq"))
            }
            Some(m) => panic!("unexpected {}: {}", m.topic, m.json),
            None => break,
        }
    }
    while let Some(m) = app.recv(1).await {
        seqs.push(m.json["params"]["s"].as_u64().unwrap_or(u64::MAX));
    }
    seqs
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_link_is_detected_reported_down_and_recovers_without_loss() {
    let mut tree = Tree::new(&[
        spec("js", None, &["sink"]),
        spec("js.a", Some("js"), &["src"]),
    ]);
    tree.node("js").start();
    let proxy = Proxy::start(([127, 0, 0, 1], tree.node("js").port).into()).await;
    tree.set_parent_addresses("js.a", &[format!("mqtt://127.0.0.1:{}", proxy.port)]);
    tree.node("js.a").start();
    let src = App::connect("js.a", "src", tree.node("js.a").port).await;
    let mut sink = App::connect("js", "sink", tree.node("js").port).await;
    for s in 0..100 {
        src.send("js", "sink", "seq", json!({"s": s})).await;
    }
    let first = collect_seq(&mut sink, 100, 15).await;
    assert_eq!(audit_sequence(&first, 100), (0, 0, 0));

    // Freeze: TCP stays up, nothing moves. Both ends must notice through the heartbeats.
    proxy.set(Mode::Freeze);
    for s in 100..300 {
        src.send("js", "sink", "seq", json!({"s": s})).await;
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    let child_log = tree.node("js.a").log_text();
    assert!(
        child_log.contains("parent link stalled"),
        "child did not detect the stall:\n{child_log}"
    );
    assert!(tree.node("js.a").metric("medlink_parent_link_stalls_total") >= 1.0);
    let root_log = tree.node("js").log_text();
    assert!(
        root_log.contains("child link stalled"),
        "parent did not detect the stall:\n{root_log}"
    );

    proxy.set(Mode::Pass);
    let rest: Vec<u64> = collect_seq(&mut sink, 200, 20)
        .await
        .into_iter()
        .map(|s| s - 100)
        .collect();
    if audit_sequence(&rest, 200) != (0, 0, 0) {
        tree.dump_logs();
    }
    assert_eq!(
        audit_sequence(&rest, 200),
        (0, 0, 0),
        "lost, duplicates, out of order"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cut_link_comes_back_by_itself_and_the_child_fails_over_between_parent_addresses() {
    let mut tree = Tree::new(&[
        spec("js", None, &["sink"]),
        spec("js.a", Some("js"), &["src"]),
    ]);
    tree.node("js").start();
    let proxy = Proxy::start(([127, 0, 0, 1], tree.node("js").port).into()).await;
    // the first address is dead: the child must fail over to the second
    let dead = free_port();
    tree.set_parent_addresses(
        "js.a",
        &[
            format!("mqtt://127.0.0.1:{dead}"),
            format!("mqtt://127.0.0.1:{}", proxy.port),
        ],
    );
    tree.node("js.a").start();
    let mut src = App::connect("js.a", "src", tree.node("js.a").port).await;
    let mut sink = App::connect("js", "sink", tree.node("js").port).await;

    // both directions while the link is cut for several seconds
    proxy.set(Mode::Cut);
    for s in 0..1000 {
        src.send("js", "sink", "up", json!({"s": s})).await;
        if s < 300 {
            sink.send("js.a", "src", "down", json!({"s": s})).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(4)).await;
    proxy.set(Mode::Pass);
    let up = collect_seq(&mut sink, 1000, 20).await;
    let down = collect_seq(&mut src, 300, 20).await;
    if audit_sequence(&up, 1000) != (0, 0, 0) || audit_sequence(&down, 300) != (0, 0, 0) {
        tree.dump_logs();
    }
    assert_eq!(
        audit_sequence(&up, 1000),
        (0, 0, 0),
        "upward: lost, duplicates, out of order"
    );
    assert_eq!(
        audit_sequence(&down, 300),
        (0, 0, 0),
        "downward: lost, duplicates, out of order"
    );
    let log = tree.node("js.a").log_text();
    assert!(
        log.contains(&format!(
            "connected to parent parent=mqtt://127.0.0.1:{}",
            proxy.port
        )),
        "{log}"
    );
    // The child's link and the sink (in the credentials file) are served on the root's
    // dispatcher thread; the connection the cut left behind is gone from the count.
    let root = tree.node("js");
    let deadline = std::time::Instant::now() + Duration::from_secs(15);
    while root.metric("medlink_connections_on_dispatcher") != 2.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "connections on the dispatcher's thread: {} (open: {})",
            root.metric("medlink_connections_on_dispatcher"),
            root.metric("medlink_connections_open")
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Waits until `node`'s link to its parent is up.
async fn parent_link_up(node: &NodeProc, secs: u64) {
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while node.metric("medlink_parent_link_up") < 1.0 {
        assert!(
            std::time::Instant::now() < deadline,
            "{}: link to the parent not up within {secs} s:\n{}",
            node.id,
            node.log_text()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Full frames (512 commands of ~330 bytes, ~170 KB each) drain over a slow link that is cut
/// and redialled several times, so every new session starts with a burst of full frames and
/// the child's socket pushes back. (The window is raised so that a burst outgrows loopback's
/// socket buffers, as a WAN link's are outgrown by the default one.) The link must keep
/// moving: it is never redialled by the stall detector, and never dropped except by the cuts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_frames_drain_over_a_slow_link_across_reconnects_without_a_stall() {
    const N: u64 = 60_000;
    const CYCLES: usize = 3;
    let mut tree = Tree::new(&[
        spec("js", None, &["sink"]),
        spec("js.a", Some("js"), &["src"]),
    ]);
    for id in ["js", "js.a"] {
        let cfg = tree.node(id).config.clone();
        let text = std::fs::read_to_string(&cfg).expect("read config");
        std::fs::write(&cfg, text.replace("[link]\n", "[link]\nwindow = 65536\n"))
            .expect("write config");
    }
    tree.node("js").start();
    let proxy = Proxy::start_slow(([127, 0, 0, 1], tree.node("js").port).into(), 3_000_000).await;
    tree.set_parent_addresses("js.a", &[format!("mqtt://127.0.0.1:{}", proxy.port)]);
    tree.node("js.a").start();
    parent_link_up(tree.node("js.a"), 15).await;
    let src = App::connect("js.a", "src", tree.node("js.a").port).await;
    let mut sink = App::connect("js", "sink", tree.node("js").port).await;

    // The backlog builds while the link is cut.
    proxy.set(Mode::Cut);
    let pad = "x".repeat(100);
    for s in 0..N {
        src.send("js", "sink", "big", json!({"s": s, "pad": pad}))
            .await;
    }
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while (tree.node("js.a").metric("medlink_commands_accepted_total") as u64) < N {
        assert!(std::time::Instant::now() < deadline, "backlog not accepted");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // It drains through several sessions, each cut after 3 s.
    for _ in 0..CYCLES {
        proxy.set(Mode::Pass);
        parent_link_up(tree.node("js.a"), 15).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        proxy.set(Mode::Cut);
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    proxy.set(Mode::Pass);
    let (seqs, receipts) = collect(&mut sink, N, 20).await;

    let child = tree.node("js.a");
    let stalls = child.metric("medlink_parent_link_stalls_total");
    let log = child.log_text();
    let collisions = log.matches("Collision on packet id").count();
    // The first session, one after the first cut, and one after each cut of the cycles.
    let sessions = log.matches("connected to parent").count();
    if stalls > 0.0 || collisions > 0 || sessions != CYCLES + 2 {
        tree.dump_logs();
    }
    assert_eq!(
        (stalls, collisions, sessions),
        (0.0, 0, CYCLES + 2),
        "(stall reconnects, packet id collisions, sessions): the link stalled or dropped on its own"
    );
    tree.assert_stream_intact(&seqs, &receipts, N);
}
