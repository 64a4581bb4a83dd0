//! Streaming NDJSON part writer: one resource type, numbered parts rolled over past a size
//! threshold, nothing held in memory beyond one buffer.

use std::sync::Arc;

use bytes::Bytes;

use crate::buffers::Buffer;
use crate::job::{FileKind, StagedFile};
use crate::model::ResourceType;
use crate::ports::{Encoding, ObjectError, ObjectStore, ObjectWriter};

/// Bytes gathered before they are handed to the object writer.
const BUFFER: usize = crate::buffers::BUFFER_BYTES;

/// A run of lines at least this long is handed over as it is rather than copied: below it,
/// the copy costs less than the extra write.
const DIRECT_RUN: usize = 64 * 1024;

pub struct PartWriter {
    store: Arc<dyn ObjectStore>,
    /// Key prefix of the parts, ending in `/`.
    dir: String,
    stem: String,
    kind: FileKind,
    resource_type: Option<ResourceType>,
    max_bytes: u64,
    part: u32,
    current: Option<Box<dyn ObjectWriter>>,
    /// From the buffer pool, taken at the first line.
    buf: Option<Buffer>,
    part_bytes: u64,
    part_count: u64,
    done: Vec<StagedFile>,
    /// How the parts are stored (sizes and roll-over count the lines, not the stored bytes).
    encoding: Encoding,
}

impl PartWriter {
    /// Parts are written as `{dir}{stem}-{n}.ndjson`, `n` from 1; a part is closed before a
    /// line would take it past `max_bytes` (a single longer line gets a part of its own).
    pub fn new(
        store: Arc<dyn ObjectStore>,
        dir: String,
        stem: &str,
        kind: FileKind,
        resource_type: impl Into<Option<ResourceType>>,
        max_bytes: u64,
    ) -> Self {
        PartWriter {
            store,
            dir,
            stem: stem.to_owned(),
            kind,
            resource_type: resource_type.into(),
            max_bytes: max_bytes.max(1),
            part: 0,
            current: None,
            buf: None,
            part_bytes: 0,
            part_count: 0,
            done: Vec::new(),
            encoding: Encoding::Identity,
        }
    }

    /// Stores the parts gzip-compressed (or as they are).
    pub fn with_encoding(mut self, encoding: Encoding) -> Self {
        self.encoding = encoding;
        self
    }

    /// Appends one line (a `\n` is added).
    pub async fn write_line(&mut self, line: &[u8]) -> Result<(), ObjectError> {
        let len = line.len() as u64 + 1;
        if self.current.is_some() && self.part_bytes + len > self.max_bytes {
            self.close_part().await?;
        }
        self.open_part().await?;
        self.copy_in(line).await?;
        self.copy_in(b"\n").await?;
        self.part_bytes += len;
        self.part_count += 1;
        Ok(())
    }

    /// Appends `lines` whole lines, each already ended by `\n` (a run of source lines kept
    /// as they are). A long run is handed to the object writer as it is: its bytes are never
    /// copied in the process.
    pub async fn write_run(&mut self, run: Bytes, lines: u64) -> Result<(), ObjectError> {
        let len = run.len() as u64;
        if self.part_bytes + len > self.max_bytes {
            // The part fills up within the run: line by line, so that it closes where
            // `write_line` closes it.
            let body = run.strip_suffix(b"\n").unwrap_or(&run);
            for line in body.split(|b| *b == b'\n') {
                self.write_line(line).await?;
            }
            return Ok(());
        }
        self.open_part().await?;
        if run.len() >= DIRECT_RUN {
            // What is buffered goes first.
            self.flush().await?;
            if let Some(w) = self.current.as_mut() {
                w.write(run).await?;
            }
        } else {
            self.copy_in(&run).await?;
        }
        self.part_bytes += len;
        self.part_count += lines;
        Ok(())
    }

    async fn open_part(&mut self) -> Result<(), ObjectError> {
        if self.current.is_none() {
            self.part += 1;
            let key = self.key();
            let writer = self.store.encoded_writer(&key, self.encoding).await?;
            self.current = Some(match self.encoding {
                Encoding::Identity => writer,
                Encoding::Gzip => Box::new(super::gzip::GzipWriter::new(writer, &key)),
            });
        }
        Ok(())
    }

    /// Copies `bytes` into the buffer, handing it over whenever it is full. It never grows
    /// (every growth copies it, and a buffer grown for one long line would keep its size):
    /// a long line goes in as many pieces as it takes.
    async fn copy_in(&mut self, mut bytes: &[u8]) -> Result<(), ObjectError> {
        while !bytes.is_empty() {
            let buf = self
                .buf
                .get_or_insert_with(|| crate::buffers::pool().take());
            let (piece, rest) = bytes.split_at((BUFFER - buf.len()).min(bytes.len()));
            buf.extend_from_slice(piece);
            bytes = rest;
            if buf.len() >= BUFFER {
                self.flush().await?;
            }
        }
        Ok(())
    }

    /// Whether a line of `len` bytes fits in the open part (an empty part takes anything).
    pub fn fits(&self, len: usize) -> bool {
        self.current.is_none() || self.part_bytes + (len as u64) < self.max_bytes
    }

    /// Closes the open part now; `continues` marks its last block as going on in the next.
    pub async fn roll(&mut self, continues: bool) -> Result<(), ObjectError> {
        self.close_part().await?;
        if continues && let Some(last) = self.done.last_mut() {
            last.continues = true;
        }
        Ok(())
    }

    pub fn lines(&self) -> u64 {
        self.done.iter().map(|f| f.count).sum::<u64>() + self.part_count
    }

    fn key(&self) -> String {
        format!("{}{}-{}.ndjson", self.dir, self.stem, self.part)
    }

    async fn flush(&mut self) -> Result<(), ObjectError> {
        if let Some(w) = self.current.as_mut()
            && let Some(full) = self.buf.take_if(|b| !b.is_empty())
        {
            w.write(full.freeze()).await?;
        }
        Ok(())
    }

    async fn close_part(&mut self) -> Result<(), ObjectError> {
        self.flush().await?;
        if let Some(w) = self.current.take() {
            let bytes = w.finish().await?;
            self.done.push(StagedFile {
                kind: self.kind,
                resource_type: self.resource_type,
                path: self.key(),
                count: self.part_count,
                bytes,
                continues: false,
                partition_offsets: Vec::new(),
                encoding: self.encoding,
            });
        }
        self.part_bytes = 0;
        self.part_count = 0;
        Ok(())
    }

    /// Publishes the open part; returns every part written, in order.
    pub async fn finish(mut self) -> Result<Vec<StagedFile>, ObjectError> {
        self.close_part().await?;
        Ok(std::mem::take(&mut self.done))
    }

    /// Drops the open part. Parts already published stay (they are overwritten by a retry
    /// and deleted with the export folder).
    pub async fn abort(mut self) {
        if let Some(w) = self.current.take() {
            let _ = w.abort().await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::adapters::local_fs::LocalFsStore;

    #[tokio::test]
    async fn rolls_over_by_size_and_counts_lines() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        let mut w = PartWriter::new(
            store.clone(),
            "job/.staging/000001/".into(),
            "Patient",
            FileKind::Output,
            ResourceType::PATIENT,
            25,
        );
        for i in 0..5 {
            // 10 bytes + newline each: two lines fit in 25 bytes, a third does not.
            w.write_line(format!("{{\"n\":{i:04}}}").as_bytes())
                .await
                .expect("write");
        }
        w.write_line(&[b'x'; 40]).await.expect("long line");
        let files = w.finish().await.expect("finish");
        let counts: Vec<u64> = files.iter().map(|f| f.count).collect();
        assert_eq!(counts, vec![2, 2, 1, 1]);
        assert_eq!(files[0].path, "job/.staging/000001/Patient-1.ndjson");
        assert_eq!(files[3].path, "job/.staging/000001/Patient-4.ndjson");
        let first =
            std::fs::read_to_string(dir.path().join("job/.staging/000001/Patient-1.ndjson"))
                .expect("read");
        assert_eq!(first, "{\"n\":0000}\n{\"n\":0001}\n");
        assert!(files.iter().all(|f| f.bytes <= 25 || f.count == 1));
    }

    #[tokio::test]
    async fn lines_of_every_size_cross_the_buffer_intact() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        let mut w = PartWriter::new(
            store.clone(),
            "j/".into(),
            "Patient",
            FileKind::Output,
            ResourceType::PATIENT,
            u64::MAX,
        );
        let mut expected = Vec::new();
        let mut state: u64 = 1;
        for i in 0..3000u64 {
            state = state.wrapping_mul(6364136223846793005).wrapping_add(1);
            // Mostly short lines, some near and over the buffer's size.
            let len = match i % 500 {
                7 => BUFFER - 1,
                8 => BUFFER,
                9 => BUFFER * 2 + 3,
                _ => (state >> 40) as usize % 3000,
            };
            let line: Vec<u8> = (0..len)
                .map(|k| b'a' + ((k as u64 + i) % 26) as u8)
                .collect();
            w.write_line(&line).await.expect("write");
            expected.extend_from_slice(&line);
            expected.push(b'\n');
        }
        let files = w.finish().await.expect("finish");
        assert_eq!(files.len(), 1);
        assert_eq!(files[0].count, 3000);
        let written = std::fs::read(dir.path().join("j/Patient-1.ndjson")).expect("read");
        assert_eq!(written.len(), expected.len());
        assert!(written == expected, "content differs");
    }

    #[tokio::test]
    async fn writes_nothing_when_empty_and_abort_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        let w = PartWriter::new(
            store.clone(),
            "a/".into(),
            "X",
            FileKind::Error,
            ResourceType::OPERATION_OUTCOME,
            100,
        );
        assert!(w.finish().await.expect("finish").is_empty());
        let mut w = PartWriter::new(
            store.clone(),
            "b/".into(),
            "X",
            FileKind::Error,
            ResourceType::OPERATION_OUTCOME,
            100,
        );
        w.write_line(b"{}").await.expect("write");
        w.abort().await;
        assert!(store.list("").await.expect("list").is_empty());
    }

    fn parts(dir: &std::path::Path, files: &[StagedFile]) -> Vec<String> {
        files
            .iter()
            .map(|f| std::fs::read_to_string(dir.join(&f.path)).expect("read"))
            .collect()
    }

    fn writer(store: Arc<dyn ObjectStore>, max: u64) -> PartWriter {
        PartWriter::new(
            store,
            "job/.staging/000001/".into(),
            "Patient",
            FileKind::Output,
            ResourceType::PATIENT,
            max,
        )
    }

    #[tokio::test]
    async fn runs_write_what_their_lines_write() {
        let lines: Vec<String> = (0..3000)
            .map(|i| format!("{{\"n\":{i},\"pad\":\"{}\"}}", "x".repeat(i % 300)))
            .collect();
        // Runs of 1, 7 and 400 lines: copied in, and (past 64 KiB) handed over whole.
        let mut runs: Vec<(Bytes, u64)> = Vec::new();
        let mut rest = &lines[..];
        for size in [1usize, 7, 400].into_iter().cycle() {
            if rest.is_empty() {
                break;
            }
            let (run, after) = rest.split_at(size.min(rest.len()));
            let text: String = run.iter().map(|l| format!("{l}\n")).collect();
            runs.push((Bytes::from(text), run.len() as u64));
            rest = after;
        }
        assert!(runs.iter().any(|(r, _)| r.len() >= DIRECT_RUN));
        for max in [u64::MAX, 100_000, 40_000] {
            let dir = tempfile::tempdir().expect("tmp");
            let store: Arc<dyn ObjectStore> =
                Arc::new(LocalFsStore::new(dir.path()).expect("store"));
            let mut by_line = writer(store.clone(), max);
            for l in &lines {
                by_line.write_line(l.as_bytes()).await.expect("line");
            }
            let want = by_line.finish().await.expect("finish");

            let dir2 = tempfile::tempdir().expect("tmp");
            let store2: Arc<dyn ObjectStore> =
                Arc::new(LocalFsStore::new(dir2.path()).expect("store"));
            let mut by_run = writer(store2, max);
            // A line written alone between runs keeps its place.
            by_run.write_line(lines[0].as_bytes()).await.expect("line");
            let (first, n) = &runs[0];
            assert_eq!(*n, 1);
            assert_eq!(&first[..], format!("{}\n", lines[0]).as_bytes());
            for (run, n) in &runs[1..] {
                by_run.write_run(run.clone(), *n).await.expect("run");
            }
            let got = by_run.finish().await.expect("finish");

            let counts =
                |f: &[StagedFile]| f.iter().map(|f| (f.count, f.bytes)).collect::<Vec<_>>();
            assert_eq!(counts(&got), counts(&want), "max {max}");
            assert_eq!(
                parts(dir2.path(), &got),
                parts(dir.path(), &want),
                "max {max}"
            );
            if max < u64::MAX {
                assert!(got.len() > 3, "max {max}: {} parts", got.len());
            }
        }
    }
}
