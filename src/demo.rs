//! `medlink demo`: the main job on the embedded default.
//!
//! Starts province, city, county and township nodes from `conf/` as separate processes on
//! loopback, connects a township clinic and a city hospital, sends a consultation request up
//! the tree and the reply back down, and prints each command's custody trail with timings.
//!
//! Everything runs as configured in `conf/`: TLS on every listener and link, child nodes
//! authenticated by certificate, clients by argon2id-hashed passwords. On first run the demo
//! issues the development certificates (`conf/dev/certs/`, never committed).

use std::path::{Path, PathBuf};
use std::process::{ExitCode, Stdio};
use std::time::{Duration, Instant};

use medlink_bridge::envelope::now_ms;
use medlink_broker::ListenerKind;
use medlink_sdk::{Address, Client, Inbox, Message, Options, SendOptions};
use serde_json::json;
use tokio::process::{Child, Command};

/// Options of `medlink demo`.
#[derive(clap::Args, Debug)]
pub struct DemoArgs {
    /// Directory with province.toml, city.toml, county.toml and township.toml.
    #[arg(long, default_value = "conf")]
    conf_dir: PathBuf,
    /// Keep the nodes' data directories after the run.
    #[arg(long)]
    keep_data: bool,
    /// Give up after this many seconds.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// After the consultation, keep the tree running (until Ctrl-C) to look at it in the
    /// operators' console.
    #[arg(long)]
    stay: bool,
}

const TIERS: [&str; 4] = ["province", "city", "county", "township"];

/// Development passwords of the demo's clients; `conf/*.credentials.toml` holds their argon2id
/// hashes. Loopback demos only: real sites set their own with `medlink passwd`.
const DEMO_PASSWORDS: [(&str, &str); 4] = [
    ("prov-experts", "dev-prov-experts"),
    ("hosp-nj", "dev-hosp-nj"),
    ("clinic-t3", "dev-clinic-t3"),
    ("ops", "dev-ops-readonly"),
];

/// A node process that is stopped (SIGTERM, then SIGKILL) when dropped.
struct NodeProcess {
    tier: &'static str,
    id: String,
    tls: String,
    child: Child,
    log: PathBuf,
}

impl NodeProcess {
    async fn stop(&mut self) {
        if let Some(pid) = self.child.id() {
            let _ = Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status()
                .await;
            if tokio::time::timeout(Duration::from_secs(5), self.child.wait())
                .await
                .is_ok()
            {
                return;
            }
        }
        let _ = self.child.kill().await;
    }
}

pub async fn run(args: DemoArgs) -> ExitCode {
    let data = std::env::temp_dir().join(format!("medlink-demo-{}", std::process::id()));
    let mut nodes: Vec<NodeProcess> = Vec::new();
    let outcome = tokio::select! {
        r = tokio::time::timeout(Duration::from_secs(args.timeout), demo(&args, &data, &mut nodes)) => match r {
            Ok(r) => r,
            Err(_) => Err(format!("timed out after {} s", args.timeout)),
        },
        _ = tokio::signal::ctrl_c() => Err("interrupted".to_string()),
    };
    if outcome.is_ok() && args.stay {
        let ca = args.conf_dir.join("dev/certs/ca.crt");
        println!(
            "\nthe tree keeps running; the province's console: https://localhost:18840/console\n\
             (admin identity ops, password dev-ops-readonly; the development CA is {}).\n\
             Every node serves its own: city 18841, county 18842, township 18843. Ctrl-C stops them.",
            ca.display()
        );
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {}
            Some(()) = async { match term.as_mut() { Some(t) => t.recv().await, None => std::future::pending().await } } => {}
        }
    }
    for n in nodes.iter_mut() {
        n.stop().await;
    }
    if outcome.is_err() {
        for n in &nodes {
            if let Ok(log) = std::fs::read_to_string(&n.log) {
                eprintln!("--- log of {} ({}) ---\n{}", n.tier, n.id, tail(&log, 30));
            }
        }
    }
    if !args.keep_data {
        let _ = std::fs::remove_dir_all(&data);
    } else {
        println!("data kept in {}", data.display());
    }
    match outcome {
        Ok(()) => {
            println!("all {} node processes stopped cleanly", nodes.len());
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("medlink demo failed: {e}");
            ExitCode::FAILURE
        }
    }
}

fn tail(s: &str, lines: usize) -> String {
    let v: Vec<&str> = s.lines().collect();
    v[v.len().saturating_sub(lines)..].join("\n")
}

/// The first client identity whose name starts with `prefix` in a node's credentials file,
/// with its development password.
fn find_identity(conf: &Path, prefix: &str) -> Result<(String, String), String> {
    let text = std::fs::read_to_string(conf).map_err(|e| format!("{}: {e}", conf.display()))?;
    let file: crate::config::File =
        toml::from_str(&text).map_err(|e| format!("{}: {e}", conf.display()))?;
    let path = file
        .node
        .credentials
        .map(|c| conf.parent().unwrap_or(Path::new(".")).join(c))
        .ok_or_else(|| format!("{}: [node] credentials is not set", conf.display()))?;
    let creds = medlink_broker::CredentialsFile::load(&path)?;
    let name = creds
        .identities
        .into_iter()
        .find(|i| i.name.starts_with(prefix) && i.role == medlink_broker::Role::Client)
        .map(|i| i.name)
        .ok_or_else(|| {
            format!(
                "{}: no client identity starting with '{prefix}'",
                path.display()
            )
        })?;
    let password = DEMO_PASSWORDS
        .iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| p.to_string())
        .ok_or_else(|| format!("no development password for '{name}'"))?;
    Ok((name, password))
}

async fn demo(args: &DemoArgs, data: &Path, nodes: &mut Vec<NodeProcess>) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| format!("cannot find own binary: {e}"))?;
    std::fs::create_dir_all(data).map_err(|e| format!("{}: {e}", data.display()))?;
    println!(
        "medlink demo: starting a 4-tier tree from {}/ (data in {})",
        args.conf_dir.display(),
        data.display()
    );
    let certs = args.conf_dir.join("dev").join("certs");
    crate::certs::ensure(&certs, &["js", "js.nj", "js.nj.gulou", "js.nj.gulou.t3"])?;
    for tier in TIERS {
        let conf = args.conf_dir.join(format!("{tier}.toml"));
        let cfg = crate::config::load(&conf, None).map_err(|e| e.to_string())?;
        let tls = cfg
            .listeners
            .iter()
            .find(|l| l.kind == ListenerKind::Tls)
            .map(|l| l.addr.to_string())
            .ok_or_else(|| format!("{}: no tls listener", conf.display()))?;
        let log = data.join(format!("{tier}.log"));
        let logfile = std::fs::File::create(&log).map_err(|e| e.to_string())?;
        let child = Command::new(&exe)
            .arg("node")
            .arg("--config")
            .arg(&conf)
            .arg("--data-dir")
            .arg(data.join(tier))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(logfile))
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| format!("cannot start {tier} node: {e}"))?;
        println!(
            "  {tier:<9} {:<16} mqtts://{tls:<16} pid {}",
            cfg.id,
            child.id().unwrap_or(0)
        );
        nodes.push(NodeProcess {
            tier,
            id: cfg.id,
            tls,
            child,
            log,
        });
    }
    for n in nodes.iter_mut() {
        wait_for_port(&n.tls, &mut n.child)
            .await
            .map_err(|e| format!("{} node: {e}", n.tier))?;
    }
    let (province, city, township) = (&nodes[0], &nodes[1], &nodes[3]);
    let conf = |tier: &str| args.conf_dir.join(format!("{tier}.toml"));
    let ca = certs.join("ca.crt");
    println!(
        "  TLS on every listener and tier link (CA {}); child nodes log in with their certificates,\n  clients with passwords checked against argon2id hashes",
        ca.display()
    );
    let mut hosp = DemoClient::connect(city, &conf("city"), "hosp", &ca).await?;
    let mut clinic = DemoClient::connect(township, &conf("township"), "clinic", &ca).await?;
    println!(
        "  clinic '{}' connected to {}, hospital '{}' connected to {}",
        clinic.name, township.id, hosp.name, city.id
    );

    // Up: township clinic → city hospital.
    let started = Instant::now();
    let sent = now_ms();
    clinic
        .client
        .send_with(
            &hosp.address(),
            "consult.request",
            json!({"patient": "P-0042", "question": "CT shows a 9 mm nodule; follow-up?", "images": []}),
            SendOptions {
                ttl: Some(Duration::from_secs(3600)),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| format!("clinic: {e}"))?;
    let req = receive("request", &mut hosp, sent).await?;

    // Down: the hospital answers asynchronously; the reply finds its way back by the `from` stamp.
    let sent = now_ms();
    hosp.client
        .reply(
            &req,
            json!({"opinion": "Low risk. Repeat CT in 12 months.", "by": hosp.name}),
        )
        .await
        .map_err(|e| format!("hospital: {e}"))?;
    let rep = receive("reply", &mut clinic, sent).await?;
    if rep.reply_to.as_deref() != Some(req.id.as_str()) {
        return Err(format!(
            "reply correlates to {:?}, expected {}",
            rep.reply_to, req.id
        ));
    }
    let round_trip = started.elapsed();

    // A second opinion from the provincial expert panel crosses all four tiers each way.
    let mut prov = DemoClient::connect(province, &conf("province"), "prov", &ca).await?;
    let sent = now_ms();
    clinic
        .client
        .send(
            &prov.address(),
            "consult.second_opinion",
            json!({"patient": "P-0042", "ref": req.id}),
        )
        .await
        .map_err(|e| format!("clinic: {e}"))?;
    let req2 = receive("second-opinion request", &mut prov, sent).await?;
    let sent = now_ms();
    prov.client
        .reply(&req2, json!({"opinion": "Agree with the city hospital."}))
        .await
        .map_err(|e| format!("provincial experts: {e}"))?;
    let rep2 = receive("second-opinion reply", &mut clinic, sent).await?;
    if rep2.reply_to.as_deref() != Some(req2.id.as_str()) || rep2.trail.len() != 4 {
        return Err("the second-opinion reply did not cross all four tiers".into());
    }
    println!();
    println!(
        "clinic <-> city hospital round trip: {:.1} ms (custody committed at every hop); the province audited the second opinion:",
        round_trip.as_secs_f64() * 1000.0
    );
    let clinic_name = clinic.name.clone();
    let q = medlink_bridge::audit::AuditQuery {
        client: Some(clinic_name.clone()),
        limit: 100,
        oldest_first: true,
        ..Default::default()
    };
    let records = medlink_bridge::audit::query(&data.join("province").join("journal.db"), &q)
        .map_err(|e| format!("reading the province's audit: {e}"))?;
    for r in &records.records {
        println!("  {r}");
    }
    println!("  (the same from a shell: medlink audit --data-dir <province data dir> --client {clinic_name})");
    println!();
    println!("the first request, hop by hop, from the four journals (medlink trace):");
    // A node writes its peers' acknowledgements at its next idle moment, within 250 ms
    // (`link/acks.rs`): until then its journal still holds what the next hop took.
    tokio::time::sleep(medlink_bridge::link::acks::WRITE_WITHIN + Duration::from_millis(100)).await;
    let mut events = Vec::new();
    for tier in ["township", "county", "city", "province"] {
        let journal = data.join(tier).join("journal.db");
        events.extend(
            medlink_bridge::trace::trace_journal(&journal, tier, &req.id)
                .map_err(|e| format!("reading the {tier} journal: {e}"))?,
        );
    }
    let events = medlink_bridge::trace::merge(events);
    if events.len() < 3 {
        return Err(format!("the trace of {} is incomplete: {events:?}", req.id));
    }
    for e in &events {
        // The journal keeps no time for some facts (a delivery): no time is shown for them.
        let at = match e.at {
            0 => String::new(),
            at => medlink_bridge::audit::format_time(at),
        };
        println!("  {at:<24} {:<16} {}", e.node, e.what);
    }
    println!(
        "  (the same from a shell: medlink trace {} --data-dir <township dir> --data-dir <county dir> ...)",
        req.id
    );
    for c in [prov, hosp, clinic] {
        c.client.close().await;
    }
    Ok(())
}

/// A demo application connected through the SDK to one node, as the first client identity
/// in that node's config whose name starts with a prefix.
struct DemoClient {
    node: String,
    name: String,
    client: Client,
    inbox: Inbox,
}

impl DemoClient {
    async fn connect(
        node: &NodeProcess,
        conf: &Path,
        prefix: &str,
        ca: &Path,
    ) -> Result<DemoClient, String> {
        let (name, password) = find_identity(conf, prefix)?;
        let (client, inbox) = Client::connect(Options {
            url: format!("mqtts://{}", node.tls),
            node: node.id.clone(),
            identity: name.clone(),
            password,
            ca: Some(ca.to_path_buf()),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("{name} at {}: {e}", node.id))?;
        Ok(DemoClient {
            node: node.id.clone(),
            name,
            client,
            inbox,
        })
    }

    /// Where commands for this application go.
    fn address(&self) -> Address {
        Address::new(&self.node, &self.name)
    }
}

/// Waits for the next command at `to` (sent at `sent`, Unix ms) and prints its trail.
async fn receive(label: &str, to: &mut DemoClient, sent: u64) -> Result<Message, String> {
    let msg = next_command(&mut to.inbox).await?;
    println!();
    print_trail(label, &msg, sent, now_ms());
    Ok(msg)
}

async fn wait_for_port(addr: &str, child: &mut Child) -> Result<(), String> {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        if let Ok(Some(status)) = child.try_wait() {
            return Err(format!("exited with {status} before listening on {addr}"));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Err(format!("not listening on {addr} after 10 s"))
}

/// The next command; a receipt instead means the command sent was refused or failed (none
/// are asked for), which ends the demo with its reason.
async fn next_command(inbox: &mut Inbox) -> Result<Message, String> {
    tokio::select! {
        Some(cmd) = inbox.commands.recv() => Ok(cmd),
        Some(receipt) = inbox.receipts.recv() => {
            Err(format!("unexpected receipt: {}", receipt.params))
        }
        else => Err("client connection closed".into()),
    }
}

fn print_trail(what: &str, env: &Message, sent_at: u64, received_at: u64) {
    println!(
        "{what}: {}/{} -> {}/{}  cmd={}  id={}",
        env.from.node, env.from.client, env.to.node, env.to.client, env.cmd, env.id
    );
    println!("  {:<4} {:<22} {:>10}", "hop", "node (custody)", "t+ ms");
    println!(
        "  {:<4} {:<22} {:>10}",
        "-",
        format!("{} publishes", env.from.client),
        "0.0"
    );
    for (i, hop) in env.trail.iter().enumerate() {
        println!(
            "  {:<4} {:<22} {:>10.1}",
            i + 1,
            hop.node,
            hop.at.saturating_sub(sent_at) as f64
        );
    }
    println!(
        "  {:<4} {:<22} {:>10.1}",
        "-",
        format!("{} receives", env.to.client),
        received_at.saturating_sub(sent_at) as f64
    );
}
