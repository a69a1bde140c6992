//! WAL checkpoints on a thread of their own, so the dispatcher's commits never pay for one,
//! and the WAL file kept small.
//!
//! The WAL only grows while commits outrun checkpoints; once a checkpoint has copied every
//! frame, the next commit rewinds it and writes over the same file, which SQLite cuts back to
//! `journal_size_limit` ([`WAL_LIMIT`]) at most. A busy node keeps its WAL allocated on
//! purpose: appending to a file that must grow costs file-system journal commits, which showed
//! as 60-290 ms latency spikes at 1,000 commands/s. Once the journal has been idle (no new
//! frame, everything copied) for `idle_truncate`, the file is cut back to its reserve (below);
//! at shutdown it is truncated, and this thread's connection is the journal's last, so closing
//! it removes the WAL.
//!
//! A node also **reserves** the WAL's space before its first command ([`WalSpace::reserve`],
//! `[node] wal_reserve_mb`, 128 MiB by default): the file is extended with zeros written to
//! disk, so that appending frames writes over blocks the file system already allocated. Under a
//! steady flow the WAL appends for as long as it takes to reach [`WAL_LIMIT`], since a
//! checkpoint that runs while commits go on never copies everything and so never lets it
//! rewind. Each of those appends allocated blocks, and waited behind the checkpoint's `fsync`
//! for the inode's allocation lock: on the 4-node chain at 1,000 commands/s that was half the
//! p99 (1.3 ms against 0.7-0.8 ms with the space reserved, as on a RAM file system;
//! BENCHMARKS.md, "The floor of a custody hop, the WAL's space reserved, …"). `fallocate` is
//! not enough: its blocks are marked unwritten, and the first write to each converts them,
//! taking the same lock. The zeros are never read: SQLite reads the WAL only as far as its own
//! frames are valid. A disk that cannot spare twice the reserve gets none (a WARN says so): a
//! nearly full disk keeps taking commands. A WAL cut back when idle gets its reserve again;
//! that holds the write lock while the zeros are written (tens of milliseconds on an SSD),
//! which a command arriving just then waits for, once, after a long idle spell.

use std::path::Path;
use std::time::Duration;

use rusqlite::Connection;

use super::{Journal, Result};

/// WAL size beyond which checkpoints wait for the dispatcher so the WAL can be rewound.
pub(super) const WAL_LIMIT: u64 = 128 * 1024 * 1024;

/// How a node keeps its WAL's disk space.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WalSpace {
    /// Bytes reserved for the WAL while the node runs (0: none; at most [`WalSpace::MAX_RESERVE`]).
    pub reserve: u64,
    /// After this long without a write, give back whatever the WAL holds beyond the reserve.
    pub idle_truncate: Duration,
}

impl WalSpace {
    /// The largest reserve worth having: a WAL is rewound once it passes [`WAL_LIMIT`].
    pub const MAX_RESERVE: u64 = WAL_LIMIT;
}

impl Default for WalSpace {
    fn default() -> Self {
        WalSpace {
            reserve: WAL_LIMIT,
            idle_truncate: Duration::from_secs(30),
        }
    }
}

/// Whether a file system with `free` bytes available can spare `grow` more for the reserve:
/// it must leave at least as much again, so that a nearly full disk goes on taking commands
/// (without a reserve) instead of filling up with zeros.
fn room_for(free: u64, grow: u64) -> bool {
    free / 2 >= grow
}

/// Extends the WAL at `wal` to `bytes` with zeros, synced so its blocks are allocated now;
/// returns how many bytes it added. `conn` holds the journal's write lock meanwhile, so no
/// commit appends to the file while it grows (a commit that tries waits in its busy handler).
/// A reserve that does not fit ([`room_for`]) is not made, and one that fails half-way is
/// given back: SQLite never wrote past the old end.
fn reserve(conn: &Connection, wal: &Path, bytes: u64) -> std::result::Result<u64, String> {
    if bytes == 0 {
        return Ok(0);
    }
    conn.execute_batch("BEGIN IMMEDIATE")
        .map_err(|e| format!("taking the journal's write lock: {e}"))?;
    let grown = (|| -> std::io::Result<u64> {
        // The write lock opened the WAL: it exists, made by SQLite with the journal's mode.
        let file = std::fs::OpenOptions::new().write(true).open(wal)?;
        let len = file.metadata()?.len();
        if len >= bytes {
            return Ok(0);
        }
        if let Some(free) = crate::datadir::disk_free_bytes(wal) {
            if !room_for(free, bytes - len) {
                return Err(std::io::Error::other(format!(
                    "{} MiB free, too little to set {} MiB aside",
                    free >> 20,
                    (bytes - len) >> 20
                )));
            }
        }
        let fill = || -> std::io::Result<()> {
            crate::datadir::write_zeros(&file, len, bytes)?;
            file.sync_all()
        };
        match fill() {
            Ok(()) => Ok(bytes - len),
            Err(e) => {
                let _ = file.set_len(len);
                Err(e)
            }
        }
    })();
    let _ = conn.execute_batch("ROLLBACK");
    grown.map_err(|e| format!("{}: {e}", wal.display()))
}

/// [`reserve`], with a failure said at WARN: the node works without its reserve, only with a
/// longer latency tail.
fn reserve_or_warn(conn: &Connection, wal: &Path, bytes: u64) {
    match reserve(conn, wal, bytes) {
        Ok(0) => {}
        Ok(n) => tracing::debug!(bytes = n, "WAL space reserved"),
        Err(e) => tracing::warn!(
            error = %e,
            "cannot reserve the journal's WAL space; commits may wait for the file system"
        ),
    }
}

/// How much of the WAL's head [`Warmer::pass`] keeps in the page cache.
const WARM_HEAD: u64 = 8 * 1024 * 1024;
/// How far beyond the WAL's write position [`Warmer::pass`] keeps it in the page cache: a few
/// seconds of commits at 1,000 commands/s (three 2 KiB pages each), more than one checkpoint
/// period at full speed's rate of small commits.
const WARM_AHEAD: u64 = 16 * 1024 * 1024;
/// The WAL file's header, before its first frame.
const WAL_HEADER: u64 = 32;
/// Each WAL frame's header, before its page.
const FRAME_HEADER: u64 = 24;

/// Keeps the part of the WAL the next commits write over in the page cache. A frame (a page
/// plus 24 bytes) never fills whole file-system blocks, so a commit writing into a block whose
/// page the kernel evicted must first read that block from disk, inside the commit, on the
/// dispatcher's thread. On the test VM a reclaimer (DAMON `pageout`) evicts pages idle for a
/// minute, as memory pressure does on any host; the reserved WAL is written over from its head
/// after every rewind, and a steady flow takes tens of seconds to cross it, so its pages age
/// out before the writer comes back to them. Those reads, queued behind checkpoint fsyncs,
/// showed as 2-13 ms waits in the dispatcher's `write()` right after a rewind, and at 1,000
/// commands/s as one block read every few commands in the middle of the WAL (a quarter of the
/// 4-node p99; BENCHMARKS.md, eighth stop). So every pass asks the kernel for the head, where
/// the next rewind writes, and for what lies just beyond the write position. `WILLNEED` reads
/// asynchronously, on this thread's account, and costs a page-cache lookup for cached pages.
struct Warmer {
    wal: std::path::PathBuf,
    /// Opened at the first pass that finds the WAL (a node without a reserve has none until its
    /// first commit).
    file: Option<std::fs::File>,
    frame: u64,
}

impl Warmer {
    fn new(wal: &Path, page_size: u64) -> Self {
        Warmer {
            wal: wal.to_path_buf(),
            file: None,
            frame: FRAME_HEADER + page_size,
        }
    }

    /// One pass, after a checkpoint that left `frames` frames in a WAL file of `size` bytes.
    fn pass(&mut self, size: u64, frames: i64) {
        if self.file.is_none() && size > 0 {
            self.file = std::fs::File::open(&self.wal).ok();
        }
        let Some(file) = &self.file else {
            return;
        };
        for (from, len) in self.ranges(size, frames) {
            let Some(len) = std::num::NonZeroU64::new(len) else {
                continue;
            };
            if let Err(e) = rustix::fs::fadvise(file, from, Some(len), rustix::fs::Advice::WillNeed)
            {
                tracing::debug!(error = %e, "WAL read-ahead failed");
            }
        }
    }

    /// The (offset, length) ranges a pass warms: the head, and what follows the last frame,
    /// both within the file.
    fn ranges(&self, size: u64, frames: i64) -> [(u64, u64); 2] {
        let head = WAL_HEADER + u64::try_from(frames).unwrap_or(0) * self.frame;
        [(0, WARM_HEAD), (head, WARM_AHEAD)]
            .map(|(from, len)| (from, len.min(size.saturating_sub(from))))
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
    /// Reserves the WAL's space (`space.reserve`, before the caller's first command) and starts
    /// a thread that checkpoints the WAL into the database every `period`, so the dispatcher's
    /// commits never pay for a checkpoint (and its fsync) themselves. The thread stops when the
    /// returned handle is stopped or dropped. After `space.idle_truncate` without a write the
    /// WAL is cut back to its reserve.
    pub fn spawn_checkpointer(
        path: &Path,
        period: Duration,
        space: WalSpace,
    ) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        let path = path.to_path_buf();
        conn.pragma_update(None, "busy_timeout", 5000)?;
        let wal = {
            let mut p = path.clone().into_os_string();
            p.push("-wal");
            std::path::PathBuf::from(p)
        };
        reserve_or_warn(&conn, &wal, space.reserve);
        let page_size: i64 = conn.pragma_query_value(None, "page_size", |r| r.get(0))?;
        let mut warmer = Warmer::new(&wal, page_size.unsigned_abs());
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
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
                    warmer.pass(size, frames);
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
                    } else if idle && idle_for >= space.idle_truncate && size > space.reserve {
                        // Nothing written since the last pass: give back what is beyond the
                        // reserve (everything, then the reserve again).
                        "TRUNCATE"
                    } else {
                        continue;
                    };
                    if let Err(e) = checkpoint(&conn, mode) {
                        tracing::warn!(error = %e, mode, "WAL checkpoint failed");
                    } else if mode == "TRUNCATE" {
                        reserve_or_warn(&conn, &wal, space.reserve);
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::tests::{lseqs, up};
    use crate::journal::Durability;

    fn wal_of(path: &Path) -> std::path::PathBuf {
        let mut p = path.as_os_str().to_owned();
        p.push("-wal");
        p.into()
    }

    /// Whether another connection can take the journal's write lock at once.
    fn lock_is_free(path: &Path) -> bool {
        let other = Connection::open(path).unwrap();
        let free = other.execute_batch("BEGIN IMMEDIATE").is_ok();
        let _ = other.execute_batch("ROLLBACK");
        free
    }

    #[test]
    fn the_warmer_covers_the_head_and_what_follows_the_last_frame() {
        let warmer = Warmer::new(Path::new("/nonexistent/journal.db-wal"), 2048);
        let size = WAL_LIMIT;
        let [head, ahead] = warmer.ranges(size, 10);
        assert_eq!(head, (0, WARM_HEAD));
        assert_eq!(ahead, (32 + 10 * 2072, WARM_AHEAD));
        // Near the file's end only what exists is asked for; an empty file asks for nothing.
        let last = (size - 32) / 2072 - 1;
        let [_, ahead] = warmer.ranges(size, last as i64);
        assert_eq!(ahead.0 + ahead.1, size);
        assert!(ahead.1 < 2 * 2072);
        assert_eq!(warmer.ranges(0, 0), [(0, 0), (32, 0)]);
    }

    #[test]
    fn a_warmer_without_a_wal_does_nothing() {
        let mut warmer = Warmer::new(Path::new("/nonexistent/journal.db-wal"), 2048);
        warmer.pass(WAL_LIMIT, 5);
        assert!(warmer.file.is_none());
    }

    #[test]
    fn a_reserve_leaves_as_much_again_free() {
        assert!(room_for(256 << 20, 128 << 20));
        assert!(!room_for(255 << 20, 128 << 20));
        assert!(room_for(0, 0));
    }

    /// Commits write over the reserved zeros instead of growing the file, and read back.
    #[test]
    fn commits_write_into_the_reserve_and_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let mut j = Journal::open(&path, Durability::Process).unwrap();
        let conn = Connection::open(&path).unwrap();
        let wal = wal_of(&path);
        let before = std::fs::metadata(&wal).unwrap().len();
        assert_eq!(reserve(&conn, &wal, 1 << 20).unwrap(), (1 << 20) - before);
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 1 << 20);
        assert!(lock_is_free(&path), "the reserve kept the write lock");
        let mut t = j.begin().unwrap();
        for i in 1..=50u64 {
            let env = crate::envelope::test_envelope(&i.to_string(), "a", "c");
            t.enqueue(&up(), &env.head(), "body".into()).unwrap();
        }
        t.commit().unwrap();
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), 1 << 20);
        assert_eq!(lseqs(&j, &up(), 0), (1..=50).collect::<Vec<u64>>());
        assert_eq!(
            reserve(&conn, &wal, 1 << 20).unwrap(),
            0,
            "already reserved"
        );
    }

    /// A reserve that the disk cannot spare is not made, and the lock is let go.
    #[test]
    fn a_reserve_the_disk_cannot_spare_is_refused_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("j.db");
        let _j = Journal::open(&path, Durability::Process).unwrap();
        let conn = Connection::open(&path).unwrap();
        let wal = wal_of(&path);
        let before = std::fs::metadata(&wal).unwrap().len();
        let err = reserve(&conn, &wal, u64::MAX / 2).unwrap_err();
        assert!(err.contains("too little"), "{err}");
        assert_eq!(std::fs::metadata(&wal).unwrap().len(), before);
        assert!(lock_is_free(&path));
    }
}
