//! `ObjectStore` (+ `SignedUrls`) on an S3 bucket, under an optional key prefix
//! (`s3://bucket[/prefix]`).
//!
//! Port keys are relative to the store's prefix and validated with `validate_key`. Writes are
//! streaming and atomic: a writer buffers one 8 MiB part at a time, starts a multipart upload
//! on the first full part and completes it on `finish`; an object smaller than a part is one
//! `PutObject`. S3 shows nothing under the key until either call succeeds. `abort`, a failed
//! `finish` and a writer dropped unfinished abort the multipart upload, so no parts are left
//! to pay for. Reads stream the response body; a range that starts at or past the end of an
//! object is empty. `NoSuchKey` / 404 is `NotFound`; every other SDK failure is `Backend` with
//! the SDK error as its source.

use std::fmt;
use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::Client;
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::presigning::PresigningConfig;
use aws_sdk_s3::primitives::ByteStream as SdkByteStream;
use aws_sdk_s3::types::{
    ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart, Delete, ObjectIdentifier,
};
use bytes::{Bytes, BytesMut};
use percent_encoding::{AsciiSet, NON_ALPHANUMERIC, utf8_percent_encode};

use super::endpoint_overridden;
use crate::ports::{
    ByteStream, Encoding, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, Refusal, SignedUrls,
    validate_key,
};

/// Size of every multipart part but the last. S3 wants at least 5 MiB; 8 MiB keeps the part
/// count of our largest files (a few hundred MiB) far below the 10,000 limit, which caps an
/// object at 80 GiB.
const PART_SIZE: usize = 8 * 1024 * 1024;
const MAX_PARTS: usize = 10_000;
/// The most keys one `DeleteObjects` call takes.
const DELETE_BATCH: usize = 1000;

/// What a `CopySource` leaves unencoded: S3 wants the key URL-encoded, `/` kept.
const COPY_SOURCE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'/')
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~');

/// `s3://bucket[/prefix]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Location {
    pub bucket: String,
    /// `""` or a valid key ending in `/`.
    pub prefix: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum S3UrlError {
    #[error("`{0}` is not an `s3://bucket[/prefix]` URL")]
    NotS3(String),
    #[error("`{url}`: `{bucket}` is not a valid bucket name")]
    InvalidBucket { url: String, bucket: String },
    #[error("`{url}`: `{prefix}` is not a valid key prefix")]
    InvalidPrefix { url: String, prefix: String },
}

impl S3Location {
    pub fn parse(url: &str) -> Result<S3Location, S3UrlError> {
        let rest = url
            .get(..5)
            .filter(|scheme| scheme.eq_ignore_ascii_case("s3://"))
            .and_then(|_| url.get(5..))
            .ok_or_else(|| S3UrlError::NotS3(url.to_owned()))?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if !valid_bucket(bucket) {
            return Err(S3UrlError::InvalidBucket {
                url: url.to_owned(),
                bucket: bucket.to_owned(),
            });
        }
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        if validate_key(&prefix).is_err() {
            return Err(S3UrlError::InvalidPrefix {
                url: url.to_owned(),
                prefix,
            });
        }
        Ok(S3Location {
            bucket: bucket.to_owned(),
            prefix,
        })
    }
}

impl fmt::Display for S3Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "s3://{}", self.bucket)?;
        match self.prefix.strip_suffix('/') {
            Some(p) => write!(f, "/{p}"),
            None => Ok(()),
        }
    }
}

/// S3's rules for new buckets (3-63 characters of lowercase letters, digits, `.` and `-`,
/// starting and ending with a letter or digit): a name outside them cannot be addressed in
/// both path and virtual-host style, so it is refused when the URL is read, not at first use.
fn valid_bucket(name: &str) -> bool {
    let b = name.as_bytes();
    (3..=63).contains(&b.len())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || matches!(c, b'.' | b'-'))
        && b.first().is_some_and(u8::is_ascii_alphanumeric)
        && b.last().is_some_and(u8::is_ascii_alphanumeric)
        && !name.contains("..")
}

/// Failures of this adapter that are not an SDK error (those are kept as they are).
#[derive(Debug, thiserror::Error)]
pub enum S3StoreError {
    #[error("an earlier part upload failed; the writer can only be aborted")]
    WriterFailed,
    #[error("object exceeds {MAX_PARTS} parts of {PART_SIZE} bytes")]
    TooManyParts,
    #[error("CreateMultipartUpload answered without an upload id")]
    NoUploadId,
    #[error("DeleteObjects refused {count} key(s); first `{key}`: {code}: {message}")]
    DeleteRefused {
        count: usize,
        key: String,
        code: String,
        message: String,
    },
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: Client,
    location: S3Location,
}

impl S3Store {
    /// From the shared SDK config; path-style addressing when an endpoint override points the
    /// SDK at a stand-in (which serves no bucket subdomains).
    pub fn new(config: &aws_config::SdkConfig, location: S3Location) -> S3Store {
        let path_style = endpoint_overridden() || config.endpoint_url().is_some();
        S3Store::with_path_style(config, location, path_style)
    }

    /// As `new`, with the addressing style chosen by the caller (S3-compatible services that
    /// need path style behind a regular endpoint, or bucket names with dots over TLS).
    pub fn with_path_style(
        config: &aws_config::SdkConfig,
        location: S3Location,
        path_style: bool,
    ) -> S3Store {
        let conf = aws_sdk_s3::config::Builder::from(config)
            .force_path_style(path_style)
            .interceptor(crate::usage::scope::CountRequests::new(crate::usage::S3))
            .build();
        S3Store::from_client(Client::from_conf(conf), location)
    }

    pub fn from_client(client: Client, location: S3Location) -> S3Store {
        S3Store { client, location }
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn location(&self) -> &S3Location {
        &self.location
    }

    fn bucket(&self) -> &str {
        &self.location.bucket
    }

    /// The full S3 key of a prefix (or of any key, folder-like ones included).
    fn full_prefix(&self, key: &str) -> Result<String, ObjectError> {
        validate_key(key)?;
        Ok(format!("{}{key}", self.location.prefix))
    }

    /// The full S3 key of an object: like `full_prefix`, but a folder-like key names no object.
    fn full_key(&self, key: &str) -> Result<String, ObjectError> {
        if key.is_empty() || key.ends_with('/') {
            return Err(ObjectError::InvalidKey(key.to_owned()));
        }
        self.full_prefix(key)
    }

    /// Every object under a full prefix, with full keys, in S3's order, including keys this
    /// adapter would refuse (so `delete_prefix` removes them too).
    async fn list_full(
        &self,
        full_prefix: &str,
        port_prefix: &str,
    ) -> Result<Vec<(String, u64)>, ObjectError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = self
                .client
                .list_objects_v2()
                .bucket(self.bucket())
                .set_prefix((!full_prefix.is_empty()).then(|| full_prefix.to_owned()))
                .set_continuation_token(token.take())
                .send()
                .await
                .map_err(|e| ObjectError::backend(port_prefix, e))?;
            for o in page.contents() {
                if let Some(k) = o.key() {
                    let size = o.size().and_then(|s| u64::try_from(s).ok()).unwrap_or(0);
                    out.push((k.to_owned(), size));
                }
            }
            match page.next_continuation_token() {
                Some(t) if page.is_truncated().unwrap_or(false) => token = Some(t.to_owned()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// Aborts every unfinished multipart upload under a prefix: their parts are stored (and
    /// billed) though no object shows them, until aborted. A writer whose upload is aborted
    /// fails at its next part or at `finish`, which is what a deleted prefix calls for.
    async fn abort_uploads(
        &self,
        full_prefix: &str,
        port_prefix: &str,
    ) -> Result<u64, ObjectError> {
        let mut aborted = 0u64;
        let mut key_marker: Option<String> = None;
        let mut upload_marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_multipart_uploads()
                .bucket(self.bucket())
                .set_prefix((!full_prefix.is_empty()).then(|| full_prefix.to_owned()))
                .set_key_marker(key_marker.take())
                .set_upload_id_marker(upload_marker.take())
                .send()
                .await
                .map_err(|e| ObjectError::backend(port_prefix, e))?;
            for u in page.uploads() {
                let (Some(key), Some(id)) = (u.key(), u.upload_id()) else {
                    continue;
                };
                if !key.starts_with(full_prefix) {
                    continue;
                }
                abort_upload(&self.client, self.bucket(), key, id)
                    .await
                    .map_err(|e| ObjectError::backend(port_prefix, e))?;
                aborted += 1;
            }
            match (page.next_key_marker(), page.next_upload_id_marker()) {
                (Some(k), Some(u)) if page.is_truncated().unwrap_or(false) => {
                    key_marker = Some(k.to_owned());
                    upload_marker = Some(u.to_owned());
                }
                _ => return Ok(aborted),
            }
        }
    }
}

/// The HTTP status of a failed call, when it got as far as a response.
fn status<E>(err: &SdkError<E>) -> Option<u16> {
    err.raw_response().map(|r| r.status().as_u16())
}

/// Maps an SDK error about `key` (a port key) to the port's variants.
fn map_err<E>(key: &str, err: SdkError<E>) -> ObjectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    match (err.code(), status(&err)) {
        // A missing bucket is a configuration fault and a vanished upload a failed write, not
        // a missing object: neither may turn into a 404 for the client.
        (Some("NoSuchBucket" | "NoSuchUpload"), _) => ObjectError::backend(key, err),
        (Some("NoSuchKey" | "NotFound"), _) | (_, Some(404)) => {
            ObjectError::NotFound(key.to_owned())
        }
        (Some("KeyTooLongError"), _) => ObjectError::InvalidKey(key.to_owned()),
        // What the credentials or a bucket policy refuse is refused again on a retry.
        (Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem"), _) | (_, Some(403)) => {
            ObjectError::Refused {
                key: key.to_owned(),
                reason: Refusal::PermissionDenied,
                source: Box::new(err),
            }
        }
        _ => ObjectError::backend(key, err),
    }
}

#[async_trait]
impl ObjectStore for S3Store {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        let full = self.full_key(key)?;
        self.client
            .put_object()
            .bucket(self.bucket())
            .key(full)
            .body(SdkByteStream::from(data))
            .send()
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        self.encoded_writer(key, Encoding::Identity).await
    }

    /// The object carries `Content-Encoding`, which S3 sends with every GET (presigned ones
    /// included) and which `CopyObject` keeps when a staged file is published.
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        let full_key = self.full_key(key)?;
        Ok(Box::new(S3Writer {
            client: self.client.clone(),
            bucket: self.bucket().to_owned(),
            full_key,
            key: key.to_owned(),
            content_encoding: encoding.content_encoding(),
            buf: BytesMut::new(),
            upload: None,
            size: 0,
            failed: false,
        }))
    }

    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError> {
        let full = self.full_key(key)?;
        if end.is_some_and(|e| e <= start) {
            // No Range header can ask for nothing; the object must still exist.
            return match self.head(key).await? {
                Some(_) => Ok(Box::pin(futures::stream::empty())),
                None => Err(ObjectError::NotFound(key.to_owned())),
            };
        }
        let range = match (start, end) {
            (0, None) => None,
            (s, None) => Some(format!("bytes={s}-")),
            (s, Some(e)) => Some(format!("bytes={s}-{}", e - 1)),
        };
        let resp = match self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(full)
            .set_range(range)
            .send()
            .await
        {
            Ok(r) => r,
            // S3 checks that the key exists before the range, so 416 means the object is there
            // and the range starts at or past its end.
            Err(e) if status(&e) == Some(416) || e.code() == Some("InvalidRange") => {
                return Ok(Box::pin(futures::stream::empty()));
            }
            Err(e) => return Err(map_err(key, e)),
        };
        let state = (Some(resp.body), key.to_owned());
        Ok(Box::pin(futures::stream::unfold(
            state,
            |(body, key)| async move {
                let mut body = body?;
                loop {
                    match body.next().await {
                        None => return None,
                        Some(Ok(b)) if b.is_empty() => continue,
                        Some(Ok(b)) => return Some((Ok(b), (Some(body), key))),
                        // Stop after the first error: a body cut short cannot resume.
                        Some(Err(e)) => {
                            let err = ObjectError::backend(&key, e);
                            return Some((Err(err), (None, key)));
                        }
                    }
                }
            },
        )))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        // As on a folder, a folder-like key names no object.
        if key.is_empty() || key.ends_with('/') {
            validate_key(key)?;
            return Ok(None);
        }
        let full = self.full_key(key)?;
        match self
            .client
            .head_object()
            .bucket(self.bucket())
            .key(full)
            .send()
            .await
        {
            Ok(o) => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: o
                    .content_length()
                    .and_then(|s| u64::try_from(s).ok())
                    .unwrap_or(0),
            })),
            Err(e) => match map_err(key, e) {
                ObjectError::NotFound(_) => Ok(None),
                other => Err(other),
            },
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        let full = self.full_prefix(prefix)?;
        let store_prefix = &self.location.prefix;
        let mut out: Vec<ObjectMeta> = Vec::new();
        for (k, size) in self.list_full(&full, prefix).await? {
            let Some(rel) = k.strip_prefix(store_prefix.as_str()) else {
                continue;
            };
            // Zero-byte "folder" markers (made by consoles) are not files.
            if rel.ends_with('/') {
                continue;
            }
            // A key no port call could name (`a//b`, `../x`) would fail every later read.
            if validate_key(rel).is_err() {
                tracing::warn!(bucket = %self.bucket(), key = %k, "object key not addressable; skipped");
                continue;
            }
            out.push(ObjectMeta {
                key: rel.to_owned(),
                size,
            });
        }
        out.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(out)
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let full = self.full_key(key)?;
        match self
            .client
            .delete_object()
            .bucket(self.bucket())
            .key(full)
            .send()
            .await
        {
            Ok(_) => Ok(()),
            Err(e) => match map_err(key, e) {
                ObjectError::NotFound(_) => Ok(()),
                other => Err(other),
            },
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        let full = self.full_prefix(prefix)?;
        let keys = self.list_full(&full, prefix).await?;
        let mut deleted = 0u64;
        for batch in keys.chunks(DELETE_BATCH) {
            let objects = batch
                .iter()
                .map(|(k, _)| ObjectIdentifier::builder().key(k).build())
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| ObjectError::backend(prefix, e))?;
            let delete = Delete::builder()
                .set_objects(Some(objects))
                .quiet(true)
                .build()
                .map_err(|e| ObjectError::backend(prefix, e))?;
            let out = self
                .client
                .delete_objects()
                .bucket(self.bucket())
                .delete(delete)
                .send()
                .await
                .map_err(|e| ObjectError::backend(prefix, e))?;
            if let Some(first) = out.errors().first() {
                return Err(ObjectError::backend(
                    prefix,
                    S3StoreError::DeleteRefused {
                        count: out.errors().len(),
                        key: first.key().unwrap_or_default().to_owned(),
                        code: first.code().unwrap_or_default().to_owned(),
                        message: first.message().unwrap_or_default().to_owned(),
                    },
                ));
            }
            deleted += batch.len() as u64;
        }
        let aborted = self.abort_uploads(&full, prefix).await?;
        if aborted > 0 {
            tracing::debug!(prefix, aborted, "unfinished uploads aborted");
        }
        Ok(deleted)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        let src = self.full_key(from)?;
        let dst = self.full_key(to)?;
        if src == dst {
            // S3 refuses to copy an object onto itself unchanged; the move is a no-op.
            return match self.head(from).await? {
                Some(_) => Ok(()),
                None => Err(ObjectError::NotFound(from.to_owned())),
            };
        }
        // One CopyObject handles up to 5 GiB; our files are at most a few hundred MiB, so no
        // multipart copy is needed.
        let source = format!(
            "{}/{}",
            self.bucket(),
            utf8_percent_encode(&src, COPY_SOURCE)
        );
        self.client
            .copy_object()
            .bucket(self.bucket())
            .key(dst)
            .copy_source(source)
            .send()
            .await
            .map_err(|e| match map_err(from, e) {
                ObjectError::NotFound(_) => ObjectError::NotFound(from.to_owned()),
                other => other,
            })?;
        self.delete(from).await
    }

    fn describe(&self) -> String {
        self.location.to_string()
    }

    fn signer(&self) -> Option<&dyn SignedUrls> {
        Some(self)
    }
}

#[async_trait]
impl SignedUrls for S3Store {
    async fn signed_get_url(&self, key: &str, expires_in: Duration) -> Result<String, ObjectError> {
        let full = self.full_key(key)?;
        let config =
            PresigningConfig::expires_in(expires_in).map_err(|e| ObjectError::backend(key, e))?;
        let req = self
            .client
            .get_object()
            .bucket(self.bucket())
            .key(full)
            .presigned(config)
            .await
            .map_err(|e| map_err(key, e))?;
        Ok(req.uri().to_owned())
    }
}

struct Upload {
    id: String,
    parts: Vec<CompletedPart>,
}

struct S3Writer {
    client: Client,
    bucket: String,
    full_key: String,
    /// The port key, for errors.
    key: String,
    content_encoding: Option<&'static str>,
    /// The part being filled; never more than `PART_SIZE`.
    buf: BytesMut,
    /// Started on the first full part; `Some` until completed or aborted, so that `Drop`
    /// knows what to clean up.
    upload: Option<Upload>,
    size: u64,
    /// A part upload failed: the object would have a hole, so only `abort` is allowed.
    failed: bool,
}

impl S3Writer {
    fn usable(&self) -> Result<(), ObjectError> {
        if self.failed {
            Err(ObjectError::backend(&self.key, S3StoreError::WriterFailed))
        } else {
            Ok(())
        }
    }

    /// Uploads the buffer as the next part, starting the multipart upload if needed.
    async fn upload_part(&mut self) -> Result<(), ObjectError> {
        let part = std::mem::take(&mut self.buf).freeze();
        if self.upload.is_none() {
            // CRC32 declared up front: S3 then wants each part's checksum on completion and
            // checks the parts; without it, parts sent with the SDK's default checksum are
            // refused as a checksum type mismatch.
            let created = self
                .client
                .create_multipart_upload()
                .bucket(&self.bucket)
                .key(&self.full_key)
                .set_content_encoding(self.content_encoding.map(str::to_owned))
                .checksum_algorithm(ChecksumAlgorithm::Crc32)
                .send()
                .await
                .map_err(|e| map_err(&self.key, e))?;
            let id = created
                .upload_id()
                .ok_or_else(|| ObjectError::backend(&self.key, S3StoreError::NoUploadId))?;
            self.upload = Some(Upload {
                id: id.to_owned(),
                parts: Vec::new(),
            });
        }
        let Some(upload) = self.upload.as_mut() else {
            return Err(ObjectError::backend(&self.key, S3StoreError::NoUploadId));
        };
        if upload.parts.len() >= MAX_PARTS {
            return Err(ObjectError::backend(&self.key, S3StoreError::TooManyParts));
        }
        // At most MAX_PARTS, so the conversion cannot fail.
        let number = i32::try_from(upload.parts.len() + 1).unwrap_or(i32::MAX);
        let out = self
            .client
            .upload_part()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(&upload.id)
            .part_number(number)
            .checksum_algorithm(ChecksumAlgorithm::Crc32)
            .body(SdkByteStream::from(part))
            .send()
            .await
            .map_err(|e| map_err(&self.key, e))?;
        upload.parts.push(
            CompletedPart::builder()
                .part_number(number)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .set_checksum_crc32(out.checksum_crc32().map(str::to_owned))
                .build(),
        );
        Ok(())
    }

    /// Aborts the upload (if any) here and now, logging a failure: used when the caller is
    /// already getting another error.
    async fn abort_quietly(&mut self) {
        if let Some(upload) = self.upload.take()
            && let Err(e) =
                abort_upload(&self.client, &self.bucket, &self.full_key, &upload.id).await
        {
            tracing::warn!(
                key = %self.full_key,
                upload_id = %upload.id,
                error = %DisplayErrorContext(&e),
                "could not abort multipart upload"
            );
        }
    }
}

/// Aborts a multipart upload; one already gone (aborted or completed) is fine.
async fn abort_upload(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
) -> Result<(), SdkError<aws_sdk_s3::operation::abort_multipart_upload::AbortMultipartUploadError>>
{
    match client
        .abort_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
    {
        Ok(_) => Ok(()),
        Err(e) if e.code() == Some("NoSuchUpload") || status(&e) == Some(404) => Ok(()),
        Err(e) => Err(e),
    }
}

#[async_trait]
impl ObjectWriter for S3Writer {
    async fn write(&mut self, mut data: Bytes) -> Result<(), ObjectError> {
        self.usable()?;
        while !data.is_empty() {
            if self.buf.capacity() == 0 {
                // One allocation of a whole part rather than doubling up to it (which would
                // overshoot to 12 MiB); the pages a small object never touches cost nothing.
                self.buf = BytesMut::with_capacity(PART_SIZE);
            }
            let take = (PART_SIZE - self.buf.len()).min(data.len());
            self.buf.extend_from_slice(&data.split_to(take));
            self.size += take as u64;
            if self.buf.len() == PART_SIZE
                && let Err(e) = self.upload_part().await
            {
                self.failed = true;
                return Err(e);
            }
        }
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, ObjectError> {
        self.usable()?;
        if self.upload.is_none() {
            let body = std::mem::take(&mut self.buf).freeze();
            self.client
                .put_object()
                .bucket(&self.bucket)
                .key(&self.full_key)
                .set_content_encoding(self.content_encoding.map(str::to_owned))
                .body(SdkByteStream::from(body))
                .send()
                .await
                .map_err(|e| map_err(&self.key, e))?;
            return Ok(self.size);
        }
        if !self.buf.is_empty()
            && let Err(e) = self.upload_part().await
        {
            self.abort_quietly().await;
            return Err(e);
        }
        let (id, parts) = match self.upload.as_mut() {
            Some(u) => (u.id.clone(), std::mem::take(&mut u.parts)),
            None => return Err(ObjectError::backend(&self.key, S3StoreError::NoUploadId)),
        };
        let completed = self
            .client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(&self.full_key)
            .upload_id(id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await;
        match completed {
            Ok(_) => {
                self.upload = None;
                Ok(self.size)
            }
            Err(e) => {
                let err = map_err(&self.key, e);
                self.abort_quietly().await;
                Err(err)
            }
        }
    }

    async fn abort(mut self: Box<Self>) -> Result<(), ObjectError> {
        self.buf = BytesMut::new();
        if let Some(upload) = self.upload.as_ref() {
            abort_upload(&self.client, &self.bucket, &self.full_key, &upload.id)
                .await
                .map_err(|e| map_err(&self.key, e))?;
        }
        self.upload = None;
        Ok(())
    }
}

impl Drop for S3Writer {
    fn drop(&mut self) {
        // A writer dropped unfinished (a cancelled or failed task) must not leave its parts
        // behind: S3 keeps, and bills, an incomplete upload until someone aborts it.
        let Some(upload) = self.upload.take() else {
            return;
        };
        let client = self.client.clone();
        let bucket = std::mem::take(&mut self.bucket);
        let key = std::mem::take(&mut self.full_key);
        match tokio::runtime::Handle::try_current() {
            Ok(runtime) => {
                runtime.spawn(async move {
                    if let Err(e) = abort_upload(&client, &bucket, &key, &upload.id).await {
                        tracing::warn!(
                            %key,
                            upload_id = %upload.id,
                            error = %DisplayErrorContext(&e),
                            "could not abort the multipart upload of a dropped writer"
                        );
                    }
                });
            }
            Err(_) => tracing::warn!(
                %key,
                upload_id = %upload.id,
                "writer dropped outside a tokio runtime: its multipart upload is left for the \
                 bucket's AbortIncompleteMultipartUpload lifecycle rule"
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_locations() {
        let l = S3Location::parse("s3://my-bucket").expect("bucket only");
        assert_eq!((l.bucket.as_str(), l.prefix.as_str()), ("my-bucket", ""));
        assert_eq!(l.to_string(), "s3://my-bucket");
        let l = S3Location::parse("s3://my-bucket/").expect("trailing slash");
        assert_eq!(l.prefix, "");
        let l = S3Location::parse("S3://b.example/some/prefix").expect("prefix");
        assert_eq!(
            (l.bucket.as_str(), l.prefix.as_str()),
            ("b.example", "some/prefix/")
        );
        assert_eq!(l.to_string(), "s3://b.example/some/prefix");
        assert_eq!(S3Location::parse(&l.to_string()), Ok(l));
        let l = S3Location::parse("s3://bkt/out/").expect("prefix with slash");
        assert_eq!(l.prefix, "out/");
    }

    #[test]
    fn refuses_bad_locations() {
        for (url, want) in [
            ("https://bucket/x", "NotS3"),
            ("s3:/bucket", "NotS3"),
            ("", "NotS3"),
            ("s3://", "InvalidBucket"),
            ("s3://ab", "InvalidBucket"),
            ("s3://Upper", "InvalidBucket"),
            ("s3://-bucket", "InvalidBucket"),
            ("s3://bucket-", "InvalidBucket"),
            ("s3://a..b", "InvalidBucket"),
            ("s3://under_score", "InvalidBucket"),
            ("s3://bucket//x", "InvalidPrefix"),
            ("s3://bucket/a/../b", "InvalidPrefix"),
            ("s3://bucket/./a", "InvalidPrefix"),
        ] {
            let got = match S3Location::parse(url) {
                Err(S3UrlError::NotS3(_)) => "NotS3",
                Err(S3UrlError::InvalidBucket { .. }) => "InvalidBucket",
                Err(S3UrlError::InvalidPrefix { .. }) => "InvalidPrefix",
                Ok(_) => "Ok",
            };
            assert_eq!(got, want, "{url}");
        }
    }

    #[test]
    fn copy_source_keeps_slashes_and_encodes_the_rest() {
        let enc = utf8_percent_encode("a b/c+d/é?.ndjson", COPY_SOURCE).to_string();
        assert_eq!(enc, "a%20b/c%2Bd/%C3%A9%3F.ndjson");
    }
}
