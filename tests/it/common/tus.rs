//! tus 1.0 uploads by hand over the raw HTTP client (tests that need an independent client
//! run tuspy), and test files.

#![allow(dead_code)]

use serde_json::Value;

use super::http::{get_json, read, send, Login, Reply};

/// `n` bytes that do not compress or repeat (a scan would not).
pub fn scan(n: u64) -> Vec<u8> {
    // xorshift64, eight bytes a step (the tests build files of hundreds of MB).
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut out = Vec::with_capacity(n as usize + 8);
    while (out.len() as u64) < n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(n as usize);
    out
}

/// `HEAD` of an upload: how far it is.
pub fn head(port: u16, who: Login, upload: &str) -> Reply {
    read(send(
        port,
        "HEAD",
        upload,
        who,
        &[("Tus-Resumable", "1.0.0")],
        b"",
    ))
}

/// `PATCH` of `bytes` at `offset` to an upload, with `extra` headers.
pub fn patch(
    port: u16,
    who: Login,
    (upload, offset): (&str, usize),
    extra: &[(&str, &str)],
    bytes: &[u8],
) -> Reply {
    let offset = offset.to_string();
    let mut headers = vec![
        ("Tus-Resumable", "1.0.0"),
        ("Content-Type", "application/offset+octet-stream"),
        ("Upload-Offset", offset.as_str()),
    ];
    headers.extend_from_slice(extra);
    read(send(port, "PATCH", upload, who, &headers, bytes))
}

/// `POST /v1/files`: creates an upload of `length` bytes.
pub fn create(port: u16, login: Login, length: u64, metadata: &str) -> Reply {
    let len = length.to_string();
    let mut headers = vec![("Tus-Resumable", "1.0.0"), ("Upload-Length", len.as_str())];
    if !metadata.is_empty() {
        headers.push(("Upload-Metadata", metadata));
    }
    read(send(port, "POST", "/v1/files", login, &headers, b""))
}

pub fn base64_of(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// Uploads `bytes` as `who` in one PATCH; returns the file reference.
pub fn upload_small(port: u16, who: Login, bytes: &[u8]) -> Value {
    let made = create(
        port,
        who,
        bytes.len() as u64,
        &format!("filename {}", base64_of(b"report.pdf")),
    );
    assert_eq!(made.status, 201);
    let upload = made.header("location").expect("Location");
    assert_eq!(patch(port, who, (&upload, 0), &[], bytes).status, 204);
    let (status, file) = get_json(port, &upload, who);
    assert_eq!(status, 200, "{file}");
    file
}

/// Uploads `bytes` as `who` in PATCHes of at most 32 MiB, declaring its SHA-256; returns
/// the file reference.
pub fn upload(port: u16, who: Login, name: &str, bytes: &[u8]) -> Value {
    use sha2::{Digest, Sha256};
    let sha = hex::encode(Sha256::digest(bytes));
    let metadata = format!(
        "filename {},sha256 {}",
        base64_of(name.as_bytes()),
        base64_of(sha.as_bytes())
    );
    let made = create(port, who, bytes.len() as u64, &metadata);
    assert_eq!(made.status, 201, "{}", String::from_utf8_lossy(&made.body));
    let upload = made.header("location").expect("Location");
    for (i, chunk) in bytes.chunks(32 << 20).enumerate() {
        let sent = patch(port, who, (&upload, i * (32 << 20)), &[], chunk);
        assert_eq!(sent.status, 204, "{}", String::from_utf8_lossy(&sent.body));
    }
    let (status, file) = get_json(port, &upload, who);
    assert_eq!(status, 200, "{file}");
    assert_eq!(file["sha256"], sha.as_str());
    file
}

/// `GET /v1/files/<sha>` as `who`, with `Range: bytes=<range>` if given.
pub fn download(port: u16, who: Login, sha: &str, range: Option<&str>) -> Reply {
    let range = range.map(|r| format!("bytes={r}"));
    let headers: Vec<(&str, &str)> = range.iter().map(|r| ("Range", r.as_str())).collect();
    read(send(
        port,
        "GET",
        &format!("/v1/files/{sha}"),
        who,
        &headers,
        b"",
    ))
}
