//! The broker front-end against real clients and raw sockets: mosquitto interop, the
//! listener-poisoning sequence from rumqttd, keepalive 0, refused client ids, the ACL,
//! garbage on the port, WebSocket clients and links, and configuration errors.

use crate::common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::raw::*;
use common::*;
use serde_json::json;

fn one_node(clients: &[&str]) -> Tree {
    Tree::start(&[spec("js", None, clients)])
}

// ---- tests --------------------------------------------------------------------------------

#[test]
fn connect_then_reset_then_same_id_again_does_not_poison_the_listener() {
    let mut tree = one_node(&["flaky", "fresh"]);
    let port = tree.node("js").port;
    for round in 0..20 {
        // CONNECT and an immediate TCP reset, before or right after the CONNACK
        let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        (&s).write_all(&connect(4, "flaky", "flaky", PASSWORD, 30))
            .unwrap();
        if round % 2 == 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        socket_reset(s);
        // the same client id again gets a CONNACK
        let code = connack_code(port, 4, "flaky", "flaky", PASSWORD, 30);
        if code != Some(0) {
            tree.dump_logs();
        }
        assert_eq!(code, Some(0), "round {round}");
    }
    // and a fresh client is still served
    assert_eq!(
        connack_code(port, 4, "fresh", "fresh", PASSWORD, 30),
        Some(0)
    );
    assert_eq!(
        connack_code(port, 5, "fresh-v5", "fresh", PASSWORD, 30),
        Some(0)
    );
}

/// Closes with RST instead of FIN (SO_LINGER 0).
fn socket_reset(s: TcpStream) {
    let sock = socket2::SockRef::from(&s);
    sock.set_linger(Some(Duration::ZERO)).unwrap();
    drop(s);
}

#[test]
fn keepalive_zero_is_accepted_and_bad_logins_and_ids_get_connack_refusals() {
    let mut tree = one_node(&["c"]);
    let port = tree.node("js").port;
    assert_eq!(
        connack_code(port, 4, "c-ka0", "c", PASSWORD, 0),
        Some(0),
        "keepalive 0"
    );
    assert_eq!(
        connack_code(port, 5, "c-ka0-v5", "c", PASSWORD, 0),
        Some(0),
        "keepalive 0 on v5"
    );
    // wrong password: 3.1.1 code 4, v5 reason 0x86
    assert_eq!(connack_code(port, 4, "c1", "c", "wrong", 30), Some(4));
    assert_eq!(connack_code(port, 5, "c1", "c", "wrong", 30), Some(0x86));
    // a client id the router refuses ('$') and one we refuse ('/'): identifier rejected
    assert_eq!(connack_code(port, 4, "bad$id", "c", PASSWORD, 30), Some(2));
    assert_eq!(connack_code(port, 4, "bad/id", "c", PASSWORD, 30), Some(2));
    assert_eq!(
        connack_code(port, 5, "bad/id", "c", PASSWORD, 30),
        Some(0x85)
    );
    // an identity with wildcards
    assert_eq!(connack_code(port, 4, "x", "a+b", PASSWORD, 30), Some(2));
    // the listener still serves
    assert_eq!(connack_code(port, 4, "c2", "c", PASSWORD, 30), Some(0));
}

#[test]
fn acl_refuses_foreign_subscriptions_per_filter() {
    let mut tree = one_node(&["a", "b"]);
    let port = tree.node("js").port;
    for level in [4u8, 5] {
        let mut s = dial(port);
        s.write_all(&connect(level, &format!("a-{level}"), "a", PASSWORD, 30))
            .unwrap();
        assert_eq!(read_packet(&mut s).unwrap().0, 0x20);
        s.write_all(&subscribe(
            level,
            7,
            &["org/js/a/cmd", "org/js/b/cmd", "$share/g/org/js/b/cmd", "#"],
        ))
        .unwrap();
        let (kind, body) = read_packet(&mut s).unwrap();
        assert_eq!(kind, 0x90);
        assert_eq!(&body[..2], &7u16.to_be_bytes());
        let codes = if level == 5 { &body[3..] } else { &body[2..] };
        let no = if level == 5 { 0x87 } else { 0x80 };
        assert_eq!(codes, &[1, no, no, no], "v{level} SUBACK codes");
    }
    // admin may watch everything
    let mut s = dial(port);
    s.write_all(&connect(4, "ops-1", "ops", PASSWORD, 30))
        .unwrap();
    read_packet(&mut s).unwrap();
    s.write_all(&subscribe(4, 1, &["org/#"])).unwrap();
    assert_eq!(read_packet(&mut s).unwrap().1[2], 1);
}

#[test]
fn garbage_on_the_mqtt_port_is_dropped_and_the_node_keeps_serving() {
    let mut tree = one_node(&["c"]);
    let port = tree.node("js").port;
    let junk: [&[u8]; 5] = [
        b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
        &[0xff; 64],
        &[0x10, 0xff, 0xff, 0xff, 0xff, 0x7f],
        &[0x10, 0x05, 0x00, 0x04, b'M'],
        &[
            0x10, 0x0c, 0x00, 0x04, b'M', b'Q', b'T', b'T', 0x03, 0xc2, 0, 0,
        ],
    ];
    for j in junk {
        let mut s = dial(port);
        let _ = s.write_all(j);
        let mut buf = [0u8; 64];
        // closed (or refused with a CONNACK), never hanging past the read timeout
        let _ = s.read(&mut buf);
    }
    // a CONNECT followed by garbage
    let mut s = dial(port);
    s.write_all(&connect(4, "c-g", "c", PASSWORD, 30)).unwrap();
    read_packet(&mut s).unwrap();
    s.write_all(&[0xf0, 0x00, 0x00]).unwrap();
    assert!(
        read_packet(&mut s).is_none(),
        "a protocol error must close the connection"
    );
    assert!(tree.node("js").is_running());
    assert_eq!(connack_code(port, 4, "c-after", "c", PASSWORD, 30), Some(0));
}

/// Publishes one message at QoS 1 as client `x` with Debian's mosquitto_pub.
fn mosquitto_pub(
    port: &str,
    id: &str,
    version: &str,
    topic: &str,
    body: &str,
) -> std::process::Output {
    Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            port,
            "-u",
            "x",
            "-P",
            PASSWORD,
            "-i",
            id,
        ])
        .args(["-V", version, "-q", "1", "-t", topic, "-m", body])
        .output()
        .expect("run mosquitto_pub")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_clients_interoperate() {
    if Command::new("mosquitto_sub")
        .arg("--help")
        .output()
        .is_err()
    {
        panic!("mosquitto-clients is not installed (apt-get install mosquitto-clients)");
    }
    let mut tree = one_node(&["x", "y"]);
    let port = tree.node("js").port.to_string();
    let mut y = App::connect("js", "y", tree.node("js").port).await;
    // an admin watches all inbox traffic with mosquitto_sub
    let watcher = Command::new("mosquitto_sub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            &port,
            "-u",
            "ops",
            "-P",
            PASSWORD,
            "-i",
            "ops-watch",
        ])
        .args(["-t", "org/#", "-v", "-C", "1", "-W", "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run mosquitto_sub");
    tokio::time::sleep(Duration::from_millis(500)).await;
    // a client publishes to its outbox with mosquitto_pub, at QoS 1 and on MQTT 5
    for version in ["mqttv311", "mqttv5"] {
        let body = json!({"to": {"node": "js", "client": "y"}, "cmd": "from-mosquitto", "params": {"v": version}});
        let out = mosquitto_pub(&port, "x-pub", version, "org/js/x/out", &body.to_string());
        assert!(
            out.status.success(),
            "mosquitto_pub: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let m = y.expect_cmd(10).await;
        assert_eq!(m["cmd"], json!("from-mosquitto"));
        assert_eq!(
            m["from"],
            json!({"node": "js", "client": "x"}),
            "from stamped from the login"
        );
        assert_eq!(m["params"]["v"], json!(version));
    }
    let out = watcher.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.starts_with("org/js/y/cmd "),
        "admin saw: {text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(text.contains("from-mosquitto"));
    // a client may not publish into someone's inbox directly: refused, nothing arrives
    let out = mosquitto_pub(&port, "x-pub2", "mqttv5", "org/js/y/cmd", "{}");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() || err.contains("authori"), "{err}");
    assert!(
        y.recv(1).await.is_none(),
        "a direct inbox publish was delivered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_clients_and_websocket_links_work() {
    let mut tree = Tree::new(&[spec("js", None, &["w"]), spec("js.a", Some("js"), &["c"])]);
    // make the child dial its parent over WebSocket
    let parent_ws = tree.node("js").ws_port;
    let cfg = tree.node("js.a").config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text = text.replace(
        &format!("mqtt://127.0.0.1:{}", tree.node("js").port),
        &format!("ws://127.0.0.1:{parent_ws}/mqtt"),
    );
    std::fs::write(&cfg, text).unwrap();
    tree.node("js").start();
    tree.node("js.a").start();
    let c = App::connect("js.a", "c", tree.node("js.a").port).await;
    // the receiving client itself is on WebSocket
    let mut opts = rumqttc::MqttOptions::new(
        "w-ws",
        format!("ws://127.0.0.1:{parent_ws}/mqtt"),
        parent_ws,
    );
    opts.set_transport(rumqttc::Transport::Ws);
    opts.set_credentials("w", PASSWORD);
    let (w, mut el) = rumqttc::AsyncClient::new(opts, 100);
    w.subscribe("org/js/w/cmd", rumqttc::QoS::AtLeastOnce)
        .await
        .unwrap();
    c.send("js", "w", "over-ws", json!({"n": 1})).await;
    let got = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            match el.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::Publish(p))) => {
                    return serde_json::from_slice::<serde_json::Value>(&p.payload).unwrap()
                }
                Ok(_) => {}
                Err(e) => panic!("websocket client: {e}"),
            }
        }
    })
    .await;
    let Ok(got) = got else {
        tree.dump_logs();
        panic!("no command over websocket within 15 s");
    };
    assert_eq!(got["cmd"], json!("over-ws"));
    assert_eq!(trail(&got), ["js.a", "js"]);
}

#[test]
fn bad_configuration_is_refused_with_the_file_and_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        ("[node]\nid = \"js\"\nbogus = 1\n", "bogus"),
        (
            "[node]\nid = \"js\"\ndurability = \"sometimes\"\n",
            "sometimes",
        ),
        ("[node]\nid = \"a..b\"\n", "node.id"),
        (
            "[node]\nid = \"js\"\n[[listener]]\nkind = \"udp\"\naddr = \"127.0.0.1:1\"\n",
            "udp",
        ),
        (
            "[node]\nid = \"js.x\"\n[parent]\naddresses = []\n",
            "parent.addresses",
        ),
        (
            "[node]\nid = \"js\"\n[limits]\nmax_payload = 0\n",
            "limits.max_payload",
        ),
        (
            "[node]\nid = \"js\"\n[limits]\nrate_per_second = -1\n",
            "limits.rate_per_second",
        ),
        // clear-text passwords in the config are gone for good
        (
            "[node]\nid = \"js\"\n[[identity]]\nname = \"c\"\npassword = \"p\"\nrole = \"client\"\n",
            "medlink passwd",
        ),
        // clear text off loopback needs an explicit opt-in
        (
            "[node]\nid = \"js\"\n[[listener]]\nkind = \"tcp\"\naddr = \"0.0.0.0:1883\"\n",
            "listener[0].kind",
        ),
        (
            "[node]\nid = \"js\"\n[[listener]]\nkind = \"tls\"\naddr = \"127.0.0.1:1883\"\n",
            "[tls]",
        ),
        (
            "[node]\nid = \"js\"\n[tls]\ncert = \"missing.crt\"\nkey = \"missing.key\"\n",
            "missing.crt",
        ),
        (
            "[node]\nid = \"js.x\"\n[parent]\naddresses = [\"mqtts://127.0.0.1:1\"]\ncert = \"a\"\nkey = \"b\"\n",
            "parent.ca",
        ),
        (
            "[node]\nid = \"js.x\"\n[parent]\naddresses = [\"mqtt://10.1.2.3:1883\"]\npassword_file = \"p\"\n",
            "parent.addresses[0]",
        ),
        (
            "[node]\nid = \"js\"\ncredentials = \"nowhere.toml\"\n",
            "node.credentials",
        ),
        ("[node]\n", "id"),
        // service groups
        (
            "[node]\nid = \"js\"\n[[service]]\nname = \"rad\"\nmembers = []\n",
            "service[0].members",
        ),
        (
            "[node]\nid = \"js\"\n[[service]]\nname = \"a/b\"\nmembers = [\"x\"]\n",
            "service[0].name",
        ),
        (
            "[node]\nid = \"js\"\n[[service]]\nname = \"rad\"\nmembers = [\"x\"]\nack_timeout_ms = 0\n",
            "service[0].ack_timeout_ms",
        ),
        (
            "[node]\nid = \"js\"\n[[service]]\nname = \"rad\"\nmembers = [\"x\"]\n[[service]]\nname = \"rad\"\nmembers = [\"y\"]\n",
            "service[1].name",
        ),
        (
            "[node]\nid = \"js\"\n[[service]]\nname = \"rad\"\nmember = [\"x\"]\n",
            "member",
        ),
    ];
    for (i, (text, key)) in cases.iter().enumerate() {
        let path = dir.path().join(format!("bad{i}.toml"));
        std::fs::write(&path, text).unwrap();
        let (code, _, err) = medlink(&["node", "--config", path.to_str().unwrap()]);
        assert_eq!(code, 2, "case {i}: {err}");
        assert!(
            err.contains(&format!("bad{i}.toml")),
            "case {i} names the file: {err}"
        );
        assert!(err.contains(key), "case {i} names '{key}': {err}");
    }
    let (code, _, err) = medlink(&["node", "--config", "/nonexistent/medlink.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/medlink.toml"), "{err}");
}

/// CPU seconds (user + system) a process has used so far.
fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("read /proc stat");
    let after = &stat[stat.rfind(')').expect("comm is parenthesised") + 2..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks: f64 = fields[11].parse::<f64>().unwrap() + fields[12].parse::<f64>().unwrap();
    ticks / 100.0
}

#[test]
fn running_out_of_file_descriptors_slows_accepting_instead_of_spinning() {
    let mut tree = Tree::new(&[spec("js", None, &["c"])]);
    tree.node("js").wrapper = vec!["prlimit".into(), "--nofile=64".into(), "--".into()];
    tree.node("js").start();
    let port = tree.node("js").port;
    let pid = tree.node("js").pid().unwrap();
    // Idle connections (no CONNECT) until the node has no descriptors left.
    let mut held = Vec::new();
    for _ in 0..120 {
        if let Ok(s) = TcpStream::connect(("127.0.0.1", port)) {
            held.push(s);
        }
    }
    std::thread::sleep(Duration::from_millis(500));
    let before = cpu_seconds(pid);
    std::thread::sleep(Duration::from_secs(3));
    let used = cpu_seconds(pid) - before;
    // A spinning accept loop burns a whole core (about 3 s here); backing off uses almost none.
    assert!(
        used < 1.0,
        "node used {used:.2} s of CPU in 3 s while out of descriptors"
    );
    let log = tree.node("js").log_text();
    let warnings = log.matches("accept failed").count();
    assert!(
        warnings > 0,
        "the node should report that accepting fails:\n{log}"
    );
    assert!(
        warnings < 50,
        "{warnings} accept warnings in a few seconds: the log is flooding"
    );
    // Once descriptors are free again, clients are served.
    drop(held);
    std::thread::sleep(Duration::from_millis(1500));
    assert_eq!(connack_code(port, 4, "c-after", "c", PASSWORD, 30), Some(0));
    assert!(tree.node("js").is_running());
}

#[test]
fn a_client_that_pings_outlives_its_keepalive_and_a_silent_one_is_closed() {
    let mut tree = one_node(&["pinger", "silent"]);
    let port = tree.node("js").port;
    // Keepalive 1 s: the node allows 1.5 s without a byte.
    let mut pinger = dial(port);
    let mut silent = dial(port);
    for (s, id) in [(&mut pinger, "pinger"), (&mut silent, "silent")] {
        assert_eq!(handshake(s, &connect(4, id, id, PASSWORD, 1)), Some(0));
    }
    // A PINGREQ every 0.4 s for 4 s, well past the limit as it stood at the start (the timer
    // is armed once and moved on when it finds bytes came meanwhile).
    let start = std::time::Instant::now();
    while start.elapsed() < Duration::from_secs(4) {
        pinger.write_all(&[0xC0, 0x00]).unwrap();
        let (kind, _) = pinger.recv().expect("a PINGRESP: still connected");
        assert_eq!(kind, 0xD0);
        std::thread::sleep(Duration::from_millis(400));
    }
    // The silent one was closed (EOF), not merely quiet (a read timeout).
    silent
        .set_read_timeout(Some(Duration::from_secs(2)))
        .unwrap();
    let mut buf = [0u8; 16];
    match silent.read(&mut buf) {
        Ok(0) => {}
        other => panic!("the silent client should have been closed: {other:?}"),
    }
}
