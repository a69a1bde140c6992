//! The optional local outbox: a SQLite file holding every send until the node has custody of
//! it. A send is written in one transaction before anything goes on the wire, under the id
//! the node will see, so an application restart, a dead network or a lost PUBACK/202 only
//! delays it: the next session sends it again, and the node accepts an id from one sender
//! once. Rows are deleted only after the node confirmed custody.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use rusqlite::{params, Connection, ErrorCode};

use crate::message::MessageId;
use crate::Error;

/// A queued send as stored.
pub(crate) struct Row {
    pub seq: i64,
    pub id: MessageId,
    pub body: Vec<u8>,
}

/// An open outbox file. Blocking calls: use them from `spawn_blocking`.
pub(crate) struct Outbox {
    path: PathBuf,
    conn: Mutex<Connection>,
}

fn err(path: &Path, e: impl std::fmt::Display) -> Error {
    Error::Outbox(format!("{}: {e}", path.display()))
}

/// The error for opening `path`: "in use" when another client holds the file's lock.
fn busy_or(path: &Path, e: rusqlite::Error) -> Error {
    match e.sqlite_error_code() {
        Some(ErrorCode::DatabaseBusy) | Some(ErrorCode::DatabaseLocked) => err(
            path,
            "in use by another client (one client per outbox file)",
        ),
        _ => err(path, e),
    }
}

impl Outbox {
    /// Opens (creating) the file and takes it for this process: a second client on the same
    /// file would send everything twice, so it is refused.
    pub(crate) fn open(path: &Path) -> Result<Outbox, Error> {
        let conn = Connection::open(path).map_err(|e| err(path, e))?;
        // A client that was closed just before may still be releasing the file.
        conn.busy_timeout(std::time::Duration::from_secs(3))
            .map_err(|e| err(path, e))?;
        // EXCLUSIVE: the lock taken below is kept while this connection lives. FULL: a send
        // reported as queued survives a power cut, not only a crash.
        conn.execute_batch(
            "PRAGMA locking_mode = EXCLUSIVE;
             PRAGMA journal_mode = WAL;
             PRAGMA synchronous = FULL;",
        )
        .map_err(|e| busy_or(path, e))?;
        conn.execute_batch(
            "BEGIN EXCLUSIVE;
             CREATE TABLE IF NOT EXISTS outbox (
                 seq  INTEGER PRIMARY KEY AUTOINCREMENT,
                 id   TEXT NOT NULL,
                 body BLOB NOT NULL
             );
             COMMIT;",
        )
        .map_err(|e| busy_or(path, e))?;
        Ok(Outbox {
            path: path.to_path_buf(),
            conn: Mutex::new(conn),
        })
    }

    fn conn(&self) -> std::sync::MutexGuard<'_, Connection> {
        // SQLite calls do not panic; a poisoned lock still guards a usable connection.
        self.conn.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Everything still queued, oldest first.
    pub(crate) fn load(&self) -> Result<Vec<Row>, Error> {
        let conn = self.conn();
        let mut stmt = conn
            .prepare("SELECT seq, id, body FROM outbox ORDER BY seq")
            .map_err(|e| err(&self.path, e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok(Row {
                    seq: r.get(0)?,
                    id: r.get(1)?,
                    body: r.get(2)?,
                })
            })
            .map_err(|e| err(&self.path, e))?;
        rows.collect::<Result<Vec<_>, _>>()
            .map_err(|e| err(&self.path, e))
    }

    /// Queues one send (one transaction); returns its position.
    pub(crate) fn insert(&self, id: &str, body: &[u8]) -> Result<i64, Error> {
        let conn = self.conn();
        conn.execute(
            "INSERT INTO outbox (id, body) VALUES (?1, ?2)",
            params![id, body],
        )
        .map_err(|e| err(&self.path, e))?;
        Ok(conn.last_insert_rowid())
    }

    /// Forgets sends the node has custody of.
    pub(crate) fn delete(&self, seqs: &[i64]) -> Result<(), Error> {
        let mut conn = self.conn();
        let tx = conn.transaction().map_err(|e| err(&self.path, e))?;
        {
            let mut stmt = tx
                .prepare_cached("DELETE FROM outbox WHERE seq = ?1")
                .map_err(|e| err(&self.path, e))?;
            for s in seqs {
                stmt.execute([s]).map_err(|e| err(&self.path, e))?;
            }
        }
        tx.commit().map_err(|e| err(&self.path, e))
    }
}

/// Runs a blocking outbox call off the async workers.
pub(crate) async fn blocking<T: Send + 'static>(
    outbox: &Arc<Outbox>,
    f: impl FnOnce(&Outbox) -> Result<T, Error> + Send + 'static,
) -> Result<T, Error> {
    let ob = outbox.clone();
    tokio::task::spawn_blocking(move || f(&ob))
        .await
        .map_err(|e| Error::Outbox(format!("outbox task failed: {e}")))?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_survive_reopening_and_the_file_is_exclusive() {
        let dir = std::env::temp_dir().join(format!("medlink-outbox-{}", ulid::Ulid::new()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("outbox.db");
        {
            let ob = Outbox::open(&path).unwrap();
            let a = ob.insert("a", b"{}").unwrap();
            let b = ob.insert("b", b"{}").unwrap();
            ob.insert("c", b"{}").unwrap();
            assert!(a < b);
            ob.delete(&[b]).unwrap();
            let second = Outbox::open(&path);
            assert!(matches!(second, Err(Error::Outbox(m)) if m.contains("in use")));
        }
        let ob = Outbox::open(&path).unwrap();
        let ids: Vec<String> = ob.load().unwrap().into_iter().map(|r| r.id).collect();
        assert_eq!(ids, ["a", "c"]);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
