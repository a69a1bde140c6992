//! The node's file store, independent of the journal: content-addressed files (by SHA-256,
//! stored once however often they are sent) and the resumable uploads that create them.
//!
//! - [`store`]: [`FileStore`], the files and uploads on disk, with the size limit and the
//!   quota.
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

pub mod store;

pub use store::{Checksum, FileError, FileLimits, FileStore, UploadInfo};
