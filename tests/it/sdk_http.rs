//! The Rust SDK over HTTP and across transports, against real node processes: request/reply
//! across four tiers with the clinic on HTTP, the node's transport decision followed (MQTT,
//! WebSocket, HTTP, their TLS forms, and HTTP when the advertised MQTT URL is unreachable),
//! repeated polls (old
//! cursors, cut connections) never reaching the application twice, refusals and receipts.
//! Every delivery test checks loss, duplicates and order at the application.

use crate::common;
use crate::sdk_support;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::proxy::{Mode, Proxy};
use common::*;
use medlink_sdk::{Address, Client, Options, Transport};
use sdk_support::*;
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_reply_cross_four_tiers_with_the_clinic_on_http() {
    let mut t = Tree::new(&[
        spec("js", None, &["experts"]),
        spec("js.nj", Some("js"), &["hosp"]),
        spec("js.nj.gl", Some("js.nj"), &[]),
        spec("js.nj.gl.t3", Some("js.nj.gl"), &["clinic"]),
    ]);
    // The township and the city tell their clients to use HTTP.
    for id in ["js.nj", "js.nj.gl.t3"] {
        configure(&mut t, id, "\n[transport]\ndefault = \"http\"\n");
    }
    for id in ["js", "js.nj", "js.nj.gl", "js.nj.gl.t3"] {
        t.node(id).start();
    }
    // The province's experts on MQTT, the city's hospital on HTTP.
    let (experts, inbox) = connect_on(
        mqtt_url(t.node("js").port),
        "js",
        "experts",
        Transport::Mqtt,
    )
    .await;
    let mut experts_saw = responder(experts, inbox);
    let (hosp, inbox) = connect_on(
        http_url(t.node("js.nj").http_port),
        "js.nj",
        "hosp",
        Transport::Http,
    )
    .await;
    let mut hosp_saw = responder(hosp, inbox);
    let t3_api = http_url(t.node("js.nj.gl.t3").http_port);
    let (clinic, _inbox) = connect_on(t3_api, "js.nj.gl.t3", "clinic", Transport::Http).await;
    for (to, tiers) in [
        (Address::new("js", "experts"), 4),
        (Address::new("js.nj", "hosp"), 3),
    ] {
        for n in 1..=5u64 {
            let answer = clinic
                .request(
                    &to,
                    "consult.second_opinion",
                    json!({"n": n}),
                    Duration::from_secs(30),
                )
                .await
                .unwrap_or_else(|e| panic!("a reply from {to}: {e}"));
            assert_eq!(answer.params["double"], n * 2);
            assert_eq!(answer.from, to);
            assert_eq!(answer.cmd, "consult.second_opinion.reply");
            assert_eq!(
                answer.trail.len(),
                tiers,
                "the reply came down {tiers} tiers"
            );
        }
    }
    // Each request reached its responder exactly once, in order.
    for saw in [&mut experts_saw, &mut hosp_saw] {
        let mut ns = Vec::new();
        while let Ok(Some(n)) = tokio::time::timeout(Duration::from_secs(2), saw.recv()).await {
            ns.push(n - 1);
        }
        assert_eq!(
            audit_sequence(&ns, 5),
            (0, 0, 0),
            "lost, duplicates, reordered: {ns:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_client_follows_the_transport_the_node_decides() {
    let mut t = Tree::new(&[spec("js", None, &["a", "b", "c", "d"])]);
    let (port, ws_port) = (t.node("js").port, t.node("js").ws_port);
    configure(
        &mut t,
        "js",
        &format!(
            "\n[transport]\ndefault = \"mqtt\"\nmqtt_url = \"mqtt://127.0.0.1:{port}\"\nws_url = \"ws://127.0.0.1:{ws_port}/mqtt\"\n[transport.identities]\nb = \"http\"\nc = \"ws\"\n"
        ),
    );
    t.node("js").start();
    let api = http_url(t.node("js").http_port);
    let mut clients = Vec::new();
    for (who, expected) in [
        ("a", Transport::Mqtt),
        ("b", Transport::Http),
        ("c", Transport::Ws),
    ] {
        let (client, inbox) = connect(options(api.clone(), "js", who)).await;
        assert_eq!(client.transport(), Some(expected), "{who}");
        clients.push((client, inbox));
    }
    // Traffic in a ring a -> b -> c -> a, each pair over different transports.
    const N: u64 = 200;
    ring_traffic(&mut clients, N).await;
}

/// An HTTP-aware fault proxy: every request gets its own connection (it adds
/// `Connection: close`), and every `every`-th inbox poll has its cursor replaced by 0 — the
/// node then returns again everything not yet acknowledged, as it does for a client whose
/// poll answer was lost.
struct ReplayProxy {
    port: u16,
    replayed: Arc<AtomicUsize>,
}

impl ReplayProxy {
    async fn start(target: u16, every: usize) -> ReplayProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let port = listener.local_addr().expect("address").port();
        let replayed = Arc::new(AtomicUsize::new(0));
        let polls = Arc::new(AtomicUsize::new(0));
        let counter = replayed.clone();
        tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                let (counter, polls) = (counter.clone(), polls.clone());
                tokio::spawn(async move {
                    let _ = replay_one(client, target, every, &polls, &counter).await;
                });
            }
        });
        ReplayProxy { port, replayed }
    }
}

async fn replay_one(
    mut client: TcpStream,
    target: u16,
    every: usize,
    polls: &AtomicUsize,
    replayed: &AtomicUsize,
) -> std::io::Result<()> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if client.read(&mut byte).await? == 0 {
            return Ok(());
        }
        head.push(byte[0]);
    }
    let text = String::from_utf8_lossy(&head).into_owned();
    let mut lines: Vec<String> = text
        .trim_end()
        .lines()
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .map(String::from)
        .collect();
    if lines[0].starts_with("GET /v1/inbox?") {
        let n = polls.fetch_add(1, Ordering::SeqCst) + 1;
        if n.is_multiple_of(every) {
            let (path, rest) = lines[0]
                .split_once(' ')
                .map(|(_, r)| r)
                .unwrap_or("")
                .split_once(' ')
                .unwrap_or(("", ""));
            let query: Vec<String> = path
                .split_once('?')
                .map(|(_, q)| q)
                .unwrap_or("")
                .split('&')
                .map(|kv| {
                    if kv.starts_with("cursor=") {
                        "cursor=0".into()
                    } else {
                        kv.to_string()
                    }
                })
                .collect();
            lines[0] = format!("GET /v1/inbox?{} {rest}", query.join("&"));
            replayed.fetch_add(1, Ordering::SeqCst);
        }
    }
    lines.push("Connection: close".into());
    let mut server = TcpStream::connect(("127.0.0.1", target)).await?;
    server
        .write_all(format!("{}\r\n\r\n", lines.join("\r\n")).as_bytes())
        .await?;
    tokio::io::copy_bidirectional(&mut client, &mut server).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_polls_over_http_never_reach_the_application_twice() {
    const N: u64 = 2000;
    let mut t = Tree::new(&[spec("js", None, &["sender", "app"])]);
    configure(&mut t, "js", "\n[transport]\ndefault = \"http\"\n");
    t.node("js").start();
    // app -> cut/freeze proxy -> replaying proxy -> node's HTTP API
    let replay = ReplayProxy::start(t.node("js").http_port, 3).await;
    let cut = Proxy::start(([127, 0, 0, 1], replay.port).into()).await;
    let (app, mut inbox) = connect_on(http_url(cut.port), "js", "app", Transport::Http).await;
    let (sender, _i) = connect(options(mqtt_url(t.node("js").port), "js", "sender")).await;
    let to = Address::new("js", "app");
    let send = send_numbered(sender, to, "stream", N);
    let mut got = Vec::new();
    let mut faulted = false;
    while (got.len() as u64) < N {
        let m = tokio::time::timeout(Duration::from_secs(60), inbox.commands.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {N} arrived", got.len()))
            .expect("inbox open");
        got.push(m.params["s"].as_u64().expect("numbered"));
        if got.len() == 700 && !faulted {
            // Polls in flight die with their answers; the client reconnects and polls again.
            faulted = true;
            cut.set(Mode::Freeze);
            tokio::time::sleep(Duration::from_secs(1)).await;
            cut.set(Mode::Cut);
            tokio::time::sleep(Duration::from_millis(500)).await;
            cut.set(Mode::Pass);
        }
    }
    send.await.expect("sender finished");
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(2), inbox.commands.recv()).await
    {
        got.push(m.params["s"].as_u64().expect("numbered"));
    }
    assert_eq!(
        audit_sequence(&got, N),
        (0, 0, 0),
        "lost, duplicates, reordered at the application"
    );
    assert!(
        replay.replayed.load(Ordering::SeqCst) > 0,
        "polls were replayed"
    );
    assert!(
        app.repeats_dropped() > 0,
        "the replays did resend deliveries (so the check above meant something)"
    );
}

/// Sends 0..n from `from` to `to` while the node holding both is killed and restarted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_mqtt_url_falls_back_to_http() {
    let mut t = Tree::new(&[spec("js", None, &["a", "b"])]);
    // The node advertises MQTT at a port nobody listens on (a firewall in the way), and allows
    // only short long-polls (the client asks for 20 s at first).
    let dead = free_port();
    let cfg = t.node("js").config.clone();
    let toml = std::fs::read_to_string(&cfg).expect("read config");
    std::fs::write(
        &cfg,
        toml.replace("tls = false\n", "tls = false\nmax_wait_s = 2\n"),
    )
    .expect("write config");
    configure(
        &mut t,
        "js",
        &format!("\n[transport]\ndefault = \"mqtt\"\nmqtt_url = \"mqtt://127.0.0.1:{dead}\"\n"),
    );
    t.node("js").start();
    let api = http_url(t.node("js").http_port);
    let (a, _ai) = connect_on(api.clone(), "js", "a", Transport::Http).await;
    let (b, mut inbox) = connect_on(api, "js", "b", Transport::Http).await;
    const N: u64 = 50;
    for s in 0..N {
        a.send(b.address(), "fallback", json!({"s": s}))
            .await
            .expect("custody");
    }
    let got = receive_numbered(&mut inbox, N, Duration::from_secs(30)).await;
    assert_eq!(
        audit_sequence(&got, N),
        (0, 0, 0),
        "lost, duplicates, reordered"
    );
    // The short polls were adopted, not treated as failures to reconnect from.
    assert_eq!((a.sessions(), b.sessions()), (1, 1), "one session each");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn refusals_and_receipts_reach_the_sender_on_both_transports() {
    let mut t = Tree::new(&[
        spec("js", None, &[]),
        spec("js.a", Some("js"), &["h", "m", "offline"]),
    ]);
    configure(&mut t, "js.a", "\n[transport]\ndefault = \"http\"\n");
    t.node("js").start();
    t.node("js.a").start();
    let (h, mut h_inbox) = connect_on(
        http_url(t.node("js.a").http_port),
        "js.a",
        "h",
        Transport::Http,
    )
    .await;
    let (m, mut m_inbox) = connect(options(mqtt_url(t.node("js.a").port), "js.a", "m")).await;
    // A target the node can judge at once: refused to the caller over HTTP.
    let err = h
        .send(&Address::new("js.a", "nobody"), "x", json!(null))
        .await
        .expect_err("an unknown local target is refused");
    assert!(matches!(err, medlink_sdk::Error::Rejected { .. }), "{err}");
    // A target only the root can judge: accepted here, then a `failed` receipt comes back.
    for (client, inbox) in [(&h, &mut h_inbox), (&m, &mut m_inbox)] {
        let id = client
            .send(
                &Address::new("js", "nobody"),
                "consult.request",
                json!(null),
            )
            .await
            .expect("custody at js.a");
        let receipt = tokio::time::timeout(Duration::from_secs(20), inbox.receipts.recv())
            .await
            .expect("a receipt in time")
            .expect("receipts open");
        let r = receipt.receipt().expect("a receipt");
        assert_eq!(r.status, medlink_sdk::ReceiptStatus::Failed);
        assert_eq!(r.about, id);
        assert_eq!(r.cmd, "consult.request");
        assert_eq!(r.by.as_deref(), Some("js"));
        // Exactly one.
        assert!(
            tokio::time::timeout(Duration::from_secs(2), inbox.receipts.recv())
                .await
                .is_err(),
            "one receipt only"
        );
        // A time to live (SendOptions::ttl, `ttl_ms` on the wire) for a client that never
        // connects: an `expired` receipt.
        let opts = medlink_sdk::SendOptions {
            ttl: Some(Duration::from_millis(200)),
            ..Default::default()
        };
        let id = client
            .send_with(
                &Address::new("js.a", "offline"),
                "reminder",
                json!(null),
                opts,
            )
            .await
            .expect("custody at js.a");
        let receipt = tokio::time::timeout(Duration::from_secs(20), inbox.receipts.recv())
            .await
            .expect("a receipt in time")
            .expect("receipts open");
        let r = receipt.receipt().expect("a receipt");
        assert_eq!(
            (r.status, r.about),
            (medlink_sdk::ReceiptStatus::Expired, id)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_password_is_reported_by_connect_on_both_transports() {
    let mut t = Tree::start(&[spec("js", None, &["a"])]);
    for url in [
        http_url(t.node("js").http_port),
        mqtt_url(t.node("js").port),
    ] {
        let err = Client::connect(Options {
            password: "wrong".into(),
            ..options(url.clone(), "js", "a")
        })
        .await
        .err()
        .unwrap_or_else(|| panic!("{url}: a wrong password connected"));
        assert!(matches!(err, medlink_sdk::Error::Auth(_)), "{url}: {err}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_tls_the_client_follows_the_node_to_mqtts_wss_and_https() {
    let mut t = Tree::new_tls(&[spec("js", None, &["a", "b", "c"])]);
    let (port, ws_port) = (t.node("js").port, t.node("js").ws_port);
    configure(
        &mut t,
        "js",
        &format!(
            "\n[transport]\ndefault = \"mqtt\"\nmqtt_url = \"mqtts://localhost:{port}\"\nws_url = \"wss://localhost:{ws_port}/mqtt\"\n[transport.identities]\nb = \"http\"\nc = \"ws\"\n"
        ),
    );
    t.node("js").start();
    let api = format!("https://localhost:{}", t.node("js").http_port);
    // Without the CA nothing TLS can be trusted: refused before any connection.
    let err = Client::connect(options(api.clone(), "js", "a"))
        .await
        .err()
        .expect("https without a CA is refused");
    assert!(matches!(err, medlink_sdk::Error::Config(_)), "{err}");
    let mut clients = Vec::new();
    for (who, expected) in [
        ("a", Transport::Mqtt),
        ("b", Transport::Http),
        ("c", Transport::Ws),
    ] {
        let (client, inbox) = connect(Options {
            ca: Some(t.ca()),
            ..options(api.clone(), "js", who)
        })
        .await;
        assert_eq!(client.transport(), Some(expected), "{who}");
        clients.push((client, inbox));
    }
    const N: u64 = 100;
    ring_traffic(&mut clients, N).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_a_client_does_not_take_stay_with_the_node() {
    let mut t = Tree::new(&[spec("js", None, &["x", "y", "s", "responder"])]);
    configure(&mut t, "js", "\n[transport]\ndefault = \"http\"\n");
    t.node("js").start();
    let (r, r_inbox) = connect(options(mqtt_url(t.node("js").port), "js", "responder")).await;
    let _answers = responder(r, r_inbox);
    let (other, _oi) = connect(options(mqtt_url(t.node("js").port), "js", "s")).await;
    for (x, url) in [
        ("x", mqtt_url(t.node("js").port)),
        ("y", http_url(t.node("js").http_port)),
    ] {
        // A send-only application: it drops its commands channel.
        let (client, inbox) = connect(options(url.clone(), "js", x)).await;
        drop(inbox.commands);
        for s in 0..3u64 {
            other
                .send(client.address(), "note", json!({"s": s}))
                .await
                .expect("custody");
        }
        // Its requests still get their replies, behind the commands it does not take.
        let answer = client
            .request(
                &Address::new("js", "responder"),
                "ask",
                json!({"n": 21}),
                Duration::from_secs(20),
            )
            .await
            .unwrap_or_else(|e| panic!("{x}: a reply: {e}"));
        assert_eq!(answer.params["double"], 42);
        client.close().await;
        // The commands were left with the node: a client that reads gets each once.
        let (_reader, mut inbox) = connect(options(url, "js", x)).await;
        let mut got = Vec::new();
        while let Ok(Some(m)) =
            tokio::time::timeout(Duration::from_secs(3), inbox.commands.recv()).await
        {
            // The reply may come again too: it sat behind the unacknowledged commands.
            if m.cmd == "note" {
                got.push(m.params["s"].as_u64().expect("numbered"));
            }
        }
        assert_eq!(audit_sequence(&got, 3), (0, 0, 0), "{x}: {got:?}");
    }
}

/// Positive receipts and priority through the SDK, with handlers on their own tasks: the
/// clinic (HTTP) asks for every receipt of an urgent request to experts on MQTT; each
/// receipt arrives once, typed, and the reply comes back urgent as well.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receipts_and_priority_through_the_sdk_on_both_transports() {
    use medlink_sdk::{Priority, ReceiptKind, ReceiptStatus, SendOptions};
    let mut t = Tree::new(&[
        spec("js", None, &["experts"]),
        spec("js.t", Some("js"), &["clinic"]),
    ]);
    configure(&mut t, "js.t", "\n[transport]\ndefault = \"http\"\n");
    t.node("js").start();
    t.node("js.t").start();
    let (experts, inbox) = connect(options(mqtt_url(t.node("js").port), "js", "experts")).await;
    let answering = experts.clone();
    let _experts = inbox.spawn_handlers(
        move |cmd| {
            let experts = answering.clone();
            async move {
                assert_eq!(cmd.priority, Priority::Urgent, "the request kept its class");
                experts
                    .reply(&cmd, json!({"ok": true}))
                    .await
                    .expect("reply");
            }
        },
        |_| async {},
    );
    let (clinic, inbox) = connect_on(
        http_url(t.node("js.t").http_port),
        "js.t",
        "clinic",
        Transport::Http,
    )
    .await;
    let (seen_tx, mut seen) = tokio::sync::mpsc::unbounded_channel();
    let _clinic = inbox.spawn_handlers(
        |_| async {},
        move |r| {
            let seen = seen_tx.clone();
            async move {
                let _ = seen.send(r.receipt().expect("a receipt"));
            }
        },
    );
    let opts = SendOptions {
        priority: Priority::Urgent,
        receipts: vec![
            ReceiptKind::Accepted,
            ReceiptKind::Delivered,
            ReceiptKind::Replied,
        ],
        ..SendOptions::default()
    };
    let answer = clinic
        .request_with(
            &Address::new("js", "experts"),
            "stroke.alert",
            json!({"patient": "P-7"}),
            Duration::from_secs(20),
            opts,
        )
        .await
        .expect("an answer");
    assert_eq!(
        answer.priority,
        Priority::Urgent,
        "the answer is urgent too"
    );
    let request_id = answer.reply_to.clone().expect("correlated");
    let mut statuses = Vec::new();
    while let Ok(Some(r)) = tokio::time::timeout(Duration::from_secs(3), seen.recv()).await {
        assert_eq!(r.about, request_id, "{r:?}");
        statuses.push(r.status);
    }
    statuses.sort_by_key(|s| format!("{s:?}"));
    assert_eq!(
        statuses,
        [
            ReceiptStatus::Accepted,
            ReceiptStatus::Delivered,
            ReceiptStatus::Replied
        ],
        "each receipt once"
    );
}
