//! Device tokens: logins by a signed JSON Web Token instead of an argon2 password.
//!
//! A hospital serves tens of thousands of patients' phones and browsers. Each cannot hold an
//! argon2 password in the credentials file: a login costs 30-40 ms of CPU, so after a restart
//! readmitting 19,000 devices would take minutes. Instead the hospital's backend signs short-lived
//! tokens, and the node checks the signature against keys in its config (`[[token_key]]`):
//! microseconds per login, no line per patient anywhere.
//!
//! What a key may vouch for is bounded by the node's config, never by the token:
//!
//! - `subjects`: the names its tokens may log in as (`pt-*`: any name starting with `pt-`);
//! - `roles`: the roles its tokens may claim (`client` unless the key lists more), so a
//!   leaked patient-token key can never make a node or an admin.
//!
//! A token is refused when its `kid` is unknown (or absent while several keys exist), its
//! signature does not verify, its `alg` is not the key's (`none` never is), it expired (more
//! than [`LEEWAY_S`] ago), it is not valid yet (`nbf`), its `sub` is not a valid identity
//! name or lies outside the key's `subjects`, its `role` is not one the key grants, or its
//! `node` claim names another node. There is no revocation list: tokens should be short-lived,
//! and removing (or rotating) a key from the config refuses all its tokens within a second
//! (the config is re-read when it changes).
//!
//! The keys in force are a [`KeySet`] behind [`TokenKeys`], shared by the MQTT front-end, the
//! HTTP API and routing (a command to an unknown `pt-12345` waits for that patient when a key
//! may vouch for the name). A reload replaces the whole set at once.

use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, RwLock};

use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{DecodingKey, Validation};
use serde::Deserialize;

pub use medlink_wire::token::{mint_hs256, now_s, Algorithm, Claims, Hs256Minter};

use crate::identity::{plain_name, valid_name, Role};

/// Clock skew allowed on `exp` and `nbf`, seconds: a phone whose clock is a little off still
/// logs in, and a token is honoured at most this long past its expiry.
pub const LEEWAY_S: u64 = 30;

/// Shortest HS256 secret accepted, bytes: RFC 7518 §3.2 asks for at least the hash size
/// (256 bits), and anything shorter could be guessed offline from one captured token.
pub const MIN_SECRET_LEN: usize = 32;

/// The signature algorithm of a key, as written in the config (`alg = "HS256"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
pub enum KeyAlg {
    /// HMAC with SHA-256 over a shared secret (the secret signs and verifies).
    HS256,
    /// ECDSA on P-256 with SHA-256; the node holds only the public key.
    ES256,
    /// Ed25519; the node holds only the public key.
    EdDSA,
}

impl KeyAlg {
    fn algorithm(self) -> Algorithm {
        match self {
            KeyAlg::HS256 => Algorithm::HS256,
            KeyAlg::ES256 => Algorithm::ES256,
            KeyAlg::EdDSA => Algorithm::EdDSA,
        }
    }

    /// The JOSE name (`alg` header value).
    pub fn name(self) -> &'static str {
        match self {
            KeyAlg::HS256 => "HS256",
            KeyAlg::ES256 => "ES256",
            KeyAlg::EdDSA => "EdDSA",
        }
    }
}

/// The names a key may vouch for: one name, or every name with a prefix (`pt-*`; `*` alone
/// is every name).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subjects {
    /// Exactly this name.
    Exact(String),
    /// Every name starting with this (possibly empty) prefix.
    Prefix(String),
}

impl FromStr for Subjects {
    type Err = String;

    /// `name` or `prefix*`: one `*`, only at the end; the rest follows the identity name rules.
    fn from_str(s: &str) -> Result<Subjects, String> {
        let (body, prefix) = match s.strip_suffix('*') {
            Some(p) => (p, true),
            None => (s, false),
        };
        if body.contains('*') {
            return Err(format!(
                "'{s}': a '*' may only stand once, at the end (a prefix pattern such as 'pt-*')"
            ));
        }
        if prefix {
            // The prefix itself need not be a whole name (it may be empty), but it must not
            // hold what no name may.
            if body.len() > 127 || (!body.is_empty() && !valid_name(body)) {
                return Err(format!(
                    "'{s}': the prefix may not contain + # / or control characters"
                ));
            }
            Ok(Subjects::Prefix(body.to_string()))
        } else if valid_name(body) {
            Ok(Subjects::Exact(body.to_string()))
        } else {
            Err(format!(
                "'{s}' must be a name (1-128 characters without + # / or control characters) or a prefix followed by '*'"
            ))
        }
    }
}

impl std::fmt::Display for Subjects {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Subjects::Exact(n) => f.write_str(n),
            Subjects::Prefix(p) => write!(f, "{p}*"),
        }
    }
}

impl Subjects {
    /// Whether `name` is one of these subjects.
    pub fn matches(&self, name: &str) -> bool {
        match self {
            Subjects::Exact(n) => n == name,
            Subjects::Prefix(p) => name.starts_with(p.as_str()),
        }
    }
}

/// One verification key from the config.
pub struct TokenKey {
    kid: String,
    alg: KeyAlg,
    key: DecodingKey,
    validation: Validation,
    subjects: Subjects,
    roles: Vec<Role>,
}

impl std::fmt::Debug for TokenKey {
    /// Everything but the key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenKey")
            .field("kid", &self.kid)
            .field("alg", &self.alg)
            .field("subjects", &self.subjects)
            .field("roles", &self.roles)
            .finish_non_exhaustive()
    }
}

impl TokenKey {
    /// An HS256 key: `secret` both signs (at the issuer) and verifies (here). At least
    /// [`MIN_SECRET_LEN`] bytes.
    pub fn hs256(
        kid: &str,
        secret: &[u8],
        subjects: Subjects,
        roles: Vec<Role>,
    ) -> Result<TokenKey, String> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(format!(
                "the secret has {} bytes; HS256 needs at least {MIN_SECRET_LEN} (e.g. `head -c 48 /dev/urandom | base64`)",
                secret.len()
            ));
        }
        let key = DecodingKey::from_secret(secret).map_err(|e| format!("unusable secret: {e}"))?;
        Self::build(kid, KeyAlg::HS256, key, subjects, roles)
    }

    /// An ES256 or EdDSA key from a PEM public key (`-----BEGIN PUBLIC KEY-----`). A private
    /// key is refused: a node only verifies, and a signing key on every node would let any
    /// node's operator mint tokens.
    pub fn public_pem(
        kid: &str,
        alg: KeyAlg,
        pem: &[u8],
        subjects: Subjects,
        roles: Vec<Role>,
    ) -> Result<TokenKey, String> {
        if pem.windows(11).any(|w| w == b"PRIVATE KEY") {
            return Err(
                "holds a private key; give the public key only (`openssl pkey -pubout`): a node only verifies"
                    .into(),
            );
        }
        let key = match alg {
            KeyAlg::ES256 => DecodingKey::from_ec_pem(pem),
            KeyAlg::EdDSA => DecodingKey::from_ed_pem(pem),
            KeyAlg::HS256 => return Err("HS256 takes a secret_file, not a public key".into()),
        }
        .map_err(|e| format!("not a PEM {} public key ({e})", alg.name()))?;
        Self::build(kid, alg, key, subjects, roles)
    }

    fn build(
        kid: &str,
        alg: KeyAlg,
        key: DecodingKey,
        subjects: Subjects,
        roles: Vec<Role>,
    ) -> Result<TokenKey, String> {
        if kid.is_empty() || kid.len() > 128 || kid.chars().any(char::is_control) {
            return Err(format!(
                "kid '{}' must be 1-128 characters without control characters",
                kid.escape_debug()
            ));
        }
        if roles.is_empty() {
            return Err("roles: give at least one role (e.g. [\"client\"])".into());
        }
        let mut validation = Validation::new(alg.algorithm());
        validation.leeway = LEEWAY_S;
        validation.validate_exp = true;
        validation.validate_nbf = true;
        // An audience is not part of medlink's contract; a backend may set one for its own use.
        validation.validate_aud = false;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(TokenKey {
            kid: kid.to_string(),
            alg,
            key,
            validation,
            subjects,
            roles,
        })
    }

    /// The key id (`kid` header of its tokens).
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The names it may vouch for.
    pub fn subjects(&self) -> &Subjects {
        &self.subjects
    }

    /// The roles its tokens may claim.
    pub fn roles(&self) -> &[Role] {
        &self.roles
    }
}

/// Why a token was refused. The variant is the `result` label of
/// `medlink_token_logins_total`; the text says the cause for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// `exp` lies more than [`LEEWAY_S`] in the past.
    Expired,
    /// The signature does not verify with the key, or the token's `alg` is not the key's
    /// (including `none` and algorithms medlink does not accept).
    BadSignature(String),
    /// No configured key has the token's `kid` (or it has none while several keys exist).
    UnknownKid(String),
    /// Signed correctly, but what it claims is not allowed here (or it is malformed).
    Refused(String),
}

impl Refusal {
    /// The metric label.
    pub fn label(&self) -> &'static str {
        match self {
            Refusal::Expired => "expired",
            Refusal::BadSignature(_) => "bad_signature",
            Refusal::UnknownKid(_) => "unknown_kid",
            Refusal::Refused(_) => "refused",
        }
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refusal::Expired => write!(f, "expired (more than {LEEWAY_S} s past exp)"),
            Refusal::BadSignature(why) | Refusal::UnknownKid(why) | Refusal::Refused(why) => {
                f.write_str(why)
            }
        }
    }
}

/// A token that verified: who it logs in as, with which key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Verified {
    /// The identity (`sub`).
    pub name: String,
    /// The role (`role`, default `client`).
    pub role: Role,
    /// The key that vouched for it.
    pub kid: String,
}

/// The header fields a token is recognised and routed to its key by.
#[derive(Deserialize)]
struct RawHeader {
    alg: String,
    #[serde(default)]
    kid: Option<String>,
}

/// Reads the header of something shaped like a JWT: three base64url segments, the first
/// decoding to a JSON object with a string `alg`. `None` for anything else.
fn header_of(token: &[u8]) -> Option<RawHeader> {
    // Bounded: a token is a few hundred bytes; an MQTT password can be 64 KiB.
    if token.len() > 16 * 1024 {
        return None;
    }
    let text = std::str::from_utf8(token).ok()?;
    let mut parts = text.split('.');
    let (h, p, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() || h.is_empty() || p.is_empty() {
        return None;
    }
    let b64url = |x: &str| {
        x.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
    };
    if !(b64url(h) && b64url(p) && b64url(s)) {
        return None;
    }
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(h)
        .ok()?;
    serde_json::from_slice(&json).ok()
}

/// Whether `password` is shaped like a JWT (see `header_of`); decides whether a login with
/// a password takes the token path (refused outright when no keys are configured).
pub fn looks_like_token(password: &[u8]) -> bool {
    header_of(password).is_some()
}

/// The `sub` a token claims, unverified: only for naming a refused attempt in the throttle
/// and the log, never for deciding anything.
pub fn unverified_subject(token: &[u8]) -> Option<String> {
    let text = std::str::from_utf8(token).ok()?;
    let payload = text.split('.').nth(1)?;
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload)
        .ok()?;
    #[derive(Deserialize)]
    struct Sub {
        sub: String,
    }
    let sub = serde_json::from_slice::<Sub>(&json).ok()?.sub;
    valid_name(&sub).then_some(sub)
}

/// The token keys in force at one moment.
#[derive(Default)]
pub struct KeySet {
    keys: Vec<TokenKey>,
}

impl std::fmt::Debug for KeySet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.keys.iter()).finish()
    }
}

impl KeySet {
    /// A set of `keys`; two keys with one `kid` are refused (naming the second's index).
    pub fn new(keys: Vec<TokenKey>) -> Result<KeySet, (usize, String)> {
        for (i, k) in keys.iter().enumerate() {
            if keys[..i].iter().any(|o| o.kid == k.kid) {
                return Err((i, format!("kid '{}' is used by another key", k.kid)));
            }
        }
        Ok(KeySet { keys })
    }

    /// Whether no key is configured (then no login takes the token path).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// The keys.
    pub fn keys(&self) -> &[TokenKey] {
        &self.keys
    }

    /// The `subjects` of every key that grants the `client` role: the names a command may
    /// wait for at this node without a line in the credentials file.
    pub fn client_subjects(&self) -> Vec<Subjects> {
        self.keys
            .iter()
            .filter(|k| k.roles.contains(&Role::Client))
            .map(|k| k.subjects.clone())
            .collect()
    }

    /// Verifies `token` for a login at node `node_id`.
    pub fn verify(&self, token: &[u8], node_id: &str) -> Result<Verified, Refusal> {
        let header =
            header_of(token).ok_or_else(|| Refusal::Refused("not a JSON Web Token".into()))?;
        let alg = match header.alg.as_str() {
            "HS256" => KeyAlg::HS256,
            "ES256" => KeyAlg::ES256,
            "EdDSA" => KeyAlg::EdDSA,
            other => {
                return Err(Refusal::BadSignature(format!(
                    "alg '{}' is not accepted (HS256, ES256 or EdDSA; never none)",
                    other.escape_debug()
                )))
            }
        };
        let key = match header.kid.as_deref() {
            Some(kid) => self.keys.iter().find(|k| k.kid == kid).ok_or_else(|| {
                Refusal::UnknownKid(format!("no token key has kid '{}'", kid.escape_debug()))
            })?,
            None => match self.keys.as_slice() {
                [only] => only,
                [] => return Err(Refusal::UnknownKid("no token keys are configured".into())),
                _ => {
                    return Err(Refusal::UnknownKid(
                        "the token has no kid and several keys are configured".into(),
                    ))
                }
            },
        };
        if alg != key.alg {
            return Err(Refusal::BadSignature(format!(
                "alg {} does not match key '{}' ({})",
                alg.name(),
                key.kid,
                key.alg.name()
            )));
        }
        let claims = jsonwebtoken::decode::<Claims>(token, &key.key, &key.validation)
            .map_err(|e| classify(e.kind()))?
            .claims;
        let refused = |why: String| Err(Refusal::Refused(why));
        // The rule for new identities (`medlink passwd add`): a token creates one on the spot.
        if !valid_name(&claims.sub) || !plain_name(&claims.sub) {
            return refused(format!(
                "sub '{}' is not a valid identity name (A-Z a-z 0-9 . _ - @, not starting with $)",
                claims.sub.escape_debug()
            ));
        }
        if !key.subjects.matches(&claims.sub) {
            return refused(format!(
                "sub '{}' is outside the subjects of key '{}' ({})",
                claims.sub, key.kid, key.subjects
            ));
        }
        let role = match claims.role.as_deref() {
            None | Some("client") => Role::Client,
            Some("node") => Role::Node,
            Some("admin") => Role::Admin,
            Some(other) => {
                return refused(format!(
                    "role '{}' is not client, node or admin",
                    other.escape_debug()
                ))
            }
        };
        if !key.roles.contains(&role) {
            return refused(format!("key '{}' does not grant the role {role}", key.kid));
        }
        if let Some(node) = claims.node.as_deref() {
            if node != node_id {
                return refused(format!(
                    "the token is for node '{}', this is '{node_id}'",
                    node.escape_debug()
                ));
            }
        }
        Ok(Verified {
            name: claims.sub,
            role,
            kid: key.kid.clone(),
        })
    }
}

/// Maps the library's error to a refusal. Only reached after the header was read and a key
/// chosen; the signature is checked before any claim, so a forged token is `bad_signature`
/// whatever it claims.
fn classify(kind: &ErrorKind) -> Refusal {
    match kind {
        ErrorKind::ExpiredSignature => Refusal::Expired,
        ErrorKind::InvalidSignature
        | ErrorKind::InvalidAlgorithm
        | ErrorKind::InvalidEcdsaKey
        | ErrorKind::InvalidEddsaKey
        | ErrorKind::InvalidAlgorithmName
        | ErrorKind::UnsupportedAlgorithm => {
            Refusal::BadSignature("the signature does not verify".into())
        }
        ErrorKind::ImmatureSignature => {
            Refusal::Refused(format!("not valid yet (nbf more than {LEEWAY_S} s ahead)"))
        }
        ErrorKind::MissingRequiredClaim(c) => Refusal::Refused(format!("claim '{c}' is missing")),
        ErrorKind::Json(e) => Refusal::Refused(format!("claims unreadable: {e}")),
        other => Refusal::Refused(format!("malformed token ({other:?})")),
    }
}

/// The token keys of a node, shared by everything that logs in or routes; replaced whole when
/// the config changes. Reading takes an uncontended read lock and clones an `Arc`; a reload
/// takes the write lock for the swap only.
#[derive(Debug)]
pub struct TokenKeys {
    node_id: String,
    current: RwLock<Arc<KeySet>>,
    generation: AtomicU64,
}

impl TokenKeys {
    /// The keys of node `node_id` (tokens with another `node` claim are refused).
    pub fn new(node_id: &str, keys: KeySet) -> TokenKeys {
        TokenKeys {
            node_id: node_id.to_string(),
            current: RwLock::new(Arc::new(keys)),
            generation: AtomicU64::new(0),
        }
    }

    /// No keys: every login takes the password path.
    pub fn none() -> TokenKeys {
        Self::new("", KeySet::default())
    }

    /// This node's id.
    pub fn node_id(&self) -> &str {
        &self.node_id
    }

    /// The keys in force now.
    pub fn current(&self) -> Arc<KeySet> {
        self.current
            .read()
            .expect("token keys lock is never held across a panic")
            .clone()
    }

    /// Puts `keys` in force; logins from now on use them.
    pub fn replace(&self, keys: KeySet) {
        *self
            .current
            .write()
            .expect("token keys lock is never held across a panic") = Arc::new(keys);
        self.generation.fetch_add(1, Ordering::AcqRel);
    }

    /// Increases with every [`TokenKeys::replace`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests;
