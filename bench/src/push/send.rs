//! The sending side of `medlink-bench push`: one sender posting every command to the node's
//! HTTP API (or one publisher connection to mosquitto), and what else the coordinator asks
//! the node over HTTP.

use std::time::Duration;

use super::http::HttpConn;
use super::proto::now_us;
use super::{auth, Broker, PushArgs};

/// POSTs one batch until the node answers 202 (the ids are the sender's own, so a retried
/// batch is accepted once); three retries.
async fn post(
    conn: &mut HttpConn,
    addr: std::net::SocketAddr,
    login: Option<&str>,
    body: &str,
    patience: Duration,
) -> Result<(), String> {
    let mut tries = 0;
    loop {
        let got = conn
            .exchange("POST", "/v1/messages", login, body.as_bytes(), patience)
            .await;
        match got {
            Ok((h, _)) if h.status == 202 => return Ok(()),
            Ok((h, b)) if tries < 3 => eprintln!(
                "medlink-bench push: POST answered {}: {}; retrying",
                h.status,
                String::from_utf8_lossy(&b)
            ),
            Err(e) if tries < 3 => {
                eprintln!("medlink-bench push: POST: {e}; retrying");
                *conn = HttpConn::open(addr, None).await?;
            }
            Ok((h, b)) => {
                return Err(format!(
                    "POST /v1/messages answered {}: {}",
                    h.status,
                    String::from_utf8_lossy(&b)
                ))
            }
            Err(e) => return Err(e),
        }
        tries += 1;
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

/// What was sent.
pub(super) struct Sent {
    /// CLOCK_REALTIME µs at which each batch's POST (mosquitto: its first publish) started.
    pub started: Vec<u64>,
    /// mosquitto: the publisher, kept connected until the run ends so that its last
    /// publishes are written and acknowledged.
    _publisher: Option<rumqttc::AsyncClient>,
}

/// `medlink_http_polls_open` from the node's metrics.
pub(super) async fn polls_open(metrics: &str) -> Option<u64> {
    let addr = tokio::net::lookup_host(metrics).await.ok()?.next()?;
    let mut c = HttpConn::open(addr, None).await.ok()?;
    let (_, body) = c
        .exchange("GET", "/metrics", None, b"", super::http::ANSWER_WITHIN)
        .await
        .ok()?;
    String::from_utf8_lossy(&body).lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "medlink_http_polls_open").then(|| v.trim().parse::<f64>().ok().map(|f| f as u64))?
    })
}

/// Sends every command: medlink by POSTs of `--batch` commands, mosquitto by QoS 1 publishes.
pub(super) async fn send_all(args: &PushArgs, run: &str) -> Result<Sent, String> {
    let t = &args.target;
    let n = args.recipients;
    let mut started = Vec::with_capacity(n.div_ceil(args.batch));
    let mut publisher = None;
    match t.broker {
        Broker::Medlink => {
            let addr = tokio::net::lookup_host(t.http.as_deref().unwrap_or_default())
                .await
                .map_err(|e| format!("--http: {e}"))?
                .next()
                .ok_or("--http: no address")?;
            let (user, pass) = args.sender.split_once(':').unwrap_or_default();
            let sender = auth::AuthArgs::password(pass);
            let login =
                auth::login(&sender, auth::AuthMode::Password, user).map(|l| l.authorization);
            let node = t.node.as_deref().unwrap_or_default();
            // A 202 comes only after the commit, and a node whose delivery path is behind may
            // take long to commit: waiting (rather than giving up and posting again) keeps the
            // load what the run says it is.
            let patience = Duration::from_secs(args.deadline);
            let batches = n.div_ceil(args.batch);
            let bodies: Vec<String> = (0..batches)
                .map(|b| {
                    let items: Vec<String> = (b * args.batch..((b + 1) * args.batch).min(n))
                        .map(|i| {
                            format!(
                                r#"{{"id":"p{run}-{i}","to":{{"node":"{node}","client":"{}"}},"cmd":"push.notify","params":{{"run":"{run}","seq":{i}}}}}"#,
                                super::identity(&t.prefix, i)
                            )
                        })
                        .collect();
                    format!("[{}]", items.join(","))
                })
                .collect();
            // `--in-flight` connections take batches in turn, as a hospital backend with a
            // small pool would; each waits for its 202 before its next batch.
            let next = std::sync::atomic::AtomicUsize::new(0);
            let times = std::sync::Mutex::new(vec![0u64; batches]);
            let poster = |_| async {
                let mut conn = HttpConn::open(addr, None).await?;
                loop {
                    let b = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let Some(body) = bodies.get(b) else {
                        return Ok::<(), String>(());
                    };
                    times.lock().expect("not poisoned")[b] = now_us();
                    post(&mut conn, addr, login.as_deref(), body, patience).await?;
                }
            };
            let posters: Vec<_> = (0..args.in_flight.min(batches)).map(poster).collect();
            for result in futures_util::future::join_all(posters).await {
                result?;
            }
            started = times.into_inner().expect("not poisoned");
        }
        Broker::Mosquitto => {
            let ep = crate::mqtt_client::Endpoint {
                url: format!("mqtt://{}", t.mqtt.as_deref().unwrap_or_default()),
                login: None,
                ca: None,
            };
            let (client, _rx) =
                crate::mqtt_client::connect(&ep, &format!("push-publisher-{run}"), &[]).await?;
            for i in 0..n {
                if i % args.batch == 0 {
                    started.push(now_us());
                }
                let payload = format!(r#"{{"run":"{run}","seq":{i}}}"#);
                client
                    .publish(
                        super::plain_topic(i),
                        rumqttc::QoS::AtLeastOnce,
                        false,
                        payload,
                    )
                    .await
                    .map_err(|e| format!("publish: {e}"))?;
            }
            publisher = Some(client);
        }
    }
    Ok(Sent {
        started,
        _publisher: publisher,
    })
}
