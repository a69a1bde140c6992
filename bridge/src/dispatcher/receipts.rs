//! Receipts: what a command's sender learns about it, generated where the fact happens.
//!
//! `accepted` at the first node (after its commit), `delivered` at the target's node when a
//! device acknowledges, `replied` at the target's node when the target answers (the
//! expectation is kept in the journal, so a restart in between loses nothing), and the
//! negative ones (`rejected`, `expired`, `failed`) wherever the command is dropped. Positive
//! receipts are sent only when the command asked for them (`receipts` in the submission);
//! negative ones always. A receipt's id is derived from its status and the command's id, so a
//! fact established twice (two devices acknowledging, an expiry seen at two hops after a lost
//! link ack) reaches the application once: the SDK drops repeated ids.

use bytes::Bytes;
use tracing::{info, warn};

use super::State;
use crate::envelope::{null_params, Envelope, Kind, ReceiptKind, ReceiptStatus, RECEIPT_TTL_MS};
use crate::journal::Txn;

/// The id of the `status` receipt about command `reference`.
fn receipt_id(status: &ReceiptStatus, reference: &str) -> Option<String> {
    (!reference.is_empty()).then(|| format!("r.{status}.{reference}"))
}

impl State {
    /// Queues a `status` receipt about `env` for its sender. Nothing is said about receipts:
    /// a receipt about a receipt would never end.
    pub(super) fn send_receipt(
        &mut self,
        tx: &mut Txn,
        env: &Envelope,
        status: ReceiptStatus,
        reason: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        if env.kind == Kind::Receipt {
            return Ok(());
        }
        let rid = receipt_id(&status, &env.id).unwrap_or_else(|| self.next_id());
        let receipt = env.receipt(self.me(), status, reason, rid);
        self.accept(tx, receipt, now)
    }

    /// Drops `env` and tells its sender why (receipts themselves are dropped with a log line).
    pub(super) fn refuse(
        &mut self,
        tx: &mut Txn,
        env: &Envelope,
        status: ReceiptStatus,
        why: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        if env.kind == Kind::Receipt {
            warn!(id = %env.id, to = ?env.to, reason = why, "receipt dropped");
            return Ok(());
        }
        info!(id = %env.id, status = %status, reason = why, "command not deliverable");
        self.stats.refused();
        self.keep_dead(tx, env, &status, why, now)?;
        self.send_receipt(tx, env, status, why, now)
    }

    /// A client's command was just taken into custody here (its first node): the `accepted`
    /// receipt if wanted, and the `replied` receipt owed for the command it answers.
    pub(super) fn submitted(
        &mut self,
        tx: &mut Txn,
        client: &str,
        env: &Envelope,
        now: u64,
    ) -> rusqlite::Result<()> {
        if env.receipts.contains(&ReceiptKind::Accepted) {
            self.send_receipt(tx, env, ReceiptStatus::Accepted, "", now)?;
        }
        if let Some(answered) = &env.reply_to {
            if let Some(origin) = tx.take_awaited(&format!("{client}/{answered}"))? {
                match Envelope::parse(&origin) {
                    Ok(origin) => {
                        self.send_receipt(tx, &origin, ReceiptStatus::Replied, "", now)?
                    }
                    Err(e) => warn!(error = %e, "unreadable reply expectation dropped"),
                }
            }
        }
        Ok(())
    }

    /// A command was queued for local client `client`: if its sender wants to know about the
    /// reply, remember the command (without its params) until it expires.
    pub(super) fn expect_reply(
        &mut self,
        tx: &mut Txn,
        client: &str,
        env: &Envelope,
        now: u64,
    ) -> rusqlite::Result<()> {
        if env.kind != Kind::Cmd || !env.receipts.contains(&ReceiptKind::Replied) {
            return Ok(());
        }
        let mut origin = env.clone();
        origin.params = null_params();
        origin.trail.clear();
        let until = env.expires_at.unwrap_or(now + RECEIPT_TTL_MS);
        tx.await_reply(&format!("{client}/{}", env.id), &origin.to_bytes(), until)
    }

    /// A device acknowledged `body` (found by [`crate::clients::stream::may_want_delivered`]): the
    /// `delivered` receipt, if the command asked for one.
    pub(super) fn delivered_notice(
        &mut self,
        tx: &mut Txn,
        body: &Bytes,
        now: u64,
    ) -> rusqlite::Result<()> {
        match Envelope::parse(body) {
            Ok(env) if env.receipts.contains(&ReceiptKind::Delivered) => {
                self.send_receipt(tx, &env, ReceiptStatus::Delivered, "", now)
            }
            _ => Ok(()),
        }
    }
}
