//! `ObjectStore` on a local folder (`file:///path`).
//!
//! Writes go to a temp file under `<root>/.tmp/` and are renamed into place on `finish`, so a
//! reader never sees half a file and two writers of the same key leave one whole file.

use std::io::ErrorKind;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use std::io::{Read, Seek};

use crate::ports::{ByteStream, ObjectError, ObjectMeta, ObjectStore, ObjectWriter, validate_key};

const TMP_DIR: &str = ".tmp";
const READ_BUFFER: usize = crate::buffers::BUFFER_BYTES;

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
        let tmp = self
            .root
            .join(TMP_DIR)
            .join(uuid::Uuid::new_v4().simple().to_string());
        let path = tmp.clone();
        let file = tokio::task::spawn_blocking(move || create_file(&path))
            .await
            .map_err(|e| ObjectError::backend(key, e))?
            .map_err(|e| map_io(key, e))?;
        Ok(Box::new(LocalWriter {
            key: key.to_owned(),
            target,
            tmp: Some(tmp),
            file: Some(Arc::new(file)),
            size: 0,
            writing: None,
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
        // Each read runs on the blocking pool straight into a pooled buffer: one copy from
        // the page cache, no page faults, and no allocation on blocking threads (each of
        // which would get a malloc arena of its own and keep its memory). The next read is
        // started as soon as one is handed out, so the disk and the kernel's copy overlap
        // the caller's work on the previous buffer.
        let mut state = ReadState {
            next: None,
            left: end.map(|e| e.saturating_sub(start)),
            key: owned_key,
        };
        state.read_ahead(file);
        Ok(Box::pin(futures::stream::unfold(
            state,
            |mut st| async move {
                let (file, buf, want, read) = match st.next.take()?.await {
                    Ok(done) => done,
                    Err(e) => return Some((Err(ObjectError::backend(&st.key, e)), st)),
                };
                match read {
                    Ok(0) => {
                        crate::buffers::pool().recycle(buf);
                        None
                    }
                    Ok(n) => {
                        if let Some(l) = st.left.as_mut() {
                            *l -= n as u64;
                        }
                        // A short read is the end of the file.
                        if n == want {
                            st.read_ahead(file);
                        }
                        Some((Ok(crate::buffers::pool().freeze(buf)), st))
                    }
                    Err(e) => Some((Err(map_io(&st.key, e)), st)),
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
        validate_key(prefix)?;
        let root = self.root.clone();
        let owned = prefix.to_owned();
        tokio::task::spawn_blocking(move || delete_prefix(&root, &owned))
            .await
            .map_err(|e| ObjectError::backend(prefix, e))?
    }

    async fn rename(&self, from: &str, to: &str) -> Result<(), ObjectError> {
        let src = self.path(from)?;
        let dst = self.path(to)?;
        tokio::task::spawn_blocking(move || rename_into(&src, &dst))
            .await
            .map_err(|e| ObjectError::backend(from, e))?
            .map_err(|e| map_io(from, e))
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}

/// Creates `path` (in the temp folder), creating the folder the first time.
fn create_file(path: &Path) -> std::io::Result<std::fs::File> {
    match std::fs::File::create(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => {
            if let Some(dir) = path.parent() {
                std::fs::create_dir_all(dir)?;
            }
            std::fs::File::create(path)
        }
        other => other,
    }
}

/// Renames `src` to `dst`, creating `dst`'s folder when it is missing (and only then: most
/// renames go into a folder that exists).
fn rename_into(src: &Path, dst: &Path) -> std::io::Result<()> {
    match std::fs::rename(src, dst) {
        Err(e) if e.kind() == ErrorKind::NotFound && src.exists() => {
            if let Some(parent) = dst.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(src, dst)
        }
        other => other,
    }
}

/// Deletes every object under `prefix`; a folder prefix (ending in `/`) that is left empty
/// goes too, since folders are an artefact of this adapter.
fn delete_prefix(root: &Path, prefix: &str) -> Result<u64, ObjectError> {
    let dir = match prefix.rfind('/') {
        Some(i) => root.join(&prefix[..i]),
        None => root.to_path_buf(),
    };
    let mut objects = Vec::new();
    walk(root, &dir, &mut objects).map_err(|e| ObjectError::backend(prefix, e))?;
    objects.retain(|m| m.key.starts_with(prefix));
    for o in &objects {
        match std::fs::remove_file(root.join(&o.key)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(ObjectError::backend(&o.key, e)),
        }
    }
    if let Some(folder) = prefix.strip_suffix('/').filter(|d| !d.is_empty()) {
        let mut left = Vec::new();
        walk(root, &dir, &mut left).map_err(|e| ObjectError::backend(prefix, e))?;
        if left.is_empty() {
            match std::fs::remove_dir_all(root.join(folder)) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(ObjectError::backend(prefix, e)),
            }
        }
    }
    Ok(objects.len() as u64)
}

/// What a read on the blocking pool gives back: the file, the buffer, how much was asked.
type ReadDone = (std::fs::File, Vec<u8>, usize, std::io::Result<usize>);

struct ReadState {
    /// The read in flight; `None` once the stream ended (or failed).
    next: Option<tokio::task::JoinHandle<ReadDone>>,
    /// Bytes left to read when a range was asked for.
    left: Option<u64>,
    key: String,
}

impl ReadState {
    /// Starts reading the next buffer from `file`, unless the range is exhausted.
    fn read_ahead(&mut self, mut file: std::fs::File) {
        let want = self
            .left
            .map_or(READ_BUFFER, |l| l.min(READ_BUFFER as u64) as usize);
        if want == 0 {
            return;
        }
        let mut buf = crate::buffers::pool().take();
        self.next = Some(tokio::task::spawn_blocking(move || {
            // `read_to_end` within the capacity fills the buffer without zeroing it first
            // and never reallocates.
            let r = (&mut file).take(want as u64).read_to_end(&mut buf);
            (file, buf, want, r)
        }));
    }
}

struct LocalWriter {
    key: String,
    target: PathBuf,
    tmp: Option<PathBuf>,
    /// A std file written on the blocking pool (`&File` is `Write`), so that data is handed
    /// over without the copy `tokio::fs::File` makes into its own buffer; `None` once closed.
    file: Option<Arc<std::fs::File>>,
    size: u64,
    /// The write in flight, if any (see [`LocalWriter::write`]).
    writing: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
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

/// Waits for a background write or flush and reports its error.
async fn settle(
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
    key: &str,
) -> Result<(), ObjectError> {
    if let Some(task) = task {
        task.await
            .map_err(|e| ObjectError::backend(key, e))?
            .map_err(|e| ObjectError::backend(key, e))?;
    }
    Ok(())
}

impl LocalWriter {
    fn file(&self) -> Result<Arc<std::fs::File>, ObjectError> {
        self.file
            .clone()
            .ok_or_else(|| ObjectError::backend(&self.key, "writer already closed"))
    }

    /// Starts an early flush when enough was written since the last and none is in flight.
    /// A finished flush's error fails the file: Linux reports a write-back error to only one
    /// `fsync` of the open file, so the final sync would not see it.
    async fn flush_early(&mut self) -> Result<(), ObjectError> {
        if self.size - self.flushed_to < EARLY_FLUSH_BYTES
            || self.flushing.as_ref().is_some_and(|h| !h.is_finished())
        {
            return Ok(());
        }
        settle(self.flushing.take(), &self.key).await?;
        let file = self.file()?;
        self.flushed_to = self.size;
        self.flushing = Some(tokio::task::spawn_blocking(move || file.sync_data()));
        Ok(())
    }

    /// Waits for everything in flight.
    async fn settle_all(&mut self) -> Result<(), ObjectError> {
        let writing = settle(self.writing.take(), &self.key).await;
        let flushing = settle(self.flushing.take(), &self.key).await;
        writing.and(flushing)
    }
}

#[async_trait]
impl ObjectWriter for LocalWriter {
    /// Returns once the previous write is done and this one has started: the caller fills
    /// its next buffer while the kernel copies this one (one write in flight; its error is
    /// reported by the next call, or by `finish`).
    async fn write(&mut self, data: Bytes) -> Result<(), ObjectError> {
        let file = self.file()?;
        settle(self.writing.take(), &self.key).await?;
        self.size += data.len() as u64;
        self.writing = Some(tokio::task::spawn_blocking(move || {
            std::io::Write::write_all(&mut &*file, &data)
        }));
        self.flush_early().await
    }

    async fn finish(mut self: Box<Self>) -> Result<u64, ObjectError> {
        let file = self.file()?;
        self.file = None;
        let tmp = self
            .tmp
            .take()
            .ok_or_else(|| ObjectError::backend(&self.key, "writer already closed"))?;
        if let Err(e) = self.settle_all().await {
            let _ = std::fs::remove_file(&tmp);
            return Err(e);
        }
        let target = self.target.clone();
        // Made durable, then moved into place, in one trip to the blocking pool.
        tokio::task::spawn_blocking(move || {
            let done = file.sync_data().and_then(|()| rename_into(&tmp, &target));
            if done.is_err() {
                let _ = std::fs::remove_file(&tmp);
            }
            done
        })
        .await
        .map_err(|e| ObjectError::backend(&self.key, e))?
        .map_err(|e| ObjectError::backend(&self.key, e))?;
        Ok(self.size)
    }

    async fn abort(mut self: Box<Self>) -> Result<(), ObjectError> {
        // Whatever is in flight finishes into the temp file, which goes either way.
        let _ = self.settle_all().await;
        self.file = None;
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
