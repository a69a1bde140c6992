//! What a node does with its data directory and ports (issue "Holes and defects found from
//! outside"): one process per directory, private modes, a WAL that does not stay large, and
//! start-up failures that touch nothing and are said once.

use crate::common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http::{post_json, Login};
use common::*;
use serde_json::json;

const PAT: Login = Some(("pat", PASSWORD));

fn mode(path: &std::path::Path) -> u32 {
    std::fs::metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o777
}

/// Runs `medlink node` on `config` to its end (it is expected to fail); returns (code, stderr).
fn node_that_fails(config: &std::path::Path) -> (i32, String) {
    let mut child = Command::new(BIN)
        .args(["node", "--config"])
        .arg(config)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn medlink node");
    let deadline = Instant::now() + Duration::from_secs(15);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("a node that should refuse to start kept running");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_second_process_on_the_same_data_dir_refuses_to_start() {
    let mut tree = Tree::start(&[spec("js", None, &["pat"])]);
    let node = tree.node("js");
    // The same config with other ports: only the data directory is shared.
    let toml = std::fs::read_to_string(&node.config).unwrap();
    let mut second = toml.clone();
    for port in [node.port, node.ws_port, node.metrics_port, node.http_port] {
        second = second.replace(&format!(":{port}\""), &format!(":{}\"", free_port()));
    }
    let config = node.config.with_file_name("second.toml");
    std::fs::write(&config, second).unwrap();
    let (code, err) = node_that_fails(&config);
    assert_ne!(code, 0);
    assert!(
        err.contains("in use by another medlink process")
            && err.contains(&node.pid().unwrap().to_string()),
        "{err}"
    );
    assert!(node.is_running(), "the first node must be untouched");
    // Once the first is gone (even by kill -9), the directory is free.
    node.kill9();
    node.start();
}

#[test]
fn the_data_dir_and_journal_are_private_to_the_service_user() {
    let mut tree = Tree::start(&[spec("js", None, &["pat"])]);
    let dir = tree.node("js").data_dir.clone();
    assert_eq!(mode(&dir), 0o700, "data dir");
    assert_eq!(mode(&dir.join("journal.db")), 0o600, "journal");
    let (status, _) = post_json(
        tree.node("js").http_port,
        "/v1/messages",
        PAT,
        &json!({"to": {"node": "js", "client": "pat"}, "cmd": "x"}),
    );
    assert_eq!(status, 202);
    assert!(dir.join("journal.db-custody").exists(), "the custody log");
    for f in ["journal.db-wal", "journal.db-shm", "journal.db-custody"] {
        if dir.join(f).exists() {
            assert_eq!(mode(&dir.join(f)), 0o600, "{f}");
        }
    }
    // A directory made loosely before (an older version, or by hand) is tightened.
    tree.node("js").stop();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    std::fs::set_permissions(
        dir.join("journal.db"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    tree.node("js").start();
    assert_eq!(mode(&dir), 0o700);
    assert_eq!(mode(&dir.join("journal.db")), 0o600);
}

/// 20,000 commands of about 330 bytes left a 100-135 MB WAL that a clean stop did not
/// truncate. Now a node idle for `wal_idle_truncate_ms` truncates it (to nothing without a
/// reserve), and a clean stop removes it.
#[test]
fn the_wal_is_truncated_when_idle_and_removed_at_a_clean_stop() {
    let mut js = spec("js", None, &["pat", "sender"]);
    js.extra = "wal_idle_truncate_ms = 500\nwal_reserve_mb = 0\n".into();
    let mut tree = Tree::start(&[js]);
    let port = tree.node("js").http_port;
    let wal = tree.node("js").data_dir.join("journal.db-wal");
    post_numbered(port, 0, 2000, 250);
    let written = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert!(written > 0, "2,000 commands left no WAL to test with");
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut size = written;
    while Instant::now() < deadline && size > 0 {
        std::thread::sleep(Duration::from_millis(200));
        size = std::fs::metadata(&wal).map_or(0, |m| m.len());
    }
    assert_eq!(
        size, 0,
        "the WAL of an idle node stayed at {size} bytes (was {written})"
    );
    // More writes, then a clean stop: no WAL left behind, and nothing lost.
    let (status, _) = post_json(
        port,
        "/v1/messages",
        Some(("sender", PASSWORD)),
        &json!({"to": {"node": "js", "client": "pat"}, "cmd": "x", "params": {"n": 2000}}),
    );
    assert_eq!(status, 202);
    assert_eq!(tree.node("js").stop(), Some(0));
    let left = std::fs::metadata(&wal).map_or(0, |m| m.len());
    assert_eq!(left, 0, "a clean stop left a {left}-byte WAL");
    tree.node("js").start();
    let got = common::http::read_inbox(port, PAT, 2001, 1000);
    assert_eq!(got, (0..2001).collect::<Vec<u64>>());
}

/// Posts commands `from..to` to pat on the node at `port`, 100 to a request, each padded with
/// `pad` bytes.
fn post_numbered(port: u16, from: u64, to: u64, pad: usize) {
    let pad = "p".repeat(pad);
    let numbers: Vec<u64> = (from..to).collect();
    for chunk in numbers.chunks(100) {
        let messages: Vec<_> = chunk
            .iter()
            .map(|n| json!({"to": {"node": "js", "client": "pat"}, "cmd": "x", "params": {"n": n, "pad": pad}}))
            .collect();
        let (status, body) = post_json(
            port,
            "/v1/messages",
            Some(("sender", PASSWORD)),
            &json!({ "messages": messages }),
        );
        assert_eq!(status, 202, "{body}");
    }
}

/// A node reserves its WAL's space before its first command, so that commits write over
/// allocated blocks instead of waiting for allocations. The zeros after the frames are never
/// taken for frames: a `kill -9` with the WAL part frames, part reserve loses nothing. Idle, the
/// node gives back what grew beyond the reserve, and keeps the reserve.
#[test]
fn the_wal_space_is_reserved_at_start_and_kept_when_idle() {
    const RESERVE: u64 = 1 << 20;
    let mut js = spec("js", None, &["pat", "sender"]);
    js.extra = "wal_idle_truncate_ms = 500\nwal_reserve_mb = 1\n".into();
    let mut tree = Tree::start(&[js]);
    let port = tree.node("js").http_port;
    let wal = tree.node("js").data_dir.join("journal.db-wal");
    let size = |wal: &std::path::Path| std::fs::metadata(wal).map_or(0, |m| m.len());
    assert_eq!(size(&wal), RESERVE, "no reserve before the first command");
    assert_eq!(mode(&wal), 0o600, "the WAL holds patient data");

    post_numbered(port, 0, 200, 250);
    assert_eq!(
        size(&wal),
        RESERVE,
        "200 commands should fit in the reserve"
    );
    tree.node("js").kill9();
    tree.node("js").start();
    assert_eq!(
        size(&wal),
        RESERVE,
        "the reserve is made again after a restart"
    );

    // About 11 MB, faster than a checkpoint every 500 ms can let the WAL rewind.
    post_numbered(port, 200, 3000, 4000);
    let grown = size(&wal);
    assert!(
        grown > RESERVE,
        "11 MB of commands left the WAL within its reserve"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline && size(&wal) != RESERVE {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        size(&wal),
        RESERVE,
        "an idle node should cut its {grown}-byte WAL back to the reserve"
    );
    let got = common::http::read_inbox(port, PAT, 3000, 1000);
    assert_eq!(got, (0..3000).collect::<Vec<u64>>());
}

#[test]
fn a_port_in_use_is_found_before_the_journal_is_created_and_said_once() {
    let mut tree = Tree::new(&[spec("js", None, &["pat"])]);
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let node = tree.node("js");
    let toml = std::fs::read_to_string(&node.config).unwrap();
    let toml = toml.replace(&format!(":{}\"", node.http_port), &format!(":{port}\""));
    std::fs::write(&node.config, toml).unwrap();
    let (code, err) = node_that_fails(&node.config);
    assert_ne!(code, 0);
    assert_eq!(
        err.matches("cannot listen").count(),
        1,
        "the error should be said once:\n{err}"
    );
    assert!(err.contains(&port.to_string()), "{err}");
    assert!(
        !node.data_dir.join("journal.db").exists(),
        "the journal was created by a node that could not start"
    );
}

#[test]
fn a_node_id_over_the_length_limit_is_refused_naming_the_limit() {
    let mut tree = Tree::new(&[spec("js", None, &["pat"])]);
    let node = tree.node("js");
    let long = "a".repeat(201);
    let toml = std::fs::read_to_string(&node.config)
        .unwrap()
        .replace("id = \"js\"", &format!("id = \"{long}\""));
    std::fs::write(&node.config, toml).unwrap();
    let (code, err) = node_that_fails(&node.config);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains("node.id") && err.contains("at most 200"),
        "{err}"
    );
}
