//! A deliberately small HTTP/1.1 client over a raw socket, so tests see exactly what the node
//! sends (status, headers, body bytes) and can cut a response off in the middle.

use std::io::{ErrorKind, Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use serde_json::Value;

/// A response.
#[derive(Debug)]
pub struct Reply {
    pub status: u16,
    pub headers: String,
    pub body: Vec<u8>,
}

impl Reply {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!(
                "status {}: body is not JSON ({e}): {}",
                self.status,
                String::from_utf8_lossy(&self.body)
            )
        })
    }

    pub fn header(&self, name: &str) -> Option<String> {
        self.headers.lines().find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.trim()
                .eq_ignore_ascii_case(name)
                .then(|| v.trim().to_string())
        })
    }
}

/// Basic credentials.
pub type Login<'a> = Option<(&'a str, &'a str)>;

pub fn basic(user: &str, pass: &str) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let input = format!("{user}:{pass}").into_bytes();
    let mut out = String::new();
    for chunk in input.chunks(3) {
        let b = [
            chunk[0],
            *chunk.get(1).unwrap_or(&0),
            *chunk.get(2).unwrap_or(&0),
        ];
        let n = (b[0] as u32) << 16 | (b[1] as u32) << 8 | b[2] as u32;
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(T[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// Writes a request; the connection closes after the response.
pub fn send(
    port: u16,
    method: &str,
    path: &str,
    login: Login,
    extra_headers: &[(&str, &str)],
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(("127.0.0.1", port)).expect("connect to the HTTP API");
    s.set_read_timeout(Some(Duration::from_secs(90))).unwrap();
    let mut req = format!(
        "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    let typed = extra_headers
        .iter()
        .any(|(k, _)| k.eq_ignore_ascii_case("content-type"));
    if !body.is_empty() && !typed {
        req += "Content-Type: application/json\r\n";
    }
    if let Some((u, p)) = login {
        req += &format!("Authorization: Basic {}\r\n", basic(u, p));
    }
    for (k, v) in extra_headers {
        req += &format!("{k}: {v}\r\n");
    }
    req += "\r\n";
    s.write_all(req.as_bytes()).unwrap();
    // A server may answer an oversized body early (413) and close before reading the rest, as
    // curl and browsers expect: the write then fails with EPIPE or ECONNRESET while the answer
    // waits in our receive buffer, so the caller still reads it.
    if let Err(e) = s.write_all(body) {
        assert!(
            matches!(e.kind(), ErrorKind::BrokenPipe | ErrorKind::ConnectionReset),
            "writing the request body: {e}"
        );
    }
    s
}

/// Reads a whole response (identity or chunked body).
pub fn read(mut s: TcpStream) -> Reply {
    let mut raw = Vec::new();
    if let Err(e) = s.read_to_end(&mut raw) {
        // A reset after an early answer (see `send`) still leaves the answer read.
        assert!(
            e.kind() == ErrorKind::ConnectionReset && !raw.is_empty(),
            "read response: {e}"
        );
    }
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a complete header");
    let head = String::from_utf8_lossy(&raw[..split]).into_owned();
    let mut body = raw[split + 4..].to_vec();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status line");
    if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        body = dechunk(&body);
    }
    Reply {
        status,
        headers: head,
        body,
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let Some(eol) = b.windows(2).position(|w| w == b"\r\n") else {
            return out;
        };
        let size =
            usize::from_str_radix(std::str::from_utf8(&b[..eol]).unwrap().trim(), 16).unwrap_or(0);
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// One request, whole response.
pub fn call(port: u16, method: &str, path: &str, login: Login, body: &[u8]) -> Reply {
    read(send(port, method, path, login, &[], body))
}

/// GET with a JSON answer.
pub fn get_json(port: u16, path: &str, login: Login) -> (u16, Value) {
    let r = call(port, "GET", path, login, b"");
    let v = r.json();
    (r.status, v)
}

/// POST JSON with a JSON answer.
pub fn post_json(port: u16, path: &str, login: Login, body: &Value) -> (u16, Value) {
    let r = call(port, "POST", path, login, body.to_string().as_bytes());
    let v = r.json();
    (r.status, v)
}

/// The `params.n` of every message of an inbox page, in order.
pub fn ns(page: &Value) -> Vec<u64> {
    page["messages"]
        .as_array()
        .expect("messages")
        .iter()
        .map(|m| m["params"]["n"].as_u64().expect("params.n"))
        .collect()
}

/// Polls `login`'s inbox from the start, `max` at a time, acknowledging as it goes, until `n`
/// messages came; returns their `params.n` in arrival order (repeats included).
pub fn read_inbox(port: u16, login: Login, n: usize, max: usize) -> Vec<u64> {
    let mut got = Vec::new();
    let mut cursor = String::new();
    while got.len() < n {
        let (status, page) = get_json(
            port,
            &format!("/v1/inbox?cursor={cursor}&max={max}&wait=5"),
            login,
        );
        assert_eq!(status, 200, "{page}");
        let more = ns(&page);
        assert!(!more.is_empty(), "messages stopped after {}", got.len());
        got.extend(more);
        cursor = page["cursor"].as_str().expect("cursor").to_string();
    }
    got
}
