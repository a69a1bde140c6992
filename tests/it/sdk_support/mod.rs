//! Helpers shared by the SDK's test files (`sdk_http.rs`, `sdk_recovery.rs`).

#![allow(dead_code)]

use std::time::Duration;

use medlink_sdk::{Address, Client, Inbox, Options};
use serde_json::json;

use crate::common::{audit_sequence, Tree, PASSWORD};

pub fn options(url: String, node: &str, identity: &str) -> Options {
    Options {
        url,
        node: node.into(),
        identity: identity.into(),
        password: PASSWORD.into(),
        ..Default::default()
    }
}

pub fn http_url(port: u16) -> String {
    format!("http://127.0.0.1:{port}")
}

pub fn mqtt_url(port: u16) -> String {
    format!("mqtt://127.0.0.1:{port}")
}

/// Appends `text` to a node's config (before it starts).
pub fn configure(t: &mut Tree, id: &str, text: &str) {
    let cfg = t.node(id).config.clone();
    let mut toml = std::fs::read_to_string(&cfg).expect("read config");
    toml += text;
    std::fs::write(&cfg, toml).expect("write config");
}

/// Connects `identity`@`node` through `url` and checks the transport it ended up on.
pub async fn connect_on(
    url: String,
    node: &str,
    identity: &str,
    transport: medlink_sdk::Transport,
) -> (Client, Inbox) {
    let (client, inbox) = connect(options(url, node, identity)).await;
    assert_eq!(client.transport(), Some(transport), "{identity}@{node}");
    (client, inbox)
}

pub async fn connect(opts: Options) -> (Client, Inbox) {
    let who = format!("{}@{}", opts.identity, opts.node);
    Client::connect(opts)
        .await
        .unwrap_or_else(|e| panic!("{who} connects: {e}"))
}

/// Receives `n` commands numbered by `params.s`, then listens two seconds more for extras.
pub async fn receive_numbered(inbox: &mut Inbox, n: u64, within: Duration) -> Vec<u64> {
    let mut got = Vec::new();
    while (got.len() as u64) < n {
        let m = tokio::time::timeout(within, inbox.commands.recv())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} arrived", got.len()))
            .expect("inbox open");
        got.push(m.params["s"].as_u64().expect("numbered"));
    }
    while let Ok(Some(m)) =
        tokio::time::timeout(Duration::from_secs(2), inbox.commands.recv()).await
    {
        got.push(m.params["s"].as_u64().expect("numbered"));
    }
    got
}

/// Answers every command with `{"double": 2n}` and reports each `n` it saw.
pub fn responder(client: Client, mut inbox: Inbox) -> tokio::sync::mpsc::UnboundedReceiver<u64> {
    let (seen_tx, seen) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        while let Some(cmd) = inbox.commands.recv().await {
            let n = cmd.params["n"].as_u64().unwrap_or(0);
            let _ = seen_tx.send(n);
            client
                .reply(&cmd, json!({"double": n * 2}))
                .await
                .expect("reply accepted");
        }
    });
    seen
}

/// Sends `n` commands `cmd` numbered `{"s": 0..n}` from `sender` to `to`, in order, each
/// waiting for custody, on a task of its own.
pub fn send_numbered(
    sender: Client,
    to: Address,
    cmd: &'static str,
    n: u64,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        for s in 0..n {
            sender
                .send(&to, cmd, json!({"s": s}))
                .await
                .expect("custody");
        }
    })
}

/// Sends `n` numbered commands from each client to the next one in `clients` (a ring, each
/// pair possibly on different transports) and checks that every client got its `n` once and in
/// order.
pub async fn ring_traffic(clients: &mut [(Client, Inbox)], n: u64) {
    let len = clients.len();
    for i in 0..len {
        let to = clients[(i + 1) % len].0.address().clone();
        send_numbered(clients[i].0.clone(), to, "ring", n);
    }
    for (client, inbox) in clients.iter_mut() {
        let got = receive_numbered(inbox, n, Duration::from_secs(30)).await;
        assert_eq!(
            audit_sequence(&got, n),
            (0, 0, 0),
            "lost, duplicates, reordered at {}",
            client.address()
        );
    }
}
