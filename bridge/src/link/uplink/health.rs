//! Why the link to the parent is down, said so an operator can act on it, and said again only
//! as often as is useful.
//!
//! A child that cannot reach its parent used to print `ready` and nothing more: a refused
//! login, a certificate from the wrong CA and a closed port looked the same. Each failed
//! attempt is now classified into a [`Cause`]. The first failure of an outage is logged at
//! WARN with its cause, a changed cause at once, and the same cause again after 10 s, 30 s,
//! 1 min, 5 min, then every 10 min. When the link comes back, the dispatcher says in one
//! INFO line how long it was down and how many commands waited.

use std::fmt;
use std::time::{Duration, Instant};

use tracing::warn;

/// Why an attempt to reach the parent failed, or why a live link ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Cause {
    /// The parent refused this node's login: wrong password, or an identity it does not know.
    LoginRefused,
    /// A TLS handshake failed on a certificate: the parent's is not trusted here, or ours
    /// was refused there.
    Certificate(String),
    /// Another TLS failure.
    Tls(String),
    /// Nothing listens at the address.
    Refused,
    /// No answer in time.
    Timeout,
    /// A proxy between the two refused.
    Proxy(String),
    /// The parent answered, but refused the link (not a child of it).
    NotAChild,
    /// The link stopped moving and was dropped to dial again.
    Stalled,
    /// Anything else, as the error said it.
    Other(String),
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::LoginRefused => write!(
                f,
                "login refused by the parent (wrong password, or the parent does not know this node's identity)"
            ),
            Cause::Certificate(e) => write!(
                f,
                "certificate refused ({e}): check this node's [tls] ca and the parent's [tls] client_ca"
            ),
            Cause::Tls(e) => write!(f, "TLS handshake failed: {e}"),
            Cause::Refused => write!(f, "connection refused: nothing listens at that address"),
            Cause::Timeout => write!(
                f,
                "no answer in time (host down, or a firewall dropping the packets)"
            ),
            Cause::Proxy(e) => write!(f, "the proxy refused: {e}"),
            Cause::NotAChild => write!(
                f,
                "the parent refused the link subscription (is this node a known child there?)"
            ),
            Cause::Stalled => write!(f, "the link stalled"),
            Cause::Other(e) => f.write_str(e),
        }
    }
}

impl Cause {
    /// Classifies an error by what its chain of sources says: a rustls error, an I/O error
    /// kind, or failing those the text.
    pub(crate) fn of(error: &(dyn std::error::Error + 'static)) -> Cause {
        let mut next = Some(error);
        while let Some(e) = next {
            if let Some(tls) = e.downcast_ref::<rustls::Error>() {
                return Cause::of_tls(tls);
            }
            if let Some(io) = e.downcast_ref::<std::io::Error>() {
                // An I/O error's `source` skips the error it wraps: look at that one too.
                if let Some(tls) = io.get_ref().and_then(|i| i.downcast_ref::<rustls::Error>()) {
                    return Cause::of_tls(tls);
                }
                match io.kind() {
                    std::io::ErrorKind::ConnectionRefused => return Cause::Refused,
                    std::io::ErrorKind::TimedOut => return Cause::Timeout,
                    _ => {}
                }
            }
            next = e.source();
        }
        // The whole chain, as reqwest's own message ("error sending request") says little.
        let mut text = error.to_string();
        let mut next = error.source();
        while let Some(e) = next {
            let part = e.to_string();
            if !text.contains(&part) {
                text = format!("{text}: {part}");
            }
            next = e.source();
        }
        let lower = text.to_ascii_lowercase();
        if lower.contains("tunnel") || lower.contains("proxy") {
            // reqwest: "unsuccessful tunnel" when the proxy answers CONNECT with an error.
            Cause::Proxy(text)
        } else if lower.contains("certificate") || lower.contains("unknownissuer") {
            Cause::Certificate(text)
        } else if lower.contains("timeout") || lower.contains("timed out") {
            Cause::Timeout
        } else if lower.contains("connection refused") {
            Cause::Refused
        } else {
            Cause::Other(text)
        }
    }

    fn of_tls(e: &rustls::Error) -> Cause {
        use rustls::AlertDescription as A;
        match e {
            rustls::Error::InvalidCertificate(_) => Cause::Certificate(e.to_string()),
            rustls::Error::AlertReceived(
                A::BadCertificate
                | A::UnknownCA
                | A::CertificateUnknown
                | A::CertificateExpired
                | A::CertificateRevoked
                | A::UnsupportedCertificate
                | A::CertificateRequired
                | A::AccessDenied
                // What rustls answers a certificate whose issuer has the right name but
                // another key: a CA of the same name made elsewhere.
                | A::DecryptError,
            ) => Cause::Certificate(format!("the parent sent {e}")),
            _ => Cause::Tls(e.to_string()),
        }
    }

    /// A refusal by HTTP status from the parent (or a proxy) on an HTTP link.
    pub(crate) fn of_status(status: reqwest::StatusCode, body: &str) -> Cause {
        match status.as_u16() {
            401 => Cause::LoginRefused,
            403 => Cause::NotAChild,
            407 => Cause::Proxy(format!("{status}")),
            _ => Cause::Other(format!("parent answered {status}: {}", body.trim())),
        }
    }

    /// The same kind of failure (the detail may differ from attempt to attempt).
    fn same_kind(&self, other: &Cause) -> bool {
        std::mem::discriminant(self) == std::mem::discriminant(other)
    }
}

/// The gaps between repeated WARNs of one cause during one outage.
const REPEAT: [Duration; 5] = [
    Duration::from_secs(10),
    Duration::from_secs(30),
    Duration::from_secs(60),
    Duration::from_secs(300),
    Duration::from_secs(600),
];

/// The link's health as the uplink task sees it: when the current outage began, and what was
/// last said about it.
#[derive(Debug, Default)]
pub(crate) struct Health {
    down_since: Option<Instant>,
    attempts: u32,
    said: Option<(Cause, Instant, usize)>,
}

impl Health {
    /// An attempt to reach the parent at `addr` failed.
    pub(crate) fn failed(&mut self, addr: &dyn fmt::Display, cause: &Cause) {
        let now = Instant::now();
        let since = *self.down_since.get_or_insert(now);
        self.attempts = self.attempts.saturating_add(1);
        let repeat = match &self.said {
            Some((said, at, n)) if said.same_kind(cause) => {
                let gap = REPEAT[(*n).min(REPEAT.len() - 1)];
                if now.duration_since(*at) < gap {
                    return;
                }
                n + 1
            }
            _ => 0,
        };
        warn!(
            parent = %addr,
            cause = %cause,
            down_for_s = now.duration_since(since).as_secs(),
            attempts = self.attempts,
            "parent link down"
        );
        self.said = Some((cause.clone(), now, repeat));
    }

    /// A live link to `addr` ended: the outage begins now.
    pub(crate) fn lost(&mut self, addr: &dyn fmt::Display, cause: &Cause) {
        self.down_since = Some(Instant::now());
        self.attempts = 0;
        self.said = Some((cause.clone(), Instant::now(), 0));
        warn!(parent = %addr, cause = %cause, "parent link lost");
    }

    /// The link is up: ends the outage, if there was one, and returns how long it lasted
    /// (the dispatcher says so, with how many commands waited).
    pub(crate) fn up(&mut self) -> Option<Duration> {
        let since = self.down_since.take()?;
        self.attempts = 0;
        self.said = None;
        Some(since.elapsed())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn io(kind: std::io::ErrorKind) -> std::io::Error {
        std::io::Error::new(kind, "x")
    }

    #[test]
    fn causes_are_read_from_the_error_chain() {
        assert_eq!(
            Cause::of(&io(std::io::ErrorKind::ConnectionRefused)),
            Cause::Refused
        );
        assert_eq!(Cause::of(&io(std::io::ErrorKind::TimedOut)), Cause::Timeout);
        let unknown_issuer = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer),
        );
        assert!(matches!(Cause::of(&unknown_issuer), Cause::Certificate(_)));
        let refused_ours = std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA),
        );
        assert!(matches!(Cause::of(&refused_ours), Cause::Certificate(_)));
        let other = std::io::Error::other("something odd");
        assert_eq!(Cause::of(&other), Cause::Other("something odd".into()));
        assert_eq!(
            Cause::of_status(reqwest::StatusCode::UNAUTHORIZED, ""),
            Cause::LoginRefused
        );
        assert!(matches!(
            Cause::of_status(reqwest::StatusCode::PROXY_AUTHENTICATION_REQUIRED, ""),
            Cause::Proxy(_)
        ));
    }

    #[test]
    fn a_cause_is_repeated_with_growing_gaps_and_a_new_one_at_once() {
        let addr = "mqtt://127.0.0.1:1";
        let mut h = Health::default();
        h.failed(&addr, &Cause::Refused);
        let first = h.said.clone().unwrap();
        h.failed(&addr, &Cause::Refused);
        assert_eq!(h.said.as_ref().unwrap().1, first.1, "repeated at once");
        h.failed(&addr, &Cause::LoginRefused);
        assert_eq!(
            h.said.as_ref().unwrap().0,
            Cause::LoginRefused,
            "a new cause is said"
        );
        assert_eq!(h.attempts, 3);
        assert!(h.up().is_some());
        assert!(h.up().is_none(), "up twice is one recovery");
    }
}
