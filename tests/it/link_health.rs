//! A child says why its link to the parent is down, and the parent says why it refused the
//! child (issue "Operators see and fix what is stuck", part 1): a wrong password, a closed
//! port and a certificate from another CA each give their own WARN at the child, repeated with
//! backoff rather than at every retry, and the recovery is logged with how long the link was
//! down and how many commands waited.

use crate::common;

use std::time::Duration;

use common::http::{post_json, Login};
use common::*;
use serde_json::json;

/// Lines of `log` that contain every one of `parts`.
fn lines_with(log: &str, parts: &[&str]) -> usize {
    log.lines()
        .filter(|l| parts.iter().all(|p| l.contains(p)))
        .count()
}

/// Waits up to `secs` for a line of `node`'s log with every one of `parts`; fails the test,
/// with the log, if none comes.
fn expect_said(t: &mut Tree, node: &str, parts: &[&str], secs: u64) {
    let said = within(secs, || lines_with(&t.node(node).log_text(), parts) > 0);
    assert!(
        said,
        "{node} logged no line with {parts:?}:\n{}",
        t.node(node).log_text()
    );
}

#[test]
fn a_refused_login_is_named_at_the_child_and_at_the_parent() {
    let mut t = Tree::new(&[spec("js", None, &[]), spec("js.k", Some("js"), &[])]);
    let pw = t.dir.path().join("js.k.link-password");
    std::fs::write(&pw, "not-the-password\n").unwrap();
    t.node("js").start();
    t.node("js.k").start();
    expect_said(
        &mut t,
        "js.k",
        &["WARN", "parent link down", "login refused"],
        15,
    );
    expect_said(
        &mut t,
        "js",
        &["WARN", "login failed", "js.k", "wrong password"],
        5,
    );
}

#[test]
fn a_closed_port_is_named_repeated_with_backoff_and_the_recovery_counts_what_waited() {
    let mut t = Tree::new(&[
        spec("js", None, &["doc"]),
        spec("js.k", Some("js"), &["nurse"]),
    ]);
    // The parent is not running: its port is closed.
    t.node("js.k").start();
    let port = t.node("js.k").http_port;
    let nurse: Login = Some(("nurse", PASSWORD));
    for n in 0..3 {
        let (status, body) = post_json(
            port,
            "/v1/messages",
            nurse,
            &json!({"to": {"node": "js", "client": "doc"}, "cmd": "wait", "params": {"n": n}}),
        );
        assert_eq!(status, 202, "{body}");
    }
    expect_said(
        &mut t,
        "js.k",
        &["WARN", "parent link down", "connection refused"],
        15,
    );
    // Several seconds of retries (100 ms doubling) are said once, not at every attempt.
    std::thread::sleep(Duration::from_secs(5));
    let log = t.node("js.k").log_text();
    let warned = lines_with(&log, &["parent link down"]);
    assert!(
        (1..=2).contains(&warned),
        "{warned} WARNs in the first seconds of an outage; expected one (then backoff):\n{log}"
    );
    t.node("js").start();
    expect_said(&mut t, "js.k", &["parent link up again", "waiting=3"], 20);
}

#[test]
fn a_certificate_from_another_ca_is_named_at_both_ends() {
    let mut t = Tree::new_tls(&[spec("js", None, &[]), spec("js.k", Some("js"), &[])]);
    // js.k presents a certificate with its own name, from a CA the parent does not know.
    t.give_foreign_certificate("js.k");
    t.node("js").start();
    t.node("js.k").start();
    expect_said(
        &mut t,
        "js.k",
        &["WARN", "parent link down", "certificate refused"],
        15,
    );
    expect_said(
        &mut t,
        "js",
        &["WARN", "client's certificate was refused"],
        5,
    );
}

#[test]
fn configurations_that_cannot_work_are_said_at_start() {
    let mut t = Tree::new_tls(&[spec("js", None, &[]), spec("js.k", Some("js"), &[])]);
    // The parent checks no client certificates, yet js.k may log in by certificate only; and
    // it advertises a WebSocket URL that none of its listeners serves.
    let cfg = t.node("js").config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap();
    let text: String = text
        .lines()
        .filter(|l| !l.starts_with("client_ca"))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(
        &cfg,
        text + "\n[transport]\nws_url = \"wss://city.example/mqtt\"\n",
    )
    .unwrap();
    // The child's credentials file holds nobody.
    std::fs::write(&t.node("js.k").credentials, "").unwrap();
    t.node("js").start();
    t.node("js.k").start();
    let parent = t.node("js").log_text();
    for said in [
        "tls.client_ca: not set, yet one child node may log in by client certificate only (js.k)",
        "transport.ws_url",
    ] {
        assert_eq!(lines_with(&parent, &["WARN", said]), 1, "{said}:\n{parent}");
    }
    let child = t.node("js.k").log_text();
    assert_eq!(
        lines_with(&child, &["WARN", "holds no identities"]),
        1,
        "{child}"
    );
}

/// A parent that accepts the connection and then says nothing (the fault proxy frozen) is a
/// timeout; a site proxy that refuses the tunnel is the proxy's refusal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_parent_and_a_refusing_proxy_are_named() {
    use common::proxy::{ConnectProxy, Mode, Proxy};
    let mut t = Tree::new_tls(&[
        spec("js", None, &[]),
        spec("js.a", Some("js"), &[]),
        spec("js.b", Some("js"), &[]),
    ]);
    t.node("js").start();
    // js.a dials the parent through a proxy that holds every byte.
    let parent = std::net::SocketAddr::from(([127, 0, 0, 1], t.node("js").port));
    let silent = Proxy::start(parent).await;
    silent.set(Mode::Freeze);
    t.set_parent_addresses("js.a", &[format!("mqtts://localhost:{}", silent.port)]);
    // js.b dials over HTTPS through a site proxy, to a port where nothing listens.
    let site = ConnectProxy::start().await;
    t.set_parent_addresses("js.b", &[format!("https://localhost:{}", free_port())]);
    let b = t.node("js.b");
    b.env.push((
        "HTTPS_PROXY".into(),
        format!("http://127.0.0.1:{}", site.port),
    ));
    b.env.push(("NO_PROXY".into(), String::new()));
    t.node("js.a").start();
    t.node("js.b").start();
    expect_said(
        &mut t,
        "js.a",
        &["WARN", "parent link down", "no answer in time"],
        20,
    );
    expect_said(
        &mut t,
        "js.b",
        &["WARN", "parent link down", "the proxy refused"],
        20,
    );
}
