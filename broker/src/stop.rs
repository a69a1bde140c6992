//! The node's stop, as its connections wait for it.
//!
//! Every connection, MQTT or HTTP, listens for the stop beside whatever it waits for.
//! `watch::Receiver::wait_for` on the node's own signal is a 144-byte future and `changed` 120;
//! [`Stopped`] is 72, and tens of thousands of connections hold one each (ARCHITECTURE.md,
//! "Memory per connection").

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::sync::futures::Notified;
use tokio::sync::{watch, Notify};

/// Whether the node is stopping, shared by a port's connections.
#[derive(Clone, Default)]
pub struct Stop(Arc<Inner>);

#[derive(Default)]
struct Inner {
    stopping: AtomicBool,
    notify: Notify,
}

impl Stop {
    /// Follows the node's `shutdown` signal: the stop comes when it turns true (or its sender
    /// is gone).
    pub fn following(mut shutdown: watch::Receiver<bool>) -> Stop {
        let stop = Stop::default();
        let inner = stop.0.clone();
        tokio::spawn(async move {
            let _ = shutdown.wait_for(|s| *s).await;
            inner.stopping.store(true, Ordering::Release);
            inner.notify.notify_waiters();
        });
        stop
    }

    /// Resolves once the node stops.
    pub fn stopped(&self) -> Stopped<'_> {
        Stopped {
            // Made before the flag is read: `notify_waiters` wakes every `Notified` that
            // exists when it is called, polled yet or not, so no stop falls between the two.
            notified: self.0.notify.notified(),
            stopping: &self.0.stopping,
        }
    }
}

pin_project_lite::pin_project! {
    /// The future of [`Stop::stopped`].
    pub struct Stopped<'a> {
        #[pin]
        notified: Notified<'a>,
        stopping: &'a AtomicBool,
    }
}

impl Future for Stopped<'_> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = self.project();
        if this.stopping.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        this.notified.poll(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn waiters_made_before_and_after_the_stop_all_resolve() {
        let (tx, rx) = watch::channel(false);
        let stop = Stop::following(rx);
        let early = stop.stopped();
        let waiting = tokio::time::timeout(Duration::from_millis(50), stop.stopped()).await;
        assert!(waiting.is_err(), "no stop yet");
        tx.send(true).unwrap();
        tokio::time::timeout(Duration::from_secs(5), early)
            .await
            .expect("a waiter made before the stop resolves");
        tokio::time::timeout(Duration::from_secs(5), stop.stopped())
            .await
            .expect("a waiter made after the stop resolves at once");
    }

    #[test]
    fn the_future_every_connection_holds_stays_small() {
        let stopped = std::mem::size_of::<Stopped<'static>>();
        assert!(stopped <= 80, "Stopped is {stopped} bytes");
    }

    #[tokio::test]
    async fn a_dropped_signal_stops_too() {
        let (tx, rx) = watch::channel(false);
        let stop = Stop::following(rx);
        drop(tx);
        tokio::time::timeout(Duration::from_secs(5), stop.stopped())
            .await
            .expect("a node whose signal is gone is stopping");
    }
}
