//! Uploads into a [`FileStore`]: tus creation (also keyed by a file's hash for nodes, so a
//! transfer between nodes resumes), appends with chunk checksums, completion (the SHA-256
//! checked, stored once, sent to the bucket when there is one), cancellation.

use std::io::Read;
use std::os::unix::fs::OpenOptionsExt;

use bytes::Bytes;
use futures_util::{Stream, StreamExt};
use medlink_wire::{valid_sha256, FileRef};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::store::{private_dir, valid_upload_id, FileError, FileStore, UploadInfo};

/// The checksum a tus client sent with a chunk (`Upload-Checksum`): tus requires `sha1`;
/// `sha256` is taken too.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checksum {
    /// SHA-1 of the chunk.
    Sha1([u8; 20]),
    /// SHA-256 of the chunk.
    Sha256([u8; 32]),
}

/// A running checksum of a chunk.
enum Running {
    None,
    Sha1(sha1::Sha1),
    Sha256(Sha256),
}

impl Running {
    fn new(c: Option<Checksum>) -> Running {
        match c {
            None => Running::None,
            Some(Checksum::Sha1(_)) => Running::Sha1(sha1::Sha1::new()),
            Some(Checksum::Sha256(_)) => Running::Sha256(Sha256::new()),
        }
    }

    fn update(&mut self, bytes: &[u8]) {
        match self {
            Running::None => {}
            Running::Sha1(h) => h.update(bytes),
            Running::Sha256(h) => h.update(bytes),
        }
    }

    /// Whether the bytes seen match `expected`.
    fn matches(self, expected: Option<Checksum>) -> bool {
        match (self, expected) {
            (Running::Sha1(h), Some(Checksum::Sha1(e))) => h.finalize().as_slice() == e,
            (Running::Sha256(h), Some(Checksum::Sha256(e))) => h.finalize().as_slice() == e,
            (Running::None, None) => true,
            _ => false,
        }
    }
}

impl FileStore {
    /// Starts an upload of `length` bytes for `owner`; returns its id.
    pub fn create(&self, owner: &str, length: u64, info: UploadInfo) -> Result<String, FileError> {
        let id = hex::encode(rand::random::<[u8; 16]>());
        self.create_as(&id, owner, length, info)
    }

    /// The upload of file `info.sha256` (declared) by `owner`, named by the two so that asking
    /// again finds it: a node sending a file to another resumes where it stopped, even after
    /// either restarted. If the file is already stored, the upload is complete at once; this
    /// is for nodes only (the caller checks), since it proves no possession of the bytes.
    pub fn create_keyed(
        &self,
        owner: &str,
        length: u64,
        info: UploadInfo,
    ) -> Result<String, FileError> {
        let Some(sha) = info.sha256.clone().filter(|s| valid_sha256(s)) else {
            return Err(FileError::Invalid("sha256: 64 lowercase hex digits".into()));
        };
        let id = hex::encode(&Sha256::digest(format!("{owner}\n{sha}"))[..16]);
        if let Ok(known) = self.info(&id) {
            if known.owner == owner && known.length == length {
                return Ok(id);
            }
            self.drop_upload(&id, &known);
        }
        if self.size_of(&sha) == Some(length) {
            let file = FileRef {
                sha256: sha,
                size: length,
                name: info.name.clone(),
                media_type: info.media_type.clone(),
            };
            let done = UploadInfo {
                owner: owner.to_string(),
                length,
                done: Some(file),
                ..info
            };
            self.write_info(&id, &done)?;
            return Ok(id);
        }
        self.create_as(&id, owner, length, info)
    }

    fn create_as(
        &self,
        id: &str,
        owner: &str,
        length: u64,
        mut info: UploadInfo,
    ) -> Result<String, FileError> {
        if length > self.limits.max_file {
            return Err(FileError::TooLarge(self.limits.max_file));
        }
        if let Some(sha) = &info.sha256 {
            if !valid_sha256(sha) {
                return Err(FileError::Invalid("sha256: 64 lowercase hex digits".into()));
            }
        }
        self.reserve(length)?;
        info.owner = owner.to_string();
        info.length = length;
        info.done = None;
        let made = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(self.part(id))
            .and_then(|_| self.write_info(id, &info));
        if let Err(e) = made {
            self.release(length);
            let _ = std::fs::remove_file(self.part(id));
            return Err(e.into());
        }
        Ok(id.to_string())
    }

    /// Upload `id` as stored.
    pub fn info(&self, id: &str) -> Result<UploadInfo, FileError> {
        if !valid_upload_id(id) {
            return Err(FileError::NotFound);
        }
        let bytes = std::fs::read(self.meta(id)).map_err(|_| FileError::NotFound)?;
        serde_json::from_slice(&bytes).map_err(|_| FileError::NotFound)
    }

    /// Upload `id` of `owner` and how far it is.
    pub fn status(&self, id: &str, owner: &str) -> Result<(UploadInfo, u64), FileError> {
        let info = self.info(id)?;
        if info.owner != owner {
            return Err(FileError::NotFound);
        }
        let offset = match &info.done {
            Some(_) => info.length,
            None => std::fs::metadata(self.part(id))
                .map_err(|_| FileError::NotFound)?
                .len(),
        };
        Ok((info, offset))
    }

    /// Appends `body` to upload `id` of `owner`, which must start at `offset`. With
    /// `checksum` (the SHA-256 of the chunk), a chunk that does not match is dropped. Returns
    /// the new offset, and the file once the upload is complete.
    pub async fn append(
        &self,
        (id, owner): (&str, &str),
        offset: u64,
        body: impl Stream<Item = Result<Bytes, std::io::Error>>,
        checksum: Option<Checksum>,
    ) -> Result<(u64, Option<FileRef>), FileError> {
        let (info, at) = self.status(id, owner)?;
        if info.done.is_some() || offset != at {
            return Err(FileError::Offset(at));
        }
        if !self
            .busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string())
        {
            return Err(FileError::Busy);
        }
        let written = self.write_chunk(id, &info, at, body, checksum).await;
        self.busy
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
        let end = written?;
        if end < info.length {
            return Ok((end, None));
        }
        let file = self.finish(id, info).await?;
        Ok((end, Some(file)))
    }

    async fn write_chunk(
        &self,
        id: &str,
        info: &UploadInfo,
        at: u64,
        body: impl Stream<Item = Result<Bytes, std::io::Error>>,
        checksum: Option<Checksum>,
    ) -> Result<u64, FileError> {
        let path = self.part(id);
        let file = tokio::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .await?;
        // Writes of 1 MiB: each write is a hop to the blocking pool.
        let mut file = tokio::io::BufWriter::with_capacity(1 << 20, file);
        let mut hasher = Running::new(checksum);
        // The whole file's SHA-256, carried from the previous chunk of this upload when it
        // ended where this one starts (in this process), so completion need not read it again.
        let mut whole = self.take_running(id, at);
        let mut end = at;
        let mut body = std::pin::pin!(body);
        let outcome: Result<(), FileError> = async {
            while let Some(chunk) = body.next().await {
                let chunk = chunk?;
                end += chunk.len() as u64;
                if end > info.length {
                    return Err(FileError::TooLong(info.length));
                }
                hasher.update(&chunk);
                if let Some(w) = whole.as_mut() {
                    w.update(&chunk);
                }
                file.write_all(&chunk).await?;
            }
            if !hasher.matches(checksum) {
                return Err(FileError::Checksum);
            }
            file.flush().await?;
            file.get_ref().sync_data().await?;
            Ok(())
        }
        .await;
        if outcome.is_err() {
            // What arrived before the failure is kept (a refused chunk is cut off below).
            let _ = file.flush().await;
        }
        let file = file.into_inner();
        match outcome {
            Ok(()) => {
                if let Some(w) = whole {
                    self.keep_running(id, end, w);
                }
                Ok(end)
            }
            // A refused chunk leaves nothing behind; a broken connection keeps what arrived
            // (the client resumes from there).
            Err(e @ (FileError::Checksum | FileError::TooLong(_))) => {
                file.set_len(at).await?;
                Err(e)
            }
            Err(FileError::Io(e)) if e.kind() != std::io::ErrorKind::StorageFull => {
                let _ = file.sync_data().await;
                Err(FileError::Io(e))
            }
            Err(e) => {
                file.set_len(at).await?;
                Err(e)
            }
        }
    }

    /// The upload is complete: its SHA-256 is computed (and checked against the declared
    /// one), and it becomes the file of that name, unless that file is already stored.
    async fn finish(&self, id: &str, mut info: UploadInfo) -> Result<FileRef, FileError> {
        let part = self.part(id);
        let hashed = part.clone();
        let carried = self.take_running(id, info.length);
        let sha = tokio::task::spawn_blocking(move || -> std::io::Result<String> {
            if let Some(whole) = carried {
                return Ok(hex::encode(whole.finalize()));
            }
            let mut f = std::fs::File::open(hashed)?;
            let mut hasher = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            loop {
                let n = f.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                hasher.update(&buf[..n]);
            }
            Ok(hex::encode(hasher.finalize()))
        })
        .await
        .map_err(std::io::Error::other)??;
        if let Some(expected) = info.sha256.clone().filter(|e| *e != sha) {
            self.drop_upload(id, &info);
            return Err(FileError::Mismatch { expected, got: sha });
        }
        let object = self.object(&sha);
        private_dir(object.parent().expect("objects live in a shard"))?;
        if self.size_of(&sha).is_some() {
            // Stored once: the upload's bytes go, and so does its reservation.
            let _ = std::fs::remove_file(&part);
            self.release(info.length);
        } else if let Some(remote) = &self.remote {
            // The bucket may have it from a node sharing it; otherwise it is sent there.
            if remote.size_of(&sha).await? != Some(info.length) {
                remote.put_file(&sha, &part).await?;
            }
            self.mark(&sha, info.length)?;
            let _ = std::fs::remove_file(&part);
        } else {
            std::fs::rename(&part, &object)?;
        }
        // `^parent` (a file fetched from the parent) is nobody: readers here are granted by
        // the commands that refer to the file.
        if !info.owner.starts_with('^') {
            self.grant(&sha, &info.owner)?;
        }
        let file = FileRef {
            sha256: sha,
            size: info.length,
            name: info.name.clone(),
            media_type: info.media_type.clone(),
        };
        info.done = Some(file.clone());
        self.write_info(id, &info)?;
        Ok(file)
    }

    /// The running SHA-256 of upload `id` if it stands at `at` (a new one at 0).
    fn take_running(&self, id: &str, at: u64) -> Option<Sha256> {
        let mut running = self.running.lock().unwrap_or_else(|p| p.into_inner());
        match running.remove(id) {
            Some((offset, h)) if offset == at => Some(h),
            _ if at == 0 => Some(Sha256::new()),
            _ => None,
        }
    }

    fn forget_running(&self, id: &str) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(id);
    }

    fn keep_running(&self, id: &str, at: u64, hasher: Sha256) {
        self.running
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id.to_string(), (at, hasher));
    }

    pub(super) fn drop_upload(&self, id: &str, info: &UploadInfo) {
        self.forget_running(id);
        let _ = std::fs::remove_file(self.part(id));
        let _ = std::fs::remove_file(self.meta(id));
        if info.done.is_none() {
            self.release(info.length);
        }
    }

    /// Cancels upload `id` of `owner` (tus termination).
    pub fn cancel(&self, id: &str, owner: &str) -> Result<(), FileError> {
        let (info, _) = self.status(id, owner)?;
        self.drop_upload(id, &info);
        Ok(())
    }
}
