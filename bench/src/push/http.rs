//! HTTP/1.1 recipients of the push bench, written over raw tokio TCP: a long-poll or an event
//! stream costs the load process one socket and a small buffer, where a general client
//! (reqwest/hyper) would add a connection pool, a task and buffers per connection. Also the
//! lean client the coordinator posts with and reads the node's metrics with.
//!
//! - Long-poll: `GET /v1/inbox?wait=W` without a cursor (the node starts at the oldest
//!   unacknowledged command), then again with the cursor it answered, which acknowledges.
//! - SSE: `GET /v1/stream` (chunked `text/event-stream`, `id:` = cursor); each event is
//!   acknowledged with `POST /v1/inbox/ack`, as the `/push` page does, over a few connections
//!   shared by the whole load process (HTTP Basic is per request, so one keep-alive
//!   connection carries acks for any identity, and the node's ~N sockets are not doubled).

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, Mutex};

use super::recipient::{AckJob, Ctx, Event, Life};

/// A response head must come within this (long-polls and the sender's POSTs excepted).
pub const ANSWER_WITHIN: Duration = Duration::from_secs(30);

/// A response's status line and the headers that frame its body.
#[derive(Debug, Clone, Copy)]
pub struct Head {
    /// Status code.
    pub status: u16,
    /// `Content-Length`, if given.
    pub length: Option<usize>,
    /// `Transfer-Encoding: chunked`.
    pub chunked: bool,
    /// `Connection: close`: the connection cannot carry another request.
    pub close: bool,
}

/// One keep-alive HTTP/1.1 connection.
pub struct HttpConn {
    stream: TcpStream,
    buf: BytesMut,
}

impl HttpConn {
    /// Wraps a connected stream.
    pub fn new(stream: TcpStream) -> HttpConn {
        HttpConn {
            stream,
            buf: BytesMut::with_capacity(512),
        }
    }

    /// Connects to `addr` (Nagle off), optionally from a given source address.
    pub async fn open(addr: SocketAddr, source: Option<Ipv4Addr>) -> Result<HttpConn, String> {
        let socket = tokio::net::TcpSocket::new_v4().map_err(|e| e.to_string())?;
        if let Some(ip) = source {
            socket
                .bind(SocketAddr::new(ip.into(), 0))
                .map_err(|e| format!("bind {ip}: {e}"))?;
        }
        let stream = socket
            .connect(addr)
            .await
            .map_err(|e| format!("connect {addr}: {e}"))?;
        stream.set_nodelay(true).map_err(|e| e.to_string())?;
        Ok(HttpConn::new(stream))
    }

    /// Writes one request; `extra` holds further header lines, each ending in CRLF.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        extra: &str,
        body: &[u8],
    ) -> Result<(), String> {
        let auth = authorization
            .map(|a| format!("Authorization: {a}\r\n"))
            .unwrap_or_default();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\n{auth}{extra}Content-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            body.len()
        );
        let mut all = Vec::with_capacity(head.len() + body.len());
        all.extend_from_slice(head.as_bytes());
        all.extend_from_slice(body);
        self.stream
            .write_all(&all)
            .await
            .map_err(|e| format!("{method} {path}: {e}"))
    }

    async fn fill(&mut self) -> Result<(), String> {
        self.buf.reserve(4096);
        match self.stream.read_buf(&mut self.buf).await {
            Ok(0) => Err("connection closed".into()),
            Ok(_) => Ok(()),
            Err(e) => Err(e.to_string()),
        }
    }

    /// Reads a response head.
    pub async fn head(&mut self) -> Result<Head, String> {
        let end = loop {
            if let Some(i) = find(&self.buf, b"\r\n\r\n") {
                break i;
            }
            if self.buf.len() > 64 * 1024 {
                return Err("response head over 64 KiB".into());
            }
            self.fill().await?;
        };
        let text = String::from_utf8_lossy(&self.buf[..end]).into_owned();
        self.buf.advance(end + 4);
        let mut lines = text.split("\r\n");
        let status = lines
            .next()
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not an HTTP response: {text:.80}"))?;
        let mut head = Head {
            status,
            length: None,
            chunked: false,
            close: false,
        };
        for l in lines {
            let Some((k, v)) = l.split_once(':') else {
                continue;
            };
            let v = v.trim();
            if k.eq_ignore_ascii_case("content-length") {
                head.length = v.parse().ok();
            } else if k.eq_ignore_ascii_case("transfer-encoding") {
                head.chunked = v.eq_ignore_ascii_case("chunked");
            } else if k.eq_ignore_ascii_case("connection") {
                head.close = v.eq_ignore_ascii_case("close");
            }
        }
        Ok(head)
    }

    /// Reads a whole body framed by `head` (length or chunks).
    pub async fn body(&mut self, head: &Head) -> Result<Bytes, String> {
        if head.chunked {
            let mut all = BytesMut::new();
            while let Some(c) = self.chunk().await? {
                all.extend_from_slice(&c);
            }
            return Ok(all.freeze());
        }
        let n = head.length.unwrap_or(0);
        while self.buf.len() < n {
            self.fill().await?;
        }
        Ok(self.buf.split_to(n).freeze())
    }

    /// Reads one chunk of a chunked body; `None` after the last.
    pub async fn chunk(&mut self) -> Result<Option<Bytes>, String> {
        let line = loop {
            if let Some(i) = find(&self.buf, b"\r\n") {
                break i;
            }
            self.fill().await?;
        };
        let size = std::str::from_utf8(&self.buf[..line])
            .ok()
            .and_then(|l| usize::from_str_radix(l.split(';').next()?.trim(), 16).ok())
            .ok_or("bad chunk size")?;
        while self.buf.len() < line + 2 + size + 2 {
            self.fill().await?;
        }
        self.buf.advance(line + 2);
        let data = self.buf.split_to(size).freeze();
        self.buf.advance(2);
        Ok((size > 0).then_some(data))
    }

    /// One request and its whole response, whose head must come `within`.
    pub async fn exchange(
        &mut self,
        method: &str,
        path: &str,
        authorization: Option<&str>,
        body: &[u8],
        within: Duration,
    ) -> Result<(Head, Bytes), String> {
        self.request(method, path, authorization, "", body).await?;
        let head = tokio::time::timeout(within, self.head())
            .await
            .map_err(|_| format!("{method} {path}: no answer within {} s", within.as_secs()))??;
        let body = self.body(&head).await?;
        Ok((head, body))
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// Splits an event stream into events: `(id, data)` of each complete event.
#[derive(Default)]
struct SseParser {
    pending: BytesMut,
}

impl SseParser {
    fn feed(&mut self, bytes: &[u8]) -> Vec<(Option<String>, Option<String>)> {
        self.pending.extend_from_slice(bytes);
        let mut events = Vec::new();
        while let Some(end) = find(&self.pending, b"\n\n") {
            let block = self.pending.split_to(end + 2);
            let (mut id, mut data) = (None, None::<String>);
            for line in String::from_utf8_lossy(&block).lines() {
                let line = line.trim_end_matches('\r');
                let (field, value) = line.split_once(':').unwrap_or((line, ""));
                let value = value.strip_prefix(' ').unwrap_or(value);
                match field {
                    "id" => id = Some(value.to_string()),
                    "data" => match &mut data {
                        Some(d) => {
                            d.push('\n');
                            d.push_str(value);
                        }
                        None => data = Some(value.to_string()),
                    },
                    _ => {} // `event:`, and `:` comments (the node's keep-alives)
                }
            }
            if id.is_some() || data.is_some() {
                events.push((id, data));
            }
        }
        events
    }
}

/// One event stream of recipient `life`; `Ok` only when the run stops.
pub(super) async fn sse_session(ctx: &Ctx, life: &mut Life) -> Result<(), String> {
    let idx = life.idx();
    let addr = ctx.http.ok_or("no --http address")?;
    let identity = ctx.identity(idx);
    let auth: Option<Arc<str>> = ctx.login(&identity).map(|l| l.authorization.into());
    let mut c = HttpConn::new(life.connect(ctx, addr).await?);
    // A reconnect resumes after what it had (and so acknowledges it), as browsers do.
    let extra = life
        .cursor
        .as_ref()
        .map(|id| format!("Last-Event-ID: {id}\r\n"))
        .unwrap_or_default();
    c.request("GET", "/v1/stream", auth.as_deref(), &extra, b"")
        .await?;
    let head = tokio::time::timeout(ANSWER_WITHIN, c.head())
        .await
        .map_err(|_| "GET /v1/stream: no answer within 30 s".to_string())??;
    if head.status != 200 {
        let body = c.body(&head).await.unwrap_or_default();
        return Err(format!(
            "GET /v1/stream: {} {}",
            head.status,
            String::from_utf8_lossy(&body)
        ));
    }
    if !head.chunked {
        return Err("GET /v1/stream: the event stream is not chunked".into());
    }
    life.admitted(ctx);
    let mut parser = SseParser::default();
    let mut stop = ctx.stop.clone();
    loop {
        let chunk = tokio::select! {
            c = c.chunk() => c?,
            _ = stop.changed() => return Ok(()),
        };
        let Some(chunk) = chunk else {
            return Err("the event stream ended".into());
        };
        for (id, data) in parser.feed(&chunk) {
            if let Some(data) = data {
                ctx.send(Event::Arrival(ctx.arrival(idx, data.as_bytes())));
            }
            if let Some(id) = id {
                if let (Some(acks), Some(auth)) = (&ctx.acks, &auth) {
                    let _ = acks.send((auth.clone(), id.clone()));
                }
                life.cursor = Some(id);
            }
        }
    }
}

/// Long-polls of recipient `life`, one after the other on one connection; `Ok` only when the
/// run stops.
pub(super) async fn poll_session(ctx: &Ctx, life: &mut Life) -> Result<(), String> {
    let idx = life.idx();
    let addr = ctx.http.ok_or("no --http address")?;
    let identity = ctx.identity(idx);
    let auth = ctx.login(&identity).map(|l| l.authorization);
    let mut c = HttpConn::new(life.connect(ctx, addr).await?);
    let mut stop = ctx.stop.clone();
    // The first poll answers at once: the recipient is admitted (and its connect slot freed)
    // only once the node has accepted the connection and logged it in, as for MQTT and SSE.
    let mut wait = 0;
    loop {
        // Polling with the cursor of the last answer acknowledges what it carried.
        let path = match &life.cursor {
            Some(cur) => format!("/v1/inbox?wait={wait}&max=100&cursor={cur}"),
            None => format!("/v1/inbox?wait={wait}&max=100"),
        };
        c.request("GET", &path, auth.as_deref(), "", b"").await?;
        let head = tokio::select! {
            h = c.head() => h?,
            _ = stop.changed() => return Ok(()),
        };
        let body = c.body(&head).await?;
        if head.status != 200 {
            return Err(format!(
                "GET /v1/inbox: {} {}",
                head.status,
                String::from_utf8_lossy(&body)
            ));
        }
        let page: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| format!("GET /v1/inbox: {e}"))?;
        for m in page["messages"].as_array().into_iter().flatten() {
            ctx.send(Event::Arrival(ctx.arrival_value(idx, m)));
        }
        if let Some(cur) = page["cursor"].as_str() {
            life.cursor = Some(cur.to_string());
        }
        if wait == 0 {
            wait = ctx.target.poll_wait;
            life.admitted(ctx);
        }
        if head.close {
            c = HttpConn::new(ctx.connect(idx, addr).await?);
        }
    }
}

/// Sends the SSE acknowledgements queued by this process's streams, over one keep-alive
/// connection (from its own loopback source address, `source`), reopened when it fails.
pub(super) async fn ack_worker(
    addr: Option<SocketAddr>,
    source: Option<Ipv4Addr>,
    jobs: Arc<Mutex<mpsc::UnboundedReceiver<AckJob>>>,
) {
    let Some(addr) = addr else { return };
    let mut conn: Option<HttpConn> = None;
    loop {
        let job = jobs.lock().await.recv().await;
        let Some((auth, cursor)) = job else { return };
        let body = format!(r#"{{"cursor":"{cursor}"}}"#);
        for _ in 0..3 {
            if conn.is_none() {
                conn = HttpConn::open(addr, source).await.ok();
            }
            let Some(c) = conn.as_mut() else {
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            };
            match c
                .exchange(
                    "POST",
                    "/v1/inbox/ack",
                    Some(&auth),
                    body.as_bytes(),
                    ANSWER_WITHIN,
                )
                .await
            {
                Ok((h, _)) if h.status == 200 && !h.close => break,
                Ok((h, b)) => {
                    conn = None;
                    if h.status == 200 {
                        break;
                    }
                    eprintln!(
                        "medlink-bench push-load: ack answered {}: {}",
                        h.status,
                        String::from_utf8_lossy(&b)
                    );
                    break;
                }
                Err(_) => conn = None,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn events_split_across_chunks_and_keepalives_are_skipped() {
        let mut p = SseParser::default();
        assert!(p.feed(b":\n\nevent: message\ndata: {\"a\"").is_empty());
        let got = p.feed(b":1}\nid: 0.1.0\n\n");
        assert_eq!(
            got,
            vec![(Some("0.1.0".to_string()), Some("{\"a\":1}".to_string()))]
        );
    }
}
