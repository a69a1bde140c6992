//! A minimal MQTT client for the load tools: connect, subscribe, and receive publishes on a
//! channel. It speaks to any broker, medlink or not, which is why the tools use it rather than
//! the SDK (that speaks only medlink's topics) for plain-MQTT runs and for publishing straight
//! into client outboxes.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS, TlsConfiguration, Transport};
use tokio::sync::{mpsc, oneshot};

/// Where and as whom to connect.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// `mqtts://host:port`, `wss://host:port/path`, `mqtt://host:port` or `ws://host:port/path`.
    pub url: String,
    /// Username/password, if the broker wants them.
    pub login: Option<(String, String)>,
    /// CA that the broker's certificate must chain to (for `mqtts`/`wss`).
    pub ca: Option<PathBuf>,
}

impl Endpoint {
    /// `url`, logging in as `user` (with `pass`, empty when not given) if a user is given.
    pub fn new(
        url: &str,
        user: &Option<String>,
        pass: &Option<String>,
        ca: &Option<PathBuf>,
    ) -> Endpoint {
        Endpoint {
            url: url.to_string(),
            login: user
                .as_ref()
                .map(|u| (u.clone(), pass.clone().unwrap_or_default())),
            ca: ca.clone(),
        }
    }
}

/// A received publish.
#[derive(Debug)]
pub struct Received {
    /// Topic.
    pub topic: String,
    /// Payload.
    pub payload: Bytes,
}

/// Parses an endpoint URL into rumqttc options.
pub fn options(ep: &Endpoint, client_id: &str) -> Result<MqttOptions, String> {
    let url = url::Url::parse(&ep.url).map_err(|e| format!("'{}': {e}", ep.url))?;
    let host = url
        .host_str()
        .ok_or_else(|| format!("'{}' has no host", ep.url))?;
    let tls = || -> Result<TlsConfiguration, String> {
        let ca = ep
            .ca
            .as_deref()
            .ok_or_else(|| format!("'{}': a CA file is needed for TLS (--ca)", ep.url))?;
        Ok(TlsConfiguration::Rustls(Arc::new(trusting(ca)?)))
    };
    let (mut opts, transport) = match url.scheme() {
        "mqtt" | "tcp" => (
            MqttOptions::new(client_id, host, url.port().unwrap_or(1883)),
            None,
        ),
        "ws" => (
            MqttOptions::new(client_id, ep.url.clone(), url.port().unwrap_or(80)),
            Some(Transport::Ws),
        ),
        "mqtts" | "ssl" => (
            MqttOptions::new(client_id, host, url.port().unwrap_or(8883)),
            Some(Transport::tls_with_config(tls()?)),
        ),
        "wss" => (
            MqttOptions::new(client_id, ep.url.clone(), url.port().unwrap_or(443)),
            Some(Transport::wss_with_config(tls()?)),
        ),
        s => {
            return Err(format!(
                "'{}': scheme {s} is not mqtts, wss, mqtt or ws",
                ep.url
            ))
        }
    };
    if let Some(t) = transport {
        opts.set_transport(t);
    }
    if let Some((u, p)) = &ep.login {
        opts.set_credentials(u, p);
    }
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(16 << 20, 16 << 20)
        .set_inflight(1000)
        .set_clean_session(true);
    Ok(opts)
}

/// A TLS client configuration trusting exactly the certificates in `ca` (PEM), with the
/// aws-lc-rs provider the rest of the workspace uses (so no second crypto stack is compiled
/// and no process-wide default provider has to be installed).
fn trusting(ca: &Path) -> Result<rustls::ClientConfig, String> {
    let err = |e: &dyn std::fmt::Display| format!("CA {}: {e}", ca.display());
    let pem = std::fs::read(ca).map_err(|e| err(&e))?;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.map_err(|e| err(&e))?).map_err(|e| err(&e))?;
    }
    if roots.is_empty() {
        return Err(err(&"no certificate in the file"));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| format!("TLS: {e}"))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Connects, subscribes to `filters` at QoS 1, and returns once the SUBACK arrived.
pub async fn connect(
    ep: &Endpoint,
    client_id: &str,
    filters: &[String],
) -> Result<(AsyncClient, mpsc::UnboundedReceiver<Received>), String> {
    let (client, mut eventloop) = AsyncClient::new(options(ep, client_id)?, 4096);
    // Small writes (PUBACK then PUBLISH) must not wait for delayed ACKs (Nagle).
    let mut net = rumqttc::NetworkOptions::new();
    net.set_tcp_nodelay(true);
    eventloop.set_network_options(net);
    for f in filters {
        client
            .subscribe(f.clone(), QoS::AtLeastOnce)
            .await
            .map_err(|e| e.to_string())?;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let (ready_tx, ready_rx) = oneshot::channel::<Result<(), String>>();
    let mut ready = Some(ready_tx);
    let wants_suback = !filters.is_empty();
    tokio::spawn(async move {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) if !wants_suback => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::SubAck(_))) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Ok(()));
                    }
                }
                Ok(Event::Incoming(Packet::Publish(p))) => {
                    let _ = tx.send(Received {
                        topic: p.topic,
                        payload: p.payload,
                    });
                }
                Ok(_) => {}
                Err(e) => {
                    if let Some(r) = ready.take() {
                        let _ = r.send(Err(e.to_string()));
                        return;
                    }
                    // Reconnect after a pause (rumqttc redials on the next poll).
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        }
    });
    match tokio::time::timeout(Duration::from_secs(10), ready_rx).await {
        Ok(Ok(Ok(()))) => Ok((client, rx)),
        Ok(Ok(Err(e))) => Err(format!("{}: {e}", ep.url)),
        _ => Err(format!("{}: no answer within 10 s", ep.url)),
    }
}
