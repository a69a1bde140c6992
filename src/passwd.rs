//! `medlink passwd`: adds, rotates, removes and lists identities in a credentials file.
//!
//! Passwords never appear on the command line (where `ps` and shell history would keep them):
//! they are read from stdin (`--password-stdin`) or generated and printed once (`--generate`).
//! The file is rewritten atomically; a running node picks the change up within a second.

use std::io::{BufRead, IsTerminal};
use std::path::PathBuf;
use std::process::ExitCode;

use medlink_bridge::envelope::valid_node_id;
use medlink_broker::identity::{hash_password, plain_name, valid_name};
use medlink_broker::{CredentialsFile, Role};
use rand::Rng;

/// Arguments of `medlink passwd`.
#[derive(clap::Args, Debug)]
pub struct PasswdArgs {
    /// The credentials file (`[node] credentials` in the node's config).
    #[arg(long)]
    file: PathBuf,
    #[command(subcommand)]
    action: Action,
}

#[derive(clap::Subcommand, Debug)]
enum Action {
    /// Add an identity (or replace one with the same name).
    Add {
        /// Client name, child node id, or operator name.
        name: String,
        /// client, node or admin.
        #[arg(long, value_parser = parse_role)]
        role: Role,
        #[command(flatten)]
        secret: Secret,
    },
    /// Give an existing identity a new password; its old one stops working within a second.
    Rotate {
        /// The identity.
        name: String,
        #[command(flatten)]
        secret: Secret,
    },
    /// Remove an identity; it can no longer log in (routing to a removed client stops too).
    Remove {
        /// The identity.
        name: String,
    },
    /// List identities and roles (never hashes).
    List,
}

#[derive(clap::Args, Debug)]
#[group(required = true, multiple = false)]
struct Secret {
    /// Read the password from the first line of stdin.
    #[arg(long)]
    password_stdin: bool,
    /// Generate a random password and print it once.
    #[arg(long)]
    generate: bool,
    /// No password: a node that logs in with its client certificate only.
    #[arg(long)]
    no_password: bool,
}

fn parse_role(s: &str) -> Result<Role, String> {
    match s {
        "client" => Ok(Role::Client),
        "node" => Ok(Role::Node),
        "admin" => Ok(Role::Admin),
        other => Err(format!("'{other}' is not client, node or admin")),
    }
}

/// Runs `medlink passwd`.
pub fn run(args: PasswdArgs) -> ExitCode {
    match apply(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("medlink passwd: {e}");
            ExitCode::from(2)
        }
    }
}

fn apply(args: PasswdArgs) -> Result<(), String> {
    let mut file = if args.file.exists() {
        CredentialsFile::load(&args.file)?
    } else if matches!(args.action, Action::Add { .. }) {
        // Only `add` may start a file; listing or changing one that is not there is a
        // mistaken path, not an empty file.
        CredentialsFile::default()
    } else {
        return Err(format!(
            "{}: no such credentials file (medlink passwd --file {} add ... creates one)",
            args.file.display(),
            args.file.display()
        ));
    };
    match args.action {
        Action::List => {
            for r in &file.identities {
                let login = if r.password_hash.is_some() {
                    "password"
                } else {
                    "certificate only"
                };
                println!("{}\t{}\t{login}", r.name, r.role);
            }
            return Ok(());
        }
        Action::Add { name, role, secret } => {
            if !valid_name(&name) || !plain_name(&name) {
                return Err(format!(
                    "{name:?}: an identity name must be 1-128 characters of A-Z a-z 0-9 . _ - @, not starting with '$' (reserved for the node) and without spaces; look-alike letters from other scripts are refused so that two identities cannot pass for one another"
                ));
            }
            if role == Role::Node && !valid_node_id(&name) {
                return Err(format!(
                    "'{name}': a node identity must be its dotted node id (e.g. js.nj.gulou)"
                ));
            }
            let hash = secret_hash(&secret, role)?;
            let replaced = file.upsert(&name, role, hash);
            save(&file, &args.file)?;
            eprintln!(
                "{} {name} ({role}) in {}",
                if replaced { "replaced" } else { "added" },
                args.file.display()
            );
        }
        Action::Rotate { name, secret } => {
            let role = file
                .identities
                .iter()
                .find(|r| r.name == name)
                .map(|r| r.role)
                .ok_or_else(|| format!("'{name}' is not in {}", args.file.display()))?;
            let hash = secret_hash(&secret, role)?;
            file.upsert(&name, role, hash);
            save(&file, &args.file)?;
            eprintln!("rotated {name} in {}", args.file.display());
        }
        Action::Remove { name } => {
            if !file.remove(&name) {
                return Err(format!("'{name}' is not in {}", args.file.display()));
            }
            save(&file, &args.file)?;
            eprintln!("removed {name} from {}", args.file.display());
        }
    }
    Ok(())
}

fn save(file: &CredentialsFile, path: &std::path::Path) -> Result<(), String> {
    file.save(path)
        .map_err(|e| format!("{}: {e}", path.display()))
}

fn secret_hash(secret: &Secret, role: Role) -> Result<Option<String>, String> {
    if secret.no_password {
        if role != Role::Node {
            return Err("--no-password: only nodes may log in by certificate alone".into());
        }
        return Ok(None);
    }
    let password = if secret.generate {
        let pw: String = rand::thread_rng()
            .sample_iter(rand::distributions::Alphanumeric)
            .take(24)
            .map(char::from)
            .collect();
        // stdout, so scripts can capture it; shown once, never stored.
        println!("{pw}");
        pw
    } else {
        let stdin = std::io::stdin();
        if stdin.is_terminal() {
            eprint!("password (input is visible; prefer piping it): ");
        }
        let mut line = String::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| format!("--password-stdin: {e}"))?;
        line.trim_end_matches(['\n', '\r']).to_string()
    };
    if password.len() < 8 {
        return Err("password: must be at least 8 characters".into());
    }
    Ok(Some(hash_password(&password)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_names_are_plain_ascii_without_the_reserved_prefix() {
        for ok in ["clinic-t3", "hosp_nj", "js.nj.gulou", "dr.wang@city"] {
            assert!(plain_name(ok), "{ok}");
        }
        for bad in ["$medlink", "bob ", " bob", "b\u{43e}b", "a b", "x\ty"] {
            assert!(!plain_name(bad), "{bad:?}");
        }
    }
}
