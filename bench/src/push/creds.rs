//! `medlink-bench push-creds`: the credentials file of the push bench's recipients.
//!
//! **A bench-only shortcut.** The node checks only that a hash is argon2id and reads its cost
//! parameters from the PHC string, so the bench writes *cheap* hashes (m = 8 KiB, t = 1,
//! p = 1): 19,000 identities at the OWASP cost `medlink passwd` uses (19 MiB, 2 passes) would
//! take about ten minutes to create and as long again to log in, which would measure argon2,
//! not push. Never use such hashes for real identities: the production path for 100,000
//! phones is device tokens, not one password hash per patient.

use std::fmt::Write as _;
use std::path::PathBuf;

use argon2::password_hash::{PasswordHasher, SaltString};
use argon2::{Algorithm, Argon2, Params, Version};

/// Options of `medlink-bench push-creds`.
#[derive(clap::Args, Debug, Clone)]
pub struct CredsArgs {
    /// The credentials file to write (replaced).
    #[arg(long)]
    pub out: PathBuf,
    /// Recipients: `<prefix>00001` … `<prefix><count>`, role `client` (0: none, for
    /// recipients that log in with device tokens).
    #[arg(long)]
    pub count: usize,
    /// Identity prefix of the recipients.
    #[arg(long, default_value = "pt-")]
    pub prefix: String,
    /// Password of every recipient.
    #[arg(long, default_value = "bench-push")]
    pub password: String,
    /// Further client identities as `name:password` (the sender), repeatable.
    #[arg(long = "client")]
    pub clients: Vec<String>,
}

/// The cheap argon2id hash of `password` (see the module docs for why it is cheap), with a
/// salt derived from `n` so that every identity's hash differs and a file is reproducible.
fn cheap_hash(password: &str, n: u64) -> Result<String, String> {
    let params = Params::new(8, 1, 1, None).map_err(|e| e.to_string())?;
    let argon = Argon2::new(Algorithm::Argon2id, Version::V0x13, params);
    let mut salt = [0u8; 16];
    salt[..8].copy_from_slice(&n.to_le_bytes());
    salt[8..].copy_from_slice(b"mlpushbn");
    let salt = SaltString::encode_b64(&salt).map_err(|e| e.to_string())?;
    argon
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| e.to_string())
}

/// Writes the file; returns how many identities it holds.
pub fn write(args: &CredsArgs) -> Result<usize, String> {
    let mut entries: Vec<(String, String)> = (0..args.count)
        .map(|i| (super::identity(&args.prefix, i), args.password.clone()))
        .collect();
    for c in &args.clients {
        let (name, pw) = c
            .split_once(':')
            .ok_or_else(|| format!("--client '{c}': expected name:password"))?;
        entries.push((name.to_string(), pw.to_string()));
    }
    let mut text = String::from(
        "# medlink-bench push: BENCH-ONLY credentials with cheap argon2id hashes (m=8 KiB, t=1,\n\
         # p=1), so that 19,000 identities can be created and logged in quickly. Never use such\n\
         # hashes for real identities; phones are meant to log in with device tokens.\n\n",
    );
    for (i, (name, pw)) in entries.iter().enumerate() {
        let hash = cheap_hash(pw, i as u64)?;
        let _ = writeln!(
            text,
            "[[identity]]\nname = \"{name}\"\nrole = \"client\"\npassword_hash = \"{hash}\"\n"
        );
    }
    std::fs::write(&args.out, text).map_err(|e| format!("{}: {e}", args.out.display()))?;
    Ok(entries.len())
}

#[cfg(test)]
mod tests {
    use super::*;
    use argon2::password_hash::{PasswordHash, PasswordVerifier};

    #[test]
    fn cheap_hashes_verify_with_the_parameters_they_carry() {
        let h = cheap_hash("pw", 7).unwrap();
        assert!(h.starts_with("$argon2id$v=19$m=8,t=1,p=1$"), "{h}");
        let parsed = PasswordHash::new(&h).unwrap();
        // The node verifies with `Argon2::default()`, which takes the cost from the string.
        assert!(Argon2::default().verify_password(b"pw", &parsed).is_ok());
        assert!(Argon2::default().verify_password(b"no", &parsed).is_err());
        assert_ne!(h, cheap_hash("pw", 8).unwrap(), "salts differ per identity");
    }
}
