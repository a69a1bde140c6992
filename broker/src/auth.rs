//! Deciding who a connection is: password logins against argon2id hashes, logins by verified
//! client certificate, the failed-login throttle, and reloading the credentials file.
//!
//! argon2id is deliberately expensive (about 19 MiB and tens of milliseconds per check), which
//! is what makes a stolen credentials file hard to crack, but also what would let a CONNECT
//! flood eat every core. So checks run on the blocking pool behind a small semaphore, and a
//! successful check is remembered as a keyed MAC of the password (never the password itself)
//! until the credentials file changes; a reconnecting clinic does not pay for argon2 again.
//!
//! The credentials file is re-read when it changes (checked at most once a second, on login),
//! so `medlink passwd` takes effect without restarting the node.
//!
//! Device tokens (`token.rs`) take another path: a password shaped like a JWT is checked
//! against the token keys on the spot, in microseconds, with neither argon2 nor its semaphore,
//! so a reconnect storm of thousands of phones is readmitted at once. A refused token counts
//! against the failed-login throttle like a wrong password; a valid one never waits on it.
//! Without keys such a password is refused at once, not checked as a password: phones whose
//! key was removed (or that dial a node without keys) must not queue behind argon2 and starve
//! the clinics' password logins. No real password has that shape (three base64url segments,
//! the first a JSON object with `alg`).

use std::collections::HashMap;
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::{Duration, Instant, SystemTime};

use blake2::digest::{FixedOutput, KeyInit, Update};
use blake2::Blake2sMac256;
use rand::RngCore;
use tokio::sync::Semaphore;
use tracing::{debug, info, warn};

use crate::identity::{
    hash_password, valid_name, verify_password, Credentials, CredentialsFile, Identity, LoginError,
};
use crate::metrics::{bump, BrokerMetrics};
use crate::throttle::{LoginThrottle, ThrottleSettings, Throttled};
use crate::token::{looks_like_token, unverified_subject, KeySet, Refusal, TokenKeys};

/// Where the identities come from.
#[derive(Debug, Clone)]
pub enum CredentialSource {
    /// A credentials file, re-read when it changes.
    File(PathBuf),
    /// A fixed table (tests, embedding).
    Fixed(Credentials),
}

struct Loaded {
    credentials: Arc<Credentials>,
    stamp: Option<(SystemTime, u64)>,
    checked_at: Instant,
}

/// How often the credentials file's modification time is looked at, at most.
const RELOAD_CHECK: Duration = Duration::from_secs(1);
/// argon2 checks running at once (each takes a core for tens of milliseconds).
const VERIFY_SLOTS: usize = 2;

/// Authenticates logins for one node.
pub struct Authenticator {
    source: CredentialSource,
    loaded: RwLock<Loaded>,
    generation: AtomicU64,
    /// Identity → keyed MAC of the password that last verified, for the current generation.
    verified: Mutex<HashMap<String, [u8; 32]>>,
    mac_key: [u8; 32],
    verify_slots: Semaphore,
    throttle: Mutex<LoginThrottle>,
    metrics: Arc<BrokerMetrics>,
    tokens: Arc<TokenKeys>,
}

/// Why a device token did not log in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TokenLoginError {
    /// Too many recent failures from this address or on this name; not checked.
    Throttled,
    /// Checked and refused.
    Refused(Refusal),
}

impl From<TokenLoginError> for LoginError {
    fn from(e: TokenLoginError) -> LoginError {
        match e {
            TokenLoginError::Throttled => LoginError::Throttled,
            TokenLoginError::Refused(_) => LoginError::BadCredentials,
        }
    }
}

impl std::fmt::Debug for Authenticator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authenticator")
            .field("source", &self.source)
            .finish_non_exhaustive()
    }
}

impl Authenticator {
    /// Loads the identities from `source`; a file that cannot be read or parsed is an error.
    pub fn new(
        source: CredentialSource,
        throttle: ThrottleSettings,
        metrics: Arc<BrokerMetrics>,
    ) -> Result<Authenticator, String> {
        let (credentials, stamp) = match &source {
            CredentialSource::File(path) => {
                let stamp = file_stamp(path);
                (Credentials::from(&CredentialsFile::load(path)?), stamp)
            }
            CredentialSource::Fixed(c) => (c.clone(), None),
        };
        let mut mac_key = [0u8; 32];
        rand::thread_rng().fill_bytes(&mut mac_key);
        Ok(Authenticator {
            source,
            loaded: RwLock::new(Loaded {
                credentials: Arc::new(credentials),
                stamp,
                checked_at: Instant::now(),
            }),
            generation: AtomicU64::new(0),
            verified: Mutex::new(HashMap::new()),
            mac_key,
            verify_slots: Semaphore::new(VERIFY_SLOTS),
            throttle: Mutex::new(LoginThrottle::new(throttle)),
            metrics,
            tokens: Arc::new(TokenKeys::none()),
        })
    }

    /// Accepts device tokens signed by `tokens` (shared with whatever reloads them).
    pub fn with_tokens(mut self, tokens: Arc<TokenKeys>) -> Authenticator {
        self.tokens = tokens;
        self
    }

    /// The token keys (routing asks them which names a command may wait for).
    pub fn tokens(&self) -> &Arc<TokenKeys> {
        &self.tokens
    }

    /// The identities as currently loaded.
    pub fn credentials(&self) -> Arc<Credentials> {
        self.refresh();
        self.loaded
            .read()
            .expect("credentials lock is never held across a panic")
            .credentials
            .clone()
    }

    /// Increases every time the credentials file or the token keys are reloaded.
    pub fn generation(&self) -> u64 {
        self.generation
            .load(Ordering::Acquire)
            .wrapping_add(self.tokens.generation())
    }

    /// Re-reads the credentials file if it changed (looked at once a second at most). A file
    /// that fails to parse is logged and the previous identities stay in force.
    pub fn refresh(&self) {
        self.reload(false)
    }

    /// Re-reads the credentials file now, changed or not (SIGHUP: an operator fixed its
    /// owner or mode, which changes neither its time nor its size).
    pub fn reload_now(&self) {
        self.reload(true)
    }

    fn reload(&self, forced: bool) {
        let CredentialSource::File(path) = &self.source else {
            return;
        };
        if !forced {
            let loaded = self
                .loaded
                .read()
                .expect("credentials lock is never held across a panic");
            if loaded.checked_at.elapsed() < RELOAD_CHECK {
                return;
            }
        }
        let mut loaded = self
            .loaded
            .write()
            .expect("credentials lock is never held across a panic");
        if !forced && loaded.checked_at.elapsed() < RELOAD_CHECK {
            return;
        }
        loaded.checked_at = Instant::now();
        let stamp = file_stamp(path);
        if !forced && stamp == loaded.stamp {
            return;
        }
        match CredentialsFile::load(path) {
            Ok(file) => {
                loaded.credentials = Arc::new(Credentials::from(&file));
                loaded.stamp = stamp;
                self.verified
                    .lock()
                    .expect("verified-cache lock is never held across a panic")
                    .clear();
                self.generation.fetch_add(1, Ordering::AcqRel);
                info!(file = %path.display(), identities = file.identities.len(), "credentials reloaded");
            }
            Err(e) => {
                loaded.stamp = stamp;
                warn!(error = %e, "credentials file changed but is invalid; keeping the previous identities");
            }
        }
    }

    /// Decides who a connection from `addr` is. `certificate` is the common name of a client
    /// certificate the TLS layer verified against the configured CA.
    pub async fn login(
        &self,
        addr: IpAddr,
        username: Option<&str>,
        password: Option<&[u8]>,
        certificate: Option<&str>,
    ) -> Result<Identity, LoginError> {
        if let Some(token) = password.filter(|p| looks_like_token(p)) {
            let keys = self.tokens.current();
            return self
                .token_login(addr, username, token, &keys)
                .await
                .map_err(LoginError::from);
        }
        let credentials = self.credentials();
        let name = match (username, certificate) {
            (Some(u), _) if !u.is_empty() => u,
            (_, Some(cn)) => cn,
            _ => {
                bump(&self.metrics.login_failures);
                warn!(%addr, reason = "no username and no client certificate", "login failed");
                return Err(LoginError::BadCredentials);
            }
        };
        if !valid_name(name) {
            bump(&self.metrics.login_failures);
            return Err(LoginError::InvalidName);
        }
        let role = credentials.role(name);
        // A verified certificate naming this identity is proof enough.
        if let (Some(cn), Some(role)) = (certificate, role) {
            if cn == name {
                return Ok(Identity {
                    name: name.to_string(),
                    role,
                });
            }
        }
        let wait = match self.lock_throttle().admit(addr, name, Instant::now()) {
            Ok(wait) => wait,
            Err(Throttled) => {
                bump(&self.metrics.login_throttled);
                debug!(identity = name, %addr, "login refused unchecked: too many recent attempts");
                return Err(LoginError::Throttled);
            }
        };
        if !wait.is_zero() {
            bump(&self.metrics.login_throttled);
            tokio::time::sleep(wait).await;
        }
        let password = password.unwrap_or_default();
        // Why, for the operator's log only: the client is told nothing more than "refused".
        let (ok, reason) = match (role, credentials.password_hash(name)) {
            (Some(_), Some(hash)) => (self.check(name, hash, password).await, "wrong password"),
            (Some(_), None) => {
                self.check_dummy(password).await;
                let reason = match certificate {
                    Some(_) => "client certificate names another identity",
                    None => {
                        "the identity logs in by client certificate only, and none was presented"
                    }
                };
                (false, reason)
            }
            (None, _) => {
                // Unknown names cost as much as wrong passwords, so timing does not tell
                // which identities exist.
                self.check_dummy(password).await;
                (false, "unknown identity")
            }
        };
        if ok {
            self.lock_throttle().succeeded(addr, name);
            Ok(Identity {
                name: name.to_string(),
                role: role.expect("a password verified only for a known identity"),
            })
        } else {
            bump(&self.metrics.login_failures);
            let failures = self.lock_throttle().failed(addr, name, Instant::now());
            warn!(identity = name, %addr, failures, reason, "login failed");
            Err(LoginError::BadCredentials)
        }
    }

    /// Logs in with a device token (an HTTP `Authorization: Bearer`); refused when no keys
    /// are configured.
    pub async fn login_token(
        &self,
        addr: IpAddr,
        token: &[u8],
    ) -> Result<Identity, TokenLoginError> {
        let keys = self.tokens.current();
        self.token_login(addr, None, token, &keys).await
    }

    /// Verifies `token` (an MQTT username, when given, must be its `sub`). Never argon2:
    /// a valid token is admitted at once, without consulting the throttle; a refused one is
    /// counted there and answered only in its slot, as a wrong password would be.
    async fn token_login(
        &self,
        addr: IpAddr,
        username: Option<&str>,
        token: &[u8],
        keys: &KeySet,
    ) -> Result<Identity, TokenLoginError> {
        let verdict = keys.verify(token, self.tokens.node_id()).and_then(|v| {
            if let Some(user) = username.filter(|u| !u.is_empty() && *u != v.name) {
                return Err(Refusal::Refused(format!(
                    "username '{}' is not the token's sub '{}'",
                    user.escape_debug(),
                    v.name
                )));
            }
            // A name the credentials file gives another role cannot be taken by a token: a
            // client token for a child node's id would otherwise pass for it in logs and
            // connection counts.
            match self.credentials().role(&v.name) {
                Some(listed) if listed != v.role => Err(Refusal::Refused(format!(
                    "'{}' is a {listed} in the credentials file, the token says {}",
                    v.name, v.role
                ))),
                _ => Ok(v),
            }
        });
        match verdict {
            Ok(v) => {
                self.metrics.token_logins.count("ok");
                debug!(identity = %v.name, kid = %v.kid, %addr, "token login");
                Ok(Identity {
                    name: v.name,
                    role: v.role,
                })
            }
            Err(refusal) => {
                self.metrics.token_logins.count(refusal.label());
                bump(&self.metrics.login_failures);
                let name = username
                    .filter(|u| !u.is_empty())
                    .map(str::to_string)
                    .or_else(|| unverified_subject(token))
                    .unwrap_or_else(|| "$token".to_string());
                let wait = match self.lock_throttle().admit(addr, &name, Instant::now()) {
                    Ok(wait) => wait,
                    Err(Throttled) => {
                        bump(&self.metrics.login_throttled);
                        debug!(identity = %name.escape_debug(), %addr, "token refused unchecked: too many recent failures");
                        return Err(TokenLoginError::Throttled);
                    }
                };
                if !wait.is_zero() {
                    bump(&self.metrics.login_throttled);
                    tokio::time::sleep(wait).await;
                }
                let failures = self.lock_throttle().failed(addr, &name, Instant::now());
                // An expired token is the device's to renew; the other refusals may mean a
                // key was rotated without the issuer knowing, or an attack.
                if refusal == Refusal::Expired {
                    info!(identity = %name.escape_debug(), %addr, failures, reason = %refusal, "token refused");
                } else {
                    warn!(identity = %name.escape_debug(), %addr, failures, reason = %refusal.to_string().escape_debug(), "token refused");
                }
                Err(TokenLoginError::Refused(refusal))
            }
        }
    }

    fn lock_throttle(&self) -> std::sync::MutexGuard<'_, LoginThrottle> {
        self.throttle
            .lock()
            .expect("throttle lock is never held across a panic")
    }

    fn mac(&self, name: &str, password: &[u8]) -> [u8; 32] {
        let mut mac = <Blake2sMac256 as KeyInit>::new_from_slice(&self.mac_key)
            .expect("a 32-byte key is valid for BLAKE2s");
        mac.update(&(name.len() as u64).to_le_bytes());
        mac.update(name.as_bytes());
        mac.update(password);
        mac.finalize_fixed().into()
    }

    async fn check(&self, name: &str, hash: &str, password: &[u8]) -> bool {
        let tag = self.mac(name, password);
        let generation = self.generation();
        {
            let verified = self
                .verified
                .lock()
                .expect("verified-cache lock is never held across a panic");
            if let Some(known) = verified.get(name) {
                if subtle::ConstantTimeEq::ct_eq(&known[..], &tag[..]).into() {
                    return true;
                }
            }
        }
        let ok = self
            .verify_blocking(hash.to_string(), password.to_vec())
            .await;
        if ok && self.generation() == generation {
            self.verified
                .lock()
                .expect("verified-cache lock is never held across a panic")
                .insert(name.to_string(), tag);
        }
        ok
    }

    async fn check_dummy(&self, password: &[u8]) {
        static DUMMY: OnceLock<String> = OnceLock::new();
        let hash = DUMMY.get_or_init(|| hash_password("medlink-dummy")).clone();
        self.verify_blocking(hash, password.to_vec()).await;
    }

    async fn verify_blocking(&self, hash: String, password: Vec<u8>) -> bool {
        let Ok(_slot) = self.verify_slots.acquire().await else {
            return false;
        };
        tokio::task::spawn_blocking(move || verify_password(&hash, &password))
            .await
            .unwrap_or(false)
    }
}

fn file_stamp(path: &std::path::Path) -> Option<(SystemTime, u64)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.modified().ok()?, m.len()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identity::Role;

    fn file_with(name: &str, role: Role, pw: &str) -> CredentialsFile {
        let mut f = CredentialsFile::default();
        f.upsert(name, role, Some(hash_password(pw)));
        f
    }

    #[tokio::test]
    async fn passwords_certificates_and_reload() {
        let dir = std::env::temp_dir().join(format!("medlink-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("credentials.toml");
        let mut f = file_with("clinic", Role::Client, "pw");
        f.upsert("js.a", Role::Node, None);
        f.save(&path).unwrap();
        let auth = Authenticator::new(
            CredentialSource::File(path.clone()),
            ThrottleSettings::default(),
            Arc::default(),
        )
        .unwrap();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let ok = auth.login(ip, Some("clinic"), Some(b"pw"), None).await;
        assert_eq!(ok.unwrap().role, Role::Client);
        // Second time from the cache, same answer.
        assert!(auth
            .login(ip, Some("clinic"), Some(b"pw"), None)
            .await
            .is_ok());
        assert_eq!(
            auth.login(ip, Some("clinic"), Some(b"px"), None).await,
            Err(LoginError::BadCredentials)
        );
        assert_eq!(
            auth.login(ip, Some("a+b"), Some(b"pw"), None).await,
            Err(LoginError::InvalidName)
        );
        // A node with no password logs in by certificate only.
        assert!(auth.login(ip, None, None, Some("js.a")).await.is_ok());
        assert!(auth
            .login(ip, Some("js.a"), None, Some("js.a"))
            .await
            .is_ok());
        assert!(auth.login(ip, Some("js.a"), Some(b""), None).await.is_err());
        assert!(auth.login(ip, None, None, Some("js.zz")).await.is_err());
        // Rotation takes effect without a restart; the cache does not outlive it.
        file_with("clinic", Role::Client, "new")
            .save(&path)
            .unwrap();
        tokio::time::sleep(RELOAD_CHECK + Duration::from_millis(50)).await;
        assert!(auth
            .login(ip, Some("clinic"), Some(b"pw"), None)
            .await
            .is_err());
        assert!(auth.generation() >= 1);
        let ok = auth.login(ip, Some("clinic"), Some(b"new"), None).await;
        assert!(ok.is_ok(), "{ok:?}");
        assert_eq!(auth.credentials().role("js.a"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[tokio::test]
    async fn tokens_skip_argon2_and_refusals_meet_the_throttle() {
        use crate::token::{mint_hs256, Claims, KeySet, TokenKey, TokenKeys};
        const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef";
        let mut f = file_with("clinic", Role::Client, "pw");
        f.upsert("js.a", Role::Node, None);
        let metrics = Arc::new(BrokerMetrics::default());
        let keys = KeySet::new(vec![TokenKey::hs256(
            "k",
            SECRET,
            "*".parse().unwrap(),
            vec![Role::Client],
        )
        .unwrap()])
        .unwrap();
        let auth = Authenticator::new(
            CredentialSource::Fixed(Credentials::from(&f)),
            ThrottleSettings::default(),
            metrics.clone(),
        )
        .unwrap()
        .with_tokens(Arc::new(TokenKeys::new("js", keys)));
        let ip: IpAddr = "10.1.1.1".parse().unwrap();
        let token = |sub: &str| mint_hs256(SECRET, "k", &Claims::new(sub, 60)).unwrap();
        // Both argon2 slots taken: a token login must not need one.
        let _slots = auth
            .verify_slots
            .acquire_many(VERIFY_SLOTS as u32)
            .await
            .unwrap();
        let quick = Duration::from_millis(200);
        let t = token("pt-1");
        let ok = tokio::time::timeout(quick, auth.login(ip, None, Some(t.as_bytes()), None))
            .await
            .expect("no argon2 slot needed");
        assert_eq!(
            ok,
            Ok(Identity {
                name: "pt-1".into(),
                role: Role::Client
            })
        );
        let same = auth.login(ip, Some("pt-1"), Some(t.as_bytes()), None).await;
        assert!(same.is_ok());
        let other = auth.login(ip, Some("pt-2"), Some(t.as_bytes()), None).await;
        assert_eq!(
            other,
            Err(LoginError::BadCredentials),
            "username must be the sub"
        );
        // A child node's name cannot be taken by a client token.
        let t = token("js.a");
        assert_eq!(
            auth.login(ip, None, Some(t.as_bytes()), None).await,
            Err(LoginError::BadCredentials)
        );
        // Failed tokens fill the throttle: later failures wait or are refused unchecked…
        let bad = mint_hs256(
            b"another-secret-another-secret-xx",
            "k",
            &Claims::new("pt-9", 60),
        )
        .unwrap();
        for _ in 0..6 {
            let _ = auth.login(ip, None, Some(bad.as_bytes()), None).await;
        }
        assert!(metrics.login_throttled.load(Ordering::Relaxed) > 0);
        // …but a valid token from the same address is never slowed.
        let t = token("pt-1");
        let ok = tokio::time::timeout(quick, auth.login_token(ip, t.as_bytes())).await;
        assert!(matches!(ok, Ok(Ok(_))), "{ok:?}");
        let c = &metrics.token_logins;
        assert_eq!(c.ok.load(Ordering::Relaxed), 3);
        assert_eq!(c.bad_signature.load(Ordering::Relaxed), 6);
        assert_eq!(c.refused.load(Ordering::Relaxed), 2);
        drop(_slots);
        // Without keys a JWT-shaped password is refused at once, without an argon2 slot.
        let plain = Authenticator::new(
            CredentialSource::Fixed(Credentials::from(&f)),
            ThrottleSettings::default(),
            Arc::default(),
        )
        .unwrap();
        let t = token("clinic");
        let held = plain
            .verify_slots
            .acquire_many(VERIFY_SLOTS as u32)
            .await
            .unwrap();
        let refused = tokio::time::timeout(
            quick,
            plain.login(ip, Some("clinic"), Some(t.as_bytes()), None),
        )
        .await;
        assert_eq!(refused, Ok(Err(LoginError::BadCredentials)));
        drop(held);
        assert!(plain
            .login(ip, Some("clinic"), Some(b"pw"), None)
            .await
            .is_ok());
    }
}
