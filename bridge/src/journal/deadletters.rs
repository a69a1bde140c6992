//! Dead letters and the operator log in the journal: commands that ended failed, expired or
//! rejected here (kept for a retention time, re-sendable), and what operators did.
//!
//! Both are written inside the dispatcher's round transaction, like everything else, so a dead
//! letter exists exactly when the negative receipt about it was committed.

use rusqlite::{params, OptionalExtension};
use serde_json::value::RawValue;

use super::{Result, Txn};
use crate::envelope::Address;
use medlink_wire::{DeadLetter, DeadLetterQuery, DeadReason, OperatorAction, MAX_LISTED};

/// A dead letter as the node lists it: the envelope as raw JSON.
pub type Dead = DeadLetter<Box<RawValue>>;

/// What a re-send needs of a dead letter.
pub struct Resendable {
    /// Why it ended.
    pub reason: DeadReason,
    /// Its sender.
    pub from: Address,
    /// The envelope (or, when rejected, the submission) as stored.
    pub envelope: Vec<u8>,
    /// Already re-sent as this id.
    pub resent_as: Option<String>,
}

/// A new dead letter.
pub struct Ended<'a> {
    /// The command's id.
    pub id: &'a str,
    /// Why.
    pub reason: DeadReason,
    /// The words of its negative receipt.
    pub detail: &'a str,
    /// Sender and target (the target empty when unreadable).
    pub from: &'a Address,
    /// Its target.
    pub to: &'a Address,
    /// Its `cmd`.
    pub cmd: &'a str,
    /// What to keep: the envelope, or the submission as sent.
    pub envelope: &'a [u8],
}

fn raw(bytes: Vec<u8>) -> Box<RawValue> {
    let text = String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned());
    match serde_json::from_str::<&RawValue>(&text) {
        Ok(_) => RawValue::from_string(text),
        Err(_) => RawValue::from_string(serde_json::Value::String(text).to_string()),
    }
    .expect("valid JSON by construction")
}

impl Txn<'_> {
    /// Keeps `ended` as a dead letter at `at` (once per id: a command ends once per node).
    pub fn dead_letter(&mut self, ended: Ended, at: u64) -> Result<()> {
        let n = self
            .tx
            .conn()?
            .prepare_cached(
                "INSERT OR IGNORE INTO deadletter(id, at, reason, detail, from_node, from_client,
                 to_node, to_client, cmd, envelope) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10)",
            )?
            .execute(params![
                ended.id,
                at as i64,
                ended.reason.as_str(),
                ended.detail,
                ended.from.node,
                ended.from.client,
                ended.to.node,
                ended.to.client,
                ended.cmd,
                ended.envelope
            ])?;
        if n > 0 {
            self.dead[ended.reason as usize] += 1;
        }
        Ok(())
    }

    /// Drops dead letters that ended before `before` (Unix ms); returns how many.
    pub fn prune_dead_letters(&mut self, before: u64) -> Result<usize> {
        self.sql()?
            .prepare_cached("DELETE FROM deadletter WHERE at < ?1")?
            .execute([before as i64])
    }

    /// The dead letters `q` asks for, newest first, as node `me` lists them.
    pub fn dead_letters(&self, q: &DeadLetterQuery, me: &str) -> Result<Vec<Dead>> {
        let limit = q.limit.unwrap_or(100).min(MAX_LISTED);
        let mut stmt = self.sql()?.prepare_cached(
            "SELECT id, at, reason, detail, from_node, from_client, to_node, to_client, cmd,
                    envelope, resent_as, resent_by
             FROM deadletter
             WHERE (?1 IS NULL OR reason = ?1)
               AND (?2 IS NULL OR from_client = ?2 OR to_client = ?2)
               AND (?3 IS NULL OR from_node = ?3 OR to_node = ?3)
               AND (?4 IS NULL OR cmd = ?4)
               AND (?5 IS NULL OR id = ?5)
               AND at >= ?6
             ORDER BY at DESC, id LIMIT ?7",
        )?;
        let rows = stmt.query_map(
            params![
                q.reason.map(DeadReason::as_str),
                q.client,
                q.node,
                q.cmd,
                q.id,
                q.since.unwrap_or(0) as i64,
                limit as i64
            ],
            |r| {
                let reason: String = r.get(2)?;
                Ok(DeadLetter {
                    id: r.get(0)?,
                    at: r.get::<_, i64>(1)? as u64,
                    reason: reason.parse().unwrap_or(DeadReason::Failed),
                    detail: r.get(3)?,
                    node: me.to_string(),
                    from: Address::new(r.get::<_, String>(4)?, r.get::<_, String>(5)?),
                    to: Address::new(r.get::<_, String>(6)?, r.get::<_, String>(7)?),
                    cmd: r.get(8)?,
                    envelope: raw(r.get(9)?),
                    resent_as: r.get(10)?,
                    resent_by: r.get(11)?,
                })
            },
        )?;
        rows.collect()
    }

    /// What re-sending dead letter `id` needs, if there is one.
    pub fn resendable(&self, id: &str) -> Result<Option<Resendable>> {
        self.sql()?
            .prepare_cached(
                "SELECT reason, from_node, from_client, envelope, resent_as FROM deadletter
                 WHERE id = ?1",
            )?
            .query_row([id], |r| {
                let reason: String = r.get(0)?;
                Ok(Resendable {
                    reason: reason.parse().unwrap_or(DeadReason::Failed),
                    from: Address::new(r.get::<_, String>(1)?, r.get::<_, String>(2)?),
                    envelope: r.get(3)?,
                    resent_as: r.get(4)?,
                })
            })
            .optional()
    }

    /// Records that dead letter `id` was re-sent as `new_id` by `operator`.
    pub fn mark_resent(&mut self, id: &str, new_id: &str, operator: &str) -> Result<()> {
        self.sql()?
            .prepare_cached("UPDATE deadletter SET resent_as = ?2, resent_by = ?3 WHERE id = ?1")?
            .execute(params![id, new_id, operator])?;
        Ok(())
    }

    /// Forgets dead letter `id`; false if there was none.
    pub fn purge_dead_letter(&mut self, id: &str) -> Result<bool> {
        Ok(self
            .tx
            .conn()?
            .prepare_cached("DELETE FROM deadletter WHERE id = ?1")?
            .execute([id])?
            > 0)
    }

    /// Appends one line to the operator log.
    pub fn log_operator(&mut self, action: &OperatorAction) -> Result<()> {
        self.sql()?
            .prepare_cached(
                "INSERT INTO operator_log(at, operator, action, target, detail)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
            )?
            .execute(params![
                action.at as i64,
                action.operator,
                action.action,
                action.target,
                action.detail
            ])?;
        Ok(())
    }

    /// The last `limit` lines of the operator log, newest first.
    pub fn operator_log(&self, limit: usize) -> Result<Vec<OperatorAction>> {
        let mut stmt = self.sql()?.prepare_cached(
            "SELECT at, operator, action, target, detail FROM operator_log
             ORDER BY at DESC, rowid DESC LIMIT ?1",
        )?;
        let rows = stmt.query_map([limit.min(MAX_LISTED) as i64], |r| {
            Ok(OperatorAction {
                at: r.get::<_, i64>(0)? as u64,
                operator: r.get(1)?,
                action: r.get(2)?,
                target: r.get(3)?,
                detail: r.get(4)?,
            })
        })?;
        rows.collect()
    }
}
