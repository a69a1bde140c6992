//! A remote consultation through medlink with the SDK: the township clinic asks the city
//! hospital for an opinion and waits for the answer; the hospital answers every request it
//! gets. Run it against the demo tree (the four `conf/` nodes running, certificates issued
//! once by `./scripts/demo.sh`):
//!
//! ```sh
//! for t in province city county township; do ./target/release/medlink node --config conf/$t.toml & done
//! cargo run -p medlink-sdk --example consult                 # both sides in one process
//! cargo run -p medlink-sdk --example consult -- answer &     # or each side on its own
//! cargo run -p medlink-sdk --example consult -- ask --count 3 --outbox /tmp/clinic-outbox.db
//! ```
//!
//! Options: `--clinic-url` (default `https://localhost:18843`, the township's HTTP API: the
//! node decides the transport), `--hospital-url` (default `https://localhost:18841`, the
//! city's), `--ca` (default `conf/dev/certs/ca.crt`), `--count`, `--outbox`. Passwords come
//! from `CLINIC_PASSWORD` / `HOSPITAL_PASSWORD`, defaulting to the demo's development ones.

use std::path::PathBuf;
use std::time::Duration;

use medlink_sdk::{Address, Client, Options, Priority, SendOptions};
use serde_json::json;

struct Args {
    mode: String,
    clinic_url: String,
    hospital_url: String,
    ca: PathBuf,
    count: u32,
    outbox: Option<PathBuf>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        mode: "both".into(),
        clinic_url: "https://localhost:18843".into(),
        hospital_url: "https://localhost:18841".into(),
        ca: "conf/dev/certs/ca.crt".into(),
        count: 1,
        outbox: None,
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        let mut value = || it.next().ok_or_else(|| format!("{a} needs a value"));
        match a.as_str() {
            "ask" | "answer" | "both" => args.mode = a.clone(),
            "--clinic-url" => args.clinic_url = value()?,
            "--hospital-url" => args.hospital_url = value()?,
            "--ca" => args.ca = value()?.into(),
            "--outbox" => args.outbox = Some(value()?.into()),
            "--count" => args.count = value()?.parse().map_err(|e| format!("--count: {e}"))?,
            other => return Err(format!("unknown argument '{other}'")),
        }
    }
    Ok(args)
}

fn password(var: &str, demo: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| demo.to_string())
}

/// The hospital: answers every consultation request, on its own task.
async fn hospital(args: &Args) -> Result<tokio::task::JoinHandle<()>, medlink_sdk::Error> {
    let (hosp, mut inbox) = Client::connect(Options {
        url: args.hospital_url.clone(),
        node: "js.nj".into(),
        identity: "hosp-nj".into(),
        password: password("HOSPITAL_PASSWORD", "dev-hosp-nj"),
        ca: Some(args.ca.clone()),
        ..Default::default()
    })
    .await?;
    println!("hospital connected over {:?}", hosp.transport());
    Ok(tokio::spawn(async move {
        while let Some(req) = inbox.commands.recv().await {
            println!("hospital got {} from {}: {}", req.cmd, req.from, req.params);
            let opinion = json!({"opinion": "benign-looking; CT again in 6 months"});
            if let Err(e) = hosp.reply(&req, opinion).await {
                eprintln!("hospital could not reply: {e}");
            }
        }
    }))
}

/// The clinic: asks `count` times and prints each answer.
async fn clinic(args: &Args) -> Result<(), medlink_sdk::Error> {
    let (clinic, mut inbox) = Client::connect(Options {
        url: args.clinic_url.clone(),
        node: "js.nj.gulou.t3".into(),
        identity: "clinic-t3".into(),
        password: password("CLINIC_PASSWORD", "dev-clinic-t3"),
        ca: Some(args.ca.clone()),
        outbox: args.outbox.clone(),
        ..Default::default()
    })
    .await?;
    // Receipts (an expired or undeliverable request) are printed as they come.
    tokio::spawn(async move {
        while let Some(r) = inbox.receipts.recv().await {
            if let Some(r) = r.receipt() {
                println!("receipt: {:?} for {} ({:?})", r.status, r.about, r.reason);
            }
        }
    });
    let hospital = Address::new("js.nj", "hosp-nj");
    for n in 1..=args.count {
        let opts = SendOptions {
            priority: Priority::Normal,
            ttl: Some(Duration::from_secs(3600)),
            ..Default::default()
        };
        let params = json!({"patient": format!("P-{n:04}"), "question": "9 mm nodule; follow-up?"});
        let answer = clinic
            .request_with(
                &hospital,
                "consult.request",
                params,
                Duration::from_secs(60),
                opts,
            )
            .await?;
        println!(
            "clinic ({:?}) got {}: {} via {:?}",
            clinic.transport(),
            answer.cmd,
            answer.params,
            answer
                .trail
                .iter()
                .map(|h| h.node.as_str())
                .collect::<Vec<_>>()
        );
    }
    clinic.close().await;
    Ok(())
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("consult: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let run = async {
        match args.mode.as_str() {
            "answer" => {
                let task = hospital(&args).await?;
                let _ = task.await;
                Ok(())
            }
            "ask" => clinic(&args).await,
            _ => {
                let _task = hospital(&args).await?;
                clinic(&args).await
            }
        }
    };
    match run.await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("consult: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}
