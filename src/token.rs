//! `medlink token`: mints an HS256 device token from a `[[token_key]]` secret file, for
//! operators trying a key, for the tests, and for scripts. A hospital's backend mints its own
//! tokens in production (any JWT library; `medlink_wire::token` is the Rust one).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Args;
use medlink_broker::identity::{plain_name, valid_name};
use medlink_broker::token::{mint_hs256, Claims, MIN_SECRET_LEN};

use crate::config::tokens::{loose_mode, read_secret};

/// `medlink token` arguments.
#[derive(Args)]
pub struct TokenArgs {
    /// The key's secret file (as in `[[token_key]] secret_file`).
    #[arg(long)]
    key_file: PathBuf,
    /// The key id (`[[token_key]] kid`).
    #[arg(long)]
    kid: String,
    /// The identity the token logs in as.
    #[arg(long)]
    sub: String,
    /// Seconds until it expires.
    #[arg(long, default_value_t = 3600)]
    ttl: u64,
    /// `client`, `node` or `admin` (the key must grant it); default: none written, i.e. client.
    #[arg(long)]
    role: Option<String>,
    /// Valid only at this node id.
    #[arg(long)]
    node: Option<String>,
}

/// Prints the token on stdout, or refuses naming the flag at fault (exit 2).
pub fn run(args: TokenArgs) -> ExitCode {
    match mint(&args) {
        Ok(token) => {
            println!("{token}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("medlink token: {e}");
            ExitCode::from(2)
        }
    }
}

fn mint(args: &TokenArgs) -> Result<String, String> {
    if args.kid.is_empty() {
        return Err("--kid: give the key id of the [[token_key]]".into());
    }
    if !valid_name(&args.sub) || !plain_name(&args.sub) {
        return Err(format!(
            "--sub: '{}' must be 1-128 characters of A-Z a-z 0-9 . _ - @, not starting with '$'",
            args.sub.escape_debug()
        ));
    }
    if args.ttl == 0 {
        return Err("--ttl: must be at least 1 second".into());
    }
    if let Some(role) = &args.role {
        if !matches!(role.as_str(), "client" | "node" | "admin") {
            return Err(format!(
                "--role: '{}' is not client, node or admin",
                role.escape_debug()
            ));
        }
    }
    if let Some(node) = &args.node {
        medlink_bridge::envelope::check_node_id(node)
            .map_err(|problem| format!("--node: '{node}' {problem}"))?;
    }
    let secret = read_secret(&args.key_file).map_err(|e| format!("--key-file: {e}"))?;
    if secret.len() < MIN_SECRET_LEN {
        return Err(format!(
            "--key-file: the secret has {} bytes; HS256 keys need at least {MIN_SECRET_LEN}",
            secret.len()
        ));
    }
    if let Some(mode) = loose_mode(&args.key_file) {
        eprintln!(
            "medlink token: warning: {} is readable by group or others (mode {mode:o}); chmod 600 it",
            args.key_file.display()
        );
    }
    let mut claims = Claims::new(args.sub.clone(), args.ttl);
    claims.role = args.role.clone();
    claims.node = args.node.clone();
    mint_hs256(&secret, &args.kid, &claims).map_err(|e| format!("cannot sign: {e}"))
}
