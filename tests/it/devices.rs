//! One identity on several devices at once, over mixed transports: two MQTT connections
//! (different client ids) and an HTTP poller that polls with pauses, so the MQTT devices often
//! acknowledge a message before the poller asks. Every device receives every message, once.

use crate::common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::http::{get_json, Login};
use common::*;
use serde_json::json;

const PAT: Login = Some(("pat", PASSWORD));
const N: u64 = 60;

/// Polls `pat`'s inbox over HTTP like a phone would, with a pause between polls, until `n`
/// distinct messages arrived or `secs` passed. Returns every `n` received, repeats included.
fn http_device(port: u16, n: u64, secs: u64) -> Vec<u64> {
    let deadline = Instant::now() + Duration::from_secs(secs);
    let mut cursor = String::from("0");
    let mut got = Vec::new();
    while Instant::now() < deadline {
        let (status, page) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=1"), PAT);
        assert_eq!(status, 200, "{page}");
        for m in page["messages"].as_array().expect("messages") {
            got.push(m["params"]["n"].as_u64().expect("n"));
        }
        cursor = page["cursor"].as_str().expect("cursor").to_string();
        if got.iter().collect::<BTreeSet<_>>().len() as u64 >= n {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    got
}

async fn mqtt_device(app: &mut App, n: u64) -> Vec<u64> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let Some(m) = app.recv(10).await else { break };
        if m.topic.ends_with("/cmd") {
            got.push(m.json["params"]["n"].as_u64().expect("n"));
        }
    }
    while let Some(m) = app.recv(1).await {
        if m.topic.ends_with("/cmd") {
            got.push(m.json["params"]["n"].as_u64().expect("n"));
        }
    }
    got
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_device_of_one_identity_receives_every_message_over_mqtt_and_http() {
    let mut tree = Tree::start(&[
        spec("js", None, &["pat"]),
        spec("js.t", Some("js"), &["desk"]),
    ]);
    let port = tree.node("js").port;
    let http_port = tree.node("js").http_port;
    let mut phone = App::connect_as("js", "pat", "pat-phone", port, true).await;
    let mut tablet = App::connect_as("js", "pat", "pat-tablet", port, true).await;
    // The HTTP device has polled once before anything is sent (it is "connected").
    let (status, _) = get_json(http_port, "/v1/inbox", PAT);
    assert_eq!(status, 200);
    let web = std::thread::spawn(move || http_device(http_port, N, 40));
    let desk = App::connect("js.t", "desk", tree.node("js.t").port).await;
    for n in 0..N {
        desk.send("js", "pat", "queue.call", json!({"n": n})).await;
        if n % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    let (p, t) = tokio::join!(mqtt_device(&mut phone, N), mqtt_device(&mut tablet, N));
    let w = web.join().expect("http device");
    let all: Vec<u64> = (0..N).collect();
    for (name, got) in [("phone", &p), ("tablet", &t), ("web", &w)] {
        let mut sorted = got.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted, all, "{name} missed messages: {got:?}");
        assert_eq!(got.len() as u64, N, "{name} got repeats: {got:?}");
    }
}
