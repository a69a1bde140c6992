//! `/v1/files`: resumable uploads by the tus 1.0 protocol (core, `creation`, `checksum` with
//! sha1 and sha256, `termination`), so standard clients (tus-js-client, tuspy, tus-java-client) work
//! unchanged; and downloads by SHA-256, resumable with `Range`.
//!
//! - `OPTIONS /v1/files`: what this server supports.
//! - `POST /v1/files` (`Upload-Length`, `Upload-Metadata`: `filename` or `name`, `filetype`
//!   or `media_type`, and optionally `sha256`, the hex SHA-256 the whole file must have):
//!   201, `Location: /v1/files/uploads/<id>`. A child node declaring `sha256` gets the same
//!   upload back when it asks again (it resumes), already complete if the file is here.
//! - `HEAD /v1/files/uploads/<id>`: `Upload-Offset`, `Upload-Length`.
//! - `PATCH /v1/files/uploads/<id>` (`application/offset+octet-stream`, `Upload-Offset`,
//!   optional `Upload-Checksum: sha1 <base64>` or `sha256 <base64>`): 204 and the new `Upload-Offset`; 409 at a
//!   wrong offset; 460 when the checksum does not match (the chunk is not stored). The last
//!   chunk's answer also carries `Medlink-File-Sha256`.
//! - `GET /v1/files/uploads/<id>`: the file reference `{sha256, size, name, media_type}` once
//!   complete (409 with the offset before).
//! - `DELETE /v1/files/uploads/<id>`: cancels.
//! - `GET /v1/files/<sha256>`: the file, for its uploaders, the recipients of commands at this
//!   node that refer to it, and admins (`Range` honoured).
//! - `GET /v1/files/<sha256>/url` (`?ttl_s=` to shorten it): for the same readers, when the
//!   files are in a bucket, a presigned URL that downloads this one file without credentials
//!   until it expires (`{url, expires_at}`); it names one object and cannot be widened.

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Json;
use base64::Engine;
use futures_util::TryStreamExt;
use medlink_broker::Role;

use super::auth::Caller;
use super::error::ApiError;
use super::ApiState;
use crate::files::{Checksum, FileError, FileStore, UploadInfo};

const TUS_VERSION: &str = "1.0.0";

fn h(name: &'static str) -> HeaderName {
    HeaderName::from_static(name)
}

fn store(state: &ApiState) -> Result<&Arc<FileStore>, ApiError> {
    state.files.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "this node stores no files",
        )
    })
}

impl From<FileError> for ApiError {
    fn from(e: FileError) -> ApiError {
        let message = e.to_string();
        let (status, code) = match &e {
            FileError::TooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "too_large"),
            FileError::Quota { .. } => (StatusCode::INSUFFICIENT_STORAGE, "store_full"),
            FileError::NotFound => (StatusCode::NOT_FOUND, "not_found"),
            FileError::Offset(_) => (StatusCode::CONFLICT, "offset_mismatch"),
            FileError::Busy => (StatusCode::LOCKED, "busy"),
            FileError::Checksum | FileError::Mismatch { .. } => (
                StatusCode::from_u16(460).unwrap_or(StatusCode::BAD_REQUEST),
                "checksum_mismatch",
            ),
            FileError::TooLong(_) | FileError::Invalid(_) => (StatusCode::BAD_REQUEST, "malformed"),
            FileError::Io(io) => match io.raw_os_error() {
                // ENOSPC, EDQUOT, EFBIG: the disk (or the process's file size limit) is full.
                Some(28 | 122 | 27) => (StatusCode::INSUFFICIENT_STORAGE, "store_full"),
                _ => (StatusCode::SERVICE_UNAVAILABLE, "unavailable"),
            },
        };
        if let FileError::Io(io) = &e {
            tracing::warn!(error = %io, "file store write failed");
        }
        ApiError::new(status, code, message)
    }
}

/// Adds `Tus-Resumable` to an answer.
fn tus(mut resp: Response) -> Response {
    resp.headers_mut()
        .insert(h("tus-resumable"), HeaderValue::from_static(TUS_VERSION));
    resp
}

fn number(headers: &HeaderMap, name: &str) -> Result<Option<u64>, ApiError> {
    match headers.get(name) {
        None => Ok(None),
        Some(v) => v
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .map(Some)
            .ok_or_else(|| {
                ApiError::malformed(format!("{name}: a whole number of bytes")).field(name)
            }),
    }
}

/// Refuses a request of another tus version (412, as the protocol says).
fn check_version(headers: &HeaderMap) -> Result<(), ApiError> {
    match headers.get("tus-resumable").and_then(|v| v.to_str().ok()) {
        Some(TUS_VERSION) => Ok(()),
        _ => Err(ApiError::new(
            StatusCode::PRECONDITION_FAILED,
            "tus_version",
            format!("send Tus-Resumable: {TUS_VERSION}"),
        )
        .field("Tus-Resumable")),
    }
}

/// `Upload-Metadata`: comma-separated `key base64value` pairs.
fn metadata(headers: &HeaderMap) -> Result<UploadInfo, ApiError> {
    let mut info = UploadInfo::default();
    let Some(raw) = headers.get("upload-metadata") else {
        return Ok(info);
    };
    let bad =
        |why: &str| ApiError::malformed(format!("Upload-Metadata: {why}")).field("Upload-Metadata");
    let raw = raw.to_str().map_err(|_| bad("not text"))?;
    for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once(' ').unwrap_or((pair, ""));
        let value = base64::engine::general_purpose::STANDARD
            .decode(value.trim())
            .ok()
            .and_then(|v| String::from_utf8(v).ok())
            .ok_or_else(|| bad(&format!("{key}: not base64 of UTF-8")))?;
        match key {
            "filename" | "name" => info.name = value,
            "filetype" | "media_type" => info.media_type = value,
            "sha256" => info.sha256 = Some(value.to_ascii_lowercase()),
            _ => {}
        }
    }
    Ok(info)
}

/// `OPTIONS /v1/files`.
pub async fn options(State(state): State<Arc<ApiState>>) -> Response {
    let mut resp = StatusCode::NO_CONTENT.into_response();
    let hd = resp.headers_mut();
    hd.insert(h("tus-version"), HeaderValue::from_static(TUS_VERSION));
    hd.insert(
        h("tus-extension"),
        HeaderValue::from_static("creation,checksum,termination"),
    );
    hd.insert(
        h("tus-checksum-algorithm"),
        HeaderValue::from_static("sha1,sha256"),
    );
    if let Some(files) = &state.files {
        hd.insert(
            h("tus-max-size"),
            HeaderValue::from(files.limits().max_file),
        );
    }
    tus(resp)
}

/// `POST /v1/files`: a new upload.
pub async fn create(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let files = store(&state)?;
    let length = number(&headers, "upload-length")?.ok_or_else(|| {
        ApiError::malformed("Upload-Length: required (deferred lengths are not supported)")
            .field("Upload-Length")
    })?;
    let info = metadata(&headers)?;
    // A child node sending a file that a command refers to names it by its hash: asking
    // again resumes its upload, and a file already here needs no bytes (`files/remote.rs`).
    let id = if caller.0.role == Role::Node && info.sha256.is_some() {
        // A bucket shared with the child may hold it already: then nothing is sent.
        if let Some(sha) = &info.sha256 {
            files.probe(sha, length).await.map_err(FileError::Io)?;
        }
        files.create_keyed(&caller.0.name, length, info)?
    } else {
        files.create(&caller.0.name, length, info)?
    };
    let mut resp = StatusCode::CREATED.into_response();
    let location = format!("/v1/files/uploads/{id}");
    resp.headers_mut().insert(
        header::LOCATION,
        HeaderValue::from_str(&location).expect("hex ids are valid header text"),
    );
    Ok(tus(resp))
}

/// `HEAD /v1/files/uploads/<id>`.
pub async fn offset(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (info, at) = store(&state)?.status(&id, &caller.0.name)?;
    let mut resp = StatusCode::OK.into_response();
    let hd = resp.headers_mut();
    hd.insert(h("upload-offset"), HeaderValue::from(at));
    hd.insert(h("upload-length"), HeaderValue::from(info.length));
    hd.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    Ok(tus(resp))
}

/// `PATCH /v1/files/uploads/<id>`: the next bytes.
pub async fn append(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    let files = store(&state)?;
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok());
    if content_type != Some("application/offset+octet-stream") {
        return Err(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "malformed",
            "Content-Type: application/offset+octet-stream",
        )
        .field("Content-Type"));
    }
    let offset = number(&headers, "upload-offset")?
        .ok_or_else(|| ApiError::malformed("Upload-Offset: required").field("Upload-Offset"))?;
    let checksum = match headers.get("upload-checksum") {
        None => None,
        Some(v) => {
            let bad = |why: &str| {
                ApiError::malformed(format!("Upload-Checksum: {why}")).field("Upload-Checksum")
            };
            let text = v.to_str().map_err(|_| bad("not text"))?;
            let (alg, value) = text
                .split_once(' ')
                .ok_or_else(|| bad("`sha1 <base64>` or `sha256 <base64>`"))?;
            let digest = base64::engine::general_purpose::STANDARD
                .decode(value.trim())
                .map_err(|_| bad("not base64"))?;
            let wrong = || bad(&format!("not a {alg} digest"));
            match alg {
                "sha1" => Some(Checksum::Sha1(digest.try_into().map_err(|_| wrong())?)),
                "sha256" => Some(Checksum::Sha256(digest.try_into().map_err(|_| wrong())?)),
                _ => {
                    return Err(ApiError::new(
                        StatusCode::BAD_REQUEST,
                        "malformed",
                        "Upload-Checksum: sha1 or sha256",
                    )
                    .field("Upload-Checksum"))
                }
            }
        }
    };
    let stream = body.into_data_stream().map_err(std::io::Error::other);
    let (at, done) = files
        .append((&id, &caller.0.name), offset, stream, checksum)
        .await?;
    let mut resp = StatusCode::NO_CONTENT.into_response();
    resp.headers_mut()
        .insert(h("upload-offset"), HeaderValue::from(at));
    if let Some(file) = done {
        tracing::info!(owner = %caller.0.name, sha256 = %file.sha256, size = file.size, "file uploaded");
        resp.headers_mut().insert(
            h("medlink-file-sha256"),
            HeaderValue::from_str(&file.sha256).expect("hex is valid header text"),
        );
    }
    Ok(tus(resp))
}

/// `GET /v1/files/uploads/<id>`: the file reference of a complete upload.
pub async fn reference(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    let (info, at) = store(&state)?.status(&id, &caller.0.name)?;
    match info.done {
        Some(file) => Ok(Json(file).into_response()),
        None => Err(ApiError::new(
            StatusCode::CONFLICT,
            "incomplete",
            format!("the upload is at {at} of {} bytes", info.length),
        )),
    }
}

/// `DELETE /v1/files/uploads/<id>`.
pub async fn cancel(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Response, ApiError> {
    check_version(&headers)?;
    store(&state)?.cancel(&id, &caller.0.name)?;
    Ok(tus(StatusCode::NO_CONTENT.into_response()))
}

/// `bytes=a-b`, `bytes=a-`, `bytes=-n` within `size`: the first and last byte.
fn range(headers: &HeaderMap, size: u64) -> Result<Option<(u64, u64)>, ApiError> {
    let Some(v) = headers.get(header::RANGE) else {
        return Ok(None);
    };
    let unsatisfiable = || {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "bad_range",
            format!(
                "Range: one range of bytes within 0-{}",
                size.saturating_sub(1)
            ),
        )
        .field("Range")
    };
    let spec = v
        .to_str()
        .ok()
        .and_then(|s| s.strip_prefix("bytes="))
        .filter(|s| !s.contains(','))
        .ok_or_else(unsatisfiable)?;
    let (a, b) = spec.split_once('-').ok_or_else(unsatisfiable)?;
    let (first, last) = match (a.trim(), b.trim()) {
        ("", n) => {
            let n: u64 = n.parse().map_err(|_| unsatisfiable())?;
            (size.saturating_sub(n), size.saturating_sub(1))
        }
        (a, "") => (
            a.parse().map_err(|_| unsatisfiable())?,
            size.saturating_sub(1),
        ),
        (a, b) => (
            a.parse().map_err(|_| unsatisfiable())?,
            b.parse::<u64>()
                .map_err(|_| unsatisfiable())?
                .min(size.saturating_sub(1)),
        ),
    };
    if size == 0 || first > last || first >= size {
        return Err(unsatisfiable());
    }
    Ok(Some((first, last)))
}

/// Query of `GET /v1/files/<sha256>/url`.
#[derive(Debug, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UrlQuery {
    /// Seconds the URL stays valid (at most `[files.s3] presign_ttl_s`).
    ttl_s: Option<u64>,
}

/// `GET /v1/files/<sha256>/url`: a presigned download URL (files in a bucket only).
pub async fn presigned(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(sha256): Path<String>,
    axum::extract::Query(q): axum::extract::Query<UrlQuery>,
) -> Result<Response, ApiError> {
    let files = store(&state)?;
    let who = caller.0;
    if who.role != Role::Admin && !files.may_read(&sha256, &who.name) {
        return Err(ApiError::forbidden("this file is not yours to read"));
    }
    files.size_of(&sha256).ok_or(FileError::NotFound)?;
    let Some(bucket) = files.remote() else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "no_presigned_url",
            format!("this node keeps its files on its own disk: download from /v1/files/{sha256}"),
        ));
    };
    let ttl =
        std::time::Duration::from_secs(q.ttl_s.unwrap_or(u64::MAX).max(1)).min(bucket.presign_ttl);
    let url = bucket.presign(&sha256, ttl).await.map_err(FileError::Io)?;
    let expires_at = crate::envelope::now_ms() + ttl.as_millis() as u64;
    tracing::info!(reader = %who.name, sha256, ttl_s = ttl.as_secs(), "presigned download URL handed out");
    Ok(Json(serde_json::json!({"url": url.as_str(), "expires_at": expires_at})).into_response())
}

/// `GET /v1/files/<sha256>`: the file (its uploaders, its commands' recipients here, and
/// admins), streamed.
pub async fn download(
    State(state): State<Arc<ApiState>>,
    caller: Caller,
    Path(sha256): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    let files = store(&state)?;
    let who = caller.0;
    if who.role != Role::Admin && !files.may_read(&sha256, &who.name) {
        // The same answer whether or not the file exists: a stranger learns nothing.
        return Err(ApiError::forbidden("this file is not yours to read"));
    }
    let size = files.size_of(&sha256).ok_or(FileError::NotFound)?;
    let span = range(&headers, size)?;
    let (first, last) = span.unwrap_or((0, size.saturating_sub(1)));
    let len = if size == 0 { 0 } else { last - first + 1 };
    let stream = files.stream(&sha256, first, len).await?;
    let status = if span.is_some() {
        StatusCode::PARTIAL_CONTENT
    } else {
        StatusCode::OK
    };
    let mut resp = (status, Body::from_stream(stream)).into_response();
    let hd = resp.headers_mut();
    hd.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    hd.insert(header::CONTENT_LENGTH, HeaderValue::from(len));
    hd.insert(header::ACCEPT_RANGES, HeaderValue::from_static("bytes"));
    hd.insert(
        header::ETAG,
        HeaderValue::from_str(&format!("\"{sha256}\"")).expect("hex is valid header text"),
    );
    if span.is_some() {
        let cr = format!("bytes {first}-{last}/{size}");
        hd.insert(
            header::CONTENT_RANGE,
            HeaderValue::from_str(&cr).expect("digits"),
        );
    }
    Ok(resp)
}
