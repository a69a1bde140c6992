//! medlink's client SDK: how a hospital system talks to its medlink node without mixing any
//! of medlink into its own code.
//!
//! Everything is asynchronous: [`Client::send`] returns as soon as the application's node has
//! the command in its journal (custody), answers arrive on the receiving side ([`Inbox`]) or,
//! for [`Client::request`], as the completion of the request; the caller's thread is never
//! blocked. Deliveries are acknowledged only after they were handed over, and every message is
//! handed over once per client, whatever the resends underneath.
//!
//! ```no_run
//! use medlink_sdk::{Address, Client, Options};
//! use std::time::Duration;
//!
//! # async fn demo() -> Result<(), medlink_sdk::Error> {
//! let (clinic, mut inbox) = Client::connect(Options {
//!     url: "mqtts://localhost:18833".into(),
//!     node: "js.nj.gulou.t3".into(),
//!     identity: "clinic-t3".into(),
//!     password: "dev-clinic-t3".into(),
//!     ca: Some("conf/dev/certs/ca.crt".into()),
//! })
//! .await?;
//! let hospital = Address::new("js.nj", "hosp-nj");
//! let answer = clinic
//!     .request(&hospital, "consult.request", serde_json::json!({"patient": "P-1"}), Duration::from_secs(60))
//!     .await?;
//! println!("opinion: {}", answer.params);
//! while let Some(cmd) = inbox.commands.recv().await {
//!     clinic.reply(&cmd, serde_json::json!({"ok": true})).await?;
//! }
//! # Ok(())
//! # }
//! ```
//!
//! Not yet here (the rest of the client-side issue): HTTP transport and MQTT→HTTP fallback,
//! the local outbox for sends while the node is unreachable, and `accepted`/`delivered`
//! receipts from the nodes.

mod client;
mod message;

pub use client::{Client, Inbox, Options};
pub use message::{Address, Hop, Kind, Message, MessageId, Priority};

/// What can go wrong.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad options.
    #[error("configuration: {0}")]
    Config(String),
    /// The node cannot be reached, or the connection was lost before the node confirmed
    /// custody (resending is safe: the id is the same).
    #[error("node unreachable: {0}")]
    Unreachable(String),
    /// No reply to request `0` in time (the request itself was delivered or still is).
    #[error("no reply to {0} in time")]
    Timeout(MessageId),
}
