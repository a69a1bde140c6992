//! `medlink`: one binary for every tier of the network, plus the tools an operator uses
//! around it. The load tools are a binary of their own (`medlink-bench`, in `bench/`).
//!
//! - `medlink node --config FILE` runs a node.
//! - `medlink audit --data-dir DIR ...` prints the audit trail a node recorded.
//! - `medlink demo` starts a 4-tier tree on loopback and sends a consultation up and back.
//! - `medlink send | request | listen ...` use the SDK from a shell.
//! - `medlink certs ...` issues a development CA and certificates.
//! - `medlink passwd --file FILE ...` manages identities in a credentials file.
//! - `medlink token --key-file F --kid K --sub NAME` mints an HS256 device token.

mod certs;
mod cli_client;
mod config;
mod deadletters;
mod demo;
mod logging;
mod passwd;
mod token;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use medlink_bridge::audit::{self, AuditQuery};
use medlink_bridge::node::Node;
use tracing::{error, info};

#[derive(Parser)]
#[command(
    name = "medlink",
    version,
    about = "Store-and-forward messaging for tiered healthcare networks"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run one node from a TOML configuration file.
    Node {
        /// Configuration file (see conf/).
        #[arg(long, short)]
        config: PathBuf,
        /// Overrides `[node] data_dir`.
        #[arg(long)]
        data_dir: Option<PathBuf>,
        /// Log as JSON lines instead of text.
        #[arg(long)]
        json_logs: bool,
    },
    /// Follow one message through the nodes whose journals are given: who took custody
    /// when, where it waits, receipts about it.
    Trace {
        /// The message id.
        id: String,
        /// A node's data directory (holding journal.db); repeat for every node to look at.
        #[arg(long)]
        data_dir: Vec<PathBuf>,
        /// A node's config file (its data directory is read from it); repeatable.
        #[arg(long, short)]
        config: Vec<PathBuf>,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Print the audit records of a node's journal.
    Audit {
        /// The node's data directory (holding journal.db).
        #[arg(long)]
        data_dir: PathBuf,
        /// Only records sent by or to this client.
        #[arg(long)]
        client: Option<String>,
        /// Only records from or to this node or a node below it.
        #[arg(long)]
        node: Option<String>,
        /// Only this command.
        #[arg(long)]
        cmd: Option<String>,
        /// Only records at or after this time: Unix ms, or RFC 3339-like `YYYY-MM-DDTHH:MM:SSZ`.
        #[arg(long)]
        since: Option<String>,
        /// Most records to print (newest first; a note on stderr says when more matched).
        #[arg(long, default_value_t = 1000)]
        limit: usize,
        /// Print the oldest records first instead.
        #[arg(long)]
        oldest_first: bool,
        /// Print JSON lines.
        #[arg(long)]
        json: bool,
    },
    /// Start a 4-tier tree on loopback and send a consultation up and its reply back down.
    Demo(demo::DemoArgs),
    /// Send a command (prints its id once the node has custody).
    Send(cli_client::SendArgs),
    /// Send a command and print the reply.
    Request(cli_client::RequestArgs),
    /// Print incoming commands and receipts as JSON lines (optionally replying).
    Listen(cli_client::ListenArgs),
    /// Download a file a command refers to from the node's store (resumable, checked).
    Fetch(cli_client::FetchArgs),
    /// List, re-send or purge a node's dead letters, or show its operator log (admins).
    Deadletters(deadletters::DeadLettersArgs),
    /// Create a development CA and certificates for nodes and clients.
    Certs(certs::CertsArgs),
    /// Add, rotate, remove or list identities in a credentials file.
    Passwd(passwd::PasswdArgs),
    /// Mint an HS256 device token with a `[[token_key]]` secret (prints it).
    Token(token::TokenArgs),
}

/// Sets up logging to stderr: MEDLINK_LOG's filter, else `default`.
fn init_logs(json: bool, default: &str) {
    // rumqttd opens an ERROR-level span for every router event and formats its fields, which
    // costs the router thread a quarter of its time; it is silenced unless asked for by name
    // (e.g. MEDLINK_LOG=info,rumqttd=debug).
    let mut directives = std::env::var("MEDLINK_LOG").unwrap_or_else(|_| default.to_string());
    if !directives.contains("rumqttd") {
        directives.push_str(",rumqttd=off");
    }
    let filter = tracing_subscriber::EnvFilter::try_new(&directives)
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info,rumqttd=off"));
    use std::io::IsTerminal;
    // Colour only on a terminal: log files and journald get plain text. A log write that
    // fails (disk full) must not be reported with eprintln!, which panics when stderr cannot
    // be written: that would kill whichever thread was logging, the dispatcher included.
    let ansi = std::io::stderr().is_terminal();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(ansi)
        .log_internal_errors(false);
    if json {
        builder.with_writer(std::io::stderr).json().init();
    } else {
        // Client-supplied strings in fields must not start lines of their own.
        builder
            .with_writer(move || logging::OneLine::new(std::io::stderr(), ansi))
            .init();
    }
}

/// mimalloc rather than glibc's allocator: the dispatcher allocates and frees many small buffers
/// per command, and glibc spent a tenth of its time consolidating them (`malloc_consolidate`)
/// in a push to 19,000 recipients (BENCHMARKS.md, "Push to many recipients").
///
/// Transparent huge pages are switched off for the process (`main`). mimalloc advises huge
/// pages for its arenas, so each first touch of a 2 MiB region faulted in and zeroed all of it,
/// on the dispatcher's thread, and again after mimalloc returned idle memory to the kernel:
/// 18 % of the dispatcher's time in a push to 19,000 recipients, which took 0.68-0.76 s instead
/// of 0.85-0.93 s without them (BENCHMARKS.md, "Huge pages").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// Lets mimalloc give a worker thread's freed memory back when the worker goes idle, at most
/// once a second per thread. mimalloc returns memory only from inside its own calls, and an idle
/// thread makes none, so buffers the connections used while logging in stayed resident. With
/// this, 10,000 idle connections cost 7.5-8.2 KB each over MQTT instead of 8.1-8.6, and 4.5 KB
/// instead of 4.9 over SSE (BENCHMARKS.md, "Huge pages").
fn collect_when_idle() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local!(static LAST: Cell<Option<Instant>> = const { Cell::new(None) });
    let now = Instant::now();
    if LAST
        .get()
        .is_some_and(|at| now.duration_since(at) < Duration::from_secs(1))
    {
        return;
    }
    LAST.set(Some(now));
    // SAFETY: `mi_collect` only walks this thread's heap and the shared arenas.
    unsafe { libmimalloc_sys::mi_collect(false) };
}

fn main() -> ExitCode {
    // As `MIMALLOC_ALLOW_THP=0` would, which mimalloc reads only from the environment. A kernel
    // without the prctl leaves huge pages as they were: slower, not wrong.
    let _ = rustix::thread::disable_transparent_huge_pages(true);
    // The S3 client (object_store) brings rustls's ring backend beside aws-lc-rs; with both,
    // rustls picks no default, and reqwest clients that take the default would get ring. Every
    // TLS configuration medlink builds names aws-lc-rs; this makes the rest use it too.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let cli = Cli::parse();
    match cli.command {
        Command::Certs(args) => return certs::run(args),
        Command::Passwd(args) => return passwd::run(args),
        Command::Token(args) => return token::run(args),
        _ => {}
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(collect_when_idle)
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("medlink: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match cli.command {
        Command::Node {
            config,
            data_dir,
            json_logs,
        } => {
            init_logs(json_logs, "info");
            let cfg = match config::load(&config, data_dir.as_deref()) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("medlink: {e}");
                    return ExitCode::from(2);
                }
            };
            runtime.block_on(run_node(cfg, &config))
        }
        Command::Audit {
            data_dir,
            client,
            node,
            cmd,
            since,
            limit,
            oldest_first,
            json,
        } => {
            let since = match since.as_deref().map(parse_time).transpose() {
                Ok(s) => s,
                Err(e) => {
                    eprintln!("medlink audit: --since: {e}");
                    return ExitCode::from(2);
                }
            };
            let q = AuditQuery {
                client,
                node,
                cmd,
                since,
                limit,
                oldest_first,
            };
            print_audit(&data_dir.join("journal.db"), &q, json)
        }
        Command::Trace {
            id,
            mut data_dir,
            config,
            json,
        } => {
            for c in &config {
                match config::load(c, None) {
                    Ok(cfg) => data_dir.push(cfg.data_dir),
                    Err(e) => {
                        eprintln!("medlink trace: {e}");
                        return ExitCode::from(2);
                    }
                }
            }
            if data_dir.is_empty() {
                eprintln!("medlink trace: give the nodes to look at with --data-dir or --config");
                return ExitCode::from(2);
            }
            print_trace(&id, &data_dir, json)
        }
        Command::Demo(args) => {
            // The demo's clients are SDK clients; their session notes ("connected") would
            // interleave with the trails the demo prints, so only their warnings show.
            init_logs(false, "info,medlink_sdk=warn");
            runtime.block_on(demo::run(args))
        }
        Command::Send(args) => runtime.block_on(cli_client::send(args)),
        Command::Fetch(args) => runtime.block_on(cli_client::fetch(args)),
        Command::Request(args) => runtime.block_on(cli_client::request(args)),
        Command::Listen(args) => runtime.block_on(cli_client::listen(args)),
        Command::Deadletters(args) => runtime.block_on(deadletters::run(args)),
        Command::Certs(_) | Command::Passwd(_) | Command::Token(_) => {
            unreachable!("handled before the runtime starts")
        }
    }
}

async fn run_node(cfg: medlink_bridge::node::NodeConfig, config: &std::path::Path) -> ExitCode {
    // A file-size limit (RLIMIT_FSIZE) or a full filesystem must make journal writes fail
    // (no acknowledgement, HTTP 503), not kill the node: SIGXFSZ's default action is to
    // terminate, so it is caught and ignored for the node's lifetime.
    #[cfg(unix)]
    let _xfsz = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::from_raw(25));
    let tokens = cfg.tokens.clone();
    let node = match Node::start(cfg).await {
        Ok(n) => n,
        Err(e) => {
            // Once, through the log (stderr, or journald under systemd).
            error!("cannot start node: {e}");
            return ExitCode::FAILURE;
        }
    };
    // Token keys follow the config file while the node runs; SIGHUP also re-reads the
    // credentials.
    let reload = config::reload::spawn(config, tokens, node.auth.clone());
    for (kind, addr) in &node.bound {
        info!(?kind, %addr, "ready");
    }
    // Under systemd (Type=notify): the listeners are bound and the journal is open. Outside
    // systemd NOTIFY_SOCKET is unset and this does nothing.
    if let Err(e) = sd_notify::notify(false, &[sd_notify::NotifyState::Ready]) {
        tracing::warn!(error = %e, "could not tell systemd the node is ready");
    }
    wait_for_stop_signal().await;
    info!("stop requested; shutting down cleanly");
    let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Stopping]);
    reload.abort();
    node.shutdown().await;
    ExitCode::SUCCESS
}

/// Waits for Ctrl-C or SIGTERM.
async fn wait_for_stop_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn print_trace(id: &str, dirs: &[PathBuf], json: bool) -> ExitCode {
    let mut events = Vec::new();
    for dir in dirs {
        let path = dir.join("journal.db");
        let label = dir.file_name().map_or_else(
            || dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        );
        if !path.exists() {
            eprintln!("medlink trace: no journal at {} (skipped)", path.display());
            continue;
        }
        match medlink_bridge::trace::trace_journal(&path, &label, id) {
            Ok(found) => events.extend(found),
            Err(e) => eprintln!("medlink trace: {}: {e} (skipped)", path.display()),
        }
    }
    let events = medlink_bridge::trace::merge(events);
    if events.is_empty() {
        eprintln!("medlink trace: {id} is not known to these journals (audit off, or long gone)");
        return ExitCode::from(1);
    }
    let start = events.iter().map(|e| e.at).find(|at| *at > 0).unwrap_or(0);
    for e in &events {
        if json {
            println!(
                "{}",
                serde_json::to_string(e).expect("trace events serialise")
            );
        } else if e.at == 0 {
            println!("{:<24} {:>9}  {:<22} {}", "", "", e.node, e.what);
        } else {
            println!(
                "{:<24} {:>7}ms  {:<22} {}",
                medlink_bridge::audit::format_time(e.at),
                format!("+{}", e.at.saturating_sub(start)),
                e.node,
                e.what
            );
        }
    }
    ExitCode::SUCCESS
}

fn print_audit(path: &std::path::Path, q: &AuditQuery, json: bool) -> ExitCode {
    if !path.exists() {
        eprintln!("medlink audit: no journal at {}", path.display());
        return ExitCode::from(2);
    }
    let page = match audit::query(path, q) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("medlink audit: {}: {e}", path.display());
            return ExitCode::FAILURE;
        }
    };
    let rows = &page.records;
    for r in rows {
        if json {
            println!(
                "{}",
                serde_json::to_string(r).expect("audit records serialise")
            );
        } else {
            println!("{r}");
        }
    }
    let order = if q.oldest_first {
        "oldest first"
    } else {
        "newest first"
    };
    if page.cut {
        // On stderr, so JSON output stays one record per line; said even with --json.
        eprintln!(
            "{} record(s), {order}: output cut at --limit {}; more records match (narrow with --since/--client/--node/--cmd, or raise --limit)",
            rows.len(),
            q.limit
        );
    } else if !json {
        eprintln!("{} record(s), {order}", rows.len());
    }
    ExitCode::SUCCESS
}

/// Parses Unix ms or `YYYY-MM-DDTHH:MM:SS[.fff]Z`.
fn parse_time(s: &str) -> Result<u64, String> {
    if let Ok(ms) = s.parse::<u64>() {
        return Ok(ms);
    }
    let bad = || format!("'{s}' is neither Unix ms nor YYYY-MM-DDTHH:MM:SSZ");
    let s2 = s.strip_suffix('Z').ok_or_else(bad)?;
    let (date, time) = s2.split_once('T').ok_or_else(bad)?;
    let d: Vec<i64> = date
        .split('-')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms
        .split(':')
        .map(|p| p.parse().map_err(|_| bad()))
        .collect::<Result<_, _>>()?;
    if d.len() != 3 || t.len() != 3 {
        return Err(bad());
    }
    let ms_frac: i64 = format!("{frac:0<3}")[..3].parse().map_err(|_| bad())?;
    let days = days_from_civil(d[0], d[1], d[2]);
    let secs = days * 86_400 + t[0] * 3600 + t[1] * 60 + t[2];
    u64::try_from(secs * 1000 + ms_frac).map_err(|_| bad())
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's algorithm).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = if y >= 0 { y } else { y - 399 } / 400;
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip() {
        let ms = parse_time("2026-11-22T10:31:07.250Z").unwrap();
        assert_eq!(
            medlink_bridge::audit::format_time(ms),
            "2026-11-22T10:31:07.250Z"
        );
        assert_eq!(parse_time("1700000000000").unwrap(), 1_700_000_000_000);
        assert!(parse_time("yesterday").is_err());
    }
}
