//! Configurations that start but cannot work as meant: said at WARN when the node starts, so
//! the operator learns it from the log instead of from logins that fail without a word.

use medlink_bridge::http::TransportChoice;
use medlink_bridge::node::HttpSettings;
use medlink_broker::{CredentialsFile, ListenerKind, ListenerSpec, Role};

/// What the credentials file says that cannot work: no identities at all, or child nodes that
/// may log in by certificate only on a node that checks no client certificates.
pub fn credentials(file: &CredentialsFile, path: &str, client_ca: bool) -> Vec<String> {
    let mut out = Vec::new();
    if file.identities.is_empty() {
        out.push(format!(
            "node.credentials: {path} holds no identities, so nobody can log in with a password \
             (add them with `medlink passwd --file {path} add NAME --role ROLE`)"
        ));
    }
    let cert_only: Vec<&str> = file
        .identities
        .iter()
        .filter(|i| i.role == Role::Node && i.password_hash.is_none())
        .map(|i| i.name.as_str())
        .collect();
    if !cert_only.is_empty() && !client_ca {
        out.push(format!(
            "tls.client_ca: not set, yet {} log in by client certificate only ({}): without a \
             client CA no certificate is checked, and every one of their logins will fail",
            if cert_only.len() == 1 {
                "one child node may"
            } else {
                "child nodes may"
            },
            cert_only.join(", ")
        ));
    }
    out
}

/// A `[transport]` URL that no listener of this node serves: callers told to use it would
/// fail. A different port is only said, since a proxy or port forward may map it.
pub fn transport_url(
    choice: TransportChoice,
    url: &url::Url,
    listeners: &[ListenerSpec],
    http: Option<&HttpSettings>,
) -> Option<String> {
    let key = format!("transport.{}_url", choice.to_string().to_lowercase());
    let scheme = url.scheme();
    let (what, ports): (&str, Vec<u16>) = match scheme {
        "mqtt" | "tcp" => ("tcp [[listener]]", ports_of(listeners, ListenerKind::Tcp)),
        "mqtts" | "ssl" => ("tls [[listener]]", ports_of(listeners, ListenerKind::Tls)),
        "ws" => ("ws [[listener]]", ports_of(listeners, ListenerKind::Ws)),
        "wss" => ("wss [[listener]]", ports_of(listeners, ListenerKind::Wss)),
        "http" => (
            "[http] section without tls",
            http.filter(|h| !h.tls)
                .map(|h| vec![h.addr.port()])
                .unwrap_or_default(),
        ),
        "https" => (
            "[http] section with tls = true",
            http.filter(|h| h.tls)
                .map(|h| vec![h.addr.port()])
                .unwrap_or_default(),
        ),
        other => {
            return Some(format!(
                "{key}: '{url}' has scheme '{other}', which no medlink listener speaks"
            ))
        }
    };
    if ports.is_empty() {
        return Some(format!(
            "{key}: '{url}' is advertised, but this node has no {what}: callers told to use it will fail"
        ));
    }
    let port = url.port().or_else(|| medlink_wire::default_port(scheme))?;
    (!ports.contains(&port)).then(|| {
        format!(
            "{key}: '{url}' names port {port}, but {what} listens on {ports:?}; fine only if a \
             proxy or port forward maps one to the other"
        )
    })
}

fn ports_of(listeners: &[ListenerSpec], kind: ListenerKind) -> Vec<u16> {
    listeners
        .iter()
        .filter(|l| l.kind == kind)
        .map(|l| l.addr.port())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listener(kind: ListenerKind, port: u16) -> ListenerSpec {
        ListenerSpec {
            kind,
            addr: format!("0.0.0.0:{port}").parse().unwrap(),
        }
    }

    #[test]
    fn credentials_that_cannot_work_are_said() {
        let empty = CredentialsFile::default();
        assert_eq!(credentials(&empty, "c.toml", true).len(), 1);
        let mut file = CredentialsFile::default();
        file.upsert("js.k", Role::Node, None);
        file.upsert("doc", Role::Client, Some("$argon2id$x".into()));
        let said = credentials(&file, "c.toml", false);
        assert_eq!(said.len(), 1, "{said:?}");
        assert!(
            said[0].contains("js.k") && said[0].contains("client_ca"),
            "{said:?}"
        );
        assert!(credentials(&file, "c.toml", true).is_empty());
    }

    #[test]
    fn transport_urls_without_a_listener_are_said() {
        let listeners = [
            listener(ListenerKind::Tls, 8883),
            listener(ListenerKind::Tcp, 1883),
        ];
        let url = |u: &str| url::Url::parse(u).unwrap();
        let check = |c, u: &str| transport_url(c, &url(u), &listeners, None);
        assert_eq!(
            check(TransportChoice::Mqtt, "mqtts://city.example:8883"),
            None
        );
        assert_eq!(check(TransportChoice::Mqtt, "mqtts://city.example"), None);
        assert!(check(TransportChoice::Mqtt, "mqtts://city.example:9999")
            .is_some_and(|w| w.contains("port forward")));
        assert!(check(TransportChoice::Ws, "wss://city.example/mqtt")
            .is_some_and(|w| w.contains("has no wss")));
        assert!(check(TransportChoice::Http, "https://city.example")
            .is_some_and(|w| w.contains("[http]")));
    }
}
