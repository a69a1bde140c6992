//! The client: one MQTT connection to the application's node, with the bookkeeping that makes
//! the application's side simple — sends that complete when the node has custody, replies
//! matched to requests, and deliveries handed over once each, whatever the resends underneath.

use std::collections::{HashMap, HashSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{
    AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS, TlsConfiguration, Transport,
};
use serde_json::Value;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::message::{Address, Kind, Message, MessageId, Submission};
use crate::Error;

/// How to reach the node and as whom.
#[derive(Debug, Clone)]
pub struct Options {
    /// `mqtts://host:port` (or `mqtt://` on loopback).
    pub url: String,
    /// The node's id (the application's address is `node`/`identity`).
    pub node: String,
    /// The application's identity.
    pub identity: String,
    /// Its password.
    pub password: String,
    /// CA certificate (PEM) the node's certificate must chain to, for `mqtts://`.
    pub ca: Option<PathBuf>,
}

/// Ids seen recently, to hand each delivery over once.
struct Seen {
    ids: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

/// Ids remembered for de-duplication (a node re-delivers only what was unacknowledged, so
/// repeats are recent).
const SEEN_MAX: usize = 100_000;

impl Seen {
    fn first_time(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() >= SEEN_MAX {
            if let Some(old) = self.order.pop_front() {
                self.ids.remove(&old);
            }
        }
        self.ids.insert(id.to_string());
        self.order.push_back(id.to_string());
        true
    }
}

/// State shared by the client handles and the connection task.
struct Shared {
    /// Repeat deliveries dropped so far.
    repeats: u64,
    /// Sends in the order they were queued, waiting for their packet id.
    queued: VecDeque<oneshot::Sender<Result<(), Error>>>,
    /// Sends waiting for their PUBACK, by packet id.
    inflight: HashMap<u16, oneshot::Sender<Result<(), Error>>>,
    /// Requests waiting for their reply, by request id.
    replies: HashMap<MessageId, oneshot::Sender<Message>>,
    seen: Seen,
}

/// A connected application. Cheap to clone; every clone shares the connection.
#[derive(Clone)]
pub struct Client {
    me: Address,
    mqtt: AsyncClient,
    shared: Arc<Mutex<Shared>>,
    ids: Arc<Mutex<ulid::Generator>>,
}

/// The receiving side: commands addressed to the application and receipts about what it sent,
/// each handed over once.
pub struct Inbox {
    /// Commands (replies to `request` go to the request instead).
    pub commands: mpsc::Receiver<Message>,
    /// Receipts.
    pub receipts: mpsc::Receiver<Message>,
}

fn lock(m: &Mutex<Shared>) -> std::sync::MutexGuard<'_, Shared> {
    m.lock()
        .expect("client state lock is never held across a panic")
}

fn tls(ca: &std::path::Path) -> Result<TlsConfiguration, Error> {
    let pem = std::fs::read(ca).map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        let cert = cert.map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
        roots
            .add(cert)
            .map_err(|e| Error::Config(format!("{}: {e}", ca.display())))?;
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(TlsConfiguration::Rustls(Arc::new(config)))
}

impl Client {
    /// Connects (and keeps reconnecting by itself); returns once subscribed to the inbox and
    /// receipts, with the receiving side.
    pub async fn connect(opts: Options) -> Result<(Client, Inbox), Error> {
        let url = opts.url.trim_end_matches('/');
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| Error::Config(format!("'{url}' is not a URL")))?;
        let (host, port) = rest
            .rsplit_once(':')
            .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.to_string(), p)))
            .ok_or_else(|| Error::Config(format!("'{url}' needs host:port")))?;
        let client_id = format!("{}-{}", opts.identity, ulid::Ulid::new());
        let mut mqtt = MqttOptions::new(client_id, host, port);
        mqtt.set_credentials(&opts.identity, &opts.password)
            .set_keep_alive(Duration::from_secs(20))
            .set_clean_session(true)
            .set_manual_acks(true)
            .set_max_packet_size(16 << 20, 16 << 20);
        match scheme {
            "mqtts" | "ssl" => {
                let ca = opts
                    .ca
                    .as_deref()
                    .ok_or_else(|| Error::Config("mqtts needs the CA certificate".into()))?;
                mqtt.set_transport(Transport::tls_with_config(tls(ca)?));
            }
            "mqtt" | "tcp" => {}
            other => {
                return Err(Error::Config(format!(
                    "scheme '{other}' is not mqtts or mqtt"
                )))
            }
        }
        let (mqtt_client, eventloop) = AsyncClient::new(mqtt, 1024);
        let me = Address::new(&opts.node, &opts.identity);
        let shared = Arc::new(Mutex::new(Shared {
            repeats: 0,
            queued: VecDeque::new(),
            inflight: HashMap::new(),
            replies: HashMap::new(),
            seen: Seen {
                ids: HashSet::new(),
                order: VecDeque::new(),
            },
        }));
        let (cmd_tx, commands) = mpsc::channel(1024);
        let (rcpt_tx, receipts) = mpsc::channel(1024);
        let (ready_tx, ready_rx) = oneshot::channel();
        let filters = [
            format!("org/{}/{}/cmd", me.node, me.client),
            format!("org/{}/{}/receipt", me.node, me.client),
        ];
        tokio::spawn(run(
            eventloop,
            mqtt_client.clone(),
            filters,
            shared.clone(),
            (cmd_tx, rcpt_tx),
            ready_tx,
        ));
        match tokio::time::timeout(Duration::from_secs(15), ready_rx).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => return Err(e),
            _ => return Err(Error::Unreachable(format!("{url}: no session within 15 s"))),
        }
        let client = Client {
            me,
            mqtt: mqtt_client,
            shared,
            ids: Arc::new(Mutex::new(ulid::Generator::new())),
        };
        Ok((client, Inbox { commands, receipts }))
    }

    /// Repeat deliveries (same id) dropped so far: the node resends what was not
    /// acknowledged when a connection dies, and the application never sees those twice.
    pub fn repeats_dropped(&self) -> u64 {
        lock(&self.shared).repeats
    }

    /// This application's address.
    pub fn address(&self) -> &Address {
        &self.me
    }

    fn next_id(&self) -> MessageId {
        let mut ids = self
            .ids
            .lock()
            .expect("id generator lock is never held across a panic");
        ids.generate()
            .map(|u| u.to_string())
            .unwrap_or_else(|_| ulid::Ulid::new().to_string())
    }

    /// Sends a command; returns its id once the application's node has it in its journal.
    pub async fn send(&self, to: &Address, cmd: &str, params: Value) -> Result<MessageId, Error> {
        self.submit(to, cmd, &params, None).await
    }

    /// Answers `incoming` (its sender gets a command with `reply_to` = its id).
    pub async fn reply(&self, incoming: &Message, params: Value) -> Result<MessageId, Error> {
        let cmd = format!("{}.reply", incoming.cmd);
        self.submit(&incoming.from, &cmd, &params, Some(&incoming.id))
            .await
    }

    /// Sends a command and waits (without blocking anything else) for the reply to it.
    pub async fn request(
        &self,
        to: &Address,
        cmd: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Message, Error> {
        let id = self.next_id();
        let (tx, rx) = oneshot::channel();
        lock(&self.shared).replies.insert(id.clone(), tx);
        let sent = self.submit_with_id(&id, to, cmd, &params, None).await;
        if let Err(e) = sent {
            lock(&self.shared).replies.remove(&id);
            return Err(e);
        }
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            _ => {
                lock(&self.shared).replies.remove(&id);
                Err(Error::Timeout(id))
            }
        }
    }

    async fn submit(
        &self,
        to: &Address,
        cmd: &str,
        params: &Value,
        reply_to: Option<&str>,
    ) -> Result<MessageId, Error> {
        let id = self.next_id();
        self.submit_with_id(&id, to, cmd, params, reply_to).await?;
        Ok(id)
    }

    async fn submit_with_id(
        &self,
        id: &str,
        to: &Address,
        cmd: &str,
        params: &Value,
        reply_to: Option<&str>,
    ) -> Result<(), Error> {
        let body = serde_json::to_vec(&Submission {
            id,
            to,
            cmd,
            params,
            reply_to,
            ttl_ms: None,
            priority: None,
        })
        .expect("a submission always serialises");
        let topic = format!("org/{}/{}/out", self.me.node, self.me.client);
        let (tx, rx) = oneshot::channel();
        // Queued before the publish, so the connection task pairs packet ids with sends in
        // the order rumqttc assigns them.
        let queued = {
            let mut s = lock(&self.shared);
            s.queued.push_back(tx);
            self.mqtt.try_publish(topic, QoS::AtLeastOnce, false, body)
        };
        if let Err(e) = queued {
            lock(&self.shared).queued.pop_back();
            return Err(Error::Unreachable(e.to_string()));
        }
        rx.await
            .map_err(|_| Error::Unreachable("connection task ended".into()))?
    }
}

/// The connection task: drives rumqttc, pairs PUBACKs with sends, routes deliveries.
async fn run(
    mut eventloop: rumqttc::EventLoop,
    client: AsyncClient,
    filters: [String; 2],
    shared: Arc<Mutex<Shared>>,
    (commands, receipts): (mpsc::Sender<Message>, mpsc::Sender<Message>),
    ready: oneshot::Sender<Result<(), Error>>,
) {
    let mut ready = Some(ready);
    let mut subacks = 0;
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                // Sessions are clean: subscribe after every connect.
                subacks = 0;
                for f in &filters {
                    let _ = client.try_subscribe(f.clone(), QoS::AtLeastOnce);
                }
            }
            Ok(Event::Incoming(Packet::SubAck(_))) => {
                subacks += 1;
                if subacks == 2 {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
            }
            Ok(Event::Outgoing(Outgoing::Publish(pkid))) => {
                let mut s = lock(&shared);
                if let Some(waiter) = s.queued.pop_front() {
                    s.inflight.insert(pkid, waiter);
                }
            }
            Ok(Event::Incoming(Packet::PubAck(ack))) => {
                if let Some(waiter) = lock(&shared).inflight.remove(&ack.pkid) {
                    let _ = waiter.send(Ok(()));
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let parsed: Result<Message, _> = serde_json::from_slice(&p.payload);
                match parsed {
                    Ok(m) => {
                        let first = lock(&shared).seen.first_time(&m.id);
                        if first {
                            route(m, &shared, &commands, &receipts).await;
                        } else {
                            lock(&shared).repeats += 1;
                            debug!(id = %m.id, "repeat delivery dropped");
                        }
                    }
                    Err(e) => warn!(error = %e, topic = %p.topic, "undecodable delivery dropped"),
                }
                // Acknowledged only after it was handed over (or found a repeat): a crash in
                // between means the node delivers it again, and the id check drops the repeat.
                let _ = client.ack(&p).await;
            }
            Ok(_) => {}
            Err(e) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(Error::Unreachable(e.to_string())));
                    return;
                }
                // Sends in flight on the dead connection: their fate is unknown to us, the ids
                // make a resend safe; tell the callers so they can.
                {
                    let mut s = lock(&shared);
                    for (_, w) in s.inflight.drain() {
                        let _ = w.send(Err(Error::Unreachable(format!("connection lost: {e}"))));
                    }
                }
                if commands.is_closed() && receipts.is_closed() {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        }
    }
}

async fn route(
    m: Message,
    shared: &Mutex<Shared>,
    commands: &mpsc::Sender<Message>,
    receipts: &mpsc::Sender<Message>,
) {
    if m.kind == Kind::Receipt {
        let _ = receipts.send(m).await;
        return;
    }
    let waiter = m
        .reply_to
        .as_ref()
        .and_then(|r| lock(shared).replies.remove(r));
    match waiter {
        Some(w) => {
            let _ = w.send(m);
        }
        None => {
            let _ = commands.send(m).await;
        }
    }
}
