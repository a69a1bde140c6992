//! Retention: a file is kept while a command that refers to it waits in this node's journal,
//! and for `[files] retention_s` after a command last used it here (queued, held or delivered
//! here all count: `FileStore::touch`). Uploads nobody wrote to for that long are dropped too.
//!
//! A sweep runs a minute after start and then every hour, off the dispatcher: it lists the
//! store, and only for a file past its retention asks the journal (a read-only connection,
//! as `medlink trace` reads it) whether a queued command still names it. Queued commands are
//! searched by the file's hash in their bytes, which costs a pass over the queue table per
//! such file; they are rare (one per file a month) and the sweep is hourly.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rusqlite::{OpenFlags, OptionalExtension};
use tokio::sync::watch;
use tracing::{info, warn};

use super::store::FileStore;

/// The sweeper of one node's store.
pub struct Retention {
    store: Arc<FileStore>,
    journal: PathBuf,
    keep: Duration,
}

impl Retention {
    /// Sweeps `store`, asking the journal at `journal`, keeping files for `keep` after use.
    pub fn new(store: Arc<FileStore>, journal: PathBuf, keep: Duration) -> Retention {
        Retention {
            store,
            journal,
            keep,
        }
    }

    /// Sweeps until `shutdown` turns true.
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        let me = Arc::new(self);
        let mut wait = Duration::from_secs(60);
        loop {
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => return,
            }
            wait = Duration::from_secs(3600);
            let sweeper = me.clone();
            match tokio::task::spawn_blocking(move || sweeper.sweep(SystemTime::now())).await {
                Ok(Ok((0, _))) => {}
                Ok(Ok((n, bytes))) => info!(files = n, bytes, "files past their retention deleted"),
                Ok(Err(e)) => warn!(error = %e, "the file retention sweep failed; files are kept"),
                Err(e) => warn!(error = %e, "the file retention sweep stopped"),
            }
        }
    }

    /// One sweep at `now`: deletes files past retention that no queued command names; returns
    /// how many and their bytes.
    pub fn sweep(&self, now: SystemTime) -> rusqlite::Result<(usize, u64)> {
        let Some(before) = now.checked_sub(self.keep) else {
            return Ok((0, 0));
        };
        self.store.drop_abandoned(before);
        let old: Vec<String> = self
            .store
            .stored()
            .into_iter()
            .filter(|(_, used)| *used < before)
            .map(|(sha, _)| sha)
            .collect();
        if old.is_empty() {
            return Ok((0, 0));
        }
        let conn = rusqlite::Connection::open_with_flags(
            &self.journal,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        conn.busy_timeout(Duration::from_secs(5))?;
        let mut named = conn.prepare("SELECT 1 FROM queue WHERE instr(entries, ?1) > 0 LIMIT 1")?;
        let (mut n, mut bytes) = (0, 0);
        for sha in old {
            if named
                .query_row([sha.as_bytes()], |_| Ok(()))
                .optional()?
                .is_some()
            {
                self.store.touch(&sha);
                continue;
            }
            match self.store.delete(&sha) {
                Ok(size) => {
                    n += 1;
                    bytes += size;
                }
                Err(e) => {
                    warn!(sha256 = %sha, error = %e, "a file past its retention could not be deleted")
                }
            }
        }
        Ok((n, bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::envelope::Priority;
    use crate::files::{FileLimits, UploadInfo};
    use crate::journal::{Dest, Durability, Journal, Target};

    async fn store_file(store: &FileStore, bytes: &'static [u8]) -> String {
        let id = store
            .create("clinic", bytes.len() as u64, UploadInfo::default())
            .unwrap();
        let body = futures_util::stream::iter([Ok(bytes::Bytes::from_static(bytes))]);
        let (_, file) = store.append((&id, "clinic"), 0, body, None).await.unwrap();
        file.unwrap().sha256
    }

    #[tokio::test]
    async fn a_file_goes_after_its_retention_unless_a_waiting_command_names_it() {
        let dir = tempfile::tempdir().unwrap();
        let limits = FileLimits {
            max_file: 1 << 20,
            quota: 1 << 20,
        };
        let store = Arc::new(FileStore::open(&dir.path().join("files"), limits).unwrap());
        let named = store_file(&store, b"a scan a command still waits with").await;
        let unused = store_file(&store, b"a report delivered long ago").await;
        let journal = dir.path().join("journal.db");
        let mut j = Journal::open(&journal, Durability::Process).unwrap();
        let mut t = j.begin().unwrap();
        let env = crate::envelope::test_envelope("c1", "a", "b");
        let body = format!(r#"{{"id":"c1","files":[{{"sha256":"{named}","size":33}}]}}"#);
        t.enqueue(
            &Dest::new(Target::Up, Priority::Normal),
            &env.head(),
            body.into(),
        )
        .unwrap();
        t.commit().unwrap();
        let sweeper = Retention::new(store.clone(), journal, Duration::from_secs(3600));
        // Within retention: nothing goes.
        assert_eq!(sweeper.sweep(SystemTime::now()).unwrap(), (0, 0));
        // Two hours on: the unused one goes, the named one stays (and its time starts again).
        let later = SystemTime::now() + Duration::from_secs(7200);
        assert_eq!(sweeper.sweep(later).unwrap(), (1, 27));
        assert_eq!(store.size_of(&unused), None);
        assert_eq!(store.size_of(&named), Some(33));
        assert!(!store.may_read(&unused, "clinic"));
    }
}
