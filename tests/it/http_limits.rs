//! The HTTP ports hold the same line as the MQTT listeners (issue "Holes and defects found
//! from outside", the security probe): idle and half-sent connections are closed, one budget
//! of connections covers every port, streams are capped per identity, a stalled reader is
//! dropped, parallel password guesses are throttled, and bad requests get the right answer.

use crate::common;

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use common::http::{call, get_json, post_json, read, send, Login};
use common::raw::{connack_code, connect, dial, handshake};
use common::*;
use serde_json::{json, Value};

const PAT: Login = Some(("pat", PASSWORD));

/// Whether the server closed `s` within `within` (EOF or reset), reading whatever it sends.
fn closed_by_server(s: &mut TcpStream, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    s.set_read_timeout(Some(Duration::from_millis(200)))
        .unwrap();
    let mut buf = [0u8; 64 * 1024];
    let mut total = 0;
    while Instant::now() < deadline {
        match s.read(&mut buf) {
            Ok(0) => return true,
            Ok(n) => total += n,
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {}
            Err(_) => return true,
        }
    }
    eprintln!("still open after reading {total} bytes");
    false
}

fn node_with(limits: &str) -> Tree {
    let mut s = spec("js", None, &["pat", "other"]);
    s.limits = limits.into();
    Tree::start(&[s])
}

#[test]
fn idle_and_half_sent_http_connections_are_closed_on_every_http_port() {
    let mut tree = node_with("connect_timeout_ms = 1000");
    let node = tree.node("js");
    let mut held = Vec::new();
    for port in [node.http_port, node.metrics_port] {
        for i in 0..10 {
            let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
            if i % 2 == 1 {
                // A request line that never ends (the probe's slow-loris).
                s.write_all(b"GET /v1/tra").unwrap();
            }
            held.push((port, s));
        }
    }
    // A keep-alive connection that answered one request and then sits idle.
    let mut keep = TcpStream::connect(("127.0.0.1", node.http_port)).unwrap();
    keep.write_all(b"GET /v1/openapi.json HTTP/1.1\r\nHost: x\r\n\r\n")
        .unwrap();
    held.push((node.http_port, keep));
    for (port, s) in &mut held {
        assert!(
            closed_by_server(s, Duration::from_secs(6)),
            "a connection to port {port} was still open 6 s after a 1 s header timeout"
        );
    }
    // The ports still serve.
    assert_eq!(get_json(node.http_port, "/v1/transport", PAT).0, 200);
    assert!(http_get(node.metrics_port, "/metrics").contains("medlink_connections_open"));
}

/// The probe's HIGH finding: idle sockets on the HTTP port took every descriptor and all
/// listeners stopped answering. Now the HTTP port draws on the same connection budget as MQTT
/// (well below the descriptor limit) and its idle connections time out, so an MQTT client
/// still gets in while the flood is held.
#[test]
fn an_http_flood_cannot_take_the_descriptors_mqtt_needs() {
    let mut tree = Tree::new(&[{
        let mut s = spec("js", None, &["pat"]);
        s.limits = "max_connections = 120\nconnect_timeout_ms = 1000".into();
        s
    }]);
    tree.node("js").wrapper = vec!["prlimit".into(), "--nofile=256".into(), "--".into()];
    tree.node("js").start();
    let (http, mqtt) = (tree.node("js").http_port, tree.node("js").port);
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect(("127.0.0.1", http)).ok())
        .collect();
    assert!(flood.len() > 260, "the flood itself could not connect");
    let deadline = Instant::now() + Duration::from_secs(20);
    let mut code = None;
    while Instant::now() < deadline && code != Some(0) {
        code = connack_code(mqtt, 4, "during-flood", "pat", PASSWORD, 30);
    }
    assert_eq!(
        code,
        Some(0),
        "MQTT was not served while the HTTP flood was held"
    );
    let log = tree.node("js").log_text();
    assert!(
        !log.contains("Too many open files"),
        "the node ran out of descriptors:\n{log}"
    );
    drop(flood);
    assert_eq!(get_json(http, "/v1/transport", PAT).0, 200);
}

fn open_stream(port: u16) -> TcpStream {
    send(
        port,
        "GET",
        "/v1/stream",
        PAT,
        &[("Accept", "text/event-stream")],
        b"",
    )
}

/// Reads the status line of a response that stays open.
fn status_of(s: &mut TcpStream) -> u16 {
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        assert_eq!(s.read(&mut byte).expect("a status line"), 1, "closed early");
        head.push(byte[0]);
    }
    String::from_utf8_lossy(&head)
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("a status code")
}

#[test]
fn streams_are_capped_per_identity_and_a_reader_that_stops_reading_is_dropped() {
    let mut tree = node_with("max_connections_per_identity = 3\nwrite_timeout_ms = 1000");
    let port = tree.node("js").http_port;
    // Three event streams whose reader never reads (small receive buffers fill fast).
    let mut stalled: Vec<TcpStream> = (0..3)
        .map(|_| {
            let sock =
                socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
            sock.set_recv_buffer_size(4096).unwrap();
            sock.connect(&std::net::SocketAddr::from(([127, 0, 0, 1], port)).into())
                .unwrap();
            let mut s: TcpStream = sock.into();
            s.write_all(
                format!(
                    "GET /v1/stream HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {}\r\n\r\n",
                    common::http::basic("pat", PASSWORD)
                )
                .as_bytes(),
            )
            .unwrap();
            s
        })
        .collect();
    std::thread::sleep(Duration::from_millis(500));
    // The fourth, and a long-poll, are refused while three are open.
    let mut fourth = open_stream(port);
    assert_eq!(status_of(&mut fourth), 429);
    let (status, body) = get_json(port, "/v1/inbox?wait=1", PAT);
    assert_eq!(
        (status, body["code"].as_str()),
        (429, Some("too_many_streams")),
        "{body}"
    );
    // Another identity has its own slots.
    assert_eq!(
        get_json(port, "/v1/inbox", Some(("other", PASSWORD))).0,
        200
    );
    // Fill the stalled streams: ~8 MB each, beyond what the kernel buffers hold (4 MB).
    let big = "x".repeat(200 * 1024);
    for n in 0..40 {
        let (status, body) = post_json(
            port,
            "/v1/messages",
            Some(("other", PASSWORD)),
            &json!({"to": {"node": "js", "client": "pat"}, "cmd": "fill", "params": {"n": n, "pad": big}}),
        );
        assert_eq!(status, 202, "{body}");
    }
    // Let the full buffers stall the writes for longer than the timeout before looking.
    std::thread::sleep(Duration::from_secs(3));
    for s in &mut stalled {
        assert!(
            closed_by_server(s, Duration::from_secs(15)),
            "a stream that stopped reading was not dropped after the 1 s write timeout"
        );
    }
    // Their slots are free again.
    let mut again = open_stream(port);
    assert_eq!(status_of(&mut again), 200);
    // Nothing was lost: a reader that keeps up gets all 40 in order.
    let got = common::http::read_inbox(port, PAT, 40, 10);
    assert_eq!(got, (0..40).collect::<Vec<u64>>());
}

/// The probe's 40 simultaneous logins (39 wrong, then the right one) for one identity: only
/// the free attempts and those whose throttle slots fit under the 4 s cap are checked; the
/// rest are refused unchecked (MQTT 0x03, HTTP 429). Over MQTT and over HTTP.
#[test]
fn parallel_password_guesses_queue_behind_each_other() {
    let mut tree = node_with("");
    let (mqtt, http) = (tree.node("js").port, tree.node("js").http_port);
    let codes: Vec<Option<u8>> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..40)
            .map(|i| {
                s.spawn(move || {
                    let mut wire = dial(mqtt);
                    wire.set_read_timeout(Some(Duration::from_secs(15)))
                        .unwrap();
                    handshake(&mut wire, &connect(4, &format!("g{i}"), "pat", "wrong", 30))
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let checked = codes.iter().filter(|c| **c == Some(4)).count();
    let refused = codes.iter().filter(|c| **c == Some(3)).count();
    assert_eq!(checked + refused, 40, "{codes:?}");
    assert!(
        checked <= 10,
        "{checked} of 40 parallel guesses were checked: {codes:?}"
    );
    let statuses: Vec<u16> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..40)
            .map(|_| {
                s.spawn(move || {
                    call(http, "GET", "/v1/inbox", Some(("other", "wrong")), b"").status
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).collect()
    });
    let checked = statuses.iter().filter(|s| **s == 401).count();
    assert_eq!(checked + statuses.iter().filter(|s| **s == 429).count(), 40);
    assert!(
        checked <= 10,
        "{checked} of 40 parallel HTTP guesses checked"
    );
}

#[test]
fn type_errors_are_400_naming_the_field_and_auth_schemes_ignore_case() {
    let mut tree = node_with("");
    let port = tree.node("js").http_port;
    let to = json!({"node": "js", "client": "other"});
    for (body, field) in [
        (json!({"to": to, "cmd": "x", "ttl_ms": -1}), "ttl_ms"),
        (
            json!({"to": to, "cmd": "x", "receipts": ["rejected"]}),
            "receipts[0]",
        ),
        (json!({"to": to, "cmd": 7}), "cmd"),
        (
            json!([{"to": to, "cmd": "x", "ttl_ms": "soon"}]),
            "messages[0].ttl_ms",
        ),
    ] {
        let (status, answer) = post_json(port, "/v1/messages", PAT, &body);
        assert_eq!(status, 400, "{body} -> {answer}");
        assert_eq!(answer["field"], field, "{body} -> {answer}");
    }
    // Over the size limit is still 413.
    let big = json!({"to": to, "cmd": "x", "params": "y".repeat(300 * 1024)});
    assert_eq!(post_json(port, "/v1/messages", PAT, &big).0, 413);
    let lower = format!("basic {}", common::http::basic("pat", PASSWORD));
    let r = read(send(
        port,
        "GET",
        "/v1/inbox",
        None,
        &[("Authorization", &lower)],
        b"",
    ));
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
}

#[test]
fn a_wait_above_the_maximum_is_shortened_not_refused() {
    let mut tree = Tree::new(&[spec("js", None, &["pat"])]);
    let cfg = tree.node("js").config.clone();
    let toml = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(&cfg, toml.replace("[http]\n", "[http]\nmax_wait_s = 1\n")).unwrap();
    tree.node("js").start();
    let started = Instant::now();
    let (status, page) = get_json(tree.node("js").http_port, "/v1/inbox?wait=120", PAT);
    assert_eq!(status, 200, "{page}");
    assert_eq!(page["messages"], Value::Array(vec![]));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "waited {:?} for a 1 s maximum",
        started.elapsed()
    );
}

#[test]
fn plain_http_on_the_https_port_is_told_to_use_https() {
    let mut tree = Tree::new_tls(&[spec("js", None, &["pat"])]);
    tree.node("js").start();
    let r = call(tree.node("js").http_port, "GET", "/v1/transport", PAT, b"");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["code"], "tls_required", "{}", r.headers);
}

/// Reads one response with a `content-length` body from a kept-alive connection.
fn one_response(s: &mut TcpStream) -> (u16, Value) {
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        assert_eq!(
            s.read(&mut byte).expect("a response head"),
            1,
            "closed early"
        );
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let length: usize = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .unwrap_or_else(|| panic!("no content-length in {head}"))
        .trim()
        .parse()
        .unwrap();
    let mut body = vec![0u8; length];
    s.read_exact(&mut body).unwrap();
    (status, serde_json::from_slice(&body).expect("a JSON body"))
}

/// Long-polls and event streams are served apart from hyper (`bridge/src/http/waiting.rs`).
/// One keep-alive connection still mixes them with other requests, pipelined or not, in
/// order; a client that leaves in the middle of a wait gives its stream slot back at once;
/// and a bad login on a long-poll gets the same JSON 401 as anywhere else.
#[test]
fn waiting_and_other_requests_share_a_keep_alive_connection() {
    let mut tree = node_with("max_connections_per_identity = 1");
    let port = tree.node("js").http_port;
    let auth = |who: &str| {
        format!(
            "Authorization: Basic {}\r\n",
            common::http::basic(who, PASSWORD)
        )
    };
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let poll = |after: &str| {
        format!(
            "GET /v1/inbox?wait=0{after} HTTP/1.1\r\nHost: x\r\n{}\r\n",
            auth("pat")
        )
    };
    s.write_all(poll("").as_bytes()).unwrap();
    let (status, first) = one_response(&mut s);
    assert_eq!((status, &first["messages"]), (200, &json!([])), "{first}");
    // A POST on the same connection (hyper's from here on), then a long-poll again.
    let body = json!({"to": {"node": "js", "client": "pat"}, "cmd": "keep", "params": {"n": 1}})
        .to_string();
    write!(
        s,
        "POST /v1/messages HTTP/1.1\r\nHost: x\r\n{}content-type: application/json\r\ncontent-length: {}\r\n\r\n{body}",
        auth("other"),
        body.len()
    )
    .unwrap();
    assert_eq!(one_response(&mut s).0, 202);
    s.write_all(poll("").as_bytes()).unwrap();
    let (status, page) = one_response(&mut s);
    assert_eq!((status, common::http::ns(&page)), (200, vec![1]), "{page}");
    // Pipelined: a long-poll and a transport question in one write, answered in order, on a
    // fresh connection (so the long-poll is served without hyper).
    let mut p = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let cursor = page["cursor"].as_str().unwrap();
    write!(
        p,
        "{}GET /v1/transport HTTP/1.1\r\nHost: x\r\n{}\r\n",
        poll(&format!("&cursor={cursor}")),
        auth("pat")
    )
    .unwrap();
    let (status, empty) = one_response(&mut p);
    assert_eq!((status, &empty["messages"]), (200, &json!([])), "{empty}");
    let (status, transport) = one_response(&mut p);
    assert_eq!(status, 200, "{transport}");
    assert_eq!(transport["identity"], "pat", "{transport}");
    drop((s, p));
    // A long wait whose client leaves: the one slot of `pat` is free again at once.
    let mut waiting = TcpStream::connect(("127.0.0.1", port)).unwrap();
    waiting
        .write_all(
            format!(
                "GET /v1/inbox?wait=100 HTTP/1.1\r\nHost: x\r\n{}\r\n",
                auth("pat")
            )
            .as_bytes(),
        )
        .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let (status, busy) = get_json(port, "/v1/inbox", PAT);
    assert_eq!(
        (status, busy["code"].as_str()),
        (429, Some("too_many_streams")),
        "{busy}"
    );
    drop(waiting);
    let deadline = Instant::now() + Duration::from_secs(5);
    let status = loop {
        let status = get_json(port, "/v1/inbox", PAT).0;
        if status != 429 || Instant::now() > deadline {
            break status;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        status, 200,
        "the slot of a client that left was not given back"
    );
    // A wrong password on a long-poll and on an event stream: the API's JSON 401.
    for path in ["/v1/inbox?wait=5", "/v1/stream"] {
        let r = call(port, "GET", path, Some(("pat", "wrong")), b"");
        assert_eq!(
            (r.status, r.json()["code"].as_str()),
            (401, Some("unauthorized")),
            "{path}"
        );
    }
}
