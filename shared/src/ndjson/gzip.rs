//! An `ObjectWriter` that gzips what it is given before handing it to another: export files
//! stored compressed (`FHIR_EXPORT_OUTPUT_ENCODING=gzip`).
//!
//! Compression is the costly part of writing a compressed file, so it runs on the blocking
//! pool, one piece at a time and one piece behind the caller: while a piece is compressed the
//! caller goes on reading and selecting the next, and the compressed output of the piece
//! before is written to the store. The fastest level is used: NDJSON is repetitive enough
//! that it still shrinks several times, and export throughput stays close to uncompressed.

use std::io::Write;

use async_trait::async_trait;
use bytes::Bytes;
use flate2::Compression;
use flate2::write::GzEncoder;
use tokio::task::JoinHandle;

use crate::ports::{ObjectError, ObjectWriter};

type Encoder = GzEncoder<Vec<u8>>;

/// The compression of one piece: the encoder back, with what it produced.
type Piece = JoinHandle<std::io::Result<(Encoder, Vec<u8>)>>;

pub struct GzipWriter {
    inner: Box<dyn ObjectWriter>,
    /// The encoder while no piece is being compressed.
    encoder: Option<Encoder>,
    /// The piece being compressed, which holds the encoder meanwhile.
    pending: Option<Piece>,
    /// The key, for errors.
    key: String,
}

impl GzipWriter {
    pub fn new(inner: Box<dyn ObjectWriter>, key: &str) -> GzipWriter {
        GzipWriter {
            inner,
            encoder: Some(GzEncoder::new(Vec::new(), Compression::fast())),
            pending: None,
            key: key.to_owned(),
        }
    }

    /// Waits for the piece being compressed, writes its output, and has the encoder back.
    async fn settle(&mut self) -> Result<Encoder, ObjectError> {
        if let Some(piece) = self.pending.take() {
            let (encoder, out) = piece
                .await
                .map_err(|e| ObjectError::backend(&self.key, e))?
                .map_err(|e| ObjectError::backend(&self.key, e))?;
            if !out.is_empty() {
                self.inner.write(Bytes::from(out)).await?;
            }
            return Ok(encoder);
        }
        self.encoder.take().ok_or_else(|| {
            ObjectError::backend(&self.key, "the gzip writer failed earlier and cannot go on")
        })
    }
}

#[async_trait]
impl ObjectWriter for GzipWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError> {
        let mut encoder = self.settle().await?;
        // The output buffer is allocated here, not on the blocking thread (see `buffers`):
        // level 1 shrinks NDJSON several times, so a third of the input is seldom outgrown.
        *encoder.get_mut() = Vec::with_capacity(data.len() / 3 + 64);
        self.pending = Some(tokio::task::spawn_blocking(move || {
            encoder.write_all(&data)?;
            let out = std::mem::take(encoder.get_mut());
            Ok((encoder, out))
        }));
        Ok(())
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, ObjectError> {
        let encoder = self.settle().await?;
        let key = self.key.clone();
        let trailer = tokio::task::spawn_blocking(move || encoder.finish())
            .await
            .map_err(|e| ObjectError::backend(&key, e))?
            .map_err(|e| ObjectError::backend(&key, e))?;
        self.inner.write(Bytes::from(trailer)).await?;
        self.inner.finish().await
    }

    async fn abort(mut self: Box<Self>) -> Result<(), ObjectError> {
        // A piece still being compressed finishes on its own; its output is dropped.
        self.pending.take();
        self.inner.abort().await
    }
}

#[cfg(test)]
mod tests {
    use std::io::Read;
    use std::sync::Arc;

    use super::*;
    use crate::adapters::local_fs::LocalFsStore;
    use crate::ports::ObjectStore;

    #[tokio::test]
    async fn what_is_written_decompresses_to_what_was_given() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        let mut w = GzipWriter::new(store.writer("x.ndjson").await.expect("writer"), "x.ndjson");
        let mut expected = Vec::new();
        for i in 0..2000u32 {
            let piece = format!("{{\"resourceType\":\"Patient\",\"id\":\"p{i}\"}}\n")
                .repeat(i as usize % 40);
            expected.extend_from_slice(piece.as_bytes());
            w.write(Bytes::from(piece)).await.expect("write");
        }
        let size = Box::new(w).finish().await.expect("finish");
        let stored = std::fs::read(dir.path().join("x.ndjson")).expect("read");
        assert_eq!(size, stored.len() as u64);
        assert!(
            stored.len() * 5 < expected.len(),
            "{} of {}",
            stored.len(),
            expected.len()
        );
        let mut plain = Vec::new();
        flate2::read::GzDecoder::new(&stored[..])
            .read_to_end(&mut plain)
            .expect("gunzip");
        assert!(plain == expected, "content differs");
    }

    #[tokio::test]
    async fn an_aborted_writer_leaves_nothing() {
        let dir = tempfile::tempdir().expect("tmp");
        let store: Arc<dyn ObjectStore> = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        let mut w = GzipWriter::new(store.writer("y.ndjson").await.expect("writer"), "y.ndjson");
        w.write(Bytes::from(vec![b'a'; 2_000_000]))
            .await
            .expect("write");
        w.write(Bytes::from(vec![b'b'; 10])).await.expect("write");
        Box::new(w).abort().await.expect("abort");
        assert!(store.list("").await.expect("list").is_empty());
    }
}
