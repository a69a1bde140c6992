//! The node's TOML configuration file.
//!
//! Every section has defaults that work, so the smallest useful file is `[node] id = "js"`.
//! Unknown keys are errors (a typo must not silently fall back to a default), and every error
//! names the file and the key. Relative paths resolve against the file's directory, so a
//! config means the same thing whatever directory the node is started from.
//!
//! The file is read once at start, except its `[[token_key]]` sections (`tokens`), which
//! `reload` re-reads while the node runs (every second, and on SIGHUP).

mod file;
pub mod preflight;
pub mod reload;
pub mod tokens;

pub use file::*;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use medlink_bridge::envelope::{check_node_id, Limits};
use medlink_bridge::http::{TransportChoice, TransportPolicy};
use medlink_bridge::journal::WalSpace;
use medlink_bridge::link::out::LinkTuning;
use medlink_bridge::link::uplink::ParentAddr;
use medlink_bridge::node::{HttpSettings, NodeConfig};
use medlink_bridge::services::ServiceGroup;
use medlink_broker::throttle::ThrottleSettings;
use medlink_broker::{tls, CredentialSource, ListenerKind, ListenerSpec, RateSettings};

/// Checks the `[[service]]` sections.
fn services(sections: Vec<ServiceSection>) -> Result<Vec<ServiceGroup>, String> {
    let mut seen = std::collections::BTreeSet::new();
    let mut out = Vec::new();
    for (i, s) in sections.into_iter().enumerate() {
        let at = format!("service[{i}]");
        if !medlink_broker::identity::valid_name(&s.name) {
            return Err(format!(
                "{at}.name: '{}' must be 1-128 characters without + # / or control characters",
                s.name
            ));
        }
        if !seen.insert(s.name.clone()) {
            return Err(format!("{at}.name: service '{}' is declared twice", s.name));
        }
        if s.members.is_empty() {
            return Err(format!("{at}.members: a service needs at least one member"));
        }
        if let Some(bad) = s
            .members
            .iter()
            .find(|m| !medlink_broker::identity::valid_name(m))
        {
            return Err(format!(
                "{at}.members: '{bad}' is not a valid identity name"
            ));
        }
        if s.ack_timeout_ms == 0 {
            return Err(format!("{at}.ack_timeout_ms: must be positive"));
        }
        out.push(ServiceGroup {
            name: s.name,
            members: s.members,
            ack_timeout: Duration::from_millis(s.ack_timeout_ms),
        });
    }
    Ok(out)
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
    if let Err(problem) = check_node_id(&id) {
        return Err(format!("node.id: '{id}' {problem}"));
    }
    let data_dir = match data_dir {
        Some(d) => d.to_path_buf(),
        None => base.join(
            file.node
                .data_dir
                .unwrap_or_else(|| PathBuf::from(format!("data/{id}"))),
        ),
    };
    if file.identities.is_some() {
        return Err("identity: identities live in the credentials file now ([node] credentials = \"FILE\"); \
             add them with `medlink passwd --file FILE add NAME --role ROLE`"
            .into());
    }
    let tls = match &file.tls {
        None => None,
        Some(t) => Some(
            tls::server_config(
                &base.join(&t.cert),
                &base.join(&t.key),
                t.client_ca.as_ref().map(|c| base.join(c)).as_deref(),
            )
            .map_err(|e| format!("tls: {e}"))?,
        ),
    };
    let mut listeners = Vec::new();
    for (i, l) in file.listeners.iter().enumerate() {
        let addr: SocketAddr = l
            .addr
            .parse()
            .map_err(|e| format!("listener[{i}].addr: '{}' is not ip:port ({e})", l.addr))?;
        if l.kind.is_tls() && tls.is_none() {
            return Err(format!(
                "listener[{i}].kind: '{:?}' needs a [tls] section with cert and key",
                l.kind
            )
            .to_lowercase());
        }
        if !l.kind.is_tls() && !addr.ip().is_loopback() && !l.insecure {
            return Err(format!(
                "listener[{i}].kind: a clear-text listener on {addr} would carry medical data and \
                 passwords unencrypted; use tls/wss, or set insecure = true if a trusted network \
                 or a TLS-terminating proxy protects it"
            ));
        }
        listeners.push(ListenerSpec { kind: l.kind, addr });
    }
    if listeners.is_empty() {
        listeners.push(ListenerSpec {
            kind: ListenerKind::Tcp,
            addr: "127.0.0.1:1883".parse().expect("a valid literal address"),
        });
    }
    let files_s3 = file.files.s3.as_ref().map(|s| s3(s, base)).transpose()?;
    let parent = match file.parent {
        None => ParentParts::default(),
        Some(p) => parent(p, base)?,
    };
    let mut warnings = Vec::new();
    let client_ca = file.tls.as_ref().is_some_and(|t| t.client_ca.is_some());
    let credentials = match &file.node.credentials {
        Some(path) => {
            let path = base.join(path);
            // Loaded here too so a bad file is a configuration error at start.
            let loaded = medlink_broker::CredentialsFile::load(&path)
                .map_err(|e| format!("node.credentials: {e}"))?;
            warnings.extend(preflight::credentials(
                &loaded,
                &path.display().to_string(),
                client_ca,
            ));
            CredentialSource::File(path)
        }
        None => CredentialSource::Fixed(Default::default()),
    };
    let m = &file.metrics;
    let metrics_addr = match &m.addr {
        None => None,
        Some(a) => Some(
            a.parse::<SocketAddr>()
                .map_err(|e| format!("metrics.addr: '{a}' is not ip:port ({e})"))?,
        ),
    };
    if m.tls && tls.is_none() {
        return Err("metrics.tls: needs a [tls] section with cert and key".into());
    }
    if let Some(addr) = metrics_addr {
        if !m.tls && !m.insecure && !addr.ip().is_loopback() {
            return Err(format!(
                "metrics.addr: clear-text HTTP on {addr}; set metrics.tls = true, or insecure = true \
                 for a trusted management network"
            ));
        }
    }
    let http = match &file.http {
        None => None,
        Some(h) => {
            let addr: SocketAddr = h
                .addr
                .parse()
                .map_err(|e| format!("http.addr: '{}' is not ip:port ({e})", h.addr))?;
            if h.tls && tls.is_none() {
                return Err("http.tls: needs a [tls] section with cert and key".into());
            }
            if !h.tls && !h.insecure && !addr.ip().is_loopback() {
                return Err(format!(
                    "http.addr: clear-text HTTP on {addr} would carry medical data unencrypted; \
                     set http.tls = true, or insecure = true behind a TLS-terminating proxy"
                ));
            }
            if h.max_wait_s == 0 || h.max_wait_s > 3600 {
                return Err("http.max_wait_s: must be 1..=3600".into());
            }
            Some(HttpSettings {
                addr,
                tls: h.tls,
                max_wait: Duration::from_secs(h.max_wait_s),
            })
        }
    };
    let t = &file.transport;
    let mut urls = std::collections::HashMap::new();
    for (choice, url, key) in [
        (TransportChoice::Mqtt, &t.mqtt_url, "mqtt_url"),
        (TransportChoice::Ws, &t.ws_url, "ws_url"),
        (TransportChoice::Http, &t.http_url, "http_url"),
    ] {
        if let Some(u) = url {
            let parsed = url::Url::parse(u)
                .map_err(|e| format!("transport.{key}: '{u}' is not a URL ({e})"))?;
            warnings.extend(preflight::transport_url(
                choice,
                &parsed,
                &listeners,
                http.as_ref(),
            ));
            urls.insert(choice, u.clone());
        }
    }
    let transport = TransportPolicy {
        default: t.default.unwrap_or(TransportChoice::Mqtt),
        per_identity: t.identities.clone(),
        urls,
    };
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
    if l.max_connections_per_identity == 0 {
        return Err("limits.max_connections_per_identity: must be positive".into());
    }
    if !(l.rate_per_second >= 0.0 && l.rate_per_second.is_finite()) {
        return Err("limits.rate_per_second: must be 0 (off) or a positive number".into());
    }
    if l.rate_per_second > 0.0 && !(l.rate_burst >= 1.0 && l.rate_burst.is_finite()) {
        return Err("limits.rate_burst: must be at least 1".into());
    }
    if l.write_timeout_ms == 0 {
        return Err("limits.write_timeout_ms: must be positive".into());
    }
    if l.connect_timeout_ms == 0 {
        return Err("limits.connect_timeout_ms: must be positive".into());
    }
    if file.node.wal_reserve_mb > WalSpace::MAX_RESERVE >> 20 {
        return Err(format!(
            "node.wal_reserve_mb: must be at most {} (the WAL is rewound past that)",
            WalSpace::MAX_RESERVE >> 20
        ));
    }
    let k = &file.link;
    if k.batch == 0 || k.window == 0 {
        return Err("link.batch and link.window: must be positive".into());
    }
    if k.dead_after_ms <= k.ping_every_ms {
        return Err("link.dead_after_ms: must be longer than link.ping_every_ms".into());
    }
    let services = services(file.services)?;
    let token_keys = tokens::keys(&file.token_keys, base)?;
    Ok(NodeConfig {
        warnings,
        tokens: Arc::new(medlink_broker::token::TokenKeys::new(&id, token_keys)),
        services,
        id,
        data_dir,
        listeners,
        parents: parent.addresses,
        parent_password: parent.password,
        parent_tls: parent.tls,
        parent_files_url: parent.files_url,
        parent_files_max_rate: parent.files_max_rate,
        credentials,
        tls,
        max_connections_per_identity: l.max_connections_per_identity,
        rate: RateSettings {
            per_second: l.rate_per_second,
            burst: l.rate_burst,
        },
        write_timeout: Duration::from_millis(l.write_timeout_ms),
        connect_timeout: Duration::from_millis(l.connect_timeout_ms),
        throttle: ThrottleSettings::default(),
        metrics_addr,
        metrics_tls: m.tls,
        http,
        transport,
        policy: file.node.policy,
        audit: file.node.audit,
        dead_letter_retention: Duration::from_secs(file.node.dead_letter_retention_s),
        files: medlink_bridge::files::FileLimits {
            max_file: file.files.max_file_bytes,
            quota: file.files.quota_bytes,
        },
        files_retention: Duration::from_secs(file.files.retention_s),
        files_s3,
        durability: file.node.durability,
        wal: WalSpace {
            reserve: file.node.wal_reserve_mb << 20,
            idle_truncate: Duration::from_millis(file.node.wal_idle_truncate_ms),
        },
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
    })
}

/// The `[parent]` section: addresses, password, TLS client settings.
#[allow(clippy::type_complexity)]
/// `[files.s3]`, checked.
fn s3(s: &S3Section, base: &Path) -> Result<medlink_bridge::files::S3Settings, String> {
    if let Some(endpoint) = &s.endpoint {
        let url = url::Url::parse(endpoint)
            .map_err(|e| format!("files.s3.endpoint: '{endpoint}' is not a URL ({e})"))?;
        let loopback = url.host_str().is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
        match url.scheme() {
            "https" => {}
            "http" if loopback || s.insecure => {}
            "http" => {
                return Err(format!(
                    "files.s3.endpoint: '{endpoint}' is clear text to another host; use https://, or set files.s3.insecure = true"
                ))
            }
            other => return Err(format!("files.s3.endpoint: scheme '{other}' (use https://)")),
        }
    }
    if s.bucket.is_empty() {
        return Err("files.s3.bucket: empty".into());
    }
    let credentials = match (&s.access_key_id, &s.secret_access_key_file) {
        (Some(id), Some(file)) => {
            let path = base.join(file);
            let secret = std::fs::read_to_string(&path)
                .map_err(|e| format!("files.s3.secret_access_key_file: {}: {e}", path.display()))?;
            Some((id.clone(), secret.trim().to_string()))
        }
        (None, None) => None,
        _ => {
            return Err(
                "files.s3.access_key_id: give it with secret_access_key_file, or neither (the environment's AWS_* then)"
                    .into(),
            )
        }
    };
    if s.presign_ttl_s == 0 || s.presign_ttl_s > 7 * 24 * 3600 {
        return Err("files.s3.presign_ttl_s: 1..=604800 (S3 presigns for at most 7 days)".into());
    }
    Ok(medlink_bridge::files::S3Settings {
        endpoint: s.endpoint.clone(),
        bucket: s.bucket.clone(),
        region: s.region.clone(),
        prefix: s.prefix.clone(),
        credentials,
        presign_ttl: Duration::from_secs(s.presign_ttl_s),
    })
}

/// `[parent]`, checked: how to reach the parent.
#[derive(Default)]
struct ParentParts {
    addresses: Vec<ParentAddr>,
    password: Option<String>,
    tls: Option<Arc<rustls::ClientConfig>>,
    files_url: Option<String>,
    files_max_rate: Option<u64>,
}

fn parent(p: ParentSection, base: &Path) -> Result<ParentParts, String> {
    if p.addresses.is_empty() {
        return Err(
            "parent.addresses: give at least one address, or remove [parent] at the root".into(),
        );
    }
    let mut parents = Vec::new();
    for (i, a) in p.addresses.iter().enumerate() {
        let addr = parse_parent(a).map_err(|e| format!("parent.addresses[{i}]: {e}"))?;
        if !addr.is_tls() && !p.insecure && !is_loopback_host(&addr) {
            return Err(format!(
                "parent.addresses[{i}]: '{a}' is clear text to another host; use mqtts:// or wss://, \
                 or set parent.insecure = true"
            ));
        }
        parents.push(addr);
    }
    let tls = match &p.ca {
        Some(ca) => {
            let identity = match (&p.cert, &p.key) {
                (Some(c), Some(k)) => Some((base.join(c), base.join(k))),
                (None, None) => None,
                _ => return Err("parent.cert: give both cert and key, or neither".into()),
            };
            let config = tls::client_config(
                &base.join(ca),
                identity.as_ref().map(|(c, k)| (c.as_path(), k.as_path())),
            )
            .map_err(|e| format!("parent.ca: {e}"))?;
            Some(Arc::new(config))
        }
        None if parents.iter().any(ParentAddr::is_tls) => {
            return Err("parent.ca: required to verify the parent over mqtts/wss".into())
        }
        None => None,
    };
    let password = match &p.password_file {
        Some(f) => {
            let path = base.join(f);
            let text = std::fs::read_to_string(&path)
                .map_err(|e| format!("parent.password_file: {}: {e}", path.display()))?;
            let pw = text.trim_end_matches(['\n', '\r']).to_string();
            if pw.is_empty() {
                return Err(format!("parent.password_file: {} is empty", path.display()));
            }
            Some(pw)
        }
        None => None,
    };
    if password.is_none() && p.cert.is_none() {
        return Err(
            "parent: give password_file, or cert and key for a certificate login at the parent"
                .into(),
        );
    }
    let files_url = match &p.files_url {
        None => None,
        Some(u) => match parse_parent(u) {
            Ok(ParentAddr::Http { url }) => {
                if !url.starts_with("https:")
                    && !p.insecure
                    && !is_loopback_host(&ParentAddr::Http { url: url.clone() })
                {
                    return Err(format!(
                        "parent.files_url: '{u}' is clear text to another host; use https://, or set parent.insecure = true"
                    ));
                }
                Some(url)
            }
            Ok(_) => return Err(format!("parent.files_url: '{u}' is not an http(s):// URL")),
            Err(e) => return Err(format!("parent.files_url: {e}")),
        },
    };
    Ok(ParentParts {
        addresses: parents,
        password,
        tls,
        files_url,
        files_max_rate: (p.files_max_rate > 0).then_some(p.files_max_rate),
    })
}

fn is_loopback_host(addr: &ParentAddr) -> bool {
    let host = match addr {
        ParentAddr::Tcp { host, .. } | ParentAddr::Tls { host, .. } => host.clone(),
        ParentAddr::Ws { url, .. } | ParentAddr::Wss { url, .. } | ParentAddr::Http { url } => {
            url::Url::parse(url)
                .ok()
                .and_then(|u| u.host_str().map(str::to_string))
                .unwrap_or_default()
        }
    };
    host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Parses `mqtts://host:port`, `wss://host:port/path`, `mqtt://host:port` (also `tcp://`)
/// or `ws://host:port/path`.
pub fn parse_parent(addr: &str) -> Result<ParentAddr, String> {
    let url = url::Url::parse(addr).map_err(|e| format!("'{addr}' is not a URL ({e})"))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("'{addr}' has no host"))?
        .to_string();
    let port = url
        .port()
        .or_else(|| medlink_wire::default_port(url.scheme()))
        .unwrap_or_default();
    match url.scheme() {
        "mqtt" | "tcp" => Ok(ParentAddr::Tcp { host, port }),
        "ws" => Ok(ParentAddr::Ws {
            url: addr.to_string(),
            port,
        }),
        "mqtts" | "ssl" => {
            if !tls::valid_server_name(&host) {
                return Err(format!(
                    "'{addr}': '{host}' cannot be checked against a certificate"
                ));
            }
            Ok(ParentAddr::Tls { host, port })
        }
        "wss" => Ok(ParentAddr::Wss {
            url: addr.to_string(),
            port,
        }),
        "http" | "https" => Ok(ParentAddr::Http {
            url: addr.trim_end_matches('/').to_string(),
        }),
        other => Err(format!(
            "'{addr}': scheme '{other}' is not mqtts, wss, https, mqtt, tcp, ws or http"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use medlink_bridge::route::Policy;

    fn parse_err(r: Result<NodeConfig, String>) -> String {
        match r {
            Ok(_) => panic!("accepted"),
            Err(e) => e,
        }
    }

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
        assert_eq!(c.wal.reserve, 128 << 20);
    }

    #[test]
    fn file_store_settings_are_checked_and_name_the_key() {
        let c = parse("[node]\nid = \"js\"\n").unwrap();
        assert!(c.files_s3.is_none());
        assert_eq!(c.files_retention, Duration::from_secs(30 * 24 * 3600));
        let e = parse("[node]\nid = \"js\"\n[files.s3]\nbucket = \"b\"\nregion_name = \"x\"\n")
            .unwrap_err();
        assert!(e.contains("region_name"), "{e}");
        let e = parse(
            "[node]\nid = \"js\"\n[files.s3]\nbucket = \"b\"\nendpoint = \"http://10.0.0.9:9000\"\n",
        )
        .unwrap_err();
        assert!(e.starts_with("files.s3.endpoint"), "{e}");
        let e = parse("[node]\nid = \"js\"\n[files.s3]\nbucket = \"b\"\naccess_key_id = \"k\"\n")
            .unwrap_err();
        assert!(e.starts_with("files.s3.access_key_id"), "{e}");
        let c = parse(
            "[node]\nid = \"js\"\n[files.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n",
        )
        .unwrap();
        let s3 = c.files_s3.unwrap();
        assert_eq!(
            (s3.prefix.as_str(), s3.region.as_str()),
            ("medlink-files", "us-east-1")
        );
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "secret\n").unwrap();
        let parent = |files_url: &str| {
            parse(&format!(
                "[node]\nid = \"js.a\"\n[parent]\naddresses = [\"mqtt://127.0.0.1:1\"]\npassword_file = \"{}\"\nfiles_url = \"{files_url}\"\n",
                pw.display()
            ))
        };
        let e = parse_err(parent("mqtt://127.0.0.1:2"));
        assert!(e.starts_with("parent.files_url"), "{e}");
        let e = parse_err(parent("http://10.1.1.1:8443"));
        assert!(
            e.starts_with("parent.files_url") && e.contains("clear text"),
            "{e}"
        );
        let c = parent("https://city.example:8443").unwrap();
        assert_eq!(
            c.parent_files_url.as_deref(),
            Some("https://city.example:8443")
        );
    }

    #[test]
    fn errors_name_the_key() {
        let e = parse("[node]\nid = \"js\"\ncolour = 1\n").unwrap_err();
        assert!(e.contains("colour"), "{e}");
        let e = parse("[node]\nid = \"js..x\"\n").unwrap_err();
        assert!(e.starts_with("node.id"), "{e}");
        let e = parse("[node]\nid = \"js\"\nwal_reserve_mb = 129\n").unwrap_err();
        assert!(e.starts_with("node.wal_reserve_mb"), "{e}");
        let e = parse("[node]\nid = \"js\"\npolicy = \"fastest\"\n").unwrap_err();
        assert!(e.contains("fastest") && e.contains("policy"), "{e}");
        let e = parse("[node]\nid = \"js\"\n[[listener]]\nkind = \"tcp\"\naddr = \"nowhere\"\n")
            .unwrap_err();
        assert!(e.starts_with("listener[0].addr"), "{e}");
        let e = parse("[node]\nid = \"js.a\"\n[parent]\naddresses = [\"ftp://x\"]\n").unwrap_err();
        assert!(e.starts_with("parent.addresses[0]"), "{e}");
        let e = parse("[node]\nid = \"js.a\"\n[parent]\naddresses = [\"mqtt://127.0.0.1:1\"]\n")
            .unwrap_err();
        assert!(
            e.starts_with("parent:") && e.contains("password_file"),
            "{e}"
        );
        let e = parse("[node]\nid = \"js\"\n[[listener]]\nkind = \"ws\"\naddr = \"10.0.0.1:80\"\n")
            .unwrap_err();
        assert!(e.starts_with("listener[0].kind"), "{e}");
        let ok = parse(
            "[node]\nid = \"js\"\n[[listener]]\nkind = \"ws\"\naddr = \"10.0.0.1:80\"\ninsecure = true\n",
        );
        assert!(ok.is_ok());
    }
}
