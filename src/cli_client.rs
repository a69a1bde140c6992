//! `medlink send`, `medlink request`, `medlink listen`: the SDK from a shell, for scripts and
//! for trying a tree by hand. Messages are printed as JSON lines; the password comes from a
//! file or the `MEDLINK_PASSWORD` environment variable, never from the command line (where
//! `ps` would show it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use medlink_sdk::{Address, Client, Options, Priority, ReceiptKind, SendOptions};

/// How to connect (shared by the three commands).
#[derive(clap::Args, Debug)]
pub struct ConnectArgs {
    /// The node: `mqtts://host:port` or `https://host:port` (the node then chooses MQTT or
    /// HTTP); `mqtt://` / `http://` on loopback.
    #[arg(long)]
    url: String,
    /// The node's id.
    #[arg(long)]
    node: String,
    /// This application's identity at the node.
    #[arg(long)]
    identity: String,
    /// File holding the password (default: the MEDLINK_PASSWORD environment variable).
    #[arg(long)]
    password_file: Option<PathBuf>,
    /// CA certificate for `mqtts://` and `https://`.
    #[arg(long)]
    ca: Option<PathBuf>,
}

/// What to send.
#[derive(clap::Args, Debug)]
pub struct SendArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Target as `node/client`, e.g. `js.nj/hosp-nj`.
    #[arg(long)]
    to: String,
    /// Command name.
    #[arg(long)]
    cmd: String,
    /// Parameters as JSON.
    #[arg(long, default_value = "null")]
    params: String,
    /// Priority class: urgent, normal or bulk.
    #[arg(long, default_value = "normal", value_parser = ["urgent", "normal", "bulk"])]
    priority: String,
    /// Time to live in seconds (an `expired` receipt comes if it is not delivered by then).
    #[arg(long)]
    ttl: Option<u64>,
    /// Positive receipts to ask for, comma-separated: accepted, delivered, replied.
    #[arg(long, value_delimiter = ',', value_parser = ["accepted", "delivered", "replied"])]
    receipts: Vec<String>,
    /// An id of your own (resending it is accepted once).
    #[arg(long)]
    id: Option<String>,
}

impl SendArgs {
    /// The send options the flags describe (the value parsers above admit only known names).
    fn options(&self) -> SendOptions {
        // The names are the wire's own spellings (`Priority`/`ReceiptKind` parse them).
        let priority: Priority = self.priority.parse().unwrap_or_default();
        let receipts = self
            .receipts
            .iter()
            .filter_map(|r| r.parse::<ReceiptKind>().ok())
            .collect();
        SendOptions {
            priority,
            ttl: self.ttl.map(Duration::from_secs),
            receipts,
            id: self.id.clone(),
            files: Vec::new(),
        }
    }
}

/// What to send, and how long to wait for the reply.
#[derive(clap::Args, Debug)]
pub struct RequestArgs {
    #[command(flatten)]
    send: SendArgs,
    /// Seconds to wait for the reply.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
}

/// What to listen for.
#[derive(clap::Args, Debug)]
pub struct ListenArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// Stop after this many commands.
    #[arg(long)]
    count: Option<usize>,
    /// Answer every command with these parameters (JSON): the answer is a command
    /// `<cmd>.reply` with `reply_to` = the command's id. Commands that are themselves replies
    /// (they carry `reply_to`) are printed but never answered, so two listeners cannot loop.
    #[arg(long)]
    reply_with: Option<String>,
}

/// The password from `file` (its first line), or else from `MEDLINK_PASSWORD`; never from
/// the command line, where `ps` would show it.
pub fn read_password(file: Option<&std::path::Path>) -> Result<String, String> {
    match file {
        Some(f) => Ok(std::fs::read_to_string(f)
            .map_err(|e| format!("--password-file {}: {e}", f.display()))?
            .trim_end_matches(['\n', '\r'])
            .to_string()),
        None => std::env::var("MEDLINK_PASSWORD")
            .map_err(|_| "give --password-file or set MEDLINK_PASSWORD".to_string()),
    }
}

fn fail(what: &str, e: impl std::fmt::Display) -> ExitCode {
    eprintln!("medlink {what}: {e}");
    ExitCode::FAILURE
}

/// Connects; `replies_only` for the short-lived `send` and `request`, which are not among the
/// identity's receiving devices: they take nothing but their own reply.
async fn connect(
    args: &ConnectArgs,
    replies_only: bool,
) -> Result<(Client, medlink_sdk::Inbox), String> {
    let password = read_password(args.password_file.as_deref())?;
    Client::connect(Options {
        url: args.url.clone(),
        node: args.node.clone(),
        identity: args.identity.clone(),
        password,
        ca: args.ca.clone(),
        replies_only,
        ..Default::default()
    })
    .await
    .map_err(|e| e.to_string())
}

fn target(to: &str) -> Result<Address, String> {
    let (node, client) = to
        .split_once('/')
        .ok_or_else(|| format!("--to: '{to}' is not node/client"))?;
    Ok(Address::new(node, client))
}

fn params(text: &str, flag: &str) -> Result<serde_json::Value, String> {
    serde_json::from_str(text).map_err(|e| format!("{flag}: not JSON ({e})"))
}

/// `medlink send`: prints the id once the node has custody.
pub async fn send(args: SendArgs) -> ExitCode {
    let run = async {
        let to = target(&args.to)?;
        let p = params(&args.params, "--params")?;
        let (client, _inbox) = connect(&args.connect, true).await?;
        client
            .send_with(&to, &args.cmd, p, args.options())
            .await
            .map_err(|e| e.to_string())
    };
    match run.await {
        Ok(id) => {
            println!("{id}");
            ExitCode::SUCCESS
        }
        Err(e) => fail("send", e),
    }
}

/// `medlink request`: prints the reply as JSON; fails at once with the reason of a `failed`,
/// `expired` or `rejected` receipt.
pub async fn request(args: RequestArgs) -> ExitCode {
    let RequestArgs {
        send: args,
        timeout,
    } = args;
    let run = async {
        let to = target(&args.to)?;
        let p = params(&args.params, "--params")?;
        let (client, _inbox) = connect(&args.connect, true).await?;
        let timeout = Duration::from_secs(timeout);
        client
            .request_with(&to, &args.cmd, p, timeout, args.options())
            .await
            .map_err(|e| e.to_string())
    };
    match run.await {
        Ok(reply) => {
            println!(
                "{}",
                serde_json::to_string(&reply).expect("messages serialise")
            );
            ExitCode::SUCCESS
        }
        Err(e) => fail("request", e),
    }
}

/// `medlink listen`: prints every command (and receipt) as a JSON line, optionally replying.
pub async fn listen(args: ListenArgs) -> ExitCode {
    let reply_with = match args
        .reply_with
        .as_deref()
        .map(|r| params(r, "--reply-with"))
        .transpose()
    {
        Ok(r) => r,
        Err(e) => return fail("listen", e),
    };
    let (client, mut inbox) = match connect(&args.connect, false).await {
        Ok(c) => c,
        Err(e) => return fail("listen", e),
    };
    let mut seen = 0usize;
    loop {
        tokio::select! {
            Some(cmd) = inbox.commands.recv() => {
                println!("{}", serde_json::to_string(&cmd).expect("messages serialise"));
                if let Some(p) = reply_with.as_ref().filter(|_| cmd.reply_to.is_none()) {
                    if let Err(e) = client.reply(&cmd, p.clone()).await {
                        return fail("listen", e);
                    }
                }
                seen += 1;
                if args.count.is_some_and(|n| seen >= n) {
                    return ExitCode::SUCCESS;
                }
            }
            Some(r) = inbox.receipts.recv() => {
                println!("{}", serde_json::to_string(&r).expect("messages serialise"));
            }
            _ = tokio::signal::ctrl_c() => return ExitCode::SUCCESS,
        }
    }
}
