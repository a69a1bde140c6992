//! Re-reading the token keys while the node runs, so that adding, rotating or removing a
//! `[[token_key]]` needs no restart (a removed key's tokens are refused within a second).
//! SIGHUP (`systemctl reload medlink`) also re-reads the credentials file at once, whether or
//! not it looks changed (the authenticator otherwise notices changes of time or size).
//!
//! Once a second, and at once on SIGHUP, the config file and the key files it names are read
//! again; when any of them changed, the file is parsed (with the same types and
//! `deny_unknown_fields` as at start) and the keys are rebuilt and swapped in whole. Only the
//! keys: everything else in the file was fixed at start, so a change elsewhere is logged at
//! WARN as needing a restart. A file that no longer parses, or keys that fail their checks,
//! leave the keys in force as they were and are logged at WARN with the error, which names the
//! key.
//!
//! Contents are compared, not modification times: the files are a few hundred bytes, and an
//! editor or `cp -p` may keep the time while changing the bytes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medlink_broker::token::TokenKeys;
use medlink_broker::Authenticator;
use tracing::{info, warn};

use super::{tokens, File};

/// How often the files are looked at.
const POLL: Duration = Duration::from_secs(1);

/// What the keys were last built from: the config text and each key file's bytes.
#[derive(PartialEq, Eq, Default)]
struct Seen {
    text: String,
    files: Vec<(PathBuf, Option<Vec<u8>>)>,
}

/// The reloader's state.
pub struct Reloader {
    path: PathBuf,
    base: PathBuf,
    tokens: Arc<TokenKeys>,
    /// The node's logins, whose credentials file SIGHUP re-reads.
    auth: Option<Arc<Authenticator>>,
    /// Everything but `token_key` as the node started with it.
    started_with: Option<toml::Table>,
    seen: Seen,
    /// The last error reported, so a broken file is reported once, not every second.
    reported: Option<String>,
}

impl Reloader {
    /// A reloader of `path` (the config the node started from) into `tokens`.
    pub fn new(path: &Path, tokens: Arc<TokenKeys>) -> Reloader {
        let base = path.parent().unwrap_or(Path::new(".")).to_path_buf();
        let mut r = Reloader {
            path: path.to_path_buf(),
            base,
            tokens,
            auth: None,
            started_with: None,
            seen: Seen::default(),
            reported: None,
        };
        // What the node started from is the baseline: no reload until something changes.
        if let Ok(text) = std::fs::read_to_string(path) {
            r.started_with = rest_of(&text);
            if let Ok(file) = toml::from_str::<File>(&text) {
                r.seen = r.seen(text, &file);
            }
        }
        r
    }

    fn seen(&self, text: String, file: &File) -> Seen {
        let files = tokens::key_files(&file.token_keys, &self.base)
            .into_iter()
            .map(|p| {
                let bytes = std::fs::read(&p).ok();
                (p, bytes)
            })
            .collect();
        Seen { text, files }
    }

    /// Looks at the files once; rebuilds the keys if anything changed, or always if `forced`
    /// (SIGHUP). Returns whether new keys were put in force.
    pub fn check(&mut self, forced: bool) -> bool {
        let text = match std::fs::read_to_string(&self.path) {
            Ok(t) => t,
            Err(e) => {
                self.report(format!(
                    "cannot read {}: {e}; keeping the token keys in force",
                    self.path.display()
                ));
                return false;
            }
        };
        let file = match toml::from_str::<File>(&text) {
            Ok(f) => f,
            Err(e) => {
                self.seen = Seen {
                    text,
                    files: Vec::new(),
                };
                self.report(format!(
                    "{}: {}; keeping the token keys in force",
                    self.path.display(),
                    e.to_string().trim()
                ));
                return false;
            }
        };
        let seen = self.seen(text, &file);
        if seen == self.seen && !forced {
            return false;
        }
        let changed_elsewhere = rest_of(&seen.text)
            .zip(self.started_with.as_ref())
            .map(|(now, then)| differing(then, &now))
            .unwrap_or_default();
        self.seen = seen;
        if !changed_elsewhere.is_empty() {
            warn!(
                file = %self.path.display(), sections = %changed_elsewhere.join(", "),
                "the config changed outside [[token_key]]; those changes need a restart (token keys are reloaded)"
            );
        }
        match tokens::keys(&file.token_keys, &self.base) {
            Ok(keys) => {
                let kids: Vec<String> = keys.keys().iter().map(|k| k.kid().to_string()).collect();
                self.tokens.replace(keys);
                self.reported = None;
                info!(file = %self.path.display(), kids = %kids.join(","), "token keys reloaded");
                true
            }
            Err(e) => {
                self.report(format!(
                    "{}: {e}; keeping the token keys in force",
                    self.path.display()
                ));
                false
            }
        }
    }

    fn report(&mut self, error: String) {
        if self.reported.as_ref() != Some(&error) {
            warn!(error = %error, "token keys not reloaded");
            self.reported = Some(error);
        }
    }

    /// Runs until the task is dropped: every second, and on SIGHUP.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(POLL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        #[cfg(unix)]
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(s) => Some(s),
            Err(e) => {
                warn!(error = %e, "cannot listen for SIGHUP; token keys reload on change only");
                None
            }
        };
        loop {
            #[cfg(unix)]
            let forced = tokio::select! {
                _ = tick.tick() => false,
                Some(()) = async { match hup.as_mut() { Some(h) => h.recv().await, None => std::future::pending().await } } => true,
            };
            #[cfg(not(unix))]
            let forced = {
                tick.tick().await;
                false
            };
            if forced {
                info!("SIGHUP: re-reading the credentials and the token keys");
            }
            // Reading a few small files; on the blocking pool so a slow disk stalls no worker.
            let auth = self.auth.clone();
            let (r, _) = match tokio::task::spawn_blocking(move || {
                if forced {
                    if let Some(auth) = auth {
                        auth.reload_now();
                    }
                }
                let changed = self.check(forced);
                (self, changed)
            })
            .await
            {
                Ok(done) => done,
                Err(_) => return,
            };
            self = r;
        }
    }
}

/// The file's top-level table without `token_key`.
fn rest_of(text: &str) -> Option<toml::Table> {
    let mut table: toml::Table = toml::from_str(text).ok()?;
    table.remove("token_key");
    Some(table)
}

/// The top-level keys whose values differ between `a` and `b`.
fn differing(a: &toml::Table, b: &toml::Table) -> Vec<String> {
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

/// Starts reloading the token keys of the node configured by `path`.
pub fn spawn(
    path: &Path,
    tokens: Arc<TokenKeys>,
    auth: Arc<Authenticator>,
) -> tokio::task::JoinHandle<()> {
    let mut reloader = Reloader::new(path, tokens);
    reloader.auth = Some(auth);
    tokio::spawn(reloader.run())
}

#[cfg(test)]
mod tests {
    use super::*;
    use medlink_broker::token::{mint_hs256, Claims, KeySet};

    #[test]
    fn keys_follow_the_file_and_a_broken_file_keeps_them() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("node.toml");
        std::fs::write(dir.path().join("a.key"), "a".repeat(40)).unwrap();
        std::fs::write(dir.path().join("b.key"), "b".repeat(40)).unwrap();
        let key = |kid: &str, file: &str| {
            format!("[[token_key]]\nkid = \"{kid}\"\nalg = \"HS256\"\nsecret_file = \"{file}\"\n")
        };
        let head = "[node]\nid = \"js\"\n";
        std::fs::write(&cfg, format!("{head}{}", key("a", "a.key"))).unwrap();
        let tokens = Arc::new(TokenKeys::new("js", KeySet::default()));
        let mut r = Reloader::new(&cfg, tokens.clone());
        assert!(!r.check(false), "nothing changed since start");
        assert!(r.check(true), "SIGHUP reloads anyway");
        let token = |secret: &str, kid: &str| {
            mint_hs256(secret.repeat(40).as_bytes(), kid, &Claims::new("pt-1", 60)).unwrap()
        };
        let ok = |t: &str| tokens.current().verify(t.as_bytes(), "js").is_ok();
        assert!(ok(&token("a", "a")));
        // Add b.
        std::fs::write(
            &cfg,
            format!("{head}{}{}", key("a", "a.key"), key("b", "b.key")),
        )
        .unwrap();
        assert!(r.check(false));
        assert!(ok(&token("a", "a")) && ok(&token("b", "b")));
        // A secret file changed in place is a changed key.
        std::fs::write(dir.path().join("b.key"), "c".repeat(40)).unwrap();
        assert!(r.check(false));
        assert!(!ok(&token("b", "b")) && ok(&token("c", "b")));
        // Broken: keys stay.
        std::fs::write(&cfg, format!("{head}{}colour = 1\n", key("a", "a.key"))).unwrap();
        assert!(!r.check(false));
        assert!(ok(&token("a", "a")) && ok(&token("c", "b")));
        std::fs::write(&cfg, format!("{head}{}", key("a", "missing.key"))).unwrap();
        assert!(!r.check(false));
        assert!(ok(&token("c", "b")));
        // Remove a; another section changes too (needs a restart, logged; keys still reload).
        std::fs::write(&cfg, format!("{head}audit = true\n{}", key("b", "b.key"))).unwrap();
        assert!(r.check(false));
        assert!(!ok(&token("a", "a")) && ok(&token("c", "b")));
        assert!(!r.check(false), "no change, no reload");
    }

    #[test]
    fn differing_sections_are_named() {
        let a: toml::Table = toml::from_str("[node]\nid = \"js\"\n[http]\naddr = \"x\"\n").unwrap();
        let b: toml::Table =
            toml::from_str("[node]\nid = \"js\"\n[limits]\nrate_per_second = 1\n").unwrap();
        assert_eq!(differing(&a, &b), ["http", "limits"]);
        assert!(differing(&a, &a).is_empty());
    }
}
