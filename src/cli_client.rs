//! `medlink send`, `medlink request`, `medlink listen`, `medlink fetch`: the SDK from a shell, for scripts and
//! for trying a tree by hand. Messages are printed as JSON lines; the password comes from a
//! file or the `MEDLINK_PASSWORD` environment variable, never from the command line (where
//! `ps` would show it).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use medlink_sdk::{Address, Client, FileRef, Files, Options, Priority, ReceiptKind, SendOptions};

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
    /// The node's HTTP API for files (`https://host:port`), when `--url` is an MQTT URL.
    #[arg(long)]
    files_url: Option<String>,
}

impl ConnectArgs {
    fn options(&self, replies_only: bool) -> Result<Options, String> {
        Ok(Options {
            url: self.url.clone(),
            node: self.node.clone(),
            identity: self.identity.clone(),
            password: read_password(self.password_file.as_deref())?,
            ca: self.ca.clone(),
            replies_only,
            files_url: self.files_url.clone(),
            ..Default::default()
        })
    }
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
    /// A file to upload first and refer to in the command (repeatable).
    #[arg(long = "file")]
    files: Vec<PathBuf>,
    /// The media type of the files (e.g. application/dicom).
    #[arg(long, default_value = "application/octet-stream")]
    media_type: String,
}

impl SendArgs {
    /// The send options the flags describe (the value parsers above admit only known names),
    /// with `files` uploaded.
    fn options(&self, files: Vec<FileRef>) -> SendOptions {
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
            files,
        }
    }

    /// Uploads `--file`s, each with a progress bar on a terminal.
    async fn upload(&self) -> Result<Vec<FileRef>, String> {
        if self.files.is_empty() {
            return Ok(Vec::new());
        }
        let files = Files::new(&self.connect.options(true)?).map_err(|e| e.to_string())?;
        let mut refs = Vec::new();
        for path in &self.files {
            let bar = progress(&format!("upload {}", path.display()));
            let file = files
                .upload_path(path, &self.media_type, |done, total| {
                    bar.set_length(total);
                    bar.set_position(done);
                })
                .await
                .map_err(|e| format!("--file {}: {e}", path.display()))?;
            bar.finish_and_clear();
            refs.push(file);
        }
        Ok(refs)
    }
}

/// A byte-counting progress bar on stderr (drawn only on a terminal).
fn progress(label: &str) -> indicatif::ProgressBar {
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    bar.set_message(label.to_string());
    bar
}

/// What to fetch.
#[derive(clap::Args, Debug)]
pub struct FetchArgs {
    #[command(flatten)]
    connect: ConnectArgs,
    /// The file reference as a command carries it (JSON: sha256, size, name, media_type).
    #[arg(long = "ref", conflicts_with_all = ["sha256", "size"])]
    file_ref: Option<String>,
    /// The file's SHA-256 (with --size).
    #[arg(long, requires = "size")]
    sha256: Option<String>,
    /// Its size in bytes.
    #[arg(long, requires = "sha256")]
    size: Option<u64>,
    /// Where to write it; a partial download there (`<out>.part`) is continued.
    #[arg(long, short)]
    out: PathBuf,
}

/// `medlink fetch`: downloads a file from the node's store, resuming, checking its SHA-256.
pub async fn fetch(args: FetchArgs) -> ExitCode {
    let run = async {
        let file: FileRef = match (&args.file_ref, &args.sha256, args.size) {
            (Some(json), _, _) => serde_json::from_str(json)
                .map_err(|e| format!("--ref: not a file reference ({e})"))?,
            (None, Some(sha), Some(size)) => FileRef {
                sha256: sha.to_ascii_lowercase(),
                size,
                name: String::new(),
                media_type: String::new(),
            },
            _ => return Err("give --ref, or --sha256 and --size".to_string()),
        };
        if !medlink_sdk::valid_sha256(&file.sha256) {
            return Err("--sha256: 64 hex digits".to_string());
        }
        let files = Files::new(&args.connect.options(true)?).map_err(|e| e.to_string())?;
        let bar = progress(&format!("fetch {}", args.out.display()));
        files
            .download_path(&file, &args.out, |done, total| {
                bar.set_length(total);
                bar.set_position(done);
            })
            .await
            .map_err(|e| e.to_string())?;
        bar.finish_and_clear();
        Ok(file)
    };
    match run.await {
        Ok(file) => {
            println!("{} {}", file.sha256, args.out.display());
            ExitCode::SUCCESS
        }
        Err(e) => fail("fetch", e),
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
    Client::connect(args.options(replies_only)?)
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
        let files = args.upload().await?;
        let (client, _inbox) = connect(&args.connect, true).await?;
        client
            .send_with(&to, &args.cmd, p, args.options(files))
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
        let files = args.upload().await?;
        let (client, _inbox) = connect(&args.connect, true).await?;
        let timeout = Duration::from_secs(timeout);
        client
            .request_with(&to, &args.cmd, p, timeout, args.options(files))
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
