//! `medlink-bench http`: load for the HTTP API that wrk cannot produce — many long-polls held
//! open at once, and the latency from a POST to the long-poll that delivers it.
//!
//! Requests are written by hand over keep-alive TCP connections (one per poll), so the load
//! tool costs little more than the sockets themselves; `bench/http.sh` runs several of these
//! processes (one process may hold at most ~20,000 sockets here) and wrk for POST throughput.

use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;

use crate::latency::Latencies;

/// Options of `medlink-bench http`: what to measure.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum HttpArgs {
    /// Open COUNT long-polls on one identity's (empty) inbox and hold them.
    Polls(PollsArgs),
    /// POST a command and time until a waiting long-poll of the receiver returns it.
    Latency(LatencyArgs),
}

/// Options of `medlink-bench http polls`.
#[derive(clap::Args, Debug, Clone)]
pub struct PollsArgs {
    /// `ip:port` of the node's HTTP API.
    #[arg(long)]
    pub addr: String,
    /// `user:password` of a client whose inbox stays empty.
    #[arg(long)]
    pub login: String,
    /// Long-polls to open.
    #[arg(long, default_value_t = 1000, value_parser = crate::positive)]
    pub count: usize,
    /// Seconds each poll asks to wait (and the tool holds them).
    #[arg(long, default_value_t = 30)]
    pub hold: u64,
}

/// Options of `medlink-bench http latency`.
#[derive(clap::Args, Debug, Clone)]
pub struct LatencyArgs {
    /// `ip:port` of the node's HTTP API.
    #[arg(long)]
    pub addr: String,
    /// `user:password` of the sender.
    #[arg(long)]
    pub sender: String,
    /// `user:password` of the receiver (at the same node).
    #[arg(long)]
    pub receiver: String,
    /// The receiver's node id.
    #[arg(long)]
    pub node: String,
    /// Round trips to time.
    #[arg(long, default_value_t = 1000, value_parser = crate::positive)]
    pub count: usize,
}

fn basic(login: &str) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(login)
}

/// One keep-alive HTTP/1.1 connection.
struct Conn {
    stream: BufReader<TcpStream>,
}

impl Conn {
    async fn open(addr: &str) -> std::io::Result<Conn> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Conn {
            stream: BufReader::new(s),
        })
    }

    async fn send(
        &mut self,
        method: &str,
        path: &str,
        login: &str,
        body: &[u8],
    ) -> std::io::Result<()> {
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nAuthorization: Basic {}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
            basic(login),
            body.len()
        );
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await
    }

    /// Reads one response; returns (status, body).
    async fn recv(&mut self) -> std::io::Result<(u16, Vec<u8>)> {
        let mut status = 0;
        let mut length = 0usize;
        loop {
            let mut line = String::new();
            if self.stream.read_line(&mut line).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
            if status == 0 {
                status = line
                    .split_whitespace()
                    .nth(1)
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(0);
            } else if line == "\r\n" {
                break;
            } else if let Some((k, v)) = line.split_once(':') {
                if k.eq_ignore_ascii_case("content-length") {
                    length = v.trim().parse().unwrap_or(0);
                }
            }
        }
        let mut body = vec![0u8; length];
        self.stream.read_exact(&mut body).await?;
        Ok((status, body))
    }
}

/// Long-polls opened by [`open_polls`], held until [`OpenPolls::hold`] ends or this is dropped.
pub struct OpenPolls {
    /// What opening them took.
    pub report: PollsReport,
    hold: u64,
    conns: Vec<Conn>,
}

/// How many long-polls were opened, and how long that took.
#[derive(Debug, Clone)]
pub struct PollsReport {
    /// Long-polls open.
    pub open: usize,
    /// Seconds from the first connection to the last poll sent.
    pub open_seconds: f64,
}

/// Opens `args.count` long-polls, each on a connection of its own, and returns them open.
pub async fn open_polls(args: &PollsArgs) -> Result<OpenPolls, String> {
    let PollsArgs {
        addr,
        login,
        count,
        hold,
    } = args;
    let started = Instant::now();
    let mut conns = Vec::with_capacity(*count);
    for i in 0..*count {
        let mut c = Conn::open(addr)
            .await
            .map_err(|e| format!("poll {i}: {e}"))?;
        c.send("GET", &format!("/v1/inbox?wait={hold}"), login, b"")
            .await
            .map_err(|e| format!("poll {i}: {e}"))?;
        conns.push(c);
    }
    Ok(OpenPolls {
        report: PollsReport {
            open: *count,
            open_seconds: started.elapsed().as_secs_f64(),
        },
        hold: *hold,
        conns,
    })
}

impl OpenPolls {
    /// Holds the polls until shortly before the node would answer them (`--hold` less 2 s),
    /// then closes them.
    pub async fn hold(self) {
        tokio::time::sleep(Duration::from_secs(self.hold.saturating_sub(2))).await;
        drop(self.conns);
    }
}

/// POST → waiting long-poll latency.
#[derive(Debug, Clone)]
pub struct LatencyReport {
    /// Round trips timed.
    pub count: usize,
    /// Median, POST written to the poll's answer read.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Highest.
    pub max_ms: f64,
}

/// Times `args.count` POSTs, each until the receiver's waiting long-poll returns it.
pub async fn latency(args: &LatencyArgs) -> Result<LatencyReport, String> {
    let LatencyArgs {
        addr,
        sender,
        receiver,
        node,
        count,
    } = args;
    let count = *count;
    let client = receiver.split(':').next().unwrap_or("");
    let mut poller = Conn::open(addr).await.map_err(|e| e.to_string())?;
    let mut poster = Conn::open(addr).await.map_err(|e| e.to_string())?;
    // Start from an empty, fully acknowledged inbox.
    let mut cursor = String::from("0");
    loop {
        poller
            .send(
                "GET",
                &format!("/v1/inbox?cursor={cursor}&max=1000"),
                receiver,
                b"",
            )
            .await
            .map_err(|e| e.to_string())?;
        let (_, body) = poller.recv().await.map_err(|e| e.to_string())?;
        let page: serde_json::Value = serde_json::from_slice(&body).map_err(|e| e.to_string())?;
        let next = page["cursor"].as_str().unwrap_or(&cursor).to_string();
        if next == cursor {
            break;
        }
        cursor = next;
    }
    let body = format!(r#"{{"to":{{"node":"{node}","client":"{client}"}},"cmd":"bench.latency"}}"#);
    let mut samples = Latencies::with_capacity(count);
    for _ in 0..count {
        poller
            .send(
                "GET",
                &format!("/v1/inbox?cursor={cursor}&wait=30"),
                receiver,
                b"",
            )
            .await
            .map_err(|e| e.to_string())?;
        // Let the poll reach the node first, so what is timed is the push to a waiting poll.
        tokio::time::sleep(Duration::from_millis(2)).await;
        let t0 = Instant::now();
        poster
            .send("POST", "/v1/messages", sender, body.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        let (status, _) = poster.recv().await.map_err(|e| e.to_string())?;
        if status != 202 {
            return Err(format!("POST answered {status}"));
        }
        let (_, page) = poller.recv().await.map_err(|e| e.to_string())?;
        samples.push(t0.elapsed());
        let page: serde_json::Value = serde_json::from_slice(&page).map_err(|e| e.to_string())?;
        if let Some(next) = page["cursor"].as_str() {
            cursor = next.to_string();
        }
    }
    Ok(LatencyReport {
        count,
        p50_ms: samples.ms(0.5),
        p99_ms: samples.ms(0.99),
        max_ms: samples.ms(1.0),
    })
}
