//! [`S3`]: files kept in an S3-compatible object store (`[files.s3]`), through the
//! `object_store` crate (request signing, multipart uploads, presigned URLs).
//!
//! The object of file `h` is `<prefix>/<h>`. Uploads in progress stay on the node's disk
//! (tus appends to them); a complete one is sent to the bucket in parts and its local bytes are
//! dropped. Nodes configured with the same bucket and prefix share their files: a node that
//! finds a file's object already there records it and copies nothing.
//!
//! Retention in a bucket belongs to the bucket's lifecycle rules: a node that ends a file's
//! retention forgets it, but never deletes a shared object another node may still need.

use std::path::Path as FsPath;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::stream::BoxStream;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::path::Path;
use object_store::signer::Signer;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use tokio::io::AsyncReadExt;

/// Where the bucket is and how to sign for it.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `https://host:port` of an S3-compatible service (`None`: AWS).
    pub endpoint: Option<String>,
    /// The bucket.
    pub bucket: String,
    /// Its region.
    pub region: String,
    /// Key prefix of the files (nodes sharing a store use the same one).
    pub prefix: String,
    /// Access key id and secret; `None`: from the environment (`AWS_ACCESS_KEY_ID`, …).
    pub credentials: Option<(String, String)>,
    /// How long a presigned download URL is valid.
    pub presign_ttl: Duration,
}

/// A bucket holding files.
#[derive(Debug, Clone)]
pub struct S3 {
    store: Arc<AmazonS3>,
    prefix: String,
    /// How long a presigned download URL is valid.
    pub presign_ttl: Duration,
}

/// Bytes sent in one part of a multipart upload (S3's minimum is 5 MiB).
const PART: usize = 8 << 20;

fn io(e: object_store::Error) -> std::io::Error {
    match e {
        object_store::Error::NotFound { .. } => {
            std::io::Error::new(std::io::ErrorKind::NotFound, e.to_string())
        }
        e => std::io::Error::other(e.to_string()),
    }
}

impl S3 {
    /// A client of the bucket `s` names (nothing is asked of it yet).
    pub fn new(s: &S3Settings) -> Result<S3, String> {
        let mut b = if s.credentials.is_some() {
            AmazonS3Builder::new()
        } else {
            AmazonS3Builder::from_env()
        }
        .with_bucket_name(&s.bucket)
        .with_region(&s.region);
        if let Some((id, secret)) = &s.credentials {
            b = b.with_access_key_id(id).with_secret_access_key(secret);
        }
        // Whole-request timeouts would cut large files; connecting is still bounded.
        let mut options = object_store::ClientOptions::new()
            .with_timeout_disabled()
            .with_connect_timeout(Duration::from_secs(10));
        if let Some(endpoint) = &s.endpoint {
            options = options.with_allow_http(endpoint.starts_with("http:"));
            b = b
                .with_endpoint(endpoint)
                .with_virtual_hosted_style_request(false);
        }
        let b = b.with_client_options(options);
        let store = b.build().map_err(|e| e.to_string())?;
        Ok(S3 {
            store: Arc::new(store),
            prefix: s.prefix.trim_matches('/').to_string(),
            presign_ttl: s.presign_ttl,
        })
    }

    fn key(&self, sha256: &str) -> Path {
        match self.prefix.as_str() {
            "" => Path::from(sha256),
            p => Path::from(format!("{p}/{sha256}")),
        }
    }

    /// The size of file `sha256`'s object, if the bucket has it.
    pub async fn size_of(&self, sha256: &str) -> std::io::Result<Option<u64>> {
        match self.store.head(&self.key(sha256)).await {
            Ok(meta) => Ok(Some(meta.size)),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(io(e)),
        }
    }

    /// Sends the local file at `path` as file `sha256`'s object, in parts.
    pub async fn put_file(&self, sha256: &str, path: &FsPath) -> std::io::Result<()> {
        let upload = self
            .store
            .put_multipart(&self.key(sha256))
            .await
            .map_err(io)?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, PART);
        let mut file = tokio::fs::File::open(path).await?;
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = file.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            // At most two parts in flight: memory stays flat whatever the file's size.
            writer.wait_for_capacity(2).await.map_err(io)?;
            writer.write(&buf[..n]);
        }
        writer.finish().await.map_err(io)?;
        Ok(())
    }

    /// `len` bytes of file `sha256` from `first`, streamed.
    pub async fn get(
        &self,
        sha256: &str,
        first: u64,
        len: u64,
    ) -> std::io::Result<BoxStream<'static, std::io::Result<Bytes>>> {
        if len == 0 {
            return Ok(futures_util::stream::empty().boxed());
        }
        let options = GetOptions {
            range: Some(GetRange::Bounded(first..first + len)),
            ..GetOptions::default()
        };
        let got = self
            .store
            .get_opts(&self.key(sha256), options)
            .await
            .map_err(io)?;
        Ok(got.into_stream().map_err(io).boxed())
    }

    /// A URL that downloads file `sha256` without credentials until `ttl` has passed.
    pub async fn presign(&self, sha256: &str, ttl: Duration) -> std::io::Result<url::Url> {
        self.store
            .signed_url(reqwest::Method::GET, &self.key(sha256), ttl)
            .await
            .map_err(io)
    }
}
