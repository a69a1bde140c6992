//! `medlink deadletters`: an operator lists, re-sends or purges the dead letters of a running
//! node through its HTTP API, as an admin identity. The node does the work (re-sends are new
//! commands in its journal) and records each action in its operator log.

use std::path::PathBuf;
use std::process::ExitCode;

use medlink_wire::{DeadLetter, DeadLetterQuery, DeadReason, OperatorAction, Outcome};
use serde_json::Value;

/// `medlink deadletters`.
#[derive(clap::Args, Debug)]
pub struct DeadLettersArgs {
    /// The node's HTTP API, e.g. `https://city.example:8443` (`http://` on loopback).
    #[arg(long)]
    url: String,
    /// An admin identity at the node.
    #[arg(long)]
    identity: String,
    /// File holding the password (default: the MEDLINK_PASSWORD environment variable).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// CA certificate of the node's HTTPS certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// Re-send these dead letters (ids; each becomes a new command from its sender).
    #[arg(long, num_args = 1.., conflicts_with = "purge")]
    resend: Vec<String>,
    /// Forget these dead letters.
    #[arg(long, num_args = 1..)]
    purge: Vec<String>,
    /// Show the operator log instead.
    #[arg(long, conflicts_with_all = ["resend", "purge"])]
    log: bool,
    /// List only this reason: failed, expired, rejected.
    #[arg(long)]
    reason: Option<DeadReason>,
    /// List only commands from or to this client.
    #[arg(long)]
    client: Option<String>,
    /// List only commands from or to this node.
    #[arg(long)]
    node: Option<String>,
    /// List only this cmd.
    #[arg(long)]
    cmd: Option<String>,
    /// Most to list (default 100).
    #[arg(long)]
    limit: Option<usize>,
    /// Print JSON lines.
    #[arg(long)]
    json: bool,
}

/// Runs the command; exit 0 when every action was done.
pub async fn run(args: DeadLettersArgs) -> ExitCode {
    match run_inner(&args).await {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("medlink deadletters: {e}");
            ExitCode::from(2)
        }
    }
}

async fn run_inner(args: &DeadLettersArgs) -> Result<bool, String> {
    let password = crate::cli_client::read_password(args.password_file.as_deref())?;
    let tls = match &args.ca {
        Some(ca) => medlink_broker::tls::client_config(ca, None)?,
        None => medlink_broker::tls::client_config_trusting_nothing(),
    };
    let http = medlink_wire::http::client(tls, std::time::Duration::from_secs(10))
        .map_err(|e| format!("HTTP client: {e}"))?;
    let base = args.url.trim_end_matches('/');
    let call = |req: reqwest::RequestBuilder| {
        let password = password.clone();
        async move {
            let resp = req
                .basic_auth(&args.identity, Some(password))
                .send()
                .await
                .map_err(|e| format!("{base}: {e}"))?;
            let status = resp.status();
            let body: Value = resp.json().await.map_err(|e| format!("{base}: {e}"))?;
            if !status.is_success() {
                return Err(format!(
                    "{status}: {}",
                    body["message"].as_str().unwrap_or("")
                ));
            }
            Ok(body)
        }
    };
    if args.log {
        let body = call(http.get(format!("{base}/v1/operator/log"))).await?;
        let lines: Vec<OperatorAction> =
            serde_json::from_value(body["log"].clone()).map_err(|e| e.to_string())?;
        for l in lines {
            if args.json {
                println!("{}", serde_json::to_string(&l).unwrap_or_default());
            } else {
                println!(
                    "{}  {:<8} {:<8} {}  {}",
                    l.at, l.operator, l.action, l.target, l.detail
                );
            }
        }
        return Ok(true);
    }
    let acted = match (&args.resend[..], &args.purge[..]) {
        ([], []) => None,
        (ids, []) => Some(("resend", ids)),
        (_, ids) => Some(("purge", ids)),
    };
    if let Some((what, ids)) = acted {
        let body = serde_json::json!({ "ids": ids });
        let url = format!("{base}/v1/deadletters/{what}");
        let answer = call(http.post(url).json(&body)).await?;
        let outcomes: Vec<Outcome> =
            serde_json::from_value(answer["outcomes"].clone()).map_err(|e| e.to_string())?;
        let mut all = true;
        for o in outcomes {
            all &= o.error.is_none();
            if args.json {
                println!("{}", serde_json::to_string(&o).unwrap_or_default());
            } else {
                match (&o.resent_as, &o.error) {
                    (_, Some(e)) => println!("{}  not done: {e}", o.id),
                    (Some(new), None) => println!("{}  re-sent as {new}", o.id),
                    (None, None) => println!("{}  purged", o.id),
                }
            }
        }
        return Ok(all);
    }
    let q = DeadLetterQuery {
        reason: args.reason,
        client: args.client.clone(),
        node: args.node.clone(),
        cmd: args.cmd.clone(),
        limit: args.limit,
        ..Default::default()
    };
    let body = call(http.get(format!("{base}/v1/deadletters")).query(&q)).await?;
    let dead: Vec<DeadLetter<Value>> =
        serde_json::from_value(body["deadletters"].clone()).map_err(|e| e.to_string())?;
    for d in dead {
        if args.json {
            println!("{}", serde_json::to_string(&d).unwrap_or_default());
        } else {
            let resent = d
                .resent_as
                .map(|r| format!("  (re-sent as {r} by {})", d.resent_by.unwrap_or_default()))
                .unwrap_or_default();
            println!(
                "{}  {}  {:<8} {} -> {}  {}  {}{resent}",
                d.at, d.id, d.reason, d.from, d.to, d.cmd, d.detail
            );
        }
    }
    Ok(true)
}
