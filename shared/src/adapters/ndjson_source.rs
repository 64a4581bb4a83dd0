//! `ResourceSource` over NDJSON objects in any `ObjectStore` (a local folder, an S3 prefix).
//!
//! Files are `<Type>[anything].ndjson` or `.ndjson.gz` anywhere under the prefix; the type is
//! the longest leading run of letters of the file name that is an R4 type name.
//!
//! Planning splits uncompressed files into byte ranges, each line belonging to the range its
//! first byte falls in, so every line is read exactly once however many chunks a file has; a
//! gzip file cannot be entered in the middle and is one range. Small pieces of one type are
//! packed together up to the chunk size. (An NDJSON file has no index by `meta.lastUpdated`
//! or by patient: splitting by time window or patient batch would read every file once per
//! chunk, so byte ranges are the split that reads each byte once.)

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ops::Range;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering as AtomicOrdering};

use async_compression::tokio::bufread::GzipDecoder;
use async_trait::async_trait;
use bytes::{Bytes, BytesMut};
use futures::{StreamExt, TryStreamExt};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, BufReader};
use tokio_util::io::StreamReader;

use serde::{Deserialize, Serialize};

use crate::job::{ReadSpec, SourcePiece};
use crate::model::{LogicalId, ResourceType};
use crate::ndjson::read_head;
use crate::ports::{
    ByteStream, ObjectError, ObjectStore, Origin, ReadCriteria, RecordBatch, RecordReader,
    ResourceSource, SourceError, SourcePlan,
};

/// This source's read spec part: a byte range of an NDJSON object; a line belongs to the
/// range its first byte is in.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRange {
    /// Object key, relative to the source root.
    pub object: String,
    pub start: u64,
    /// Exclusive end; `None` reads to the end of the object.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end: Option<u64>,
    #[serde(default)]
    pub gzip: bool,
}

fn spec_err(e: serde_json::Error) -> SourceError {
    SourceError::Backend(Box::new(e))
}

/// A batch is handed on once it holds this many bytes or records.
const BATCH_BYTES: usize = 512 * 1024;
const BATCH_RECORDS: usize = 2048;
/// Lines longer than this are reported as errors instead of being buffered.
pub const MAX_LINE_BYTES: usize = 64 * 1024 * 1024;
/// Planning's guess of how much a gzip file expands, to size its chunk.
const GZIP_RATIO: u64 = 8;

pub struct NdjsonSource {
    store: Arc<dyn ObjectStore>,
    /// Key prefix of the source inside the store, `""` or ending in `/`.
    prefix: String,
}

#[derive(Debug, Clone)]
struct SourceFile {
    key: String,
    resource_type: ResourceType,
    size: u64,
    gzip: bool,
}

fn source_err(e: ObjectError) -> SourceError {
    match e {
        ObjectError::NotFound(k) => SourceError::NotFound(k),
        ObjectError::Refused { key, reason, .. } => SourceError::Refused {
            object: key,
            reason,
        },
        ObjectError::Access(fault) => SourceError::Access(fault),
        other => SourceError::Backend(Box::new(other)),
    }
}

/// The resource type a file name stands for, and whether it is gzipped.
pub fn classify(file_name: &str) -> Option<(ResourceType, bool)> {
    let (stem, gzip) = match file_name.strip_suffix(".gz") {
        Some(s) => (s, true),
        None => (file_name, false),
    };
    let stem = stem.strip_suffix(".ndjson")?;
    let letters = stem.bytes().take_while(u8::is_ascii_alphabetic).count();
    (1..=letters)
        .rev()
        .find_map(|n| ResourceType::parse(&stem[..n]).ok())
        .map(|t| (t, gzip))
}

impl NdjsonSource {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        let prefix = if prefix.is_empty() || prefix.ends_with('/') {
            prefix.to_owned()
        } else {
            format!("{prefix}/")
        };
        NdjsonSource { store, prefix }
    }

    async fn files(&self) -> Result<Vec<SourceFile>, SourceError> {
        let objects = self.store.list(&self.prefix).await.map_err(source_err)?;
        let mut files = Vec::new();
        for o in objects {
            let name = o.key.rsplit('/').next().unwrap_or(&o.key);
            match classify(name) {
                Some((resource_type, gzip)) if o.size > 0 => files.push(SourceFile {
                    key: o.key.clone(),
                    resource_type,
                    size: o.size,
                    gzip,
                }),
                Some(_) => {}
                None => tracing::debug!(key = %o.key, "not an NDJSON resource file; skipped"),
            }
        }
        Ok(files)
    }

    fn relative<'a>(&self, key: &'a str) -> &'a str {
        key.strip_prefix(&self.prefix).unwrap_or(key)
    }

    /// Calls `f(line, id)` for every valid resource line of type `t` until it returns false.
    async fn scan(
        &self,
        t: ResourceType,
        mut f: impl FnMut(&[u8], &str) -> bool + Send,
    ) -> Result<(), SourceError> {
        for file in self
            .files()
            .await?
            .into_iter()
            .filter(|f| f.resource_type == t)
        {
            let mut lines = Lines::open(&self.store, &file.key, 0, file.gzip).await?;
            loop {
                let line = match lines.next().await {
                    Ok(Some(line)) => line,
                    Ok(None) => break,
                    // A lookup reads what it can; the export reports the damage.
                    Err(SourceError::Damaged { object, detail }) => {
                        tracing::warn!(%object, %detail, "damaged source file read up to the damage");
                        break;
                    }
                    Err(e) => return Err(e),
                };
                let Some(line) = lines.text(&line) else {
                    continue;
                };
                if let Ok(head) = read_head(line)
                    && head.resource_type == t.as_str()
                    && !f(line, &head.id)
                {
                    return Ok(());
                }
            }
        }
        Ok(())
    }
}

#[async_trait]
impl ResourceSource for NdjsonSource {
    /// Applies none of the criteria: an NDJSON file has no index by `meta.lastUpdated`, by
    /// patient or by anything a `_typeFilter` names, so every piece is read whole and the
    /// worker selects.
    async fn plan(&self, criteria: &ReadCriteria<'_>) -> Result<SourcePlan, SourceError> {
        let types = criteria.types;
        let chunk_bytes = criteria.chunk_bytes;
        if types.is_empty() {
            // Nothing to list the store for (a plan asks for index types it may not need).
            return Ok(SourcePlan::default());
        }
        let chunk_bytes = chunk_bytes.max(1);
        let mut by_type: BTreeMap<ResourceType, Vec<SourceFile>> = BTreeMap::new();
        for f in self.files().await? {
            if types.contains(&f.resource_type) {
                by_type.entry(f.resource_type).or_default().push(f);
            }
        }
        let mut chunks = Vec::new();
        for (resource_type, files) in by_type {
            let mut ranges: Vec<FileRange> = Vec::new();
            let mut weight = 0u64;
            let mut flush =
                |ranges: &mut Vec<FileRange>, weight: &mut u64| -> Result<(), SourceError> {
                    if !ranges.is_empty() {
                        chunks.push(SourcePiece {
                            resource_type,
                            read: ReadSpec::of(&std::mem::take(ranges)).map_err(spec_err)?,
                            bytes: *weight,
                            owners: None,
                        });
                    }
                    *weight = 0;
                    Ok(())
                };
            for f in files {
                let object = self.relative(&f.key).to_owned();
                let pieces: Vec<(FileRange, u64)> = if f.gzip {
                    vec![(
                        FileRange {
                            object,
                            start: 0,
                            end: None,
                            gzip: true,
                        },
                        f.size.saturating_mul(GZIP_RATIO),
                    )]
                } else {
                    // Equal pieces rather than full ones and a remainder: the pieces of a big
                    // file run side by side and the export waits for the longest.
                    let n = f.size.div_ceil(chunk_bytes);
                    let piece = f.size.div_ceil(n.max(1));
                    (0..n)
                        .map(|k| {
                            let start = k * piece;
                            let end = (start + piece).min(f.size);
                            let range = FileRange {
                                object: object.clone(),
                                start,
                                end: (end < f.size).then_some(end),
                                gzip: false,
                            };
                            (range, end - start)
                        })
                        .collect()
                };
                for (range, w) in pieces {
                    if !ranges.is_empty() && weight + w > chunk_bytes {
                        flush(&mut ranges, &mut weight)?;
                    }
                    ranges.push(range);
                    weight += w;
                }
            }
            flush(&mut ranges, &mut weight)?;
        }
        Ok(SourcePlan {
            pieces: chunks,
            ..SourcePlan::default()
        })
    }

    async fn types(&self) -> Result<Vec<ResourceType>, SourceError> {
        let mut types: Vec<ResourceType> = self
            .files()
            .await?
            .into_iter()
            .map(|f| f.resource_type)
            .collect();
        types.sort();
        types.dedup();
        Ok(types)
    }

    async fn open(&self, read: &ReadSpec) -> Result<Box<dyn RecordReader>, SourceError> {
        let ranges: Vec<FileRange> = read.parts_as().map_err(spec_err)?;
        Ok(Box::new(NdjsonReader {
            store: self.store.clone(),
            prefix: self.prefix.clone(),
            ranges,
            next_range: 0,
            open: None,
            line_bases: HashMap::new(),
        }))
    }

    async fn read(&self, t: ResourceType, id: &LogicalId) -> Result<Option<Value>, SourceError> {
        let mut found = None;
        self.scan(t, |line, head_id| {
            if head_id == id.as_str() {
                found = Some(
                    serde_json::from_slice(line).map_err(|e| SourceError::Backend(Box::new(e))),
                );
                return false;
            }
            true
        })
        .await?;
        found.transpose()
    }

    async fn existing(
        &self,
        t: ResourceType,
        ids: &[LogicalId],
    ) -> Result<HashSet<LogicalId>, SourceError> {
        let wanted: HashSet<&str> = ids.iter().map(LogicalId::as_str).collect();
        let mut found = HashSet::new();
        self.scan(t, |_, head_id| {
            if wanted.contains(head_id)
                && let Ok(id) = LogicalId::parse(head_id)
            {
                found.insert(id);
            }
            found.len() < wanted.len()
        })
        .await?;
        Ok(found)
    }

    fn describe(&self) -> String {
        format!("ndjson:{}/{}", self.store.describe(), self.prefix)
    }
}

/// Where decoded bytes come from: the object's own chunks, or a gzip decoder over them.
enum Chunks {
    Plain(ByteStream),
    Gzip(GzipChunks),
}

struct GzipChunks {
    decoder: Box<dyn AsyncRead + Unpin + Send>,
    key: String,
    /// Compressed bytes the decoder has been given so far.
    compressed: Arc<AtomicU64>,
    /// Damage met after some bytes of a chunk were decoded: those bytes went out first.
    damage: Option<SourceError>,
}

impl Chunks {
    async fn next(&mut self) -> Result<Option<Bytes>, SourceError> {
        match self {
            Chunks::Plain(s) => s.next().await.transpose().map_err(source_err),
            Chunks::Gzip(g) => {
                if let Some(damage) = g.damage.take() {
                    return Err(damage);
                }
                let mut buf = BytesMut::with_capacity(GZIP_CHUNK);
                while buf.len() < GZIP_CHUNK {
                    match g.decoder.read_buf(&mut buf).await {
                        Ok(0) => break,
                        Ok(_) => {}
                        Err(e) => {
                            let e = g.classify(e);
                            // The lines decoded before the damage are read first.
                            if buf.is_empty() || !matches!(e, SourceError::Damaged { .. }) {
                                return Err(e);
                            }
                            g.damage = Some(e);
                            break;
                        }
                    }
                }
                Ok((!buf.is_empty()).then(|| buf.freeze()))
            }
        }
    }
}

impl GzipChunks {
    /// A decoder error is the store's (passed through, and retried like any read) or the
    /// data's own (`Damaged`: the same bytes fail the same way every time).
    fn classify(&self, e: std::io::Error) -> SourceError {
        if e.get_ref().is_some_and(|inner| inner.is::<ObjectError>()) {
            return match e.into_inner().map(|inner| inner.downcast::<ObjectError>()) {
                Some(Ok(store)) => source_err(*store),
                _ => SourceError::Backend("a store error was lost in the decoder".into()),
            };
        }
        let what = match e.kind() {
            std::io::ErrorKind::UnexpectedEof => "the gzip data ends early (a truncated file)",
            _ => "the gzip data is corrupt",
        };
        SourceError::Damaged {
            object: self.key.clone(),
            detail: format!(
                "{what}: {e}; {} compressed bytes had been read",
                self.compressed.load(AtomicOrdering::Relaxed)
            ),
        }
    }
}

const GZIP_CHUNK: usize = 256 * 1024;

/// One line read by [`Lines`].
enum Line {
    /// The line is `Lines::buffer(held)[range]` (terminator excluded); `consumed` is the bytes
    /// it took, terminator included.
    Text {
        held: Held,
        range: Range<usize>,
        consumed: usize,
    },
    /// A line longer than `MAX_LINE_BYTES`, skipped; the bytes it took.
    TooLong(usize),
}

impl Line {
    fn consumed(&self) -> usize {
        match self {
            Line::Text { consumed, .. } | Line::TooLong(consumed) => *consumed,
        }
    }
}

/// Which of [`Lines`]' buffers holds a line.
#[derive(Clone, Copy)]
enum Held {
    /// The chunk being split.
    Current,
    /// A copy of a line that straddled two chunks.
    Carried,
}

/// Splits a stream of chunks into lines. A line inside one chunk is a range of it (no copy,
/// and no reference count touched per line); only lines that straddle chunks are copied,
/// into `carry`.
struct Lines {
    chunks: Chunks,
    cur: Bytes,
    /// Where the next line starts in `cur`.
    pos: usize,
    carry: BytesMut,
    carried: Bytes,
    /// The chunks are exhausted (a stream must not be polled again after its end).
    ended: bool,
}

impl Lines {
    async fn open(
        store: &Arc<dyn ObjectStore>,
        key: &str,
        start: u64,
        gzip: bool,
    ) -> Result<Lines, SourceError> {
        let stream = store.read(key, start, None).await.map_err(source_err)?;
        let chunks = if gzip {
            let compressed = Arc::new(AtomicU64::new(0));
            let counted = compressed.clone();
            let raw = StreamReader::new(
                stream
                    .inspect_ok(move |b| {
                        counted.fetch_add(b.len() as u64, AtomicOrdering::Relaxed);
                    })
                    .map_err(std::io::Error::other),
            );
            let mut decoder = GzipDecoder::new(BufReader::with_capacity(64 * 1024, raw));
            decoder.multiple_members(true);
            Chunks::Gzip(GzipChunks {
                decoder: Box::new(decoder),
                key: key.to_owned(),
                compressed,
                damage: None,
            })
        } else {
            Chunks::Plain(stream)
        };
        Ok(Lines {
            chunks,
            cur: Bytes::new(),
            pos: 0,
            carry: BytesMut::new(),
            carried: Bytes::new(),
            ended: false,
        })
    }

    fn buffer(&self, held: Held) -> &Bytes {
        match held {
            Held::Current => &self.cur,
            Held::Carried => &self.carried,
        }
    }

    fn text(&self, line: &Line) -> Option<&[u8]> {
        match line {
            Line::Text { held, range, .. } => Some(&self.buffer(*held)[range.clone()]),
            Line::TooLong(_) => None,
        }
    }

    async fn next(&mut self) -> Result<Option<Line>, SourceError> {
        let mut too_long = false;
        let mut consumed = 0usize;
        loop {
            let rest = &self.cur[self.pos..];
            if let Some(i) = memchr::memchr(b'\n', rest) {
                let start = self.pos;
                self.pos += i + 1;
                consumed += i + 1;
                if too_long {
                    return Ok(Some(Line::TooLong(consumed)));
                }
                if self.carry.is_empty() {
                    return Ok(Some(Line::Text {
                        held: Held::Current,
                        range: start..trimmed_end(&self.cur, start, self.pos),
                        consumed,
                    }));
                }
                if self.carry.len() + i + 1 > MAX_LINE_BYTES + 2 {
                    self.carry.clear();
                    return Ok(Some(Line::TooLong(consumed)));
                }
                self.carry.extend_from_slice(&self.cur[start..self.pos]);
                return Ok(Some(self.carried_line(consumed)));
            }
            consumed += rest.len();
            if !too_long {
                if self.carry.len() + rest.len() > MAX_LINE_BYTES {
                    too_long = true;
                    self.carry.clear();
                } else {
                    self.carry.extend_from_slice(rest);
                }
            }
            let next = if self.ended {
                None
            } else {
                self.chunks.next().await?
            };
            match next {
                Some(c) => {
                    self.cur = c;
                    self.pos = 0;
                }
                None => {
                    self.ended = true;
                    self.cur = Bytes::new();
                    self.pos = 0;
                    if too_long {
                        return Ok(Some(Line::TooLong(consumed)));
                    }
                    if self.carry.is_empty() {
                        return Ok(None);
                    }
                    return Ok(Some(self.carried_line(consumed)));
                }
            }
        }
    }

    /// The line gathered in `carry`, moved to `carried`.
    fn carried_line(&mut self, consumed: usize) -> Line {
        self.carried = self.carry.split().freeze();
        Line::Text {
            held: Held::Carried,
            range: 0..trimmed_end(&self.carried, 0, self.carried.len()),
            consumed,
        }
    }
}

/// Where `buf[start..end]` ends without its `\n` or `\r\n`.
fn trimmed_end(buf: &[u8], start: usize, mut end: usize) -> usize {
    while end > start && matches!(buf[end - 1], b'\n' | b'\r') {
        end -= 1;
    }
    end
}

struct OpenRange {
    index: usize,
    lines: Lines,
    /// Offset of the next line in the object.
    pos: u64,
    end: Option<u64>,
    line: u64,
}

struct NdjsonReader {
    store: Arc<dyn ObjectStore>,
    prefix: String,
    ranges: Vec<FileRange>,
    next_range: usize,
    open: Option<OpenRange>,
    /// Line number at which a range starts, computed only when an error needs it.
    line_bases: HashMap<usize, u64>,
}

impl NdjsonReader {
    async fn open_next(&mut self) -> Result<bool, SourceError> {
        let Some(range) = self.ranges.get(self.next_range).cloned() else {
            return Ok(false);
        };
        let index = self.next_range;
        self.next_range += 1;
        let key = format!("{}{}", self.prefix, range.object);
        let mut pos = 0;
        let mut lines = if range.start > 0 && !range.gzip {
            // Start one byte early: if that byte ends a line, the line at `start` is ours;
            // otherwise the partial line belongs to the previous range.
            pos = range.start - 1;
            let mut lines = Lines::open(&self.store, &key, pos, false).await?;
            if let Some(line) = lines.next().await? {
                pos += line.consumed() as u64;
            }
            lines
        } else {
            Lines::open(&self.store, &key, 0, range.gzip).await?
        };
        if range.gzip && range.start > 0 {
            // Planning never splits gzip files; a spec saying otherwise is skipped whole.
            while let Some(line) = lines.next().await? {
                pos += line.consumed() as u64;
            }
        }
        self.open = Some(OpenRange {
            index,
            lines,
            pos,
            end: range.end,
            line: 0,
        });
        Ok(true)
    }

    async fn line_base(&mut self, range: usize) -> u64 {
        if let Some(b) = self.line_bases.get(&range) {
            return *b;
        }
        let Some(r) = self.ranges.get(range) else {
            return 0;
        };
        let base = if r.start == 0 || r.gzip {
            0
        } else {
            let key = format!("{}{}", self.prefix, r.object);
            match self.store.read(&key, 0, Some(r.start)).await {
                Ok(stream) => stream
                    .try_fold(0u64, |n, bytes| async move {
                        Ok(n + memchr::memchr_iter(b'\n', &bytes).count() as u64)
                    })
                    .await
                    .unwrap_or(0),
                Err(_) => 0,
            }
        };
        self.line_bases.insert(range, base);
        base
    }
}

#[async_trait]
impl RecordReader for NdjsonReader {
    async fn next_batch(&mut self, batch: &mut RecordBatch) -> Result<bool, SourceError> {
        batch.clear();
        while batch.bytes < BATCH_BYTES && batch.len() < BATCH_RECORDS {
            if self.open.is_none() && !self.open_next().await? {
                break;
            }
            let Some(open) = self.open.as_mut() else {
                break;
            };
            if open.end.is_some_and(|end| open.pos >= end) {
                self.open = None;
                continue;
            }
            let origin = Origin {
                part: open.index,
                offset: open.pos,
                line: open.line + 1,
            };
            let line = match open.lines.next().await {
                Ok(Some(line)) => line,
                Ok(None) => {
                    self.open = None;
                    continue;
                }
                // No attempt will read past the damage: what came before it is kept, the
                // damage reported, and the chunk goes on with its next range.
                Err(SourceError::Damaged { detail, .. }) => {
                    batch.fault(
                        origin,
                        format!(
                            "the file is damaged from this line on (byte {} of its decompressed data): {detail}. The lines before it were exported; the rest of the file could not be read",
                            open.pos
                        ),
                    );
                    self.open = None;
                    continue;
                }
                Err(e) => return Err(e),
            };
            open.line += 1;
            match line {
                Line::TooLong(n) => {
                    open.pos += n as u64;
                    // An empty record stands for the cut line; the worker reports it.
                    batch.push(Bytes::new(), origin);
                }
                Line::Text {
                    held,
                    range,
                    consumed,
                } => {
                    open.pos += consumed as u64;
                    let buffer = open.lines.buffer(held);
                    if !buffer[range.clone()].iter().all(u8::is_ascii_whitespace) {
                        batch.push_slice(buffer, range, origin);
                    }
                }
            }
        }
        Ok(!batch.is_empty() || batch.has_faults())
    }

    async fn describe(&mut self, origin: Origin) -> String {
        let base = self.line_base(origin.part).await;
        let object = self
            .ranges
            .get(origin.part)
            .map(|r| r.object.as_str())
            .unwrap_or("?");
        format!("{object} line {}", base + origin.line)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local_fs::LocalFsStore;
    use std::io::Write;

    fn store(dir: &std::path::Path) -> Arc<dyn ObjectStore> {
        Arc::new(LocalFsStore::new(dir).expect("store"))
    }

    #[test]
    fn classifies_file_names() {
        assert_eq!(
            classify("Patient.ndjson"),
            Some((ResourceType::PATIENT, false))
        );
        assert_eq!(
            classify("Patient-2.ndjson.gz"),
            Some((ResourceType::PATIENT, true))
        );
        assert_eq!(
            classify("MedicationRequest.000.ndjson").map(|c| c.0.as_str()),
            Some("MedicationRequest")
        );
        assert_eq!(classify("Patient.json"), None);
        assert_eq!(classify("README.md"), None);
        assert_eq!(classify("Unknown.ndjson"), None);
    }

    async fn read_all(source: &NdjsonSource, chunks: &[SourcePiece]) -> Vec<String> {
        let mut out = Vec::new();
        for c in chunks {
            let mut r = source.open(&c.read).await.expect("open");
            let mut batch = RecordBatch::default();
            while r.next_batch(&mut batch).await.expect("batch") {
                for (line, _) in batch.iter() {
                    out.push(String::from_utf8(line.to_vec()).expect("utf8"));
                }
            }
        }
        out
    }

    #[tokio::test]
    async fn every_line_once_whatever_the_split() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = crate::testkit::ragged_patient_lines(200);
        std::fs::write(dir.path().join("Patient.ndjson"), &text).expect("write");
        let source = NdjsonSource::new(store(dir.path()), "");
        for chunk_bytes in [1u64, 7, 50, 333, 1000, 100_000] {
            let chunks = source
                .plan(&ReadCriteria::everything(
                    &[ResourceType::PATIENT],
                    chunk_bytes,
                    chrono::Utc::now(),
                ))
                .await
                .expect("plan")
                .pieces;
            let lines = read_all(&source, &chunks).await;
            assert_eq!(lines.len(), 200, "chunk_bytes {chunk_bytes}");
            for (i, l) in lines.iter().enumerate() {
                assert!(l.contains(&format!("\"p{i}\"")), "{chunk_bytes}: {l}");
                assert!(!l.ends_with('\r'));
            }
        }
    }

    #[tokio::test]
    async fn a_last_line_without_its_newline_is_read_once() {
        let dir = tempfile::tempdir().expect("tmp");
        let text = "{\"resourceType\":\"Patient\",\"id\":\"a\"}\n{\"resourceType\":\"Patient\",\"id\":\"b\"}";
        std::fs::write(dir.path().join("Patient.ndjson"), text).expect("write");
        let source = NdjsonSource::new(store(dir.path()), "");
        for chunk_bytes in [1u64, 20, 1000] {
            let chunks = source
                .plan(&ReadCriteria::everything(
                    &[ResourceType::PATIENT],
                    chunk_bytes,
                    chrono::Utc::now(),
                ))
                .await
                .expect("plan")
                .pieces;
            let lines = read_all(&source, &chunks).await;
            assert_eq!(lines.len(), 2, "chunk_bytes {chunk_bytes}: {lines:?}");
            assert!(lines[1].ends_with("\"b\"}"));
        }
    }

    #[tokio::test]
    async fn a_big_file_is_cut_in_equal_pieces() {
        let dir = tempfile::tempdir().expect("tmp");
        let line = "{\"resourceType\":\"Patient\",\"id\":\"p\"}\n";
        std::fs::write(dir.path().join("Patient.ndjson"), line.repeat(1000)).expect("write");
        let size = (line.len() * 1000) as u64;
        let source = NdjsonSource::new(store(dir.path()), "");
        // 2.5 pieces' worth: three pieces of a third each, not two full ones and a half.
        let chunks = source
            .plan(&ReadCriteria::everything(
                &[ResourceType::PATIENT],
                size * 2 / 5,
                chrono::Utc::now(),
            ))
            .await
            .expect("plan")
            .pieces;
        let weights: Vec<u64> = chunks.iter().map(|c| c.bytes).collect();
        assert_eq!(weights.len(), 3, "{weights:?}");
        assert_eq!(weights.iter().sum::<u64>(), size);
        let (min, max) = (weights.iter().min(), weights.iter().max());
        assert!(max.zip(min).is_some_and(|(a, b)| a - b <= 1), "{weights:?}");
        assert_eq!(read_all(&source, &chunks).await.len(), 1000);
    }

    /// Every id and every fault a source's plan for `t` reads.
    async fn ids_and_faults(source: &NdjsonSource, t: &str) -> (Vec<String>, Vec<String>) {
        let t = ResourceType::parse(t).expect("type");
        let pieces = source
            .plan(&ReadCriteria::everything(&[t], 1 << 30, chrono::Utc::now()))
            .await
            .expect("plan")
            .pieces;
        let mut ids = Vec::new();
        let mut faults = Vec::new();
        for piece in pieces {
            let mut reader = source.open(&piece.read).await.expect("open");
            let mut batch = RecordBatch::default();
            while reader.next_batch(&mut batch).await.expect("read") {
                for (line, _) in batch.iter() {
                    ids.push(read_head(line).expect("valid").id.to_string());
                }
                for f in batch.take_faults() {
                    faults.push(format!(
                        "{}: {}",
                        reader.describe(f.origin).await,
                        f.message
                    ));
                }
            }
        }
        (ids, faults)
    }

    #[tokio::test]
    async fn a_damaged_gzip_file_gives_its_readable_lines_and_one_fault() {
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        let mut n = 0;
        // Enough lines, of varied content, that the compressed stream is several read
        // buffers long and a cut in its middle leaves whole lines before it.
        for i in 0..40_000 {
            writeln!(
                gz,
                "{{\"resourceType\":\"Observation\",\"id\":\"o{i}\",\"v\":{}}}",
                (i * 7919) % 100_003
            )
            .expect("gz");
            n += 1;
        }
        let good = gz.finish().expect("gz");
        let mut bad_crc = good.clone();
        let crc_at = bad_crc.len() - 8;
        bad_crc[crc_at] ^= 0xff;
        let truncated = good[..good.len() * 2 / 3].to_vec();
        let not_gzip = b"{\"resourceType\":\"Observation\",\"id\":\"plain\"}\n".to_vec();
        for (case, bytes, whole, says) in [
            ("truncated", truncated, false, "truncated"),
            ("bad checksum", bad_crc, true, "corrupt"),
            ("not gzip", not_gzip, false, "corrupt"),
        ] {
            let dir = tempfile::tempdir().expect("tmp");
            std::fs::write(dir.path().join("Observation-1.ndjson.gz"), &bytes).expect("write");
            // A healthy file of the same type after it is read all the same.
            let mut ok = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            writeln!(ok, "{{\"resourceType\":\"Observation\",\"id\":\"after\"}}").expect("gz");
            std::fs::write(
                dir.path().join("Observation-2.ndjson.gz"),
                ok.finish().expect("gz"),
            )
            .expect("write");
            let source = NdjsonSource::new(store(dir.path()), "");
            let (ids, faults) = ids_and_faults(&source, "Observation").await;
            assert_eq!(faults.len(), 1, "{case}: {faults:?}");
            let fault = &faults[0];
            assert!(
                fault.starts_with("Observation-1.ndjson.gz line "),
                "{case}: {fault}"
            );
            assert!(fault.contains(says), "{case}: {fault}");
            assert_eq!(ids.last().map(String::as_str), Some("after"), "{case}");
            let read = &ids[..ids.len() - 1];
            // The readable part, in order, and nothing invented.
            for (i, id) in read.iter().enumerate() {
                assert_eq!(id, &format!("o{i}"), "{case}");
            }
            if whole {
                assert_eq!(
                    read.len(),
                    n,
                    "{case}: every line was decoded before the check"
                );
            } else if case == "truncated" {
                assert!(
                    read.len() > n / 3 && read.len() < n,
                    "{case}: {} of {n} lines",
                    read.len()
                );
                let line: usize = fault
                    .split(" line ")
                    .nth(1)
                    .and_then(|l| l.split(':').next())
                    .and_then(|l| l.parse().ok())
                    .expect("line number");
                assert_eq!(
                    line,
                    read.len() + 1,
                    "{case}: the fault is at the first lost line"
                );
            } else {
                assert!(read.is_empty(), "{case}");
            }
        }
    }

    #[tokio::test]
    async fn gzip_files_and_packing() {
        let dir = tempfile::tempdir().expect("tmp");
        let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
        for i in 0..10 {
            writeln!(gz, "{{\"resourceType\":\"Observation\",\"id\":\"o{i}\"}}").expect("gz");
        }
        std::fs::write(
            dir.path().join("Observation.ndjson.gz"),
            gz.finish().expect("gz"),
        )
        .expect("write");
        std::fs::create_dir(dir.path().join("more")).expect("dir");
        std::fs::write(
            dir.path().join("more/Observation-2.ndjson"),
            "{\"resourceType\":\"Observation\",\"id\":\"o10\"}\n",
        )
        .expect("write");
        std::fs::write(dir.path().join("notes.txt"), "hello").expect("write");
        let source = NdjsonSource::new(store(dir.path()), "");
        assert_eq!(
            source.types().await.expect("types"),
            vec![ResourceType::parse("Observation").expect("t")]
        );
        let chunks = source
            .plan(&ReadCriteria::everything(
                &[ResourceType::parse("Observation").expect("t")],
                1 << 20,
                chrono::Utc::now(),
            ))
            .await
            .expect("plan")
            .pieces;
        assert_eq!(chunks.len(), 1, "small files are packed into one chunk");
        let lines = read_all(&source, &chunks).await;
        assert_eq!(lines.len(), 11);
        let found = source
            .read(
                ResourceType::parse("Observation").expect("t"),
                &LogicalId::parse("o10").expect("id"),
            )
            .await
            .expect("read");
        assert_eq!(
            found
                .and_then(|v| v["id"].as_str().map(str::to_owned))
                .as_deref(),
            Some("o10")
        );
    }

    #[tokio::test]
    async fn describes_lines_in_later_ranges() {
        let dir = tempfile::tempdir().expect("tmp");
        let text: String = (0..100).map(|i| format!("{{\"n\":{i:03}}}\n")).collect();
        std::fs::write(dir.path().join("Patient.ndjson"), &text).expect("write");
        let source = NdjsonSource::new(store(dir.path()), "");
        let chunks = source
            .plan(&ReadCriteria::everything(
                &[ResourceType::PATIENT],
                100,
                chrono::Utc::now(),
            ))
            .await
            .expect("plan")
            .pieces;
        assert!(chunks.len() > 3);
        let mut r = source.open(&chunks[3].read).await.expect("open");
        let mut batch = RecordBatch::default();
        assert!(r.next_batch(&mut batch).await.expect("batch"));
        let (line, origin) = batch.iter().next().expect("a record");
        let n: usize = std::str::from_utf8(&line[5..8])
            .expect("utf8")
            .parse()
            .expect("n");
        assert_eq!(
            r.describe(origin).await,
            format!("Patient.ndjson line {}", n + 1)
        );
    }
}
