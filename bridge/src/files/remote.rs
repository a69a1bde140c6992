//! [`ParentStore`]: the parent's file store, reached over its HTTP API by the child. Links are
//! dialled by the child, so the child moves files both ways: up by tus (`POST` naming the
//! file's SHA-256, then `PATCH` from the offset the parent has), down by `GET` with `Range`
//! from the offset this node has. Either way the receiving store checks the SHA-256 of the
//! whole file before keeping it; a corrupted transfer is dropped there and sent again.
//!
//! This is the link's bulk channel: its own HTTP connection, never the link's, paced to
//! `[parent] files_max_rate`, so commands of every priority overtake it.

use std::time::{Duration, Instant};

use base64::Engine;
use bytes::Bytes;
use futures_util::{Stream, StreamExt, TryStreamExt};
use medlink_wire::FileRef;
use reqwest::StatusCode;

use super::store::{FileError, FileStore, UploadInfo};

/// Bytes sent in one `PATCH`: each is a point the upload resumes from.
const PATCH_BYTES: u64 = 16 << 20;

/// Who fetched a file from the parent (an owner no identity can have).
pub const FROM_PARENT: &str = "^parent";

/// Why a transfer did not complete (it is tried again later).
#[derive(Debug, thiserror::Error)]
pub enum TransferError {
    /// This node has no parent HTTP address to move files through.
    #[error(
        "no HTTP address of the parent is configured ([parent] files_url, or an https:// address)"
    )]
    NoAddress,
    /// The connection failed.
    #[error("{0}")]
    Http(#[from] reqwest::Error),
    /// The parent answered with an error.
    #[error("the parent answered {status}: {body}")]
    Refused {
        /// Its status.
        status: StatusCode,
        /// Its JSON error.
        body: String,
    },
    /// The bytes did not hash to the file's SHA-256; they were dropped.
    #[error(
        "the file arrived corrupted (its SHA-256 did not match); it was dropped and is sent again"
    )]
    Corrupt,
    /// This node's store refused.
    #[error("{0}")]
    Store(#[from] FileError),
}

/// How to reach the parent's file store.
#[derive(Clone)]
pub struct ParentStore {
    client: reqwest::Client,
    base: Option<String>,
    node_id: String,
    password: Option<String>,
    max_rate: Option<u64>,
}

impl ParentStore {
    /// The parent's store at `base` (`https://host:port`), logged in as `node_id` (with
    /// `password`, or the client certificate in `tls`), paced to `max_rate` bytes a second.
    pub fn new(
        base: Option<String>,
        node_id: String,
        password: Option<String>,
        tls: rustls::ClientConfig,
        max_rate: Option<u64>,
    ) -> Result<ParentStore, reqwest::Error> {
        // No overall timeout: a paced transfer of a large file takes as long as it takes.
        // A stalled one is cut by the read timeout and resumed.
        let client = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .connect_timeout(Duration::from_secs(5))
            .read_timeout(Duration::from_secs(30))
            .build()?;
        Ok(ParentStore {
            client,
            base: base.map(|b| b.trim_end_matches('/').to_string()),
            node_id,
            password,
            max_rate: max_rate.filter(|r| *r > 0),
        })
    }

    fn url(&self, path: &str) -> Result<String, TransferError> {
        let base = self.base.as_deref().ok_or(TransferError::NoAddress)?;
        Ok(format!("{base}{path}"))
    }

    fn authed(&self, req: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        let req = req.header("tus-resumable", "1.0.0");
        match &self.password {
            Some(pw) => req.basic_auth(&self.node_id, Some(pw)),
            None => req,
        }
    }

    async fn check(resp: reqwest::Response) -> Result<reqwest::Response, TransferError> {
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let body = resp.text().await.unwrap_or_default();
        if status.as_u16() == 460 {
            return Err(TransferError::Corrupt);
        }
        Err(TransferError::Refused { status, body })
    }

    /// Makes sure the parent has `file`, sending what it lacks from this node's `store`.
    /// Returns the offset it resumed from.
    pub async fn push(&self, store: &FileStore, file: &FileRef) -> Result<u64, TransferError> {
        let b64 = |s: &str| base64::engine::general_purpose::STANDARD.encode(s);
        let metadata = format!(
            "sha256 {},filename {},filetype {}",
            b64(&file.sha256),
            b64(&file.name),
            b64(&file.media_type)
        );
        let created = self
            .authed(self.client.post(self.url("/v1/files")?))
            .header("upload-length", file.size)
            .header("upload-metadata", metadata)
            .send()
            .await?;
        let created = Self::check(created).await?;
        let location = created
            .headers()
            .get(reqwest::header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| TransferError::Refused {
                status: created.status(),
                body: "no Location in the answer".into(),
            })?
            .to_string();
        let upload = self.url(&location)?;
        let head = self.authed(self.client.head(&upload)).send().await?;
        let mut at = offset_of(Self::check(head).await?.headers())?;
        let from = at;
        while at < file.size {
            let len = PATCH_BYTES.min(file.size - at);
            let body = self.pace(store.stream(&file.sha256, at, len).await?);
            let sent = self
                .authed(self.client.patch(&upload))
                .header("upload-offset", at)
                .header("content-type", "application/offset+octet-stream")
                .header("content-length", len)
                .body(reqwest::Body::wrap_stream(body))
                .send()
                .await?;
            at = offset_of(Self::check(sent).await?.headers())?;
        }
        Ok(from)
    }

    /// Fetches `file` from the parent into this node's `store`, from the offset already here.
    /// Returns that offset.
    pub async fn fetch(&self, store: &FileStore, file: &FileRef) -> Result<u64, TransferError> {
        let info = UploadInfo {
            name: file.name.clone(),
            media_type: file.media_type.clone(),
            sha256: Some(file.sha256.clone()),
            ..UploadInfo::default()
        };
        let id = store.create_keyed(FROM_PARENT, file.size, info)?;
        let (known, at) = store.status(&id, FROM_PARENT)?;
        if known.done.is_some() {
            return Ok(at);
        }
        let url = self.url(&format!("/v1/files/{}", file.sha256))?;
        let mut req = self.authed(self.client.get(url));
        if at > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={at}-"));
        }
        let resp = Self::check(req.send().await?).await?;
        if at > 0 && resp.status() != StatusCode::PARTIAL_CONTENT {
            return Err(TransferError::Refused {
                status: resp.status(),
                body: "the parent ignored the Range".into(),
            });
        }
        let body = self.pace(resp.bytes_stream().map_err(std::io::Error::other));
        match store.append((&id, FROM_PARENT), at, body, None).await {
            Ok((_, Some(_))) => Ok(at),
            Ok((end, None)) => Err(TransferError::Refused {
                status: StatusCode::OK,
                body: format!("the answer ended at {end} of {} bytes", file.size),
            }),
            Err(FileError::Mismatch { .. }) => Err(TransferError::Corrupt),
            Err(e) => Err(e.into()),
        }
    }

    /// `stream`, slowed to `max_rate` bytes a second (averaged from its start).
    fn pace<S>(&self, stream: S) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send
    where
        S: Stream<Item = Result<Bytes, std::io::Error>> + Send,
    {
        let rate = self.max_rate;
        let start = Instant::now();
        let mut sent = 0u64;
        stream.then(move |chunk| {
            let wait = match (&chunk, rate) {
                (Ok(bytes), Some(rate)) => {
                    sent += bytes.len() as u64;
                    let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                    due.checked_sub(start.elapsed())
                }
                _ => None,
            };
            async move {
                if let Some(wait) = wait {
                    tokio::time::sleep(wait).await;
                }
                chunk
            }
        })
    }
}

fn offset_of(headers: &reqwest::header::HeaderMap) -> Result<u64, TransferError> {
    headers
        .get("upload-offset")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| TransferError::Refused {
            status: StatusCode::OK,
            body: "no Upload-Offset in the answer".into(),
        })
}
