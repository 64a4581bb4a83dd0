//! `ResourceSource`: where exported resources come from.
//!
//! A source is told the export's criteria ([`ReadCriteria`]) and plans the reading into
//! pieces (it knows its own layout and how to split it, and what it can push down); it then
//! streams the records of one piece in batches. It says which criteria it applied
//! ([`Applied`]), but the worker checks every criterion again on what it receives: a result
//! never depends on an upstream honouring a parameter, and one that silently ignores a
//! search parameter does not widen an export.

use std::ops::Range;

use async_trait::async_trait;
use bytes::Bytes;
use serde_json::Value;

use chrono::{DateTime, Utc};

use super::BoxError;
use crate::job::{ReadSpec, SourcePiece};
use crate::model::{LogicalId, ResourceType};
use crate::request::{ElementSelector, TypeFilter};

#[derive(Debug, thiserror::Error)]
pub enum SourceError {
    /// The source changed under a chunk (an object vanished); a retry will not help.
    #[error("source object `{0}` not found")]
    NotFound(String),
    /// An object's content is damaged where it was read (a truncated or corrupt compressed
    /// file): what comes after cannot be read, by this attempt or any other. Readers report
    /// it as a [`Fault`] of the batch and go on with the next object; it reaches callers only
    /// from lookups that cannot report it otherwise.
    #[error("source object `{object}` is damaged: {detail}")]
    Damaged { object: String, detail: String },
    /// The source refuses to be read (permissions); a retry will not help.
    #[error("source object `{object}` cannot be read: {reason}")]
    Refused {
        object: String,
        reason: crate::ports::Refusal,
    },
    /// The store the source reads refuses the service, or its container is missing.
    #[error("{0}")]
    Access(crate::ports::AccessFault),
    /// An upstream server refused a request, or kept failing it after the source's own
    /// retries: `url` is the request (without credentials), `outcome` the diagnostics of the
    /// `OperationOutcome` it answered with, if any. Never carries resource content.
    #[error("{}", upstream_message(.method, .url, *.status, .outcome.as_deref()))]
    Upstream {
        method: &'static str,
        url: String,
        status: u16,
        outcome: Option<String>,
    },
    /// An upstream server could not be reached (connection refused or dropped, timeout) after
    /// the source's own retries.
    #[error("upstream {method} {url} failed: {reason}")]
    Unreachable {
        method: &'static str,
        url: String,
        reason: String,
    },
    /// What an upstream answered is not what the FHIR API promises (not a Bundle, a `next`
    /// link to another server).
    #[error("upstream {url}: {problem}")]
    Protocol { url: String, problem: String },
    /// The export asks for something the source cannot give (a type the upstream does not
    /// support, under strict handling).
    #[error("{0}")]
    Unsupported(String),
    #[error("source failed")]
    Backend(#[source] BoxError),
}

fn upstream_message(method: &str, url: &str, status: u16, outcome: Option<&str>) -> String {
    match status {
        429 => format!("upstream {method} {url} kept answering 429 Too Many Requests"),
        _ => match outcome {
            Some(text) => format!("upstream {method} {url} answered {status}: {text}"),
            None => format!("upstream {method} {url} answered {status}"),
        },
    }
}

/// What an export selects, as a source is told it when it plans.
#[derive(Debug, Clone, Copy)]
pub struct ReadCriteria<'a> {
    pub types: &'a [ResourceType],
    /// About how much source data one piece should read.
    pub chunk_bytes: u64,
    /// `_since`: changed strictly after.
    pub since: Option<DateTime<Utc>>,
    /// `_until`: changed strictly before.
    pub until: Option<DateTime<Utc>>,
    /// The export's `transactionTime`: nothing changed after it is exported (it waits for the
    /// next `_since`).
    pub transaction_time: DateTime<Utc>,
    /// Every `_typeFilter`; several for one type are ORed.
    pub type_filters: &'a [TypeFilter],
    /// The patients whose compartments are exported (Group, `patient`, or a source's own
    /// list at Patient level); `None`: no compartment (system level) or every patient.
    pub patients: Option<&'a [String]>,
    /// `_elements`.
    pub elements: &'a [ElementSelector],
}

impl<'a> ReadCriteria<'a> {
    /// Every resource of `types` changed up to `transaction_time`: no other criterion.
    pub fn everything(
        types: &'a [ResourceType],
        chunk_bytes: u64,
        transaction_time: DateTime<Utc>,
    ) -> Self {
        ReadCriteria {
            types,
            chunk_bytes,
            since: None,
            until: None,
            transaction_time,
            type_filters: &[],
            patients: None,
            elements: &[],
        }
    }
}

/// Which criteria a source applied itself. The worker checks them all again (each check
/// is cheap beside the read); this says what the source pushed down, for logs and plans.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Applied {
    pub time_bounds: bool,
    pub type_filters: bool,
    pub patients: bool,
    pub elements: bool,
}

/// A source's plan: its pieces, and what it applied in reading them.
#[derive(Debug, Clone, Default)]
pub struct SourcePlan {
    pub pieces: Vec<SourcePiece>,
    pub applied: Applied,
    /// What the source noticed and the export should say (a type the upstream does not
    /// support, under lenient handling).
    pub warnings: Vec<String>,
}

/// Where a record came from, for error messages; what the numbers mean is the source's
/// business (its reader's `describe` turns them into words).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// Index into the read spec's parts.
    pub part: usize,
    /// The record's position in its part: a byte offset in a file, a page of a search.
    pub offset: u64,
    /// The record's number (from 1) in what `offset` names: a line from the start of the
    /// file's range, an entry of the page.
    pub line: u64,
}

/// Where reading an object stopped short, and why: a damaged object whose readable part was
/// read. The worker reports it in the export's error files and goes on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    /// Where the damage starts: the line that could not be read.
    pub origin: Origin,
    pub message: String,
}

/// A batch of records, each a slice of the buffers they were read into (no copy per record).
/// Lines exclude their terminator.
#[derive(Debug, Default)]
pub struct RecordBatch {
    /// The buffers the records are slices of, each held once.
    buffers: Vec<Bytes>,
    records: Vec<Record>,
    /// Bytes held by the records.
    pub bytes: usize,
    /// Damage met while reading, after the records read before it.
    faults: Vec<Fault>,
}

#[derive(Debug, Clone, Copy)]
struct Record {
    buffer: usize,
    start: usize,
    end: usize,
    origin: Origin,
}

/// Consecutive records that are, with the `\n` ending each, one contiguous slice of one
/// buffer: kept whole, they can be written out without being copied line by line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Run {
    buffer: usize,
    start: usize,
    /// Past the last record's `\n`.
    end: usize,
    last: usize,
    pub lines: u64,
}

impl RecordBatch {
    pub fn clear(&mut self) {
        self.buffers.clear();
        self.records.clear();
        self.bytes = 0;
        self.faults.clear();
    }

    /// Records that reading stopped short at `origin`.
    pub fn fault(&mut self, origin: Origin, message: String) {
        self.faults.push(Fault { origin, message });
    }

    /// The faults met while this batch was read.
    pub fn take_faults(&mut self) -> Vec<Fault> {
        std::mem::take(&mut self.faults)
    }

    pub fn has_faults(&self) -> bool {
        !self.faults.is_empty()
    }

    /// A record that is a buffer of its own.
    pub fn push(&mut self, line: Bytes, origin: Origin) {
        let end = line.len();
        self.buffers.push(line);
        self.push_record(self.buffers.len() - 1, 0..end, origin);
    }

    /// A record that is `buffer[range]`; the buffer is held once however many records it
    /// gives (no reference count touched per record).
    pub fn push_slice(&mut self, buffer: &Bytes, range: Range<usize>, origin: Origin) {
        let same = self
            .buffers
            .last()
            .is_some_and(|b| b.as_ptr() == buffer.as_ptr() && b.len() == buffer.len());
        if !same {
            self.buffers.push(buffer.clone());
        }
        self.push_record(self.buffers.len() - 1, range, origin);
    }

    fn push_record(&mut self, buffer: usize, range: Range<usize>, origin: Origin) {
        self.bytes += range.len();
        self.records.push(Record {
            buffer,
            start: range.start,
            end: range.end,
            origin,
        });
    }

    pub fn len(&self) -> usize {
        self.records.len()
    }

    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }

    /// Record `i` (which must exist) and where it came from.
    pub fn get(&self, i: usize) -> (&[u8], Origin) {
        let r = &self.records[i];
        (&self.buffers[r.buffer][r.start..r.end], r.origin)
    }

    pub fn iter(&self) -> impl Iterator<Item = (&[u8], Origin)> {
        (0..self.records.len()).map(|i| self.get(i))
    }

    /// Record `i` as a run of one, when its buffer ends it with exactly `\n`.
    pub fn run_of(&self, i: usize) -> Option<Run> {
        let r = self.records.get(i)?;
        let ends_line = self.buffers[r.buffer].get(r.end) == Some(&b'\n');
        (ends_line && r.end > r.start).then_some(Run {
            buffer: r.buffer,
            start: r.start,
            end: r.end + 1,
            last: i,
            lines: 1,
        })
    }

    /// Adds record `i` to `run` when it is the next record and directly follows the run in
    /// its buffer (the two are then one slice).
    pub fn extend_run(&self, run: &mut Run, i: usize) -> bool {
        match self.run_of(i) {
            Some(next)
                if i == run.last + 1 && next.buffer == run.buffer && next.start == run.end =>
            {
                run.end = next.end;
                run.last = i;
                run.lines += 1;
                true
            }
            _ => false,
        }
    }

    /// The run's bytes, `\n`s included: a slice of the buffer, not a copy.
    pub fn run_bytes(&self, run: &Run) -> Bytes {
        self.buffers[run.buffer].slice(run.start..run.end)
    }
}

#[async_trait]
pub trait RecordReader: Send {
    /// Replaces `batch` with the next records (and faults); `false` when the chunk is
    /// exhausted.
    async fn next_batch(&mut self, batch: &mut RecordBatch) -> Result<bool, SourceError>;

    /// Names a record's place for a person: object and line number.
    async fn describe(&mut self, origin: Origin) -> String;
}

#[async_trait]
pub trait ResourceSource: Send + Sync {
    /// Splits the reading of `criteria.types` into pieces of about `chunk_bytes` of source
    /// data each, one type per piece, pushing down what the source can.
    async fn plan(&self, criteria: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError>;

    /// The patients a Patient-level export covers, when the source reads by patient and so
    /// must be told them; `None` (the default) when it reads everything and the worker
    /// selects compartments.
    async fn patients(
        &self,
        _transaction_time: DateTime<Utc>,
    ) -> Result<Option<Vec<String>>, SourceError> {
        Ok(None)
    }

    /// What of `criteria.types` was deleted after `criteria.since` (and up to the
    /// transaction time): pieces of type `Bundle` whose records are transaction Bundles of
    /// `DELETE` entries, each with `meta.lastUpdated` the time of the deletion, and warnings
    /// for the types the source cannot say it of. The default knows of no deletion (a folder
    /// of files keeps no record of what left it).
    async fn plan_deletions(
        &self,
        _criteria: &ReadCriteria<'_>,
    ) -> Result<SourcePlan, SourceError> {
        Ok(SourcePlan::default())
    }

    /// The types this source holds resources of.
    async fn types(&self) -> Result<Vec<ResourceType>, SourceError>;

    /// Told the types `_type` names that [`types`](Self::types) does not list: what the
    /// export should say of them. The default says nothing (a folder without a type's files
    /// has none of it); a server that does not serve a type fails a strict export
    /// (`Unsupported`) and warns a lenient one.
    async fn missing_types(
        &self,
        _missing: &[ResourceType],
        _strict: bool,
    ) -> Result<Vec<String>, SourceError> {
        Ok(Vec::new())
    }

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

#[cfg(test)]
mod tests {
    use super::*;

    fn origin(line: u64) -> Origin {
        Origin {
            part: 0,
            offset: 0,
            line,
        }
    }

    /// Pushes every line of `buf` (terminators excluded, as a source does).
    fn batch_of(buf: &Bytes) -> RecordBatch {
        let mut batch = RecordBatch::default();
        let mut start = 0;
        for (n, piece) in buf.split_inclusive(|b| *b == b'\n').enumerate() {
            let end = start + piece.len();
            let mut text_end = end;
            while text_end > start && matches!(buf[text_end - 1], b'\n' | b'\r') {
                text_end -= 1;
            }
            batch.push_slice(buf, start..text_end, origin(n as u64 + 1));
            start = end;
        }
        batch
    }

    #[test]
    fn records_of_one_buffer_share_it() {
        let buf = Bytes::from_static(b"a\nbb\nccc\n");
        let batch = batch_of(&buf);
        assert_eq!(batch.len(), 3);
        assert_eq!(batch.buffers.len(), 1);
        assert_eq!(batch.bytes, 6);
        let lines: Vec<&[u8]> = batch.iter().map(|(l, _)| l).collect();
        assert_eq!(lines, [&b"a"[..], b"bb", b"ccc"]);
        assert_eq!(batch.get(2).1.line, 3);
    }

    #[test]
    fn consecutive_newline_ended_lines_form_one_run() {
        let buf = Bytes::from_static(b"a\nbb\nccc\n");
        let batch = batch_of(&buf);
        let mut run = batch.run_of(0).expect("run");
        assert!(batch.extend_run(&mut run, 1));
        assert!(batch.extend_run(&mut run, 2));
        assert_eq!(run.lines, 3);
        let bytes = batch.run_bytes(&run);
        assert_eq!(&bytes[..], b"a\nbb\nccc\n");
        // A slice of the buffer, not a copy.
        assert_eq!(bytes.as_ptr(), buf.as_ptr());
    }

    #[test]
    fn runs_stop_at_gaps_crlf_other_buffers_and_unterminated_lines() {
        let buf = Bytes::from_static(b"a\r\nb\nc\n\nd\ne");
        let batch = batch_of(&buf);
        let lines: Vec<&[u8]> = batch.iter().map(|(l, _)| l).collect();
        assert_eq!(lines, [&b"a"[..], b"b", b"c", b"", b"d", b"e"]);
        // `a` ends in `\r\n`: written as it is, it would keep its `\r`.
        assert_eq!(batch.run_of(0), None);
        let mut run = batch.run_of(1).expect("b");
        assert!(batch.extend_run(&mut run, 2));
        // Record 3 is the empty line: no run of its own...
        assert_eq!(batch.run_of(3), None);
        // ...and `d` does not follow `c` directly.
        assert!(!batch.extend_run(&mut run, 4));
        // Only the next record can extend a run.
        let mut d = batch.run_of(4).expect("d");
        assert!(!batch.extend_run(&mut run, 4));
        // `e` has no `\n` after it.
        assert!(!batch.extend_run(&mut d, 5));
        assert_eq!(&batch.run_bytes(&run)[..], b"b\nc\n");

        let mut two = RecordBatch::default();
        let first = Bytes::from_static(b"x\n");
        let second = Bytes::from_static(b"y\n");
        two.push_slice(&first, 0..1, origin(1));
        two.push_slice(&second, 0..1, origin(2));
        assert_eq!(two.buffers.len(), 2);
        let mut run = two.run_of(0).expect("x");
        assert!(!two.extend_run(&mut run, 1), "another buffer");
    }
}
