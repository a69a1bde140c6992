//! WAL checkpoints on a thread of their own, so the dispatcher's commits never pay for one,
//! and the WAL file kept small.
//!
//! The WAL only grows while commits outrun checkpoints; once a checkpoint has copied every
//! frame, the next commit rewinds it and writes over the same file, which SQLite cuts back to
//! `journal_size_limit` ([`WAL_LIMIT`]) at most. A busy node keeps its WAL allocated on
//! purpose: appending to a file that must grow costs file-system journal commits, which showed
//! as 60-290 ms latency spikes at 1,000 commands/s. Once the journal has been idle (no new
//! frame, everything copied) for `idle_truncate`, the file is truncated to nothing; at shutdown
//! too, and this thread's connection is the journal's last, so closing it removes the WAL.

use std::path::Path;

use rusqlite::Connection;

use super::{Journal, Result};

/// WAL size beyond which checkpoints wait for the dispatcher so the WAL can be rewound.
pub(super) const WAL_LIMIT: u64 = 128 * 1024 * 1024;

/// How much of the WAL's head [`warm_head`] keeps in the page cache.
const WARM_HEAD: u64 = 8 * 1024 * 1024;

/// Asks the kernel to bring the WAL's head back into the page cache, once a checkpoint has
/// copied every frame. The next commit then rewinds the WAL and writes over its head, and its
/// frames (a page plus 24 bytes) never fill whole file-system blocks: a block whose page the
/// kernel evicted meanwhile must be read from disk inside that commit. On the test VM a
/// reclaimer (DAMON `pageout`) evicts pages idle for a minute, as memory pressure does on any
/// host, and those reads, queued behind checkpoint fsyncs, showed as 2-13 ms waits in the
/// dispatcher's `write()`. `WILLNEED` reads asynchronously and costs nothing for cached pages.
fn warm_head(wal: &Path, size: u64) {
    let Ok(file) = std::fs::File::open(wal) else {
        return;
    };
    let len = std::num::NonZeroU64::new(size.min(WARM_HEAD));
    if let Err(e) = rustix::fs::fadvise(&file, 0, len, rustix::fs::Advice::WillNeed) {
        tracing::debug!(error = %e, "WAL read-ahead failed");
    }
}

/// Keeps the checkpoint thread running; [`Checkpointer::stop`] (or dropping it) stops it.
pub struct Checkpointer {
    stop: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Checkpointer {
    /// Stops the thread after a last checkpoint that truncates the WAL, and waits for it (its
    /// connection closes last, which removes the WAL file). Call after the dispatcher ended.
    pub fn stop(mut self) {
        self.stop.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        // Ends the thread at its next wake-up without waiting for it.
        self.stop.take();
    }
}

/// One `PRAGMA wal_checkpoint(mode)`: (busy, frames in the WAL, frames copied).
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<(i64, i64, i64)> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |r| {
        Ok((r.get(0)?, r.get(1)?, r.get(2)?))
    })
}

impl Journal {
    /// Starts a thread that checkpoints the WAL into the database every `period`, so the
    /// dispatcher's commits never pay for a checkpoint (and its fsync) themselves. The thread
    /// stops when the returned handle is stopped or dropped. After `idle_truncate` without a
    /// write the WAL is truncated.
    pub fn spawn_checkpointer(
        path: &Path,
        period: std::time::Duration,
        idle_truncate: std::time::Duration,
    ) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        let path = path.to_path_buf();
        conn.pragma_update(None, "busy_timeout", 5000)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let wal = {
                    let mut p = path.clone().into_os_string();
                    p.push("-wal");
                    std::path::PathBuf::from(p)
                };
                let mut last_frames = -1;
                let mut idle_since: Option<std::time::Instant> = None;
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    // PASSIVE never waits for the dispatcher, but under a sustained stream of
                    // commits it never finishes either, and the WAL would grow without bound.
                    // Past the limit a RESTART checkpoint makes the dispatcher wait (briefly)
                    // so the WAL can be rewound and truncated.
                    // The PASSIVE pass first copies nearly everything without blocking anyone,
                    // so the RESTART that follows holds the dispatcher only for the remainder.
                    let size = std::fs::metadata(&wal).map_or(0, |m| m.len());
                    let passive = match checkpoint(&conn, "PASSIVE") {
                        Ok(r) => r,
                        Err(e) => {
                            tracing::warn!(error = %e, "WAL checkpoint failed");
                            continue;
                        }
                    };
                    let (busy, frames, copied) = passive;
                    // Again on every pass while idle: pages evicted meanwhile come back.
                    if busy == 0 && frames > 0 && frames == copied {
                        warm_head(&wal, size);
                    }
                    let idle = busy == 0 && frames == copied && frames == last_frames;
                    last_frames = frames;
                    if !idle {
                        idle_since = None;
                    }
                    let idle_for = idle_since
                        .get_or_insert_with(std::time::Instant::now)
                        .elapsed();
                    let mode = if size > WAL_LIMIT {
                        "RESTART"
                    } else if idle && idle_for >= idle_truncate && size > 0 {
                        // Nothing written since the last pass: give the disk back.
                        "TRUNCATE"
                    } else {
                        continue;
                    };
                    if let Err(e) = checkpoint(&conn, mode) {
                        tracing::warn!(error = %e, mode, "WAL checkpoint failed");
                    }
                }
                if let Err(e) = checkpoint(&conn, "TRUNCATE") {
                    tracing::warn!(error = %e, "final WAL checkpoint failed");
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer {
            stop: Some(stop),
            thread: Some(thread),
        })
    }
}
