//! The node's data directory: private to the service user, and owned by one process at a time.
//!
//! The journal holds patient data, so the directory is `0700` and the journal files `0600`
//! (SQLite gives its `-wal` and `-shm` files the mode of the database file). Two processes on
//! one directory would both believe they hold custody and fight over the parent link, so the
//! directory is locked exclusively (`flock` on `<dir>/lock`, released by the kernel whenever
//! the process ends, even by `kill -9`) before anything in it is touched.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// The journal's file name inside the data directory.
pub const JOURNAL_FILE: &str = "journal.db";
/// What follows the journal's name in the names of the files that belong to it: SQLite's WAL
/// and shared memory, and the custody log (`journal/custody.rs`).
pub const JOURNAL_SUFFIXES: [&str; 4] = ["", "-wal", "-shm", CUSTODY_SUFFIX];
/// The custody log's suffix.
pub const CUSTODY_SUFFIX: &str = "-custody";

/// Why the data directory cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    /// Another process holds the lock.
    #[error("data dir {path} is in use by another medlink process{holder}; one directory serves one node process")]
    InUse {
        /// Directory.
        path: PathBuf,
        /// " (pid N)" when the holder wrote its pid.
        holder: String,
    },
    /// A filesystem problem.
    #[error("data dir {path}: {source}")]
    Io {
        /// The directory or file.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// An opened, exclusively locked data directory; the lock lasts as long as this value.
#[derive(Debug)]
pub struct DataDir {
    path: PathBuf,
    _lock: File,
}

impl DataDir {
    /// Creates `path` (mode `0700`, tightening an existing looser directory), takes its lock,
    /// and makes sure the journal files are `0600`.
    pub fn open(path: &Path) -> Result<DataDir, DataDirError> {
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| DataDirError::Io { path, source }
        };
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(path)
            .map_err(io(path))?;
        private(path, 0o700).map_err(io(path))?;
        let lock_path = path.join("lock");
        let mut lock = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&lock_path)
            .map_err(io(&lock_path))?;
        match lock.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let mut pid = String::new();
                let _ = lock.read_to_string(&mut pid);
                let pid = pid.trim();
                return Err(DataDirError::InUse {
                    path: path.to_path_buf(),
                    holder: if pid.is_empty() {
                        String::new()
                    } else {
                        format!(" (pid {pid})")
                    },
                });
            }
            Err(std::fs::TryLockError::Error(source)) => {
                return Err(DataDirError::Io {
                    path: lock_path,
                    source,
                })
            }
        }
        // Who holds it, for the message a second process prints.
        let _ = lock.set_len(0);
        let _ = lock.rewind();
        let _ = writeln!(lock, "{}", std::process::id());
        for suffix in JOURNAL_SUFFIXES {
            let file = path.join(format!("{JOURNAL_FILE}{suffix}"));
            if file.exists() {
                private(&file, 0o600).map_err(io(&file))?;
            }
        }
        Ok(DataDir {
            path: path.to_path_buf(),
            _lock: lock,
        })
    }

    /// The journal's path; creates the file (`0600`, so SQLite's `-wal` and `-shm` follow)
    /// if it is not there yet.
    pub fn journal(&self) -> Result<PathBuf, DataDirError> {
        let journal = self.path.join(JOURNAL_FILE);
        OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .open(&journal)
            .map_err(|source| DataDirError::Io {
                path: journal.clone(),
                source,
            })?;
        Ok(journal)
    }
}

/// Sets `mode` on `path` if its permissions allow more than that.
fn private(path: &Path, mode: u32) -> std::io::Result<()> {
    let current = std::fs::metadata(path)?.permissions().mode() & 0o777;
    if current & !mode != 0 {
        tracing::info!(path = %path.display(), from = format!("{current:o}"), to = format!("{mode:o}"), "tightened permissions");
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Bytes the journal takes on disk, its WAL, shared-memory and custody log files included.
pub fn journal_bytes(journal: &std::path::Path) -> u64 {
    JOURNAL_SUFFIXES
        .iter()
        .filter_map(|suffix| {
            let mut name = journal.as_os_str().to_owned();
            name.push(suffix);
            std::fs::metadata(name).ok()
        })
        .map(|m| m.len())
        .sum()
}

/// Bytes free for an unprivileged writer on the file system that holds `path`.
pub fn disk_free_bytes(path: &std::path::Path) -> Option<u64> {
    let fs = rustix::fs::statvfs(path).ok()?;
    Some(fs.f_bavail.saturating_mul(fs.f_frsize))
}

/// Writes zeros into `file` from `from` up to `to`, a page per write: space laid out ahead of
/// small appends (the WAL's reserve, the custody log). Page by page because the page cache
/// sizes a folio by the write that made it: space written a MiB at a time stayed in large
/// folios, and ext4 walks every block of a folio on each small write into it (a 640-byte
/// append cost 1.7 µs instead of 0.5; BENCHMARKS.md, ninth stop).
pub fn write_zeros(file: &std::fs::File, from: u64, to: u64) -> std::io::Result<()> {
    use std::os::unix::fs::FileExt;
    const PAGE: u64 = 4096;
    let zeros = [0u8; PAGE as usize];
    let mut at = from;
    while at < to {
        // The first write ends on a page boundary, so every later one is a whole page.
        let n = (PAGE - at % PAGE).min(to - at);
        file.write_all_at(&zeros[..n as usize], at)?;
        at += n;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_open_is_refused_and_modes_are_private() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        let first = DataDir::open(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&first.journal().unwrap()), 0o600);
        let err = DataDir::open(&data).unwrap_err();
        assert!(
            matches!(&err, DataDirError::InUse { holder, .. } if holder.contains(&std::process::id().to_string())),
            "{err}"
        );
        drop(first);
        DataDir::open(&data).expect("the lock is released with the first owner");
    }

    #[test]
    fn loose_modes_are_tightened() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path().join("node");
        std::fs::create_dir(&data).unwrap();
        std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::write(data.join(JOURNAL_FILE), b"").unwrap();
        std::fs::set_permissions(
            data.join(JOURNAL_FILE),
            std::fs::Permissions::from_mode(0o644),
        )
        .unwrap();
        let opened = DataDir::open(&data).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode(&data), 0o700);
        assert_eq!(mode(&opened.journal().unwrap()), 0o600);
    }
}
