//! `ObjectStore` on a local folder (`file:///path`).
//!
//! Writes go to a temp file under `<root>/.tmp/` and are renamed into place on `finish`, so a
//! reader never sees half a file and two writers of the same key leave one whole file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;
use std::io::{Read, Seek, Write};

use crate::ports::{ByteStream, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, validate_key};

const TMP_DIR: &str = ".tmp";
const READ_BUFFER: usize = 256 * 1024;

#[derive(Debug, Clone)]
pub struct LocalFsStore {
    root: PathBuf,
}

impl LocalFsStore {
    /// A store rooted at `root`, which is created if missing.
    pub fn new(root: impl Into<PathBuf>) -> Result<Self, ObjectError> {
        let root = root.into();
        std::fs::create_dir_all(&root)
            .map_err(|e| ObjectError::backend(&root.to_string_lossy(), e))?;
        // Absolute, so logs and `describe` name the real place whatever the working folder.
        let root = std::fs::canonicalize(&root)
            .map_err(|e| ObjectError::backend(&root.to_string_lossy(), e))?;
        Ok(LocalFsStore { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    fn path(&self, key: &str) -> Result<PathBuf, ObjectError> {
        validate_key(key)?;
        Ok(self.root.join(key))
    }
}

fn map_io(key: &str, e: std::io::Error) -> ObjectError {
    if e.kind() == ErrorKind::NotFound {
        ObjectError::NotFound(key.to_owned())
    } else {
        ObjectError::backend(key, e)
    }
}

/// Every file below `dir`, as keys relative to `root`, skipping the temp folder.
fn walk(root: &Path, dir: &Path, out: &mut Vec<ObjectMeta>) -> std::io::Result<()> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e),
    };
    for entry in entries {
        let entry = entry?;
        let path = entry.path();
        let ft = entry.file_type()?;
        if ft.is_dir() {
            if dir == root && entry.file_name() == TMP_DIR {
                continue;
            }
            walk(root, &path, out)?;
        } else if ft.is_file() {
            let rel = path.strip_prefix(root).unwrap_or(&path);
            let key = rel
                .components()
                .map(|c| c.as_os_str().to_string_lossy())
                .collect::<Vec<_>>()
                .join("/");
            out.push(ObjectMeta {
                key,
                size: entry.metadata()?.len(),
            });
        }
    }
    Ok(())
}

#[async_trait]
impl ObjectStore for LocalFsStore {
    async fn put(&self, key: &str, data: Bytes) -> Result<(), ObjectError> {
        let mut w = self.writer(key).await?;
        w.write(data).await?;
        w.finish().await.map(|_| ())
    }

    async fn writer(&self, key: &str) -> Result<Box<dyn ObjectWriter>, ObjectError> {
        let target = self.path(key)?;
        if key.is_empty() || key.ends_with('/') {
            return Err(ObjectError::InvalidKey(key.to_owned()));
        }
        let tmp_dir = self.root.join(TMP_DIR);
        tokio::fs::create_dir_all(&tmp_dir)
            .await
            .map_err(|e| map_io(key, e))?;
        let tmp = tmp_dir.join(uuid::Uuid::new_v4().simple().to_string());
        let file = tokio::fs::File::create(&tmp)
            .await
            .map_err(|e| map_io(key, e))?
            .into_std()
            .await;
        Ok(Box::new(LocalWriter {
            key: key.to_owned(),
            target,
            tmp: Some(tmp),
            file: Some(file),
            size: 0,
            flushed_to: 0,
            flushing: None,
        }))
    }

    async fn read(
        &self,
        key: &str,
        start: u64,
        end: Option<u64>,
    ) -> Result<ByteStream, ObjectError> {
        let path = self.path(key)?;
        let owned_key = key.to_owned();
        let file = tokio::task::spawn_blocking(move || -> std::io::Result<std::fs::File> {
            let mut f = std::fs::File::open(&path)?;
            if start > 0 {
                f.seek(std::io::SeekFrom::Start(start))?;
            }
            Ok(f)
        })
        .await
        .map_err(|e| ObjectError::backend(key, e))?
        .map_err(|e| map_io(key, e))?;
        // Each read runs on the blocking pool straight into a buffer allocated here, on the
        // async side: one copy from the page cache, and no allocation on blocking threads
        // (each of which would get a malloc arena of its own and keep its memory).
        let state = ReadState {
            file: Some(file),
            left: end.map(|e| e.saturating_sub(start)),
            key: owned_key,
        };
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                let want = st
                    .left
                    .map_or(READ_BUFFER, |l| l.min(READ_BUFFER as u64) as usize);
                let file = st.file.take()?;
                if want == 0 {
                    return None;
                }
                // `read_to_end` within the capacity fills the buffer without zeroing it
                // first and never reallocates.
                let buf: Vec<u8> = Vec::with_capacity(want);
                let joined = tokio::task::spawn_blocking(move || {
                    let mut file = file;
                    let mut buf = buf;
                    let r = (&mut file).take(want as u64).read_to_end(&mut buf);
                    (file, buf, r)
                })
                .await;
                match joined {
                    Err(e) => Some((Err(ObjectError::backend(&st.key, e)), st)),
                    Ok((_, _, Ok(0))) => None,
                    Ok((file, buf, Ok(n))) => {
                        if let Some(l) = st.left.as_mut() {
                            *l -= n as u64;
                        }
                        st.file = Some(file);
                        Some((Ok(Bytes::from(buf)), st))
                    }
                    Ok((_, _, Err(e))) => Some((Err(map_io(&st.key, e)), st)),
                }
            },
        )))
    }

    async fn head(&self, key: &str) -> Result<Option<ObjectMeta>, ObjectError> {
        let path = self.path(key)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) if m.is_file() => Ok(Some(ObjectMeta {
                key: key.to_owned(),
                size: m.len(),
            })),
            Ok(_) => Ok(None),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(ObjectError::backend(key, e)),
        }
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectMeta>, ObjectError> {
        validate_key(prefix)?;
        let root = self.root.clone();
        let dir = match prefix.rfind('/') {
            Some(i) => root.join(&prefix[..i]),
            None => root.clone(),
        };
        let prefix_owned = prefix.to_owned();
        tokio::task::spawn_blocking(move || {
            let mut out = Vec::new();
            walk(&root, &dir, &mut out).map_err(|e| ObjectError::backend(&prefix_owned, e))?;
            out.retain(|m| m.key.starts_with(&prefix_owned));
            out.sort_by(|a, b| a.key.cmp(&b.key));
            Ok(out)
        })
        .await
        .map_err(|e| ObjectError::backend(prefix, e))?
    }

    async fn delete(&self, key: &str) -> Result<(), ObjectError> {
        let path = self.path(key)?;
        match tokio::fs::remove_file(&path).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ObjectError::backend(key, e)),
        }
    }

    async fn delete_prefix(&self, prefix: &str) -> Result<u64, ObjectError> {
        let objects = self.list(prefix).await?;
        for o in &objects {
            self.delete(&o.key).await?;
        }
        // Folders are an artefact of this adapter: drop the ones the prefix emptied.
        if let Some(dir) = prefix.strip_suffix('/').filter(|d| !d.is_empty()) {
            let path = self.path(dir)?;
            let objects_left = self.list(prefix).await?;
            if objects_left.is_empty() {
                match tokio::fs::remove_dir_all(&path).await {
                    Ok(()) => {}
                    Err(e) if e.kind() == ErrorKind::NotFound => {}
                    Err(e) => return Err(ObjectError::backend(prefix, e)),
                }
            }
        }
        Ok(objects.len() as u64)
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        let src = self.path(from)?;
        let dst = self.path(to)?;
        if let Some(parent) = dst.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| map_io(to, e))?;
        }
        tokio::fs::rename(&src, &dst)
            .await
            .map_err(|e| map_io(from, e))
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

struct ReadState {
    /// `None` once the read ended (or failed).
    file: Option<std::fs::File>,
    left: Option<u64>,
    key: String,
}

struct LocalWriter {
    key: String,
    target: PathBuf,
    tmp: Option<PathBuf>,
    /// A std file written on the blocking pool, so that data is handed over without the copy
    /// `tokio::fs::File` makes into its own buffer.
    file: Option<std::fs::File>,
    size: u64,
    /// Bytes written when the last early flush started.
    flushed_to: u64,
    /// An early flush in flight (see [`EARLY_FLUSH_BYTES`]).
    flushing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

/// A big file starts going to disk while it is still being written, one flush in flight at
/// a time, so that the `fdatasync` that makes it durable at the end waits only for the
/// last few MiB instead of the whole file (at the end of a chunk, on an export's critical
/// path).
const EARLY_FLUSH_BYTES: u64 = 8 * 1024 * 1024;

impl LocalWriter {
    /// Starts an early flush when enough was written since the last and none is in flight.
    /// A finished flush's error fails the file: Linux reports a write-back error to only one
    /// `fsync` of the open file (the clone shares it), so the final sync would not see it.
    async fn flush_early(&mut self, file: &std::fs::File) -> Result<(), ObjectError> {
        if self.size - self.flushed_to < EARLY_FLUSH_BYTES
            || self.flushing.as_ref().is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        self.settle_early_flush().await?;
        let handle = file
            .try_clone()
            .map_err(|e| ObjectError::backend(&self.key, e))?;
        self.flushed_to = self.size;
        self.flushing = Some(tokio::task::spawn_blocking(move || handle.sync_data()));
        Ok(())
    }

    /// Waits for the early flush in flight, if any, and reports its error.
    async fn settle_early_flush(&mut self) -> Result<(), ObjectError> {
        if let Some(flush) = self.flushing.take() {
            flush
                .await
                .map_err(|e| ObjectError::backend(&self.key, e))?
                .map_err(|e| ObjectError::backend(&self.key, e))?;
        }
        Ok(())
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError> {
        let mut file = self
            .file
            .take()
            .ok_or_else(|| ObjectError::backend(&self.key, "writer already closed"))?;
        let len = data.len() as u64;
        let (file, written) = tokio::task::spawn_blocking(move || {
            let r = file.write_all(&data);
            (file, r)
        })
        .await
        .map_err(|e| ObjectError::backend(&self.key, e))?;
        written.map_err(|e| ObjectError::backend(&self.key, e))?;
        self.size += len;
        let flushed = self.flush_early(&file).await;
        self.file = Some(file);
        flushed
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, ObjectError> {
        let file = self
            .file
            .take()
            .ok_or_else(|| ObjectError::backend(&self.key, "writer already closed"))?;
        let key = self.key.clone();
        self.settle_early_flush().await?;
        tokio::task::spawn_blocking(move || file.sync_data())
            .await
            .map_err(|e| ObjectError::backend(&key, e))?
            .map_err(|e| ObjectError::backend(&key, e))?;
        if let Some(parent) = self.target.parent() {
            tokio::fs::create_dir_all(parent)
                .await
                .map_err(|e| ObjectError::backend(&key, e))?;
        }
        let tmp = self
            .tmp
            .take()
            .ok_or_else(|| ObjectError::backend(&key, "writer already closed"))?;
        if let Err(e) = tokio::fs::rename(&tmp, &self.target).await {
            let _ = tokio::fs::remove_file(&tmp).await;
            return Err(ObjectError::backend(&key, e));
        }
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), ObjectError> {
        self.file.take();
        if let Some(tmp) = self.tmp.take() {
            match tokio::fs::remove_file(&tmp).await {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ObjectError::backend(&self.key, e)),
            }
        }
        Ok(())
    }
}

impl Drop for LocalWriter {
    fn drop(&mut self) {
        // A writer dropped without finish (a cancelled or crashed task) must not leave its
        // temp file behind.
        if let Some(tmp) = self.tmp.take() {
            let _ = std::fs::remove_file(tmp);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn satisfies_the_object_store_contract() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = Arc::new(LocalFsStore::new(dir.path()).expect("store"));
        crate::testkit::object_store::run(store, "contract/").await;
    }

    #[tokio::test]
    async fn a_file_flushed_early_while_written_is_whole() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        let mut w = store.writer("big/file.ndjson").await.expect("writer");
        let mut expected = Vec::new();
        // Three times the early-flush step, in pieces that do not divide it.
        let piece = 700 * 1024 + 13;
        let mut k = 0u8;
        while (expected.len() as u64) < 3 * EARLY_FLUSH_BYTES {
            let data: Vec<u8> = (0..piece).map(|i| k.wrapping_add(i as u8)).collect();
            k = k.wrapping_add(1);
            expected.extend_from_slice(&data);
            w.write(Bytes::from(data)).await.expect("write");
        }
        let size = w.finish().await.expect("finish");
        assert_eq!(size, expected.len() as u64);
        let written = std::fs::read(dir.path().join("big/file.ndjson")).expect("read");
        assert!(written == expected, "content differs");
    }

    #[tokio::test]
    async fn dropped_writer_leaves_no_temp_file() {
        let dir = tempfile::tempdir().expect("tmp");
        let store = LocalFsStore::new(dir.path()).expect("store");
        let mut w = store.writer("x/y.ndjson").await.expect("writer");
        w.write(Bytes::from_static(b"abc")).await.expect("write");
        drop(w);
        let tmp: Vec<_> = std::fs::read_dir(dir.path().join(TMP_DIR))
            .expect("tmp dir")
            .collect();
        assert!(tmp.is_empty(), "temp files left: {tmp:?}");
    }
}
