//! Device tokens against real node processes: a patient with no line in the credentials file
//! logs in with a signed token over MQTT (rumqttc and mosquitto_sub), HTTP (Bearer: POST,
//! long-poll, event stream); commands queued for it before it ever connected wait for it;
//! expired, forged, unknown-kid, over-reaching (role, node) and unsigned tokens are refused
//! (CONNACK 0x86 / 4, HTTP 401 with a Bearer challenge) and counted; keys are rotated by
//! editing the config while the node runs.
//!
//! Failed logins are throttled per source address and per name, so each refused attempt here
//! comes from its own loopback address (127.0.0.N) and names its own subject: the refusals
//! must be the tokens' own, never the throttle's.

use crate::common;

use std::io::Read;
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use common::http::*;
use common::*;
use medlink_broker::token::{mint_hs256, now_s, Claims};
use serde_json::{json, Value};

const SECRET: &str = "hospital-token-secret-0123456789abcdef";
const OTHER_SECRET: &str = "not-the-hospital-secret-0123456789abcdef";
const NODE: &str = "js";

/// Writes `secret` to `name` in the tree's directory, readable by its owner only.
fn secret_file(tree: &Tree, name: &str, secret: &str) -> PathBuf {
    let path = tree.dir.path().join(name);
    std::fs::write(&path, format!("{secret}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
    }
    path
}

fn key_section(kid: &str, file: &Path, subjects: &str, roles: &str) -> String {
    format!(
        "\n[[token_key]]\nkid = \"{kid}\"\nalg = \"HS256\"\nsecret_file = \"{}\"\nsubjects = \"{subjects}\"\nroles = {roles}\n",
        file.display()
    )
}

/// A one-node tree (`js`, clients `desk`) whose config ends with `keys`.
fn node_with_keys(keys: impl FnOnce(&Tree) -> String) -> Tree {
    let mut t = Tree::new(&[spec(NODE, None, &["desk"])]);
    let extra = keys(&t);
    let cfg = t.node(NODE).config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap() + &extra;
    std::fs::write(&cfg, text).unwrap();
    t.node(NODE).start();
    t
}

/// `medlink token …`: the operators' way to mint, used for every ordinary token here.
fn cli_token(key: &Path, kid: &str, sub: &str, extra: &[&str]) -> String {
    let mut args = vec!["token", "--key-file", key.to_str().unwrap(), "--kid", kid];
    args.extend(["--sub", sub, "--ttl", "600"]);
    args.extend(extra);
    let (code, out, err) = medlink(&args);
    assert_eq!(code, 0, "medlink token: {err}");
    out.trim().to_string()
}

/// A token with any claims, signed in process (for what the CLI will not make: expired,
/// unknown claims, alg none).
fn signed(secret: &str, kid: &str, claims: &Claims) -> String {
    mint_hs256(secret.as_bytes(), kid, claims).unwrap()
}

/// A fresh loopback source address per refused attempt (see the module docs).
fn next_source() -> u8 {
    static NEXT: AtomicU8 = AtomicU8::new(10);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

fn dial_from(source: u8, port: u16) -> TcpStream {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    let from = std::net::SocketAddr::from(([127, 0, 0, source], 0));
    socket
        .bind(&from.into())
        .expect("bind a loopback source address");
    let to = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    socket.connect(&to.into()).expect("connect to the node");
    let s: TcpStream = socket.into();
    s.set_read_timeout(Some(Duration::from_secs(15))).unwrap();
    s
}

/// The CONNACK code for a CONNECT at protocol `level` (4 = 3.1.1, 5 = v5) with `user` and a
/// token as password, from a fresh source address.
fn connack(port: u16, level: u8, user: &str, token: &str) -> Option<u8> {
    let mut s = dial_from(next_source(), port);
    common::raw::handshake(&mut s, &common::raw::connect(level, "", user, token, 30))
}

/// An HTTP request with `Authorization: Bearer <token>`, from a fresh source address.
fn bearer(port: u16, method: &str, path: &str, token: &str, body: &[u8]) -> Reply {
    use std::io::Write;
    let mut s = dial_from(next_source(), port);
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nAuthorization: Bearer {token}\r\nContent-Length: {}\r\n",
        body.len()
    );
    if !body.is_empty() {
        req += "Content-Type: application/json\r\n";
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    s.write_all(body).unwrap();
    read(s)
}

fn token_metric(t: &mut Tree, result: &str) -> f64 {
    t.node(NODE).metric(&format!(
        "medlink_token_logins_total{{result=\"{result}\"}}"
    ))
}

fn cmd(to: &str, s: u64) -> Value {
    json!({"to": {"node": NODE, "client": to}, "cmd": "notify", "params": {"s": s}})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_patient_with_a_token_gets_what_was_queued_before_it_ever_connected() {
    let mut t = node_with_keys(|t| {
        let k = secret_file(t, "hosp.key", SECRET);
        key_section("hosp-2026", &k, "pt-*", "[\"client\"]")
    });
    let key = t.dir.path().join("hosp.key");
    let port = t.node(NODE).port;
    let mut desk = App::connect(NODE, "desk", port).await;
    // Nobody named pt-1001 or pt-1002 has ever connected, and neither is in the credentials
    // file: the key's pattern alone makes them this node's clients.
    const N: u64 = 50;
    for s in 0..N {
        desk.send(NODE, "pt-1001", "notify", json!({"s": s})).await;
    }
    for s in 0..3 {
        desk.send(NODE, "pt-1002", "notify", json!({"s": s})).await;
    }
    // A name no key vouches for still fails as an unknown client: the pattern is what routes.
    desk.send(NODE, "dr-1", "notify", json!({"s": 0})).await;
    let failed = desk.expect_receipt(10).await;
    assert_eq!(failed["params"]["status"], json!("failed"), "{failed}");
    assert!(
        failed["params"]["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("dr-1"),
        "{failed}"
    );
    tokio::time::sleep(Duration::from_millis(300)).await;

    // rumqttc, MQTT 3.1.1, username = sub.
    let token = cli_token(&key, "hosp-2026", "pt-1001", &[]);
    let mut patient = App::connect_token(NODE, "pt-1001", &token, port).await;
    let (seqs, receipts) = collect(&mut patient, N, 10).await;
    t.assert_stream_intact(&seqs, &receipts, N);
    // `desk` is in the credentials file: its connection moved to the dispatcher's thread after
    // CONNECT. The patient's, with a device token, stays on the workers.
    assert_eq!(t.node(NODE).metric("medlink_connections_open"), 2.0);
    assert_eq!(
        t.node(NODE).metric("medlink_connections_on_dispatcher"),
        1.0
    );
    // What it sends is stamped with the token's identity.
    patient.send(NODE, "desk", "ack", json!({"s": 1})).await;
    let got = desk.expect_cmd(10).await;
    assert_eq!(got["from"], json!({"node": NODE, "client": "pt-1001"}));
    assert!(desk.recv(1).await.is_none(), "no receipt or repeat to desk");

    // mosquitto_sub, MQTT 5, empty username: the token alone names the identity.
    let token = cli_token(&key, "hosp-2026", "pt-1002", &[]);
    let out = Command::new("mosquitto_sub")
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-V", "mqttv5"])
        .args(["-P", &token, "-i", "pt-1002-phone", "-q", "1"])
        .args(["-t", "org/js/pt-1002/cmd", "-C", "3", "-W", "15"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .output()
        .expect("run mosquitto_sub (apt-get install mosquitto-clients)");
    let text = String::from_utf8_lossy(&out.stdout);
    let got: Vec<u64> = text
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).expect("one envelope per line")["params"]["s"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(
        got,
        [0, 1, 2],
        "{text} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(token_metric(&mut t, "ok"), 2.0);
}

#[test]
fn http_bearer_tokens_post_long_poll_and_stream() {
    let mut t = node_with_keys(|t| {
        let k = secret_file(t, "hosp.key", SECRET);
        key_section("hosp-2026", &k, "pt-*", "[\"client\"]")
    });
    let key = t.dir.path().join("hosp.key");
    let http = t.node(NODE).http_port;
    let token = cli_token(&key, "hosp-2026", "pt-2001", &[]);
    const DESK: Login = Some(("desk", PASSWORD));
    // Queued before the patient ever polled.
    const N: u64 = 20;
    for s in 0..N {
        let (status, body) = post_json(http, "/v1/messages", DESK, &cmd("pt-2001", s));
        assert_eq!(status, 202, "{body}");
    }
    // Long-polls with the token, acknowledging by cursor as it goes, a few at a time.
    let mut got = Vec::new();
    let mut cursor = String::new();
    while (got.len() as u64) < N {
        let r = bearer(
            http,
            "GET",
            &format!("/v1/inbox?cursor={cursor}&max=7&wait=5"),
            &token,
            b"",
        );
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        let page = r.json();
        let more: Vec<u64> = page["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m["params"]["s"].as_u64().unwrap())
            .collect();
        assert!(!more.is_empty(), "messages stopped after {}", got.len());
        got.extend(more);
        cursor = page["cursor"].as_str().unwrap().to_string();
    }
    let (lost, dups, ooo) = audit_sequence(&got, N);
    assert_eq!((lost, dups, ooo, got.len() as u64), (0, 0, 0, N), "{got:?}");
    // Nothing more once acknowledged: a poll with the last cursor waits and comes back empty.
    let r = bearer(
        http,
        "GET",
        &format!("/v1/inbox?cursor={cursor}&wait=1"),
        &token,
        b"",
    );
    assert_eq!(r.json()["messages"], json!([]));
    // The SDK's HTTP transport sends its password as HTTP Basic: a token works there too.
    let (status, page) = get_json(http, "/v1/inbox?wait=0", Some(("pt-2001", token.as_str())));
    assert_eq!(
        (status, page["messages"].clone()),
        (200, json!([])),
        "{page}"
    );
    // POST as the patient: stamped with the token's identity.
    let r = bearer(
        http,
        "POST",
        "/v1/messages",
        &token,
        cmd("desk", 99).to_string().as_bytes(),
    );
    assert_eq!(r.status, 202, "{}", String::from_utf8_lossy(&r.body));
    let (_, page) = get_json(http, "/v1/inbox?wait=5", DESK);
    assert_eq!(
        page["messages"][0]["from"],
        json!({"node": NODE, "client": "pt-2001"})
    );
    // The event stream with the token: three pushes, once each, in order.
    for s in 100..103 {
        post_json(http, "/v1/messages", DESK, &cmd("pt-2001", s));
    }
    let mut s = dial_from(next_source(), http);
    use std::io::Write;
    write!(
        s,
        "GET /v1/stream HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {token}\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    let mut buf = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(10);
    while text.matches("data:").count() < 3 && Instant::now() < deadline {
        let n = s.read(&mut buf).expect("events arrive");
        assert!(n > 0, "stream ended early: {text}");
        text.push_str(&String::from_utf8_lossy(&buf[..n]));
    }
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    let seen: Vec<u64> = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str::<Value>(d).unwrap()["params"]["s"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(seen, [100, 101, 102], "{text}");
}

#[test]
fn refused_tokens_get_connack_0x86_or_401_and_are_counted() {
    let mut t = node_with_keys(|t| {
        let k = secret_file(t, "hosp.key", SECRET);
        let ops = secret_file(t, "ops.key", OTHER_SECRET);
        key_section("hosp-2026", &k, "pt-*", "[\"client\"]")
            + &key_section("ops", &ops, "ops-*", "[\"admin\"]")
    });
    let key = t.dir.path().join("hosp.key");
    let ops_key = t.dir.path().join("ops.key");
    let port = t.node(NODE).port;
    let http = t.node(NODE).http_port;
    let expired = |sub: &str| {
        let mut c = Claims::new(sub, 0);
        c.exp = now_s() - 120;
        signed(SECRET, "hosp-2026", &c)
    };
    // Each refused case once over MQTT 5, once over MQTT 3.1.1 and once over HTTP.
    let cases: Vec<(&str, String, &str)> = vec![
        ("expired", expired("pt-e1"), "expired"),
        (
            "signed with another secret",
            signed(OTHER_SECRET, "hosp-2026", &Claims::new("pt-w1", 600)),
            "bad_signature",
        ),
        (
            "unknown kid",
            signed(SECRET, "hosp-2025", &Claims::new("pt-u1", 600)),
            "unknown_kid",
        ),
        (
            "client key claiming admin",
            cli_token(&key, "hosp-2026", "pt-a1", &["--role", "admin"]),
            "refused",
        ),
        (
            "another node",
            cli_token(&key, "hosp-2026", "pt-n1", &["--node", "js.sz"]),
            "refused",
        ),
        (
            "outside the subjects",
            cli_token(&key, "hosp-2026", "dr-1", &[]),
            "refused",
        ),
        (
            "admin key for a client",
            cli_token(&ops_key, "ops", "ops-1", &[]),
            "refused",
        ),
        (
            "alg none",
            {
                use base64::Engine;
                let b64 = |v: Value| {
                    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string())
                };
                format!(
                    "{}.{}.",
                    b64(json!({"alg": "none", "kid": "hosp-2026"})),
                    b64(json!({"sub": "pt-z1", "exp": now_s() + 600}))
                )
            },
            "bad_signature",
        ),
    ];
    let mut expected = std::collections::BTreeMap::new();
    for (what, token, label) in &cases {
        assert_eq!(connack(port, 5, "", token), Some(0x86), "MQTT 5: {what}");
        assert_eq!(connack(port, 4, "", token), Some(4), "MQTT 3.1.1: {what}");
        let r = bearer(http, "GET", "/v1/inbox?wait=0", token, b"");
        assert_eq!(r.status, 401, "HTTP: {what}");
        assert_eq!(r.json()["code"], json!("unauthorized"), "{what}");
        assert_eq!(
            r.header("www-authenticate").as_deref(),
            Some("Bearer error=\"invalid_token\""),
            "{what}"
        );
        *expected.entry(*label).or_insert(0.0) += 3.0;
    }
    // The body says when a token merely expired, so an app knows to renew it.
    let r = bearer(http, "GET", "/v1/inbox?wait=0", &expired("pt-e2"), b"");
    assert!(r.json()["message"].as_str().unwrap().contains("expired"));
    *expected.get_mut("expired").unwrap() += 1.0;
    // A username that is not the token's sub.
    let good = cli_token(&key, "hosp-2026", "pt-ok", &[]);
    assert_eq!(connack(port, 5, "pt-other", &good), Some(0x86));
    *expected.get_mut("refused").unwrap() += 1.0;
    // The same tokens, done right, are admitted: the refusals above were the claims'.
    assert_eq!(connack(port, 5, "pt-ok", &good), Some(0));
    assert_eq!(connack(port, 4, "", &good), Some(0));
    let node_ok = cli_token(&key, "hosp-2026", "pt-n2", &["--node", NODE]);
    assert_eq!(connack(port, 5, "", &node_ok), Some(0));
    // A key that grants admin makes an admin (of its own subjects): it may watch org/#.
    let admin = cli_token(&ops_key, "ops", "ops-1", &["--role", "admin"]);
    let mut s = dial_from(next_source(), port);
    let code = common::raw::handshake(
        &mut s,
        &common::raw::connect(4, "ops-watch", "", &admin, 30),
    );
    assert_eq!(code, Some(0));
    assert_eq!(common::raw::suback_codes(&mut s, 4, 1, &["org/#"]), [1]);
    // …while the patient may not.
    let mut s = dial_from(next_source(), port);
    common::raw::handshake(&mut s, &common::raw::connect(4, "pt-watch", "", &good, 30));
    assert_eq!(common::raw::suback_codes(&mut s, 4, 1, &["org/#"]), [0x80]);
    *expected.entry("ok").or_insert(0.0) += 5.0;
    for (label, n) in &expected {
        assert_eq!(
            token_metric(&mut t, label),
            *n,
            "medlink_token_logins_total{{result=\"{label}\"}}"
        );
    }
    let log = t.node(NODE).log_text();
    assert!(log.contains("token refused"), "refusals are logged");
}

#[test]
fn failed_tokens_are_throttled_and_valid_ones_never_wait() {
    let mut t = node_with_keys(|t| {
        let k = secret_file(t, "hosp.key", SECRET);
        key_section("hosp-2026", &k, "pt-*", "[\"client\"]")
    });
    let key = t.dir.path().join("hosp.key");
    let port = t.node(NODE).port;
    let source = next_source();
    let forged = signed(OTHER_SECRET, "hosp-2026", &Claims::new("pt-t1", 600));
    for _ in 0..6 {
        let mut s = dial_from(source, port);
        common::raw::handshake(&mut s, &common::raw::connect(5, "", "", &forged, 30));
    }
    assert!(
        t.node(NODE).metric("medlink_login_throttled_total") > 0.0,
        "failed tokens count against the throttle"
    );
    let good = cli_token(&key, "hosp-2026", "pt-t2", &[]);
    let started = Instant::now();
    let mut s = dial_from(source, port);
    let code = common::raw::handshake(&mut s, &common::raw::connect(5, "", "", &good, 30));
    assert_eq!(code, Some(0));
    assert!(
        started.elapsed() < Duration::from_millis(500),
        "a valid token waited {:?}",
        started.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keys_rotate_by_editing_the_config_while_the_node_runs() {
    let mut t = node_with_keys(|t| {
        let k = secret_file(t, "old.key", SECRET);
        key_section("old", &k, "pt-*", "[\"client\"]")
    });
    let old_key = t.dir.path().join("old.key");
    let new_key = secret_file(&t, "new.key", OTHER_SECRET);
    let cfg = t.node(NODE).config.clone();
    let port = t.node(NODE).port;
    let old = cli_token(&old_key, "old", "pt-1", &[]);
    let new = cli_token(&new_key, "new", "np-1", &[]);
    assert_eq!(connack(port, 5, "", &old), Some(0));
    assert_eq!(connack(port, 5, "", &new), Some(0x86), "not configured yet");
    // np-* is nobody's yet: a command to np-1 fails.
    let mut desk = App::connect(NODE, "desk", port).await;
    desk.send(NODE, "np-1", "notify", json!({"s": 0})).await;
    let r = desk.expect_receipt(10).await;
    assert_eq!(r["params"]["status"], json!("failed"), "{r}");

    // Add the new key (with its own pattern): its tokens work and np-* becomes routable,
    // without a restart.
    let base = std::fs::read_to_string(&cfg).unwrap();
    std::fs::write(
        &cfg,
        base.clone() + &key_section("new", &new_key, "np-*", "[\"client\"]"),
    )
    .unwrap();
    let pid = t.node(NODE).pid();
    assert!(
        within(5, || connack(port, 5, "", &new) == Some(0)),
        "the added key works within 5 s"
    );
    assert_eq!(t.node(NODE).pid(), pid, "no restart");
    // Routing follows within the dispatcher's next refresh (once a second).
    tokio::time::sleep(Duration::from_millis(1500)).await;
    for s in 0..5 {
        desk.send(NODE, "np-1", "notify", json!({"s": s})).await;
    }
    let mut patient = App::connect_token(NODE, "np-1", &new, port).await;
    let (seqs, receipts) = collect(&mut patient, 5, 10).await;
    t.assert_stream_intact(&seqs, &receipts, 5);
    assert!(
        desk.recv(1).await.is_none(),
        "no failed receipt for np-1 once the key is in"
    );

    // A broken config keeps the keys in force, and says so.
    std::fs::write(&cfg, base.clone() + "this is not toml =\n").unwrap();
    assert!(within(5, || t
        .node(NODE)
        .log_text()
        .contains("token keys not reloaded")));
    assert_eq!(connack(port, 5, "", &old), Some(0));
    // Remove the old key: its tokens are refused from now on (an open session stays).
    let without_old = base.replace(&key_section("old", &old_key, "pt-*", "[\"client\"]"), "");
    assert_ne!(without_old, base);
    std::fs::write(
        &cfg,
        without_old + &key_section("new", &new_key, "np-*", "[\"client\"]"),
    )
    .unwrap();
    assert!(
        within(5, || connack(port, 5, "", &old) == Some(0x86)),
        "the removed key's tokens are refused within 5 s"
    );
    assert_eq!(connack(port, 5, "", &new), Some(0));
    assert!(token_metric(&mut t, "unknown_kid") >= 2.0);
    // A change outside [[token_key]] is reported as needing a restart; SIGHUP re-reads.
    let text = std::fs::read_to_string(&cfg)
        .unwrap()
        .replace("[node]\n", "[node]\naudit = true\n");
    std::fs::write(&cfg, text).unwrap();
    assert!(within(5, || t
        .node(NODE)
        .log_text()
        .contains("need a restart")));
    let pid = t.node(NODE).pid().unwrap();
    Command::new("kill")
        .args(["-HUP", &pid.to_string()])
        .status()
        .unwrap();
    assert!(within(5, || t.node(NODE).log_text().contains("SIGHUP")));
    assert!(t.node(NODE).is_running(), "SIGHUP does not stop the node");
    assert_eq!(connack(port, 5, "", &new), Some(0));
}

#[test]
fn bad_keys_and_bad_flags_are_refused_naming_them() {
    let t = Tree::new(&[spec(NODE, None, &["desk"])]);
    let short = secret_file(&t, "short.key", "too-short");
    let (code, _, err) = medlink(&[
        "token",
        "--key-file",
        short.to_str().unwrap(),
        "--kid",
        "k",
        "--sub",
        "pt-1",
    ]);
    assert_eq!(code, 2);
    assert!(err.contains("--key-file") && err.contains("32"), "{err}");
    let good = secret_file(&t, "good.key", SECRET);
    let g = good.to_str().unwrap();
    for (args, flag) in [
        (vec!["--sub", "pt/1"], "--sub"),
        (vec!["--sub", "pt-1", "--ttl", "0"], "--ttl"),
        (vec!["--sub", "pt-1", "--role", "root"], "--role"),
        (vec!["--sub", "pt-1", "--node", "js..x"], "--node"),
    ] {
        let mut all = vec!["token", "--key-file", g, "--kid", "k"];
        all.extend(args);
        let (code, _, err) = medlink(&all);
        assert_eq!(code, 2, "{all:?}");
        assert!(err.contains(flag), "{all:?}: {err}");
    }
    // A node whose key is unusable does not start, and says which key.
    let cfg = t.nodes[NODE].config.clone();
    let text =
        std::fs::read_to_string(&cfg).unwrap() + &key_section("k", &short, "*", "[\"client\"]");
    std::fs::write(&cfg, text).unwrap();
    let (code, _, err) = medlink(&["node", "--config", cfg.to_str().unwrap()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("token_key[0].secret_file"), "{err}");
}
