//! medlink's client SDK: how a hospital system talks to its medlink node without mixing any
//! of medlink into its own code.
//!
//! Everything is asynchronous: [`Client::send`] returns as soon as the application's node has
//! the command in its journal (custody); answers arrive on the receiving side ([`Inbox`]) or,
//! for [`Client::request`], as the completion of the request. Incoming commands and receipts
//! come on channels the application reads on its own tasks; the SDK's connection runs on a
//! task of its own, so no caller is ever blocked by the network.
//!
//! # Transports
//!
//! [`Options::url`] says where the node is:
//!
//! - `mqtts://host:port` (or `mqtt://` on loopback): MQTT directly.
//! - `https://host:port` (or `http://`): the node's HTTP API. The SDK first asks
//!   `GET /v1/transport` and follows the node's decision for this identity: MQTT over TCP/TLS
//!   (`mqtt_url`), MQTT over WebSocket (`ws://`/`wss://`, `ws_url`), or HTTP — `POST
//!   /v1/messages` to send and long-polls of `/v1/inbox` and `/v1/receipts` to receive. If the
//!   MQTT URL the node advertises cannot be reached (two failed attempts), the SDK uses HTTP
//!   and goes back to MQTT once that URL accepts connections again (probed every 10 s).
//!
//! The HTTP transport goes through `HTTPS_PROXY`/`HTTP_PROXY` (and honours `NO_PROXY`) from
//! the environment, for sites that reach the outside only through a proxy. TLS trusts exactly
//! [`Options::ca`]: no system roots are compiled in.
//!
//! The guarantees are the same on every transport:
//!
//! - a send completes when the node confirmed custody (PUBACK, or 202 after its commit);
//! - the client reconnects by itself (jittered backoff, 100 ms doubling to 5 s), and a send
//!   in progress when the connection dropped is sent again with the same id, which the node
//!   accepts once;
//! - a delivery is acknowledged (PUBACK, or the cursor of the next poll) only after it was
//!   handed to the application, and the application never gets the same message twice
//!   (see [`Client::repeats_dropped`]). The memory of ids is per process: after an
//!   application restart, the last deliveries handed over but not yet acknowledged may come
//!   once more.
//!
//! *Handed over* means placed on an [`Inbox`] channel (or given to the waiting
//! [`Client::request`]); from then on the message is the application's. Acknowledging there,
//! and not when a handler has finished, is deliberate: a handler that itself awaits a reply
//! (a consultation that asks a colleague) would otherwise hold the node's delivery window
//! with the commands queued behind it, and the reply it waits for could never be delivered.
//! The channels hold at most 1,024 messages each, which bounds what an application can have
//! taken and not yet processed. An application that must not lose work across its own crash
//! records each command before acting on it, keyed by its id (stable across resends, so the
//! record doubles as idempotency).
//!
//! Refusals differ by transport only in when they show: over HTTP a command the node refuses
//! at once (invalid, unknown local target) fails `send` with [`Error::Rejected`]; over MQTT
//! (3.1.1, whose PUBACK carries no reason) `send` succeeds and a `rejected`/`failed` receipt
//! follows on [`Inbox::receipts`]. Failures further along come as receipts on both.
//!
//! # Outbox
//!
//! With [`Options::outbox`] set, every send is first written to a local SQLite file (one
//! transaction, under the id the node will see) and [`Client::send`] returns once the node has
//! it or, while the node is unreachable, once it is in the file. A background task delivers
//! the file's sends in order when the node is reachable and deletes each only after the node
//! has custody. Sends survive an application restart: a new client on the same file continues.
//! Without an outbox, `send` while disconnected waits for the reconnect.
//!
//! # Example
//!
//! ```no_run
//! use medlink_sdk::{Address, Client, Options};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), medlink_sdk::Error> {
//! let (clinic, mut inbox) = Client::connect(Options {
//!     url: "https://localhost:18843".into(),
//!     node: "js.nj.gulou.t3".into(),
//!     identity: "clinic-t3".into(),
//!     password: "dev-clinic-t3".into(),
//!     ca: Some("conf/dev/certs/ca.crt".into()),
//!     ..Default::default()
//! })
//! .await?;
//! let hospital = Address::new("js.nj", "hosp-nj");
//! let answer = clinic
//!     .request(&hospital, "consult.request", serde_json::json!({"patient": "P-1"}), Duration::from_secs(60))
//!     .await?;
//! println!("opinion: {}", answer.params);
//! // Commands for this clinic, each once, on a task of their own.
//! tokio::spawn(async move {
//!     while let Some(cmd) = inbox.commands.recv().await {
//!         let _ = clinic.reply(&cmd, serde_json::json!({"ok": true})).await;
//!     }
//! });
//! # Ok(())
//! # }
//! ```
//!
//! The README's ten-line integration, with handlers on tasks of their own:
//!
//! ```no_run
//! # async fn readme() -> Result<(), medlink_sdk::Error> {
//! use medlink_sdk::{Address, Client, Options}; use serde_json::json; use std::time::Duration;
//! let (clinic, inbox) = Client::connect(Options {
//!     url: "https://localhost:18843".into(), node: "js.nj.gulou.t3".into(), identity: "clinic-t3".into(),
//!     password: "dev-clinic-t3".into(), ca: Some("conf/dev/certs/ca.crt".into()), ..Default::default()
//! }).await?;
//! let answering = clinic.clone();
//! inbox.spawn_handlers(move |cmd| { let c = answering.clone(); async move { c.reply(&cmd, json!({"ok": true})).await.ok(); } },
//!                      |receipt| async move { println!("receipt: {:?}", receipt.receipt()) });
//! let opinion = clinic.request(&Address::new("js.nj", "hosp-nj"), "consult.request", json!({"patient": "P-1"}), Duration::from_secs(60)).await?;
//! # let _ = opinion; Ok(())
//! # }
//! ```
//!
//! Options of one send (priority, time to live, receipts wanted, a chosen id, file references):
//!
//! ```
//! use medlink_sdk::{Priority, ReceiptKind, SendOptions};
//! use std::time::Duration;
//!
//! let urgent = SendOptions {
//!     priority: Priority::Urgent,
//!     ttl: Some(Duration::from_secs(600)),
//!     receipts: vec![ReceiptKind::Delivered],
//!     id: Some("stroke-alert-0042".into()),
//!     ..SendOptions::default()
//! };
//! assert_ne!(urgent, SendOptions::default());
//! ```

#![warn(missing_docs)]

mod client;
mod dedup;
mod driver;
mod files;
mod handover;
mod http;
mod message;
mod mqtt;
mod options;
mod outbox;
mod sendq;
mod session;
mod tls;

pub use client::{Client, Handlers, Inbox};
pub use files::Files;
/// The transport a client is using: MQTT over TCP or TLS, MQTT over WebSocket, or the node's
/// HTTP API.
pub use medlink_wire::{valid_sha256, FileRef, Transport};
pub use message::{
    Address, Hop, Kind, Message, MessageId, Priority, Receipt, ReceiptKind, ReceiptStatus,
};
pub use options::{Options, SendOptions};

/// What can go wrong.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// Bad options (URL, CA, id, empty identity...).
    #[error("configuration: {0}")]
    Config(String),
    /// The node refused the login (wrong identity or password, or not a client identity).
    #[error("refused by the node: {0}")]
    Auth(String),
    /// The node could not be reached in time.
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// No reply to request `0` in time (the request itself was delivered or still is).
    #[error("no reply to {0} in time")]
    Timeout(MessageId),
    /// The node refused this command for good (invalid, unknown target): resending it will
    /// not help.
    #[error("command {id} refused: {reason}")]
    Rejected {
        /// The command's id.
        id: MessageId,
        /// The node's reason.
        reason: String,
    },
    /// The local outbox file failed.
    #[error("outbox: {0}")]
    Outbox(String),
    /// The client was closed (or its connection task ended).
    #[error("the client is closed")]
    Closed,
    /// An upload or download failed (the node's reason, or a SHA-256 that did not match).
    #[error("file transfer: {0}")]
    Files(String),
}
