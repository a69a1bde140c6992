//! What the configuration file may contain: one type per TOML section, with the defaults
//! that make the smallest file (`[node] id = "js"`) work. `deny_unknown_fields` everywhere, so
//! a misspelt key is an error naming it. Validation that needs more than types lives in the
//! parent module's `build`.

use std::path::PathBuf;

use medlink_bridge::http::TransportChoice;
use medlink_bridge::journal::Durability;
use medlink_bridge::link::out::LinkTuning;
use medlink_bridge::route::Policy;
use medlink_broker::token::KeyAlg;
use medlink_broker::{ListenerKind, Role};
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
    /// This node's TLS certificate (needed by `tls`/`wss` listeners).
    pub tls: Option<TlsSection>,
    /// Identities used to live here with clear-text passwords; now refused with a pointer to
    /// the credentials file.
    #[serde(default, rename = "identity")]
    pub identities: Option<toml::Value>,
    /// Size, rate and connection limits.
    #[serde(default)]
    pub limits: LimitsSection,
    /// Tier link tuning.
    #[serde(default)]
    pub link: LinkSection,
    /// The Prometheus endpoint.
    #[serde(default)]
    pub metrics: MetricsSection,
    /// The HTTP API.
    pub http: Option<HttpSection>,
    /// Which transport callers are told to use.
    #[serde(default)]
    pub transport: TransportSection,
    /// Service groups served at this node.
    #[serde(default, rename = "service")]
    pub services: Vec<ServiceSection>,
    /// The file store.
    #[serde(default)]
    pub files: FilesSection,
    /// Keys that sign device tokens; re-read while the node runs (`config/reload.rs`).
    #[serde(default, rename = "token_key")]
    pub token_keys: Vec<TokenKeySection>,
}

/// `[[token_key]]`: a key that device tokens may be signed with, and what its tokens may
/// claim. Exactly one of `secret_file` (HS256) and `public_key_file` (ES256, EdDSA).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenKeySection {
    /// The key id tokens name in their header's `kid`.
    pub kid: String,
    /// `HS256`, `ES256` or `EdDSA`.
    pub alg: KeyAlg,
    /// HS256: the shared secret (the file's bytes, a trailing newline trimmed; at least 32
    /// bytes). Readable by the node's user only.
    pub secret_file: Option<PathBuf>,
    /// ES256 / EdDSA: the issuer's PEM public key (never a private key).
    pub public_key_file: Option<PathBuf>,
    /// Names its tokens may log in as: one name, or a prefix and a trailing `*` (default `*`,
    /// every name). Client names matching it are routable at this node.
    #[serde(default = "default_subjects")]
    pub subjects: String,
    /// Roles its tokens may claim (default `["client"]`); `node` and `admin` only if listed.
    #[serde(default = "default_token_roles")]
    pub roles: Vec<Role>,
}

fn default_subjects() -> String {
    "*".into()
}

fn default_token_roles() -> Vec<Role> {
    vec![Role::Client]
}

/// `[files]`: the node's file store (under the data directory, `files/`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FilesSection {
    /// The largest file, bytes (default 4 GiB).
    pub max_file_bytes: u64,
    /// The most the store may hold, bytes, uploads in progress included (default 100 GiB).
    pub quota_bytes: u64,
    /// How long a file is kept after a command last used it here, seconds (default 30 days).
    /// A file a waiting command names is kept however long it waits.
    pub retention_s: u64,
    /// Keep the files in an S3-compatible bucket instead of the data directory.
    pub s3: Option<S3Section>,
}

/// `[files.s3]`: an S3-compatible object store for the files.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Section {
    /// `https://host:port` of the service; absent: AWS itself.
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// Its region.
    #[serde(default = "default_region")]
    pub region: String,
    /// Key prefix of the files. Nodes given the same bucket and prefix share their files and
    /// copy nothing between them.
    #[serde(default = "default_prefix")]
    pub prefix: String,
    /// Access key id (with `secret_access_key_file`); absent: the environment's
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY`.
    pub access_key_id: Option<String>,
    /// File holding the secret access key (readable by the service user only).
    pub secret_access_key_file: Option<PathBuf>,
    /// Longest validity of a presigned download URL, seconds (default 15 minutes).
    #[serde(default = "default_presign_ttl")]
    pub presign_ttl_s: u64,
    /// Allow a clear-text `http://` endpoint on another host.
    #[serde(default)]
    pub insecure: bool,
}

fn default_region() -> String {
    "us-east-1".into()
}

fn default_prefix() -> String {
    "medlink-files".into()
}

fn default_presign_ttl() -> u64 {
    900
}

impl Default for FilesSection {
    fn default() -> Self {
        FilesSection {
            max_file_bytes: 4 << 30,
            quota_bytes: 100 << 30,
            retention_s: 30 * 24 * 3600,
            s3: None,
        }
    }
}

/// `[[service]]`: a name commands can be addressed to, served by any one of its members.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServiceSection {
    /// The name (`to.client` of commands for it), e.g. `consult.radiology`.
    pub name: String,
    /// Client identities at this node that serve it.
    pub members: Vec<String>,
    /// How long a member has to acknowledge before another member gets the command.
    #[serde(default = "default_service_ack_timeout_ms")]
    pub ack_timeout_ms: u64,
}

fn default_service_ack_timeout_ms() -> u64 {
    30_000
}

/// `[http]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpSection {
    /// `ip:port` of the HTTP API.
    pub addr: String,
    /// HTTPS with the `[tls]` certificate.
    #[serde(default)]
    pub tls: bool,
    /// Allow clear-text HTTP on a non-loopback address.
    #[serde(default)]
    pub insecure: bool,
    /// Longest long-poll wait, seconds (default 60); a longer `wait` is shortened to it.
    #[serde(default = "default_max_wait")]
    pub max_wait_s: u64,
}

fn default_max_wait() -> u64 {
    60
}

/// `[transport]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct TransportSection {
    /// `mqtt` (default), `ws` or `http`.
    pub default: Option<TransportChoice>,
    /// URL advertised for MQTT, e.g. `mqtts://city.example:8883`.
    pub mqtt_url: Option<String>,
    /// URL advertised for MQTT over WebSocket.
    pub ws_url: Option<String>,
    /// URL advertised for HTTP.
    pub http_url: Option<String>,
    /// Per identity (client or child node): `name = "http"`.
    pub identities: std::collections::HashMap<String, TransportChoice>,
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
    /// How long a command that ended failed, expired or rejected here is kept as a dead
    /// letter, seconds (default 30 days).
    #[serde(default = "default_dead_letter_retention_s")]
    pub dead_letter_retention_s: u64,
    /// `process` (default: survives kill -9) or `power` (fsync every group commit).
    #[serde(default)]
    pub durability: Durability,
    /// Truncate the journal's WAL file to nothing once no command has been written for this
    /// long (default 30 s). Not sooner: a WAL that has to grow again costs file-system
    /// journal commits that show as latency spikes, so a busy node keeps its WAL allocated.
    #[serde(default = "default_wal_idle_truncate_ms")]
    pub wal_idle_truncate_ms: u64,
    /// Disk reserved for the journal's WAL from the start, in MiB (default 128, at most 128;
    /// 0: none). Written with zeros once, so that commits write over blocks the file system
    /// already allocated instead of waiting for an allocation behind a checkpoint's `fsync`.
    /// A WAL cut back when idle keeps this much. Not made (WARN) on a disk that cannot spare
    /// twice as much.
    #[serde(default = "default_wal_reserve_mb")]
    pub wal_reserve_mb: u64,
    /// The credentials file (argon2id hashes, managed by `medlink passwd`). Without it no
    /// identity can log in.
    pub credentials: Option<PathBuf>,
}

fn default_dead_letter_retention_s() -> u64 {
    30 * 24 * 3600
}

fn default_wal_idle_truncate_ms() -> u64 {
    30_000
}

fn default_wal_reserve_mb() -> u64 {
    medlink_bridge::journal::WalSpace::default().reserve >> 20
}

/// `[[listener]]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenerSection {
    /// `tls`, `wss`, `tcp` or `ws`.
    pub kind: ListenerKind,
    /// `ip:port`.
    pub addr: String,
    /// Allow a clear-text (`tcp`/`ws`) listener on a non-loopback address.
    #[serde(default)]
    pub insecure: bool,
}

/// `[tls]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsSection {
    /// PEM certificate chain of this node.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// CA for client certificates; when set, a child node may log in with a certificate
    /// whose common name is its id instead of a password.
    pub client_ca: Option<PathBuf>,
}

/// `[parent]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParentSection {
    /// `mqtts://host:port`, `wss://host:port/path` (or clear-text `mqtt://`, `ws://`), tried
    /// in order.
    pub addresses: Vec<String>,
    /// The CA the parent's certificate must chain to (required for `mqtts`/`wss`).
    pub ca: Option<PathBuf>,
    /// Client certificate presented to the parent (with `key`).
    pub cert: Option<PathBuf>,
    /// Private key of `cert`.
    pub key: Option<PathBuf>,
    /// File holding this node's password at the parent (when not using a certificate).
    pub password_file: Option<PathBuf>,
    /// Allow clear-text addresses to hosts other than loopback.
    #[serde(default)]
    pub insecure: bool,
    /// The parent's HTTP API (`https://host:port`), where files referred to by commands move;
    /// by default the first `https://` (or `http://`) address above.
    #[serde(default)]
    pub files_url: Option<String>,
    /// Most bytes a second those file transfers may use, up and down together (0: no cap).
    /// Commands travel on the link itself and overtake them at any rate.
    #[serde(default)]
    pub files_max_rate: u64,
}

/// `[limits]`
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsSection {
    /// Largest command a client may publish, bytes (`params` included).
    pub max_payload: usize,
    /// Largest MQTT packet, bytes (link frames batch many commands).
    pub max_packet: usize,
    /// Most concurrent connections: MQTT, the HTTP API and the metrics endpoint share this
    /// budget.
    pub max_connections: usize,
    /// Most concurrent MQTT connections of one identity, and separately most long-polls and
    /// event streams it holds open over HTTP.
    pub max_connections_per_identity: usize,
    /// Sustained commands per second per client identity; 0 turns the limit off.
    pub rate_per_second: f64,
    /// Commands an idle client may send at once.
    pub rate_burst: f64,
    /// A client that does not read what is sent to it for this long is disconnected (MQTT,
    /// and HTTP answers and event streams alike).
    pub write_timeout_ms: u64,
    /// A new connection must finish TLS, WebSocket and CONNECT within this time; over HTTP,
    /// TLS and each request's headers, and a keep-alive connection is closed after this long
    /// idle.
    pub connect_timeout_ms: u64,
}

impl Default for LimitsSection {
    fn default() -> Self {
        LimitsSection {
            max_payload: 256 * 1024,
            max_packet: 8 * 1024 * 1024,
            max_connections: 19_000,
            max_connections_per_identity: 64,
            rate_per_second: 1000.0,
            rate_burst: 5000.0,
            write_timeout_ms: 30_000,
            connect_timeout_ms: 10_000,
        }
    }
}

/// `[metrics]`
#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct MetricsSection {
    /// `ip:port` to serve `/metrics` and `/healthz` on; absent: not served.
    pub addr: Option<String>,
    /// Serve over HTTPS with the `[tls]` certificate.
    pub tls: bool,
    /// Allow clear-text HTTP on a non-loopback address.
    pub insecure: bool,
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
