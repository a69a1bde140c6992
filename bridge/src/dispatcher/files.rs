//! Commands that refer to files, in the dispatcher: who may read the files here, and holding
//! a command (`files_pending`) until its files are where it goes.
//!
//! The rule that makes a file follow its command: a command in any queue of a node other than
//! `files` has its files in that node's store. So a command is held in the `files` queue
//! ([`Target::Files`]) when a file it names is not here (it came down from the parent, which
//! keeps the file for this node to fetch), or when it goes up (the parent must have the files
//! before the command). The mover (`files/mover.rs`) moves the bytes and answers [`Ready`];
//! the command then goes on as routed. Since links are dialled by the child, it is always the
//! child of a link that holds and moves.
//!
//! Order: per-sender order holds among commands without files. A command with files takes its
//! place in that order at each hop when its files have arrived there, so a large scan holds up
//! no other command.

use bytes::Bytes;
use tracing::{info, warn};

use super::State;
use crate::envelope::{Envelope, Kind, ReceiptKind, ReceiptStatus};
use crate::files::{Held, Ready};
use crate::journal::{Dest, Journal, Target, Txn};
use crate::route::NextHop;

impl State {
    /// Holds `env` (routed to `dest`) in the `files` queue if its files must move first;
    /// returns whether it did.
    pub(super) fn hold_for_files(
        &mut self,
        tx: &mut Txn,
        env: &Envelope,
        dest: &Dest,
        body: &Bytes,
        now: u64,
    ) -> rusqlite::Result<bool> {
        if env.files.is_empty() || env.kind != Kind::Cmd {
            return Ok(false);
        }
        let (Some(store), Some(mover)) = (&self.cfg.files, &self.cfg.mover) else {
            return Ok(false);
        };
        let up = *dest.target() == Target::Up;
        let missing = env
            .files
            .iter()
            .filter(|f| store.size_of(&f.sha256) != Some(f.size))
            .count();
        if !up && missing == 0 {
            return Ok(false);
        }
        let held = Dest::new(Target::Files, env.priority);
        let lseq = tx.enqueue(&held, &env.head(), body.clone())?;
        info!(id = %env.id, files = env.files.len(), missing, up, "command waits for its files");
        // The mover answers in a later round, after this one committed; were the commit to
        // fail, the answer would find nothing to release.
        let _ = mover.send(Held {
            lane: held.lane(),
            lseq,
            id: env.id.clone(),
            files: env.files.clone(),
            up,
        });
        if env.receipts.contains(&ReceiptKind::Delivered) {
            let reason = format!(
                "waiting at {} for {} file(s) to arrive{}",
                self.me(),
                env.files.len(),
                if up { " at the parent" } else { "" }
            );
            self.send_receipt(tx, env, ReceiptStatus::FilesPending, &reason, now)?;
        }
        Ok(true)
    }

    /// The files of a held command are where it goes: it is routed on.
    pub(super) fn files_ready(
        &mut self,
        tx: &mut Txn,
        ready: Ready,
        now: u64,
    ) -> rusqlite::Result<()> {
        let held = Dest::new(Target::Files, ready.lane);
        let Some(entry) = tx.take(&held, ready.lseq)? else {
            return Ok(()); // expired meanwhile
        };
        let env = match Envelope::parse(&entry.body) {
            Ok(env) => env,
            Err(e) => {
                warn!(error = %e, "unreadable held command dropped");
                return Ok(());
            }
        };
        match self.route(&env.head(), now) {
            Ok(dest) => {
                if self.cfg.audit {
                    tx.audit(&env.head(), now, &format!("{dest} (files here)"));
                }
                self.place(tx, env, dest, now, false)
            }
            Err((status, why)) => self.refuse(tx, &env, status, &why, now),
        }
    }

    /// A client's command names a file that is not here, or not the client's to send (it
    /// neither uploaded it nor was sent it): the refusal, naming the field. Otherwise anyone
    /// who learnt a file's hash could grant himself the file by sending it to himself.
    pub(super) fn file_not_sendable(&self, client: &str, env: &Envelope) -> Option<String> {
        let store = self.cfg.files.as_ref()?;
        let (i, f) = env.files.iter().enumerate().find(|(_, f)| {
            store.size_of(&f.sha256) != Some(f.size) || !store.may_read(&f.sha256, client)
        })?;
        Some(format!(
            "files[{i}].sha256: no file {} of {} bytes that {client} may send is in the file store of {}; upload it here first",
            f.sha256,
            f.size,
            self.me()
        ))
    }

    /// A command that refers to files passes this node: their retention starts again.
    pub(super) fn touch_files(&self, env: &Envelope) {
        if let Some(store) = &self.cfg.files {
            for f in &env.files {
                store.touch(&f.sha256);
            }
        }
    }

    /// A command queued for `reader` (a local client, a service member, or a child node that
    /// will fetch them) refers to files: `reader` may read them here. (Written before the
    /// round commits: a round that fails leaves a grant for a command not taken, which only
    /// lets the reader read what its sender meant it to.)
    pub(super) fn grant_files(&self, reader: &str, env: &Envelope) {
        let Some(files) = &self.cfg.files else {
            return;
        };
        for file in &env.files {
            if let Err(e) = files.grant(&file.sha256, reader) {
                warn!(reader, sha256 = %file.sha256, error = %e, "could not record who may read a file");
            }
        }
    }
}

/// The commands held in `journal` for their files, for the mover after a restart.
pub(super) fn held_commands(
    journal: &Journal,
    topology: &crate::route::Topology,
) -> rusqlite::Result<Vec<Held>> {
    let mut out = Vec::new();
    for lane in Dest::lanes(Target::Files) {
        let mut after = 0;
        loop {
            let rows = journal.read(&lane, after, 1024)?;
            let Some(last) = rows.last() else { break };
            after = last.lseq;
            for q in rows {
                let Ok(env) = Envelope::parse(&q.body) else {
                    continue;
                };
                out.push(Held {
                    lane: lane.lane(),
                    lseq: q.lseq,
                    id: env.id.clone(),
                    up: topology.next_hop(&env.head()) == NextHop::Up,
                    files: env.files,
                });
            }
        }
    }
    Ok(out)
}
