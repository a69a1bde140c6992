//! Who may connect: identities, their roles and their credentials.
//!
//! An identity is the authenticated name of a connection (the MQTT username). It is what the
//! node stamps as `from` on every command, so it must never contain MQTT topic metacharacters.

use std::collections::HashMap;

use subtle::ConstantTimeEq;

/// What an identity is allowed to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An application (clinic, hospital system): sends commands, receives its inbox.
    Client,
    /// A child node dialling this node as its parent.
    Node,
    /// Read-only operator: may subscribe to everything under `org/#`, publish nothing.
    Admin,
}

/// An authenticated connection's identity.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Name: client name, or the child node's dotted id.
    pub name: String,
    /// Role deciding the ACL.
    pub role: Role,
}

#[derive(Clone)]
struct Entry {
    password: String,
    role: Role,
}

/// The table of known identities.
#[derive(Clone, Default)]
pub struct Credentials {
    entries: HashMap<String, Entry>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Names and roles only: passwords never reach a log line.
        f.debug_map()
            .entries(self.entries.iter().map(|(n, e)| (n, e.role)))
            .finish()
    }
}

/// Why a login was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LoginError {
    /// No username/password, unknown user or wrong password.
    BadCredentials,
    /// The name contains characters that would break topic-based identity.
    InvalidName,
}

impl Credentials {
    /// Adds an identity.
    pub fn insert(&mut self, name: &str, password: &str, role: Role) {
        self.entries.insert(
            name.to_string(),
            Entry {
                password: password.to_string(),
                role,
            },
        );
    }

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

    /// Checks a login (constant-time password comparison).
    pub fn authenticate(&self, username: &str, password: &str) -> Result<Identity, LoginError> {
        if !valid_name(username) {
            return Err(LoginError::InvalidName);
        }
        let entry = self
            .entries
            .get(username)
            .ok_or(LoginError::BadCredentials)?;
        if bool::from(entry.password.as_bytes().ct_eq(password.as_bytes())) {
            Ok(Identity {
                name: username.to_string(),
                role: entry.role,
            })
        } else {
            Err(LoginError::BadCredentials)
        }
    }
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
    fn refuses_wildcards_and_wrong_passwords() {
        let mut c = Credentials::default();
        c.insert("clinic", "pw", Role::Client);
        assert!(c.authenticate("clinic", "pw").is_ok());
        assert_eq!(
            c.authenticate("clinic", "px"),
            Err(LoginError::BadCredentials)
        );
        assert_eq!(c.authenticate("a/b", "pw"), Err(LoginError::InvalidName));
        assert_eq!(c.authenticate("a+", "pw"), Err(LoginError::InvalidName));
        assert_eq!(
            c.authenticate("nobody", "pw"),
            Err(LoginError::BadCredentials)
        );
    }
}
