//! Running under systemd (issue "Operators see and fix what is stuck", part 5): the node
//! says READY=1 on `$NOTIFY_SOCKET` once it listens (Type=notify), STOPPING=1 when asked to
//! stop, and SIGHUP (`systemctl reload`) re-reads the credentials file even when the change
//! shows in neither its time nor its size.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use crate::common;
use common::http::{get_json, Login};
use common::*;

#[test]
fn the_node_tells_systemd_when_it_is_ready_and_when_it_stops() {
    let mut t = Tree::new(&[spec("js", None, &["doc"])]);
    let socket = t.dir.path().join("notify.sock");
    let systemd = UnixDatagram::bind(&socket).expect("bind the notify socket");
    systemd
        .set_read_timeout(Some(Duration::from_secs(15)))
        .unwrap();
    let node = t.node("js");
    node.env
        .push(("NOTIFY_SOCKET".into(), socket.display().to_string()));
    node.start();
    let mut buf = [0u8; 512];
    let n = systemd.recv(&mut buf).expect("a notification within 15 s");
    let said = String::from_utf8_lossy(&buf[..n]).to_string();
    assert_eq!(said.trim(), "READY=1");
    // Ready means serving: the API answers at once.
    let (status, _) = get_json(node.http_port, "/v1/transport", Some(("doc", PASSWORD)));
    assert_eq!(status, 200);
    assert_eq!(node.stop(), Some(0));
    let n = systemd.recv(&mut buf).expect("STOPPING=1 on the way out");
    assert_eq!(String::from_utf8_lossy(&buf[..n]).trim(), "STOPPING=1");
}

#[test]
fn sighup_rereads_the_credentials_even_when_they_look_unchanged() {
    let mut t = Tree::start(&[spec("js", None, &["doc"])]);
    let node = t.node("js");
    let port = node.http_port;
    let who = |pw: &'static str| -> Login { Some(("doc", pw)) };
    assert_eq!(get_json(port, "/v1/transport", who(PASSWORD)).0, 200);
    // The password of doc is rotated; the file keeps its size (a hash of the same shape) and
    // its time is put back, as a restore from backup or a `cp -p` would.
    let creds = node.credentials.clone();
    let before = std::fs::metadata(&creds).unwrap();
    let old = std::fs::read_to_string(&creds).unwrap();
    let new_hash = medlink_broker::identity::hash_password("rotated-password");
    assert_eq!(new_hash.len(), password_hash().len());
    std::fs::write(&creds, old.replacen(password_hash(), &new_hash, 1)).unwrap();
    let file = std::fs::File::options().write(true).open(&creds).unwrap();
    file.set_modified(before.modified().unwrap()).unwrap();
    drop(file);
    std::thread::sleep(Duration::from_millis(2_500));
    assert_eq!(
        get_json(port, "/v1/transport", who("rotated-password")).0,
        401,
        "unchanged time and size: not noticed without SIGHUP"
    );
    let pid = node.pid().expect("running").to_string();
    let hup = std::process::Command::new("kill")
        .args(["-HUP", &pid])
        .status()
        .unwrap();
    assert!(hup.success());
    assert!(within(5, || node
        .log_text()
        .contains("credentials reloaded")));
    assert!(node
        .log_text()
        .contains("SIGHUP: re-reading the credentials"));
    assert_eq!(
        get_json(port, "/v1/transport", who("rotated-password")).0,
        200
    );
    assert_eq!(get_json(port, "/v1/transport", who(PASSWORD)).0, 401);
}
