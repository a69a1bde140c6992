//! The HTTP API against a real node process: send by POST, receive by long-poll with an
//! acknowledged cursor (re-delivery of what was not acknowledged, across a cut response and a
//! node restart), idempotent retries, server-sent events, MQTT and HTTP clients talking to each
//! other, the transport decision, every error code with its JSON body, and the OpenAPI
//! document against the routes.

use crate::common;

use std::collections::BTreeSet;
use std::io::Read;
use std::time::Duration;

use common::http::*;
use common::*;
use serde_json::{json, Value};

const C1: Login = Some(("c1", PASSWORD));
const C2: Login = Some(("c2", PASSWORD));

fn cmd(to: &str, name: &str, n: u64) -> Value {
    json!({"to": {"node": "js", "client": to}, "cmd": name, "params": {"n": n}})
}

fn ids(page: &Value) -> Vec<String> {
    page["messages"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn send_poll_acknowledge_and_redeliver_what_was_not_acknowledged() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").http_port;
    for n in 0..5 {
        let (status, body) = post_json(port, "/v1/messages", C1, &cmd("c2", "note", n));
        assert_eq!(status, 202, "{body}");
        assert_eq!(body["ids"].as_array().unwrap().len(), 1);
    }
    let (status, page) = get_json(port, "/v1/inbox", C2);
    assert_eq!(status, 200);
    assert_eq!(ns(&page), [0, 1, 2, 3, 4]);
    let last = page["cursor"].as_str().unwrap().to_string();
    // Nothing acknowledged yet: polling from the start again returns the same messages.
    let (_, again) = get_json(port, "/v1/inbox", C2);
    assert_eq!(ids(&again), ids(&page));
    // Find the cursor of the third message by polling with max=3.
    let (_, first3) = get_json(port, "/v1/inbox?max=3", C2);
    let c3 = first3["cursor"].as_str().unwrap().to_string();
    assert_eq!(ns(&first3), [0, 1, 2]);
    let (_, rest) = get_json(port, &format!("/v1/inbox?cursor={c3}"), C2);
    assert_eq!(
        ns(&rest),
        [3, 4],
        "polling with a cursor acknowledges up to it"
    );
    // A response cut off mid-body: the client never saw it, polls again with its old cursor.
    let mut s = send(port, "GET", &format!("/v1/inbox?cursor={c3}"), C2, &[], b"");
    let mut head = [0u8; 40];
    s.read_exact(&mut head).unwrap();
    drop(s);
    let (_, after_cut) = get_json(port, &format!("/v1/inbox?cursor={c3}"), C2);
    assert_eq!(ns(&after_cut), [3, 4], "a cut response loses nothing");
    // A node restart changes nothing either.
    assert_eq!(t.node("js").stop(), Some(0));
    t.node("js").start();
    let (_, after_restart) = get_json(port, &format!("/v1/inbox?cursor={c3}"), C2);
    assert_eq!(
        ns(&after_restart),
        [3, 4],
        "unacknowledged messages survive a restart"
    );
    assert_eq!(after_restart["cursor"].as_str(), Some(last.as_str()));
    // Explicit acknowledgement; a cursor beyond what was handed out acknowledges no more.
    let n: u64 = last.split('.').nth(1).unwrap().parse().unwrap();
    let beyond = format!("0.{}.0", n + 100);
    let (status, acked) = post_json(port, "/v1/inbox/ack", C2, &json!({ "cursor": beyond }));
    assert_eq!(status, 200, "{acked}");
    assert_eq!(acked["acked"].as_str(), Some(last.as_str()));
    let (_, empty) = get_json(port, &format!("/v1/inbox?cursor={last}"), C2);
    assert!(ids(&empty).is_empty(), "{empty}");
    // A message sent now gets a cursor beyond the old one: the over-long ack did not eat it.
    post_json(port, "/v1/messages", C1, &cmd("c2", "late", 5));
    let (_, late) = get_json(port, &format!("/v1/inbox?cursor={last}&wait=5"), C2);
    assert_eq!(ns(&late), [5]);
}

#[test]
fn a_long_poll_waits_and_answers_when_a_command_arrives() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").http_port;
    let poller = std::thread::spawn(move || get_json(port, "/v1/inbox?wait=30", C2));
    std::thread::sleep(Duration::from_millis(500));
    let (status, _) = post_json(port, "/v1/messages", C1, &cmd("c2", "wake", 7));
    assert_eq!(status, 202);
    let (status, page) = poller.join().unwrap();
    assert_eq!(status, 200);
    assert_eq!(ns(&page), [7], "the waiting poll got the command: {page}");
    // And with nothing to read, a poll waits its time and answers empty.
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let (status, empty) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=1"), C2);
    assert_eq!((status, ids(&empty).len()), (200, 0));
}

#[test]
fn retried_posts_are_accepted_once() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").http_port;
    let batch = json!([cmd("c2", "a", 1), cmd("c2", "b", 2)]);
    let key = [("Idempotency-Key", "order-7781")];
    let first = read(send(
        port,
        "POST",
        "/v1/messages",
        C1,
        &key,
        batch.to_string().as_bytes(),
    ));
    let retry = read(send(
        port,
        "POST",
        "/v1/messages",
        C1,
        &key,
        batch.to_string().as_bytes(),
    ));
    assert_eq!((first.status, retry.status), (202, 202));
    assert_eq!(
        first.json()["ids"],
        retry.json()["ids"],
        "same key, same ids"
    );
    // A client-chosen id works the same way.
    let mut own = cmd("c2", "c", 3);
    own["id"] = json!("clinic-42");
    for _ in 0..3 {
        let (status, body) = post_json(port, "/v1/messages", C1, &own);
        assert_eq!((status, body["id"].clone()), (202, json!("clinic-42")));
    }
    let (_, page) = get_json(port, "/v1/inbox?wait=2", C2);
    let mut got = ns(&page);
    let mut cursor = page["cursor"].as_str().unwrap().to_string();
    loop {
        let (_, more) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=1"), C2);
        if ids(&more).is_empty() {
            break;
        }
        got.extend(ns(&more));
        cursor = more["cursor"].as_str().unwrap().to_string();
    }
    assert_eq!(got, [1, 2, 3], "each command once, whatever the retries");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_and_http_clients_talk_to_each_other_and_get_receipts() {
    let mut t = Tree::start(&[
        spec("js", None, &["hosp"]),
        spec("js.t", Some("js"), &["c1", "c2"]),
    ]);
    let http = t.node("js.t").http_port;
    let mut hosp = App::connect("js", "hosp", t.node("js").port).await;
    let to_hosp = json!({"to": {"node": "js", "client": "hosp"}, "cmd": "consult.request"});
    let sent = tokio::task::spawn_blocking(move || post_json(http, "/v1/messages", C1, &to_hosp))
        .await
        .unwrap();
    assert_eq!(sent.0, 202);
    let req = hosp.expect_cmd(10).await;
    assert_eq!(req["from"], json!({"node": "js.t", "client": "c1"}));
    hosp.send("js.t", "c1", "consult.reply", json!({"ok": true}))
        .await;
    let (status, page) = tokio::task::spawn_blocking(move || {
        get_json(http, "/v1/inbox?wait=10", Some(("c1", PASSWORD)))
    })
    .await
    .unwrap();
    assert_eq!(status, 200);
    assert_eq!(page["messages"][0]["cmd"], "consult.reply", "{page}");
    assert_eq!(page["messages"][0]["trail"].as_array().unwrap().len(), 2);
    // A forged sender over HTTP is refused outright.
    let forged = json!({"from": {"node": "js", "client": "hosp"}, "to": {"node": "js", "client": "hosp"}, "cmd": "x"});
    let (status, err) =
        tokio::task::spawn_blocking(move || post_json(http, "/v1/messages", C2, &forged))
            .await
            .unwrap();
    assert_eq!(
        (status, err["field"].clone()),
        (400, json!("from")),
        "{err}"
    );
    // Receipts over HTTP: an expired command's receipt.
    let short = json!({"to": {"node": "js", "client": "hosp"}, "cmd": "too.late", "ttl_ms": 1});
    t.node("js").stop();
    let (status, _) =
        tokio::task::spawn_blocking(move || post_json(http, "/v1/messages", C2, &short))
            .await
            .unwrap();
    assert_eq!(status, 202, "accepted at js.t while its parent is down");
    tokio::time::sleep(Duration::from_millis(50)).await;
    t.node("js").start();
    let (_, receipts) = tokio::task::spawn_blocking(move || {
        get_json(http, "/v1/receipts?wait=20", Some(("c2", PASSWORD)))
    })
    .await
    .unwrap();
    assert_eq!(
        receipts["messages"][0]["params"]["status"], "expired",
        "{receipts}"
    );
    assert!(
        hosp.recv(1).await.is_none(),
        "nothing else reached the hospital"
    );
}

#[test]
fn server_sent_events_carry_the_inbox() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").http_port;
    for n in 0..3 {
        post_json(port, "/v1/messages", C1, &cmd("c2", "push", n));
    }
    let mut s = send(port, "GET", "/v1/stream", C2, &[], b"");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    while text.matches("data:").count() < 3 {
        let n = s.read(&mut buf).expect("events arrive");
        assert!(n > 0, "stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.contains("text/event-stream"), "{text}");
    assert!(text.contains("event: message"));
    let id = text
        .lines()
        .filter_map(|l| l.strip_prefix("id: "))
        .next_back()
        .unwrap()
        .trim()
        .to_string();
    drop(s);
    // Reconnecting with Last-Event-ID acknowledges what was received: nothing comes again.
    post_json(port, "/v1/messages", C1, &cmd("c2", "push", 3));
    let mut s = send(
        port,
        "GET",
        "/v1/stream",
        C2,
        &[("Last-Event-ID", &id)],
        b"",
    );
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut text = String::new();
    while !text.contains("data:") {
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert_eq!(text.matches("data:").count(), 1, "{text}");
    assert!(text.contains(r#""n":3"#), "{text}");
}

#[test]
fn the_server_tells_each_identity_its_transport() {
    let mut s = spec("js", None, &["c1", "c2"]);
    s.extra = String::new();
    let mut t = Tree::new(&[s]);
    let cfg = t.node("js").config.clone();
    let mut text = std::fs::read_to_string(&cfg).unwrap();
    text += "\n[transport]\ndefault = \"mqtt\"\nmqtt_url = \"mqtts://city.example:8883\"\nhttp_url = \"https://city.example:8443\"\n[transport.identities]\nc2 = \"http\"\n";
    std::fs::write(&cfg, text).unwrap();
    t.node("js").start();
    let port = t.node("js").http_port;
    let (_, d1) = get_json(port, "/v1/transport", C1);
    assert_eq!(
        d1,
        json!({"identity": "c1", "transport": "mqtt", "url": "mqtts://city.example:8883"})
    );
    let (_, d2) = get_json(port, "/v1/transport", C2);
    assert_eq!(d2["transport"], "http");
    assert_eq!(d2["url"], "https://city.example:8443");
}

#[test]
fn every_error_is_json_with_a_stable_code() {
    let mut s = spec("js", None, &["c1", "c2"]);
    s.limits =
        "max_payload = 4096\nmax_packet = 1048576\nrate_per_second = 1\nrate_burst = 3\n".into();
    let mut t = Tree::start(&[s]);
    let port = t.node("js").http_port;
    let ops = Some(("ops", PASSWORD));
    let check = |r: Reply, status: u16, code: &str, field: Option<&str>| {
        assert_eq!(r.status, status, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(
            r.header("content-type").as_deref(),
            Some("application/json")
        );
        let v = r.json();
        assert_eq!(v["code"], code, "{v}");
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
        if let Some(f) = field {
            assert_eq!(v["field"], f, "{v}");
        }
        r
    };
    let good = cmd("c2", "x", 1).to_string();
    check(
        call(port, "POST", "/v1/messages", C1, b"{not json"),
        400,
        "malformed",
        Some("body"),
    );
    check(
        call(port, "POST", "/v1/messages", C1, br#"[{"to":{"node":"js","client":"c2"},"cmd":"ok"},{"to":{"node":"x..y","client":"c2"},"cmd":"bad"}]"#),
        400,
        "invalid",
        Some("messages[1].to.node"),
    );
    check(
        call(port, "GET", "/v1/inbox?cursor=abc", C1, b""),
        400,
        "malformed",
        Some("cursor"),
    );
    let r = check(
        call(port, "POST", "/v1/messages", None, good.as_bytes()),
        401,
        "unauthorized",
        None,
    );
    assert!(r
        .header("www-authenticate")
        .is_some_and(|h| h.starts_with("Basic")));
    check(
        call(
            port,
            "POST",
            "/v1/messages",
            Some(("c1", "wrong")),
            good.as_bytes(),
        ),
        401,
        "unauthorized",
        None,
    );
    check(
        call(port, "POST", "/v1/messages", ops, good.as_bytes()),
        403,
        "forbidden",
        None,
    );
    check(
        call(
            port,
            "POST",
            "/v1/messages",
            C1,
            cmd("nobody", "x", 1).to_string().as_bytes(),
        ),
        404,
        "unknown_target",
        Some("to"),
    );
    check(
        call(port, "GET", "/v1/nowhere", C1, b""),
        404,
        "not_found",
        None,
    );
    check(
        call(port, "DELETE", "/v1/messages", C1, b""),
        405,
        "method_not_allowed",
        None,
    );
    let big = json!({"to": {"node": "js", "client": "c2"}, "cmd": "x", "params": "y".repeat(8000)});
    check(
        call(port, "POST", "/v1/messages", C1, big.to_string().as_bytes()),
        413,
        "too_large",
        Some("payload"),
    );
    let huge = vec![b' '; 2 << 20];
    check(
        call(port, "POST", "/v1/messages", C1, &huge),
        413,
        "too_large",
        None,
    );
    // The rate: a burst of 3, then 429 with Retry-After.
    let mut statuses = Vec::new();
    for _ in 0..6 {
        statuses.push(call(port, "POST", "/v1/messages", C1, good.as_bytes()).status);
    }
    assert!(
        statuses.contains(&202) && statuses.contains(&429),
        "{statuses:?}"
    );
    let r = loop {
        let r = call(port, "POST", "/v1/messages", C1, good.as_bytes());
        if r.status == 429 {
            break r;
        }
    };
    let r = check(r, 429, "rate_limited", None);
    assert_eq!(r.header("retry-after").as_deref(), Some("1"));
}

#[test]
fn a_node_that_cannot_commit_answers_503_and_never_2xx() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").http_port;
    let (status, _) = post_json(port, "/v1/messages", C1, &cmd("c2", "before", 1));
    assert_eq!(status, 202);
    // The disk "fills up": from now on the node's process cannot write a byte to any file.
    let pid = t.node("js").pid().unwrap().to_string();
    let limit = |v: &str| {
        let ok = std::process::Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={v}")])
            .status()
            .expect("prlimit runs (util-linux)")
            .success();
        assert!(ok, "prlimit --fsize={v}");
    };
    limit("0:unlimited");
    let r = call(
        port,
        "POST",
        "/v1/messages",
        C1,
        cmd("c2", "during", 2).to_string().as_bytes(),
    );
    limit("unlimited:unlimited");
    assert_eq!(r.status, 503, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(r.json()["code"], "unavailable");
    assert!(
        t.node("js").is_running(),
        "a full disk does not kill the node"
    );
    // Space again: the node accepts again, and what it accepted before is still there.
    let (status, _) = post_json(port, "/v1/messages", C1, &cmd("c2", "after", 3));
    assert_eq!(status, 202);
    let (_, page) = get_json(port, "/v1/inbox?wait=5&max=10", C2);
    let mut got = ns(&page);
    let cursor = page["cursor"].as_str().unwrap().to_string();
    let (_, more) = get_json(port, &format!("/v1/inbox?cursor={cursor}&wait=1"), C2);
    got.extend(ns(&more));
    assert_eq!(
        got,
        [1, 3],
        "accepted ones all there; the refused one never accepted"
    );
}

#[test]
fn the_openapi_document_describes_exactly_the_routes() {
    let mut t = Tree::start(&[spec("js", None, &["c1"])]);
    let port = t.node("js").http_port;
    let (status, doc) = get_json(port, "/v1/openapi.json", None);
    assert_eq!(status, 200);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let committed: Value = serde_json::from_str(include_str!("../../bridge/openapi.json"))
        .expect("committed document parses");
    assert_eq!(doc, committed, "the served document is the committed one");
    let documented: BTreeSet<(String, String)> = doc["paths"]
        .as_object()
        .unwrap()
        .iter()
        .flat_map(|(path, ops)| {
            ops.as_object()
                .unwrap()
                .keys()
                .map(move |m| (m.clone(), path.clone()))
        })
        .collect();
    let routed: BTreeSet<(String, String)> = medlink_bridge::http::ROUTES
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    assert_eq!(
        documented, routed,
        "document and router list the same operations"
    );
    for (method, path) in &routed {
        let r = call(port, &method.to_uppercase(), path, None, b"");
        assert!(
            r.status != 404 && r.status != 405,
            "{method} {path} is documented but not served ({})",
            r.status
        );
        let documented_statuses = doc["paths"][path][method]["responses"].as_object().unwrap();
        assert!(
            documented_statuses.contains_key(&r.status.to_string()),
            "{method} {path} answered {} which the document does not list",
            r.status
        );
    }
}

/// The README's curl path, with curl itself: send, long-poll, acknowledge by cursor, re-poll.
#[test]
fn the_curl_path_of_the_readme_works() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let base = format!("http://127.0.0.1:{}", t.node("js").http_port);
    let curl = |args: &[&str]| -> Value {
        let out = std::process::Command::new("curl")
            .args(["-sS", "--max-time", "20"])
            .args(args)
            .output()
            .expect("curl runs (apt install curl)");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("JSON answer")
    };
    let auth1 = format!("c1:{PASSWORD}");
    let auth2 = format!("c2:{PASSWORD}");
    let sent = curl(&[
        "-u",
        &auth1,
        "-H",
        "Idempotency-Key: req-0042",
        &format!("{base}/v1/messages"),
        "-d",
        r#"{"to":{"node":"js","client":"c2"},"cmd":"consult.request","params":{"patient":"P-1"}}"#,
    ]);
    let id = sent["id"].as_str().unwrap().to_string();
    let page = curl(&["-u", &auth2, &format!("{base}/v1/inbox?wait=10")]);
    assert_eq!(page["messages"][0]["id"], id.as_str());
    let cursor = page["cursor"].as_str().unwrap().to_string();
    // Not acknowledged yet: the same message again.
    let again = curl(&["-u", &auth2, &format!("{base}/v1/inbox")]);
    assert_eq!(again["messages"][0]["id"], id.as_str());
    // Acknowledged by polling on with the cursor: nothing left.
    let next = curl(&[
        "-u",
        &auth2,
        &format!("{base}/v1/inbox?cursor={cursor}&wait=1"),
    ]);
    assert_eq!(next["messages"].as_array().unwrap().len(), 0, "{next}");
    let acked = curl(&[
        "-u",
        &auth2,
        &format!("{base}/v1/inbox/ack"),
        "-d",
        &format!(r#"{{"cursor":"{cursor}"}}"#),
    ]);
    assert_eq!(acked["acked"].as_str(), Some(cursor.as_str()));
}
