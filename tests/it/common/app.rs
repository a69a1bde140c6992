//! Client applications for tests: an [`App`] is one identity connected to one node over MQTT
//! (rumqttc), with its inbox and receipts arriving on a channel.

use std::path::Path;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

use super::PASSWORD;

/// A received publish.
#[derive(Debug, Clone)]
pub struct Msg {
    pub topic: String,
    pub json: Value,
}

/// A client application connected to one node with its own identity.
pub struct App {
    pub node: String,
    pub name: String,
    pub client: AsyncClient,
    pub rx: mpsc::UnboundedReceiver<Msg>,
}

impl App {
    /// Connects as `name` to `port` of node `node`, subscribed to its inbox and receipts.
    pub async fn connect(node: &str, name: &str, port: u16) -> App {
        Self::connect_as(node, name, name, port, true).await
    }

    /// Connects over TLS, trusting `ca`.
    pub async fn connect_tls(node: &str, name: &str, port: u16, ca: &Path) -> App {
        Self::connect_with(node, name, name, port, true, Some(ca), PASSWORD).await
    }

    /// Connects as `name` with a device token as the password, subscribed to its inbox and
    /// receipts.
    pub async fn connect_token(node: &str, name: &str, token: &str, port: u16) -> App {
        Self::connect_with(node, name, name, port, true, None, token).await
    }

    pub async fn connect_as(
        node: &str,
        name: &str,
        client_id: &str,
        port: u16,
        subscribe: bool,
    ) -> App {
        Self::connect_with(node, name, client_id, port, subscribe, None, PASSWORD).await
    }

    async fn connect_with(
        node: &str,
        name: &str,
        client_id: &str,
        port: u16,
        subscribe: bool,
        ca: Option<&Path>,
        password: &str,
    ) -> App {
        let mut opts = MqttOptions::new(client_id, "127.0.0.1", port);
        if let Some(ca) = ca {
            let config = medlink_broker::tls::client_config(ca, None).expect("CA loads");
            opts.set_transport(rumqttc::Transport::tls_with_config(
                rumqttc::TlsConfiguration::Rustls(std::sync::Arc::new(config)),
            ));
        }
        opts.set_credentials(name, password)
            .set_keep_alive(Duration::from_secs(10))
            .set_clean_session(true)
            .set_inflight(500)
            .set_max_packet_size(16 << 20, 16 << 20);
        let (client, mut el) = AsyncClient::new(opts, 10_000);
        let mut net = NetworkOptions::new();
        net.set_tcp_nodelay(true);
        el.set_network_options(net);
        if subscribe {
            client
                .subscribe(format!("org/{node}/{name}/cmd"), QoS::AtLeastOnce)
                .await
                .expect("queue subscribe");
            client
                .subscribe(format!("org/{node}/{name}/receipt"), QoS::AtLeastOnce)
                .await
                .expect("queue subscribe");
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, mut ready_rx) = mpsc::unbounded_channel::<()>();
        let resubscribe = client.clone();
        let (n, c) = (node.to_string(), name.to_string());
        tokio::spawn(async move {
            let mut subacks = 0;
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        if !subscribe {
                            let _ = ready_tx.send(());
                        } else if subacks >= 2 {
                            // reconnected: sessions are not resumed, subscribe again
                            let _ = resubscribe
                                .try_subscribe(format!("org/{n}/{c}/cmd"), QoS::AtLeastOnce);
                            let _ = resubscribe
                                .try_subscribe(format!("org/{n}/{c}/receipt"), QoS::AtLeastOnce);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        subacks += 1;
                        if subacks == 2 {
                            let _ = ready_tx.send(());
                        }
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let json = serde_json::from_slice(&p.payload).unwrap_or(Value::Null);
                        if tx
                            .send(Msg {
                                topic: p.topic,
                                json,
                            })
                            .is_err()
                        {
                            return;
                        }
                    }
                    // a deliberate disconnect ends the client for good (no silent redial)
                    Ok(Event::Outgoing(rumqttc::Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => {
                        if tx.is_closed() {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
            .await
            .unwrap_or_else(|_| panic!("{name} could not connect to {node} on {port}"));
        App {
            node: node.into(),
            name: name.into(),
            client,
            rx,
        }
    }

    /// Publishes a raw payload to this client's outbox.
    pub async fn publish_raw(&self, payload: impl Into<Vec<u8>>) {
        self.client
            .publish(
                format!("org/{}/{}/out", self.node, self.name),
                QoS::AtLeastOnce,
                false,
                payload.into(),
            )
            .await
            .expect("queue publish");
    }

    /// Sends a command.
    pub async fn send(&self, to_node: &str, to_client: &str, cmd: &str, params: Value) {
        let body = serde_json::json!({"to": {"node": to_node, "client": to_client}, "cmd": cmd, "params": params});
        self.publish_raw(body.to_string()).await;
    }

    /// Next message within `secs`.
    pub async fn recv(&mut self, secs: u64) -> Option<Msg> {
        tokio::time::timeout(Duration::from_secs(secs), self.rx.recv())
            .await
            .ok()
            .flatten()
    }

    /// Next command (not receipt) within `secs`, panicking with context if none.
    pub async fn expect_cmd(&mut self, secs: u64) -> Value {
        self.expect_on("/cmd", "command", secs).await
    }

    /// Next receipt within `secs`.
    pub async fn expect_receipt(&mut self, secs: u64) -> Value {
        self.expect_on("/receipt", "receipt", secs).await
    }

    /// Next message on a topic ending in `suffix` within `secs`, skipping (and logging) the
    /// others; panics naming `what` if none comes.
    async fn expect_on(&mut self, suffix: &str, what: &str, secs: u64) -> Value {
        loop {
            let m = self.recv(secs).await.unwrap_or_else(|| {
                panic!("{}@{}: no {what} within {secs} s", self.name, self.node)
            });
            if m.topic.ends_with(suffix) {
                return m.json;
            }
            eprintln!("{}: skipping {}: {}", self.name, m.topic, m.json);
        }
    }

    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Collects `n` sequence numbers (params.s) from `app`, stopping after `idle` seconds of
/// silence. Receipts are collected separately.
pub async fn collect(app: &mut App, n: u64, idle: u64) -> (Vec<u64>, Vec<serde_json::Value>) {
    let mut seqs = Vec::new();
    let mut receipts = Vec::new();
    while (seqs.len() as u64) < n {
        match app.recv(idle).await {
            Some(m) if m.topic.ends_with("/cmd") => {
                seqs.push(m.json["params"]["s"].as_u64().expect("seq"))
            }
            Some(m) => receipts.push(m.json),
            None => break,
        }
    }
    // anything arriving afterwards is a duplicate
    while let Some(m) = app.recv(1).await {
        if m.topic.ends_with("/cmd") {
            seqs.push(m.json["params"]["s"].as_u64().expect("seq"));
        }
    }
    (seqs, receipts)
}

/// Sends commands numbered 0..n to `sink` at the root, pausing `pause_ms` every `every`
/// commands; returns the client when done.
pub fn stream_to_sink(
    clinic: App,
    n: u64,
    every: u64,
    pause_ms: u64,
) -> tokio::task::JoinHandle<App> {
    tokio::spawn(async move {
        for s in 0..n {
            clinic
                .send("js", "sink", "stream", serde_json::json!({"s": s}))
                .await;
            if s % every == 0 {
                tokio::time::sleep(Duration::from_millis(pause_ms)).await;
            }
        }
        clinic
    })
}
