//! [`FileStore`]: content-addressed files and resumable uploads on the local file system.

use std::collections::HashSet;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use bytes::Bytes;
use futures_util::StreamExt;
use medlink_wire::{valid_sha256, FileRef};
use serde::{Deserialize, Serialize};

/// Size limits of a store.
#[derive(Debug, Clone, Copy)]
pub struct FileLimits {
    /// The largest file, bytes.
    pub max_file: u64,
    /// The most bytes the store may hold, files and uploads in progress together.
    pub quota: u64,
}

/// Why a store refused.
#[derive(Debug, thiserror::Error)]
pub enum FileError {
    /// Larger than `max_file`.
    #[error("the file is larger than this node's limit of {0} bytes")]
    TooLarge(u64),
    /// The quota would be exceeded.
    #[error("the file store is full: {used} of {quota} bytes in use")]
    Quota {
        /// Bytes in use.
        used: u64,
        /// The quota.
        quota: u64,
    },
    /// No such upload (or not the caller's) or file.
    #[error("no such upload or file")]
    NotFound,
    /// The bytes sent do not start where the upload stands.
    #[error("the upload is at offset {0}")]
    Offset(u64),
    /// Another request is writing this upload.
    #[error("another request is writing this upload")]
    Busy,
    /// A chunk's checksum did not match; the chunk was dropped.
    #[error("the chunk's checksum does not match its bytes; it was not stored")]
    Checksum,
    /// The whole file's SHA-256 is not the one declared; the upload was dropped.
    #[error("the file's SHA-256 is {got}, not the declared {expected}; the upload was dropped")]
    Mismatch {
        /// Declared at creation.
        expected: String,
        /// Computed from the bytes.
        got: String,
    },
    /// More bytes than the declared length.
    #[error("more bytes than the upload's declared length {0}")]
    TooLong(u64),
    /// A bad declaration.
    #[error("{0}")]
    Invalid(String),
    /// The disk failed or is full: nothing already stored is lost.
    #[error("the file store could not write: {0}")]
    Io(#[from] std::io::Error),
}

/// What is known of an upload.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct UploadInfo {
    /// The identity that created it (only it may continue or read it).
    pub owner: String,
    /// Its declared length.
    pub length: u64,
    /// The file's name, for people.
    #[serde(default)]
    pub name: String,
    /// Its media type.
    #[serde(default)]
    pub media_type: String,
    /// The SHA-256 the uploader declared, checked at the end.
    #[serde(default)]
    pub sha256: Option<String>,
    /// The file, once complete.
    #[serde(default)]
    pub done: Option<FileRef>,
}

/// The file store of one node.
#[derive(Debug)]
pub struct FileStore {
    root: PathBuf,
    pub(super) limits: FileLimits,
    /// Bytes of stored files plus the declared lengths of uploads in progress.
    pub(super) used: AtomicU64,
    /// Uploads a PATCH is writing now.
    pub(super) busy: Mutex<HashSet<String>>,
    /// The bucket that holds the files, when not this disk (`[files.s3]`).
    pub(super) remote: Option<super::s3::S3>,
    /// Uploads' running SHA-256 and the offset it covers (lost on restart: then the file is
    /// read again at completion).
    pub(super) running: Mutex<std::collections::HashMap<String, (u64, sha2::Sha256)>>,
}

pub(super) fn private_dir(path: &Path) -> std::io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(path)
}

/// The size a bucket marker records.
fn marked_size(marker: &Path) -> Option<u64> {
    std::fs::read_to_string(marker).ok()?.trim().parse().ok()
}

pub(super) fn valid_upload_id(id: &str) -> bool {
    id.len() == 32 && id.bytes().all(|b| b.is_ascii_hexdigit())
}

impl FileStore {
    /// Opens (creating) the store under `root`; counts what it holds.
    pub fn open(root: &Path, limits: FileLimits) -> std::io::Result<FileStore> {
        private_dir(&root.join("objects"))?;
        private_dir(&root.join("uploads"))?;
        let mut used = 0u64;
        for shard in std::fs::read_dir(root.join("objects"))? {
            for entry in std::fs::read_dir(shard?.path())? {
                let entry = entry?;
                let name = entry.file_name().to_string_lossy().into_owned();
                if valid_sha256(&name) {
                    used += entry.metadata()?.len();
                } else if name.strip_suffix(".s3").is_some_and(valid_sha256) {
                    used += marked_size(&entry.path()).unwrap_or(0);
                }
            }
        }
        let store = FileStore {
            root: root.to_path_buf(),
            limits,
            used: AtomicU64::new(used),
            busy: Mutex::new(HashSet::new()),
            remote: None,
            running: Mutex::new(std::collections::HashMap::new()),
        };
        for entry in std::fs::read_dir(root.join("uploads"))? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if let Some(id) = name.strip_suffix(".json") {
                if let Ok(info) = store.info(id) {
                    if info.done.is_none() {
                        used += info.length;
                    }
                }
            }
        }
        store.used.store(used, Ordering::Relaxed);
        Ok(store)
    }

    /// The limits in force.
    pub fn limits(&self) -> FileLimits {
        self.limits
    }

    /// The same store with its files in the bucket `remote` (uploads in progress stay here).
    pub fn with_remote(mut self, remote: super::s3::S3) -> FileStore {
        self.remote = Some(remote);
        self
    }

    /// The bucket holding the files, if not this disk.
    pub fn remote(&self) -> Option<&super::s3::S3> {
        self.remote.as_ref()
    }

    /// The marker saying file `sha256` is in the bucket (its size, as text).
    fn marker(&self, sha256: &str) -> PathBuf {
        self.object(sha256).with_extension("s3")
    }

    pub(super) fn mark(&self, sha256: &str, size: u64) -> std::io::Result<()> {
        let marker = self.marker(sha256);
        private_dir(marker.parent().expect("objects live in a shard"))?;
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&marker)?;
        std::io::Write::write_all(&mut f, size.to_string().as_bytes())?;
        f.sync_all()
    }

    /// Whether file `sha256` of `size` bytes is stored: here, or (asked of it) in the bucket,
    /// which another node sharing it may have filled; then it is recorded here, and nothing
    /// needs copying.
    pub async fn probe(&self, sha256: &str, size: u64) -> std::io::Result<bool> {
        if self.size_of(sha256) == Some(size) {
            return Ok(true);
        }
        let Some(remote) = &self.remote else {
            return Ok(false);
        };
        if remote.size_of(sha256).await? != Some(size) {
            return Ok(false);
        }
        self.mark(sha256, size)?;
        self.used.fetch_add(size, Ordering::AcqRel);
        Ok(true)
    }

    /// `len` bytes of file `sha256` from `first`, streamed from this disk or the bucket.
    pub async fn stream(
        &self,
        sha256: &str,
        first: u64,
        len: u64,
    ) -> Result<futures_util::stream::BoxStream<'static, std::io::Result<Bytes>>, FileError> {
        use tokio::io::AsyncSeekExt;
        if !valid_sha256(sha256) {
            return Err(FileError::NotFound);
        }
        match tokio::fs::File::open(self.object(sha256)).await {
            Ok(mut f) => {
                f.seek(std::io::SeekFrom::Start(first)).await?;
                Ok(super::chunks(tokio::io::AsyncReadExt::take(f, len)).boxed())
            }
            Err(_) => match (&self.remote, self.size_of(sha256)) {
                (Some(remote), Some(_)) => Ok(remote.get(sha256, first, len).await?),
                _ => Err(FileError::NotFound),
            },
        }
    }

    pub(super) fn part(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.part"))
    }

    pub(super) fn meta(&self, id: &str) -> PathBuf {
        self.root.join("uploads").join(format!("{id}.json"))
    }

    /// Where file `sha256` lives.
    pub fn object(&self, sha256: &str) -> PathBuf {
        self.root.join("objects").join(&sha256[..2]).join(sha256)
    }

    /// Reserves `length` bytes of the quota.
    pub(super) fn reserve(&self, length: u64) -> Result<(), FileError> {
        let quota = self.limits.quota;
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |used| {
                (used + length <= quota).then_some(used + length)
            })
            .map(|_| ())
            .map_err(|used| FileError::Quota { used, quota })
    }

    pub(super) fn release(&self, length: u64) {
        let _ = self
            .used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                Some(u.saturating_sub(length))
            });
    }

    pub(super) fn write_info(&self, id: &str, info: &UploadInfo) -> std::io::Result<()> {
        let tmp = self.meta(id).with_extension("json.tmp");
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        std::io::Write::write_all(
            &mut f,
            &serde_json::to_vec(info).map_err(std::io::Error::other)?,
        )?;
        f.sync_all()?;
        std::fs::rename(tmp, self.meta(id))
    }

    /// The size of file `sha256`, if it is stored here.
    pub fn size_of(&self, sha256: &str) -> Option<u64> {
        if !valid_sha256(sha256) {
            return None;
        }
        std::fs::metadata(self.object(sha256))
            .ok()
            .map(|m| m.len())
            .or_else(|| marked_size(&self.marker(sha256)))
    }

    /// Lets `identity` read file `sha256` (a command for it refers to the file), whether or
    /// not the file is here yet.
    pub fn grant(&self, sha256: &str, identity: &str) -> std::io::Result<()> {
        if !valid_sha256(sha256) || self.may_read(sha256, identity) {
            return Ok(());
        }
        let who = self.object(sha256).with_extension("who");
        private_dir(who.parent().expect("objects live in a shard"))?;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(who)?;
        std::io::Write::write_all(&mut f, format!("{identity}\n").as_bytes())
    }

    /// A command that refers to file `sha256` passed this node: its retention starts again
    /// (the time of its `.who`, which exists once anyone may read the file or it was used).
    pub fn touch(&self, sha256: &str) {
        if !valid_sha256(sha256) {
            return;
        }
        let who = self.object(sha256).with_extension("who");
        let touched = std::fs::OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(&who)
            .and_then(|f| f.set_modified(std::time::SystemTime::now()));
        if let Err(e) = touched {
            tracing::warn!(sha256, error = %e, "could not record that a file was used");
        }
    }

    /// Every stored file and when a command last used it (or it was stored).
    pub(super) fn stored(&self) -> Vec<(String, std::time::SystemTime)> {
        let mut out = Vec::new();
        let Ok(shards) = std::fs::read_dir(self.root.join("objects")) else {
            return out;
        };
        for entry in shards
            .flatten()
            .flat_map(|s| std::fs::read_dir(s.path()).into_iter().flatten().flatten())
        {
            let name = entry.file_name().to_string_lossy().into_owned();
            let name = name.strip_suffix(".s3").unwrap_or(&name).to_string();
            if !valid_sha256(&name) {
                continue;
            }
            let used = [entry.path().with_extension("who"), entry.path()]
                .iter()
                .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .max();
            if let Some(used) = used {
                out.push((name, used));
            }
        }
        out
    }

    /// Deletes file `sha256` (retention ended); returns its size. A file in a bucket is only
    /// forgotten here: the bucket's lifecycle rules delete objects (`s3.rs`).
    pub(super) fn delete(&self, sha256: &str) -> std::io::Result<u64> {
        let object = self.object(sha256);
        let size = self.size_of(sha256).unwrap_or(0);
        match std::fs::remove_file(&object) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e),
            _ => {}
        }
        let _ = std::fs::remove_file(self.marker(sha256));
        let _ = std::fs::remove_file(object.with_extension("who"));
        self.release(size);
        Ok(size)
    }

    /// Drops uploads not written to since `before` (abandoned); returns how many.
    pub(super) fn drop_abandoned(&self, before: std::time::SystemTime) -> usize {
        let mut n = 0;
        let Ok(dir) = std::fs::read_dir(self.root.join("uploads")) else {
            return 0;
        };
        for entry in dir.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(id) = name.strip_suffix(".json") else {
                continue;
            };
            let last = [self.part(id), self.meta(id)]
                .iter()
                .filter_map(|p| std::fs::metadata(p).and_then(|m| m.modified()).ok())
                .max();
            if last.is_some_and(|t| t < before) {
                if let Ok(info) = self.info(id) {
                    self.drop_upload(id, &info);
                    n += 1;
                }
            }
        }
        n
    }

    /// Whether `identity` uploaded file `sha256` or was sent a command that refers to it.
    pub fn may_read(&self, sha256: &str, identity: &str) -> bool {
        valid_sha256(sha256)
            && std::fs::read_to_string(self.object(sha256).with_extension("who"))
                .is_ok_and(|who| who.lines().any(|l| l == identity))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn info() -> UploadInfo {
        UploadInfo {
            name: "scan.dcm".into(),
            media_type: "application/dicom".into(),
            ..UploadInfo::default()
        }
    }

    async fn upload(
        store: &FileStore,
        who: &str,
        bytes: &'static [u8],
    ) -> Result<FileRef, FileError> {
        let id = store.create(who, bytes.len() as u64, info())?;
        let body = futures_util::stream::iter([Ok(Bytes::from_static(bytes))]);
        let (_, file) = store.append((&id, who), 0, body, None).await?;
        Ok(file.expect("complete"))
    }

    #[tokio::test]
    async fn the_same_file_is_stored_once_and_the_quota_holds() {
        let dir = tempfile::tempdir().unwrap();
        // Room for two uploads in progress: a duplicate holds its reservation until its
        // bytes are known to be a file already stored.
        let limits = FileLimits {
            max_file: 200,
            quota: 250,
        };
        let store = FileStore::open(dir.path(), limits).unwrap();
        let a = upload(&store, "clinic", &[7u8; 100]).await.unwrap();
        let b = upload(&store, "lab", &[7u8; 100]).await.unwrap();
        assert_eq!(a.sha256, b.sha256);
        assert_eq!(store.used.load(Ordering::Relaxed), 100, "stored once");
        assert!(store.may_read(&a.sha256, "clinic") && store.may_read(&a.sha256, "lab"));
        assert!(!store.may_read(&a.sha256, "stranger"));
        store.grant(&a.sha256, "stranger").unwrap();
        assert!(store.may_read(&a.sha256, "stranger"));
        // 100 + 160 > 250: refused before a byte is sent; 201 > max_file too.
        assert!(matches!(
            store.create("x", 160, info()),
            Err(FileError::Quota { .. })
        ));
        assert!(matches!(
            store.create("x", 201, info()),
            Err(FileError::TooLarge(200))
        ));
        // A reopened store counts what it holds, uploads in progress included.
        let pending = store.create("x", 40, info()).unwrap();
        drop(store);
        let store = FileStore::open(dir.path(), limits).unwrap();
        assert_eq!(store.used.load(Ordering::Relaxed), 140);
        store.cancel(&pending, "x").unwrap();
        assert_eq!(store.used.load(Ordering::Relaxed), 100);
        // Another identity cannot see or touch someone's upload.
        let id = store.create("clinic", 10, info()).unwrap();
        assert!(matches!(store.status(&id, "lab"), Err(FileError::NotFound)));
        assert!(matches!(
            store.info("../../etc/passwd"),
            Err(FileError::NotFound)
        ));
    }
}
