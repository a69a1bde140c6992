//! The Rust SDK against real node processes: request/reply across four tiers, and deliveries
//! resent by the node after a stalled connection never reaching the application twice.

use crate::common;
use crate::sdk_support;

use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use medlink_sdk::{Address, Client, Options};
use serde_json::json;

fn options(node: &str, identity: &str, port: u16) -> Options {
    Options {
        url: format!("mqtt://127.0.0.1:{port}"),
        node: node.into(),
        identity: identity.into(),
        password: PASSWORD.into(),
        ca: None,
        ..Default::default()
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_reply_cross_four_tiers_through_the_sdk() {
    let mut t = Tree::start(&[
        spec("js", None, &["experts"]),
        spec("js.nj", Some("js"), &[]),
        spec("js.nj.gl", Some("js.nj"), &[]),
        spec("js.nj.gl.t3", Some("js.nj.gl"), &["clinic"]),
    ]);
    let (experts, mut inbox) = Client::connect(options("js", "experts", t.node("js").port))
        .await
        .expect("experts connect");
    // The experts answer on their own task.
    tokio::spawn(async move {
        while let Some(cmd) = inbox.commands.recv().await {
            let n = cmd.params["n"].as_u64().unwrap_or(0);
            experts
                .reply(&cmd, json!({"double": n * 2}))
                .await
                .expect("reply");
        }
    });
    let (clinic, _inbox) =
        Client::connect(options("js.nj.gl.t3", "clinic", t.node("js.nj.gl.t3").port))
            .await
            .expect("clinic connects");
    let to = Address::new("js", "experts");
    for n in 1..=5u64 {
        let answer = clinic
            .request(
                &to,
                "consult.second_opinion",
                json!({"n": n}),
                Duration::from_secs(20),
            )
            .await
            .expect("a reply");
        assert_eq!(answer.params["double"], n * 2);
        assert_eq!(answer.from, Address::new("js", "experts"));
        assert_eq!(answer.trail.len(), 4, "the reply crossed four tiers down");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resent_deliveries_never_reach_the_application_twice() {
    const N: u64 = 3000;
    const HOLD_AT: usize = 500;
    let mut t = Tree::start(&[spec("js", None, &["sender", "app"])]);
    let port = t.node("js").port;
    let proxy = Proxy::start(([127, 0, 0, 1], port).into()).await;
    let (app, mut inbox) = Client::connect(options("js", "app", proxy.port))
        .await
        .expect("app connects");
    let (sender, _i) = Client::connect(options("js", "sender", port))
        .await
        .expect("sender connects");
    let to = Address::new("js", "app");
    let send = sdk_support::send_numbered(sender, to, "stream", N);
    // Mid-stream the app's acknowledgements stop reaching the node while deliveries still
    // reach the app; then the connection dies, and the node resends everything it holds
    // unacknowledged to the new one. The app keeps reading throughout: whatever it is handed
    // after the hold began has its acknowledgement held, so it is certain to come again.
    // (Stalling both directions instead, as this test once did, let a fast sender fill the
    // SDK's channel with deliveries acknowledged before the stall: no resend was a repeat.)
    let (count, counted) = tokio::sync::watch::channel(0usize);
    let faults = tokio::spawn(async move {
        let mut counted = counted;
        let _ = counted.wait_for(|n| *n >= HOLD_AT).await;
        proxy.set(Mode::HoldUpstream);
        // Deliveries go on until the node's in-flight limit is reached with the acks held.
        tokio::time::sleep(Duration::from_secs(2)).await;
        proxy.set(Mode::Cut);
        tokio::time::sleep(Duration::from_millis(500)).await;
        proxy.set(Mode::Pass);
        proxy
    });
    let mut got = Vec::new();
    while (got.len() as u64) < N {
        let m = tokio::time::timeout(Duration::from_secs(60), inbox.commands.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} arrived", got.len()))
            .expect("inbox open");
        got.push(m.params["s"].as_u64().expect("numbered"));
        count.send_replace(got.len());
    }
    let _proxy = faults.await.expect("fault sequence ran");
    send.await.unwrap();
    assert!(
        tokio::time::timeout(Duration::from_secs(2), inbox.commands.recv())
            .await
            .is_err(),
        "nothing more arrives"
    );
    assert_eq!(
        audit_sequence(&got, N),
        (0, 0, 0),
        "lost, duplicates, reordered at the application"
    );
    eprintln!("repeats dropped by the SDK: {}", app.repeats_dropped());
    assert!(
        app.repeats_dropped() > 0,
        "the stall did cause resends (so the check above meant something)"
    );
}

#[test]
fn the_cli_sends_requests_and_listens_through_the_sdk() {
    let mut t = Tree::start(&[spec("js", None, &["a", "b"])]);
    let url = t.node("js").url();
    let common = |who: &str| {
        vec![
            "--url".to_string(),
            url.clone(),
            "--node".into(),
            "js".into(),
            "--identity".into(),
            who.to_string(),
        ]
    };
    // b answers every command it gets, twice over.
    let mut listener = std::process::Command::new(BIN)
        .arg("listen")
        .args(common("b"))
        .args(["--count", "2", "--reply-with", r#"{"ok":true}"#])
        .env("MEDLINK_PASSWORD", PASSWORD)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("medlink listen");
    std::thread::sleep(Duration::from_millis(1500));
    let run = |verb: &str, cmd: &str| {
        let out = std::process::Command::new(BIN)
            .arg(verb)
            .args(common("a"))
            .args(["--to", "js/b", "--cmd", cmd, "--params", r#"{"n":1}"#])
            // Only `request` waits for an answer.
            .args(if verb == "request" {
                &["--timeout", "20"][..]
            } else {
                &[]
            })
            .env("MEDLINK_PASSWORD", PASSWORD)
            .output()
            .expect("medlink runs");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let id = run("send", "note");
    assert_eq!(id.len(), 26, "a ULID: {id}");
    let reply: serde_json::Value = serde_json::from_str(&run("request", "ask")).unwrap();
    assert_eq!(reply["params"]["ok"], true);
    assert_eq!(reply["cmd"], "ask.reply");
    let status = listener.wait().unwrap();
    assert!(status.success());
    let mut heard = String::new();
    std::io::Read::read_to_string(listener.stdout.as_mut().unwrap(), &mut heard).unwrap();
    let cmds: Vec<serde_json::Value> = heard
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|m: &serde_json::Value| m["kind"] == "cmd")
        .collect();
    assert_eq!(cmds.len(), 2);
    assert_eq!(cmds[0]["id"], id.as_str());
    // The password never appears on a command line: without it, a clear refusal.
    let out = std::process::Command::new(BIN)
        .arg("send")
        .args(common("a"))
        .args(["--to", "js/b", "--cmd", "x"])
        .env_remove("MEDLINK_PASSWORD")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("MEDLINK_PASSWORD"));
    // Send options from the command line; a bad value is named.
    let send_with = |extra: &[&str]| {
        std::process::Command::new(BIN)
            .arg("send")
            .args(common("a"))
            .args(["--to", "js/b", "--cmd", "x"])
            .args(extra)
            .env("MEDLINK_PASSWORD", PASSWORD)
            .output()
            .unwrap()
    };
    let out = send_with(&[
        "--priority",
        "urgent",
        "--receipts",
        "accepted,delivered",
        "--ttl",
        "60",
        "--id",
        "cli-1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "cli-1");
    let out = send_with(&["--priority", "high"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--priority"));
}

/// The round-trip bench (`medlink-bench rtt`, run here in process) matches every reply to its
/// request: over MQTT and over HTTP across two tiers, every round trip is counted once and none
/// is lost.
#[test]
fn the_round_trip_bench_counts_every_reply_once() {
    let mut t = Tree::new(&[
        spec("js", None, &["rep"]),
        spec("js.a", Some("js"), &["req"]),
    ]);
    // An `http://` URL lets the node decide: these nodes say HTTP.
    for id in ["js", "js.a"] {
        sdk_support::configure(&mut t, id, "\n[transport]\ndefault = \"http\"\n");
        t.node(id).start();
    }
    let port_pair = |n: &mut NodeProc| (n.port, n.http_port);
    let (req, rep) = (port_pair(t.node("js.a")), port_pair(t.node("js")));
    let runtime = tokio::runtime::Runtime::new().expect("a runtime");
    for (scheme, (req_port, rep_port), transport) in [
        ("mqtt", (req.0, rep.0), "mqtt / mqtt"),
        ("http", (req.1, rep.1), "http / http"),
    ] {
        let args = medlink_bench::rtt::RttArgs {
            req_url: format!("{scheme}://127.0.0.1:{req_port}"),
            rep_url: format!("{scheme}://127.0.0.1:{rep_port}"),
            requests: 60,
            concurrency: 4,
            timeout: 20,
            medlink: true,
            req_node: Some("js.a".into()),
            req_user: Some("req".into()),
            req_pass: Some(PASSWORD.into()),
            rep_node: Some("js".into()),
            rep_user: Some("rep".into()),
            rep_pass: Some(PASSWORD.into()),
            ..Default::default()
        };
        let result = runtime
            .block_on(medlink_bench::rtt::run(&args))
            .unwrap_or_else(|e| panic!("the round-trip bench over {scheme}: {e}"));
        assert_eq!(result.replied, 60, "{result:?}");
        assert_eq!(result.lost, 0, "{result:?}");
        assert_eq!(result.duplicates, 0, "{result:?}");
        assert_eq!(result.transport, transport, "{result:?}");
    }
}
