//! Hostile input: garbage, truncated, oversized and invalid-UTF-8 packets, CONNECT floods,
//! half-open connections and slow consumers. After each, the node is up, a well-behaved client
//! that stayed connected throughout still gets its commands, and nothing accepted is lost.

use crate::common;

use std::io::Write;
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use serde_json::json;

/// A round trip through the node on an already-open, well-behaved connection.
async fn still_serving(sender: &App, receiver: &mut App, n: u64) {
    sender
        .send("js", &receiver.name, "ping", json!({"n": n}))
        .await;
    let got = receiver.expect_cmd(10).await;
    assert_eq!(
        got["params"]["n"], n,
        "well-behaved traffic disturbed: {got}"
    );
}

fn wait_metric_at_most(node: &NodeProc, name: &str, limit: f64, secs: u64) -> f64 {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        let v = node.metric(name);
        if v <= limit || Instant::now() > deadline {
            return v;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_leaves_the_node_serving_and_loses_nothing() {
    let mut s = spec("js", None, &["good", "peer", "offline", "evil"]);
    s.limits = "connect_timeout_ms = 1000\nmax_packet = 1048576\nmax_payload = 65536\nmax_connections_per_identity = 1000\n".into();
    let mut t = Tree::start(&[s]);
    let port = t.node("js").port;
    let ws_port = t.node("js").ws_port;
    let good = App::connect("js", "good", port).await;
    let mut peer = App::connect("js", "peer", port).await;
    // Accepted before the attacks, delivered after them: custody must survive.
    for i in 0..200 {
        good.send("js", "offline", "held", json!({"seq": i})).await;
    }
    still_serving(&good, &mut peer, 0).await;
    let baseline = t.node("js").metric("medlink_connections_open");

    // 1. Garbage bytes, before and after CONNECT, on TCP and WebSocket.
    let blobs: [&[u8]; 4] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff; 64],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x00, 0x00, 0x00],
    ];
    for blob in blobs {
        let mut s = dial(port);
        let _ = s.write_all(blob);
        assert!(s.recv().is_none(), "garbage gets no answer but a close");
        let mut w = WsWire::dial(ws_port);
        let _ = w.send(blob);
        assert!(w.recv().is_none());
    }
    let mut s = logged_in(port, 4, "evil-1", "evil");
    let _ = s.write_all(&[0xf0, 0x00, 0x13, 0x37]);
    assert!(
        s.recv().is_none(),
        "a reserved packet type closes the connection"
    );
    // A packet only servers send (UNSUBACK once panicked rumqttd's v5 decoder, which would
    // have skipped the connection's cleanup): v5 is told "malformed", then closed.
    let mut s = logged_in(port, 5, "evil-1b", "evil");
    let _ = s.write_all(&[0xb0, 0x03, 0x00, 0x01, 0x00]);
    let (kind, body) = s.recv().expect("DISCONNECT");
    assert_eq!((kind, body[0]), (0xE0, 0x81));
    assert!(s.recv().is_none());
    still_serving(&good, &mut peer, 1).await;

    // 2. Truncated packets: a CONNECT cut short and closed; a PUBLISH that promises more
    // than it sends and then hangs.
    let full = connect(4, "evil-2", "evil", PASSWORD, 30);
    let mut s = dial(port);
    let _ = s.write_all(&full[..full.len() / 2]);
    drop(s);
    let mut s = dial(port);
    assert_eq!(
        handshake(&mut s, &connect(4, "evil-3", "evil", PASSWORD, 2)),
        Some(0)
    );
    let _ = s.write_all(&[0x32, 0xe8, 0x07, 0x00, 0x03, b'a']);
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    assert!(
        s.recv().is_none(),
        "a stalled packet ends with the keepalive"
    );
    still_serving(&good, &mut peer, 2).await;

    // 3. Oversized: the declared length alone gets the connection dropped (v5: 0x95 first),
    // long before that many bytes arrive.
    let mut s = logged_in(port, 5, "evil-4", "evil");
    let mut header = vec![0x32];
    varint(200 * 1024 * 1024, &mut header);
    let _ = s.write_all(&header);
    let _ = s.write_all(&[0u8; 1024]);
    let (kind, body) = s.recv().expect("DISCONNECT");
    assert_eq!(
        (kind, body[0]),
        (0xE0, 0x95),
        "v5 is told: packet too large"
    );
    // and a payload over the command limit is refused with a reason
    let mut s = logged_in(port, 5, "evil-5", "evil");
    let huge = vec![b'x'; 100 * 1024];
    assert_eq!(puback_code(&mut s, 5, "org/js/evil/out", 1, &huge), 0x99);
    still_serving(&good, &mut peer, 3).await;

    drop(s);

    // 4. Invalid UTF-8 in a topic: no topic at all, so nothing is routed.
    let mut s = logged_in(port, 4, "evil-6", "evil");
    let _ = s.send(&publish(4, b"org/js/\xff\xfe/out", 1, b"{}", None));
    let _ = s.recv();
    drop(s);
    let mut s = logged_in(port, 5, "evil-7", "evil");
    let _ = s.send(&publish(5, b"org/js/evil/\xc3\x28", 1, b"{}", None));
    let _ = s.recv();
    drop(s);
    // and in the username
    let mut s = dial(port);
    let mut bad_user = connect(4, "evil-8", "evil", PASSWORD, 30);
    let at = bad_user.windows(4).position(|w| w == b"evil").unwrap();
    bad_user[at + 5] = 0xff; // inside "evil-8"'s client id or the username: both must fail safe
    let _ = s.write_all(&bad_user);
    let _ = s.recv();
    still_serving(&good, &mut peer, 4).await;

    // 5. A CONNECT flood: 400 clients connecting at once, half of them resetting right
    // after CONNECT.
    let mut tasks = Vec::new();
    for i in 0..400u32 {
        tasks.push(tokio::task::spawn_blocking(move || {
            let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) else {
                return false;
            };
            s.set_read_timeout(Some(Duration::from_secs(20))).ok();
            let id = format!("flood-{i}");
            if i % 2 == 0 {
                let _ = s.write_all(&connect(4, &id, "evil", PASSWORD, 30));
                let _ = socket2::SockRef::from(&s).set_linger(Some(Duration::ZERO));
                return true; // RST
            }
            handshake(&mut s, &connect(4, &id, "evil", PASSWORD, 30)) == Some(0)
        }));
    }
    let mut ok = 0;
    for t in tasks {
        ok += t.await.unwrap() as usize;
    }
    assert!(ok >= 399, "flood clients connect ({ok}/400)");
    still_serving(&good, &mut peer, 5).await;

    // 6. Half-open connections: 200 sockets that never say anything are closed by the
    // connect timeout; open connections return to where they were.
    let idle: Vec<TcpStream> = (0..200).map(|_| dial(port)).collect();
    std::thread::sleep(Duration::from_millis(300));
    let open = wait_metric_at_most(t.node("js"), "medlink_connections_open", baseline, 15);
    assert!(
        open <= baseline,
        "half-open connections linger: {open} open, baseline {baseline}"
    );
    drop(idle);
    still_serving(&good, &mut peer, 6).await;

    let node = t.node("js");
    assert!(node.is_running(), "the node survived");
    assert!(node.metric("medlink_malformed_total") >= 5.0);
    assert!(node.metric("medlink_oversized_total") >= 1.0);
    assert!(node.metric("medlink_handshake_timeouts_total") >= 200.0);

    // Nothing accepted was lost: the offline client gets all 200, once each, in order.
    let mut offline = App::connect("js", "offline", port).await;
    let mut seqs = Vec::new();
    while seqs.len() < 200 {
        let m = offline.expect_cmd(10).await;
        seqs.push(m["params"]["seq"].as_u64().unwrap());
    }
    assert!(offline.recv(1).await.is_none());
    assert_eq!(
        audit_sequence(&seqs, 200),
        (0, 0, 0),
        "lost, duplicates, reordered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_consumer_is_dropped_and_gets_everything_when_it_reads_again() {
    let mut s = spec("js", None, &["sender", "slow"]);
    s.limits = "write_timeout_ms = 1000\n".into();
    let mut t = Tree::start(&[s]);
    let port = t.node("js").port;
    // A subscriber with a tiny receive buffer that never reads.
    let sock = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    sock.set_recv_buffer_size(4096).unwrap();
    sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
        .unwrap();
    let mut slow: TcpStream = sock.into();
    slow.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    assert_eq!(
        handshake(&mut slow, &connect(4, "slow-1", "slow", PASSWORD, 0)),
        Some(0)
    );
    assert_eq!(suback_codes(&mut slow, 4, 1, &["org/js/slow/cmd"]), [1]);
    let sender = App::connect("js", "sender", port).await;
    let filler = "x".repeat(32 * 1024);
    let n = 300u64;
    for i in 0..n {
        sender
            .send("js", "slow", "bulk", json!({"seq": i, "filler": filler}))
            .await;
    }
    // The node stops waiting for the stalled reader after the write timeout.
    let deadline = Instant::now() + Duration::from_secs(30);
    while t.node("js").metric("medlink_slow_consumers_total") < 1.0 {
        assert!(
            Instant::now() < deadline,
            "the slow consumer was never dropped"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(slow);
    // Reading again, it gets every command exactly once, in order.
    let mut reader = App::connect("js", "slow", port).await;
    let mut seqs = Vec::new();
    while (seqs.len() as u64) < n {
        let m = reader.expect_cmd(15).await;
        seqs.push(m["params"]["seq"].as_u64().unwrap());
    }
    if let Some(extra) = reader.recv(1).await {
        panic!(
            "received {} {} again, after {seqs:?}",
            extra.topic, extra.json["params"]["seq"]
        );
    }
    assert_eq!(
        audit_sequence(&seqs, n),
        (0, 0, 0),
        "lost, duplicates, reordered"
    );
    assert!(t.node("js").log_text().contains("slow consumer dropped"));
}
