//! Priority and expiry across tiers: an urgent command sent during an outage crosses the tree
//! ahead of the routine backlog that built up behind the cut link, and a command that expires
//! in custody produces exactly one `expired` receipt and is never delivered.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use serde_json::{json, Value};

/// Three tiers, the township's link to the county through a fault proxy.
async fn cut_tree() -> (Tree, Proxy) {
    let mut tree = Tree::new(&[
        spec("js", None, &["doc"]),
        spec("js.a", Some("js"), &[]),
        spec("js.a.t", Some("js.a"), &["clinic"]),
    ]);
    tree.node("js").start();
    tree.node("js.a").start();
    let proxy = Proxy::start(([127, 0, 0, 1], tree.node("js.a").port).into()).await;
    tree.set_parent_addresses("js.a.t", &[format!("mqtt://127.0.0.1:{}", proxy.port)]);
    tree.node("js.a.t").start();
    (tree, proxy)
}

fn command(n: u64, priority: &str) -> String {
    json!({"to": {"node": "js", "client": "doc"}, "cmd": "lab.result", "priority": priority,
           "params": {"n": n}})
    .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_urgent_command_overtakes_a_routine_backlog_built_up_during_an_outage() {
    const BACKLOG: u64 = 10_000;
    let (mut tree, proxy) = cut_tree().await;
    let mut doc = App::connect("js", "doc", tree.node("js").port).await;
    let clinic = App::connect("js.a.t", "clinic", tree.node("js.a.t").port).await;
    // The link works: a first command goes through.
    clinic.publish_raw(command(u64::MAX, "normal")).await;
    assert_eq!(doc.expect_cmd(15).await["params"]["n"], json!(u64::MAX));

    proxy.set(Mode::Cut);
    for n in 0..BACKLOG {
        let p = if n % 10 == 9 { "bulk" } else { "normal" };
        clinic.publish_raw(command(n, p)).await;
    }
    clinic.publish_raw(command(BACKLOG, "urgent")).await;
    // Everything is in the township's journal before the link comes back.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while tree
        .node("js.a.t")
        .metric("medlink_commands_accepted_total")
        < (BACKLOG + 2) as f64
    {
        assert!(
            std::time::Instant::now() < deadline,
            "township did not accept the backlog"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    proxy.set(Mode::Pass);
    let restored = std::time::Instant::now();

    let mut order = Vec::new();
    let mut urgent_after = None;
    while (order.len() as u64) < BACKLOG + 1 {
        let Some(m) = doc.recv(30).await else { break };
        assert!(
            m.topic.ends_with("/cmd"),
            "unexpected {}: {}",
            m.topic,
            m.json
        );
        let n = m.json["params"]["n"].as_u64().expect("n");
        if n == BACKLOG {
            urgent_after = Some(restored.elapsed());
        }
        order.push(n);
    }
    // Figures for the note, not assertions (the machines are noisy).
    eprintln!(
        "link restored: urgent delivered after {urgent_after:?}, backlog of {BACKLOG} drained after {:?}",
        restored.elapsed()
    );
    let urgent_at = order.iter().position(|&n| n == BACKLOG);
    assert_eq!(
        urgent_at,
        Some(0),
        "the urgent command must arrive before the routine backlog (got {} of {})",
        order.len(),
        BACKLOG + 1
    );
    let unique: HashSet<u64> = order.iter().copied().collect();
    assert_eq!(unique.len(), order.len(), "duplicates delivered");
    assert_eq!(order.len() as u64, BACKLOG + 1, "commands lost");
    // Within a class, order holds.
    let normal: Vec<u64> = order
        .iter()
        .copied()
        .filter(|n| *n < BACKLOG && n % 10 != 9)
        .collect();
    assert!(
        normal.windows(2).all(|w| w[0] < w[1]),
        "normal lane reordered"
    );
    let bulk: Vec<u64> = order
        .iter()
        .copied()
        .filter(|n| *n < BACKLOG && n % 10 == 9)
        .collect();
    assert!(bulk.windows(2).all(|w| w[0] < w[1]), "bulk lane reordered");
    assert!(
        doc.recv(2).await.is_none(),
        "nothing more, in particular no repeat"
    );
}

/// Receipts of `app` (within `secs` of quiet), as JSON.
async fn receipts(app: &mut App, secs: u64) -> Vec<Value> {
    let mut out = Vec::new();
    while let Some(m) = app.recv(secs).await {
        if m.topic.ends_with("/receipt") {
            out.push(m.json);
        } else {
            panic!("{} got a command: {}", app.name, m.json);
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_expiring_in_custody_yields_exactly_one_expired_receipt() {
    let (mut tree, proxy) = cut_tree().await;
    let mut clinic = App::connect("js.a.t", "clinic", tree.node("js.a.t").port).await;
    // One expires behind the cut link at the township, one waits at the province for a
    // client that is not connected.
    proxy.set(Mode::Cut);
    let behind_cut = json!({"id": "exp-cut", "to": {"node": "js", "client": "doc"},
                            "cmd": "queue.call", "ttl_ms": 1500});
    clinic.publish_raw(behind_cut.to_string()).await;
    tokio::time::sleep(Duration::from_millis(2500)).await;
    proxy.set(Mode::Pass);
    let offline = json!({"id": "exp-offline", "to": {"node": "js", "client": "doc"},
                         "cmd": "queue.call", "ttl_ms": 2000});
    clinic.publish_raw(offline.to_string()).await;

    // Long enough for both to expire and for any second receipt to show up.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let got = receipts(&mut clinic, 3).await;
    let expired: Vec<&str> = got
        .iter()
        .filter(|r| r["params"]["status"] == "expired")
        .map(|r| r["params"]["ref"].as_str().unwrap_or(""))
        .collect();
    let mut sorted = expired.clone();
    sorted.sort_unstable();
    assert_eq!(
        sorted,
        ["exp-cut", "exp-offline"],
        "exactly one expired receipt each: {got:?}"
    );
    assert_eq!(got.len(), 2, "no other receipts: {got:?}");
    // The target never sees them.
    let mut doc = App::connect("js", "doc", tree.node("js").port).await;
    assert!(
        doc.recv(2).await.is_none(),
        "an expired command was delivered"
    );
}
