//! (feature `token`) Device tokens: the claims a node reads from a signed JSON Web Token, and
//! minting one with a shared secret (HS256).
//!
//! A hospital's own backend issues tokens to patients' phones and browsers; a node verifies
//! them (`medlink-broker`'s `token` module) against the keys in its config. This is the one
//! definition of what a token says, used by both sides: the node when it verifies, and
//! `medlink token`, the tests and `medlink-bench` when they mint.
//!
//! The claims:
//!
//! | claim | required | meaning |
//! |---|---|---|
//! | `sub` | yes | the identity: what the node stamps as `from` and whose inbox it may read |
//! | `exp` | yes | expiry, seconds since the Unix epoch (an integer NumericDate) |
//! | `nbf` | no | not before, seconds since the Unix epoch |
//! | `node` | no | the only node id where the token is valid |
//! | `role` | no | `client` (default), `node` or `admin` |
//!
//! Other claims (`iat`, `iss`, `jti`, …) are allowed and ignored, so a backend that stamps
//! them needs no change.

use serde::{Deserialize, Serialize};

pub use jsonwebtoken::errors::Error as TokenError;
pub use jsonwebtoken::Algorithm;

/// What a device token says. Unknown claims are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The identity this token logs in as.
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    /// Not valid before this time, seconds since the Unix epoch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nbf: Option<u64>,
    /// The node where the token is valid; absent: any node that trusts the key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// `client` (the default when absent), `node` or `admin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
}

impl Claims {
    /// Claims for `sub`, valid from now for `ttl_s` seconds, for any node, role `client`.
    pub fn new(sub: impl Into<String>, ttl_s: u64) -> Claims {
        Claims {
            sub: sub.into(),
            exp: now_s().saturating_add(ttl_s),
            nbf: None,
            node: None,
            role: None,
        }
    }
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// An HS256 signer for one key: built once, so minting many tokens (a bench minting one per
/// simulated phone) does not set the key up again each time.
pub struct Hs256Minter {
    kid: String,
    key: jsonwebtoken::EncodingKey,
}

impl std::fmt::Debug for Hs256Minter {
    /// Names the key id only: the secret never reaches a log line.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hs256Minter")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl Hs256Minter {
    /// A minter signing with `secret` under key id `kid`.
    pub fn new(kid: impl Into<String>, secret: &[u8]) -> Result<Hs256Minter, TokenError> {
        Ok(Hs256Minter {
            kid: kid.into(),
            key: jsonwebtoken::EncodingKey::from_secret(secret)?,
        })
    }

    /// The signed token (`header.payload.signature`, base64url) carrying `claims`.
    pub fn mint(&self, claims: &Claims) -> Result<String, TokenError> {
        let mut header = jsonwebtoken::Header::new(Algorithm::HS256);
        header.kid = Some(self.kid.clone());
        jsonwebtoken::encode(&header, claims, &self.key)
    }
}

/// Mints one HS256 token signed with `secret` under key id `kid`.
pub fn mint_hs256(secret: &[u8], kid: &str, claims: &Claims) -> Result<String, TokenError> {
    Hs256Minter::new(kid, secret)?.mint(claims)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn minted_tokens_carry_the_kid_and_the_claims() {
        let mut claims = Claims::new("pt-1", 60);
        claims.node = Some("js.nj".into());
        let token = mint_hs256(b"0123456789abcdef0123456789abcdef", "k1", &claims).unwrap();
        assert_eq!(token.split('.').count(), 3);
        let header = jsonwebtoken::decode_header(&token).unwrap();
        assert_eq!(header.kid.as_deref(), Some("k1"));
        assert_eq!(header.alg, Algorithm::HS256);
        let mut v = jsonwebtoken::Validation::new(Algorithm::HS256);
        v.validate_aud = false;
        let key =
            jsonwebtoken::DecodingKey::from_secret(b"0123456789abcdef0123456789abcdef").unwrap();
        let back = jsonwebtoken::decode::<Claims>(&token, &key, &v).unwrap();
        assert_eq!(back.claims, claims);
        // Absent optional claims are not written at all (not `null`).
        let payload = token.split('.').nth(1).unwrap();
        assert!(!payload.is_empty());
        let json = serde_json::to_string(&Claims::new("a", 1)).unwrap();
        assert!(!json.contains("null") && !json.contains("role"), "{json}");
    }
}
