//! [`Files`]: uploads to a node's file store (tus 1.0, resumed from the node's offset when the
//! connection breaks) and downloads by [`FileRef`] (resumed with `Range`), each checked against
//! the file's SHA-256.
//!
//! A command refers to files by their [`FileRef`]s ([`SendOptions::files`]); upload first, then
//! send. The node keeps the file while the command travels and moves it along the tree with the
//! command, so the recipient downloads it from its own node.
//!
//! [`SendOptions::files`]: crate::SendOptions::files

use std::path::Path;
use std::time::Duration;

use base64::Engine;
use bytes::Bytes;
use futures_util::StreamExt;
use medlink_wire::FileRef;
use sha2::{Digest, Sha256};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncSeek, AsyncSeekExt, AsyncWrite, AsyncWriteExt};

use crate::{Error, Options};

/// Bytes sent in one `PATCH`, each with its own SHA-256 checksum: the points an upload
/// resumes from.
const CHUNK: u64 = 8 << 20;

/// Attempts at one transfer before giving up (with backoff between them).
const ATTEMPTS: u32 = 6;

/// A handle on one node's file store, for one identity. Cheap to clone.
#[derive(Clone)]
pub struct Files {
    http: reqwest::Client,
    base: String,
    identity: String,
    password: String,
}

impl std::fmt::Debug for Files {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Files")
            .field("base", &self.base)
            .field("identity", &self.identity)
            .finish_non_exhaustive()
    }
}

fn failed(e: impl std::fmt::Display) -> Error {
    Error::Files(e.to_string())
}

/// The error a node answered, from its JSON body (`message`, `field`).
async fn refused(what: &str, resp: reqwest::Response) -> Error {
    let status = resp.status();
    let bytes = resp.bytes().await.unwrap_or_default();
    let body: serde_json::Value = serde_json::from_slice(&bytes).unwrap_or_default();
    let message = body["message"].as_str().unwrap_or("no reason given");
    Error::Files(format!("{what}: the node answered {status}: {message}"))
}

impl Files {
    /// The file store of the node `opts` names: [`Options::files_url`], or `opts.url` when that
    /// is the node's HTTP API (`http(s)://`).
    pub fn new(opts: &Options) -> Result<Files, Error> {
        let base = match (&opts.files_url, opts.url.split_once("://")) {
            (Some(url), _) => url.clone(),
            (None, Some(("http" | "https", _))) => opts.url.clone(),
            (None, _) => return Err(Error::Config(
                "files move over the node's HTTP API: set Options::files_url (https://host:port)"
                    .into(),
            )),
        };
        let tls = match &opts.ca {
            Some(ca) => crate::tls::trusting(ca)?,
            None if base.starts_with("https:") => {
                return Err(Error::Config(format!(
                    "{base} needs the CA certificate (Options::ca)"
                )))
            }
            None => crate::tls::trusting_nothing()?,
        };
        let http = reqwest::Client::builder()
            .use_preconfigured_tls((*tls).clone())
            .connect_timeout(opts.connect_timeout.unwrap_or(Duration::from_secs(15)))
            .read_timeout(Duration::from_secs(60))
            .build()
            .map_err(failed)?;
        Ok(Files {
            http,
            base: base.trim_end_matches('/').to_string(),
            identity: opts.identity.clone(),
            password: opts.password.clone(),
        })
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .basic_auth(&self.identity, Some(&self.password))
            .header("tus-resumable", "1.0.0")
    }

    /// Uploads the file at `path`; `progress(sent, total)` is called as bytes go.
    pub async fn upload_path(
        &self,
        path: &Path,
        media_type: &str,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<FileRef, Error> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| failed(format!("{}: {e}", path.display())))?;
        let name = path
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        self.upload(file, &name, media_type, progress).await
    }

    /// Uploads what `reader` holds, as `name` of `media_type`. The reader is read twice (its
    /// SHA-256 first, which the node checks at the end) and again from the node's offset after
    /// a broken connection, hence `AsyncSeek`.
    pub async fn upload<R>(
        &self,
        mut reader: R,
        name: &str,
        media_type: &str,
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<FileRef, Error>
    where
        R: AsyncRead + AsyncSeek + Unpin + Send,
    {
        reader
            .seek(std::io::SeekFrom::Start(0))
            .await
            .map_err(failed)?;
        let (hasher, size) = hash(&mut reader).await?;
        let sha = hex::encode(hasher.finalize());
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let metadata = format!(
            "filename {},filetype {},sha256 {}",
            b64(name),
            b64(media_type),
            b64(&sha)
        );
        let made = self
            .request(reqwest::Method::POST, "/v1/files")
            .header("upload-length", size)
            .header("upload-metadata", metadata)
            .send()
            .await
            .map_err(failed)?;
        if !made.status().is_success() {
            return Err(refused("creating the upload", made).await);
        }
        let upload = made
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| failed("the node's answer has no Location"))?
            .to_string();
        let mut at = 0u64;
        let mut attempt = 0;
        progress(0, size);
        while at < size {
            match self.patch(&upload, &mut reader, at, size).await {
                Ok(next) => {
                    at = next;
                    attempt = 0;
                    progress(at, size);
                }
                Err(Retry::No(e)) => return Err(e),
                Err(Retry::Yes(e)) => {
                    attempt = again(attempt, e).await?;
                    at = self.offset(&upload).await.unwrap_or(at);
                }
            }
        }
        let resp = self
            .request(reqwest::Method::GET, &upload)
            .send()
            .await
            .map_err(failed)?;
        if !resp.status().is_success() {
            return Err(refused("reading the file reference", resp).await);
        }
        let body = resp.bytes().await.map_err(failed)?;
        serde_json::from_slice(&body).map_err(failed)
    }

    async fn offset(&self, upload: &str) -> Result<u64, Error> {
        let resp = self
            .request(reqwest::Method::HEAD, upload)
            .send()
            .await
            .map_err(failed)?;
        resp.headers()
            .get("upload-offset")
            .and_then(|v| v.to_str().ok()?.parse().ok())
            .ok_or_else(|| failed("no Upload-Offset"))
    }

    /// Sends the chunk at `at`; returns the node's new offset.
    async fn patch<R>(&self, upload: &str, reader: &mut R, at: u64, size: u64) -> Result<u64, Retry>
    where
        R: AsyncRead + AsyncSeek + Unpin + Send,
    {
        let len = CHUNK.min(size - at);
        let mut chunk = vec![0u8; len as usize];
        reader
            .seek(std::io::SeekFrom::Start(at))
            .await
            .and(reader.read_exact(&mut chunk).await.map(|_| ()))
            .map_err(|e| Retry::No(failed(e)))?;
        let checksum = base64::engine::general_purpose::STANDARD.encode(Sha256::digest(&chunk));
        let sent = self
            .request(reqwest::Method::PATCH, upload)
            .header("upload-offset", at)
            .header("upload-checksum", format!("sha256 {checksum}"))
            .header("content-type", "application/offset+octet-stream")
            .body(chunk)
            .send()
            .await
            .map_err(|e| Retry::Yes(failed(e)))?;
        let status = sent.status();
        if status.is_success() {
            return sent
                .headers()
                .get("upload-offset")
                .and_then(|v| v.to_str().ok()?.parse().ok())
                .ok_or_else(|| Retry::No(failed("no Upload-Offset")));
        }
        let e = refused("uploading", sent).await;
        // 409: the node stands elsewhere (a chunk arrived though its answer did not); 5xx and
        // 460 (damaged on the way) are worth another try; other refusals are final.
        match status.as_u16() {
            409 | 460 | 500..=599 => Err(Retry::Yes(e)),
            _ => Err(Retry::No(e)),
        }
    }

    /// Downloads `file` into `writer` from the start, resuming with `Range` where a
    /// connection breaks, and checks its SHA-256; `progress(received, total)` as bytes come.
    pub async fn download<W>(
        &self,
        file: &FileRef,
        writer: &mut W,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<(), Error>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let got = self
            .download_from(file, writer, (0, Sha256::new()), progress)
            .await?;
        matches(file, &got)
    }

    /// Downloads `file` to `path`, continuing a partial download already there (`path` with
    /// `.part` added) from its length, and renames it into place once its SHA-256 matches.
    pub async fn download_path(
        &self,
        file: &FileRef,
        path: &Path,
        progress: impl FnMut(u64, u64) + Send,
    ) -> Result<(), Error> {
        let mut part_name = path.as_os_str().to_owned();
        part_name.push(".part");
        let part = std::path::PathBuf::from(part_name);
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&part)
            .await
            .map_err(|e| failed(format!("{}: {e}", part.display())))?;
        let (mut hasher, mut have) = hash(&mut f).await?;
        if have > file.size {
            f.set_len(0).await.map_err(failed)?;
            (have, hasher) = (0, Sha256::new());
        }
        let got = self
            .download_from(file, &mut f, (have, hasher), progress)
            .await?;
        if let Err(e) = matches(file, &got) {
            // Damaged bytes are not worth continuing from.
            let _ = tokio::fs::remove_file(&part).await;
            return Err(e);
        }
        tokio::fs::rename(&part, path)
            .await
            .map_err(|e| failed(format!("{}: {e}", path.display())))
    }

    async fn download_from<W>(
        &self,
        file: &FileRef,
        writer: &mut W,
        (mut at, mut hasher): (u64, Sha256),
        mut progress: impl FnMut(u64, u64) + Send,
    ) -> Result<String, Error>
    where
        W: AsyncWrite + Unpin + Send,
    {
        let mut attempt = 0;
        progress(at, file.size);
        while at < file.size {
            let mut req = self.request(reqwest::Method::GET, &format!("/v1/files/{}", file.sha256));
            if at > 0 {
                req = req.header(reqwest::header::RANGE, format!("bytes={at}-"));
            }
            let outcome: Result<(), Retry> = async {
                let resp = req.send().await.map_err(|e| Retry::Yes(failed(e)))?;
                let status = resp.status();
                if !(status == 200 && at == 0 || status == 206) {
                    let e = refused("downloading", resp).await;
                    return Err(if status.is_server_error() {
                        Retry::Yes(e)
                    } else {
                        Retry::No(e)
                    });
                }
                let mut body = resp.bytes_stream();
                while let Some(chunk) = body.next().await {
                    let chunk: Bytes = chunk.map_err(|e| Retry::Yes(failed(e)))?;
                    writer
                        .write_all(&chunk)
                        .await
                        .map_err(|e| Retry::No(failed(e)))?;
                    hasher.update(&chunk);
                    at += chunk.len() as u64;
                    progress(at, file.size);
                }
                Ok(())
            }
            .await;
            match outcome {
                Ok(()) => attempt = 0,
                Err(Retry::No(e)) => return Err(e),
                Err(Retry::Yes(e)) => attempt = again(attempt, e).await?,
            }
        }
        writer.flush().await.map_err(failed)?;
        Ok(hex::encode(hasher.finalize()))
    }
}

/// Whether `got` (hex) is `file`'s SHA-256.
fn matches(file: &FileRef, got: &str) -> Result<(), Error> {
    if got != file.sha256 {
        return Err(Error::Files(format!(
            "the download's SHA-256 is {got}, not {}",
            file.sha256
        )));
    }
    Ok(())
}

/// Whether a failed step is worth another try.
enum Retry {
    Yes(Error),
    No(Error),
}

/// After failed attempt number `attempt + 1` (error `e`): waits before the next one (0.5 s
/// doubling), or gives up with `e` after [`ATTEMPTS`].
async fn again(attempt: u32, e: Error) -> Result<u32, Error> {
    let attempt = attempt + 1;
    if attempt >= ATTEMPTS {
        return Err(e);
    }
    tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
    Ok(attempt)
}

/// The running SHA-256 and length of what `reader` holds from where it stands.
async fn hash<R: AsyncRead + Unpin>(reader: &mut R) -> Result<(Sha256, u64), Error> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = reader.read(&mut buf).await.map_err(failed)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        size += n as u64;
    }
    Ok((hasher, size))
}
