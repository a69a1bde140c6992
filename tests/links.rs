//! Tier links under network faults, through a fault-injecting proxy: a stalled link is
//! detected and reported down (not "connected" forever), a cut link comes back by itself, and
//! a child fails over between parent addresses. Nothing is lost, duplicated or reordered.

mod common;

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
}
