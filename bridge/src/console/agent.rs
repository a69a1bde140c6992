//! The console's agent: one task per node. It makes the node's own summary every
//! [`TICK`], keeps the subtree's summaries, sends its own up when it changed (or every
//! [`HEARTBEAT`]) and relays its children's at once; and it routes questions: down to the
//! child whose subtree holds the node asked (or to every child, for `*`), answered here when
//! the node asked is this one, with the answers going back up, or to the web console.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, warn};

use super::ask::{Op, Reply};
use super::status::{NodeStatus, Sources};
use super::tree::TreeView;
use super::{Console, Note, Question};
use crate::audit::{self, AuditQuery};
use crate::dispatcher::{Operation, OperatorRequest, Request};
use crate::envelope::now_ms;
use crate::link::frame::Frame;
use crate::link::uplink::UplinkHandle;
use crate::route::within;

/// How often the agent looks at its own summary and at questions past their time.
const TICK: Duration = Duration::from_millis(500);
/// The shortest gap between two summaries sent up.
const MIN_GAP: Duration = Duration::from_secs(1);
/// An unchanged summary is sent up this often, so the parent knows the node is there.
const HEARTBEAT: Duration = Duration::from_secs(10);
/// How long the web console waits for answers from the subtree.
const BUDGET_MS: u64 = 6_000;
/// Each hop down passes on this much less, so its answer can still make it up in time.
const HOP_MARGIN_MS: u64 = 700;

/// Where the answers to a question go.
enum ReplyTo {
    /// Up, as an `answer` frame with the parent's number.
    Parent(u64),
    /// To this node's web console.
    Local(oneshot::Sender<Vec<Reply>>),
}

/// A question waiting for answers.
struct Pending {
    reply_to: ReplyTo,
    /// Who has not answered yet: children, and this node itself.
    waiting: HashSet<String>,
    replies: Vec<Reply>,
    deadline: Instant,
}

/// The console's agent of one node.
pub struct Agent {
    sources: Sources,
    children: Vec<String>,
    tree: Arc<Mutex<TreeView>>,
    changes: watch::Sender<u64>,
    uplink: Option<UplinkHandle>,
    dispatcher: mpsc::Sender<Request>,
    notes: mpsc::UnboundedReceiver<Note>,
    questions: mpsc::Receiver<Question>,
    done_tx: mpsc::UnboundedSender<(u64, Reply)>,
    done_rx: mpsc::UnboundedReceiver<(u64, Reply)>,
    pending: HashMap<u64, Pending>,
    next_qid: u64,
    last_sent: Option<(NodeStatus, Instant)>,
}

impl Agent {
    /// An agent for the node `sources` describes, with its configured `children`; returns it,
    /// the web console's handle, and where the links hand it frames.
    pub fn new(
        sources: Sources,
        children: Vec<String>,
        uplink: Option<UplinkHandle>,
        dispatcher: mpsc::Sender<Request>,
    ) -> (Agent, Arc<Console>, mpsc::UnboundedSender<Note>) {
        let tree = Arc::new(Mutex::new(TreeView::new(&sources.node)));
        let (changes, changes_rx) = watch::channel(0);
        let (notes_tx, notes) = mpsc::unbounded_channel();
        let (questions_tx, questions) = mpsc::channel(64);
        let (done_tx, done_rx) = mpsc::unbounded_channel();
        let console = Arc::new(Console {
            me: sources.node.clone(),
            tree: tree.clone(),
            changes: changes_rx,
            questions: questions_tx,
        });
        let agent = Agent {
            sources,
            children,
            tree,
            changes,
            uplink,
            dispatcher,
            notes,
            questions,
            done_tx,
            done_rx,
            pending: HashMap::new(),
            next_qid: rand::random::<u32>() as u64,
            last_sent: None,
        };
        (agent, console, notes_tx)
    }

    /// Runs until `shutdown` changes.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut tick = tokio::time::interval(TICK);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = tick.tick() => {
                    self.own_status();
                    self.expire();
                }
                Some(note) = self.notes.recv() => self.note(note),
                Some(q) = self.questions.recv() => {
                    self.ask(&q.to, q.op, BUDGET_MS, ReplyTo::Local(q.reply));
                }
                Some((qid, reply)) = self.done_rx.recv() => {
                    let me = self.sources.node.clone();
                    self.answered(qid, &me, vec![reply]);
                }
                _ = shutdown.changed() => return,
            }
        }
    }

    fn me(&self) -> &str {
        &self.sources.node
    }

    fn changed(&self) {
        self.changes.send_modify(|n| *n = n.wrapping_add(1));
    }

    /// Makes this node's summary; sends it up if it changed or the heartbeat is due.
    fn own_status(&mut self) {
        let own = NodeStatus::own(&self.sources);
        let (changed, due) = match &self.last_sent {
            Some((last, at)) => (!own.same_as(last), at.elapsed()),
            None => (true, HEARTBEAT),
        };
        if changed {
            self.tree
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(own.clone(), now_ms());
            self.changed();
        }
        if (changed && due >= MIN_GAP) || due >= HEARTBEAT {
            if let Some(up) = &self.uplink {
                let body = serde_json::value::to_raw_value(&own).expect("a summary serialises");
                let frame = Frame::Status {
                    node: own.node.clone(),
                    s: &body,
                };
                up.send(frame.to_bytes());
            }
            self.last_sent = Some((own, Instant::now()));
        }
    }

    fn note(&mut self, note: Note) {
        match note {
            Note::Status { child, node, body } => {
                let status = match serde_json::from_str::<NodeStatus>(body.get()) {
                    Ok(s) if s.node == node && within(&child, &node) => s,
                    Ok(_) => {
                        warn!(
                            child,
                            node, "status summary for a node outside the child's subtree dropped"
                        );
                        return;
                    }
                    Err(e) => {
                        warn!(child, error = %e, "unreadable status summary dropped");
                        return;
                    }
                };
                self.tree
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .insert(status, now_ms());
                self.changed();
                if let Some(up) = &self.uplink {
                    up.send(Frame::Status { node, s: &body }.to_bytes());
                }
            }
            Note::Ask {
                qid,
                to,
                budget_ms,
                op,
            } => match serde_json::from_str::<Op>(op.get()) {
                Ok(op) => self.ask(&to, op, budget_ms, ReplyTo::Parent(qid)),
                Err(e) => {
                    let me = self.me().to_string();
                    let reply = Reply::error(&me, format!("unknown question: {e}"));
                    self.finish_with(ReplyTo::Parent(qid), vec![reply]);
                }
            },
            Note::Answer { child, qid, body } => {
                match serde_json::from_str::<Vec<Reply>>(body.get()) {
                    // A child answers for its own subtree only.
                    Ok(mut replies) => {
                        replies.retain(|r| within(&child, &r.node));
                        self.answered(qid, &child, replies);
                    }
                    Err(e) => warn!(child, error = %e, "unreadable answer dropped"),
                }
            }
        }
    }

    /// Routes a question for `to`: answered here, sent down to the child whose subtree holds
    /// `to`, or both (`*`: here and every child).
    fn ask(&mut self, to: &str, op: Op, budget_ms: u64, reply_to: ReplyTo) {
        let me = self.me().to_string();
        let everyone = to == "*";
        let here = everyone || to == me;
        let down: Vec<String> = self
            .children
            .iter()
            .filter(|c| everyone || within(c, to))
            .cloned()
            .collect();
        if !here && down.is_empty() {
            let reply = Reply::error(to, format!("{to} is not in the subtree of {me}"));
            return self.finish_with(reply_to, vec![reply]);
        }
        self.next_qid = self.next_qid.wrapping_add(1);
        let qid = self.next_qid;
        let mut waiting = HashSet::new();
        let mut replies = Vec::new();
        let budget = budget_ms.saturating_sub(HOP_MARGIN_MS).max(HOP_MARGIN_MS);
        let op_json = serde_json::value::to_raw_value(&op).expect("a question serialises");
        let up: HashSet<&str> = self
            .sources
            .stats
            .children()
            .filter(|(_, g)| g.transport().is_some())
            .map(|(c, _)| c.as_str())
            .collect();
        for child in down {
            if !up.contains(child.as_str()) {
                replies.push(Reply::error(
                    &child,
                    format!("link from {me} to {child} is down"),
                ));
                continue;
            }
            let frame = Frame::Ask {
                qid,
                to: to.to_string(),
                budget_ms: budget,
                op: &op_json,
            };
            let send = Request::LinkSend {
                child: child.clone(),
                frame: frame.to_bytes(),
            };
            if self.dispatcher.try_send(send).is_err() {
                replies.push(Reply::error(&child, "this node is too busy to ask"));
                continue;
            }
            waiting.insert(child);
        }
        if here {
            waiting.insert(me.clone());
            let done = self.done_tx.clone();
            let local = Local {
                me,
                journal: self.sources.journal.clone(),
                dispatcher: self.dispatcher.clone(),
            };
            tokio::spawn(async move {
                let reply = local.answer(op).await;
                let _ = done.send((qid, reply));
            });
        }
        let pending = Pending {
            reply_to,
            waiting,
            replies,
            deadline: Instant::now() + Duration::from_millis(budget_ms),
        };
        if pending.waiting.is_empty() {
            return self.finish_with(pending.reply_to, pending.replies);
        }
        self.pending.insert(qid, pending);
    }

    fn answered(&mut self, qid: u64, from: &str, replies: Vec<Reply>) {
        let Some(p) = self.pending.get_mut(&qid) else {
            debug!(qid, from, "late answer dropped");
            return;
        };
        if p.waiting.remove(from) {
            p.replies.extend(replies);
        }
        if p.waiting.is_empty() {
            if let Some(p) = self.pending.remove(&qid) {
                self.finish_with(p.reply_to, p.replies);
            }
        }
    }

    /// Questions past their time are answered with what came, and who did not answer.
    fn expire(&mut self) {
        let now = Instant::now();
        let late: Vec<u64> = self
            .pending
            .iter()
            .filter(|(_, p)| p.deadline <= now)
            .map(|(q, _)| *q)
            .collect();
        for qid in late {
            if let Some(mut p) = self.pending.remove(&qid) {
                for node in p.waiting.drain() {
                    p.replies.push(Reply::error(&node, "no answer in time"));
                }
                self.finish_with(p.reply_to, p.replies);
            }
        }
    }

    fn finish_with(&self, reply_to: ReplyTo, mut replies: Vec<Reply>) {
        replies.sort_by(|a, b| a.node.cmp(&b.node));
        match reply_to {
            ReplyTo::Local(tx) => {
                let _ = tx.send(replies);
            }
            ReplyTo::Parent(qid) => {
                if let Some(up) = &self.uplink {
                    let a = serde_json::value::to_raw_value(&replies).expect("answers serialise");
                    up.send(Frame::Answer { qid, a: &a }.to_bytes());
                }
            }
        }
    }
}

/// Answers a question about this node: from its journal (read-only, like `medlink trace`)
/// or through its dispatcher.
struct Local {
    me: String,
    journal: std::path::PathBuf,
    dispatcher: mpsc::Sender<Request>,
}

impl Local {
    async fn answer(self, op: Op) -> Reply {
        let me = self.me.clone();
        match self.run(op).await {
            Ok(v) => Reply::ok(&me, v),
            Err(e) => Reply::error(&me, e),
        }
    }

    async fn run(self, op: Op) -> Result<Value, String> {
        let operation = match op {
            Op::Journey {
                id,
                client,
                node,
                cmd,
                since,
            } => {
                return self
                    .journey(
                        id,
                        AuditQuery {
                            client,
                            node,
                            cmd,
                            since,
                            limit: 200,
                            oldest_first: false,
                        },
                    )
                    .await
            }
            Op::Queues => Operation::Queues,
            Op::Reveal {
                queue,
                id,
                operator,
            } => {
                return self
                    .operate(operator, Operation::Reveal { queue, id })
                    .await
            }
            Op::DeadLetters { query } => {
                query
                    .check()
                    .map_err(|e| format!("{}: {}", e.field, e.problem))?;
                Operation::DeadLetters(query)
            }
            Op::Resend { ids, operator } => {
                return self.operate(operator, Operation::Resend(ids)).await
            }
            Op::Purge { ids, operator } => {
                return self.operate(operator, Operation::Purge(ids)).await
            }
            Op::Log => Operation::Log { limit: 100 },
        };
        self.operate("console".into(), operation).await
    }

    async fn journey(&self, id: Option<String>, q: AuditQuery) -> Result<Value, String> {
        let (journal, me) = (self.journal.clone(), self.me.clone());
        tokio::task::spawn_blocking(move || match id {
            Some(id) => crate::trace::trace_journal(&journal, &me, &id)
                .map(|events| json!({ "trace": events })),
            None => audit::query(&journal, &q)
                .map(|page| json!({ "audit": page.records, "cut": page.cut })),
        })
        .await
        .map_err(|e| e.to_string())?
        .map_err(|e| format!("journal: {e}"))
    }

    async fn operate(&self, operator: String, op: Operation) -> Result<Value, String> {
        let (req, rx) = OperatorRequest::new(operator, op);
        self.dispatcher
            .send(Request::Operator(req))
            .await
            .map_err(|_| "the node is shutting down".to_string())?;
        rx.await
            .map_err(|_| "not committed; retry".to_string())?
            .into_json()
    }
}
