//! The operators' console of a node: its live view of the subtree below it, and questions
//! asked of any node of that subtree through the tree.
//!
//! - [`status`]: one node's summary (links, queues, clients, counters, version, uptime).
//! - [`tree`]: the summaries of the subtree, and which nodes are stale.
//! - [`ask`]: the questions ([`ask::Op`]: journey, queues, reveal, dead letters, re-send,
//!   purge, operator log) and answers ([`ask::Reply`]).
//! - [`agent`]: the task that makes this node's summary, keeps the tree, relays summaries up,
//!   and routes questions down and answers up.
//!
//! Summaries, questions and answers travel in link frames (`status`, `ask`, `answer`) beside
//! the custody traffic, never in the journal: they are best effort and replaced by the next.
//! The web page and its endpoints are in `http/console.rs`.

pub mod agent;
pub mod ask;
pub mod status;
pub mod tree;

use std::sync::{Arc, Mutex};

use serde_json::value::RawValue;
use tokio::sync::{mpsc, oneshot, watch};

pub use agent::Agent;

/// What the tier links hand to the console (frames they carry for it).
#[derive(Debug)]
pub enum Note {
    /// A summary from child `child` (of itself or of a node below it).
    Status {
        /// The child the frame came from.
        child: String,
        /// The node it describes.
        node: String,
        /// The summary.
        body: Box<RawValue>,
    },
    /// A question from the parent.
    Ask {
        /// The parent's number for it.
        qid: u64,
        /// The node asked, or `*`.
        to: String,
        /// How long the parent waits, ms.
        budget_ms: u64,
        /// The question.
        op: Box<RawValue>,
    },
    /// Answers from child `child`.
    Answer {
        /// The child.
        child: String,
        /// Our number for the question.
        qid: u64,
        /// The answers.
        body: Box<RawValue>,
    },
}

/// An operator's question from this node's web console, and where the answers go.
pub struct Question {
    /// The node asked, or `*` for every node of the subtree.
    pub to: String,
    /// The question.
    pub op: ask::Op,
    /// The answers, one per node (a missing answer says so).
    pub reply: oneshot::Sender<Vec<ask::Reply>>,
}

/// What the web console shares with the agent.
pub struct Console {
    /// This node's id.
    pub me: String,
    /// The subtree's summaries.
    pub tree: Arc<Mutex<tree::TreeView>>,
    /// Bumped whenever a summary arrives (the live page waits on it).
    pub changes: watch::Receiver<u64>,
    /// Questions to the agent.
    pub questions: mpsc::Sender<Question>,
}

impl Console {
    /// Every node of the subtree, now.
    pub fn rows(&self) -> Vec<tree::Row> {
        self.tree.lock().unwrap_or_else(|p| p.into_inner()).rows()
    }
}
