//! `ObjectStore`: where export files are written and where NDJSON sources are read from.
//!
//! Keys are relative, `/`-separated paths (`container/job/Patient-1.ndjson`). Writes are
//! streaming and atomic: a reader sees a whole object or none (temp file + rename locally,
//! multipart upload on S3, block list commit on Azure).

use std::pin::Pin;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use futures::Stream;

use super::BoxError;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectMeta {
    pub key: String,
    pub size: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum ObjectError {
    /// The object does not exist (S3 `NoSuchKey`, HTTP 404, `ENOENT`).
    #[error("object `{0}` not found")]
    NotFound(String),
    /// The key is not a safe relative path.
    #[error("invalid object key `{0}`")]
    InvalidKey(String),
    /// The store refuses the operation and will go on refusing it, whoever retries: access
    /// denied (`EACCES`, S3 `AccessDenied`), a read-only file system, no space left.
    #[error("object store refused `{key}`: {reason}")]
    Refused {
        key: String,
        reason: Refusal,
        #[source]
        source: BoxError,
    },
    /// The account behind the store refuses the service's credential, or the container the
    /// store names does not exist: a deployment fault that no retry mends, said in words
    /// that name the account, the container and what is missing (never a response body).
    #[error("{0}")]
    Access(AccessFault),
    #[error("object store failed on `{key}`")]
    Backend {
        key: String,
        #[source]
        source: BoxError,
    },
}

/// Why a store refuses an operation for good.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    PermissionDenied,
    ReadOnly,
    StorageFull,
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Refusal::PermissionDenied => "permission denied",
            Refusal::ReadOnly => "the store is read-only",
            Refusal::StorageFull => "no space left on the store",
        })
    }
}

/// Which account and container refuse what, and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessFault {
    /// The account or bucket (`storage account `x``).
    pub account: String,
    pub container: String,
    pub problem: AccessProblem,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AccessProblem {
    ContainerNotFound,
    /// The credential is valid but may not do `operation` (`write blobs`); `needs` says what
    /// grants it.
    Forbidden {
        operation: &'static str,
        needs: &'static str,
    },
    /// The account does not accept the request: its credential (a wrong key, an expired SAS or
    /// token), or its network address (a firewall rule).
    CredentialRejected,
}

impl std::fmt::Display for AccessFault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}, container `{}`: ", self.account, self.container)?;
        match &self.problem {
            AccessProblem::ContainerNotFound => f.write_str("the container does not exist"),
            AccessProblem::Forbidden { operation, needs } => {
                write!(f, "the credential may not {operation}; it needs {needs}")
            }
            AccessProblem::CredentialRejected => f.write_str(
                "the account rejects the credential (a wrong account key, an expired SAS or token) or the address the request comes from (a firewall rule)",
            ),
        }
    }
}

impl ObjectError {
    /// Whether a retry could succeed (a backend hiccup), as opposed to a refusal, a missing
    /// object or a bad key.
    pub fn is_transient(&self) -> bool {
        matches!(self, ObjectError::Backend { .. })
    }

    pub fn backend(key: &str, source: impl Into<BoxError>) -> Self {
        ObjectError::Backend {
            key: key.to_owned(),
            source: source.into(),
        }
    }
}

pub type ByteStream = Pin<Box<dyn Stream<Item = Result<Bytes, ObjectError>> + Send>>;

/// How an object's bytes are encoded (HTTP `Content-Encoding`).
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    #[default]
    Identity,
    Gzip,
}

impl Encoding {
    pub fn is_identity(&self) -> bool {
        *self == Encoding::Identity
    }

    /// The `Content-Encoding` value, `None` for identity.
    pub fn content_encoding(&self) -> Option<&'static str> {
        match self {
            Encoding::Identity => None,
            Encoding::Gzip => Some("gzip"),
        }
    }
}

/// A streaming write. Nothing is visible under the key until `finish` succeeds; `abort`
/// (or dropping the writer) leaves nothing behind.
#[async_trait]
pub trait ObjectWriter: Send {
    /// Appends `data`. A writer may still be writing it when this returns; an error it meets
    /// then is reported by a later `write` or by `finish`, so only `finish` says the object
    /// is whole.
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError>;
    /// Publishes the object; returns its size.
    async fn finish(self: Box<Self>) -> Result<u64, ObjectError>;
    async fn abort(self: Box<Self>) -> Result<(), ObjectError>;
}

#[async_trait]
pub trait ObjectStore: Send + Sync {
    /// Writes a whole (small) object.
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError>;

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError>;

    /// A writer of bytes already encoded with `encoding` (the caller encodes them), for a
    /// store that labels objects so that a client fetching one directly (a signed URL) is
    /// told how to decode it: S3 stores `Content-Encoding`. Stores without such labels keep
    /// the bytes as they are (the job records the encoding of every file it publishes).
    async fn encoded_writer(
        &self,
        key: &str,
        encoding: Encoding,
    ) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        let _ = encoding;
        self.writer(key).await
    }

    /// Streams `[start, end)` of an object (`end: None` = to its end). `NotFound` if missing.
    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError>;

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError>;

    /// Every object under a prefix (recursively), sorted by key.
    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError>;

    /// Deletes an object; a missing object is not an error.
    async fn delete(&self, key: &str) -> Result<(), ObjectError>;

    /// Deletes every object under a prefix; returns how many.
    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError>;

    /// Moves an object. `NotFound` if `from` does not exist. Overwrites `to`.
    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError>;

    /// Where this store points, for logs (`file:///data/out`, `s3://bucket/prefix`).
    fn describe(&self) -> String;

    /// Removes what writers of processes that died left behind (temp files on a local
    /// folder; other stores have nothing of the kind); returns how many objects went. Called
    /// when a server starts and by every sweep.
    async fn clean_abandoned(&self) -> Result<u64, ObjectError> {
        Ok(0)
    }

    /// Makes sure an export can be written under `prefix` (its folder, no trailing `/`)
    /// before any work is spent on it: creates the container the prefix starts with when
    /// `new_container` and the store is one whose top-level folders are containers (an Azure
    /// account), then writes and deletes a small object in the export's staging folder. A
    /// store that will not take the export answers `Access` or `Refused` here, at once.
    async fn prepare_export(&self, prefix: &str, new_container: bool) -> Result<(), ObjectError> {
        let _ = new_container;
        write_probe(self, prefix).await
    }

    /// The signed-URL ability, where the backend has one.
    fn signer(&self) -> Option<&dyn SignedUrls> {
        None
    }
}

/// Writes and deletes a small object in an export's staging folder: what
/// [`ObjectStore::prepare_export`] checks once the export's container exists.
pub async fn write_probe<S: ObjectStore + ?Sized>(
    store: &S,
    prefix: &str,
) -> Result<(), ObjectError> {
    let probe = crate::layout::probe_key(prefix);
    store.put(&probe, Bytes::from_static(b"probe")).await?;
    store.delete(&probe).await
}

/// Optional ability: short-lived URLs a client can fetch directly from the store.
#[async_trait]
pub trait SignedUrls: Send + Sync {
    async fn signed_get_url(&self, key: &str, expires_in: Duration) -> Result<String, ObjectError>;
}

/// Checks that a key is a safe relative path: no empty, `.` or `..` segments, no backslashes,
/// no leading `/`. (An empty key, the root, is allowed as a prefix.)
pub fn validate_key(key: &str) -> Result<(), ObjectError> {
    if key.is_empty() {
        return Ok(());
    }
    let bad = key.starts_with('/')
        || key.contains('\\')
        || key.contains('\0')
        || key
            .trim_end_matches('/')
            .split('/')
            .any(|s| s.is_empty() || s == "." || s == "..");
    if bad {
        Err(ObjectError::InvalidKey(key.to_owned()))
    } else {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        for ok in ["", "a", "a/b.ndjson", "x/y/"] {
            assert!(validate_key(ok).is_ok(), "{ok}");
        }
        for bad in ["/a", "a/../b", "..", "a//b", "a\\b", "./a"] {
            assert!(validate_key(bad).is_err(), "{bad}");
        }
    }
}
