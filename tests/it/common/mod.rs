//! Test harness: real `medlink node` processes on loopback, real MQTT clients.
//!
//! A [`Tree`] writes one TOML file per node into a temporary directory, with ports chosen
//! once so that a restarted node comes back on the same address its children dial. Every
//! node gets a credentials file (argon2id hashes of [`PASSWORD`]); a TLS tree
//! ([`Tree::new_tls`]) also gets certificates from `medlink certs`, TLS listeners, and
//! certificate-authenticated links.

#![allow(dead_code)]

pub mod app;
pub mod http;
pub mod node;
pub mod proxy;
pub mod raw;
pub mod tus;
pub mod venv;

pub use app::{collect, stream_to_sink, App, Msg};
pub use node::{spec, NodeProc, NodeSpec, Tree};

use std::collections::HashSet;
use std::io::Write;
use std::net::TcpListener;
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

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
