//! The floor of a custody hop (`medlink-bench floor`): what a chain of the leanest possible
//! relays costs in latency when each one commits before it passes a message on, and when none
//! does.
//!
//! It answers one question for the issue "Scale": can any design that keeps medlink's custody
//! rule (commit, then pass on) meet the 4-tier p99 of a chain of mosquitto brokers, which write
//! nothing per message? Each relay is a process with one blocking thread and no runtime, no
//! MQTT, no JSON and no routing: it reads a length-prefixed frame, (with `--commit`) runs
//! the journal's own transaction shape on a SQLite file with the journal's settings (WAL,
//! `synchronous=NORMAL`, 2 KB pages, a checkpointer on its own connection, the WAL's space
//! reserved before the first frame as the node reserves it), writes the frame
//! to the next relay and an ack back. Whatever medlink does per hop beyond that is overhead
//! a redesign could remove; this is what it could not.
//!
//! The driver publishes at a fixed rate into the bottom relay and receives at the top, in one
//! process, so send and receive times come from one clock. Figures only, like every bench.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::latency::Latencies;

/// Options of `medlink-bench floor`.
#[derive(clap::Args, Debug, Clone)]
pub struct FloorArgs {
    /// Relays in the chain.
    #[arg(long, default_value_t = 4, value_parser = crate::positive)]
    pub hops: usize,
    /// Messages to send.
    #[arg(long, short = 'n', default_value_t = 5000, value_parser = crate::positive)]
    pub messages: usize,
    /// Send rate in messages/s.
    #[arg(long, default_value_t = 1000, value_parser = crate::positive)]
    pub rate: usize,
    /// Frame size in bytes (at least 16).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// Each relay commits the frame to its SQLite journal before passing it on.
    #[arg(long, conflicts_with = "log")]
    pub commit: bool,
    /// Each relay appends the frame and its receive position to a log file, one write, before
    /// passing it on: a custody hop whose commit is a single append instead of a SQLite
    /// transaction (the same durability as the node's: the process may die, the kernel keeps it).
    #[arg(long)]
    pub log: bool,
    /// Label carried into the JSON report.
    #[arg(long, default_value = "floor")]
    pub label: String,
    /// Where the relays' journals go (default: a new folder under /tmp, removed after).
    #[arg(long)]
    pub dir: Option<PathBuf>,
}

/// Options of one relay process (spawned by `floor`).
#[derive(clap::Args, Debug, Clone)]
pub struct RelayArgs {
    /// Address of the next relay, or of the driver's receiver.
    #[arg(long)]
    pub next: String,
    /// The journal file; without it the relay passes frames on without committing.
    #[arg(long)]
    pub db: Option<PathBuf>,
    /// The log file (`floor --log`): each frame is appended to it before it is passed on.
    #[arg(long, conflicts_with = "db")]
    pub log: Option<PathBuf>,
}

/// What one floor run measured.
#[derive(Debug, serde::Serialize)]
pub struct FloorReport {
    /// The run's label.
    pub label: String,
    /// Relays crossed.
    pub hops: usize,
    /// Whether each relay committed to SQLite before passing on.
    pub commit: bool,
    /// Whether each relay appended to a log before passing on.
    pub log: bool,
    /// Messages sent.
    pub messages: usize,
    /// Messages received once.
    pub received: usize,
    /// Messages never received.
    pub lost: usize,
    /// Messages received more than once.
    pub duplicates: usize,
    /// Messages received after a later one.
    pub out_of_order: usize,
    /// Median latency.
    pub p50_ms: f64,
    /// 99th percentile.
    pub p99_ms: f64,
    /// Largest.
    pub max_ms: f64,
}

impl FloorReport {
    /// Whether every message arrived once, in order.
    pub fn clean(&self) -> bool {
        self.lost == 0 && self.duplicates == 0 && self.out_of_order == 0
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        format!(
            "# floor, {} relays, {}: {} msgs at a fixed rate: p50 {:.3} ms, p99 {:.3} ms, max {:.3} ms; lost {}, duplicates {}, out of order {}",
            self.hops,
            if self.commit {
                "commit then pass on"
            } else if self.log {
                "append to a log then pass on"
            } else {
                "no commit"
            },
            self.messages,
            self.p50_ms,
            self.p99_ms,
            self.max_ms,
            self.lost,
            self.duplicates,
            self.out_of_order
        )
    }
}

fn read_frame(r: &mut impl Read, buf: &mut Vec<u8>) -> std::io::Result<()> {
    let mut len = [0u8; 4];
    r.read_exact(&mut len)?;
    buf.resize(u32::from_be_bytes(len) as usize, 0);
    r.read_exact(buf)
}

fn write_frame(w: &mut impl Write, body: &[u8], out: &mut Vec<u8>) -> std::io::Result<()> {
    out.clear();
    out.extend_from_slice(&(body.len() as u32).to_be_bytes());
    out.extend_from_slice(body);
    w.write_all(out)
}

/// Spawns a thread that reads 8-byte acks from `s` and keeps the highest in `acked`.
fn drain_acks(mut s: TcpStream, acked: Arc<AtomicU64>) {
    std::thread::spawn(move || {
        let mut b = [0u8; 8];
        while s.read_exact(&mut b).is_ok() {
            acked.fetch_max(u64::from_be_bytes(b), Ordering::Relaxed);
        }
    });
}

/// The journal's shape, cut to what one hop writes: the queue towards the next hop, and the
/// receive position of the link in.
struct Journal {
    conn: rusqlite::Connection,
    deleted: u64,
}

impl Journal {
    fn open(path: &PathBuf) -> rusqlite::Result<Journal> {
        let conn = rusqlite::Connection::open(path)?;
        conn.pragma_update(None, "page_size", 2048)?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        // medlink checkpoints on a connection of its own, off the dispatcher's thread.
        conn.pragma_update(None, "wal_autocheckpoint", 0)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS queue(lseq INTEGER PRIMARY KEY, body BLOB NOT NULL);
             CREATE TABLE IF NOT EXISTS link_in(peer TEXT PRIMARY KEY, last INTEGER NOT NULL);",
        )?;
        reserve_wal(&conn, path).map_err(|e| {
            rusqlite::Error::ToSqlConversionFailure(format!("reserving the WAL: {e}").into())
        })?;
        let checkpointer = rusqlite::Connection::open(path)?;
        std::thread::spawn(move || loop {
            std::thread::sleep(Duration::from_millis(100));
            let _ = checkpointer.query_row("PRAGMA wal_checkpoint(PASSIVE)", [], |_| Ok(()));
        });
        Ok(Journal { conn, deleted: 0 })
    }

    /// One hop's transaction: forget what the next hop acknowledged, queue the frame, move
    /// the receive position, commit.
    fn commit(&mut self, lseq: u64, body: &[u8], acked: u64) -> rusqlite::Result<()> {
        let tx = self.conn.transaction()?;
        if acked > self.deleted {
            tx.prepare_cached("DELETE FROM queue WHERE lseq <= ?1")?
                .execute([acked as i64])?;
            self.deleted = acked;
        }
        tx.prepare_cached("INSERT INTO queue(lseq, body) VALUES (?1, ?2)")?
            .execute(rusqlite::params![lseq as i64, body])?;
        tx.prepare_cached(
            "INSERT INTO link_in(peer, last) VALUES ('child', ?1)
             ON CONFLICT(peer) DO UPDATE SET last = excluded.last",
        )?
        .execute([lseq as i64])?;
        tx.commit()
    }
}

/// The WAL's space the node reserves by default (`[node] wal_reserve_mb`, 128).
const WAL_RESERVE: u64 = 128 << 20;

/// Extends the journal's WAL with zeros written to disk, holding the write lock, as the node
/// does before its first command (`journal/checkpoint.rs`): a floor without it would pay the
/// file system's block allocation on every append, which the node no longer does.
fn reserve_wal(conn: &rusqlite::Connection, db: &std::path::Path) -> std::io::Result<()> {
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(std::io::Error::other)?;
    let mut wal = db.as_os_str().to_owned();
    wal.push("-wal");
    let filled = std::fs::OpenOptions::new()
        .append(true)
        .open(&wal)
        .and_then(|mut file| fill_reserve(&mut file));
    conn.execute_batch("ROLLBACK")
        .map_err(std::io::Error::other)?;
    filled
}

/// Appends zeros to `file` until it holds [`WAL_RESERVE`] bytes, then syncs them: blocks
/// allocated up front, as the node's WAL reserve and custody log are, and a page per write as
/// theirs are (`medlink_bridge::datadir::write_zeros`: larger writes leave large folios, which
/// make every small append dearer).
fn fill_reserve(file: &mut std::fs::File) -> std::io::Result<()> {
    let zeros = [0u8; 4096];
    while file.metadata()?.len() < WAL_RESERVE {
        file.write_all(&zeros)?;
    }
    file.sync_all()
}

/// An append-only custody log, cut to what one hop writes: the receive position and the frame,
/// in one `pwrite` into space reserved (written and synced) up front, as the WAL's is.
struct Log {
    file: std::fs::File,
    at: u64,
    record: Vec<u8>,
}

impl Log {
    fn open(path: &std::path::Path) -> std::io::Result<Log> {
        let mut file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(true)
            .read(true)
            .write(true)
            .open(path)?;
        fill_reserve(&mut file)?;
        Ok(Log {
            file,
            at: 0,
            record: Vec::new(),
        })
    }

    /// One record: length, position, frame. The reserve is reused from its start once full
    /// (the floor keeps no history to replay).
    fn append(&mut self, lseq: u64, body: &[u8]) -> std::io::Result<()> {
        use std::os::unix::fs::FileExt;
        self.record.clear();
        self.record
            .extend_from_slice(&(body.len() as u32).to_be_bytes());
        self.record.extend_from_slice(&lseq.to_be_bytes());
        self.record.extend_from_slice(body);
        if self.at + self.record.len() as u64 > WAL_RESERVE {
            self.at = 0;
        }
        self.file.write_all_at(&self.record, self.at)?;
        self.at += self.record.len() as u64;
        Ok(())
    }
}

/// One relay: listens on a free port (printed on stdout), connects to `next`, then passes on
/// every frame of the one connection it accepts.
pub fn relay(args: &RelayArgs) -> Result<(), String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    let mut next = TcpStream::connect(&args.next).map_err(|e| format!("{}: {e}", args.next))?;
    next.set_nodelay(true).map_err(|e| e.to_string())?;
    let acked = Arc::new(AtomicU64::new(0));
    drain_acks(next.try_clone().map_err(|e| e.to_string())?, acked.clone());
    let mut journal = match &args.db {
        Some(p) => Some(Journal::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    let mut log = match &args.log {
        Some(p) => Some(Log::open(p).map_err(|e| format!("{}: {e}", p.display()))?),
        None => None,
    };
    println!("{port}");
    std::io::stdout().flush().map_err(|e| e.to_string())?;
    let (mut down, _) = listener.accept().map_err(|e| e.to_string())?;
    down.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut reader =
        BufReader::with_capacity(64 * 1024, down.try_clone().map_err(|e| e.to_string())?);
    let (mut body, mut out) = (Vec::new(), Vec::new());
    let mut lseq = 0u64;
    while read_frame(&mut reader, &mut body).is_ok() {
        lseq += 1;
        if let Some(j) = journal.as_mut() {
            j.commit(lseq, &body, acked.load(Ordering::Relaxed))
                .map_err(|e| format!("commit: {e}"))?;
        }
        if let Some(l) = log.as_mut() {
            l.append(lseq, &body).map_err(|e| format!("log: {e}"))?;
        }
        // Pass on first, then acknowledge, as the dispatcher orders its writes.
        write_frame(&mut next, &body, &mut out).map_err(|e| e.to_string())?;
        down.write_all(&lseq.to_be_bytes())
            .map_err(|e| e.to_string())?;
    }
    Ok(())
}

/// Runs the chain: spawns the relays top first, publishes at the rate, and times each frame.
pub fn run(args: &FloorArgs) -> Result<FloorReport, String> {
    let size = args.size.max(16);
    let dir = match &args.dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("medlink-floor-{}", std::process::id())),
    };
    std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
    let sink = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let mut next = sink.local_addr().map_err(|e| e.to_string())?.to_string();
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut relays: Vec<Child> = Vec::new();
    let mut accepted = Vec::new();
    for i in (0..args.hops).rev() {
        let mut cmd = Command::new(&exe);
        cmd.args(["floor-relay", "--next", &next]);
        if args.commit {
            let db = dir.join(format!("relay{i}.db"));
            let _ = std::fs::remove_file(&db);
            cmd.arg("--db").arg(db);
        } else if args.log {
            cmd.arg("--log").arg(dir.join(format!("relay{i}.log")));
        }
        let mut child = cmd
            .stdout(Stdio::piped())
            .spawn()
            .map_err(|e| e.to_string())?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("piped"))
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        // The top relay connects to the sink; each lower one to the relay above it.
        if accepted.is_empty() {
            let (s, _) = sink.accept().map_err(|e| e.to_string())?;
            accepted.push(s);
        }
        next = format!("127.0.0.1:{}", line.trim());
        relays.push(child);
    }
    let result = measure(
        args,
        size,
        &next,
        accepted.pop().expect("the top relay connected"),
    );
    for mut r in relays {
        let _ = r.kill();
        let _ = r.wait();
    }
    if args.dir.is_none() {
        let _ = std::fs::remove_dir_all(&dir);
    }
    result
}

fn measure(
    args: &FloorArgs,
    size: usize,
    bottom: &str,
    top: TcpStream,
) -> Result<FloorReport, String> {
    let mut up = TcpStream::connect(bottom).map_err(|e| e.to_string())?;
    up.set_nodelay(true).map_err(|e| e.to_string())?;
    top.set_nodelay(true).map_err(|e| e.to_string())?;
    drain_acks(
        up.try_clone().map_err(|e| e.to_string())?,
        Arc::new(AtomicU64::new(0)),
    );
    let epoch = Instant::now();
    let (n, rate) = (args.messages, args.rate);
    let sender = std::thread::spawn(move || {
        let mut body = vec![0u8; size];
        let mut out = Vec::new();
        let interval = Duration::from_secs_f64(1.0 / rate as f64);
        for s in 0..n as u64 {
            let due = epoch + interval * s as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            body[..8].copy_from_slice(&s.to_be_bytes());
            body[8..16].copy_from_slice(&(epoch.elapsed().as_nanos() as u64).to_be_bytes());
            if write_frame(&mut up, &body, &mut out).is_err() {
                return;
            }
        }
        // Held open until the receiver is done.
        std::thread::sleep(Duration::from_secs(2));
    });
    let mut ack = top.try_clone().map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(top);
    top_read(&mut reader, &mut ack, n, epoch, args).inspect(|_| {
        let _ = sender.join();
    })
}

fn top_read(
    reader: &mut BufReader<TcpStream>,
    ack: &mut TcpStream,
    n: usize,
    epoch: Instant,
    args: &FloorArgs,
) -> Result<FloorReport, String> {
    reader
        .get_ref()
        .set_read_timeout(Some(Duration::from_secs(5)))
        .map_err(|e| e.to_string())?;
    let mut seen = vec![false; n];
    let (mut received, mut dups, mut ooo, mut highest) = (0, 0, 0, -1i64);
    let mut lat = Latencies::with_capacity(n);
    let mut body = Vec::new();
    let mut lseq = 0u64;
    while received < n && read_frame(reader, &mut body).is_ok() {
        let now = epoch.elapsed().as_nanos() as u64;
        lseq += 1;
        let _ = ack.write_all(&lseq.to_be_bytes());
        let s = u64::from_be_bytes(body[..8].try_into().expect("8 bytes")) as usize;
        let t = u64::from_be_bytes(body[8..16].try_into().expect("8 bytes"));
        if s >= n {
            continue;
        }
        if seen[s] {
            dups += 1;
            continue;
        }
        seen[s] = true;
        received += 1;
        if (s as i64) < highest {
            ooo += 1;
        }
        highest = highest.max(s as i64);
        lat.push_nanos(now.saturating_sub(t));
    }
    Ok(FloorReport {
        label: args.label.clone(),
        hops: args.hops,
        commit: args.commit,
        log: args.log,
        messages: n,
        received,
        lost: n - received,
        duplicates: dups,
        out_of_order: ooo,
        p50_ms: lat.ms(0.5),
        p99_ms: lat.ms(0.99),
        max_ms: lat.ms(1.0),
    })
}
