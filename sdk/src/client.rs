//! The public API: [`Client`] (send, request, reply, state) and [`Inbox`] (what arrives). The
//! client handles only queue work for the connection task (`driver.rs`) and wait for its
//! answers, so nothing here depends on which transport is in use.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::sync::{mpsc, oneshot, watch};

use crate::driver::{self, Endpoint};
use crate::handover::Handover;
use crate::message::{self, Address, Message, MessageId};
use crate::options::{Options, SendOptions};
use crate::outbox::{self, Outbox};
use crate::sendq::{Pending, SendQueue};
use crate::session::{Core, Cursors};
use crate::{tls, Error, Transport};

/// Capacity of each receiving channel. A full channel holds back the transport (and so the
/// node's acknowledgements), never drops anything.
const CHANNEL: usize = 1024;

/// A connected application. Cheap to clone; every clone shares one connection, which lives
/// (and reconnects by itself) as long as a clone does.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    me: Address,
    submits: mpsc::UnboundedSender<Pending>,
    handover: Arc<Handover>,
    link: watch::Receiver<Option<Transport>>,
    pending: watch::Receiver<usize>,
    made: Arc<watch::Sender<usize>>,
    outbox: Option<Arc<Outbox>>,
    ids: Mutex<ulid::Generator>,
    stop: watch::Sender<bool>,
    done: watch::Receiver<bool>,
    sessions: Arc<AtomicU64>,
}

/// The receiving side: commands addressed to the application and receipts about what it sent,
/// each handed over once. A full channel holds back deliveries on the connection, so read
/// both. Dropping one says the application takes none of those: they are then left
/// unacknowledged with the node (for a client that reads them), and replies to
/// [`Client::request`] still arrive.
pub struct Inbox {
    /// Commands (replies to [`Client::request`] go to the request instead).
    pub commands: mpsc::Receiver<Message>,
    /// Receipts.
    pub receipts: mpsc::Receiver<Message>,
}

/// The tasks started by [`Inbox::spawn_handlers`]; they end when the client is closed.
#[derive(Debug)]
pub struct Handlers {
    /// Runs the command handler.
    pub commands: tokio::task::JoinHandle<()>,
    /// Runs the receipt handler.
    pub receipts: tokio::task::JoinHandle<()>,
}

impl Inbox {
    /// Runs `on_command` for every incoming command and `on_receipt` for every receipt, each
    /// stream on a task of its own, one message at a time in arrival order. A message counts
    /// as handed over (and is acknowledged to the node) when its handler is called.
    pub fn spawn_handlers<C, CF, R, RF>(self, mut on_command: C, mut on_receipt: R) -> Handlers
    where
        C: FnMut(Message) -> CF + Send + 'static,
        CF: std::future::Future<Output = ()> + Send,
        R: FnMut(Message) -> RF + Send + 'static,
        RF: std::future::Future<Output = ()> + Send,
    {
        let Inbox {
            mut commands,
            mut receipts,
        } = self;
        Handlers {
            commands: tokio::spawn(async move {
                while let Some(m) = commands.recv().await {
                    on_command(m).await;
                }
            }),
            receipts: tokio::spawn(async move {
                while let Some(m) = receipts.recv().await {
                    on_receipt(m).await;
                }
            }),
        }
    }
}

impl Client {
    /// Starts the client and returns it with its receiving side.
    ///
    /// Without an outbox this waits for the first session (up to
    /// [`Options::connect_timeout`], 15 s by default) so a wrong URL, password or node id is
    /// reported here. With an outbox it returns at once: sends are queued in the file until
    /// the node is reachable. Either way the client then reconnects by itself.
    pub async fn connect(opts: Options) -> Result<(Client, Inbox), Error> {
        let endpoint = Endpoint::parse(&opts.url)?;
        for (what, value) in [
            ("node", &opts.node),
            ("identity", &opts.identity),
            ("password", &opts.password),
        ] {
            if value.is_empty() {
                return Err(Error::Config(format!("{what} is empty")));
            }
        }
        let tls = match &opts.ca {
            Some(ca) => Some(tls::trusting(ca)?),
            None if endpoint.needs_tls() => {
                return Err(Error::Config(format!(
                    "{} needs the CA certificate (Options::ca)",
                    opts.url
                )))
            }
            None => None,
        };
        let outbox = match &opts.outbox {
            Some(path) => {
                let path = path.clone();
                let ob = tokio::task::spawn_blocking(move || Outbox::open(&path))
                    .await
                    .map_err(|e| Error::Outbox(format!("opening the outbox failed: {e}")))??;
                Some(Arc::new(ob))
            }
            None => None,
        };
        let (len_tx, pending) = watch::channel(0);
        let made = Arc::new(len_tx);
        let mut queue = SendQueue::new(outbox.clone(), made.clone());
        if let Some(ob) = &outbox {
            for row in outbox::blocking(ob, |o| o.load()).await? {
                queue.push(Pending {
                    id: row.id,
                    body: Bytes::from(row.body),
                    seq: Some(row.seq),
                    waiter: None,
                });
                made.send_modify(|n| *n += 1);
            }
        }
        let me = Address::new(&opts.node, &opts.identity);
        let (cmd_tx, commands) = mpsc::channel(CHANNEL);
        let (rcpt_tx, receipts) = mpsc::channel(CHANNEL);
        let handover = Arc::new(Handover::new(cmd_tx, rcpt_tx, opts.replies_only));
        let (submits, submits_rx) = mpsc::unbounded_channel();
        let (link_tx, link) = watch::channel(None);
        let (stop, stop_rx) = watch::channel(false);
        let (done_tx, done) = watch::channel(false);
        let (first_tx, first_rx) = oneshot::channel();
        let sessions = Arc::new(AtomicU64::new(0));
        let core = Core {
            me: me.clone(),
            password: opts.password.clone(),
            client_id: format!("{}-{}", opts.identity, ulid::Ulid::new()),
            tls,
            queue,
            submits: submits_rx,
            handover: handover.clone(),
            link: link_tx,
            cursors: Cursors::default(),
            stop: stop_rx,
            // With an outbox nobody waits for the first session, and a refused login is
            // retried instead of ending the client (its sends are safe in the file).
            first: opts.outbox.is_none().then_some(first_tx),
            sessions: sessions.clone(),
        };
        tokio::spawn(driver::run(core, endpoint, done_tx));
        let client = Client {
            inner: Arc::new(Inner {
                me,
                submits,
                handover,
                link,
                pending,
                made,
                outbox,
                ids: Mutex::new(ulid::Generator::new()),
                stop,
                done,
                sessions,
            }),
        };
        if client.inner.outbox.is_none() {
            let limit = opts.connect_timeout.unwrap_or(Duration::from_secs(15));
            match tokio::time::timeout(limit, first_rx).await {
                Ok(Ok(Ok(()))) => {}
                Ok(Ok(Err(e))) => return Err(e),
                Ok(Err(_)) => return Err(Error::Closed),
                Err(_) => {
                    return Err(Error::Unreachable(format!(
                        "{}: no session within {limit:?}",
                        opts.url
                    )))
                }
            }
        }
        Ok((client, Inbox { commands, receipts }))
    }

    /// This application's address.
    pub fn address(&self) -> &Address {
        &self.inner.me
    }

    /// The transport in use, `None` while reconnecting.
    pub fn transport(&self) -> Option<Transport> {
        *self.inner.link.borrow()
    }

    /// Waits until a session is up and returns its transport.
    pub async fn connected(&self) -> Result<Transport, Error> {
        let mut link = self.inner.link.clone();
        let t = link
            .wait_for(Option::is_some)
            .await
            .map_err(|_| Error::Closed)?;
        (*t).ok_or(Error::Closed)
    }

    /// Sessions established so far (1 after the first connect; each reconnect adds one).
    pub fn sessions(&self) -> u64 {
        self.inner.sessions.load(Ordering::Relaxed)
    }

    /// Repeat deliveries (same sender and id) dropped so far: the node resends what was not
    /// acknowledged when a connection dies, and the application never sees those twice.
    pub fn repeats_dropped(&self) -> u64 {
        self.inner.handover.repeats()
    }

    /// Sends not yet in the node's custody (with an outbox: rows in the file).
    pub fn pending(&self) -> usize {
        *self.inner.pending.borrow()
    }

    /// Waits until every send so far is in the node's custody.
    pub async fn flush(&self) -> Result<(), Error> {
        let mut pending = self.inner.pending.clone();
        pending
            .wait_for(|n| *n == 0)
            .await
            .map(|_| ())
            .map_err(|_| Error::Closed)
    }

    /// Stops the connection and waits until it is down (and the outbox file released). Sends
    /// still queued stay in the outbox for the next client; without one they fail with
    /// [`Error::Closed`]. Other clones of this client stop working too.
    pub async fn close(self) {
        self.inner.stop.send_replace(true);
        let mut done = self.inner.done.clone();
        let _ = done.wait_for(|d| *d).await;
    }

    fn next_id(&self) -> MessageId {
        let mut ids = self.inner.ids.lock().unwrap_or_else(|p| p.into_inner());
        // The generator fails only when the random part would overflow within one ms.
        ids.generate()
            .map(|u| u.to_string())
            .unwrap_or_else(|_| ulid::Ulid::new().to_string())
    }

    /// Sends a command; returns its id once the application's node has it in its journal.
    ///
    /// While the node is unreachable this waits for the reconnect, unless the client has an
    /// outbox (then it returns as soon as the send is in the file). Dropping the future does
    /// not withdraw the command: it is queued already.
    pub async fn send(&self, to: &Address, cmd: &str, params: Value) -> Result<MessageId, Error> {
        self.send_with(to, cmd, params, SendOptions::default())
            .await
    }

    /// [`Client::send`] with a priority, a time to live, receipts wanted or a chosen id.
    pub async fn send_with(
        &self,
        to: &Address,
        cmd: &str,
        params: Value,
        opts: SendOptions,
    ) -> Result<MessageId, Error> {
        self.submit(to, cmd, &params, None, &opts).await
    }

    /// Answers `incoming`: its sender gets a command `<cmd>.reply` with `reply_to` = its id,
    /// in the same priority class (an answer to an urgent request is urgent too).
    ///
    /// A command that came addressed to a service group this client serves is answered as
    /// that service (`as_service`), which the requester's SDK requires of a reply that does
    /// not come from the address it sent to.
    pub async fn reply(&self, incoming: &Message, params: Value) -> Result<MessageId, Error> {
        let cmd = format!("{}.reply", incoming.cmd);
        let opts = SendOptions {
            priority: incoming.priority,
            ..SendOptions::default()
        };
        let me = &self.inner.me;
        let service = (incoming.to.node == me.node && incoming.to.client != me.client)
            .then_some(incoming.to.client.as_str());
        let reply = Some((incoming.id.as_str(), service));
        self.submit(&incoming.from, &cmd, &params, reply, &opts)
            .await
    }

    /// Sends a command and waits (without blocking anything else) for the reply to it, matched
    /// by `reply_to`. Only a reply from `to` counts (or, for a service group, from one of its
    /// members); a command from anyone else naming the request's id goes to
    /// [`Inbox::commands`]. A `failed`, `expired` or `rejected` receipt of the request ends it
    /// at once with [`Error::Rejected`]. On [`Error::Timeout`] the request itself may still be
    /// delivered; a reply arriving later goes to [`Inbox::commands`].
    pub async fn request(
        &self,
        to: &Address,
        cmd: &str,
        params: Value,
        timeout: Duration,
    ) -> Result<Message, Error> {
        self.request_with(to, cmd, params, timeout, SendOptions::default())
            .await
    }

    /// [`Client::request`] with [`SendOptions`].
    pub async fn request_with(
        &self,
        to: &Address,
        cmd: &str,
        params: Value,
        timeout: Duration,
        mut opts: SendOptions,
    ) -> Result<Message, Error> {
        let id = match opts.id.take() {
            Some(id) => id,
            None => self.next_id(),
        };
        opts.id = Some(id.clone());
        let handover = &self.inner.handover;
        let reply = handover.expect_reply(&id, to);
        let waited = tokio::time::timeout(timeout, async {
            self.submit(to, cmd, &params, None, &opts).await?;
            reply.await.map_err(|_| Error::Closed)
        })
        .await;
        match waited {
            Ok(Ok(m)) => match m.receipt() {
                Some(r) => Err(Error::Rejected {
                    id,
                    reason: format!(
                        "{} by {}: {}",
                        r.status,
                        r.by.as_deref().unwrap_or("the node"),
                        r.reason.as_deref().unwrap_or("no reason given")
                    ),
                }),
                None => Ok(m),
            },
            Ok(Err(e)) => {
                handover.forget_reply(&id);
                Err(e)
            }
            Err(_) => {
                handover.forget_reply(&id);
                Err(Error::Timeout(id))
            }
        }
    }

    async fn submit(
        &self,
        to: &Address,
        cmd: &str,
        params: &Value,
        reply: Option<(&str, Option<&str>)>,
        opts: &SendOptions,
    ) -> Result<MessageId, Error> {
        let id = match &opts.id {
            Some(id) => {
                message::check_id(id)?;
                id.clone()
            }
            None => self.next_id(),
        };
        let body = Bytes::from(opts.submission(&id, to, cmd, params, reply));
        let seq = match &self.inner.outbox {
            Some(ob) => {
                let (i, b) = (id.clone(), body.clone());
                Some(outbox::blocking(ob, move |o| o.insert(&i, &b)).await?)
            }
            None => None,
        };
        let (tx, rx) = oneshot::channel();
        let pending = Pending {
            id: id.clone(),
            body,
            seq,
            waiter: Some(tx),
        };
        self.inner.made.send_modify(|n| *n += 1);
        if self.inner.submits.send(pending).is_err() {
            self.inner.made.send_modify(|n| *n = n.saturating_sub(1));
            return Err(Error::Closed);
        }
        if seq.is_none() {
            rx.await.map_err(|_| Error::Closed)??;
            return Ok(id);
        }
        // In the outbox: wait for custody only while the node is reachable; otherwise the
        // send is safe in the file and goes out after the reconnect.
        let mut link = self.inner.link.clone();
        if link.borrow().is_none() {
            return Ok(id);
        }
        tokio::select! {
            r = rx => match r {
                Ok(Err(e)) => Err(e),
                _ => Ok(id),
            },
            _ = link.wait_for(Option::is_none) => Ok(id),
        }
    }
}
