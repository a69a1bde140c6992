//! Metrics an on-call person can alert on (issue "Operators see and fix what is stuck",
//! part 2): the journal's size on disk and the free space where it lives.

use crate::common;

use common::http::{post_json, Login};
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
    let after = node.metric("medlink_journal_bytes");
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
