//! Node processes for tests: a [`NodeSpec`] becomes a TOML file and a running `medlink node`
//! ([`NodeProc`]), and a [`Tree`] of them shares one temporary directory, credentials and
//! (for [`Tree::new_tls`]) certificates.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

use super::{audit_sequence, free_port, http_get, medlink, password_hash, BIN, PASSWORD};

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
                "[node]\nid = \"{}\"\ndata_dir = \"{}\"\ncredentials = \"{}\"\n{}{}\n\n[[listener]]\nkind = \"{kind}\"\naddr = \"127.0.0.1:{port}\"\n\n[[listener]]\nkind = \"{ws_kind}\"\naddr = \"127.0.0.1:{ws_port}\"\n\n[link]\nresend_after_ms = 1000\nping_every_ms = 500\ndead_after_ms = 3000\n",
                spec.id,
                data_dir.display(),
                credentials.display(),
                // A small WAL reserve, in `[node]` before `extra` (which may open other
                // tables): the suite starts hundreds of nodes, and 128 MiB of zeros each is
                // disk traffic no test needs. `data_dir.rs` tests the reserve itself.
                if spec.extra.contains("wal_reserve_mb") {
                    ""
                } else {
                    "wal_reserve_mb = 2\n"
                },
                spec.extra,
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

pub fn spec(id: &str, parent: Option<&str>, clients: &[&str]) -> NodeSpec {
    NodeSpec {
        id: id.into(),
        parent: parent.map(String::from),
        clients: clients.iter().map(|s| s.to_string()).collect(),
        extra: String::new(),
        limits: String::new(),
    }
}
