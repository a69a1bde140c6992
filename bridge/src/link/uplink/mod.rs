//! The child's connection to its parent.
//!
//! Firewalls let sites dial out only, so the child always dials. This task tries the parent's
//! addresses in turn with jittered exponential backoff and moves frames: what the dispatcher
//! hands it goes up, what comes down goes to the dispatcher. Over MQTT the frames travel on
//! `link/<me>/up` and `link/<me>/down`: on TCP and TLS through `direct.rs`, where the
//! dispatcher writes each frame to the socket itself; on WebSocket through rumqttc
//! (`mqtt.rs`). Over HTTP see `http.rs`. Listing an
//! MQTT address first and an HTTP one after it gives the fallback: when MQTT is unreachable
//! the link moves to HTTP within seconds, and back as soon as MQTT answers again. The task
//! keeps no custody of its own — a frame lost with a dying connection is resent by the
//! dispatcher's go-back-N window. `parent.rs` holds what the sessions share (addresses,
//! settings, events, how a session ended), so they depend on it and not on this file.

mod direct;
mod health;
mod http;
mod mqtt;
mod parent;

use std::time::Duration;

use medlink_wire::{Backoff, Transport};
use tokio::sync::{mpsc, watch};
use tracing::{debug, info, warn};

pub(crate) use parent::{Channels, Ended};
pub use parent::{ParentAddr, ParentEvent, UplinkConfig};

/// The dispatcher's handle on the uplink task.
#[derive(Clone)]
pub struct UplinkHandle {
    frames: mpsc::UnboundedSender<Vec<u8>>,
    reconnect: mpsc::UnboundedSender<()>,
    direct: std::sync::Arc<direct::DirectLink>,
}

impl std::fmt::Debug for UplinkHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UplinkHandle").finish_non_exhaustive()
    }
}

impl UplinkHandle {
    /// Sends a frame to the parent: written to the socket at once over a direct session, else
    /// queued for the uplink task (dropped if the link is down; the window resends).
    pub fn send(&self, frame: Vec<u8>) {
        if !self.direct.send(&frame) {
            let _ = self.frames.send(frame);
        }
    }

    /// Drops the current connection and dials again (used when the link stalls).
    pub fn reconnect(&self) {
        let _ = self.reconnect.send(());
    }
}

/// Starts the uplink task.
pub fn spawn(
    cfg: UplinkConfig,
    events: mpsc::Sender<ParentEvent>,
    shutdown: watch::Receiver<bool>,
) -> (UplinkHandle, tokio::task::JoinHandle<()>) {
    let (frames_tx, frames_rx) = mpsc::unbounded_channel();
    let (reconnect_tx, reconnect_rx) = mpsc::unbounded_channel();
    let direct = std::sync::Arc::new(direct::DirectLink::default());
    let task = tokio::spawn(run(
        cfg,
        events,
        frames_rx,
        reconnect_rx,
        shutdown,
        direct.clone(),
    ));
    (
        UplinkHandle {
            frames: frames_tx,
            reconnect: reconnect_tx,
            direct,
        },
        task,
    )
}

async fn run(
    cfg: UplinkConfig,
    events: mpsc::Sender<ParentEvent>,
    mut frames: mpsc::UnboundedReceiver<Vec<u8>>,
    mut reconnect: mpsc::UnboundedReceiver<()>,
    mut shutdown: watch::Receiver<bool>,
    direct: std::sync::Arc<direct::DirectLink>,
) {
    let n = cfg.parents.len();
    let (mut index, told_http) = first_address(&cfg).await;
    let mut failures = 0u32;
    let mut mqtt_failed = false;
    let mut health = health::Health::default();
    loop {
        let addr = &cfg.parents[index % n];
        // While on HTTP, an MQTT address listed before it is where the link wants to be,
        // unless the parent said this node belongs on HTTP.
        let preferred = match addr {
            ParentAddr::Http { .. } if !told_http => {
                cfg.parents[..index % n].iter().find(|a| !a.is_http())
            }
            _ => None,
        };
        if addr.is_http() && mqtt_failed {
            warn!(parent = %addr, "MQTT to the parent is unreachable; falling back to HTTP");
        }
        debug!(parent = %addr, "dialling parent");
        let mut ch = Channels {
            events: &events,
            frames: &mut frames,
            reconnect: &mut reconnect,
            shutdown: &mut shutdown,
            health: &mut health,
        };
        let ended = match addr {
            ParentAddr::Http { url } => http::session(&cfg, url, preferred, &mut ch).await,
            ParentAddr::Tcp { .. } | ParentAddr::Tls { .. } => {
                direct::session(&cfg, addr, &direct, &mut ch).await
            }
            ParentAddr::Ws { .. } | ParentAddr::Wss { .. } => {
                mqtt::session(&cfg, addr, &mut ch).await
            }
        };
        match ended {
            Ended::Shutdown => return,
            Ended::Preferred => {
                info!(parent = %addr, "MQTT to the parent answers again; leaving the HTTP fallback");
                if events.send(ParentEvent::Disconnected).await.is_err() {
                    return;
                }
                index = cfg
                    .parents
                    .iter()
                    .position(|a| Some(a) == preferred)
                    .unwrap_or(0);
                mqtt_failed = false;
                failures = 0;
                while frames.try_recv().is_ok() {}
                continue;
            }
            Ended::Lost {
                connected: true,
                reason,
            } => {
                health.lost(addr, &reason);
                if events.send(ParentEvent::Disconnected).await.is_err() {
                    return;
                }
                failures = 0;
            }
            Ended::Lost {
                connected: false,
                reason,
            } => {
                health.failed(addr, &reason);
                mqtt_failed = !addr.is_http();
                // Fail over to the next address after a failed attempt.
                index += 1;
            }
        }
        // Frames queued for the dead connection are stale; the window resends.
        while frames.try_recv().is_ok() {}
        failures = failures.saturating_add(1);
        // Trying the next address of the list comes quickly; a whole round of failures backs off.
        let wait = if !index.is_multiple_of(n) && failures < n as u32 {
            Duration::from_millis(50)
        } else {
            backoff(failures, cfg.backoff_cap)
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => return,
        }
    }
}

/// Where to start: the first address, unless the parent has an HTTP address and says (in
/// `GET /v1/transport`) that this node should use another transport, which is then tried
/// first if the list has an address of that kind. Also whether the parent chose HTTP.
async fn first_address(cfg: &UplinkConfig) -> (usize, bool) {
    let Some(ParentAddr::Http { url }) = cfg.parents.iter().find(|a| a.is_http()) else {
        return (0, false);
    };
    let Some(choice) = http::ask_transport(cfg, url).await else {
        return (0, false);
    };
    let index = cfg
        .parents
        .iter()
        .position(|a| a.transport() == choice)
        .unwrap_or(0);
    info!(transport = %choice, parent = %cfg.parents[index], "the parent chose the link transport");
    (index, choice == Transport::Http)
}

/// Full-jitter exponential backoff after `failures` failed attempts: uniform in
/// [base/2, base], base = 100 ms · 2^failures, at most `cap`.
fn backoff(failures: u32, cap: Duration) -> Duration {
    Backoff::new(Duration::from_millis(50), cap / 2, 100).delay_for(failures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_and_is_capped() {
        let cap = Duration::from_secs(3);
        for n in 0..40 {
            let b = backoff(n, cap);
            assert!(b <= cap, "{b:?}");
            assert!(b >= Duration::from_millis(50), "{b:?}");
        }
        assert!(backoff(30, cap) >= cap / 2);
    }
}
