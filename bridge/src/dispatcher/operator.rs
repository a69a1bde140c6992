//! What operators ask of the dispatcher: dead letters (kept where a command ended failed,
//! expired or rejected), re-sending and purging them, and the operator log that records every
//! such action. Re-sends and purges are written in the round's transaction, and answered only
//! after its commit, like custody.

use medlink_broker::Accept;
use medlink_wire::{DeadLetterQuery, DeadReason, OperatorAction, Outcome};
use tokio::sync::oneshot;
use tracing::info;

use super::State;
use crate::envelope::{Address, Envelope, Kind, ReceiptStatus};
use crate::journal::{Dead, Ended, Txn};

/// One operator request.
#[derive(Debug)]
pub enum Operation {
    /// List dead letters.
    DeadLetters(DeadLetterQuery),
    /// Re-send these dead letters as new commands.
    Resend(Vec<String>),
    /// Forget these dead letters.
    Purge(Vec<String>),
    /// The last lines of the operator log.
    Log {
        /// Most lines.
        limit: usize,
    },
    /// The queues whose first in line is oldest, per group and lane, with their first
    /// commands (params left out).
    Queues,
    /// One waiting command, params included; written in the operator log.
    Reveal {
        /// The journal queue it waits in.
        queue: String,
        /// Its id.
        id: String,
    },
}

/// The dispatcher's answer to an [`Operation`].
#[derive(Debug)]
pub enum Answer {
    /// Dead letters, newest first.
    DeadLetters(Vec<Dead>),
    /// What happened to each dead letter acted on.
    Outcomes(Vec<Outcome>),
    /// Operator log lines, newest first.
    Log(Vec<OperatorAction>),
    /// A JSON answer (queues, a revealed command); `Err` says why there is none.
    Json(Result<serde_json::Value, String>),
}

impl Answer {
    /// The answer as the API and the console give it: `{"deadletters": …}`, `{"outcomes": …}`,
    /// `{"log": …}`, or the JSON itself; `Err` says why there is none.
    pub fn into_json(self) -> Result<serde_json::Value, String> {
        Ok(match self {
            Answer::DeadLetters(d) => serde_json::json!({ "deadletters": d }),
            Answer::Outcomes(o) => serde_json::json!({ "outcomes": o }),
            Answer::Log(l) => serde_json::json!({ "log": l }),
            Answer::Json(j) => j?,
        })
    }
}

/// An operator's request, with who asks and where the answer goes (after the commit).
#[derive(Debug)]
pub struct OperatorRequest {
    /// The operator's identity (an admin).
    pub operator: String,
    /// What to do.
    pub op: Operation,
    /// Where the answer goes.
    pub reply: oneshot::Sender<Answer>,
}

impl OperatorRequest {
    /// `operator` asks for `op`; the answer comes on the receiver, after the commit.
    pub fn new(operator: String, op: Operation) -> (OperatorRequest, oneshot::Receiver<Answer>) {
        let (reply, rx) = oneshot::channel();
        let req = OperatorRequest {
            operator,
            op,
            reply,
        };
        (req, rx)
    }
}

/// The dead-letter reason of a negative receipt's status.
pub(super) fn dead_reason(status: &ReceiptStatus) -> Option<DeadReason> {
    match status {
        ReceiptStatus::Failed => Some(DeadReason::Failed),
        ReceiptStatus::Expired => Some(DeadReason::Expired),
        ReceiptStatus::Rejected => Some(DeadReason::Rejected),
        _ => None,
    }
}

impl State {
    /// Keeps `env`, which ended here with `status`, as a dead letter.
    pub(super) fn keep_dead(
        &mut self,
        tx: &mut Txn,
        env: &Envelope,
        status: &ReceiptStatus,
        why: &str,
        now: u64,
    ) -> rusqlite::Result<()> {
        let Some(reason) = dead_reason(status).filter(|_| env.kind == Kind::Cmd) else {
            return Ok(());
        };
        let ended = Ended {
            id: &env.id,
            reason,
            detail: why,
            from: &env.from,
            to: &env.to,
            cmd: &env.cmd,
            envelope: &env.to_bytes(),
        };
        tx.dead_letter(ended, now)
    }

    /// Keeps a submission of `client` refused at this node as a rejected dead letter, under
    /// its own id if it names a usable one, else under `fallback_id`.
    pub(super) fn keep_rejected(
        &mut self,
        tx: &mut Txn,
        client: &str,
        payload: &[u8],
        why: &str,
        (fallback_id, now): (&str, u64),
    ) -> rusqlite::Result<()> {
        let json: serde_json::Value = serde_json::from_slice(payload).unwrap_or_default();
        let text = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
        let id = json["id"]
            .as_str()
            .filter(|id| medlink_wire::valid_id(id))
            .unwrap_or(fallback_id);
        let ended = Ended {
            id,
            reason: DeadReason::Rejected,
            detail: why,
            from: &Address::new(self.me(), client),
            to: &Address::new(text(&json["to"]["node"]), text(&json["to"]["client"])),
            cmd: &text(&json["cmd"]),
            envelope: payload,
        };
        tx.dead_letter(ended, now)
    }

    /// Carries out `req` in the round's transaction; the answer waits for the commit.
    pub(super) fn operate(
        &mut self,
        tx: &mut Txn,
        req: OperatorRequest,
        now: u64,
    ) -> rusqlite::Result<(oneshot::Sender<Answer>, Answer)> {
        let operator = req.operator;
        let answer = match req.op {
            Operation::DeadLetters(q) => Answer::DeadLetters(tx.dead_letters(&q, self.me())?),
            Operation::Log { limit } => Answer::Log(tx.operator_log(limit)?),
            Operation::Queues => Answer::Json(Ok(self.queues(tx)?)),
            Operation::Reveal { queue, id } => {
                Answer::Json(self.reveal(tx, &queue, &id, &operator, now)?)
            }
            Operation::Resend(ids) => {
                let mut outcomes = Vec::with_capacity(ids.len());
                for id in ids {
                    outcomes.push(self.resend(tx, &id, &operator, now)?);
                }
                Answer::Outcomes(outcomes)
            }
            Operation::Purge(ids) => {
                let mut outcomes = Vec::with_capacity(ids.len());
                for id in ids {
                    let error = if tx.purge_dead_letter(&id)? {
                        let action = action(now, &operator, "purge", &id, String::new());
                        tx.log_operator(&action)?;
                        info!(operator, id, "dead letter purged");
                        None
                    } else {
                        Some(format!("no dead letter {id} at {}", self.me()))
                    };
                    outcomes.push(Outcome {
                        id,
                        resent_as: None,
                        error,
                    });
                }
                Answer::Outcomes(outcomes)
            }
        };
        Ok((req.reply, answer))
    }

    /// Re-sends dead letter `id` as a new command from its original sender. An expired one
    /// gets the time to live it had; a rejected submission is submitted again (and may be
    /// refused again, which is said).
    fn resend(
        &mut self,
        tx: &mut Txn,
        id: &str,
        operator: &str,
        now: u64,
    ) -> rusqlite::Result<Outcome> {
        let refused = |error: String| Outcome {
            id: id.to_string(),
            resent_as: None,
            error: Some(error),
        };
        let Some(dead) = tx.resendable(id)? else {
            return Ok(refused(format!("no dead letter {id} at {}", self.me())));
        };
        if let Some(earlier) = dead.resent_as {
            return Ok(refused(format!("already re-sent as {earlier}")));
        }
        let new_id = self.next_id();
        match dead.reason {
            DeadReason::Rejected => {
                // The submission again, without its own id: the re-send is a new command.
                let mut submission: serde_json::Value = match serde_json::from_slice(&dead.envelope)
                {
                    Ok(v @ serde_json::Value::Object(_)) => v,
                    _ => return Ok(refused("the submission is not a JSON object".into())),
                };
                if let Some(fields) = submission.as_object_mut() {
                    fields.remove("id");
                }
                let payload = submission.to_string();
                let verdict = self.command(
                    tx,
                    &dead.from.client,
                    payload.as_bytes(),
                    now,
                    Some(new_id.clone()),
                )?;
                if verdict != Accept::Committed {
                    return Ok(refused(format!("refused again: {verdict:?}")));
                }
            }
            DeadReason::Failed | DeadReason::Expired => {
                let mut env = match Envelope::parse(&dead.envelope) {
                    Ok(env) => env,
                    Err(e) => return Ok(refused(format!("the envelope is unreadable: {e}"))),
                };
                let ttl = env.expires_at.map(|e| e.saturating_sub(env.created_at));
                env.id = new_id.clone();
                env.created_at = now;
                env.expires_at = ttl.map(|t| now + t);
                env.hops = 0;
                env.trail.clear();
                self.accept(tx, env, now)?;
            }
        }
        tx.mark_resent(id, &new_id, operator)?;
        let detail = format!("as {new_id}");
        tx.log_operator(&action(now, operator, "resend", id, detail))?;
        info!(operator, id, resent_as = %new_id, "dead letter re-sent");
        Ok(Outcome {
            id: id.to_string(),
            resent_as: Some(new_id),
            error: None,
        })
    }
}

/// Queues shown per group and lane, and commands shown per queue.
const SHOWN_QUEUES: usize = 10;
const SHOWN_COMMANDS: usize = 5;
/// How far into a queue a reveal looks for its command.
const REVEAL_DEPTH: usize = 10_000;

/// What an operator sees of a waiting command before revealing it: no params.
fn summary(body: &[u8]) -> serde_json::Value {
    match Envelope::parse(body) {
        Ok(e) => serde_json::json!({
            "id": e.id, "from": e.from, "to": e.to, "cmd": e.cmd, "priority": e.priority,
            "created_at": e.created_at, "expires_at": e.expires_at, "hops": e.hops,
        }),
        Err(e) => serde_json::json!({ "error": format!("unreadable envelope: {e}") }),
    }
}

impl State {
    /// Per group and lane that has something waiting: the queues whose first in line is
    /// oldest, and their first commands.
    fn queues(&self, tx: &Txn) -> rusqlite::Result<serde_json::Value> {
        let mut groups = Vec::new();
        for ((group, lane), gauge) in self.stats.queues() {
            if gauge.depth == 0 {
                continue;
            }
            let mut queues = Vec::new();
            for (dest, created, waiting) in tx.oldest_queues(&group, lane, SHOWN_QUEUES) {
                let first: Vec<_> = tx
                    .peek(&dest, SHOWN_COMMANDS)?
                    .iter()
                    .map(|q| summary(&q.body))
                    .collect();
                queues.push(serde_json::json!({
                    "queue": dest.to_string(), "waiting": waiting,
                    "oldest_created": created, "first": first,
                }));
            }
            groups.push(serde_json::json!({
                "dest": group.to_string(), "lane": lane, "depth": gauge.depth,
                "oldest_created": gauge.oldest_created, "queues": queues,
            }));
        }
        Ok(serde_json::json!({ "groups": groups }))
    }

    /// Command `id` waiting in `queue`, params included; the operator log records who looked.
    fn reveal(
        &mut self,
        tx: &mut Txn,
        queue: &str,
        id: &str,
        operator: &str,
        now: u64,
    ) -> rusqlite::Result<Result<serde_json::Value, String>> {
        let Ok(dest) = queue.parse::<crate::journal::Dest>() else {
            return Ok(Err(format!("no queue {queue:?}")));
        };
        let found = tx
            .peek(&dest, REVEAL_DEPTH)?
            .into_iter()
            .find(|q| q.id == id);
        let Some(row) = found else {
            return Ok(Err(format!(
                "{id} no longer waits in {queue} at {}",
                self.me()
            )));
        };
        tx.log_operator(&action(now, operator, "reveal", id, format!("in {queue}")))?;
        info!(operator, id, queue, "waiting command revealed");
        Ok(serde_json::from_slice(&row.body).map_err(|e| e.to_string()))
    }
}

/// One line of the operator log.
fn action(at: u64, operator: &str, action: &str, target: &str, detail: String) -> OperatorAction {
    OperatorAction {
        at,
        operator: operator.to_string(),
        action: action.to_string(),
        target: target.to_string(),
        detail,
    }
}
