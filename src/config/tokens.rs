//! `[[token_key]]` sections into the node's token keys: reading the secret or public key
//! files, checking what each key may vouch for, and warning about secrets other users can
//! read. Used at start (`build`), by the reloader while the node runs, and by
//! `medlink token` (the secret file rules).

use std::path::{Path, PathBuf};

use medlink_broker::token::{KeyAlg, KeySet, Subjects, TokenKey};
use tracing::warn;

use super::TokenKeySection;

/// Builds the key set of `sections`; relative paths resolve against `base` (the config
/// file's directory). Errors name the key: `token_key[1].secret_file: …`.
pub fn keys(sections: &[TokenKeySection], base: &Path) -> Result<KeySet, String> {
    let mut keys = Vec::with_capacity(sections.len());
    for (i, s) in sections.iter().enumerate() {
        let at = format!("token_key[{i}]");
        let subjects: Subjects = s
            .subjects
            .parse()
            .map_err(|e| format!("{at}.subjects: {e}"))?;
        let key = match (s.alg, &s.secret_file, &s.public_key_file) {
            (KeyAlg::HS256, Some(file), None) => {
                let path = base.join(file);
                let secret = read_secret(&path).map_err(|e| format!("{at}.secret_file: {e}"))?;
                if let Some(mode) = loose_mode(&path) {
                    // Warned, not refused, as for the other files a node reads (credentials,
                    // TLS keys): refusing would turn a chmod slip into an outage at the next
                    // reload. But a readable secret lets other local users mint tokens.
                    warn!(
                        key = %at, file = %path.display(), mode = format!("{mode:o}"),
                        "token secret is readable by group or others; chmod 600 it (anyone who reads it can mint tokens)"
                    );
                }
                TokenKey::hs256(&s.kid, &secret, subjects, s.roles.clone())
                    .map_err(|e| format!("{at}.secret_file: {e}"))?
            }
            (KeyAlg::HS256, _, Some(_)) => {
                return Err(format!(
                    "{at}.public_key_file: HS256 verifies with a shared secret; give secret_file"
                ))
            }
            (KeyAlg::HS256, None, None) => {
                return Err(format!("{at}.secret_file: required for HS256"));
            }
            (alg, None, Some(file)) => {
                let path = base.join(file);
                let pem = std::fs::read(&path)
                    .map_err(|e| format!("{at}.public_key_file: {}: {e}", path.display()))?;
                TokenKey::public_pem(&s.kid, alg, &pem, subjects, s.roles.clone())
                    .map_err(|e| format!("{at}.public_key_file: {}: {e}", path.display()))?
            }
            (alg, Some(_), _) => {
                return Err(format!(
                    "{at}.secret_file: {} verifies with a public key; give public_key_file (PEM) instead",
                    alg.name()
                ))
            }
            (alg, None, None) => {
                return Err(format!(
                    "{at}.public_key_file: required for {}",
                    alg.name()
                ))
            }
        };
        keys.push(key);
    }
    KeySet::new(keys).map_err(|(i, e)| format!("token_key[{i}].kid: {e}"))
}

/// The files the keys of `sections` are read from (a change to one is a change of the keys).
pub fn key_files(sections: &[TokenKeySection], base: &Path) -> Vec<PathBuf> {
    sections
        .iter()
        .flat_map(|s| [&s.secret_file, &s.public_key_file])
        .flatten()
        .map(|f| base.join(f))
        .collect()
}

/// A shared secret from `path`: the file's bytes with one trailing newline (`\n` or `\r\n`)
/// trimmed, so `echo` and editors that end files with a newline do not change the key.
pub fn read_secret(path: &Path) -> Result<Vec<u8>, String> {
    let mut bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
        if bytes.ends_with(b"\r") {
            bytes.pop();
        }
    }
    if bytes.is_empty() {
        return Err(format!("{} is empty", path.display()));
    }
    Ok(bytes)
}

/// The permission bits of `path` when group or others may use it (`None` when only its
/// owner may, or on systems without Unix modes).
pub fn loose_mode(path: &Path) -> Option<u32> {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(path).ok()?.permissions().mode() & 0o777;
        (mode & 0o077 != 0).then_some(mode)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn section(text: &str) -> Result<Vec<TokenKeySection>, String> {
        #[derive(serde::Deserialize)]
        #[serde(deny_unknown_fields)]
        struct Only {
            token_key: Vec<TokenKeySection>,
        }
        toml::from_str::<Only>(text)
            .map(|o| o.token_key)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn keys_load_and_errors_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let secret = dir.path().join("k.key");
        std::fs::write(&secret, "0123456789abcdef0123456789abcdef\n").unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        assert_eq!(loose_mode(&secret), None);
        assert_eq!(read_secret(&secret).unwrap().len(), 32, "newline trimmed");
        let ok = section(
            "[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret_file = \"k.key\"\nsubjects = \"pt-*\"\n",
        )
        .unwrap();
        let set = keys(&ok, dir.path()).unwrap();
        assert_eq!(set.keys()[0].kid(), "a");
        assert_eq!(key_files(&ok, dir.path()), vec![secret.clone()]);
        let err = |text: &str| keys(&section(text).unwrap(), dir.path()).unwrap_err();
        let e = err("[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\n");
        assert!(e.starts_with("token_key[0].secret_file"), "{e}");
        let e = err("[[token_key]]\nkid = \"a\"\nalg = \"ES256\"\nsecret_file = \"k.key\"\n");
        assert!(e.starts_with("token_key[0].secret_file"), "{e}");
        let e =
            err("[[token_key]]\nkid = \"a\"\nalg = \"EdDSA\"\npublic_key_file = \"none.pem\"\n");
        assert!(e.starts_with("token_key[0].public_key_file"), "{e}");
        let e = err("[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret_file = \"k.key\"\nsubjects = \"a*b\"\n");
        assert!(e.starts_with("token_key[0].subjects"), "{e}");
        let e = err("[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret_file = \"k.key\"\n[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret_file = \"k.key\"\n");
        assert!(e.starts_with("token_key[1].kid"), "{e}");
        std::fs::write(dir.path().join("short.key"), "tiny").unwrap();
        let e = err("[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret_file = \"short.key\"\n");
        assert!(
            e.starts_with("token_key[0].secret_file") && e.contains("32"),
            "{e}"
        );
        // Types and unknown keys are refused by serde, naming the key.
        let e = section("[[token_key]]\nkid = \"a\"\nalg = \"RS256\"\n").unwrap_err();
        assert!(e.contains("RS256") && e.contains("alg"), "{e}");
        let e =
            section("[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nsecret = \"x\"\n").unwrap_err();
        assert!(e.contains("secret"), "{e}");
        let e = section("[[token_key]]\nkid = \"a\"\nalg = \"HS256\"\nroles = [\"root\"]\n")
            .unwrap_err();
        assert!(e.contains("root"), "{e}");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o644)).unwrap();
            assert_eq!(loose_mode(&secret), Some(0o644));
        }
    }
}
