//! How a recipient proves who it is. Every login of the push bench is made by [`login`], so
//! a new way to log in (device tokens: `--auth token --token-secret-file F --kid K`, a JWT
//! HS256 with `sub` = the identity used as the MQTT password and as an HTTP `Bearer`) is one
//! more [`AuthMode`] and one more arm here, and nothing else in the bench changes.

use base64::Engine;

/// How recipients log in.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum AuthMode {
    /// Username = identity, with `--password` (medlink: checked against the argon2id hash in
    /// the node's credentials file).
    Password,
    /// No credentials (a broker that allows anonymous clients, such as the bench's mosquitto).
    None,
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
}

impl AuthArgs {
    /// The flags that reproduce these options in a load process.
    pub fn to_args(&self, mode: AuthMode) -> Vec<String> {
        let mode = match mode {
            AuthMode::Password => "password",
            AuthMode::None => "none",
        };
        vec![
            "--auth".into(),
            mode.into(),
            "--password".into(),
            self.password.clone(),
        ]
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_password_login_is_basic_over_http() {
        let args = AuthArgs {
            auth: None,
            password: "pw".into(),
        };
        let l = login(&args, AuthMode::Password, "pt-00001").unwrap();
        assert_eq!(l.username, "pt-00001");
        assert_eq!(l.authorization, "Basic cHQtMDAwMDE6cHc=");
        assert!(login(&args, AuthMode::None, "pt-00001").is_none());
    }
}
