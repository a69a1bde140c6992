//! The Rust SDK recovering by itself, against real node processes: sends in progress while
//! the node is killed and restarted are delivered exactly once on both transports, and the
//! local outbox keeps sends made while the node is down (never started, or stopped) across an
//! application restart. Every test checks loss, duplicates and order at the application.

use crate::common;
use crate::sdk_support;

use std::path::PathBuf;
use std::time::Duration;

use common::*;
use medlink_sdk::{Address, Options};
use sdk_support::*;
use serde_json::json;

async fn sends_survive_node_restarts(http: bool) {
    const N: u64 = 600;
    let mut t = Tree::new(&[spec("js", None, &["clinic", "hosp"])]);
    configure(&mut t, "js", "\n[transport]\ndefault = \"http\"\n");
    t.node("js").start();
    let url = if http {
        http_url(t.node("js").http_port)
    } else {
        mqtt_url(t.node("js").port)
    };
    let (clinic, _ci) = connect(options(url.clone(), "js", "clinic")).await;
    let (hosp, mut inbox) = connect(options(url, "js", "hosp")).await;
    let to = Address::new("js", "hosp");
    let send = tokio::spawn(async move {
        for s in 0..N {
            // Waits through every restart: sends in progress are resent with their ids.
            clinic
                .send(&to, "stream", json!({"s": s}))
                .await
                .expect("custody");
            if s % 50 == 0 {
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    });
    let mut node = t.take("js");
    let chaos = tokio::task::spawn_blocking(move || {
        node.kill9_repeatedly(3, 700);
        node
    });
    let got = receive_numbered(&mut inbox, N, Duration::from_secs(60)).await;
    t.put(chaos.await.expect("restarts"));
    send.await.expect("sender finished");
    assert!(hosp.sessions() > 1, "the receiver reconnected by itself");
    assert_eq!(
        audit_sequence(&got, N),
        (0, 0, 0),
        "lost, duplicates, reordered at the application"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_http_survive_node_restarts_exactly_once() {
    sends_survive_node_restarts(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sends_over_mqtt_survive_node_restarts_exactly_once() {
    sends_survive_node_restarts(false).await;
}

/// The outbox: sends made while the node is down (before it ever started), across an
/// application restart, are delivered exactly once and in order when it comes up.
async fn outbox_survives_a_down_node_and_a_restart(http: bool) {
    const N: u64 = 100;
    let mut t = Tree::new(&[spec("js", None, &["clinic", "hosp"])]);
    configure(&mut t, "js", "\n[transport]\ndefault = \"http\"\n");
    let url = if http {
        http_url(t.node("js").http_port)
    } else {
        mqtt_url(t.node("js").port)
    };
    let file: PathBuf = t.node("js").data_dir.with_extension("clinic-outbox.db");
    let clinic_opts = Options {
        outbox: Some(file.clone()),
        ..options(url.clone(), "js", "clinic")
    };
    let to = Address::new("js", "hosp");
    // The node is not running: every send returns at once, queued in the file.
    let (clinic, _i) = connect(clinic_opts.clone()).await;
    let mut ids = Vec::new();
    for s in 0..N / 2 {
        ids.push(
            clinic
                .send(&to, "queued", json!({"s": s}))
                .await
                .expect("queued"),
        );
    }
    assert_eq!(clinic.pending(), (N / 2) as usize);
    assert_eq!(clinic.transport(), None);
    clinic.close().await;
    // The application restarts on the same file and sends the rest.
    let (clinic, _i) = connect(clinic_opts).await;
    assert_eq!(
        clinic.pending(),
        (N / 2) as usize,
        "the first half is still queued"
    );
    for s in N / 2..N {
        ids.push(
            clinic
                .send(&to, "queued", json!({"s": s}))
                .await
                .expect("queued"),
        );
    }
    let distinct: std::collections::HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), N as usize, "every send has its own id");
    t.node("js").start();
    let (_hosp, mut inbox) = connect(options(url, "js", "hosp")).await;
    tokio::time::timeout(Duration::from_secs(60), clinic.flush())
        .await
        .expect("the outbox drains")
        .expect("client open");
    assert_eq!(clinic.pending(), 0);
    let got = receive_numbered(&mut inbox, N, Duration::from_secs(30)).await;
    assert_eq!(
        audit_sequence(&got, N),
        (0, 0, 0),
        "lost, duplicates, reordered at the application"
    );
    // The node stops while the application keeps sending: queued again, delivered after.
    t.node("js").stop();
    for s in N..2 * N {
        clinic
            .send(&to, "queued", json!({"s": s}))
            .await
            .expect("queued");
    }
    t.node("js").start();
    tokio::time::timeout(Duration::from_secs(60), clinic.flush())
        .await
        .expect("the outbox drains again")
        .expect("client open");
    let more = receive_numbered(&mut inbox, N, Duration::from_secs(30)).await;
    let all: Vec<u64> = got.iter().chain(more.iter()).copied().collect();
    assert_eq!(
        audit_sequence(&all, 2 * N),
        (0, 0, 0),
        "lost, duplicates, reordered at the application across the node's stop"
    );
    // Delivered sends are gone from the file: a new client finds nothing to resend.
    clinic.close().await;
    let (clinic, _i) = connect(Options {
        outbox: Some(file),
        ..options(http_url(t.node("js").http_port), "js", "clinic")
    })
    .await;
    assert_eq!(clinic.pending(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_over_http_survives_a_down_node_and_an_application_restart() {
    outbox_survives_a_down_node_and_a_restart(true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbox_over_mqtt_survives_a_down_node_and_an_application_restart() {
    outbox_survives_a_down_node_and_a_restart(false).await;
}
