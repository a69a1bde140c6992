//! Who may connect: identities, their roles, and the credentials file that lists them.
//!
//! An identity is the authenticated name of a connection (the MQTT username, or the common
//! name of a verified client certificate). It is what the node stamps as `from` on every
//! command, so it must never contain MQTT topic metacharacters.
//!
//! Passwords are stored only as argon2id hashes (PHC strings) in a credentials file managed by
//! `medlink passwd`; nothing in a node's configuration holds a password in clear text.

use std::collections::HashMap;
use std::io::Write;
use std::path::Path;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use serde::{Deserialize, Serialize};

/// What an identity is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An application (clinic, hospital system): sends commands, receives its inbox.
    Client,
    /// A child node dialling this node as its parent.
    Node,
    /// Read-only operator: may subscribe to everything under `org/#`, publish nothing.
    Admin,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Client => "client",
            Role::Node => "node",
            Role::Admin => "admin",
        })
    }
}

/// An authenticated connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Name: client name, or the child node's dotted id.
    pub name: String,
    /// Role deciding the ACL.
    pub role: Role,
}

/// One identity in the credentials file.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct IdentityRecord {
    /// Client name, or a child node's dotted id.
    pub name: String,
    /// `client`, `node` or `admin`.
    pub role: Role,
    /// argon2id PHC string. Absent: the identity can log in only with a client certificate
    /// whose common name is `name` (for child nodes on mutual TLS).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_hash: Option<String>,
}

/// The credentials file: `[[identity]]` tables of name, role and password hash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsFile {
    /// The identities, in file order.
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentityRecord>,
}

const FILE_HEADER: &str =
    "# medlink credentials: argon2id hashes, managed with `medlink passwd`.\n\
# Keep this file readable by the node's user only.\n\n";

impl CredentialsFile {
    /// Reads and validates a credentials file; errors name the file and the entry.
    pub fn load(path: &Path) -> Result<CredentialsFile, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| format!("{}: cannot read: {e}", path.display()))?;
        Self::parse(&text).map_err(|e| format!("{}: {e}", path.display()))
    }

    /// Parses and validates the text of a credentials file.
    pub fn parse(text: &str) -> Result<CredentialsFile, String> {
        let file: CredentialsFile =
            toml::from_str(text).map_err(|e| e.to_string().trim().to_string())?;
        let mut seen = std::collections::HashSet::new();
        for (i, r) in file.identities.iter().enumerate() {
            if !valid_name(&r.name) {
                return Err(format!(
                    "identity[{i}].name: '{}' must be 1-128 characters without + # / or control characters",
                    r.name
                ));
            }
            if !seen.insert(r.name.as_str()) {
                return Err(format!("identity[{i}].name: '{}' is listed twice", r.name));
            }
            match &r.password_hash {
                Some(h) => {
                    let parsed = PasswordHash::new(h).map_err(|e| {
                        format!("identity[{i}].password_hash: not a PHC hash string ({e})")
                    })?;
                    if parsed.algorithm.as_str() != "argon2id" {
                        return Err(format!(
                            "identity[{i}].password_hash: algorithm '{}' is not argon2id",
                            parsed.algorithm
                        ));
                    }
                }
                None if r.role != Role::Node => {
                    return Err(format!(
                        "identity[{i}].password_hash: required for a {} (only nodes may log in by certificate alone)",
                        r.role
                    ))
                }
                None => {}
            }
        }
        Ok(file)
    }

    /// Writes the file atomically (temporary file, fsync, rename) with mode 0600. A file that
    /// is replaced keeps its owner and group: root running `medlink passwd` on a service's
    /// credentials leaves them readable by the service user.
    pub fn save(&self, path: &Path) -> std::io::Result<()> {
        let body = toml::to_string(self).map_err(std::io::Error::other)?;
        let dir = path.parent().filter(|p| !p.as_os_str().is_empty());
        let tmp = path.with_extension("tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp)?;
            #[cfg(unix)]
            if let Ok(old) = std::fs::metadata(path) {
                use std::os::unix::fs::MetadataExt;
                // Only root may give a file away; anyone else writes their own file anyway.
                let _ = std::os::unix::fs::fchown(&f, Some(old.uid()), Some(old.gid()));
            }
            f.write_all(FILE_HEADER.as_bytes())?;
            f.write_all(body.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = dir {
            // Make the rename itself durable.
            if let Ok(d) = std::fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    }

    /// Adds `name` or replaces its role and hash; returns whether it existed before.
    pub fn upsert(&mut self, name: &str, role: Role, password_hash: Option<String>) -> bool {
        let record = IdentityRecord {
            name: name.to_string(),
            role,
            password_hash,
        };
        match self.identities.iter_mut().find(|r| r.name == name) {
            Some(r) => {
                *r = record;
                true
            }
            None => {
                self.identities.push(record);
                false
            }
        }
    }

    /// Removes `name`; returns whether it was there.
    pub fn remove(&mut self, name: &str) -> bool {
        let before = self.identities.len();
        self.identities.retain(|r| r.name != name);
        self.identities.len() != before
    }
}

/// Hashes a password with argon2id (OWASP parameters: 19 MiB, 2 passes, 1 lane) and a random
/// salt, as a PHC string.
pub fn hash_password(password: &str) -> String {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters and a generated salt cannot fail")
        .to_string()
}

/// Checks `password` against a PHC hash string; any malformed hash is a mismatch.
pub fn verify_password(hash: &str, password: &[u8]) -> bool {
    match PasswordHash::new(hash) {
        Ok(parsed) => Argon2::default().verify_password(password, &parsed).is_ok(),
        Err(_) => false,
    }
}

#[derive(Clone)]
struct Entry {
    password_hash: Option<String>,
    role: Role,
}

/// The table of known identities, as loaded from the credentials file.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: HashMap<String, Entry>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: hashes never reach a log line.
        f.debug_map()
            .entries(self.entries.iter().map(|(n, e)| (n, e.role)))
            .finish()
    }
}

impl From<&CredentialsFile> for Credentials {
    fn from(file: &CredentialsFile) -> Self {
        let entries = file
            .identities
            .iter()
            .map(|r| {
                (
                    r.name.clone(),
                    Entry {
                        password_hash: r.password_hash.clone(),
                        role: r.role,
                    },
                )
            })
            .collect();
        Credentials { entries }
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// No username/password, unknown user or wrong password.
    BadCredentials,
    /// The name contains characters that would break topic-based identity.
    InvalidName,
    /// Too many recent attempts on this identity or from this address; not checked.
    Throttled,
}

impl Credentials {
    /// The role of a known identity.
    pub fn role(&self, name: &str) -> Option<Role> {
        self.entries.get(name).map(|e| e.role)
    }

    /// Names of all identities with `role`.
    pub fn names_with_role(&self, role: Role) -> impl Iterator<Item = &str> {
        self.entries
            .iter()
            .filter(move |(_, e)| e.role == role)
            .map(|(n, _)| n.as_str())
    }

    /// The stored hash of `name`, if it has one.
    pub fn password_hash(&self, name: &str) -> Option<&str> {
        self.entries
            .get(name)
            .and_then(|e| e.password_hash.as_deref())
    }

    /// Number of identities.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no identity is known.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// The names new identities get (`medlink passwd add`, and a device token's `sub`): plain
/// ASCII (`A-Z a-z 0-9 . _ - @`), not starting with `$` (the node's own sender, `$medlink`),
/// so a name reads the same in a log, a topic and an operator's terminal, and a look-alike
/// from another script cannot pass for an existing identity. (Logins accept any name a
/// credentials file holds; this keeps new ones unambiguous.)
pub fn plain_name(name: &str) -> bool {
    !name.starts_with('$')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-' | b'@'))
}

/// Identity and client-id names: non-empty, no MQTT wildcards, no topic separator.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && !name
            .chars()
            .any(|c| matches!(c, '+' | '#' | '/' | '\0') || c.is_control())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hashes_verify_and_files_validate() {
        let h = hash_password("pw");
        assert!(h.starts_with("$argon2id$"), "{h}");
        assert!(verify_password(&h, b"pw"));
        assert!(!verify_password(&h, b"px"));
        assert!(!verify_password("garbage", b"pw"));

        let mut f = CredentialsFile::default();
        assert!(!f.upsert("clinic", Role::Client, Some(h.clone())));
        assert!(f.upsert("clinic", Role::Client, Some(h)));
        f.upsert("js.a", Role::Node, None);
        let text = toml::to_string(&f).unwrap();
        assert_eq!(CredentialsFile::parse(&text).unwrap(), f);
        assert!(f.remove("js.a") && !f.remove("js.a"));

        let e = CredentialsFile::parse("[[identity]]\nname = \"a/b\"\nrole = \"node\"\n");
        assert!(e.unwrap_err().starts_with("identity[0].name"));
        let e = CredentialsFile::parse("[[identity]]\nname = \"c\"\nrole = \"client\"\n");
        assert!(e.unwrap_err().starts_with("identity[0].password_hash"));
        let e = CredentialsFile::parse(
            "[[identity]]\nname = \"c\"\nrole = \"client\"\npassword_hash = \"plain\"\n",
        );
        assert!(e.unwrap_err().starts_with("identity[0].password_hash"));
        let e = CredentialsFile::parse("[[identity]]\nname = \"c\"\nrole = \"client\"\nx = 1\n");
        assert!(e.unwrap_err().contains('x'));
    }

    #[test]
    fn names_refuse_topic_metacharacters() {
        assert!(valid_name("clinic-t3"));
        for bad in ["", "a/b", "a+", "#", "a\nb"] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[cfg(unix)]
    #[test]
    fn a_replaced_file_keeps_its_owner() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("credentials");
        let mut f = CredentialsFile::default();
        f.upsert("clinic", Role::Client, Some(hash_password("pw")));
        f.save(&path).unwrap();
        // Give it to another user, as a package gives it to the service's user. Only root
        // can; the tests run as root here and in CI.
        let me = std::fs::metadata(&path).unwrap().uid();
        assert_eq!(me, 0, "this test needs root (to give the file away)");
        std::os::unix::fs::chown(&path, Some(65534), Some(65534)).unwrap();
        f.upsert("lab", Role::Client, Some(hash_password("pw2")));
        f.save(&path).unwrap();
        let m = std::fs::metadata(&path).unwrap();
        assert_eq!((m.uid(), m.gid()), (65534, 65534));
        assert_eq!(m.mode() & 0o777, 0o600);
    }
}
