//! How a caller connects to a node, and the node's answer to `GET /v1/transport`: the node
//! decides per identity (`[transport]` in its configuration) and clients and child nodes
//! follow.

use serde::{Deserialize, Serialize};

/// A transport to a node. On the wire (and in the node's TOML) `"mqtt"`, `"ws"`, `"http"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Transport {
    /// MQTT over TCP or TLS.
    Mqtt,
    /// MQTT over WebSocket (or secure WebSocket).
    Ws,
    /// The node's HTTP API (POST and long-polls).
    Http,
}

crate::names::wire_names!(Transport, UnknownTransport, "transport" {
    Mqtt => "mqtt",
    Ws => "ws",
    Http => "http",
});

/// The port a node URL of `scheme` means when it names none: MQTT's 1883 and 8883 (which URL
/// parsers do not know), and the web's 80 and 443. `None` for a scheme medlink does not speak.
pub fn default_port(scheme: &str) -> Option<u16> {
    match scheme {
        "mqtt" | "tcp" => Some(1883),
        "mqtts" | "ssl" => Some(8883),
        "ws" | "http" => Some(80),
        "wss" | "https" => Some(443),
        _ => None,
    }
}

/// The answer to `GET /v1/transport`: `{"identity", "transport", "url"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportAnswer {
    /// The authenticated caller.
    #[serde(default)]
    pub identity: String,
    /// What the caller should use. `None` when reading an answer that names a transport this
    /// version does not know (a newer node) or none: the caller keeps its own default.
    #[serde(default, deserialize_with = "known_transport")]
    pub transport: Option<Transport>,
    /// Where to connect for it (e.g. `mqtts://city.example:8883`), if the node advertises
    /// one; `null` otherwise.
    #[serde(default)]
    pub url: Option<String>,
}

/// A transport name, or `None` for one this version does not know.
fn known_transport<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Transport>, D::Error> {
    Ok(Option::<String>::deserialize(d)?.and_then(|t| t.parse().ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_spelling() {
        for t in Transport::ALL {
            assert_eq!(t.to_string().parse::<Transport>(), Ok(t));
            assert_eq!(serde_json::to_string(&t).unwrap(), format!("\"{t}\""));
        }
        assert!("quic".parse::<Transport>().is_err());
    }

    #[test]
    fn answers() {
        let a = TransportAnswer {
            identity: "clinic".into(),
            transport: Some(Transport::Ws),
            url: None,
        };
        let text = serde_json::to_string(&a).unwrap();
        assert_eq!(text, r#"{"identity":"clinic","transport":"ws","url":null}"#);
        assert_eq!(serde_json::from_str::<TransportAnswer>(&text).unwrap(), a);
        let newer: TransportAnswer =
            serde_json::from_str(r#"{"identity":"c","transport":"quic","url":"x"}"#).unwrap();
        assert_eq!(newer.transport, None);
    }
}
