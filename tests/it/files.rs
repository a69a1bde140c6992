//! The file store's uploads and downloads (issue "Files", parts 1 and 2): the tus 1.0
//! protocol with a real independent client (`tuspy` from PyPI), resumed after a kill -9 of
//! the node from the offset it had reached; the SHA-256 verified; a wrong chunk checksum and a
//! wrong declared hash refused; downloads by hash with `Range`; strangers refused.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::common;
use common::http::{get_json, read, send, Login};
use common::tus::{base64_of, create, download, head, patch, scan, upload_small};
use common::venv::venv;
use common::*;
use serde_json::Value;
use sha2::{Digest, Sha256};

const TUSPY: &str = "tuspy==1.1.0\n";
const MB: u64 = 1 << 20;

/// Uploads (or resumes, given `resume`) `path` with tuspy, up to `stop_at` bytes (0: all);
/// returns the upload's URL, the offset it started from, and where it ended.
const SCRIPT: &str = r#"
import sys, json, base64
from tusclient import client
url, user, pw, path, chunk, stop_at, resume, sha = sys.argv[1:9]
auth = 'Basic ' + base64.b64encode(f'{user}:{pw}'.encode()).decode()
c = client.TusClient(url, headers={'Authorization': auth})
kw = dict(chunk_size=int(chunk), upload_checksum=True,
          metadata={'filename': 'ct-series.bin', 'filetype': 'application/octet-stream', 'sha256': sha})
up = c.uploader(path, url=resume, **kw) if resume else c.uploader(path, **kw)
start = up.offset
up.upload(stop_at=int(stop_at) or None)
print(json.dumps({'url': up.url, 'start': start, 'offset': up.offset}))
"#;

fn tuspy(args: &[String]) -> Value {
    let python = venv("tuspy", TUSPY, Duration::from_secs(300)).join("bin/python");
    let out = Command::new(python)
        .arg("-c")
        .arg(SCRIPT)
        .args(args)
        .output()
        .expect("python runs");
    assert!(
        out.status.success(),
        "tuspy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("tuspy prints JSON")
}

fn header(reply: &common::http::Reply, name: &str) -> Option<String> {
    reply.header(name)
}

#[test]
fn a_tus_upload_resumes_after_a_kill_and_the_file_is_verified_and_served_by_range() {
    let mut t = Tree::start(&[spec("js", None, &["clinic", "stranger"])]);
    let port = t.node("js").http_port;
    let dir = tempfile::tempdir().unwrap();
    let bytes = scan(100 * MB);
    let sha = hex::encode(Sha256::digest(&bytes));
    let path: PathBuf = dir.path().join("ct-series.bin");
    std::fs::write(&path, &bytes).unwrap();
    let url = format!("http://127.0.0.1:{port}/v1/files");
    let args = |stop_at: u64, resume: &str| -> Vec<String> {
        vec![
            url.clone(),
            "clinic".into(),
            PASSWORD.into(),
            path.display().to_string(),
            (8 * MB).to_string(),
            stop_at.to_string(),
            resume.into(),
            sha.clone(),
        ]
    };

    // Half of it, then the node is killed.
    let first = tuspy(&args(50 * MB, ""));
    let upload = first["url"].as_str().expect("url").to_string();
    let reached = first["offset"].as_u64().unwrap();
    assert!((50 * MB..100 * MB).contains(&reached), "{first}");
    t.node("js").kill9();
    t.node("js").start();

    // The node still knows how far it got; tuspy resumes from there, not from 0.
    let clinic: Login = Some(("clinic", PASSWORD));
    let at = head(port, clinic, &path_of(&upload));
    assert_eq!(at.status, 200);
    assert_eq!(header(&at, "upload-offset"), Some(reached.to_string()));
    let second = tuspy(&args(0, &upload));
    assert_eq!(second["start"].as_u64(), Some(reached), "{second}");
    assert_eq!(second["offset"].as_u64(), Some(100 * MB));

    // The reference, verified against the declared hash.
    let (status, file) = get_json(port, &path_of(&upload), clinic);
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["sha256"], sha.as_str());
    assert_eq!(file["size"], 100 * MB);
    assert_eq!(file["name"], "ct-series.bin");

    // Downloads: whole, and a range; a stranger is refused, an unknown hash is not found.
    let whole = download(port, clinic, &sha, None);
    assert_eq!(whole.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&whole.body)), sha);
    let part = download(port, clinic, &sha, Some("1000-1999"));
    assert_eq!(part.status, 206);
    assert_eq!(part.body, bytes[1000..2000]);
    assert_eq!(
        header(&part, "content-range").as_deref(),
        Some(format!("bytes 1000-1999/{}", 100 * MB).as_str())
    );
    let stranger: Login = Some(("stranger", PASSWORD));
    let (status, body) = get_json(port, &format!("/v1/files/{sha}"), stranger);
    assert_eq!((status, body["code"].as_str()), (403, Some("forbidden")));
    let ops: Login = Some(("ops", PASSWORD));
    let (status, _) = get_json(port, &format!("/v1/files/{}", "0".repeat(64)), ops);
    assert_eq!(status, 404);
}

fn path_of(url: &str) -> String {
    url.split_once("://")
        .and_then(|(_, rest)| rest.split_once('/'))
        .map_or(url.to_string(), |(_, p)| format!("/{p}"))
}

#[test]
fn wrong_checksums_offsets_and_sizes_are_refused_and_nothing_is_kept() {
    let mut t = Tree::start(&[spec("js", None, &["clinic"])]);
    let port = t.node("js").http_port;
    let clinic: Login = Some(("clinic", PASSWORD));
    let body = b"report page 1".to_vec();
    let patch = |at: usize, upload: &str, extra: &[(&str, &str)], bytes: &[u8]| {
        patch(port, clinic, (upload, at), extra, bytes)
    };

    // A chunk whose checksum does not match is not stored.
    let made = create(port, clinic, body.len() as u64, "");
    assert_eq!(made.status, 201);
    let upload = made.header("location").expect("Location");
    let wrong = base64_of(&[0u8; 20]);
    let refused = patch(
        0,
        &upload,
        &[("Upload-Checksum", &format!("sha1 {wrong}"))],
        &body,
    );
    assert_eq!(
        refused.status,
        460,
        "{}",
        String::from_utf8_lossy(&refused.body)
    );
    let at = head(port, clinic, &upload);
    assert_eq!(at.header("upload-offset").as_deref(), Some("0"));
    // At a wrong offset: 409. Then right, in two chunks.
    assert_eq!(patch(5, &upload, &[], &body[5..]).status, 409);
    assert_eq!(patch(0, &upload, &[], &body[..5]).status, 204);
    let done = patch(5, &upload, &[], &body[5..]);
    assert_eq!(done.status, 204);
    assert_eq!(done.header("upload-offset").as_deref(), Some("13"));

    // A file whose bytes are not the declared SHA-256: refused, and the upload is gone.
    let zeros = base64_of("0".repeat(64).as_bytes());
    let made = create(port, clinic, body.len() as u64, &format!("sha256 {zeros}"));
    let upload = made.header("location").expect("Location");
    let refused = patch(0, &upload, &[], &body);
    assert_eq!(refused.status, 460);
    assert_eq!(head(port, clinic, &upload).status, 404);

    // Too large for the node; not tus; no length: each named.
    let too_large = create(port, clinic, 5 << 30, "");
    assert_eq!(too_large.status, 413);
    let post = |headers: &[(&str, &str)]| {
        let r = read(send(port, "POST", "/v1/files", clinic, headers, b""));
        (r.status, r.json()["field"].as_str().map(str::to_string))
    };
    let named = |s: &str| Some(s.to_string());
    assert_eq!(
        post(&[("Upload-Length", "10")]),
        (412, named("Tus-Resumable"))
    );
    assert_eq!(
        post(&[("Tus-Resumable", "1.0.0")]),
        (400, named("Upload-Length"))
    );
    // Without credentials: 401, as everywhere.
    assert_eq!(create(port, None, 10, "").status, 401);
}

#[test]
fn a_full_disk_refuses_the_upload_clearly_and_it_resumes_once_there_is_room() {
    let mut t = Tree::start(&[spec("js", None, &["clinic"])]);
    let port = t.node("js").http_port;
    let clinic: Login = Some(("clinic", PASSWORD));
    let bytes = scan(4 * MB);
    let made = create(port, clinic, bytes.len() as u64, "");
    let upload = made.header("location").expect("Location");
    // The disk "fills up" at 1 MiB per file for the node's process.
    let pid = t.node("js").pid().unwrap().to_string();
    let limit = |v: &str| {
        let ok = Command::new("prlimit")
            .args(["--pid", &pid, &format!("--fsize={v}")])
            .status()
            .expect("prlimit runs (util-linux)")
            .success();
        assert!(ok, "prlimit --fsize={v}");
    };
    limit(&format!("{}:unlimited", MB));
    let full = patch(port, clinic, (&upload, 0), &[], &bytes);
    limit("unlimited:unlimited");
    assert_eq!(full.status, 507, "{}", String::from_utf8_lossy(&full.body));
    assert_eq!(full.json()["code"], "store_full");
    assert!(
        t.node("js").is_running(),
        "a full disk does not kill the node"
    );
    // What arrived is kept; the rest follows from there.
    let at: usize = head(port, clinic, &upload)
        .header("upload-offset")
        .unwrap()
        .parse()
        .unwrap();
    assert!(at <= MB as usize, "at most the limit was written: {at}");
    let done = patch(port, clinic, (&upload, at), &[], &bytes[at..]);
    assert_eq!(done.status, 204, "{}", String::from_utf8_lossy(&done.body));
    let sha = hex::encode(Sha256::digest(&bytes));
    assert_eq!(done.header("medlink-file-sha256"), Some(sha));
}

#[test]
fn a_command_carries_its_file_references_and_its_recipient_may_read_the_file() {
    let mut t = Tree::start(&[
        spec("js", None, &["doc", "other", "thief"]),
        spec("js.a", Some("js"), &["clinic"]),
    ]);
    let port = t.node("js").http_port;
    let doc: Login = Some(("doc", PASSWORD));
    let other: Login = Some(("other", PASSWORD));
    let report = b"%PDF-1.7 discharge summary".to_vec();
    let file = upload_small(port, doc, &report);
    let sha = file["sha256"].as_str().unwrap().to_string();
    // The doctor at the city sends the report to the clinic below, and to a colleague here.
    let send_to = |node: &str, client: &str| {
        let body = serde_json::json!({"to": {"node": node, "client": client}, "cmd": "report", "files": [file]});
        let (status, answer) = common::http::post_json(port, "/v1/messages", doc, &body);
        assert_eq!(status, 202, "{answer}");
    };
    let fetch = || download(port, other, &sha, None);
    let before = fetch();
    assert_eq!(
        before.status, 403,
        "not his before a command refers him to it"
    );
    send_to("js.a", "clinic");
    send_to("js", "other");
    // The clinic's command carries the reference unchanged across the tier.
    let clinic: Login = Some(("clinic", PASSWORD));
    let (_, page) = get_json(t.node("js.a").http_port, "/v1/inbox?wait=10", clinic);
    assert_eq!(
        page["messages"][0]["files"],
        serde_json::json!([file]),
        "{page}"
    );
    // The colleague here may read it now.
    let (_, page) = get_json(port, "/v1/inbox?wait=10", other);
    assert_eq!(page["messages"][0]["files"][0]["sha256"], sha.as_str());
    let got = fetch();
    assert_eq!((got.status, got.body), (200, report.clone()));
    // A file the sender may not send (another's upload, known only by its hash) or that is
    // not at the sender's node is refused, naming the field: nobody grants himself a file.
    let stolen = serde_json::json!({"to": {"node": "js", "client": "other"}, "cmd": "report",
        "files": [{"sha256": sha, "size": report.len()}]});
    let thief: Login = Some(("thief", PASSWORD));
    let (status, answer) = common::http::post_json(port, "/v1/messages", thief, &stolen);
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("files[0].sha256")),
        "{answer}"
    );
    let second = upload_small(port, doc, b"%PDF-1.7 second opinion");
    let elsewhere = serde_json::json!({"to": {"node": "js", "client": "doc"}, "cmd": "report",
        "files": [second]});
    let (status, answer) =
        common::http::post_json(t.node("js.a").http_port, "/v1/messages", clinic, &elsewhere);
    assert_eq!(
        (status, answer["field"].as_str()),
        (400, Some("files[0].sha256")),
        "{answer}"
    );
    // A reference that is not one is refused, naming the field.
    let bad = serde_json::json!({"to": {"node": "js", "client": "other"}, "cmd": "report",
        "files": [{"sha256": "not-a-hash", "size": 1}]});
    let (status, answer) = common::http::post_json(port, "/v1/messages", doc, &bad);
    assert_eq!(status, 400);
    assert!(
        answer["field"]
            .as_str()
            .unwrap()
            .ends_with("files[0].sha256"),
        "{answer}"
    );
}

#[test]
fn a_full_quota_refuses_a_new_upload_clearly_and_keeps_what_it_holds() {
    let mut t = Tree::new(&[spec("js", None, &["clinic"])]);
    let cfg = t.node("js").config.clone();
    let text = std::fs::read_to_string(&cfg).unwrap() + "\n[files]\nquota_bytes = 100\n";
    std::fs::write(&cfg, text).unwrap();
    t.node("js").start();
    let port = t.node("js").http_port;
    let clinic: Login = Some(("clinic", PASSWORD));
    let first = scan(60);
    let file = upload_small(port, clinic, &first);
    // 60 + 60 > 100: refused before a byte is sent, saying why.
    let refused = create(port, clinic, 60, "");
    assert_eq!(refused.status, 507);
    let body = refused.json();
    assert_eq!(body["code"], "store_full", "{body}");
    assert!(body["message"].as_str().unwrap().contains("100"), "{body}");
    // What the store holds is untouched.
    let sha = file["sha256"].as_str().unwrap();
    let got = download(port, clinic, sha, None);
    assert_eq!((got.status, got.body), (200, first));
}
