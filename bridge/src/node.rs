//! One running node: broker front-end, dispatcher thread, and (below the root) the uplink.
//!
//! Start order matters for custody: the data directory is locked and every port bound first
//! (a port in use or a second process on the same directory fails before the journal is
//! touched), then the journal opens (a node that cannot persist must not accept anything),
//! then the dispatcher, and only then do the listeners start accepting. Shutdown
//! runs the other way: stop accepting and close connections, let the dispatcher finish the
//! round it is in, then close the uplink.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use medlink_broker::rate::RateLimiter;
use medlink_broker::throttle::ThrottleSettings;
use medlink_broker::token::TokenKeys;
use medlink_broker::{
    Authenticator, BrokerHandle, BrokerMetrics, ConnectionBudget, CredentialSource, Fanout,
    FrontEndSettings, ListenerKind, ListenerSpec, RateSettings, Role,
};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use crate::datadir::DataDir;
use crate::dispatcher::{Dispatcher, DispatcherConfig, Inputs};
use crate::envelope::Limits;
use crate::http::serve::HttpLimits;
use crate::http::{ApiState, TransportPolicy};
use crate::journal::{Durability, Journal};
use crate::link::out::LinkTuning;
use crate::link::uplink::{self, ParentAddr, UplinkConfig};
use crate::route::{within, Policy, Topology};
use crate::router::Router;
use crate::services::ServiceGroup;
use crate::stats::Stats;

/// How often the WAL is checkpointed into the database. Each checkpoint ends in an fsync, and
/// on ext4 a commit's WAL write can wait for it: that, not the dispatcher, is what sets the
/// 4-tier p99 when all four nodes share one disk (measured at 1,000 commands/s: rounds take
/// 0.14 ms at p50 and 0.75 ms at p99, but single commits stall 20-130 ms during checkpoints;
/// p50/p99 1.9/3.8 ms with the journals on tmpfs). Checkpointing every 100 ms gave p99 67 ms,
/// every 500 ms 26 ms, every 10 s 137 ms (longer, rarer stalls): 500 ms stays. BENCHMARKS.md
/// has the figures and the next steps.
const CHECKPOINT_EVERY: Duration = Duration::from_millis(500);

/// Everything a node needs to run (built from the TOML file by the `medlink` binary).
#[derive(Clone)]
pub struct NodeConfig {
    /// Dotted id, e.g. `js.nj.gulou`.
    pub id: String,
    /// Where the journal lives.
    pub data_dir: PathBuf,
    /// MQTT listeners.
    pub listeners: Vec<ListenerSpec>,
    /// Parent addresses; empty at the root.
    pub parents: Vec<ParentAddr>,
    /// This node's password at its parent (`None`: it logs in with its client certificate).
    pub parent_password: Option<String>,
    /// TLS client settings for `mqtts`/`wss` parents.
    pub parent_tls: Option<Arc<rustls::ClientConfig>>,
    /// Identities that may connect here.
    pub credentials: CredentialSource,
    /// Device-token keys (`[[token_key]]`), shared with whatever reloads them.
    pub tokens: Arc<TokenKeys>,
    /// Server TLS settings for `tls`/`wss` listeners.
    pub tls: Option<Arc<rustls::ServerConfig>>,
    /// Most concurrent connections of one identity.
    pub max_connections_per_identity: usize,
    /// Per-identity command rate.
    pub rate: RateSettings,
    /// A client that does not read for this long is dropped.
    pub write_timeout: Duration,
    /// Time a new connection has for TLS, WebSocket and CONNECT.
    pub connect_timeout: Duration,
    /// Failed-login throttle.
    pub throttle: ThrottleSettings,
    /// Where to serve `/metrics`; `None`: not served.
    pub metrics_addr: Option<SocketAddr>,
    /// Serve `/metrics` over HTTPS with the node's certificate.
    pub metrics_tls: bool,
    /// The HTTP API, if served.
    pub http: Option<HttpSettings>,
    /// Which transport callers are told to use (`GET /v1/transport`).
    pub transport: TransportPolicy,
    /// Routing policy for commands sent from here.
    pub policy: Policy,
    /// Audit every routed envelope (always on at the root).
    pub audit: bool,
    /// How long dead letters are kept after their command ended.
    pub dead_letter_retention: Duration,
    /// Limits of the file store (`<data dir>/files`).
    pub files: crate::files::FileLimits,
    /// How long a file is kept after a command last used it here.
    pub files_retention: Duration,
    /// The bucket holding the files, when not the data directory (`[files.s3]`).
    pub files_s3: Option<crate::files::S3Settings>,
    /// The parent's HTTP API, where files move (`[parent] files_url`; by default the first
    /// `http(s)://` parent address).
    pub parent_files_url: Option<String>,
    /// Most bytes a second file transfers to and from the parent may use (`None`: no cap).
    pub parent_files_max_rate: Option<u64>,
    /// Commit durability.
    pub durability: Durability,
    /// The WAL's reserved space, and when to give back what is beyond it.
    pub wal: crate::journal::WalSpace,
    /// Submission limits.
    pub limits: Limits,
    /// Largest MQTT packet.
    pub max_packet_size: usize,
    /// Most concurrent connections.
    pub max_connections: usize,
    /// Link tuning.
    pub tuning: LinkTuning,
    /// Service groups declared at this node.
    pub services: Vec<ServiceGroup>,
    /// What the configuration check found that will not work although the node can start
    /// (see the binary's `config/preflight.rs`); each is logged at WARN when the node starts.
    pub warnings: Vec<String>,
}

impl std::fmt::Debug for NodeConfig {
    /// Names the node only: the config holds the parent password and TLS keys.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeConfig")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

/// Where and how the HTTP API is served.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Address to bind.
    pub addr: SocketAddr,
    /// HTTPS with the node's certificate.
    pub tls: bool,
    /// Longest long-poll wait a client may ask for.
    pub max_wait: Duration,
}

/// Why a node could not start.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    /// The data directory is unusable or locked by another process.
    #[error("{0}")]
    Locked(#[from] crate::datadir::DataDirError),
    /// The data directory or journal could not be opened.
    #[error("journal {path}: {source}")]
    Journal {
        /// Journal path.
        path: PathBuf,
        /// Cause.
        source: rusqlite::Error,
    },
    /// A filesystem problem.
    #[error("data dir {path}: {source}")]
    DataDir {
        /// Directory.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// A listener could not bind.
    #[error("{0}")]
    Listen(std::io::Error),
    /// The dispatcher thread could not be started.
    #[error("dispatcher: {0}")]
    Dispatcher(String),
    /// The credentials file could not be loaded.
    #[error("credentials: {0}")]
    Credentials(String),
}

/// A running node.
pub struct Node {
    /// Bound listener addresses.
    pub bound: Vec<(ListenerKind, std::net::SocketAddr)>,
    /// Where `/metrics` is served, if it is.
    pub metrics_addr: Option<SocketAddr>,
    /// Where the HTTP API is served, if it is.
    pub http_addr: Option<SocketAddr>,
    /// Counters.
    pub stats: Stats,
    /// Front-end counters.
    pub broker_metrics: Arc<BrokerMetrics>,
    /// Logins (the credentials file and token keys in force).
    pub auth: Arc<Authenticator>,
    broker: Option<BrokerHandle>,
    shutdown: watch::Sender<bool>,
    /// The dispatcher's thread, which also runs the uplink and child nodes' connections.
    dispatcher: Option<std::thread::JoinHandle<()>>,
    checkpointer: Option<crate::journal::Checkpointer>,
    // Last: the directory stays locked until everything above has closed.
    _data_dir: DataDir,
}

/// Every port of a node, bound before the journal opens.
struct Ports {
    mqtt: Vec<(ListenerKind, tokio::net::TcpListener)>,
    http: Option<tokio::net::TcpListener>,
    metrics: Option<tokio::net::TcpListener>,
}

impl Ports {
    async fn bind(cfg: &NodeConfig) -> std::io::Result<Ports> {
        let mqtt = BrokerHandle::bind(&cfg.listeners).await?;
        let http = match &cfg.http {
            Some(h) => Some(crate::http::serve::bind(h.addr, "http").await?),
            None => None,
        };
        let metrics = match cfg.metrics_addr {
            Some(addr) => Some(crate::http::serve::bind(addr, "metrics").await?),
            None => None,
        };
        Ok(Ports {
            mqtt,
            http,
            metrics,
        })
    }
}

impl Node {
    /// Opens the journal and starts everything.
    pub async fn start(cfg: NodeConfig) -> Result<Node, NodeError> {
        for warning in &cfg.warnings {
            tracing::warn!("configuration: {warning}");
        }
        let data_dir = DataDir::open(&cfg.data_dir)?;
        let ports = Ports::bind(&cfg).await.map_err(NodeError::Listen)?;
        let path = data_dir.journal()?;
        let journal = Journal::open(&path, cfg.durability)
            .and_then(|mut j| j.keep_custody_log(&path, cfg.durability).map(|()| j))
            .and_then(|mut j| j.set_owner(&cfg.id).map(|()| j))
            .map_err(|source| NodeError::Journal {
                path: path.clone(),
                source,
            })?;
        let checkpointer =
            Journal::spawn_checkpointer(&path, CHECKPOINT_EVERY, cfg.wal).map_err(|source| {
                NodeError::Journal {
                    path: path.clone(),
                    source,
                }
            })?;
        let broker_metrics = Arc::new(BrokerMetrics::default());
        let auth = Arc::new(
            Authenticator::new(
                cfg.credentials.clone(),
                cfg.throttle,
                broker_metrics.clone(),
            )
            .map_err(NodeError::Credentials)?
            .with_tokens(cfg.tokens.clone()),
        );
        let auth_handle = auth.clone();
        let credentials = auth.credentials();
        let topology = Topology {
            me: cfg.id.clone(),
            has_parent: !cfg.parents.is_empty(),
            children: credentials
                .names_with_role(Role::Node)
                .filter(|n| *n != cfg.id && within(&cfg.id, n))
                .map(str::to_string)
                .collect(),
            clients: credentials
                .names_with_role(Role::Client)
                .map(str::to_string)
                .collect(),
            services: cfg.services.iter().map(|g| g.name.clone()).collect(),
            token_clients: cfg.tokens.current().client_subjects(),
        };
        for g in &cfg.services {
            if topology.clients.contains(&g.name) {
                return Err(NodeError::Credentials(format!(
                    "service '{}' has the name of a client identity; rename one of them",
                    g.name
                )));
            }
            for m in g.members.iter().filter(|m| !topology.clients.contains(*m)) {
                warn!(service = %g.name, member = %m, "service member is not a client identity (yet)");
            }
        }
        let fanout = Arc::new(Fanout::new(broker_metrics.clone()));
        let (shutdown, shutdown_rx) = watch::channel(false);
        let (inbound_tx, inbound_rx) = mpsc::channel(16 * 1024);
        let (http_tx, http_rx) = mpsc::channel(16 * 1024);
        let (parent_tx, parent_rx) = mpsc::channel(1024);
        // The dispatcher's runtime is built here so that the uplink, and the connections of
        // child nodes and of the clients in the credentials file once they have logged in,
        // run on the dispatcher's thread: a command then crosses this node without waking
        // another thread (ARCHITECTURE.md, "Threads and tasks").
        let dispatcher_rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| NodeError::Dispatcher(format!("cannot build its runtime: {e}")))?;
        let on_dispatcher = dispatcher_rt.handle().clone();
        let (uplink, uplink_task) = if cfg.parents.is_empty() {
            (None, None)
        } else {
            let _on_dispatcher = on_dispatcher.enter();
            let (handle, task) = uplink::spawn(
                UplinkConfig {
                    node_id: cfg.id.clone(),
                    password: cfg.parent_password.clone(),
                    tls: cfg.parent_tls.clone(),
                    parents: cfg.parents.clone(),
                    backoff_cap: Duration::from_secs(3),
                    max_packet: cfg.max_packet_size,
                },
                parent_tx,
                shutdown_rx.clone(),
            );
            (Some(handle), Some(task))
        };
        let mut store = crate::files::FileStore::open(&cfg.data_dir.join("files"), cfg.files)
            .map_err(|e| NodeError::Dispatcher(format!("file store: {e}")))?;
        if let Some(s3) = &cfg.files_s3 {
            let bucket = crate::files::S3::new(s3)
                .map_err(|e| NodeError::Dispatcher(format!("files.s3: {e}")))?;
            store = store.with_remote(bucket);
        }
        let files = Arc::new(store);
        tokio::spawn(
            crate::files::Retention::new(files.clone(), path.clone(), cfg.files_retention)
                .run(shutdown_rx.clone()),
        );
        let (files_ready_tx, files_ready_rx) = mpsc::unbounded_channel();
        let mover = {
            let parent = (!cfg.parents.is_empty())
                .then(|| {
                    let url = cfg.parent_files_url.clone().or_else(|| {
                        cfg.parents.iter().find_map(|p| match p {
                            ParentAddr::Http { url } => Some(url.clone()),
                            _ => None,
                        })
                    });
                    let tls = match &cfg.parent_tls {
                        Some(c) => (**c).clone(),
                        None => medlink_broker::tls::client_config_trusting_nothing(),
                    };
                    crate::files::ParentStore::new(
                        url,
                        cfg.id.clone(),
                        cfg.parent_password.clone(),
                        tls,
                        cfg.parent_files_max_rate,
                    )
                })
                .transpose()
                .map_err(|e| NodeError::Dispatcher(format!("file transfer client: {e}")))?;
            let (mover, held) = crate::files::Mover::new(files.clone(), parent, files_ready_tx);
            tokio::spawn(mover.run(shutdown_rx.clone()));
            held
        };
        let stats = Stats::default();
        // The console's agent: this node's summary up the tree, questions down it.
        let (agent, console, console_notes) = crate::console::Agent::new(
            crate::console::status::Sources {
                node: cfg.id.clone(),
                stats: stats.clone(),
                broker: broker_metrics.clone(),
                journal: path.clone(),
                started_at: crate::envelope::now_ms(),
            },
            topology.children.iter().cloned().collect(),
            uplink.clone(),
            http_tx.clone(),
        );
        let dispatcher = Dispatcher::new(
            DispatcherConfig {
                audit: cfg.audit || !topology.has_parent,
                dead_letter_retention: cfg.dead_letter_retention,
                files: Some(files.clone()),
                mover: Some(mover),
                topology,
                policy: cfg.policy,
                limits: cfg.limits,
                tuning: cfg.tuning,
                directory: Some(auth.clone()),
                services: cfg.services.clone(),
            },
            journal,
            Router::new(fanout.clone()),
            Inputs {
                broker: inbound_rx,
                http: http_rx,
                parent: parent_rx,
                files: files_ready_rx,
            },
            uplink,
            stats.clone(),
            Some(console_notes),
        )
        .map_err(|source| NodeError::Journal {
            path: path.clone(),
            source,
        })?;
        let dispatcher_shutdown = shutdown_rx.clone();
        let thread = std::thread::Builder::new()
            .name("dispatcher".into())
            .spawn(move || {
                let rt = dispatcher_rt;
                let run = std::panic::AssertUnwindSafe(|| {
                    // A task, not `block_on`'s own future: a task woken by another task on
                    // this thread (a child's connection handing over its frame) is polled
                    // next, while waking the `block_on` future first polls the driver, one
                    // more `epoll_wait` on every command's path (BENCHMARKS.md).
                    let task = rt.spawn(dispatcher.run(dispatcher_shutdown));
                    if let Err(e) = rt.block_on(task) {
                        if e.is_panic() {
                            std::panic::resume_unwind(e.into_panic());
                        }
                    }
                    // The uplink saw the same stop; it has a moment to say goodbye to the
                    // parent before the runtime it runs on goes.
                    if let Some(task) = uplink_task {
                        rt.block_on(async {
                            let _ = tokio::time::timeout(Duration::from_secs(1), task).await;
                        });
                    }
                });
                if std::panic::catch_unwind(run).is_err() {
                    // Custody lives in the journal; a node without its dispatcher would only
                    // refuse everything. Exit so the supervisor restarts it.
                    tracing::error!("the dispatcher panicked; exiting so the node is restarted");
                    std::process::exit(70);
                }
            })
            .map_err(|e| NodeError::Dispatcher(format!("cannot start its thread: {e}")))?;
        let rate = Arc::new(RateLimiter::new(cfg.rate));
        let http_state = cfg.http.as_ref().map(|_| {
            Arc::new(
                ApiState::new(
                    &cfg.id,
                    auth.clone(),
                    rate.clone(),
                    broker_metrics.clone(),
                    http_tx,
                    cfg.limits,
                    cfg.http.as_ref().map_or(Duration::ZERO, |h| h.max_wait),
                    cfg.transport.clone(),
                    cfg.max_connections_per_identity,
                )
                .with_console(console.clone(), cfg.http.as_ref().is_some_and(|h| h.tls))
                .with_files(files.clone()),
            )
        });
        tokio::spawn(agent.run(shutdown_rx.clone()));
        let budget = ConnectionBudget::new(cfg.max_connections);
        let http_limits = HttpLimits {
            budget: budget.clone(),
            header_timeout: cfg.connect_timeout,
            write_timeout: cfg.write_timeout,
        };
        let settings = FrontEndSettings {
            tls: cfg.tls.clone(),
            max_packet_size: cfg.max_packet_size,
            budget,
            max_connections_per_identity: cfg.max_connections_per_identity,
            rate,
            write_timeout: cfg.write_timeout,
            connect_timeout: cfg.connect_timeout,
            dispatcher: Some(on_dispatcher),
            ..FrontEndSettings::new(&cfg.id, auth, broker_metrics.clone())
        };
        let broker = BrokerHandle::start(ports.mqtt, settings, fanout, inbound_tx)
            .await
            .map_err(NodeError::Listen)?;
        let http_addr = match (ports.http, &cfg.http, &http_state) {
            (Some(listener), Some(h), Some(state)) => {
                let tls = cfg.tls.clone().filter(|_| h.tls);
                let limits = http_limits.clone();
                let served =
                    crate::http::serve(listener, tls, limits, state.clone(), shutdown_rx.clone());
                Some(served.map_err(NodeError::Listen)?.0)
            }
            _ => None,
        };
        let metrics_addr = match ports.metrics {
            Some(listener) => {
                let (bound, _task) = crate::metrics::serve(
                    listener,
                    cfg.tls.clone().filter(|_| cfg.metrics_tls),
                    http_limits,
                    crate::metrics::Sources {
                        broker: broker_metrics.clone(),
                        stats: stats.clone(),
                        http: http_state.as_ref().map(|s| s.metrics.clone()),
                        journal: path.clone(),
                    },
                    shutdown_rx.clone(),
                )
                .map_err(NodeError::Listen)?;
                Some(bound)
            }
            None => None,
        };
        info!(node = %cfg.id, journal = %path.display(), "node started");
        Ok(Node {
            bound: broker.bound.clone(),
            metrics_addr,
            http_addr,
            stats,
            broker_metrics,
            auth: auth_handle,
            broker: Some(broker),
            shutdown,
            dispatcher: Some(thread),
            checkpointer: Some(checkpointer),
            _data_dir: data_dir,
        })
    }

    /// Stops accepting, closes connections, lets the dispatcher finish its round, closes
    /// the uplink (on the dispatcher's thread, after the dispatcher).
    pub async fn shutdown(mut self) {
        if let Some(broker) = self.broker.take() {
            broker.stop().await;
        }
        let _ = self.shutdown.send(true);
        if let Some(thread) = self.dispatcher.take() {
            let _ = tokio::task::spawn_blocking(move || thread.join()).await;
        }
        // The dispatcher's connection is closed; the checkpointer's last checkpoint truncates
        // the WAL and its close removes it.
        if let Some(checkpointer) = self.checkpointer.take() {
            let _ = tokio::task::spawn_blocking(move || checkpointer.stop()).await;
        }
        info!("node stopped");
    }
}
