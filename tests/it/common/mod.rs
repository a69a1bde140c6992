//! Test harness: real `medlink node` processes on loopback, real MQTT clients.
//!
//! A [`Tree`] writes one TOML file per node into a temporary directory, with ports chosen
//! once so that a restarted node comes back on the same address its children dial. Every
//! node gets a credentials file (argon2id hashes of [`PASSWORD`]); a TLS tree
//! ([`Tree::new_tls`]) also gets certificates from `medlink certs`, TLS listeners, and
//! certificate-authenticated links.

#![allow(dead_code)]

pub mod http;
pub mod proxy;
pub mod raw;
pub mod tus;
pub mod venv;

use std::collections::{BTreeMap, HashSet};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, NetworkOptions, Packet, QoS};
use serde_json::Value;
use tokio::sync::mpsc;

pub const BIN: &str = env!("CARGO_BIN_EXE_medlink");

/// A free loopback port for a node to listen on. Ports come from 20000-29999 (outside the
/// kernel's ephemeral range, so client sockets never take them), spread by process id, and are
/// never handed out twice by one test process, so tests running in parallel cannot collide.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    loop {
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let port = 20_000 + ((std::process::id() * 97 + n) % 10_000) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// One node of a test tree.
pub struct NodeSpec {
    pub id: String,
    pub parent: Option<String>,
    pub clients: Vec<String>,
    /// Lines added to `[node]`.
    pub extra: String,
    /// Lines added to `[limits]` (the harness turns the rate limit off unless set here).
    pub limits: String,
}

/// A node process.
pub struct NodeProc {
    pub id: String,
    /// The MQTT port: clear-text TCP, or TLS in a TLS tree.
    pub port: u16,
    /// The WebSocket port: `ws`, or `wss` in a TLS tree.
    pub ws_port: u16,
    /// Clear-text TCP and WebSocket ports that a TLS tree keeps as well (loopback only).
    pub plain_port: u16,
    pub plain_ws_port: u16,
    /// `/metrics` port.
    pub metrics_port: u16,
    /// HTTP API port (clear-text HTTP on loopback).
    pub http_port: u16,
    pub config: PathBuf,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    /// Command and arguments to run the node under (e.g. `prlimit --nofile=64 --`).
    pub wrapper: Vec<String>,
    /// Extra environment of the node process (e.g. `HTTPS_PROXY`).
    pub env: Vec<(String, String)>,
    /// Listeners are TLS (`tls`/`wss`) rather than clear text.
    pub tls: bool,
    /// The credentials file.
    pub credentials: PathBuf,
    /// Starts so far (the log is appended across restarts).
    restarts: usize,
    child: Option<Child>,
}

impl NodeProc {
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "{} already running", self.id);
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open node log");
        let mut cmd = match self.wrapper.split_first() {
            Some((program, args)) => {
                let mut c = Command::new(program);
                c.args(args).arg(BIN);
                c
            }
            None => Command::new(BIN),
        };
        let child = cmd
            .args(["node", "--config"])
            .arg(&self.config)
            .env("MEDLINK_LOG", "info")
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log))
            .spawn()
            .expect("spawn medlink node");
        self.child = Some(child);
        self.wait_started();
    }

    /// Waits until this process (not some other one on the port) reports it started.
    fn wait_started(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let log = self.log_text();
            if log.matches("node started").count() > self.restarts {
                self.restarts += 1;
                wait_port(self.port, &self.log);
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(|c| c.try_wait()) {
                panic!("{} exited with {status} while starting:\n{log}", self.id);
            }
            if Instant::now() > deadline {
                panic!("{} did not start within 15 s:\n{log}", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `rounds` times: let it run `run_ms`, kill -9, stay down 300 ms longer each round, start.
    pub fn kill9_repeatedly(&mut self, rounds: u64, run_ms: u64) {
        for round in 0..rounds {
            std::thread::sleep(Duration::from_millis(run_ms));
            self.kill9();
            std::thread::sleep(Duration::from_millis(300 + round * 200));
            self.start();
        }
    }

    /// SIGKILL: no clean shutdown at all.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// SIGTERM and wait for a clean exit; returns the exit status code.
    pub fn stop(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(c.id().to_string())
            .status();
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            if let Ok(Some(status)) = c.try_wait() {
                return status.code();
            }
            if Instant::now() > deadline {
                let _ = c.kill();
                let _ = c.wait();
                panic!("{} did not stop within 10 s of SIGTERM", self.id);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => c.try_wait().ok().flatten().is_none(),
            None => false,
        }
    }

    /// Process id while running.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    /// Makes the node reach HTTPS only through the forward proxy on `port` (`HTTPS_PROXY`).
    pub fn behind_proxy(&mut self, port: u16) {
        self.env
            .push(("HTTPS_PROXY".into(), format!("http://127.0.0.1:{port}")));
        self.env.push(("NO_PROXY".into(), String::new()));
    }

    pub fn url(&self) -> String {
        let scheme = if self.tls { "mqtts" } else { "mqtt" };
        format!("{scheme}://127.0.0.1:{}", self.port)
    }

    /// The value of one metric from `/metrics` (0 when absent).
    pub fn metric(&self, name: &str) -> f64 {
        let body = http_get(self.metrics_port, "/metrics");
        body.lines()
            .find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == name).then(|| v.trim().parse().ok()).flatten()
            })
            .unwrap_or(0.0)
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for NodeProc {
    fn drop(&mut self) {
        self.kill9();
    }
}

fn wait_port(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        if std::net::TcpStream::connect(("127.0.0.1", port)).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(25));
    }
    panic!(
        "node did not listen on {port}; log:\n{}",
        std::fs::read_to_string(log).unwrap_or_default()
    );
}

/// A minimal HTTP/1.0 GET on loopback; returns the body.
pub fn http_get(port: u16, path: &str) -> String {
    use std::io::Read;
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to HTTP port");
    s.set_read_timeout(Some(Duration::from_secs(10))).ok();
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").expect("send request");
    let mut text = String::new();
    s.read_to_string(&mut text).expect("read response");
    text.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

pub const PASSWORD: &str = "test-password";

/// The argon2id hash of [`PASSWORD`], computed once per test process.
pub fn password_hash() -> &'static str {
    static HASH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    HASH.get_or_init(|| medlink_broker::identity::hash_password(PASSWORD))
}

/// A tree of node processes.
pub struct Tree {
    pub dir: tempfile::TempDir,
    pub nodes: BTreeMap<String, NodeProc>,
}

impl Tree {
    /// Writes configs for `specs` (parents before children) without starting anything.
    /// Listeners and links are clear text on loopback.
    pub fn new(specs: &[NodeSpec]) -> Tree {
        Self::build(specs, false)
    }

    /// Like [`Tree::new`], but every listener is TLS (`tls` and `wss`), every link is
    /// `mqtts` authenticated by the child's certificate, with certificates from
    /// `medlink certs` under `certs/`.
    pub fn new_tls(specs: &[NodeSpec]) -> Tree {
        Self::build(specs, true)
    }

    /// The development CA of a TLS tree.
    pub fn ca(&self) -> PathBuf {
        self.dir.path().join("certs").join("ca.crt")
    }

    fn build(specs: &[NodeSpec], tls: bool) -> Tree {
        let dir = tempfile::tempdir().expect("temp dir");
        let certs = dir.path().join("certs");
        if tls {
            let mut args = vec!["certs", "--dir", certs.to_str().expect("utf-8 temp path")];
            args.extend(specs.iter().map(|s| s.id.as_str()));
            let (code, out, err) = medlink(&args);
            assert_eq!(code, 0, "medlink certs failed: {out}{err}");
        }
        let mut nodes: BTreeMap<String, NodeProc> = BTreeMap::new();
        for spec in specs {
            let port = free_port();
            let ws_port = free_port();
            let metrics_port = free_port();
            let http_port = free_port();
            let (plain_port, plain_ws_port) = if tls {
                (free_port(), free_port())
            } else {
                (port, ws_port)
            };
            let data_dir = dir.path().join(format!("{}.data", spec.id));
            let credentials = dir.path().join(format!("{}.credentials.toml", spec.id));
            let (kind, ws_kind) = if tls { ("tls", "wss") } else { ("tcp", "ws") };
            let mut toml = format!(
                "[node]\nid = \"{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\n{}\n\n[[listener]]\nkind = \"{kind}\"\naddr = \"127.0.0.1:{port}\"\n\n[[listener]]\nkind = \"{ws_kind}\"\naddr = \"127.0.0.1:{ws_port}\"\n\n[link]\nresend_after_ms = 1000\nping_every_ms = 500\ndead_after_ms = 3000\n",
                spec.id,
                data_dir.display(),
                credentials.display(),
                spec.extra
            );
            let limits = if spec.limits.contains("rate_per_second") {
                spec.limits.clone()
            } else {
                format!("rate_per_second = 0\n{}", spec.limits)
            };
            toml += &format!("\n[limits]\n{limits}\n");
            toml += &format!("\n[metrics]\naddr = \"127.0.0.1:{metrics_port}\"\n");
            toml += &format!("\n[http]\naddr = \"127.0.0.1:{http_port}\"\ntls = {tls}\n");
            if tls {
                toml += &format!(
                    "\n[[listener]]\nkind = \"tcp\"\naddr = \"127.0.0.1:{plain_port}\"\n\n[[listener]]\nkind = \"ws\"\naddr = \"127.0.0.1:{plain_ws_port}\"\n"
                );
                let c = certs.display();
                toml += &format!(
                    "\n[tls]\ncert = \"{c}/{id}.crt\"\nkey = \"{c}/{id}.key\"\nclient_ca = \"{c}/ca.crt\"\n",
                    id = spec.id
                );
            }
            if let Some(parent) = &spec.parent {
                let pport = nodes[parent].port;
                if tls {
                    let c = certs.display();
                    toml += &format!(
                        "\n[parent]\naddresses = [\"mqtts://127.0.0.1:{pport}\"]\nca = \"{c}/ca.crt\"\ncert = \"{c}/{id}.crt\"\nkey = \"{c}/{id}.key\"\nfiles_url = \"https://127.0.0.1:{phttp}\"\n",
                        id = spec.id,
                        phttp = nodes[parent].http_port
                    );
                } else {
                    let pw = dir.path().join(format!("{}.link-password", spec.id));
                    std::fs::write(&pw, format!("{PASSWORD}\n")).expect("write password file");
                    toml += &format!(
                        "\n[parent]\naddresses = [\"mqtt://127.0.0.1:{pport}\"]\npassword_file = \"{}\"\nfiles_url = \"http://127.0.0.1:{}\"\n",
                        pw.display(),
                        nodes[parent].http_port
                    );
                }
            }
            let mut creds = String::new();
            let mut add = |name: &str, role: &str, with_password: bool| {
                creds += &format!("[[identity]]\nname = \"{name}\"\nrole = \"{role}\"\n");
                if with_password {
                    creds += &format!("password_hash = \"{}\"\n", password_hash());
                }
                creds += "\n";
            };
            for child in specs
                .iter()
                .filter(|s| s.parent.as_deref() == Some(spec.id.as_str()))
            {
                // TLS children log in by certificate only.
                add(&child.id, "node", !tls);
            }
            for c in &spec.clients {
                add(c, "client", true);
            }
            add("ops", "admin", true);
            std::fs::write(&credentials, creds).expect("write credentials");
            let config = dir.path().join(format!("{}.toml", spec.id));
            std::fs::File::create(&config)
                .and_then(|mut f| f.write_all(toml.as_bytes()))
                .expect("write config");
            nodes.insert(
                spec.id.clone(),
                NodeProc {
                    id: spec.id.clone(),
                    port,
                    ws_port,
                    plain_port,
                    plain_ws_port,
                    metrics_port,
                    http_port,
                    config,
                    data_dir,
                    log: dir.path().join(format!("{}.log", spec.id)),
                    wrapper: Vec::new(),
                    env: Vec::new(),
                    tls,
                    credentials,
                    restarts: 0,
                    child: None,
                },
            );
        }
        Tree { dir, nodes }
    }

    /// Gives TLS node `id` a certificate with its own name from another CA (one this tree's
    /// nodes do not trust), for its listeners and its link alike.
    pub fn give_foreign_certificate(&mut self, id: &str) {
        let other = self.dir.path().join("other");
        let (code, _, err) = medlink(&[
            "certs",
            "--dir",
            other.to_str().expect("utf-8 temp path"),
            id,
        ]);
        assert_eq!(code, 0, "{err}");
        let certs = self.dir.path().join("certs");
        let cfg = self.node(id).config.clone();
        let text = std::fs::read_to_string(&cfg).expect("read config");
        let text = ["crt", "key"].iter().fold(text, |text, ext| {
            text.replace(
                &format!("\"{}/{id}.{ext}\"", certs.display()),
                &format!("\"{}/{id}.{ext}\"", other.display()),
            )
        });
        std::fs::write(&cfg, text).expect("write config");
    }

    /// Writes configs and starts every node.
    pub fn start(specs: &[NodeSpec]) -> Tree {
        let mut t = Tree::new(specs);
        for spec in specs {
            t.node(&spec.id).start();
        }
        t
    }

    pub fn node(&mut self, id: &str) -> &mut NodeProc {
        self.nodes
            .get_mut(id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Moves a node out (to drive it from another thread); [`Tree::put`] brings it back.
    pub fn take(&mut self, id: &str) -> NodeProc {
        self.nodes
            .remove(id)
            .unwrap_or_else(|| panic!("no node {id}"))
    }

    /// Puts back a node taken with [`Tree::take`].
    pub fn put(&mut self, node: NodeProc) {
        self.nodes.insert(node.id.clone(), node);
    }

    /// Points `child`'s parent address list at `addresses` (before the child starts).
    pub fn set_parent_addresses(&mut self, child: &str, addresses: &[String]) {
        let cfg = self.node(child).config.clone();
        let text = std::fs::read_to_string(&cfg).expect("read config");
        let start = text.find("addresses = [").expect("child has a [parent]");
        let end = start + text[start..].find(']').expect("closing bracket") + 1;
        let list: Vec<String> = addresses.iter().map(|a| format!("\"{a}\"")).collect();
        let text = format!(
            "{}addresses = [{}]{}",
            &text[..start],
            list.join(", "),
            &text[end..]
        );
        std::fs::write(&cfg, text).expect("write config");
    }

    /// Sets `key = value` (TOML) in `child`'s `[parent]`, the last section of its config
    /// (before the child starts).
    pub fn set_parent_key(&mut self, child: &str, key: &str, value: &str) {
        let cfg = self.node(child).config.clone();
        let text = std::fs::read_to_string(&cfg).expect("read config");
        let kept: Vec<&str> = text
            .lines()
            .filter(|l| !l.starts_with(&format!("{key} = ")))
            .collect();
        let text = format!("{}\n{key} = {value}\n", kept.join("\n"));
        std::fs::write(&cfg, text).expect("write config");
    }

    /// Checks that a stream of `n` numbered commands arrived whole: nothing lost, repeated or
    /// out of order, and no receipt (every node's log is printed if not).
    pub fn assert_stream_intact(&self, seqs: &[u64], receipts: &[Value], n: u64) {
        let (lost, dups, ooo) = audit_sequence(seqs, n);
        if lost + dups + ooo > 0 {
            self.dump_logs();
        }
        assert!(receipts.is_empty(), "unexpected receipts: {receipts:?}");
        assert_eq!(
            (lost, dups, ooo),
            (0, 0, 0),
            "lost, duplicates, out of order of {n}"
        );
        assert_eq!(seqs.len() as u64, n);
    }

    /// Prints every node's log (call before failing an assertion for a useful report).
    pub fn dump_logs(&self) {
        for n in self.nodes.values() {
            eprintln!("----- {} -----\n{}", n.id, tail(&n.log_text(), 40));
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// Polls `f` every 100 ms for up to `secs`; true once it holds.
pub fn within(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    false
}

pub fn spec(id: &str, parent: Option<&str>, clients: &[&str]) -> NodeSpec {
    NodeSpec {
        id: id.into(),
        parent: parent.map(String::from),
        clients: clients.iter().map(|s| s.to_string()).collect(),
        extra: String::new(),
        limits: String::new(),
    }
}

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
        loop {
            let m = self.recv(secs).await.unwrap_or_else(|| {
                panic!("{}@{}: no command within {secs} s", self.name, self.node)
            });
            if m.topic.ends_with("/cmd") {
                return m.json;
            }
            eprintln!("{}: skipping {}: {}", self.name, m.topic, m.json);
        }
    }

    /// Next receipt within `secs`.
    pub async fn expect_receipt(&mut self, secs: u64) -> Value {
        loop {
            let m = self.recv(secs).await.unwrap_or_else(|| {
                panic!("{}@{}: no receipt within {secs} s", self.name, self.node)
            });
            if m.topic.ends_with("/receipt") {
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

/// Checks a stream of sequence numbers 0..n from one sender: returns (lost, duplicates,
/// out_of_order).
pub fn audit_sequence(received: &[u64], n: u64) -> (u64, u64, u64) {
    let mut seen = HashSet::new();
    let mut dups = 0;
    let mut ooo = 0;
    let mut highest: Option<u64> = None;
    for &s in received {
        if !seen.insert(s) {
            dups += 1;
            continue;
        }
        if matches!(highest, Some(h) if s < h) {
            ooo += 1;
        }
        highest = Some(highest.map_or(s, |h| h.max(s)));
    }
    let lost = (0..n).filter(|s| !seen.contains(s)).count() as u64;
    (lost, dups, ooo)
}

/// Runs the `medlink` binary with `args`; returns (exit code, stdout, stderr).
pub fn medlink(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN).args(args).output().expect("run medlink");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Trail node ids of an envelope.
pub fn trail(env: &Value) -> Vec<String> {
    env["trail"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|h| h["node"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
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
