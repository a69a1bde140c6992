//! Security: the ACL matrix (every identity class × topic class × publish/subscribe, over TCP
//! and WebSocket, MQTT 3.1.1 and 5, with real mosquitto clients where they can go), TLS (clear
//! text on a TLS port, a foreign CA, a whole tree on TLS), spoofed senders, brute force, and
//! the limits (rate, connections per identity, wills, topic aliases).

use crate::common;

use std::process::Command;
use std::time::{Duration, Instant};

use common::raw::*;
use common::*;
use serde_json::json;

/// Identities of the matrix node `js`: two clients, an operator, a child node.
fn matrix_node() -> Tree {
    let mut s = spec("js", None, &["c1", "c2"]);
    s.limits = "max_connections_per_identity = 1000\n".into();
    // js.k is only declared (its identity exists at js); the test speaks for it.
    let child = spec("js.k", Some("js"), &[]);
    let mut t = Tree::new_tls(&[s, child]);
    t.node("js").start();
    t
}

/// (identity, filter, allowed)
const SUBSCRIBE: &[(&str, &str, bool)] = &[
    ("c1", "org/js/c1/cmd", true),
    ("c1", "org/js/c1/receipt", true),
    ("c1", "$share/g/org/js/c1/cmd", true),
    ("c1", "org/js/c2/cmd", false),
    ("c1", "org/js/c2/receipt", false),
    ("c1", "org/js/c1/out", false),
    ("c1", "org/js/+/cmd", false),
    ("c1", "org/#", false),
    ("c1", "#", false),
    ("c1", "$share/g/org/js/c2/cmd", false),
    ("c1", "link/js.k/down", false),
    ("c1", "$SYS/#", false),
    ("ops", "org/#", true),
    ("ops", "org/js/c2/cmd", true),
    ("ops", "#", false),
    ("ops", "link/#", false),
    ("ops", "link/js.k/down", false),
    ("js.k", "link/js.k/down", true),
    ("js.k", "link/js.z/down", false),
    ("js.k", "link/+/down", false),
    ("js.k", "org/js/c1/cmd", false),
    ("js.k", "org/#", false),
];

/// (identity, topic, allowed)
const PUBLISH: &[(&str, &str, bool)] = &[
    ("c1", "org/js/c1/out", true),
    ("c1", "org/js/c2/out", false),
    ("c1", "org/js/c1/cmd", false),
    ("c1", "org/js/c2/cmd", false),
    ("c1", "org/js/c1/receipt", false),
    ("c1", "link/js.k/up", false),
    ("ops", "org/js/c1/out", false),
    ("ops", "org/js/c1/cmd", false),
    ("js.k", "link/js.k/up", true),
    ("js.k", "link/js.z/up", false),
    ("js.k", "link/js.k/down", false),
    ("js.k", "org/js/c1/out", false),
];

const COMMAND: &str = r#"{"to":{"node":"js","client":"c2"},"cmd":"acl.probe"}"#;

/// What the node decided about a publish, from the PUBACK (v5) and the ACL counter (both).
fn publish_allowed(node: &NodeProc, wire: &mut impl Wire, level: u8, topic: &str) -> bool {
    let before = node.metric("medlink_acl_publish_denied_total");
    let code = puback_code(wire, level, topic, 7, COMMAND.as_bytes());
    let after = node.metric("medlink_acl_publish_denied_total");
    let denied = after > before;
    if level == 5 {
        assert_eq!(
            code == 0x87,
            denied,
            "v5 PUBACK {code:#x} disagrees with the counter for {topic}"
        );
    }
    !denied
}

fn run_matrix(node: &NodeProc, transport: &str, level: u8) -> Vec<String> {
    let mut wrong = Vec::new();
    let open = |who: &str, tag: &str| -> Box<dyn WireDyn> {
        let id = format!("{who}-{transport}-{level}-{tag}");
        let mut w: Box<dyn WireDyn> = match transport {
            "tcp" => Box::new(dial(node.plain_port)),
            "ws" => Box::new(WsWire::dial(node.plain_ws_port)),
            other => panic!("transport {other}"),
        };
        let code = w.handshake_dyn(&connect(level, &id, who, PASSWORD, 30));
        assert_eq!(code, Some(0), "{id} could not log in");
        w
    };
    for (who, filter, allowed) in SUBSCRIBE {
        let mut w = open(who, "sub");
        let codes = w.suback_dyn(level, 1, &[filter]);
        let granted = codes.first().is_some_and(|c| *c < 0x80);
        let refusal = if level == 5 { 0x87 } else { 0x80 };
        if granted != *allowed || (!granted && codes[0] != refusal) {
            wrong.push(format!(
                "{transport} v{level}: {who} SUBSCRIBE {filter}: got {codes:?}, expected {}",
                if *allowed { "grant" } else { "refusal" }
            ));
        }
    }
    for (who, topic, allowed) in PUBLISH {
        let mut w = open(who, "pub");
        let got = w.publish_allowed_dyn(node, level, topic);
        if got != *allowed {
            wrong.push(format!(
                "{transport} v{level}: {who} PUBLISH {topic}: allowed={got}, expected {allowed}"
            ));
        }
    }
    wrong
}

/// Object-safe wrapper so one matrix loop drives TCP and WebSocket wires.
trait WireDyn {
    fn handshake_dyn(&mut self, connect: &[u8]) -> Option<u8>;
    fn suback_dyn(&mut self, level: u8, pkid: u16, filters: &[&str]) -> Vec<u8>;
    fn publish_allowed_dyn(&mut self, node: &NodeProc, level: u8, topic: &str) -> bool;
}

impl<W: Wire> WireDyn for W {
    fn handshake_dyn(&mut self, connect: &[u8]) -> Option<u8> {
        handshake(self, connect)
    }
    fn suback_dyn(&mut self, level: u8, pkid: u16, filters: &[&str]) -> Vec<u8> {
        suback_codes(self, level, pkid, filters)
    }
    fn publish_allowed_dyn(&mut self, node: &NodeProc, level: u8, topic: &str) -> bool {
        publish_allowed(node, self, level, topic)
    }
}

/// Gives the (certificate-only) child identity a password too, so raw and mosquitto clients
/// can speak for it.
fn add_child_password(t: &mut Tree) {
    let creds = t.node("js").credentials.clone();
    let text = std::fs::read_to_string(&creds).unwrap();
    let text = text.replacen(
        "name = \"js.k\"\nrole = \"node\"\n",
        &format!(
            "name = \"js.k\"\nrole = \"node\"\npassword_hash = \"{}\"\n",
            password_hash()
        ),
        1,
    );
    std::fs::write(&creds, text).unwrap();
    // the node re-reads the file within a second
    std::thread::sleep(Duration::from_millis(1500));
}

#[test]
fn acl_matrix_over_tcp_and_websocket_v311_and_v5() {
    let mut t = matrix_node();
    add_child_password(&mut t);
    let node = t.node("js");
    let mut wrong = Vec::new();
    for transport in ["tcp", "ws"] {
        for level in [4u8, 5] {
            wrong.extend(run_matrix(node, transport, level));
        }
    }
    if !wrong.is_empty() {
        t.dump_logs();
        panic!("ACL matrix mismatches:\n{}", wrong.join("\n"));
    }
}

/// `mosquitto_sub -d` prints the SUBACK codes; returns them.
fn mosquitto_suback(port: u16, ca: &std::path::Path, v: &str, who: &str, filter: &str) -> String {
    let out = Command::new("mosquitto_sub")
        .args(["-V", v, "-h", "localhost", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(ca)
        .args(["-u", who, "-P", PASSWORD, "-t", filter, "-d", "-W", "1"])
        .output()
        .expect("mosquitto_sub runs (apt install mosquitto-clients)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| {
            l.split_once("Subscribed (mid: 1): ")
                .map(|(_, c)| c.trim().to_string())
        })
        .unwrap_or_else(|| format!("no SUBACK: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

/// `mosquitto_pub -d` at QoS 1; returns the PUBACK line.
fn mosquitto_pub(port: u16, ca: &std::path::Path, v: &str, who: &str, topic: &str) -> String {
    let out = Command::new("mosquitto_pub")
        .args(["-V", v, "-h", "localhost", "-p", &port.to_string()])
        .arg("--cafile")
        .arg(ca)
        .args([
            "-u", who, "-P", PASSWORD, "-t", topic, "-q", "1", "-m", COMMAND, "-d",
        ])
        .output()
        .expect("mosquitto_pub runs");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find(|l| l.contains("PUBACK"))
        .map(str::to_string)
        .unwrap_or_else(|| format!("no PUBACK: {text}{}", String::from_utf8_lossy(&out.stderr)))
}

#[test]
fn acl_matrix_with_mosquitto_clients_over_tls_v311_and_v5() {
    let mut t = matrix_node();
    add_child_password(&mut t);
    let ca = t.ca();
    let node = t.node("js");
    let mut wrong = Vec::new();
    for v in ["mqttv311", "mqttv5"] {
        let refusal = if v == "mqttv5" { "135" } else { "128" };
        for (who, filter, allowed) in SUBSCRIBE {
            let got = mosquitto_suback(node.port, &ca, v, who, filter);
            let ok = if *allowed {
                got == "1" || got == "0"
            } else {
                got == refusal
            };
            if !ok {
                wrong.push(format!("{v}: {who} SUBSCRIBE {filter}: SUBACK {got}"));
            }
        }
        for (who, topic, allowed) in PUBLISH {
            let before = node.metric("medlink_acl_publish_denied_total");
            let line = mosquitto_pub(node.port, &ca, v, who, topic);
            let denied = node.metric("medlink_acl_publish_denied_total") > before;
            let v5_agrees = v != "mqttv5" || line.contains("RC:135") == denied;
            if denied == *allowed || !v5_agrees || line.starts_with("no PUBACK") {
                wrong.push(format!(
                    "{v}: {who} PUBLISH {topic}: denied={denied}, {line}"
                ));
            }
        }
    }
    if !wrong.is_empty() {
        t.dump_logs();
        panic!("ACL matrix mismatches:\n{}", wrong.join("\n"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_sender_is_never_delivered_as_that_sender() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2", "victim"])]);
    let port = t.node("js").port;
    let mut c1 = App::connect("js", "c1", port).await;
    let mut victim = App::connect("js", "victim", port).await;
    // c1 claims to be c2, then sends honestly.
    c1.publish_raw(
        json!({"from": {"node": "js", "client": "c2"}, "to": {"node": "js", "client": "victim"},
               "cmd": "transfer.patient", "params": {"n": 1}})
        .to_string(),
    )
    .await;
    c1.send("js", "victim", "honest", json!({"n": 2})).await;
    let got = victim.expect_cmd(10).await;
    assert_eq!(
        got["cmd"], "honest",
        "the forged command must not arrive: {got}"
    );
    assert_eq!(got["from"]["client"], "c1");
    let receipt = c1.expect_receipt(10).await;
    assert_eq!(receipt["params"]["status"], "rejected", "{receipt}");
    assert!(
        receipt["params"]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("from"),
        "{receipt}"
    );
    assert!(victim.recv(1).await.is_none(), "nothing else arrives");
    t.node("js").stop();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_whole_tree_runs_on_tls_with_certificate_links_including_wss() {
    let specs = [
        spec("js", None, &["prov"]),
        spec("js.nj", Some("js"), &["hosp"]),
        spec("js.nj.gl", Some("js.nj"), &[]),
        spec("js.nj.gl.t3", Some("js.nj.gl"), &["clinic"]),
    ];
    let mut t = Tree::new_tls(&specs);
    // The county dials the city over secure WebSocket; the rest over MQTT/TLS.
    let city_wss = t.node("js.nj").ws_port;
    t.set_parent_addresses("js.nj.gl", &[format!("wss://localhost:{city_wss}/mqtt")]);
    for s in &specs {
        t.node(&s.id).start();
    }
    let ca = t.ca();
    let mut clinic =
        App::connect_tls("js.nj.gl.t3", "clinic", t.node("js.nj.gl.t3").port, &ca).await;
    let hosp = App::connect_tls("js.nj", "hosp", t.node("js.nj").port, &ca).await;
    let mut prov = App::connect_tls("js", "prov", t.node("js").port, &ca).await;
    clinic.send("js", "prov", "up", json!({"n": 1})).await;
    let got = prov.expect_cmd(20).await;
    assert_eq!(trail(&got), ["js.nj.gl.t3", "js.nj.gl", "js.nj", "js"]);
    hosp.send("js.nj.gl.t3", "clinic", "down", json!({"n": 2}))
        .await;
    let got = clinic.expect_cmd(20).await;
    assert_eq!(got["cmd"], "down");
    assert_eq!(trail(&got), ["js.nj", "js.nj.gl", "js.nj.gl.t3"]);
    for s in &specs {
        assert_eq!(t.node(&s.id).metric("medlink_tls_failures_total"), 0.0);
    }
    for s in specs.iter().rev() {
        assert_eq!(t.node(&s.id).stop(), Some(0));
    }
}

#[test]
fn clear_text_on_a_tls_port_and_a_foreign_ca_are_refused() {
    let mut t = Tree::new_tls(&[spec("js", None, &["c1"])]);
    t.node("js").start();
    let port = t.node("js").port;
    // Clear-text MQTT on the TLS port: no CONNACK, ever.
    let mut s = dial(port);
    s.set_read_timeout(Some(Duration::from_secs(3))).unwrap();
    assert_eq!(
        handshake(&mut s, &connect(4, "c1", "c1", PASSWORD, 30)),
        None,
        "a clear-text CONNECT on the TLS port must not be answered"
    );
    // mosquitto_pub without the CA fails; with it, it works.
    let other = t.dir.path().join("other");
    let (code, _, err) = medlink(&["certs", "--dir", other.to_str().unwrap(), "js.k", "c1"]);
    assert_eq!(code, 0, "{err}");
    let pub_with = |ca: &std::path::Path, extra: &[&str]| {
        Command::new("mosquitto_pub")
            .args(["-h", "localhost", "-p", &port.to_string(), "--cafile"])
            .arg(ca)
            .args(["-u", "c1", "-P", PASSWORD, "-t", "org/js/c1/out", "-q", "1"])
            .args(["-m", r#"{"to":{"node":"js","client":"c1"},"cmd":"x"}"#])
            .args(extra)
            .status()
            .expect("mosquitto_pub runs")
            .success()
    };
    assert!(
        !pub_with(&other.join("ca.crt"), &[]),
        "a client trusting another CA must not accept the node's certificate"
    );
    assert!(pub_with(&t.ca(), &[]), "the right CA works");
    // A client certificate from another CA is refused at the handshake, even with a good
    // password.
    let foreign_cert = other.join("c1.crt");
    let foreign_key = other.join("c1.key");
    assert!(
        !pub_with(
            &t.ca(),
            &[
                "--cert",
                foreign_cert.to_str().unwrap(),
                "--key",
                foreign_key.to_str().unwrap()
            ]
        ),
        "a client certificate from another CA must be refused"
    );
    assert!(t.node("js").metric("medlink_tls_failures_total") >= 2.0);
    assert_eq!(t.node("js").stop(), Some(0));
}

#[test]
fn a_child_with_a_certificate_from_another_ca_cannot_link() {
    let mut t = Tree::new_tls(&[spec("js", None, &[]), spec("js.k", Some("js"), &[])]);
    // The child presents a certificate with the right name from the wrong CA.
    t.give_foreign_certificate("js.k");
    t.node("js").start();
    t.node("js.k").start();
    std::thread::sleep(Duration::from_secs(3));
    let root_log = t.node("js").log_text();
    assert!(
        !root_log.contains("child link up"),
        "a foreign certificate must not open the link:\n{root_log}"
    );
    assert!(t.node("js").metric("medlink_tls_failures_total") >= 1.0);
}

#[test]
fn repeated_bad_passwords_are_slowed_and_counted_and_the_right_one_still_works() {
    let mut t = Tree::start(&[spec("js", None, &["c1"])]);
    let port = t.node("js").port;
    let mut slowest = Duration::ZERO;
    for i in 0..8 {
        let started = Instant::now();
        let code = connack_code(port, 4, &format!("guess-{i}"), "c1", "wrong-password", 30);
        assert_eq!(
            code,
            Some(4),
            "attempt {i}: bad password refused with code 4"
        );
        slowest = slowest.max(started.elapsed());
    }
    // The throttle makes later attempts wait (3 free failures, then 250 ms doubling).
    assert!(
        slowest >= Duration::from_millis(500),
        "bad passwords were not slowed down (slowest attempt {slowest:?})"
    );
    let node = t.node("js");
    assert!(node.metric("medlink_login_failures_total") >= 8.0);
    assert!(node.metric("medlink_login_throttled_total") >= 1.0);
    assert_eq!(
        connack_code(port, 5, "right", "c1", PASSWORD, 30),
        Some(0),
        "the right password still works after the guesses"
    );
    assert!(node.log_text().contains("login failed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publishes_over_the_rate_are_refused_and_accepted_ones_all_arrive() {
    let mut s = spec("js", None, &["c1", "c2"]);
    s.limits = "rate_per_second = 5\nrate_burst = 10\n".into();
    let mut t = Tree::start(&[s]);
    let port = t.node("js").port;
    let mut c2 = App::connect("js", "c2", port).await;
    let mut w = logged_in(port, 5, "c1-raw", "c1");
    let mut accepted = Vec::new();
    let mut limited = 0;
    for i in 0..40u16 {
        let body = json!({"id": format!("rate-{i}"), "to": {"node": "js", "client": "c2"}, "cmd": "burst"});
        match puback_code(
            &mut w,
            5,
            "org/js/c1/out",
            i + 1,
            body.to_string().as_bytes(),
        ) {
            0 => accepted.push(format!("rate-{i}")),
            0x97 => limited += 1,
            other => panic!("unexpected PUBACK reason {other:#x}"),
        }
    }
    assert!(limited > 0, "the burst of 40 must exceed 10 + 5/s");
    assert!(accepted.len() >= 10, "the burst allowance is honoured");
    let mut got = Vec::new();
    while got.len() < accepted.len() {
        let m = c2.expect_cmd(10).await;
        got.push(m["id"].as_str().unwrap().to_string());
    }
    assert_eq!(
        got, accepted,
        "every accepted command arrives once, in order"
    );
    assert!(c2.recv(1).await.is_none(), "no refused command arrives");
    let node = t.node("js");
    assert_eq!(node.metric("medlink_rate_limited_total"), limited as f64);
    assert!(node.log_text().contains("rate limit"));
}

#[test]
fn connections_per_identity_are_capped() {
    let mut s = spec("js", None, &["c1", "c2"]);
    s.limits = "max_connections_per_identity = 2\n".into();
    let mut t = Tree::start(&[s]);
    let port = t.node("js").port;
    let mut keep = Vec::new();
    for i in 0..2 {
        keep.push(logged_in(port, 4, &format!("c1-{i}"), "c1"));
    }
    assert_eq!(connack_code(port, 4, "c1-x", "c1", PASSWORD, 30), Some(3));
    assert_eq!(
        connack_code(port, 5, "c1-y", "c1", PASSWORD, 30),
        Some(0x97)
    );
    // Reconnecting with a live client id is a takeover, not a third connection.
    assert_eq!(connack_code(port, 4, "c1-0", "c1", PASSWORD, 30), Some(0));
    // Other identities are not affected.
    assert_eq!(connack_code(port, 4, "c2-0", "c2", PASSWORD, 30), Some(0));
    assert!(
        t.node("js")
            .metric("medlink_identity_connection_limit_total")
            >= 2.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wills_on_foreign_topics_are_removed_and_own_outbox_wills_are_sent() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").port;
    let mut c2 = App::connect("js", "c2", port).await;
    // Connects as c1 with a will, then dies without DISCONNECT.
    let die_with_will = |id: &str, topic: &[u8], payload: &[u8]| {
        let mut w = dial(port);
        let will = Will { topic, payload };
        let login = Some(("c1", PASSWORD));
        assert_eq!(
            handshake(&mut w, &connect_full(4, id, login, 30, Some(will))),
            Some(0)
        );
    };
    // A will aimed straight at c2's inbox: removed at CONNECT.
    let forged = br#"{"from":{"node":"js","client":"c1"},"cmd":"forged"}"#;
    die_with_will("c1-a", b"org/js/c2/cmd", forged);
    // A will on its own outbox: a command like any other, sent when the connection dies.
    let will = br#"{"to":{"node":"js","client":"c2"},"cmd":"clinic.offline"}"#;
    die_with_will("c1-b", b"org/js/c1/out", will);
    let got = c2.expect_cmd(10).await;
    assert_eq!(got["cmd"], "clinic.offline");
    assert_eq!(got["from"]["client"], "c1");
    assert!(c2.recv(1).await.is_none(), "the foreign will never arrives");
    assert_eq!(t.node("js").metric("medlink_wills_removed_total"), 1.0);
}

#[test]
fn a_topic_alias_is_refused_so_it_cannot_stand_in_for_a_denied_topic() {
    let mut t = Tree::start(&[spec("js", None, &["c1", "c2"])]);
    let port = t.node("js").port;
    let mut w = logged_in(port, 5, "c1-alias", "c1");
    w.send(&publish(5, b"org/js/c2/cmd", 1, b"{}", Some(1)))
        .unwrap();
    let (kind, body) = w.recv().expect("DISCONNECT");
    assert_eq!(kind, 0xE0, "expected DISCONNECT");
    assert_eq!(body[0], 0x94, "reason: topic alias invalid");
    assert!(w.recv().is_none(), "connection closed");
    assert_eq!(
        connack_code(port, 5, "c1-after", "c1", PASSWORD, 30),
        Some(0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_child_node_cannot_pose_as_a_sender_outside_its_subtree() {
    // js.k is declared as a child of js; the test speaks for it on its link topics.
    let mut t = Tree::new(&[
        spec("js", None, &["prov", "victim"]),
        spec("js.k", Some("js"), &[]),
    ]);
    t.node("js").start();
    let port = t.node("js").port;
    let mut victim = App::connect("js", "victim", port).await;
    let mut link = logged_in(port, 4, "js.k", "js.k");
    assert_eq!(suback_codes(&mut link, 4, 1, &["link/js.k/down"]), [1]);
    let env = |id: &str, from_node: &str, from_client: &str| {
        json!({"id": id, "kind": "cmd", "from": {"node": from_node, "client": from_client},
               "to": {"node": "js", "client": "victim"}, "cmd": "order.drug", "params": null,
               "created_at": 1, "priority": 0, "hops": 1, "trail": []})
    };
    let frame = json!({"t": "batch", "epoch": 7, "floor": 1, "msgs": [
        {"p": 0, "s": 1, "e": env("forged-1", "js", "prov")},
        {"p": 1, "s": 2, "e": env("honest-1", "js.k.t1", "clinic")},
    ]});
    link.send(&publish(
        4,
        b"link/js.k/up",
        1,
        frame.to_string().as_bytes(),
        None,
    ))
    .unwrap();
    let got = victim.expect_cmd(10).await;
    assert_eq!(
        got["id"], "honest-1",
        "only the envelope from the child's subtree: {got}"
    );
    assert!(
        victim.recv(1).await.is_none(),
        "the forged one never arrives"
    );
    assert!(t
        .node("js")
        .log_text()
        .contains("claims a sender outside its subtree"));
}

#[test]
fn the_demo_runs_entirely_on_tls_from_the_example_configs() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let dir = tempfile::tempdir().unwrap();
    // The example configs themselves are secure: TLS listeners, TLS parents, no passwords.
    for tier in ["province", "city", "county", "township"] {
        for file in [format!("{tier}.toml"), format!("{tier}.credentials.toml")] {
            let text = std::fs::read_to_string(root.join("conf").join(&file)).unwrap();
            if file.ends_with(".credentials.toml") {
                assert!(
                    !text.contains("password ="),
                    "{file} holds a clear-text password"
                );
            } else {
                for bad in [
                    "kind = \"tcp\"",
                    "kind = \"ws\"",
                    "mqtt://",
                    "ws://",
                    "password",
                ] {
                    assert!(!text.contains(bad), "{file} contains `{bad}`");
                }
                assert!(text.contains("kind = \"tls\"") && text.contains("kind = \"wss\""));
            }
            std::fs::write(dir.path().join(&file), text).unwrap();
        }
    }
    let out = Command::new(BIN)
        .args(["demo", "--timeout", "90", "--conf-dir"])
        .arg(dir.path())
        .env("MEDLINK_LOG", "warn")
        .output()
        .expect("run medlink demo");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "demo failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("mqtts://127.0.0.1:18830"), "{stdout}");
    assert!(stdout.contains("second-opinion reply"), "{stdout}");
    assert!(
        stdout.contains("all 4 node processes stopped cleanly"),
        "{stdout}"
    );
}

#[test]
fn metrics_can_be_served_over_https_only() {
    let mut t = Tree::new_tls(&[spec("js", None, &["c1"])]);
    let node = t.node("js");
    let port = node.metrics_port;
    let text = std::fs::read_to_string(&node.config).unwrap();
    let text = text.replace("[metrics]\n", "[metrics]\ntls = true\n");
    std::fs::write(&node.config, text).unwrap();
    node.start();
    let curl = |url: &str, ca: Option<&std::path::Path>| {
        let mut c = Command::new("curl");
        c.args(["-sS", "--max-time", "5", url]);
        if let Some(ca) = ca {
            c.arg("--cacert").arg(ca);
        }
        c.output().expect("curl runs (apt install curl)")
    };
    let ok = curl(&format!("https://localhost:{port}/metrics"), Some(&t.ca()));
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert!(String::from_utf8_lossy(&ok.stdout).contains("medlink_connections_open"));
    let plain = curl(&format!("http://localhost:{port}/metrics"), None);
    assert!(
        !String::from_utf8_lossy(&plain.stdout).contains("medlink_"),
        "clear-text HTTP must not be answered on an HTTPS port"
    );
    let untrusted = curl(&format!("https://localhost:{port}/metrics"), None);
    assert!(
        !untrusted.status.success(),
        "the node's certificate is checked"
    );
}
