//! A poll of a client's stream, handed to the dispatcher and waited on ([`Polled`]), and the
//! event stream built from such polls ([`Events`]).
//!
//! A hospital holds tens of thousands of these waits at once, so both are hand-written state
//! machines rather than `async` blocks. A future made by `async` keeps room for its arguments
//! beside the locals they move into, and for a nested future twice over (once where it was
//! made, once where it is awaited). Here each field exists once: [`Polled`] is about 200 bytes,
//! where the `async fn` it replaced made a long-poll's wait about 1 KB (ARCHITECTURE.md, "Memory
//! per connection").

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use axum::response::sse::Event;
use futures_util::Stream as FutStream;
use medlink_broker::Stream;
use tokio::sync::oneshot;
use tokio::time::{Instant, Sleep};

use super::error::ApiError;
use super::slots::StreamSlot;
use super::{ApiState, PollGuard};
use crate::clients::{Cursor, Delivery, Page};
use crate::dispatcher::Request;

/// The hand-over of a poll to the dispatcher: over before the wait begins, so boxed.
type Handing = Pin<Box<dyn Future<Output = Result<(), ApiError>> + Send>>;

pin_project_lite::pin_project! {
    /// The dispatcher's answer to one poll: first the hand-over, then the wait for the answer,
    /// at most `limit`. Nothing by then is an empty page at the same cursor.
    pub(super) struct Polled {
        state: Arc<ApiState>,
        handing: Option<Handing>,
        // Counts the poll as open while it waits.
        _open: Option<PollGuard>,
        answer: oneshot::Receiver<Page>,
        after: Option<Cursor>,
        limit: Duration,
        #[pin]
        timer: Sleep,
    }
}

impl Polled {
    /// Asks the dispatcher for `client`'s `stream` after `after` (acknowledging up to it if
    /// `ack`), at most `max` deliveries, waiting up to `wait` for something to come.
    pub(super) fn new(
        state: Arc<ApiState>,
        client: &str,
        stream: Stream,
        (after, ack): (Option<Cursor>, bool),
        max: usize,
        wait: Duration,
    ) -> Polled {
        let (reply, answer) = oneshot::channel();
        let item = Request::Poll {
            client: client.to_string(),
            stream,
            after,
            ack,
            max,
            wait: !wait.is_zero(),
            reply,
        };
        let handing: Handing = {
            let state = state.clone();
            Box::pin(async move { state.hand_over(item).await })
        };
        // Without a wait the dispatcher answers at once (empty or not); the limit is a safety
        // net.
        let limit = if wait.is_zero() {
            Duration::from_secs(5)
        } else {
            wait
        };
        Polled {
            state,
            handing: Some(handing),
            _open: None,
            answer,
            after,
            limit,
            // Set again when the hand-over is done: the wait starts then.
            timer: tokio::time::sleep(limit),
        }
    }
}

impl Future for Polled {
    type Output = Result<Page, ApiError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        if let Some(handing) = this.handing.as_mut() {
            ready!(handing.as_mut().poll(cx))?;
            *this.handing = None;
            *this._open = Some(this.state.metrics.poll_opened());
            this.timer.as_mut().reset(Instant::now() + *this.limit);
        }
        if let Poll::Ready(answer) = Pin::new(&mut *this.answer).poll(cx) {
            // A dropped poll is a failed commit: the acknowledgement did not hold.
            return Poll::Ready(
                answer
                    .map_err(|_| ApiError::unavailable("the node could not serve the poll; retry")),
            );
        }
        ready!(this.timer.poll(cx));
        Poll::Ready(Ok(Page {
            cursor: this.after.unwrap_or_default(),
            deliveries: Vec::new(),
        }))
    }
}

/// How long one poll of an event stream waits before it is asked again.
const EVENTS_WAIT: Duration = Duration::from_secs(25);
/// Deliveries asked for per poll of an event stream.
const EVENTS_PAGE: usize = 100;

pin_project_lite::pin_project! {
    /// A client's command stream as server-sent events: polls one after another, each
    /// delivery an event whose `id` is the cursor after it.
    pub(super) struct Events {
        state: Arc<ApiState>,
        client: String,
        // The identity's stream slot, held as long as the stream is open.
        _slot: StreamSlot,
        after: Option<Cursor>,
        // Whether the next poll acknowledges up to `after` (only a resumed stream's first).
        ack: bool,
        queued: std::vec::IntoIter<Delivery>,
        #[pin]
        polled: Option<Polled>,
    }
}

impl Events {
    /// The stream of `client`'s commands after `after`; a resumed stream (`after` given and
    /// not the start) acknowledges up to it first.
    pub(super) fn new(
        state: Arc<ApiState>,
        client: String,
        slot: StreamSlot,
        after: Option<Cursor>,
    ) -> Events {
        Events {
            state,
            client,
            _slot: slot,
            after,
            ack: after.is_some_and(|c| !c.is_start()),
            queued: Vec::new().into_iter(),
            polled: None,
        }
    }
}

impl FutStream for Events {
    type Item = Result<Event, std::convert::Infallible>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let mut this = self.project();
        loop {
            if let Some(d) = this.queued.next() {
                *this.after = Some(d.cursor);
                *this.ack = false;
                let event = Event::default()
                    .id(d.cursor.to_string())
                    .event("message")
                    .data(String::from_utf8_lossy(&d.body));
                return Poll::Ready(Some(Ok(event)));
            }
            let Some(polled) = this.polled.as_mut().as_pin_mut() else {
                let asked = (*this.after, *this.ack);
                let polled = Polled::new(
                    this.state.clone(),
                    this.client,
                    Stream::Commands,
                    asked,
                    EVENTS_PAGE,
                    EVENTS_WAIT,
                );
                this.polled.set(Some(polled));
                continue;
            };
            let got = ready!(polled.poll(cx));
            this.polled.set(None);
            match got {
                Ok(page) => {
                    // Where a reader without a cursor now stands.
                    *this.after = Some(page.cursor);
                    *this.queued = page.deliveries.into_iter();
                }
                // The node stops, or could not serve the poll: the browser reconnects.
                Err(_) => return Poll::Ready(None),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tens of thousands of these wait at once, one per phone or browser: a field or an inline
    /// future added here costs that many times over (ARCHITECTURE.md, "Memory per connection").
    #[test]
    fn a_waiting_poll_and_an_event_stream_stay_small() {
        let polled = std::mem::size_of::<Polled>();
        assert!(polled <= 256, "Polled is {polled} bytes");
        let events = std::mem::size_of::<Events>();
        assert!(events <= 400, "Events is {events} bytes");
    }
}
