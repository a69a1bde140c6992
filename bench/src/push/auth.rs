//! How a recipient proves who it is. Every login of the push bench is made by [`login`]:
//! a password, nothing, or a device token (`--auth token --token-secret-file F --kid K`: a JWT
//! HS256 with `sub` = the identity, used as the MQTT password and as an HTTP `Bearer`, minted
//! with the wire contract's own minter).

use base64::Engine;
use medlink_wire::token::{Claims, Hs256Minter};

/// How recipients log in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Username = identity, with `--password` (medlink: checked against the argon2id hash in
    /// the node's credentials file).
    Password,
    /// No credentials (a broker that allows anonymous clients, such as the bench's mosquitto).
    None,
    /// A device token per identity, minted here with `--token-secret-file` and `--kid`.
    Token,
}

/// Login options shared by the coordinator and its load processes.
#[derive(clap::Args, Debug, Clone)]
pub struct AuthArgs {
    /// How recipients log in (default: password for medlink, none for mosquitto).
    #[arg(long, value_enum)]
    pub auth: Option<AuthMode>,
    /// The recipients' password (`--auth password`); the bench gives every recipient the same
    /// one, each with a hash of its own in the credentials file.
    #[arg(long, default_value = "bench-push")]
    pub password: String,
    /// `--auth token`: the HS256 secret of the node's `[[token_key]]`.
    #[arg(long)]
    pub token_secret_file: Option<std::path::PathBuf>,
    /// `--auth token`: that key's `kid`.
    #[arg(long, default_value = "bench")]
    pub kid: String,
}

impl AuthArgs {
    /// Password logins with `password`.
    pub fn password(password: &str) -> AuthArgs {
        AuthArgs {
            auth: Some(AuthMode::Password),
            password: password.to_string(),
            token_secret_file: None,
            kid: "bench".into(),
        }
    }

    /// The flags that reproduce these options in a load process.
    pub fn to_args(&self, mode: AuthMode) -> Vec<String> {
        let mode = match mode {
            AuthMode::Password => "password",
            AuthMode::None => "none",
            AuthMode::Token => "token",
        };
        let mut args = vec![
            "--auth".into(),
            mode.into(),
            "--password".into(),
            self.password.clone(),
            "--kid".into(),
            self.kid.clone(),
        ];
        if let Some(f) = &self.token_secret_file {
            args.push("--token-secret-file".into());
            args.push(f.display().to_string());
        }
        args
    }
}

/// What one identity presents: over MQTT the CONNECT username and password, over HTTP the
/// `Authorization` header value.
#[derive(Debug, Clone)]
pub struct Login {
    /// MQTT username (may be empty, e.g. for a token whose `sub` names the identity).
    pub username: String,
    /// MQTT password (a password, or a token).
    pub secret: String,
    /// HTTP `Authorization` value (`Basic …`, or `Bearer …` for a token).
    pub authorization: String,
}

/// The login of `identity` under `mode`; `None` when no credentials are sent.
pub fn login(args: &AuthArgs, mode: AuthMode, identity: &str) -> Option<Login> {
    match mode {
        AuthMode::Password => {
            let basic = base64::engine::general_purpose::STANDARD
                .encode(format!("{identity}:{}", args.password));
            Some(Login {
                username: identity.to_string(),
                secret: args.password.clone(),
                authorization: format!("Basic {basic}"),
            })
        }
        AuthMode::None => None,
        AuthMode::Token => {
            let token = minter(args).mint(&Claims::new(identity, 24 * 3600)).ok()?;
            Some(Login {
                username: String::new(),
                authorization: format!("Bearer {token}"),
                secret: token,
            })
        }
    }
}

/// The process's minter, made from `--token-secret-file` once. A bench run without a usable
/// secret cannot start, so this exits with the flag named rather than returning.
fn minter(args: &AuthArgs) -> &'static Hs256Minter {
    static MINTER: std::sync::OnceLock<Hs256Minter> = std::sync::OnceLock::new();
    MINTER.get_or_init(|| {
        let made = args
            .token_secret_file
            .as_ref()
            .ok_or_else(|| "--auth token needs --token-secret-file".to_string())
            .and_then(|f| {
                std::fs::read(f).map_err(|e| format!("--token-secret-file {}: {e}", f.display()))
            })
            .and_then(|secret| {
                let secret = secret.strip_suffix(b"\n").unwrap_or(&secret).to_vec();
                Hs256Minter::new(args.kid.clone(), &secret)
                    .map_err(|e| format!("--token-secret-file: {e}"))
            });
        made.unwrap_or_else(|e| {
            eprintln!("medlink-bench push: {e}");
            std::process::exit(2)
        })
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_login_is_basic_over_http() {
        let args = AuthArgs::password("pw");
        let l = login(&args, AuthMode::Password, "pt-00001").unwrap();
        assert_eq!(l.username, "pt-00001");
        assert_eq!(l.authorization, "Basic cHQtMDAwMDE6cHc=");
        assert!(login(&args, AuthMode::None, "pt-00001").is_none());
    }

    #[test]
    fn a_token_login_is_the_mqtt_password_and_an_http_bearer() {
        let dir = std::env::temp_dir().join(format!("push-auth-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let key = dir.join("k");
        std::fs::write(&key, "0123456789abcdef0123456789abcdef\n").unwrap();
        let args = AuthArgs {
            token_secret_file: Some(key),
            ..AuthArgs::password("unused")
        };
        let l = login(&args, AuthMode::Token, "pt-00001").unwrap();
        assert_eq!(l.username, "");
        assert_eq!(l.secret.split('.').count(), 3, "{}", l.secret);
        assert_eq!(l.authorization, format!("Bearer {}", l.secret));
        let _ = std::fs::remove_dir_all(dir);
    }
}
