//! Metrics an on-call person can alert on (issue "Operators see and fix what is stuck",
//! part 2): the journal's size on disk and the free space where it lives; queue depth and
//! age behind a cut link, the child's link state, deliveries by transport and their latency.

use crate::common;

use common::http::{get_json, post_json, Login};
use common::*;
use serde_json::json;

#[test]
fn the_journal_size_and_the_free_disk_are_exported() {
    let mut t = Tree::start(&[spec("js", None, &["doc", "nurse"])]);
    let node = t.node("js");
    let before = node.metric("medlink_journal_bytes");
    assert!(before > 0.0, "an open journal has a size");
    // 200 commands of 10 KB for a client that is offline: they stay in the journal.
    let nurse: Login = Some(("nurse", PASSWORD));
    let pad = "x".repeat(10_000);
    for n in 0..200 {
        let (status, body) = post_json(
            node.http_port,
            "/v1/messages",
            nurse,
            &json!({"to": {"node": "js", "client": "doc"}, "cmd": "fill", "params": {"n": n, "pad": pad}}),
        );
        assert_eq!(status, 202, "{body}");
    }
    // The last rounds may wait in the custody log (written up front, so it does not grow)
    // until the node's next idle moment writes them into SQLite.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let mut after = node.metric("medlink_journal_bytes");
    while after - before < 2_000_000.0 && std::time::Instant::now() < deadline {
        std::thread::sleep(std::time::Duration::from_millis(50));
        after = node.metric("medlink_journal_bytes");
    }
    assert!(
        after - before >= 2_000_000.0,
        "2 MB queued, but the journal grew from {before} to {after} bytes"
    );
    // The free space agrees with df on the journal's file system.
    let free = node.metric("medlink_disk_free_bytes");
    let df = std::process::Command::new("df")
        .args(["--output=avail", "-B1"])
        .arg(&node.data_dir)
        .output()
        .expect("df runs");
    let df: f64 = String::from_utf8_lossy(&df.stdout)
        .lines()
        .nth(1)
        .and_then(|l| l.trim().parse().ok())
        .expect("df prints the available bytes");
    assert!(
        free > df * 0.5 && free < df * 1.5,
        "medlink_disk_free_bytes {free} against df's {df}"
    );
}

/// Polls `login`'s inbox until `n` messages came, then acknowledges the last page; returns
/// their `params.n` in arrival order (repeats included).
fn read_and_ack_inbox(port: u16, login: Login, n: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let mut cursor = String::new();
    while got.len() < n {
        let (status, page) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=5"), login);
        assert_eq!(status, 200, "{page}");
        let more = common::http::ns(&page);
        assert!(!more.is_empty(), "messages stopped after {}", got.len());
        got.extend(more);
        cursor = page["cursor"].as_str().expect("cursor").to_string();
    }
    let (status, page) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=0"), login);
    assert_eq!(status, 200, "{page}");
    assert!(
        common::http::ns(&page).is_empty(),
        "nothing beyond the {n}: {page}"
    );
    got
}

#[test]
fn a_cut_link_shows_in_queue_and_child_metrics_and_deliveries_are_counted_by_transport() {
    let mut t = Tree::start(&[
        spec("js", None, &["doc"]),
        spec("js.a", Some("js"), &["nurse"]),
    ]);
    let up_mqtt = r#"medlink_child_link_up{child="js.a",transport="mqtt"}"#;
    let depth = r#"medlink_queue_depth{dest="child:js.a",lane="normal"}"#;
    let age = r#"medlink_queue_oldest_age_seconds{dest="child:js.a",lane="normal"}"#;
    let heard = r#"medlink_child_last_heard_seconds{child="js.a"}"#;
    assert!(within(15, || t.node("js").metric(up_mqtt) == 1.0));
    assert_eq!(t.node("js").metric("medlink_has_parent"), 0.0);
    assert_eq!(t.node("js.a").metric("medlink_has_parent"), 1.0);

    // The township goes away: its row says so, and what waits for it piles up and ages.
    t.node("js.a").stop();
    let down = r#"medlink_child_link_up{child="js.a",transport="none"}"#;
    assert!(within(10, || t.node("js").metric(up_mqtt) == 0.0));
    assert_eq!(t.node("js").metric(down), 0.0, "a down child is reported 0");
    let doc: Login = Some(("doc", PASSWORD));
    let js_http = t.node("js").http_port;
    for n in 0..20 {
        let (status, body) = post_json(
            js_http,
            "/v1/messages",
            doc,
            &json!({"to": {"node": "js.a", "client": "nurse"}, "cmd": "consult", "params": {"n": n}}),
        );
        assert_eq!(status, 202, "{body}");
    }
    assert!(
        within(5, || t.node("js").metric(depth) == 20.0),
        "20 commands wait for js.a: {}",
        t.node("js").metric(depth)
    );
    std::thread::sleep(std::time::Duration::from_millis(2_000));
    let (waited, silent) = (t.node("js").metric(age), t.node("js").metric(heard));
    assert!((2.0..60.0).contains(&waited), "oldest age {waited}");
    assert!((2.0..60.0).contains(&silent), "last heard {silent} s ago");

    // Back: the queue drains to 0, the link is up, and the parent counts 20 handed over.
    t.node("js.a").start();
    assert!(within(15, || {
        let js = t.node("js");
        js.metric(depth) == 0.0 && js.metric(age) == 0.0 && js.metric(up_mqtt) == 1.0
    }));
    assert!(t.node("js").metric(heard) < 10.0);
    let link = r#"medlink_commands_delivered_total{transport="link"}"#;
    assert_eq!(t.node("js").metric(link), 20.0);

    // The nurse reads over HTTP: 20 in order, none twice, counted as HTTP deliveries with
    // their end-to-end latency, and the clients' queue at js.a is empty again.
    let nurse: Login = Some(("nurse", PASSWORD));
    let got = read_and_ack_inbox(t.node("js.a").http_port, nurse, 20);
    assert_eq!(got, (0..20).collect::<Vec<u64>>());
    let http = r#"medlink_commands_delivered_total{transport="http"}"#;
    let clients = r#"medlink_queue_depth{dest="clients",lane="normal"}"#;
    assert!(within(5, || t.node("js.a").metric(http) == 20.0));
    let a = t.node("js.a");
    assert_eq!(a.metric(clients), 0.0);
    assert_eq!(
        a.metric(r#"medlink_commands_delivered_total{transport="mqtt"}"#),
        0.0
    );
    assert_eq!(a.metric("medlink_end_to_end_latency_seconds_count"), 20.0);
    let within_a_minute = a.metric(r#"medlink_end_to_end_latency_seconds_bucket{le="60"}"#);
    let within_2s = a.metric(r#"medlink_end_to_end_latency_seconds_bucket{le="1"}"#);
    assert_eq!(within_a_minute, 20.0, "each waited about 2-15 s");
    assert_eq!(
        within_2s, 0.0,
        "none was delivered within 1 s of its creation"
    );
}
