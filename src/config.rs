//! The node's TOML configuration file.
//!
//! Every section has defaults that work, so the smallest useful file is `[node] id = "js"`.
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error
//! names the file and the key. Relative paths resolve against the file's directory, so a
//! config means the same thing whatever directory the node is started from.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use medlink_bridge::envelope::{valid_node_id, Limits};
use medlink_bridge::journal::Durability;
use medlink_bridge::links::LinkTuning;
use medlink_bridge::node::NodeConfig;
use medlink_bridge::route::Policy;
use medlink_bridge::uplink::ParentAddr;
use medlink_broker::identity::valid_name;
use medlink_broker::{Credentials, ListenerKind, ListenerSpec, Role, RouterSettings};
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct File {
    /// Who this node is.
    pub node: NodeSection,
    /// MQTT listeners (default: TCP on 127.0.0.1:1883).
    #[serde(default, rename = "listener")]
    pub listeners: Vec<ListenerSection>,
    /// The parent; absent at the root.
    pub parent: Option<ParentSection>,
    /// Identities allowed to connect.
    #[serde(default, rename = "identity")]
    pub identities: Vec<IdentitySection>,
    /// Size and connection limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Tier link tuning.
    #[serde(default)]
    pub link: LinkSection,
}

/// `[node]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSection {
    /// Dotted id from the root, e.g. `js.nj.gulou`.
    pub id: String,
    /// Journal directory (default `data/<id>` next to the config file).
    pub data_dir: Option<PathBuf>,
    /// `shortest` (default) or `via_root`.
    #[serde(default)]
    pub policy: Policy,
    /// Audit every routed command here too (the root always audits).
    #[serde(default)]
    pub audit: bool,
    /// `process` (default: survives kill -9) or `power` (fsync every group commit).
    #[serde(default)]
    pub durability: Durability,
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// `tcp` or `ws`.
    pub kind: ListenerKind,
    /// `ip:port`.
    pub addr: String,
}

/// `[parent]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentSection {
    /// `mqtt://host:port` or `ws://host:port/path`, tried in order.
    pub addresses: Vec<String>,
    /// This node's password at the parent.
    pub password: String,
}

/// `[[identity]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdentitySection {
    /// Client name, or a child node's id.
    pub name: String,
    /// Password.
    pub password: String,
    /// `client`, `node` or `admin`.
    pub role: Role,
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest command a client may publish, bytes.
    pub max_payload: usize,
    /// Largest MQTT packet, bytes (link frames batch many commands).
    pub max_packet: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_payload: 256 * 1024,
            max_packet: 8 * 1024 * 1024,
            max_connections: 19_000,
        }
    }
}

/// `[link]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LinkSection {
    /// Most commands per frame.
    pub batch: usize,
    /// Most commands in flight per link.
    pub window: u64,
    /// Resend after this long without an ack.
    pub resend_after_ms: u64,
    /// Heartbeat period.
    pub ping_every_ms: u64,
    /// Declare the link down after this long without hearing the peer.
    pub dead_after_ms: u64,
}

impl Default for LinkSection {
    fn default() -> Self {
        let t = LinkTuning::default();
        LinkSection {
            batch: t.batch,
            window: t.window,
            resend_after_ms: t.resend_after.as_millis() as u64,
            ping_every_ms: t.ping_every.as_millis() as u64,
            dead_after_ms: t.dead_after.as_millis() as u64,
        }
    }
}

/// A configuration error, naming the file and the key.
#[derive(Debug, thiserror::Error)]
#[error("{file}: {message}")]
pub struct ConfigError {
    /// The file.
    pub file: String,
    /// What is wrong, starting with the key.
    pub message: String,
}

/// Reads and validates `path`; `data_dir` overrides `[node] data_dir`.
pub fn load(path: &Path, data_dir: Option<&Path>) -> Result<NodeConfig, ConfigError> {
    let err = |message: String| ConfigError {
        file: path.display().to_string(),
        message,
    };
    let text = std::fs::read_to_string(path).map_err(|e| err(format!("cannot read: {e}")))?;
    let file: File = toml::from_str(&text).map_err(|e| err(e.to_string().trim().to_string()))?;
    let base = path.parent().unwrap_or(Path::new("."));
    build(file, base, data_dir).map_err(err)
}

/// Validates a parsed file into a node configuration.
pub fn build(file: File, base: &Path, data_dir: Option<&Path>) -> Result<NodeConfig, String> {
    let id = file.node.id;
    if !valid_node_id(&id) {
        return Err(format!(
            "node.id: '{id}' is not a dotted node id (segments of A-Z a-z 0-9 _ -, e.g. js.nj.gulou)"
        ));
    }
    let data_dir = match data_dir {
        Some(d) => d.to_path_buf(),
        None => base.join(
            file.node
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("data/{id}"))),
        ),
    };
    let mut listeners = Vec::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let addr: SocketAddr = l
            .addr
            .parse()
            .map_err(|e| format!("listener[{i}].addr: '{}' is not ip:port ({e})", l.addr))?;
        listeners.push(ListenerSpec { kind: l.kind, addr });
    }
    if listeners.is_empty() {
        listeners.push(ListenerSpec {
            kind: ListenerKind::Tcp,
            addr: "127.0.0.1:1883".parse().expect("a valid literal address"),
        });
    }
    let (parents, parent_password) = match file.parent {
        None => (Vec::new(), String::new()),
        Some(p) => {
            if p.addresses.is_empty() {
                return Err(
                    "parent.addresses: give at least one address, or remove [parent] at the root"
                        .into(),
                );
            }
            let mut parents = Vec::new();
            for (i, a) in p.addresses.iter().enumerate() {
                parents.push(parse_parent(a).map_err(|e| format!("parent.addresses[{i}]: {e}"))?);
            }
            (parents, p.password)
        }
    };
    let mut credentials = Credentials::default();
    for (i, ident) in file.identities.iter().enumerate() {
        if !valid_name(&ident.name) {
            return Err(format!(
                "identity[{i}].name: '{}' must be 1-128 characters without + # / or control characters",
                ident.name
            ));
        }
        if credentials.role(&ident.name).is_some() {
            return Err(format!(
                "identity[{i}].name: '{}' is listed twice",
                ident.name
            ));
        }
        if ident.role == Role::Node && !valid_node_id(&ident.name) {
            return Err(format!(
                "identity[{i}].name: a node identity must be its dotted node id"
            ));
        }
        if ident.password.is_empty() {
            return Err(format!("identity[{i}].password: must not be empty"));
        }
        credentials.insert(&ident.name, &ident.password, ident.role);
    }
    let l = &file.limits;
    // A frame carries at least one envelope (payload plus stamps and trail) next to half a
    // packet of others, so the payload must leave room for that in every hop's packet limit.
    if l.max_payload == 0 || l.max_payload + 64 * 1024 > l.max_packet / 2 {
        return Err(format!(
            "limits.max_payload: must be positive and at most limits.max_packet / 2 - 64 KiB ({} here)",
            (l.max_packet / 2).saturating_sub(64 * 1024)
        ));
    }
    if l.max_connections == 0 {
        return Err("limits.max_connections: must be positive".into());
    }
    let k = &file.link;
    if k.batch == 0 || k.window == 0 {
        return Err("link.batch and link.window: must be positive".into());
    }
    if k.dead_after_ms <= k.ping_every_ms {
        return Err("link.dead_after_ms: must be longer than link.ping_every_ms".into());
    }
    Ok(NodeConfig {
        id,
        data_dir,
        listeners,
        parents,
        parent_password,
        credentials,
        policy: file.node.policy,
        audit: file.node.audit,
        durability: file.node.durability,
        limits: Limits {
            max_payload: l.max_payload,
        },
        max_packet_size: l.max_packet,
        max_connections: l.max_connections,
        tuning: LinkTuning {
            batch: k.batch,
            batch_bytes: (l.max_packet / 2).max(64 * 1024),
            window: k.window,
            resend_after: Duration::from_millis(k.resend_after_ms),
            ping_every: Duration::from_millis(k.ping_every_ms),
            dead_after: Duration::from_millis(k.dead_after_ms),
        },
        router: RouterSettings {
            max_connections: l.max_connections + 16,
            ..RouterSettings::default()
        },
    })
}

/// Parses `mqtt://host:port`, `tcp://host:port` or `ws://host:port/path`.
pub fn parse_parent(addr: &str) -> Result<ParentAddr, String> {
    let url = url::Url::parse(addr).map_err(|e| format!("'{addr}' is not a URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("'{addr}' has no host"))?
        .to_string();
    match url.scheme() {
        "mqtt" | "tcp" => Ok(ParentAddr::Tcp {
            host,
            port: url.port().unwrap_or(1883),
        }),
        "ws" => {
            let port = url.port().unwrap_or(80);
            Ok(ParentAddr::Ws {
                url: addr.to_string(),
                port,
            })
        }
        other => Err(format!("'{addr}': scheme '{other}' is not mqtt, tcp or ws")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<NodeConfig, String> {
        let file: File = toml::from_str(text).map_err(|e| e.to_string())?;
        build(file, Path::new("/etc/medlink"), None)
    }

    #[test]
    fn minimal_file_has_working_defaults() {
        let c = parse("[node]\nid = \"js\"\n").unwrap();
        assert_eq!(c.id, "js");
        assert_eq!(c.data_dir, PathBuf::from("/etc/medlink/data/js"));
        assert!(c.parents.is_empty());
        assert_eq!(c.listeners.len(), 1);
        assert_eq!(c.policy, Policy::Shortest);
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[node]\nid = \"js\"\ncolour = 1\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse("[node]\nid = \"js..x\"\n").unwrap_err();
        assert!(e.starts_with("node.id"), "{e}");
        let e = parse("[node]\nid = \"js\"\npolicy = \"fastest\"\n").unwrap_err();
        assert!(e.contains("fastest") && e.contains("policy"), "{e}");
        let e = parse("[node]\nid = \"js\"\n[[listener]]\nkind = \"tcp\"\naddr = \"nowhere\"\n")
            .unwrap_err();
        assert!(e.starts_with("listener[0].addr"), "{e}");
        let e =
            parse("[node]\nid = \"js.a\"\n[parent]\naddresses = [\"ftp://x\"]\npassword = \"p\"\n")
                .unwrap_err();
        assert!(e.starts_with("parent.addresses[0]"), "{e}");
        let e = parse(
            "[node]\nid = \"js\"\n[[identity]]\nname = \"a/b\"\npassword = \"p\"\nrole = \"client\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("identity[0].name"), "{e}");
    }
}
