//! WAL checkpoints on a thread of their own, so the dispatcher's commits never pay for one.

use std::path::Path;

use rusqlite::Connection;

use super::{Journal, Result};

/// WAL size beyond which checkpoints wait for the dispatcher so the WAL can be rewound.
pub(super) const WAL_LIMIT: u64 = 128 * 1024 * 1024;

/// Keeps the checkpoint thread running; dropping it stops the thread.
pub struct Checkpointer {
    _stop: std::sync::mpsc::Sender<()>,
}

impl Journal {
    /// Starts a thread that checkpoints the WAL into the database every `period`, so the
    /// dispatcher's commits never pay for a checkpoint (and its fsync) themselves. The thread
    /// stops when the returned handle is dropped.
    pub fn spawn_checkpointer(path: &Path, period: std::time::Duration) -> Result<Checkpointer> {
        let conn = Connection::open(path)?;
        let path = path.to_path_buf();
        conn.pragma_update(None, "busy_timeout", 5000)?;
        let (stop, stopped) = std::sync::mpsc::channel::<()>();
        std::thread::Builder::new()
            .name("checkpoint".into())
            .spawn(move || {
                let wal = {
                    let mut p = path.clone().into_os_string();
                    p.push("-wal");
                    std::path::PathBuf::from(p)
                };
                while let Err(std::sync::mpsc::RecvTimeoutError::Timeout) =
                    stopped.recv_timeout(period)
                {
                    // PASSIVE never waits for the dispatcher, but under a sustained stream of
                    // commits it never finishes either, and the WAL would grow without bound.
                    // Past the limit a RESTART checkpoint makes the dispatcher wait (briefly)
                    // so the WAL can be rewound and truncated.
                    // The PASSIVE pass first copies nearly everything without blocking anyone,
                    // so the RESTART that follows holds the dispatcher only for the remainder.
                    let big = std::fs::metadata(&wal).is_ok_and(|m| m.len() > WAL_LIMIT);
                    let modes: &[&str] = if big {
                        &["PASSIVE", "RESTART"]
                    } else {
                        &["PASSIVE"]
                    };
                    for mode in modes {
                        let sql = format!("PRAGMA wal_checkpoint({mode})");
                        if let Err(e) = conn.query_row(&sql, [], |_| Ok(())) {
                            tracing::warn!(error = %e, mode, "WAL checkpoint failed");
                        }
                    }
                }
            })
            .map_err(|e| rusqlite::Error::ToSqlConversionFailure(Box::new(e)))?;
        Ok(Checkpointer { _stop: stop })
    }
}
