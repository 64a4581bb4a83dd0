//! `ResourceSource`: where exported resources come from.
//!
//! A source plans an export into chunks (it knows its own layout and how to split it) and
//! streams the records of one chunk in batches. Filtering that the source cannot push down
//! (`_since` on an NDJSON file, compartments, `_typeFilter`) is the worker's job.

use async_trait::async_trait;
use serde_json::Value;

use super::BoxError;
use crate::job::{ReadSpec, SourcePiece};
use crate::model::{LogicalId, ResourceType};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source changed under a chunk (an object vanished); a retry will not help.
    #[error("source object `{0}` not found")]
    NotFound(String),
    #[error("source failed")]
    Backend(#[source] BoxError),
}

/// Where a record came from, for error messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index into the chunk's ranges.
    pub range: usize,
    /// Byte offset of the line in its (uncompressed) object.
    pub offset: u64,
    /// Line number (from 1) counted from the start of the range.
    pub line_in_range: u64,
}

/// A batch of records, each a slice of the buffers they were read into (no copy per record).
/// Lines exclude their terminator.
#[derive(Debug, Default)]
pub struct RecordBatch {
    pub records: Vec<(bytes::Bytes, Origin)>,
    /// Bytes held by `records`.
    pub bytes: usize,
}

impl RecordBatch {
    pub fn clear(&mut self) {
        self.records.clear();
        self.bytes = 0;
    }

    pub fn push(&mut self, line: bytes::Bytes, origin: Origin) {
        self.bytes += line.len();
        self.records.push((line, origin));
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Origin)> {
        self.records.iter().map(|(r, o)| (r.as_ref(), *o))
    }
}

#[async_trait]
pub trait RecordReader: Send {
    /// Replaces `batch` with the next records; `false` when the chunk is exhausted.
    async fn next_batch(&mut self, batch: &mut RecordBatch) -> Result<bool, SourceError>;

    /// Names a record's place for a person: object and line number.
    async fn describe(&mut self, origin: Origin) -> String;
}

#[async_trait]
pub trait ResourceSource: Send + Sync {
    /// Splits the reading of `types` into pieces of about `chunk_bytes` of source data each,
    /// one type per piece. Deterministic: the same source and arguments give the same pieces.
    async fn plan(
        &self,
        types: &[ResourceType],
        chunk_bytes: u64,
    ) -> Result<Vec<SourcePiece>, SourceError>;

    /// The types this source holds resources of.
    async fn types(&self) -> Result<Vec<ResourceType>, SourceError>;

    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError>;

    /// Reads one resource by id (used for Group definitions).
    async fn read(&self, t: ResourceType, id: &LogicalId) -> Result<Option<Value>, SourceError>;

    /// Which of `ids` exist as resources of type `t` (one pass over the type).
    async fn existing(
        &self,
        t: ResourceType,
        ids: &[LogicalId],
    ) -> Result<std::collections::HashSet<LogicalId>, SourceError>;

    /// Where this source points, for logs.
    fn describe(&self) -> String;
}
