//! [`Mover`]: the task that moves the files of the commands this node holds (`files_pending`).
//!
//! The dispatcher holds a command that refers to files in the `files` queue when a file is not
//! here yet (it came from the parent, which announced it by sending the command) or when the
//! command goes up (the parent must have its files first). It hands the mover a [`Held`]; the
//! mover fetches what is missing from the parent, sends up what the parent lacks, and answers
//! [`Ready`], after which the dispatcher routes the command on. One file moves at a time, in the
//! order the commands were held, urgent commands first. A failure is retried with backoff and
//! logged at WARN with its cause; nothing is lost meanwhile, since the command waits in the
//! journal and the bytes received so far wait in the store.

use std::collections::{HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use medlink_wire::{FileRef, Priority, LANES};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

use super::remote::{ParentStore, TransferError};
use super::store::FileStore;

/// A command held for its files, as the dispatcher hands it over.
#[derive(Debug, Clone)]
pub struct Held {
    /// Its lane of the `files` queue.
    pub lane: Priority,
    /// Its sequence there.
    pub lseq: u64,
    /// Its id, for the logs.
    pub id: String,
    /// The files it refers to.
    pub files: Vec<FileRef>,
    /// It goes up: the parent must have the files too.
    pub up: bool,
}

/// A held command whose files are where they must be: the dispatcher may route it on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ready {
    /// Its lane of the `files` queue.
    pub lane: Priority,
    /// Its sequence there.
    pub lseq: u64,
}

/// Longest wait before a failed transfer is tried again.
const BACKOFF_CAP: Duration = Duration::from_secs(30);

/// Moves files for held commands (see the module docs).
pub struct Mover {
    store: Arc<FileStore>,
    parent: Option<ParentStore>,
    held: mpsc::UnboundedReceiver<Held>,
    ready: mpsc::UnboundedSender<Ready>,
    /// Waiting, one queue per lane, most urgent first.
    queue: [VecDeque<Held>; LANES],
    /// Files the parent is known to have (sent or found there since this process started).
    at_parent: HashSet<String>,
}

impl Mover {
    /// A mover over `store`, moving through `parent` (none at the root). Commands come in on
    /// the returned sender; their readiness goes out on `ready`.
    pub fn new(
        store: Arc<FileStore>,
        parent: Option<ParentStore>,
        ready: mpsc::UnboundedSender<Ready>,
    ) -> (Mover, mpsc::UnboundedSender<Held>) {
        let (tx, held) = mpsc::unbounded_channel();
        let mover = Mover {
            store,
            parent,
            held,
            ready,
            queue: Default::default(),
            at_parent: HashSet::new(),
        };
        (mover, tx)
    }

    fn take_in(&mut self, held: Held) {
        let lane = Priority::ALL
            .iter()
            .position(|p| *p == held.lane)
            .unwrap_or(0);
        self.queue[lane].push_back(held);
    }

    fn next(&mut self) -> Option<Held> {
        self.queue.iter_mut().find_map(VecDeque::pop_front)
    }

    /// Runs until `shutdown` turns true. A transfer in progress is abandoned there; what it
    /// received is kept and resumed after the restart.
    pub async fn run(mut self, mut shutdown: watch::Receiver<bool>) {
        let mut backoff = Duration::from_secs(1);
        let mut failing: Option<(Instant, Instant)> = None;
        loop {
            while let Ok(held) = self.held.try_recv() {
                self.take_in(held);
            }
            let Some(item) = self.next() else {
                tokio::select! {
                    held = self.held.recv() => match held {
                        Some(held) => self.take_in(held),
                        None => return,
                    },
                    _ = shutdown.changed() => return,
                }
                continue;
            };
            let outcome = tokio::select! {
                r = self.settle(&item) => r,
                _ = shutdown.changed() => return,
            };
            match outcome {
                Ok(()) => {
                    if let Some((since, _)) = failing.take() {
                        info!(
                            down_for_s = since.elapsed().as_secs(),
                            "file transfers to and from the parent work again"
                        );
                    }
                    backoff = Duration::from_secs(1);
                    let ready = Ready {
                        lane: item.lane,
                        lseq: item.lseq,
                    };
                    if self.ready.send(ready).is_err() {
                        return;
                    }
                }
                Err(e) => {
                    let now = Instant::now();
                    let (since, next_warn) = failing.get_or_insert((now, now));
                    if now >= *next_warn {
                        warn!(id = %item.id, error = %e, failing_for_s = since.elapsed().as_secs(),
                            "a command waits for its files: the transfer failed and is retried");
                        *next_warn = now + Duration::from_secs(60);
                    }
                    // Behind the others: one file the parent refuses holds up no other command.
                    self.take_in(item);
                    tokio::select! {
                        _ = tokio::time::sleep(backoff) => {}
                        _ = shutdown.changed() => return,
                    }
                    backoff = (backoff * 2).min(BACKOFF_CAP);
                }
            }
        }
    }

    /// Brings every file of `item` here (from the parent), and for a command going up, to
    /// the parent.
    async fn settle(&mut self, item: &Held) -> Result<(), TransferError> {
        for file in &item.files {
            // A bucket shared with the parent may hold it: then nothing moves.
            let here = self
                .store
                .probe(&file.sha256, file.size)
                .await
                .map_err(super::FileError::Io)?;
            if !here {
                let parent = self.parent.as_ref().ok_or(TransferError::NoAddress)?;
                let t0 = Instant::now();
                let from = parent.fetch(&self.store, file).await?;
                info!(sha256 = %file.sha256, size = file.size, from_offset = from, ms = t0.elapsed().as_millis() as u64, "file fetched from the parent");
            }
            if item.up && !self.at_parent.contains(&file.sha256) {
                let parent = self.parent.as_ref().ok_or(TransferError::NoAddress)?;
                let t0 = Instant::now();
                let from = parent.push(&self.store, file).await?;
                info!(sha256 = %file.sha256, size = file.size, from_offset = from, ms = t0.elapsed().as_millis() as u64, "file sent to the parent");
                self.at_parent.insert(file.sha256.clone());
            }
        }
        Ok(())
    }
}
