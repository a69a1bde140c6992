//! The node's file store, independent of the journal: content-addressed files (by SHA-256,
//! stored once however often they are sent) and the resumable uploads that create them.
//!
//! - [`store`]: [`FileStore`], the files on disk (or in a bucket) and who may read them, the
//!   size limit and the quota.
//! - [`upload`]: uploads into the store (tus creation, appends with checksums, completion).
//! - [`remote`]: [`ParentStore`], the parent's store over HTTP: pushed up, fetched down.
//! - [`s3`]: [`S3`], the files in an S3-compatible bucket instead of this disk.
//! - [`retention`]: [`Retention`], the hourly sweep of files no command needs any more.
//! - [`mover`]: [`Mover`], the task that moves the files of held commands (`files_pending`)
//!   and tells the dispatcher when a command may go on.
//!
//! Layout under the store's directory (0700, files 0600: they hold patient data):
//!
//! ```text
//! objects/<first two hex digits>/<sha256>        the files
//! objects/<first two hex digits>/<sha256>.who    who uploaded it, one identity a line
//! uploads/<id>.part                              an upload's bytes so far
//! uploads/<id>.json                              its declared length, metadata and owner,
//!                                                and once complete its file reference
//! ```
//!
//! An upload survives a restart: its offset is the length of its `.part`, synced at the end of
//! every PATCH. The HTTP side (tus 1.0) is `http/files.rs`.

pub mod mover;
pub mod remote;
pub mod retention;
pub mod s3;
pub mod store;
pub mod upload;

use bytes::Bytes;
use futures_util::Stream;
use tokio::io::AsyncReadExt;

pub use mover::{Held, Mover, Ready};
pub use remote::{ParentStore, TransferError};
pub use retention::Retention;
pub use s3::{S3Settings, S3};
pub use store::{FileError, FileLimits, FileStore, UploadInfo};
pub use upload::Checksum;

/// `reader` as a stream of chunks of up to 256 KiB (a download's body, an upload's).
pub(crate) fn chunks(
    reader: impl tokio::io::AsyncRead + Unpin + Send,
) -> impl Stream<Item = Result<Bytes, std::io::Error>> + Send {
    futures_util::stream::unfold(
        (reader, vec![0u8; 256 * 1024]),
        |(mut r, mut buf)| async move {
            match r.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => Some((Ok(Bytes::copy_from_slice(&buf[..n])), (r, buf))),
                Err(e) => Some((Err(e), (r, buf))),
            }
        },
    )
}
