//! Files in an S3-compatible bucket shared by two nodes (issue "Files", the cloud case):
//! nothing is copied between them, the recipient downloads through a presigned URL, the URL
//! expires, and only the file's readers get one. The bucket is served by `s3s-fs` (crates.io),
//! which checks request signatures and presigned URLs' expiry as S3 does.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::common;
use common::http::{get_json, post_json, read, Login};
use common::tus::{download, scan, upload};
use common::*;
use serde_json::json;
use sha2::{Digest, Sha256};

const CITY: &str = "js.nj";
const COUNTY: &str = "js.nj.gulou";
const BUCKET: &str = "medlink";

/// An s3s-fs server on a free port over `dir`, with bucket [`BUCKET`].
struct S3Server {
    port: u16,
    child: Child,
}

impl S3Server {
    fn start(dir: &std::path::Path) -> S3Server {
        std::fs::create_dir_all(dir.join(BUCKET)).unwrap();
        let port = free_port();
        let child = Command::new("s3s-fs")
            .args(["--host", "127.0.0.1", "--port", &port.to_string()])
            .args(["--access-key", "testing", "--secret-key", "testing"])
            .arg(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("s3s-fs is installed (scripts/test.sh installs it)");
        assert!(
            within(10, || std::net::TcpStream::connect(("127.0.0.1", port))
                .is_ok()),
            "s3s-fs did not start"
        );
        S3Server { port, child }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// GET of a presigned `url` (on loopback), without credentials.
fn fetch_url(url: &str) -> common::http::Reply {
    use std::io::Write;
    let u = url::Url::parse(url).expect("a URL");
    let port = u.port().expect("a port");
    // The signature covers the Host header, port included.
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).expect("connect to s3s-fs");
    write!(
        s,
        "GET {}?{} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n",
        u.path(),
        u.query().unwrap_or("")
    )
    .unwrap();
    read(s)
}

#[test]
fn two_nodes_on_one_bucket_copy_nothing_and_the_recipient_downloads_by_a_presigned_url_that_expires(
) {
    let s3dir = tempfile::tempdir().unwrap();
    let s3 = S3Server::start(s3dir.path());
    let mut t = Tree::new(&[
        spec(CITY, None, &["hosp", "visitor"]),
        spec(COUNTY, Some(CITY), &["clinic"]),
    ]);
    let secret = t.dir.path().join("s3.secret");
    std::fs::write(&secret, "testing\n").unwrap();
    for id in [CITY, COUNTY] {
        let cfg = t.node(id).config.clone();
        let mut text = std::fs::read_to_string(&cfg).unwrap();
        text += &format!(
            "\n[files.s3]\nendpoint = \"http://127.0.0.1:{}\"\nbucket = \"{BUCKET}\"\nprefix = \"js/files\"\naccess_key_id = \"testing\"\nsecret_access_key_file = \"{}\"\npresign_ttl_s = 600\n",
            s3.port,
            secret.display()
        );
        std::fs::write(&cfg, text).unwrap();
    }
    for id in [CITY, COUNTY] {
        t.node(id).start();
    }
    let clinic: Login = Some(("clinic", PASSWORD));
    let hosp: Login = Some(("hosp", PASSWORD));
    let visitor: Login = Some(("visitor", PASSWORD));
    let (city, county) = (t.node(CITY).http_port, t.node(COUNTY).http_port);

    // The clinic's upload lands in the bucket, not on the county's disk.
    let bytes = scan(6 * (1 << 20) + 3);
    let sha = hex::encode(Sha256::digest(&bytes));
    let file = upload(county, clinic, "mri.bin", &bytes);
    let object = s3dir.path().join(BUCKET).join("js/files").join(&sha);
    assert_eq!(
        std::fs::metadata(&object).map(|m| m.len()).ok(),
        Some(bytes.len() as u64)
    );
    let county_objects = t
        .node(COUNTY)
        .data_dir
        .join("files/objects")
        .join(&sha[..2]);
    assert!(
        !county_objects.join(&sha).exists(),
        "a copy stayed on the county's disk"
    );

    let (status, answer) = post_json(
        county,
        "/v1/messages",
        clinic,
        &json!({"to": {"node": CITY, "client": "hosp"}, "cmd": "consult.mri", "files": [file]}),
    );
    assert_eq!(status, 202, "{answer}");
    let (_, page) = get_json(city, "/v1/inbox?wait=30", hosp);
    assert_eq!(
        page["messages"][0]["files"][0]["sha256"],
        sha.as_str(),
        "{page}"
    );

    // Nothing was copied: the county found the city already had the object (it "resumed" at
    // the file's end), and the city received no bytes.
    let log = t.node(COUNTY).log_text();
    let sent: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("file sent to the parent"))
        .collect();
    assert_eq!(sent.len(), 1, "{log}");
    assert!(
        sent[0].contains(&format!("from_offset={}", bytes.len())),
        "{}",
        sent[0]
    );
    let uploads = t.node(CITY).data_dir.join("files/uploads");
    let received: u64 = std::fs::read_dir(&uploads)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".part"))
        .map(|e| e.metadata().unwrap().len())
        .sum();
    assert_eq!(received, 0);

    // The hospital gets a presigned URL and downloads with no credentials at all.
    let (status, signed) = get_json(city, &format!("/v1/files/{sha}/url?ttl_s=3"), hosp);
    assert_eq!(status, 200, "{signed}");
    let url = signed["url"].as_str().unwrap().to_string();
    assert!(
        url.contains(&sha) && url.contains("X-Amz-Expires=3"),
        "{url}"
    );
    let got = fetch_url(&url);
    assert_eq!(got.status, 200);
    assert_eq!(hex::encode(Sha256::digest(&got.body)), sha);
    // It names one object: the same signature on another key is refused.
    let widened = fetch_url(&url.replace(&sha, &"0".repeat(64)));
    assert_eq!(
        widened.status,
        403,
        "{}",
        String::from_utf8_lossy(&widened.body)
    );
    // Through the node too, by Range, streamed from the bucket.
    let part = download(city, hosp, &sha, Some("100-199"));
    assert_eq!((part.status, &part.body[..]), (206, &bytes[100..200]));
    // Strangers get no URL.
    let (status, refused) = get_json(city, &format!("/v1/files/{sha}/url"), visitor);
    assert_eq!((status, refused["code"].as_str()), (403, Some("forbidden")));
    // The URL expires.
    std::thread::sleep(Duration::from_secs(4));
    let late = fetch_url(&url);
    assert_eq!(late.status, 403, "{}", String::from_utf8_lossy(&late.body));
}
